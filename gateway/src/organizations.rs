//! Organizations (R10): creating one and recording standing facts about
//! it (qualifications, sanctions, ...), each with its ledger entry.

use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::state::AppState;
use crate::store::{append, get_in, put, NewEntry, Organization, Party, Table};
use chrono::Utc;
use scenarios::party::{Actor, Standing};
use serde_json::json;

/// Creates an organization named `name` (trimmed, 1-200 characters).
pub async fn create(
    st: &AppState,
    actor: Actor,
    name: String,
    registration: Option<String>,
) -> ServiceResult<Organization> {
    let name = name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        return Err(ServiceError::BadRequest("name must be 1-200 characters".into()));
    }
    let org = Organization {
        id: new_id("org"),
        name,
        registration,
        created_at: Utc::now().to_rfc3339(),
        standing: Vec::new(),
    };
    let o = org.clone();
    st.store
        .write(move |tx| {
            put(tx, &o)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "organization.create",
                    &o.id,
                    json!({"name": o.name, "registration": o.registration}),
                ),
                Utc::now(),
            )
        })
        .await?;
    Ok(org)
}

/// Records a standing fact about organization `id` (R10): its source is
/// required, and `until` is not before `date`.
pub async fn record_standing(
    st: &AppState,
    actor: Actor,
    id: String,
    rec: Standing,
) -> ServiceResult<Organization> {
    if rec.source.trim().is_empty() {
        return Err(ServiceError::BadRequest(
            "the source of the record is required".into(),
        ));
    }
    if rec.until.is_some_and(|u| u < rec.date) {
        return Err(ServiceError::BadRequest("`until` is before `date`".into()));
    }
    st.store
        .write(move |tx| {
            let mut org: Organization = get_in(tx, Table::Organizations, &id)?
                .ok_or_else(|| ServiceError::NotFound(format!("no organization {}", id.escape_debug())))?;
            org.standing.push(rec.clone());
            put(tx, &org)?;
            append(
                tx,
                NewEntry::by(&actor, "organization.standing", &org.id, json!({"record": rec})),
                Utc::now(),
            )?;
            Ok(org)
        })
        .await
}

/// Every organization with its member parties (by creation). Blocking.
pub fn with_members(st: &AppState) -> ServiceResult<Vec<(Organization, Vec<Party>)>> {
    let orgs: Vec<Organization> = st.store.list(Table::Organizations, None)?;
    let parties = st.store.parties()?;
    Ok(orgs
        .into_iter()
        .map(|o| {
            let members = parties
                .iter()
                .filter(|p| p.organization == o.id)
                .cloned()
                .collect();
            (o, members)
        })
        .collect())
}
