//! The developer: reads the approved scenario catalog, applies with
//! materials (R10, R11), signs agreements (R13), submits WASM jobs and reads
//! their released results (R16). A developer sees only its own records;
//! another developer's ids answer 404.

use super::auth::{Auth, Body};
use super::ApiResult;
use super::{blocking, JobRecord};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use scenarios::budget::Budget;
use scenarios::party::Role;
use scenarios::workflow::{Agreement, Application, Materials, Scenario};
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) async fn list_scenarios(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Developer)?;
    let s = st.clone();
    let approved = blocking(move || crate::proposals::all_approved(&s)).await?;
    Ok(Json(json!({"scenarios": approved})))
}

pub(crate) async fn scenario(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Scenario>> {
    actor.require(Role::Developer)?;
    let s = st.clone();
    let sc = blocking(move || crate::proposals::approved(&s, &id)).await?;
    Ok(Json(sc))
}

/// The scenario's local-run bundle: the scenario and its datasets'
/// schemas, rules and domains, without paths or data (see
/// [`crate::local`]).
pub(crate) async fn scenario_bundle(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<crate::local::Bundle>> {
    actor.require(Role::Developer)?;
    let s = st.clone();
    let (sc, datasets) = blocking(move || crate::proposals::approved_with_catalog(&s, &id)).await?;
    Ok(Json(crate::local::bundle(&sc.id, &sc.spec, &datasets)))
}

/// An application request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Apply {
    scenario_id: String,
    materials: Materials,
}

pub(crate) async fn apply(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(req): Body<Apply>,
) -> ApiResult<(StatusCode, Json<Application>)> {
    actor.require(Role::Developer)?;
    let app = crate::applications::apply(&st, actor, req.scenario_id, req.materials).await?;
    Ok((StatusCode::CREATED, Json(app)))
}

/// The developer's own standing and whether it may apply now (R10).
pub(crate) async fn eligibility(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let e = blocking(move || crate::applications::eligibility(&s, &actor)).await?;
    Ok(Json(json!({
        "organization": e.organization,
        "eligible": e.reasons.is_empty(),
        "reasons": e.reasons,
        "standing": e.standing,
        "also_required_at_application": ["qualifications", "a named security officer"],
    })))
}

pub(crate) async fn list_applications(
    State(st): State<AppState>,
    Auth(actor): Auth,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Developer)?;
    let s = st.clone();
    let apps = blocking(move || crate::applications::of_developer(&s, &actor.id)).await?;
    Ok(Json(json!({"applications": apps})))
}

pub(crate) async fn application(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Application>> {
    actor.require(Role::Developer)?;
    let s = st.clone();
    let app = blocking(move || crate::applications::own(&s, &actor.id, &id)).await?;
    Ok(Json(app))
}

/// An agreement with its budget. `spent` is what the developer's ended
/// jobs were charged ([`crate::jobs::settled_spent`]): a running job's
/// charges appear when it ends, so the budget is no clock of its queries.
/// `limit` is the scenario's total, the most its allocation to the
/// developer's organization can hold; the population, organization and
/// account caps also apply (`charged_at`), and a refusal names the level.
fn agreement_view(ag: &Agreement, sc: &Scenario, spent: Budget) -> Value {
    let limit = sc.spec.release.total_budget();
    json!({
        "agreement": ag,
        "scenario": {"id": sc.id, "name": sc.spec.name, "purpose": sc.spec.purpose},
    "budget": {"limit": limit, "spent": spent, "remaining": limit.minus(&spent),
            "per_query": sc.spec.release.query_cost(), "noise": sc.spec.release.noise,
            "charged_at": scenarios::population::Level::ALL, "privacy_model": "docs/privacy-model.md",
            "guarantee": {"epsilon": limit.guarantee().0, "delta": limit.guarantee().1}},
    })
}

pub(crate) async fn list_agreements(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Developer)?;
    let s = st.clone();
    let all = blocking(move || crate::agreements::own_with_spent(&s, &actor.id)).await?;
    let out: Vec<Value> = all
        .iter()
        .map(|(ag, sc, spent)| agreement_view(ag, sc, *spent))
        .collect();
    Ok(Json(json!({"agreements": out})))
}

pub(crate) async fn agreement(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Developer)?;
    let s = st.clone();
    let (ag, sc, spent) = blocking(move || crate::agreements::one_with_spent(&s, &actor.id, &id)).await?;
    Ok(Json(agreement_view(&ag, &sc, spent)))
}

pub(crate) async fn sign(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Agreement>> {
    actor.require(Role::Developer)?;
    let ag = crate::agreements::sign(&st, actor, id).await?;
    Ok(Json(ag))
}

/// What the developer is told about a job whose details are withheld.
pub const WITHHELD_NOTE: &str = "details withheld: the job received protected query results and its output \
was not released to you, so its logs, resource use, error, queries and tables (which could carry those \
results) are not shown; debug with `invis run-local` on the scenario's sample data";

/// The one developer-facing view of a job (every developer route that
/// shows a job goes through it). A disclosed job is shown whole, except
/// the ledger positions of its queries (gaps between them would count
/// other parties' entries during a query, a clock); any other job shows
/// only its status, ids, hashes and times, with a note when it has ended.
pub fn developer_view(j: &JobRecord) -> Value {
    if j.disclosed() {
        let mut v = serde_json::to_value(j).unwrap_or(Value::Null);
        if let Some(qs) = v.get_mut("queries").and_then(Value::as_array_mut) {
            for q in qs.iter_mut().filter_map(Value::as_object_mut) {
                q.remove("ledger_seq");
            }
        }
        return v;
    }
    let mut v = json!({
        "id": j.id,
        "agreement_id": j.agreement_id,
        "developer_id": j.developer_id,
        "scenario_id": j.scenario_id,
        "module_hash": j.module_hash,
        "module_size": j.module_size,
        "compile_ms": j.compile_ms,
        "params_hash": j.params_hash,
        "status": j.status,
        "submitted_at": j.submitted_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
    });
    if j.status.is_final() {
        v["details_withheld"] = json!(WITHHELD_NOTE);
    }
    v
}

/// Query string of a job submission.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitQuery {
    /// Wait for the job to finish before answering.
    #[serde(default)]
    wait: bool,
    /// Parameters readable by the job (text).
    #[serde(default)]
    params: Option<String>,
}

