//! Fees (R15): the published tariff and per-agreement statements metered
//! from the agreement's jobs (see `scenarios::fees` for what is metered and
//! why rows are whole tables).

use super::{blocking, JobRecord, Period};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::Table;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::NaiveDate;
use scenarios::fees::Metered;
use scenarios::party::Role;
use scenarios::workflow::Agreement;
use serde_json::{json, Value};

pub(crate) async fn tariff(State(st): State<AppState>, Auth(_a): Auth) -> Json<Value> {
    Json(json!({"currency": "CNY", "unit": "fen", "tariff": st.config.tariff}))
}

/// What an agreement's jobs used in a period: jobs that started, released
/// queries, the rows they were metered for, fuel.
pub(crate) fn metered(jobs: &[JobRecord], from: Option<NaiveDate>, to: Option<NaiveDate>) -> Metered {
    let mut m = Metered::default();
    for j in jobs {
        let Some(started) = j.started_at else { continue };
        let day = started.date_naive();
        if from.is_some_and(|f| day < f) || to.is_some_and(|t| day > t) {
            continue;
        }
        m.jobs += 1;
        m.queries += j.queries.len() as u64;
        m.rows = m
            .rows
            .saturating_add(j.queries.iter().map(|q| q.rows_metered).sum());
        m.fuel = m.fuel.saturating_add(j.usage.as_ref().map_or(0, |u| u.fuel));
    }
    m
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
    let statement = st.config.tariff.statement(metered(&jobs, p.from, p.to));
    Ok(Json(json!({
        "agreement": ag.id, "developer": ag.developer_id, "scenario": ag.scenario_id,
        "period": {"from": p.from, "to": p.to}, "currency": "CNY", "unit": "fen",
        "tariff": st.config.tariff, "statement": statement,
    })))
}
