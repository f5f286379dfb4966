//! What the regulator reads besides releases: every application and job
//! (metadata only, never outputs), and the periodic operation report with
//! per-provider contribution figures (R26, computed by `crate::reports`).

use super::auth::Auth;
use super::ApiResult;
use super::{blocking, Period};
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

pub(crate) async fn list_applications(State(st): State<AppState>, Auth(_a): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || crate::applications::all(&s)).await?;
    Ok(Json(json!({"applications": all})))
}

pub(crate) async fn list_jobs(State(st): State<AppState>, Auth(_a): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || crate::jobs::all(&s)).await?;
    Ok(Json(json!({"jobs": all})))
}

pub(crate) async fn report(
    State(st): State<AppState>,
    Auth(_a): Auth,
    Query(p): Query<Period>,
) -> ApiResult<Json<Value>> {
    Ok(Json(crate::reports::operation_report(&st, p.from, p.to).await?))
}
