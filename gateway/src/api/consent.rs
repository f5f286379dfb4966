//! Consent records per data subject and scenario (R14). Providers, who
//! hold the relationship with their data subjects, record consent and its
//! withdrawal; when a scenario needs consent, only the rows of consenting
//! subjects reach its jobs. Unit values are never shown back: lists give
//! counts, the ledger a digest of each batch.

use super::auth::{Auth, Body};
use super::blocking;
use super::ApiResult;
use crate::consents;
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

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

pub(crate) async fn record(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(req): Body<Consents>,
) -> ApiResult<Json<Value>> {
    let r = consents::record(&st, actor, req.scenario_id, req.units, req.granted, req.basis).await?;
    let mut out = json!({"scenario_id": r.scenario_id, "granted": r.granted, "units": r.units,
        "changed": r.changed});
    if let Some(stopped) = r.stopped_jobs {
        out["stopped_jobs"] = json!(stopped);
    }
    Ok(Json(out))
}

pub(crate) async fn counts(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let rows = blocking(move || consents::counts_visible_to(&s, &actor)).await?;
    let out: Vec<Value> = rows
        .iter()
        .map(|(sc, g, w)| json!({"scenario_id": sc, "granted": g, "withdrawn": w}))
        .collect();
    Ok(Json(json!({"consents": out})))
}
