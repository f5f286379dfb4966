//! Consent records per data subject and scenario (R14). Providers, who
//! hold the relationship with their data subjects, record consent and its
//! withdrawal; when a scenario needs consent, only the rows of consenting
//! subjects reach its jobs. Unit values are never shown back: lists give
//! counts, the ledger a digest of each batch.

use super::auth::{Auth, Body};
use super::{blocking, current_datasets};
use super::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{append, get_in, put_consents, NewEntry, Table};
use axum::extract::State;
use axum::Json;
use chrono::Utc;
use scenarios::party::Role;
use scenarios::workflow::Scenario;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;

/// Most units in one request.
const MAX_UNITS: usize = 100_000;

/// A batch of consent records.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Consents {
    scenario_id: String,
    /// Privacy-unit values of the subjects.
    units: Vec<String>,
    /// Consent given (true) or withdrawn (false).
    #[serde(default = "yes")]
    granted: bool,
    /// How consent was obtained (form, channel, date).
    basis: String,
}

fn yes() -> bool {
    true
}

/// The scenarios reading a dataset of `provider`.
fn scenarios_of(st: &AppState, provider: &str) -> ApiResult<HashSet<String>> {
    let mine: HashSet<String> = current_datasets(st)?
        .into_iter()
        .filter(|d| d.owner == provider)
        .map(|d| d.name)
        .collect();
    let all: Vec<Scenario> = st.store.list(Table::Scenarios, None)?;
    Ok(all
        .into_iter()
        .filter(|s| s.spec.tables.iter().any(|t| mine.contains(&t.dataset)))
        .map(|s| s.id)
        .collect())
}

pub(crate) async fn record(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(req): Body<Consents>,
) -> ApiResult<Json<Value>> {
    if req.units.is_empty() || req.units.len() > MAX_UNITS {
        return Err(ApiError::BadRequest(format!(
            "give between 1 and {MAX_UNITS} units"
        )));
    }
    if req.units.iter().any(|u| u.is_empty() || u.len() > 200) {
        return Err(ApiError::BadRequest("each unit must be 1-200 bytes".into()));
    }
    if req.basis.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "the basis of the consent is required".into(),
        ));
    }
    let s = st.clone();
    let scenario = req.scenario_id.clone();
    let (out, withdrawn) =
        blocking(move || {
            if !scenarios_of(&s, &actor.id)?.contains(&req.scenario_id) {
                return Err(ApiError::NotFound(format!(
                    "no scenario {} reading your datasets",
                    req.scenario_id.escape_debug()
                )));
            }
            let mut sorted = req.units.clone();
            sorted.sort();
            sorted.dedup();
            let digest = hex::encode(scenarios::ledger::sha256(sorted.join("\n").as_bytes()));
            let granted = req.granted;
            let out = s.store.tx(move |tx| {
            let sc: Option<Scenario> = get_in(tx, Table::Scenarios, &req.scenario_id)?;
            let sc = sc.ok_or_else(|| ApiError::NotFound("scenario vanished".into()))?;
            let now = Utc::now();
            let changed = put_consents(tx, &sc.id, &sorted, granted, &actor.id, &now.to_rfc3339())?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    if granted { "consent.grant" } else { "consent.withdraw" },
                    &sc.id,
                    json!({"units": sorted.len(), "changed": changed, "units_sha256": digest,
                        "basis": req.basis}),
                ),
                now,
            )?;
            Ok(json!({"scenario_id": sc.id, "granted": granted, "units": sorted.len(), "changed": changed}))
        })?;
            Ok((out, !granted))
        })
        .await?;
    // A withdrawal reaches running jobs too: they stop and release nothing.
    if withdrawn && out["changed"].as_u64().is_some_and(|n| n > 0) {
        let s = st.clone();
        let stopped = blocking(move || crate::halts::stop_running(&s, |j| j.scenario_id == scenario)).await?;
        let mut out = out;
        out["stopped_jobs"] = json!(stopped);
        return Ok(Json(out));
    }
    Ok(Json(out))
}

pub(crate) async fn counts(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let rows = blocking(move || {
        let all = s.store.consent_counts()?;
        if actor.role != Role::Provider {
            return Ok(all);
        }
        let mine = scenarios_of(&s, &actor.id)?;
        Ok(all.into_iter().filter(|(sc, _, _)| mine.contains(sc)).collect())
    })
    .await?;
    let out: Vec<Value> = rows
        .iter()
        .map(|(sc, g, w)| json!({"scenario_id": sc, "granted": g, "withdrawn": w}))
        .collect();
    Ok(Json(json!({"consents": out})))
}
