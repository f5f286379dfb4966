//! Data providers register datasets (R1, R2). A new registration of an
//! existing name by its owner is a new version; another provider cannot
//! register the same name (one source per data item, 一数一源). The file is
//! named relative to the provider's own storage location and read only
//! from there (invariant I17, `crate::storage`).

use super::auth::{Auth, Body};
use super::ApiResult;
use super::{blocking, DatasetRecord};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use scenarios::catalog::DatasetSpec;
use scenarios::party::Role;
use serde_json::{json, Value};

pub(crate) async fn register(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(spec): Body<DatasetSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    actor.require(Role::Provider)?;
    let record = crate::providers::register(&st, actor, spec).await?;
    Ok((StatusCode::CREATED, Json(own_view(&record))))
}

/// The catalog view of a version, with the file as its owner named it.
fn own_view(d: &DatasetRecord) -> Value {
    let mut v = super::catalog::view(d);
    if let (Some(file), Some(o)) = (&d.file, v.as_object_mut()) {
        o.insert("file".into(), json!(file));
    }
    v
}

pub(crate) async fn list(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Provider)?;
    let s = st.clone();
    let mine = blocking(move || crate::providers::of_owner(&s, &actor.id)).await?;
    Ok(Json(
        json!({"datasets": mine.iter().map(own_view).collect::<Vec<_>>()}),
    ))
}

/// The operator's review of a version's desensitization rules.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RulesDecision {
    approve: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// Every dataset version with its rules and their review (operator).
pub(crate) async fn all_versions(State(st): State<AppState>, Auth(_a): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || crate::providers::all_versions(&s)).await?;
    Ok(Json(
        json!({"datasets": all.iter().map(super::catalog::view).collect::<Vec<_>>()}),
    ))
}

/// Approves or rejects a version's rules (R2); an approved version becomes
/// the one jobs read. Nobody reviews a version of their own organization.
pub(crate) async fn review_rules(
    State(st): State<AppState>,
    Auth(actor): Auth,
    axum::extract::Path(id): axum::extract::Path<String>,
    Body(d): Body<RulesDecision>,
) -> ApiResult<Json<Value>> {
    let record = crate::providers::review_rules(&st, actor, id, d.approve, d.reason).await?;
    Ok(Json(super::catalog::view(&record)))
}
