//! Data applications (R19): products a developer builds on released
//! results pass the operator's security and compliance review; approved
//! ones are reported to the regulator and to the providers whose data the
//! results came from.

use super::auth::{Auth, Body};
use super::{blocking, current_datasets, JobRecord, JobStatus};
use super::{ApiError, ApiResult};
use crate::keys::new_id;
use crate::state::AppState;
use crate::store::{append, get_in, put, NewEntry, Table};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use scenarios::party::Role;
use scenarios::workflow::{Agreement, ApplicationStatus, DataApplication};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;

/// A submission.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Submission {
    agreement_id: String,
    name: String,
    description: String,
    jobs: Vec<String>,
    assessment: String,
}

pub(crate) async fn submit(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(req): Body<Submission>,
) -> ApiResult<(StatusCode, Json<DataApplication>)> {
    if req.jobs.len() > 1000 {
        return Err(ApiError::BadRequest(
            "at most 1000 jobs per data application".into(),
        ));
    }
    let da = st
        .store
        .write(move |tx| {
            let ag: Agreement = get_in(tx, Table::Agreements, &req.agreement_id)?
                .filter(|a: &Agreement| a.developer_id == actor.id)
                .ok_or_else(|| {
                    ApiError::NotFound(format!("no agreement {}", req.agreement_id.escape_debug()))
                })?;
            for id in &req.jobs {
                let released = get_in::<JobRecord>(tx, Table::Jobs, id)?
                    .is_some_and(|j| j.agreement_id == ag.id && j.status == JobStatus::Succeeded);
                if !released {
                    return Err(ApiError::BadRequest(format!(
                        "job {} is not a released job of agreement {}",
                        id.escape_debug(),
                        ag.id
                    )));
                }
            }
            let now = Utc::now();
            let da = DataApplication::submit(
                new_id("da"),
                ag.id.clone(),
                req.name,
                req.description,
                req.jobs,
                req.assessment,
                &actor,
                now,
            )?;
            put(tx, &da)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "data_application.submit",
                    &da.id,
                    json!({"agreement": da.agreement_id, "name": da.name, "jobs": da.jobs}),
                ),
                now,
            )?;
            Ok(da)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(da)))
}

/// The operator's review.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Review {
    approve: bool,
    #[serde(default)]
    reason: Option<String>,
}

pub(crate) async fn decide(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(r): Body<Review>,
) -> ApiResult<Json<DataApplication>> {
    let da = st
        .store
        .write(move |tx| {
            let mut da: DataApplication = get_in(tx, Table::DataApplications, &id)?
                .ok_or_else(|| ApiError::NotFound(format!("no data application {}", id.escape_debug())))?;
            let now = Utc::now();
            da.decide(r.approve, r.reason, &actor, now)?;
            put(tx, &da)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    if r.approve {
                        "data_application.approve"
                    } else {
                        "data_application.reject"
                    },
                    &da.id,
                    json!({"developer": da.developer_id, "name": da.name, "reason": da.reason,
                        "reported_to": if r.approve { json!(["regulator", "providers"]) } else { json!([]) }}),
                ),
                now,
            )?;
            Ok(da)
        })
        .await?;
    Ok(Json(da))
}

/// Lists data applications: a developer its own, a provider the approved
/// ones built on its data, the operator and the regulator all.
pub(crate) async fn list(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let out = blocking(move || {
        let all: Vec<DataApplication> = s.store.list(Table::DataApplications, None)?;
        Ok(match actor.role {
            Role::Developer => all.into_iter().filter(|d| d.developer_id == actor.id).collect(),
            Role::Provider => {
                let mine: HashSet<String> = current_datasets(&s)?
                    .into_iter()
                    .filter(|d| d.owner == actor.id)
                    .map(|d| d.name)
                    .collect();
                let mut out = Vec::new();
                for d in all
                    .into_iter()
                    .filter(|d| d.status == ApplicationStatus::Approved)
                {
                    let mut uses = false;
                    for j in &d.jobs {
                        let job: Option<JobRecord> = s.store.get(Table::Jobs, j)?;
                        uses |= job.is_some_and(|j| j.tables.iter().any(|t| mine.contains(&t.dataset)));
                    }
                    if uses {
                        out.push(d);
                    }
                }
                out
            }
            Role::Operator | Role::Regulator => all,
        })
    })
    .await?;
    Ok(Json(json!({"data_applications": out})))
}
