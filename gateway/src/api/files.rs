//! How data reaches the platform (invariant I17): a provider uploads files
//! into its own storage location (`PUT /v1/provider/files/{name}`,
//! streamed to a temporary file, size-limited, hashed while it arrives,
//! then linked under its name, never replacing a file) and lists them; the
//! operator assigns a provider's location under the data root
//! (`PUT /v1/operator/parties/{id}/storage`). The filesystem rules live in
//! [`crate::storage`].

use super::auth::{Auth, Body};
use super::ApiResult;
use crate::state::AppState;
use crate::uploads;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use scenarios::party::Role;
use serde::Deserialize;
use serde_json::{json, Value};

/// Receives a file into the caller's storage location.
pub(crate) async fn upload(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    actor.require(Role::Provider)?;
    // A declared length over the limit is refused before any byte is read.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let record = uploads::upload(&st, actor, name, declared, body.into_data_stream()).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"name": record.name, "size": record.size, "sha256": record.sha256,
            "uploaded_at": record.uploaded_at}),
        ),
    ))
}

/// The caller's files: everything in its storage location a dataset could
/// name, with the SHA-256 of what was uploaded when the file is still the
/// one received (files the operator placed have none).
pub(crate) async fn list(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Provider)?;
    let (location, received, files) = uploads::files_of(&actor, &st).await?;
    let files: Vec<Value> = files
        .iter()
        .map(|f| {
            let up = received
                .iter()
                .find(|u| u.name == f.name && u.size == f.size && u.modified_ns == f.modified_ns);
            json!({"name": f.name, "size": f.size, "sha256": up.map(|u| &u.sha256),
                "uploaded_at": up.map(|u| u.uploaded_at)})
        })
        .collect();
    Ok(Json(json!({"location": location, "files": files})))
}

/// The operator's assignment of a storage location.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssignStorage {
    /// Directory relative to the data root.
    dir: String,
}

/// Assigns a provider's storage location (operator). Refused when it is not
/// a plain relative path, lies under the default locations, or overlaps
/// another provider's location or a file another provider registered.
pub(crate) async fn assign_storage(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(req): Body<AssignStorage>,
) -> ApiResult<Json<Value>> {
    let record = uploads::assign_storage(&st, actor, id, req.dir).await?;
    Ok(Json(json!({"party": record.party, "dir": record.dir,
        "assigned_by": record.assigned_by, "assigned_at": record.assigned_at})))
}
