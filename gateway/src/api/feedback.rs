//! Scenario demands and unmet data needs (R9); data-quality flags that the
//! providing department verifies and corrects or rejects (R6).

use super::auth::{Auth, Body};
use super::blocking;
use super::ApiResult;
use crate::feedback;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use scenarios::feedback::{Demand, DemandOutcome, QualityFlag};
use serde::Deserialize;
use serde_json::{json, Value};

/// A new demand.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewDemand {
    title: String,
    description: String,
    data_needed: Vec<String>,
}

pub(crate) async fn raise_demand(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(req): Body<NewDemand>,
) -> ApiResult<(StatusCode, Json<Demand>)> {
    let d = feedback::raise_demand(&st, actor, req.title, req.description, req.data_needed).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

pub(crate) async fn list_demands(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || feedback::demands_visible_to(&s, &actor)).await?;
    Ok(Json(json!({"demands": all})))
}

/// The operator's answer to a demand.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Answer {
    outcome: DemandOutcome,
    #[serde(default)]
    scenario_id: Option<String>,
    #[serde(default)]
    unmet_needs: Vec<String>,
    answer: String,
}

pub(crate) async fn answer_demand(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(a): Body<Answer>,
) -> ApiResult<Json<Demand>> {
    let a = feedback::Answer {
        outcome: a.outcome,
        scenario_id: a.scenario_id,
        unmet_needs: a.unmet_needs,
        answer: a.answer,
    };
    let d = feedback::answer_demand(&st, actor, id, a).await?;
    Ok(Json(d))
}

/// Data needs no scenario could meet, fed back to the data side.
pub(crate) async fn unmet_needs(State(st): State<AppState>, Auth(_a): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || feedback::unmet_needs(&s)).await?;
    let out: Vec<Value> = all
        .iter()
        .map(|d| json!({"demand": d.id, "title": d.title, "unmet_needs": d.unmet_needs, "answered_at": d.answered_at}))
        .collect();
    Ok(Json(json!({"unmet_needs": out})))
}

/// A new quality flag.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewFlag {
    dataset: String,
    #[serde(default)]
    column: Option<String>,
    description: String,
}

pub(crate) async fn raise_flag(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(req): Body<NewFlag>,
) -> ApiResult<(StatusCode, Json<QualityFlag>)> {
    let f = feedback::raise_flag(&st, actor, req.dataset, req.column, req.description).await?;
    Ok((StatusCode::CREATED, Json(f)))
}

pub(crate) async fn list_flags(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || feedback::flags_visible_to(&s, &actor)).await?;
    Ok(Json(json!({"quality_flags": all})))
}

/// The provider's outcome.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Outcome {
    /// The version that corrects the data; absent when the data is right.
    #[serde(default)]
    corrected_version: Option<u32>,
    finding: String,
}

pub(crate) async fn resolve_flag(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(o): Body<Outcome>,
) -> ApiResult<Json<QualityFlag>> {
    let f = feedback::resolve_flag(&st, actor, id, o.corrected_version, o.finding).await?;
    Ok(Json(f))
}
