//! Scenario demands and unmet data needs (R9); data-quality flags that the
//! providing department verifies and corrects or rejects (R6).

use super::auth::{Auth, Body};
use super::{blocking, current_datasets, not_found, DatasetRecord};
use super::{ApiError, ApiResult};
use crate::keys::new_id;
use crate::state::AppState;
use crate::store::{append, get_in, list_in, put, NewEntry, Table};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use scenarios::feedback::{Demand, DemandOutcome, FlagStatus, QualityFlag};
use scenarios::party::Role;
use scenarios::workflow::Scenario;
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
    let d = st
        .store
        .write(move |tx| {
            let now = Utc::now();
            let d = Demand::raise(
                new_id("dm"),
                req.title,
                req.description,
                req.data_needed,
                &actor,
                now,
            )?;
            put(tx, &d)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "demand.raise",
                    &d.id,
                    json!({"title": d.title, "data_needed": d.data_needed}),
                ),
                now,
            )?;
            Ok(d)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(d)))
}

pub(crate) async fn list_demands(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    let store = st.store.clone();
    let all: Vec<Demand> = blocking(move || match actor.role {
        Role::Developer => store.list(Table::Demands, Some(("raised_by", &actor.id))),
        _ => store.list(Table::Demands, None),
    })
    .await?;
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
    let d = st
        .store
        .write(move |tx| {
            let mut d: Demand = get_in(tx, Table::Demands, &id)?.ok_or_else(|| not_found("demand", &id))?;
            if let Some(sc) = &a.scenario_id {
                get_in::<Scenario>(tx, Table::Scenarios, sc)?.ok_or_else(|| not_found("scenario", sc))?;
            }
            let now = Utc::now();
            d.answer(a.outcome, a.scenario_id, a.unmet_needs, a.answer, &actor, now)?;
            put(tx, &d)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "demand.answer",
                    &d.id,
                    json!({"outcome": d.outcome, "scenario": d.scenario_id, "unmet_needs": d.unmet_needs}),
                ),
                now,
            )?;
            Ok(d)
        })
        .await?;
    Ok(Json(d))
}

/// Data needs no scenario could meet, fed back to the data side.
pub(crate) async fn unmet_needs(State(st): State<AppState>, Auth(_a): Auth) -> ApiResult<Json<Value>> {
    let store = st.store.clone();
    let all: Vec<Demand> = blocking(move || store.list(Table::Demands, None)).await?;
    let out: Vec<Value> = all
        .iter()
        .filter(|d| d.outcome == Some(DemandOutcome::DataUnmet))
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
    let s = st.clone();
    let d: DatasetRecord = blocking(move || {
        current_datasets(&s)?
            .into_iter()
            .find(|d| d.name == req.dataset)
            .ok_or_else(|| not_found("dataset", &req.dataset))
    })
    .await?;
    if let Some(c) = &req.column {
        if d.spec.column(c).is_none() {
            return Err(ApiError::BadRequest(format!(
                "dataset `{}` has no column `{}`",
                d.name,
                c.escape_debug()
            )));
        }
    }
    let f = st
        .store
        .write(move |tx| {
            let now = Utc::now();
            let f = QualityFlag::raise(
                new_id("qf"),
                d.name,
                d.version,
                req.column,
                req.description,
                &actor,
                now,
            )?;
            put(tx, &f)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "quality.flag",
                    &f.id,
                    json!({"dataset": f.dataset, "version": f.dataset_version, "column": f.column}),
                ),
                now,
            )?;
            Ok(f)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(f)))
}

pub(crate) async fn list_flags(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || {
        let all: Vec<QualityFlag> = s.store.list(Table::QualityFlags, None)?;
        Ok(match actor.role {
            Role::Provider => {
                let mine: Vec<String> = current_datasets(&s)?
                    .into_iter()
                    .filter(|d| d.owner == actor.id)
                    .map(|d| d.name)
                    .collect();
                all.into_iter().filter(|f| mine.contains(&f.dataset)).collect()
            }
            Role::Developer => all.into_iter().filter(|f| f.by == actor.id).collect(),
            Role::Operator | Role::Regulator => all,
        })
    })
    .await?;
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
    let f = st
        .store
        .write(move |tx| {
            let mut f: QualityFlag = get_in(tx, Table::QualityFlags, &id)?.ok_or_else(|| not_found("quality flag", &id))?;
            let versions: Vec<DatasetRecord> = list_in(tx, Table::Datasets, Some(("name", &f.dataset)))?;
            if !versions.iter().any(|d| d.owner == actor.id) {
                return Err(not_found("quality flag", &id));
            }
            if let Some(v) = o.corrected_version {
                if !versions.iter().any(|d| d.version == v) {
                    return Err(ApiError::BadRequest(format!(
                        "dataset `{}` has no version {v}; register the correction first",
                        f.dataset
                    )));
                }
            }
            let now = Utc::now();
            f.resolve(o.corrected_version, o.finding, &actor, now)?;
            put(tx, &f)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    if f.status == FlagStatus::Corrected {
                        "quality.correct"
                    } else {
                        "quality.reject"
                    },
                    &f.id,
                    json!({"dataset": f.dataset, "corrected_version": f.corrected_version, "finding": f.finding}),
                ),
                now,
            )?;
            Ok(f)
        })
        .await?;
    Ok(Json(f))
}
