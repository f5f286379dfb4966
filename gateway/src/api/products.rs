//! Data applications (R19): products a developer builds on released
//! results pass the operator's security and compliance review; approved
//! ones are reported to the regulator and to the providers whose data the
//! results came from.

use super::auth::{Auth, Body};
use super::blocking;
use super::ApiResult;
use crate::data_applications;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use scenarios::workflow::DataApplication;
use serde::Deserialize;
use serde_json::{json, Value};

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
    let req = data_applications::Submission {
        agreement_id: req.agreement_id,
        name: req.name,
        description: req.description,
        jobs: req.jobs,
        assessment: req.assessment,
    };
    let da = data_applications::submit(&st, actor, req).await?;
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
    let da = data_applications::decide(&st, actor, id, r.approve, r.reason).await?;
    Ok(Json(da))
}

/// Lists data applications: a developer its own, a provider the approved
/// ones built on its data, the operator and the regulator all.
pub(crate) async fn list(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let out = blocking(move || data_applications::visible_to(&s, &actor)).await?;
    Ok(Json(json!({"data_applications": out})))
}
