//! Fees (R15): the published tariff and per-agreement statements metered
//! from the agreement's jobs (see `scenarios::fees` for what is metered and
//! why rows are whole tables). A job whose details the developer may not
//! see ([`JobRecord::disclosed`]) is metered at its allowance, not at what
//! it used, so the bill carries nothing of them either (I14).

use super::auth::Auth;
use super::{ApiResult, Period};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::Json;
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
    let (ag, statement) = crate::statements::statement(&st, actor, id, p.from, p.to).await?;
    Ok(Json(json!({
        "agreement": ag.id, "developer": ag.developer_id, "scenario": ag.scenario_id,
        "period": {"from": p.from, "to": p.to}, "currency": "CNY", "unit": "fen",
        "tariff": st.config.tariff, "statement": statement,
    })))
}
