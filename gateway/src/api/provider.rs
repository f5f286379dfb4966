//! Data providers register datasets (R1, R2). A new registration of an
//! existing name by its owner is a new version; another provider cannot
//! register the same name (one source per data item, 一数一源). The file is
//! named relative to the provider's own storage location and read only
//! from there (invariant I17, `crate::storage`).

use super::auth::{Auth, Body};
use super::{blocking, DatasetRecord};
use super::{ApiError, ApiResult};
use crate::keys::new_id;
use crate::state::AppState;
use crate::storage;
use crate::store::{append, list_in, put, NewEntry, Table};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use scenarios::catalog::DatasetSpec;
use scenarios::party::Role;
use serde_json::{json, Value};

pub(crate) async fn register(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(spec): Body<DatasetSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    actor.require(Role::Provider)?;
    spec.validate()?;
    storage::check_name(&spec.path)?;
    // The name's source is checked before any file is looked at.
    let (store, name, owner) = (st.store.clone(), spec.name.clone(), actor.id.clone());
    let taken = blocking(move || {
        let existing: Vec<DatasetRecord> = store.list(Table::Datasets, Some(("name", &name)))?;
        Ok(existing.into_iter().find(|d| d.owner != owner))
    })
    .await?;
    if let Some(other) = taken {
        return Err(one_source(&other));
    }
    // What the provider wrote stays in `file`; the spec the sandbox reads
    // holds the canonical path of the file inside the provider's location.
    let file = spec.path.clone();
    let (store, root, owner, name) = (
        st.store.clone(),
        st.config.data_root.clone(),
        actor.id.clone(),
        file.clone(),
    );
    let resolved = blocking(move || {
        let dir = store.read(|c| storage::dir_of(c, &owner))?;
        storage::resolve(&root, &dir, &name)
    })
    .await?;
    let mut spec = spec;
    spec.path = resolved
        .to_str()
        .ok_or_else(|| ApiError::Internal("the data root is not valid UTF-8".into()))?
        .to_string();
    let profile = sandbox::profile::profile(&spec).await?;
    let store = st.store.clone();
    let record = store.write(move |tx| {
            let existing: Vec<DatasetRecord> = list_in(tx, Table::Datasets, Some(("name", &spec.name)))?;
            if let Some(other) = existing.iter().find(|d| d.owner != actor.id) {
                return Err(one_source(other));
            }
            // Locations never overlap, but one could have been reassigned
            // after its owner registered from it: a file another provider
            // registered stays theirs.
            let all: Vec<DatasetRecord> = list_in(tx, Table::Datasets, None)?;
            if all.iter().any(|d| d.owner != actor.id && d.spec.path == spec.path) {
                return Err(ApiError::Conflict(format!(
                    "file `{}` is registered by another provider",
                    file.escape_debug()
                )));
            }
            // A new version is about the same units: it stays in their
            // population. Another unit kind would start a fresh budget for
            // them (docs/privacy-model.md); a dataset about other units
            // takes another name.
            if let Some(d) = existing.iter().find(|d| d.spec.unit_kind != spec.unit_kind) {
                return Err(ApiError::Conflict(format!(
                    "dataset `{}` version {} is about units of kind `{}`; a new version keeps the unit kind \
                     (and with it the population whose budget its units' privacy loss is charged to)",
                    spec.name,
                    d.version,
                    scenarios::population::population_of(d.spec.unit_kind.as_deref())
                )));
            }
            let version = existing.iter().map(|d| d.version).max().unwrap_or(0) + 1;
            let record = DatasetRecord {
                id: new_id("ds"),
                name: spec.name.clone(),
                version,
                owner: actor.id.clone(),
                owner_name: actor.name.clone(),
                spec: spec.clone(),
                file: Some(file.clone()),
                profile: profile.clone(),
                created_at: Utc::now(),
                review: super::RulesReview::pending(),
            };
            put(tx, &record)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "dataset.register",
                    &record.id,
                    json!({
                        "name": record.name,
                        "version": version,
                        "file": file,
                        "version_hash": profile.version,
                        "rows": profile.rows,
                        "units": profile.units,
                        "unit_unique": profile.unit_unique,
                        "privacy_unit": spec.privacy_unit,
                        "rules": spec.columns.iter().map(|c| json!({"column": c.name, "rule": c.rule})).collect::<Vec<_>>(),
                    }),
                ),
                record.created_at,
            )?;
            Ok(record)
        })
    .await?;
    Ok((StatusCode::CREATED, Json(own_view(&record))))
}

fn one_source(other: &DatasetRecord) -> ApiError {
    ApiError::Conflict(format!(
        "dataset `{}` is provided by {}; each data item has one source",
        other.name, other.owner_name
    ))
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
    let store = st.store.clone();
    let id = actor.id.clone();
    let mine: Vec<DatasetRecord> =
        blocking(move || store.list(Table::Datasets, Some(("owner", &id)))).await?;
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
    let store = st.store.clone();
    let all: Vec<DatasetRecord> = blocking(move || store.list(Table::Datasets, None)).await?;
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
    if !d.approve && d.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ApiError::BadRequest("a rejection needs a reason".into()));
    }
    let record = st
        .store
        .write(move |tx| {
            let mut r: DatasetRecord = crate::store::get_in(tx, Table::Datasets, &id)?
                .ok_or_else(|| ApiError::NotFound(format!("no dataset version {}", id.escape_debug())))?;
            if r.review.status != super::ReviewStatus::Pending {
                return Err(ApiError::Conflict(format!(
                    "the rules of {} were already reviewed",
                    r.id
                )));
            }
            // The owner's organization, nor an account it created, reviews
            // the rules (I16).
            let org = crate::store::party_in(tx, &r.owner)?
                .map(|p| p.organization)
                .unwrap_or_default();
            scenarios::party::check_independent(&actor, &r.owner, &org)?;
            let now = Utc::now();
            r.review = super::RulesReview {
                status: if d.approve {
                    super::ReviewStatus::Approved
                } else {
                    super::ReviewStatus::Rejected
                },
                by: Some(actor.id.clone()),
                at: Some(now),
                reason: d.reason,
            };
            put(tx, &r)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    if d.approve {
                        "rules.approve"
                    } else {
                        "rules.reject"
                    },
                    &r.id,
                    json!({"name": r.name, "version": r.version, "reason": r.review.reason}),
                ),
                now,
            )?;
            Ok(r)
        })
        .await?;
    Ok(Json(super::catalog::view(&record)))
}
