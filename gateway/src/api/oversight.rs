//! Oversight: objections that suspend data at once (R7), stop-and-report
//! halts with risk reports (R20; the halts themselves are
//! `crate::halts`'s), security incidents (R25), filing of agreements with
//! the regulator and the overdue list (R12).

use super::auth::{Auth, Body};
use super::blocking;
use super::ApiResult;
use crate::objections;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{NaiveDate, Utc};
use scenarios::oversight::{Incident, PlanState, Severity};
use scenarios::workflow::Agreement;
use serde::Deserialize;
use serde_json::{json, Value};

// ----- objections (R7) -------------------------------------------------------

/// An objection filed by the operator (for an affected member of the
/// public) or by a provider (on its own datasets).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewObjection {
    dataset: String,
    /// The privacy unit of the one subject objecting; absent for the whole
    /// dataset.
    #[serde(default)]
    subject: Option<String>,
    objector: String,
    grounds: String,
}

pub(crate) async fn file_objection(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(req): Body<NewObjection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let s = st.clone();
    let (o, stopped) =
        blocking(move || objections::file(&s, actor, req.dataset, req.subject, req.objector, req.grounds))
            .await?;
    let mut v = objections::view(&o);
    v["stopped_jobs"] = json!(stopped);
    Ok((StatusCode::CREATED, Json(v)))
}

pub(crate) async fn list_objections(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || objections::visible_to(&s, &actor)).await?;
    Ok(Json(
        json!({"objections": all.iter().map(objections::view).collect::<Vec<_>>()}),
    ))
}

/// The operator's resolution of an objection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resolution {
    upheld: bool,
    reason: String,
}

pub(crate) async fn resolve_objection(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(r): Body<Resolution>,
) -> ApiResult<Json<Value>> {
    let o = objections::resolve(&st, actor, id, r.upheld, r.reason).await?;
    Ok(Json(objections::view(&o)))
}

// ----- stop and report (R20) ---------------------------------------------------

/// A halt with its risk report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Halt {
    risk: String,
    measures: String,
}

pub(crate) async fn halt_agreement(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(h): Body<Halt>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let report = crate::halts::halt_agreement(&st, actor, id, h.risk, h.measures).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(&report).unwrap_or(Value::Null)),
    ))
}

/// Why an agreement ends early.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Terminate {
    reason: String,
}

/// Ends an agreement early (R13); its running jobs stop and release
/// nothing more.
pub(crate) async fn terminate_agreement(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(t): Body<Terminate>,
) -> ApiResult<Json<Value>> {
    let (ag, stopped) = crate::halts::terminate_agreement(&st, actor, id, t.reason).await?;
    let mut v = serde_json::to_value(&ag).unwrap_or(Value::Null);
    v["stopped_jobs"] = json!(stopped);
    Ok(Json(v))
}

pub(crate) async fn halt_scenario(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(h): Body<Halt>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let report = crate::halts::halt_scenario(&st, actor, id, h.risk, h.measures).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(&report).unwrap_or(Value::Null)),
    ))
}

pub(crate) async fn list_risk_reports(
    State(st): State<AppState>,
    Auth(actor): Auth,
) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || crate::halts::reports_visible_to(&s, &actor)).await?;
    Ok(Json(json!({"risk_reports": all})))
}

// ----- incidents (R25) -----------------------------------------------------------

/// A new incident.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewIncident {
    severity: Severity,
    summary: String,
}

pub(crate) async fn report_incident(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(req): Body<NewIncident>,
) -> ApiResult<(StatusCode, Json<Incident>)> {
    let i = crate::incidents::report(&st, actor, req.severity, req.summary).await?;
    Ok((StatusCode::CREATED, Json(i)))
}

/// A step of the emergency plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Step {
    state: PlanState,
    note: String,
}

pub(crate) async fn advance_incident(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(step): Body<Step>,
) -> ApiResult<Json<Incident>> {
    let i = crate::incidents::advance(&st, actor, id, step.state, step.note).await?;
    Ok(Json(i))
}

pub(crate) async fn list_incidents(State(st): State<AppState>, Auth(_actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || crate::incidents::all(&s)).await?;
    Ok(Json(json!({"incidents": all})))
}

// ----- filing and deadlines (R12) ---------------------------------------------------

pub(crate) async fn list_agreements(
    State(st): State<AppState>,
    Auth(_actor): Auth,
) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || crate::agreements::all_with_filing_overdue(&s)).await?;
    let out: Vec<Value> = all
        .iter()
        .map(|(a, overdue)| {
            let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
            v["filing_overdue"] = json!(overdue);
            v
        })
        .collect();
    Ok(Json(json!({"agreements": out})))
}

pub(crate) async fn file_agreement(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Agreement>> {
    let ag = crate::agreements::file(&st, actor, id).await?;
    Ok(Json(ag))
}

/// The day the overdue list is computed for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AsOf {
    #[serde(default)]
    as_of: Option<NaiveDate>,
}

pub(crate) async fn overdue(
    State(st): State<AppState>,
    Auth(_actor): Auth,
    Query(q): Query<AsOf>,
) -> ApiResult<Json<Value>> {
    let today = q.as_of.unwrap_or_else(|| Utc::now().date_naive());
    let s = st.clone();
    let (apps, ags) = blocking(move || crate::agreements::overdue(&s, today)).await?;
    let apps: Vec<Value> = apps
        .iter()
        .map(|a| {
            json!({"id": a.id, "developer_id": a.developer_id, "scenario_id": a.scenario_id,
            "submitted_at": a.submitted_at, "due_on": a.due_on})
        })
        .collect();
    let ags: Vec<Value> = ags
        .iter()
        .map(|a| {
            json!({"id": a.id, "developer_id": a.developer_id, "signed_at": a.signed_at,
            "filing_due": a.filing_due})
        })
        .collect();
    Ok(Json(
        json!({"as_of": today, "applications": apps, "agreement_filings": ags}),
    ))
}
