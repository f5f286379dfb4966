//! How data reaches the platform (invariant I17): a provider uploads files
//! into its own storage location (`PUT /v1/provider/files/{name}`,
//! streamed to a temporary file, size-limited, hashed while it arrives,
//! then linked under its name, never replacing a file) and lists them; the
//! operator assigns a provider's location under the data root
//! (`PUT /v1/operator/parties/{id}/storage`). The filesystem rules live in
//! [`crate::storage`].

use super::auth::{Auth, Body};
use super::blocking;
use super::{ApiError, ApiResult};
use crate::state::AppState;
use crate::storage::{self, StorageAssignment, TempFile, UploadedFile};
use crate::store::{append, get_in, list_in, party_in, put, NewEntry, Table};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use futures_util::StreamExt;
use ring::digest::{Context, SHA256};
use scenarios::party::Role;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// The canonical directory of a provider's location, created if needed.
async fn own_location(st: &AppState, party: &str) -> ApiResult<std::path::PathBuf> {
    let store = st.store.clone();
    let root = st.config.data_root.clone();
    let party = party.to_string();
    blocking(move || {
        let dir = store.read(|c| storage::dir_of(c, &party))?;
        let path = root.join(&dir);
        storage::create_private_dir(&path)
            .map_err(|e| ApiError::Internal(format!("creating storage location {dir}: {e}")))?;
        path.canonicalize()
            .map_err(|e| ApiError::Internal(format!("storage location {dir}: {e}")))
    })
    .await
}

/// Receives a file into the caller's storage location.
pub(crate) async fn upload(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    actor.require(Role::Provider)?;
    scenarios::catalog::validate_file_name(&name)?;
    let limit = st.config.max_upload_bytes;
    let too_large = || {
        ApiError::TooLarge(format!(
            "the file is larger than the upload limit of {limit} bytes"
        ))
    };
    // A declared length over the limit is refused before any byte is read.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let dir = own_location(&st, &actor.id).await?;
    let target = dir.join(&name);
    let exists = || {
        ApiError::Conflict(format!(
            "a file `{name}` is already in your storage location; files are never replaced (a registered \
             version keeps reading the bytes it was registered with): upload under a new name"
        ))
    };
    if target.symlink_metadata().is_ok() {
        return Err(exists());
    }
    // Removed on every early return, and if the client goes away.
    let tmp = TempFile::in_dir(&dir);
    let io = |e: std::io::Error| ApiError::Internal(format!("storing an upload: {e}"));
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut file = opts.open(tmp.path()).await.map_err(io)?;
    let mut hash = Context::new(&SHA256);
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadRequest("the upload was interrupted".into()))?;
        size = size.saturating_add(chunk.len() as u64);
        if size > limit {
            return Err(too_large());
        }
        hash.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    if size == 0 {
        return Err(ApiError::BadRequest("the file is empty".into()));
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    let sha256 = hex::encode(hash.finish().as_ref());
    // A link, unlike a rename, never replaces: of two uploads of one name
    // only the first gets it.
    let (tmp_path, target2) = (tmp.path().to_path_buf(), target.clone());
    let linked = tokio::task::spawn_blocking(move || {
        std::fs::hard_link(&tmp_path, &target2)?;
        if let Some(d) = target2.parent() {
            std::fs::File::open(d)?.sync_all()?;
        }
        std::fs::metadata(&target2)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let meta = match linked {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
        Err(e) => {
            let _ = std::fs::remove_file(&target);
            return Err(io(e));
        }
    };
    drop(tmp);
    let record = UploadedFile {
        id: format!("{}/{name}", actor.id),
        owner: actor.id.clone(),
        name: name.clone(),
        size,
        sha256: sha256.clone(),
        modified_ns: storage::modified_ns(&meta),
        uploaded_at: Utc::now(),
    };
    let r = record.clone();
    let written = st
        .store
        .write(move |tx| {
            put(tx, &r)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "file.upload",
                    &r.id,
                    json!({"name": r.name, "size": r.size, "sha256": r.sha256}),
                ),
                r.uploaded_at,
            )
        })
        .await;
    if let Err(e) = written {
        // Nothing changed: the file goes too.
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
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
    let dir = own_location(&st, &actor.id).await?;
    let store = st.store.clone();
    let id = actor.id.clone();
    let (location, uploads) = blocking(move || {
        let location = store.read(|c| storage::dir_of(c, &id))?;
        let uploads: Vec<UploadedFile> = store.list(Table::Files, Some(("owner", &id)))?;
        Ok((location, uploads))
    })
    .await?;
    let files = tokio::task::spawn_blocking(move || storage::list(&dir))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let files: Vec<Value> = files
        .iter()
        .map(|f| {
            let up = uploads
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
    let root = st.config.data_root.clone();
    let record = st
        .store
        .write(move |tx| {
            let party = party_in(tx, &id)?.ok_or_else(|| super::not_found("party", &id))?;
            if party.role != Role::Provider {
                return Err(ApiError::Conflict(format!(
                    "{} is a {}; storage locations are for providers",
                    party.id, party.role
                )));
            }
            // Every other provider's location, current and earlier.
            let mut others = Vec::new();
            for p in crate::store::parties_in(tx)? {
                if p.role == Role::Provider && p.id != party.id {
                    others.push((p.name.clone(), storage::dir_of(tx, &p.id)?));
                    let earlier = get_in::<StorageAssignment>(tx, Table::Storage, &p.id)?
                        .map(|a| a.previous)
                        .unwrap_or_default();
                    others.extend(earlier.into_iter().map(|d| (p.name.clone(), d)));
                }
            }
            storage::check_assignment(&root, &req.dir, &others)?;
            let path = root.join(&req.dir);
            // A location that once held another provider's registered file
            // (before that provider moved) is not handed to someone else.
            if let Ok(canonical) = path.canonicalize() {
                let datasets: Vec<super::DatasetRecord> = list_in(tx, Table::Datasets, None)?;
                if datasets.iter().any(|d| {
                    d.owner != party.id && std::path::Path::new(&d.spec.path).starts_with(&canonical)
                }) {
                    return Err(ApiError::Conflict(format!(
                        "`{}` holds a file another provider registered",
                        req.dir.escape_debug()
                    )));
                }
            }
            let previous = storage::dir_of(tx, &party.id)?;
            let mut earlier = get_in::<StorageAssignment>(tx, Table::Storage, &party.id)?
                .map(|a| {
                    let mut v = a.previous;
                    v.push(a.dir);
                    v
                })
                .unwrap_or_default();
            earlier.retain(|d| d != &req.dir);
            storage::create_private_dir(&path)
                .map_err(|e| ApiError::Internal(format!("creating {}: {e}", req.dir)))?;
            let now = Utc::now();
            let record = StorageAssignment {
                party: party.id.clone(),
                dir: req.dir.clone(),
                previous: earlier,
                assigned_by: actor.id.clone(),
                assigned_at: now,
            };
            put(tx, &record)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "storage.assign",
                    &party.id,
                    json!({"dir": record.dir, "previous": previous}),
                ),
                now,
            )?;
            Ok(record)
        })
        .await?;
    Ok(Json(json!({"party": record.party, "dir": record.dir,
        "assigned_by": record.assigned_by, "assigned_at": record.assigned_at})))
}
