//! How data reaches the platform (invariant I17): a provider uploads files
//! into its own storage location (streamed to a temporary file,
//! size-limited, hashed while it arrives, then linked under its name,
//! never replacing a file) and lists them; the operator assigns a
//! provider's location under the data root. The filesystem rules live in
//! [`crate::storage`]; each change is recorded with its ledger entry.

use crate::error::{ServiceError, ServiceResult};
use crate::records::DatasetRecord;
use crate::state::AppState;
use crate::storage::{self, Listed, StorageAssignment, TempFile, UploadedFile};
use crate::store::{append, blocking, get_in, list_in, party_in, put, NewEntry, Table};
use chrono::Utc;
use futures_util::{Stream, StreamExt};
use ring::digest::{Context, SHA256};
use scenarios::party::{Actor, Role};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// The canonical directory of a provider's location, created if needed.
async fn own_location(st: &AppState, party: &str) -> ServiceResult<std::path::PathBuf> {
    let store = st.store.clone();
    let root = st.config.data_root.clone();
    let party = party.to_string();
    blocking(move || {
        let dir = store.read(|c| storage::dir_of(c, &party))?;
        let path = root.join(&dir);
        storage::create_private_dir(&path)
            .map_err(|e| ServiceError::Internal(format!("creating storage location {dir}: {e}")))?;
        path.canonicalize()
            .map_err(|e| ServiceError::Internal(format!("storage location {dir}: {e}")))
    })
    .await
}

/// Receives file `name` into `actor`'s storage location from `body` (its
/// chunks; an error ends the upload), refused before any byte is read when
/// its `declared` length is over the limit; returns its record.
pub async fn upload<B, E>(
    st: &AppState,
    actor: Actor,
    name: String,
    declared: Option<u64>,
    body: impl Stream<Item = Result<B, E>> + Send,
) -> ServiceResult<UploadedFile>
where
    B: AsRef<[u8]> + Send,
    E: Send,
{
    scenarios::catalog::validate_file_name(&name)?;
    let limit = st.config.max_upload_bytes;
    let too_large = || {
        ServiceError::TooLarge(format!(
            "the file is larger than the upload limit of {limit} bytes"
        ))
    };
    // A declared length over the limit is refused before any byte is read.
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let dir = own_location(st, &actor.id).await?;
    let target = dir.join(&name);
    let exists = || {
        ServiceError::Conflict(format!(
            "a file `{name}` is already in your storage location; files are never replaced (a registered \
             version keeps reading the bytes it was registered with): upload under a new name"
        ))
    };
    if target.symlink_metadata().is_ok() {
        return Err(exists());
    }
    // Removed on every early return, and if the client goes away.
    let tmp = TempFile::in_dir(&dir);
    let io = |e: std::io::Error| ServiceError::Internal(format!("storing an upload: {e}"));
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut file = opts.open(tmp.path()).await.map_err(io)?;
    let mut hash = Context::new(&SHA256);
    let mut size: u64 = 0;
    let mut stream = std::pin::pin!(body);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ServiceError::BadRequest("the upload was interrupted".into()))?;
        let chunk = chunk.as_ref();
        size = size.saturating_add(chunk.len() as u64);
        if size > limit {
            return Err(too_large());
        }
        hash.update(chunk);
        file.write_all(chunk).await.map_err(io)?;
    }
    if size == 0 {
        return Err(ServiceError::BadRequest("the file is empty".into()));
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
    .map_err(|e| ServiceError::Internal(e.to_string()))?;
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
    Ok(record)
}

/// `actor`'s storage location (relative to the data root), its uploads,
/// and every file in it a dataset could name.
pub async fn files_of(
    actor: &Actor,
    st: &AppState,
) -> ServiceResult<(String, Vec<UploadedFile>, Vec<Listed>)> {
    let dir = own_location(st, &actor.id).await?;
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
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok((location, uploads, files))
}

/// Assigns provider `id`'s storage location `dir` (relative to the data
/// root). Refused when it is not a plain relative path, lies under the
/// default locations, or overlaps another provider's location or a file
/// another provider registered.
pub async fn assign_storage(
    st: &AppState,
    actor: Actor,
    id: String,
    dir: String,
) -> ServiceResult<StorageAssignment> {
    let root = st.config.data_root.clone();
    st.store
        .write(move |tx| {
            let party = party_in(tx, &id)?.ok_or_else(|| ServiceError::not_found("party", &id))?;
            if party.role != Role::Provider {
                return Err(ServiceError::Conflict(format!(
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
            storage::check_assignment(&root, &dir, &others)?;
            let path = root.join(&dir);
            // A location that once held another provider's registered file
            // (before that provider moved) is not handed to someone else.
            if let Ok(canonical) = path.canonicalize() {
                let datasets: Vec<DatasetRecord> = list_in(tx, Table::Datasets, None)?;
                if datasets.iter().any(|d| {
                    d.owner != party.id && std::path::Path::new(&d.spec.path).starts_with(&canonical)
                }) {
                    return Err(ServiceError::Conflict(format!(
                        "`{}` holds a file another provider registered",
                        dir.escape_debug()
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
            earlier.retain(|d| d != &dir);
            storage::create_private_dir(&path)
                .map_err(|e| ServiceError::Internal(format!("creating {}: {e}", dir)))?;
            let now = Utc::now();
            let record = StorageAssignment {
                party: party.id.clone(),
                dir: dir.clone(),
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
        .await
}
