//! The regulator's view and decisions on population budgets: spent,
//! allocated and remaining at every level of every population, lowering a
//! population's caps within its period, and the recorded renewal that opens
//! the next period (`docs/privacy-model.md`). Reads change nothing; each
//! decision is one transaction with its ledger entry.

use super::auth::{Auth, Body};
use super::{blocking, current_datasets};
use super::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::population::{self, PopulationRecord};
use crate::store::Tx;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use scenarios::budget::{Budget, Delta, Epsilon, Rho};
use scenarios::party::Role;
use scenarios::population::Caps;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One population as the regulator sees it, for `period` (the current one
/// when `None`).
fn view(c: &Tx<'_>, p: &PopulationRecord, units: u64, period: Option<u64>, opened: bool) -> ApiResult<Value> {
    let period = period.unwrap_or(p.period);
    if period == 0 || period > p.period {
        return Err(ApiError::NotFound(format!(
            "population `{}` has no period {period} (the current one is {})",
            p.kind, p.period
        )));
    }
    let levels = population::levels_in(c, p, period)?;
    let spend = population::population_spend_in(c, p, period)?;
    let conversion = p.caps.population.delta.as_f64();
    let g = spend.guarantee(conversion);
    let exhausted = levels
        .iter()
        .find(|l| l.level == scenarios::population::Level::Population)
        .is_some_and(|l| {
            (l.remaining.epsilon == Epsilon(0) && l.remaining.rho == Rho(0)) || l.remaining.delta == Delta(0)
        });
    Ok(json!({
        "population": p.kind,
        "units": units,
        "period": period,
        "current_period": p.period,
        "opened": opened,
        "opened_at": p.opened_at,
        "opened_by": p.opened_by,
        "caps": p.caps,
        "exhausted": exhausted && period == p.period,
        "levels": levels,
        "guarantee": {"epsilon": g.epsilon, "delta": g.delta, "laplace_composition": g.laplace,
                      "conversion_delta": conversion,
                      "model": "docs/privacy-model.md"},
    }))
}

/// Every population: those of the catalog's unit kinds and those that were
/// ever charged, with their unit counts.
fn all_units(st: &AppState) -> ApiResult<BTreeMap<String, u64>> {
    let mut units = crate::jobs::population_units(&current_datasets(st)?);
    for p in st.store.read(population::populations_in)? {
        units.entry(p.kind).or_insert(p.units);
    }
    Ok(units)
}

/// The record of `kind`, or the one it would open with.
fn record_or_default(c: &Tx<'_>, kind: &str, units: u64) -> ApiResult<(PopulationRecord, bool)> {
    Ok(match population::population_in(c, kind)? {
        Some(p) => (p, true),
        None => (
            PopulationRecord {
                kind: kind.to_string(),
                period: 1,
                opened_at: Utc::now(),
                opened_by: "not opened yet: no query has been charged".into(),
                units,
                caps: Caps::default_for(units),
            },
            false,
        ),
    })
}

pub(crate) async fn list(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let s = st.clone();
    let out = blocking(move || {
        let units = all_units(&s)?;
        s.store.read_consistent(|c| {
            let mut out = Vec::new();
            for (kind, n) in &units {
                let (p, opened) = record_or_default(c, kind, *n)?;
                out.push(view(c, &p, *n, None, opened)?);
            }
            Ok(out)
        })
    })
    .await?;
    Ok(Json(json!({"populations": out})))
}

/// Which period to show.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeriodQuery {
    #[serde(default)]
    period: Option<u64>,
}

pub(crate) async fn show(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(kind): Path<String>,
    Query(q): Query<PeriodQuery>,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let s = st.clone();
    let v = blocking(move || {
        let n = known(&s, &kind)?;
        s.store.read_consistent(|c| {
            let (p, opened) = record_or_default(c, &kind, n)?;
            view(c, &p, n, q.period, opened)
        })
    })
    .await?;
    Ok(Json(v))
}

/// The unit count of a known population; 404 for any other name.
fn known(st: &AppState, kind: &str) -> ApiResult<u64> {
    all_units(st)?
        .get(kind)
        .copied()
        .ok_or_else(|| ApiError::NotFound(format!("no population `{}`", kind.escape_debug())))
}

/// Parts of a budget to change; a part not given stays as it is.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetPatch {
    #[serde(default)]
    epsilon: Option<Epsilon>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    rho: Option<Rho>,
}

impl BudgetPatch {
    fn apply(&self, b: Budget) -> Budget {
        Budget {
            epsilon: self.epsilon.unwrap_or(b.epsilon),
            delta: self.delta.unwrap_or(b.delta),
            rho: self.rho.unwrap_or(b.rho),
        }
    }
}

/// Caps to change, level by level.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CapsPatch {
    #[serde(default)]
    population: Option<BudgetPatch>,
    #[serde(default)]
    organization: Option<BudgetPatch>,
    #[serde(default)]
    developer: Option<BudgetPatch>,
}

impl CapsPatch {
    fn apply(&self, c: Caps) -> Caps {
        let patch = |p: &Option<BudgetPatch>, b: Budget| p.as_ref().map_or(b, |p| p.apply(b));
        Caps {
            population: patch(&self.population, c.population),
            organization: patch(&self.organization, c.organization),
            developer: patch(&self.developer, c.developer),
        }
    }
}

fn reason_of(r: &str) -> ApiResult<String> {
    let r = r.trim();
    if r.is_empty() || r.len() > 4000 {
        return Err(ApiError::BadRequest(
            "a reason of 1 to 4000 bytes is required".into(),
        ));
    }
    Ok(r.to_string())
}

/// A regulator's lowering of a population's caps within the period.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LowerCaps {
    caps: CapsPatch,
    reason: String,
}

pub(crate) async fn lower_caps(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(kind): Path<String>,
    Body(req): Body<LowerCaps>,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let reason = reason_of(&req.reason)?;
    let s = st.clone();
    let v = blocking(move || {
        let n = known(&s, &kind)?;
        let p = s.store.tx(move |tx| {
            let current = population::open_population_in(tx, &kind, n, Utc::now())?;
            let caps = req.caps.apply(current.caps);
            population::lower_caps_in(tx, &actor, &kind, n, caps, &reason, Utc::now())
        })?;
        s.store.read_consistent(|c| view(c, &p, n, None, true))
    })
    .await?;
    Ok(Json(v))
}

/// A regulator's renewal decision: the next period, its caps and why.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Renewal {
    #[serde(default)]
    caps: Option<CapsPatch>,
    reason: String,
}

pub(crate) async fn renew(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(kind): Path<String>,
    Body(req): Body<Renewal>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    actor.require(Role::Regulator)?;
    let reason = reason_of(&req.reason)?;
    let s = st.clone();
    let v = blocking(move || {
        let n = known(&s, &kind)?;
        let p = s.store.tx(move |tx| {
            let current = population::open_population_in(tx, &kind, n, Utc::now())?;
            let caps = req.caps.as_ref().map(|c| c.apply(current.caps));
            population::renew_in(tx, &actor, &kind, n, caps, &reason, Utc::now())
        })?;
        s.store.read_consistent(|c| view(c, &p, n, None, true))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)))
}
