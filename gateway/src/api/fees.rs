//! Fees (R15): the published tariff and per-agreement statements metered
//! from the agreement's jobs (see `scenarios::fees` for what is metered and
//! why rows are whole tables). A job whose details the developer may not
//! see ([`JobRecord::disclosed`]) is metered at its allowance, not at what
//! it used, so the bill carries nothing of them either (I14).

use super::auth::Auth;
use super::{blocking, JobRecord, Period};
use super::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::Table;
use axum::extract::{Path, Query, State};
use axum::Json;
use scenarios::party::Role;
use scenarios::workflow::Agreement;
use serde_json::{json, Value};

pub(crate) async fn tariff(State(st): State<AppState>, Auth(_a): Auth) -> Json<Value> {
    Json(json!({"currency": "CNY", "unit": "fen", "tariff": st.config.tariff}))
}

pub(crate) async fn statement(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Query(p): Query<Period>,
) -> ApiResult<Json<Value>> {
    if let (Some(f), Some(t)) = (p.from, p.to) {
        if f > t {
            return Err(ApiError::BadRequest("`from` is after `to`".into()));
        }
    }
    let store = st.store.clone();
    let (ag, jobs) = blocking(move || {
        let ag: Agreement = store
            .get(Table::Agreements, &id)?
            .filter(|a: &Agreement| actor.role != Role::Developer || a.developer_id == actor.id)
            .ok_or_else(|| ApiError::NotFound(format!("no agreement {}", id.escape_debug())))?;
        let jobs: Vec<JobRecord> = store.list(Table::Jobs, Some(("agreement_id", &ag.id)))?;
        Ok((ag, jobs))
    })
    .await?;
    let fuel_limit = st.config.job_limits.fuel;
    let statement = st
        .config
        .tariff
        .statement(crate::metering::metered(&jobs, p.from, p.to, fuel_limit));
    Ok(Json(json!({
        "agreement": ag.id, "developer": ag.developer_id, "scenario": ag.scenario_id,
        "period": {"from": p.from, "to": p.to}, "currency": "CNY", "unit": "fen",
        "tariff": st.config.tariff, "statement": statement,
    })))
}