/// Submits a job. With `wait=true` the answer comes once the job has
/// ended (at a whole number of time quanta after it started), or with 202
/// and the job still running if it outlives its longest possible run.
pub(crate) async fn submit_job(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Query(q): Query<SubmitQuery>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    actor.require(Role::Developer)?;
    let params = q.params.unwrap_or_default().into_bytes();
    let job = crate::jobs::submit(&st, &actor, &id, body.to_vec(), params).await?;
    if !q.wait {
        return Ok((StatusCode::ACCEPTED, Json(developer_view(&job))));
    }
    let done = crate::jobs::wait(&st, &job.id).await?;
    let status = if done.status.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(developer_view(&done))))
}

pub(crate) async fn list_jobs(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Developer)?;
    let s = st.clone();
    let jobs = blocking(move || crate::jobs::of_developer(&s, &actor.id)).await?;
    Ok(Json(
        json!({"jobs": jobs.iter().map(developer_view).collect::<Vec<_>>()}),
    ))
}

pub(crate) async fn job(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Developer)?;
    let s = st.clone();
    let j = blocking(move || crate::jobs::own_job(&s, &actor.id, &id)).await?;
    Ok(Json(developer_view(&j)))
}

/// The receipt of a released result: the `result.release` entry, its
/// inclusion proof and a signed checkpoint, verifiable offline with
/// `invis verify-receipt`.
pub(crate) async fn job_receipt(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<scenarios::ledger::Receipt>> {
    actor.require(Role::Developer)?;
    let receipt = blocking(move || crate::ledger_views::release_receipt(&st, &actor.id, &id)).await?;
    Ok(Json(receipt))
}

pub(crate) async fn job_output(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    actor.require(Role::Developer)?;
    let s = st.clone();
    let bytes = blocking(move || crate::jobs::released_output(&s, &actor.id, &id)).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

/// The limits the developer's jobs run under (per job, and per developer
/// and organization: in flight and work per window), how many of its jobs,
/// and of its organization's, are in flight now, and the work both used
/// in the current window (issue "Fair share").
pub(crate) async fn limits(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Developer)?;
    let (mine, organization) = st.tenants.in_flight(&actor);
    let ([work_mine, work_org], next_window_in) = st.tenants.work(&actor, &st.config.tenant_limits);
    Ok(Json(json!({
        "job_limits": st.config.job_limits,
        "tenant_limits": st.config.tenant_limits,
        "in_flight": {"developer": mine, "organization": organization},
        "work": {
            "developer": work_mine,
            "organization": work_org,
            "next_window_in_secs": next_window_in,
            "units": {
                "fuel": crate::tenants::FUEL_PER_UNIT,
                "catalog_rows": crate::tenants::ROWS_PER_UNIT,
                "compile_ms": crate::tenants::COMPILE_MS_PER_UNIT,
            },
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::test_job;
    use crate::records::{JobStatus, QueryRecord};

    fn job(status: JobStatus, charged_queries: u32) -> JobRecord {
        test_job(status, charged_queries)
    }

    #[test]
    fn only_released_jobs_and_jobs_without_results_are_disclosed() {
        use JobStatus::*;
        for (status, charged, disclosed) in [
            (Succeeded, 1, true),
            (Succeeded, 0, true),
            (Failed, 0, true),
            (Failed, 1, false),
            (AwaitingReview, 0, true),
            (AwaitingReview, 1, false),
            (Withheld, 0, true),
            (Withheld, 1, false),
            (Running, 0, false),
            (Running, 1, false),
            (Queued, 0, false),
        ] {
            let j = job(status, charged);
            assert_eq!(j.disclosed(), disclosed, "{status:?} after {charged} charges");
            let v = developer_view(&j);
            let text = v.to_string();
            assert_eq!(text.contains("a secret"), disclosed, "{v}");
            assert_eq!(text.contains("status 424242"), disclosed, "{v}");
            assert_eq!(v.get("usage").is_some(), disclosed, "{v}");
            assert_eq!(v["status"], json!(status), "{v}");
            assert_eq!(v["module_hash"], "ab");
            assert_eq!(
                v.get("details_withheld").is_some(),
                !disclosed && status.is_final(),
                "{v}"
            );
        }
        // A released query without a charge count (older records) counts.
        let mut j = job(JobStatus::Failed, 0);
        j.queries.push(QueryRecord {
            ledger_seq: Some(7),
            sql: "SELECT 1".into(),
            epsilon: 1.0,
            released_groups: Some(1),
            output_hash: None,
            rows_metered: 0,
        });
        assert!(!j.disclosed());
        // Released: the query is shown without its ledger position.
        j.status = JobStatus::Succeeded;
        let v = developer_view(&j);
        assert_eq!(v["queries"][0]["sql"], "SELECT 1");
        assert!(v["queries"][0].get("ledger_seq").is_none(), "{v}");
    }
}
