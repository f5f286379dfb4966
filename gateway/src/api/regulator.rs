//! The regulator: approves scenario classes (R8) and lists every release
//! with its lineage and receipt, filtered by agreement, scenario, developer
//! and time (R21, R23). The ledger feed is in `api::ledger`. The regulator
//! reads everything and changes no data other than its own decisions.

use super::auth::{Auth, Body};
use super::blocking;
use super::ApiResult;
use crate::ledger_views;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use scenarios::party::Role;
use scenarios::workflow::Scenario;
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) async fn list_scenarios(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let s = st.clone();
    let all = blocking(move || crate::proposals::all(&s)).await?;
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

pub(crate) async fn releases(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Query(filter): Query<ReleaseFilter>,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let filter = ledger_views::ReleaseFilter {
        agreement: filter.agreement,
        scenario: filter.scenario,
        developer: filter.developer,
        since: filter.since,
        until: filter.until,
    };
    let out = blocking(move || ledger_views::releases(&st, &filter)).await?;
    Ok(Json(json!({"releases": out})))
}
