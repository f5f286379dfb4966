//! The regulator: approves scenario classes (R8) and lists every release
//! with its lineage and receipt, filtered by agreement, scenario, developer
//! and time (R21, R23). The ledger feed is in `api::ledger`. The regulator
//! reads everything and changes no data other than its own decisions.

use super::auth::{Auth, Body};
use super::ApiResult;
use super::{blocking, JobRecord};
use crate::state::AppState;
use crate::store::Table;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use scenarios::party::Role;
use scenarios::workflow::Scenario;
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) async fn list_scenarios(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let store = st.store.clone();
    let all: Vec<Scenario> = blocking(move || store.list(Table::Scenarios, None)).await?;
    Ok(Json(json!({"scenarios": all})))
}

/// The regulator's decision on a scenario.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Decision {
    approve: bool,
    #[serde(default)]
    reason: Option<String>,
}

pub(crate) async fn decide_scenario(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(d): Body<Decision>,
) -> ApiResult<Json<Scenario>> {
    actor.require(Role::Regulator)?;
    let sc = crate::proposals::decide(&st, actor, id, d.approve, d.reason).await?;
    Ok(Json(sc))
}

/// Filters of the release list; all optional, combined with AND.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseFilter {
    agreement: Option<String>,
    scenario: Option<String>,
    developer: Option<String>,
    /// Released at or after (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Released before (RFC 3339).
    until: Option<DateTime<Utc>>,
}

impl ReleaseFilter {
    fn keeps(&self, j: &JobRecord) -> bool {
        let at = j.finished_at;
        self.agreement.as_ref().is_none_or(|a| *a == j.agreement_id)
            && self.scenario.as_ref().is_none_or(|s| *s == j.scenario_id)
            && self.developer.as_ref().is_none_or(|d| *d == j.developer_id)
            && self.since.is_none_or(|t| at.is_some_and(|at| at >= t))
            && self.until.is_none_or(|t| at.is_some_and(|at| at < t))
    }
}

pub(crate) async fn releases(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Query(filter): Query<ReleaseFilter>,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let out = blocking(move || {
        let store = &st.store;
        let mut jobs: Vec<JobRecord> = match &filter.agreement {
            Some(a) => store.list(Table::Jobs, Some(("agreement_id", a)))?,
            None => store.list(Table::Jobs, None)?,
        };
        jobs.retain(|j| j.status == super::JobStatus::Succeeded && filter.keeps(j));
        jobs.sort_by_key(|j| j.finished_at);
        // One current checkpoint serves every receipt in the list.
        let current = st.ledger.checkpoint(store, &st.keys)?;
        let mut releases = Vec::new();
        for j in &jobs {
            let lineage: Vec<Value> = store
                .ledger_for(&j.id)?
                .iter()
                .map(|e| {
                    let body: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
                    json!({"seq": e.seq, "hash": e.hash, "entry": body})
                })
                .collect();
            let receipt = st.ledger.release_receipt(store, &st.keys, &j.id, &current)?;
            releases.push(json!({"job": j, "lineage": lineage, "receipt": receipt}));
        }
        Ok(releases)
    })
    .await?;
    Ok(Json(json!({"releases": out})))
}
