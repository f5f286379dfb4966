//! The regulator's view and decisions on population budgets: spent,
//! allocated and remaining at every level of every population, lowering a
//! population's caps within its period, and the recorded renewal that opens
//! the next period (`docs/privacy-model.md`). This module reads and
//! checks requests; the views and decisions are `crate::populations`'s.

use super::auth::{Auth, Body};
use super::blocking;
use super::ApiResult;
use crate::populations;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use scenarios::budget::{Budget, Delta, Epsilon, Rho};
use scenarios::party::Role;
use scenarios::population::Caps;
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) async fn list(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let s = st.clone();
    let out = blocking(move || populations::views(&s)).await?;
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
    let v = blocking(move || populations::view_of(&s, &kind, q.period)).await?;
    Ok(Json(v))
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
    let reason = req.reason;
    let s = st.clone();
    let v = blocking(move || populations::lower_caps(&s, actor, kind, move |c| req.caps.apply(c), reason))
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
    let reason = req.reason;
    let s = st.clone();
    let change = req.caps.map(|patch| move |c: Caps| patch.apply(c));
    let v = blocking(move || populations::renew(&s, actor, kind, change, reason)).await?;
    Ok((StatusCode::CREATED, Json(v)))
}
