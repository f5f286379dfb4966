//! Population budgets as the regulator sees and decides them: spent,
//! allocated and remaining at every level of every population, lowering a
//! population's caps within its period, and the recorded renewal that opens
//! the next period (`docs/privacy-model.md`). Reads change nothing; each
//! decision is one transaction with its ledger entry.

use crate::error::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::store::population::{self, PopulationRecord};
use crate::store::StoreOps;
use chrono::Utc;
use scenarios::budget::{Delta, Epsilon, Rho};
use scenarios::party::Actor;
use scenarios::population::Caps;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One population as the regulator sees it, for `period` (the current one
/// when `None`).
fn view(
    c: &dyn StoreOps,
    p: &PopulationRecord,
    units: u64,
    period: Option<u64>,
    opened: bool,
) -> ServiceResult<Value> {
    let period = period.unwrap_or(p.period);
    if period == 0 || period > p.period {
        return Err(ServiceError::NotFound(format!(
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
fn all_units(st: &AppState) -> ServiceResult<BTreeMap<String, u64>> {
    let mut units = crate::jobs::population_units(&crate::datasets::current_datasets(st)?);
    for p in st.store.read(population::populations_in)? {
        units.entry(p.kind).or_insert(p.units);
    }
    Ok(units)
}

/// The record of `kind`, or the one it would open with.
fn record_or_default(c: &dyn StoreOps, kind: &str, units: u64) -> ServiceResult<(PopulationRecord, bool)> {
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

/// The unit count of a known population; 404 for any other name.
fn known(st: &AppState, kind: &str) -> ServiceResult<u64> {
    all_units(st)?
        .get(kind)
        .copied()
        .ok_or_else(|| ServiceError::NotFound(format!("no population `{}`", kind.escape_debug())))
}

/// Every population's view, current period.
pub fn views(st: &AppState) -> ServiceResult<Vec<Value>> {
    let units = all_units(st)?;
    st.store.read_consistent(|c| {
        let mut out = Vec::new();
        for (kind, n) in &units {
            let (p, opened) = record_or_default(c, kind, *n)?;
            out.push(view(c, &p, *n, None, opened)?);
        }
        Ok(out)
    })
}

/// One population's view for `period` (the current one when `None`).
pub fn view_of(st: &AppState, kind: &str, period: Option<u64>) -> ServiceResult<Value> {
    let n = known(st, kind)?;
    st.store.read_consistent(|c| {
        let (p, opened) = record_or_default(c, kind, n)?;
        view(c, &p, n, period, opened)
    })
}

/// The reason of a regulator's decision, trimmed: 1 to 4000 bytes.
fn checked_reason(r: &str) -> ServiceResult<String> {
    let r = r.trim();
    if r.is_empty() || r.len() > 4000 {
        return Err(ServiceError::BadRequest(
            "a reason of 1 to 4000 bytes is required".into(),
        ));
    }
    Ok(r.to_string())
}

/// Lowers `kind`'s caps within its period to `change` of the current ones
/// (the store refuses any raise), with its ledger entry and `reason` (1 to
/// 4000 bytes); the new view.
pub fn lower_caps(
    st: &AppState,
    actor: Actor,
    kind: String,
    change: impl FnOnce(Caps) -> Caps + Send + 'static,
    reason: String,
) -> ServiceResult<Value> {
    let reason = checked_reason(&reason)?;
    let n = known(st, &kind)?;
    let p = st.store.tx(move |tx| {
        let current = population::open_population_in(tx, &kind, n, Utc::now())?;
        let caps = change(current.caps);
        population::lower_caps_in(tx, &actor, &kind, n, caps, &reason, Utc::now())
    })?;
    st.store.read_consistent(|c| view(c, &p, n, None, true))
}

/// Opens `kind`'s next period, its caps `change`d from the current ones
/// when given, with its ledger entry and `reason` (1 to 4000 bytes); the
/// new view.
pub fn renew(
    st: &AppState,
    actor: Actor,
    kind: String,
    change: Option<impl FnOnce(Caps) -> Caps + Send + 'static>,
    reason: String,
) -> ServiceResult<Value> {
    let reason = checked_reason(&reason)?;
    let n = known(st, &kind)?;
    let p = st.store.tx(move |tx| {
        let current = population::open_population_in(tx, &kind, n, Utc::now())?;
        let caps = change.map(|f| f(current.caps));
        population::renew_in(tx, &actor, &kind, n, caps, &reason, Utc::now())
    })?;
    st.store.read_consistent(|c| view(c, &p, n, None, true))
}
