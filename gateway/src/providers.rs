//! Data providers' datasets (R1, R2): registering a version (one source
//! per data item, 一数一源; the file named relative to the provider's own
//! storage location and read only from there, I17, `crate::storage`), and
//! the operator's review of its desensitization rules, never by the
//! owner's organization (I16). Each change is one transaction with its
//! ledger entry.

use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::records::{DatasetRecord, ReviewStatus, RulesReview};
use crate::state::AppState;
use crate::storage;
use crate::store::{append, blocking, get_in, list_in, party_in, put, NewEntry, Table};
use chrono::Utc;
use scenarios::catalog::DatasetSpec;
use scenarios::party::Actor;
use serde_json::json;

/// Registers `spec` as a new version of its dataset by `actor`, profiled
/// from the file it names inside the provider's storage location.
pub async fn register(st: &AppState, actor: Actor, spec: DatasetSpec) -> ServiceResult<DatasetRecord> {
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
        .ok_or_else(|| ServiceError::Internal("the data root is not valid UTF-8".into()))?
        .to_string();
    let profile = sandbox::profile::profile(&spec).await?;
    let store = st.store.clone();
    store.write(move |tx| {
            let existing: Vec<DatasetRecord> = list_in(tx, Table::Datasets, Some(("name", &spec.name)))?;
            if let Some(other) = existing.iter().find(|d| d.owner != actor.id) {
                return Err(one_source(other));
            }
            // Locations never overlap, but one could have been reassigned
            // after its owner registered from it: a file another provider
            // registered stays theirs.
            let all: Vec<DatasetRecord> = list_in(tx, Table::Datasets, None)?;
            if all.iter().any(|d| d.owner != actor.id && d.spec.path == spec.path) {
                return Err(ServiceError::Conflict(format!(
                    "file `{}` is registered by another provider",
                    file.escape_debug()
                )));
            }
            // A new version is about the same units: it stays in their
            // population. Another unit kind would start a fresh budget for
            // them (docs/privacy-model.md); a dataset about other units
            // takes another name.
            if let Some(d) = existing.iter().find(|d| d.spec.unit_kind != spec.unit_kind) {
                return Err(ServiceError::Conflict(format!(
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
                review: RulesReview::pending(),
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
    .await
}

fn one_source(other: &DatasetRecord) -> ServiceError {
    ServiceError::Conflict(format!(
        "dataset `{}` is provided by {}; each data item has one source",
        other.name, other.owner_name
    ))
}

/// Approves or rejects the rules of dataset version `id` (R2); a
/// rejection needs a reason.
pub async fn review_rules(
    st: &AppState,
    actor: Actor,
    id: String,
    approve: bool,
    reason: Option<String>,
) -> ServiceResult<DatasetRecord> {
    if !approve && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ServiceError::BadRequest("a rejection needs a reason".into()));
    }
    st.store
        .write(move |tx| {
            let mut r: DatasetRecord = get_in(tx, Table::Datasets, &id)?
                .ok_or_else(|| ServiceError::NotFound(format!("no dataset version {}", id.escape_debug())))?;
            if r.review.status != ReviewStatus::Pending {
                return Err(ServiceError::Conflict(format!(
                    "the rules of {} were already reviewed",
                    r.id
                )));
            }
            // The owner's organization, nor an account it created, reviews
            // the rules (I16).
            let org = party_in(tx, &r.owner)?
                .map(|p| p.organization)
                .unwrap_or_default();
            scenarios::party::check_independent(&actor, &r.owner, &org)?;
            let now = Utc::now();
            r.review = RulesReview {
                status: if approve {
                    ReviewStatus::Approved
                } else {
                    ReviewStatus::Rejected
                },
                by: Some(actor.id.clone()),
                at: Some(now),
                reason,
            };
            put(tx, &r)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    if approve { "rules.approve" } else { "rules.reject" },
                    &r.id,
                    json!({"name": r.name, "version": r.version, "reason": r.review.reason}),
                ),
                now,
            )?;
            Ok(r)
        })
        .await
}

/// Every version of the datasets `owner` provides. Blocking.
pub fn of_owner(st: &AppState, owner: &str) -> ServiceResult<Vec<DatasetRecord>> {
    st.store.list(Table::Datasets, Some(("owner", owner)))
}

/// Every dataset version with its rules and their review. Blocking.
pub fn all_versions(st: &AppState) -> ServiceResult<Vec<DatasetRecord>> {
    st.store.list(Table::Datasets, None)
}
