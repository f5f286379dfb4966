//! Parties: creating one (in an organization, or with a new one of its
//! own), reissuing and revoking their tokens, only by a party that may
//! create the holder's role in its organization (I16), each with its
//! ledger entry.

use crate::error::{ServiceError, ServiceResult};
use crate::keys::{new_id, new_token};
use crate::state::AppState;
use crate::store::{append, get_in, party_in, put, NewEntry, Organization, Party, Store, StoreOps, Table};
use chrono::Utc;
use scenarios::party::{Actor, Role};
use serde_json::json;

/// Creates a party named `name` (trimmed, 1-200 characters) of `role`,
/// in `organization` (`org_...`) or, when absent, in a new organization
/// of the same name recorded in the same ledger entry; returns it with its
/// token, to be shown once (the store keeps its hash).
pub async fn create(
    st: &AppState,
    actor: Actor,
    name: String,
    role: Role,
    organization: Option<String>,
) -> ServiceResult<(Party, String)> {
    let name = name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        return Err(ServiceError::BadRequest("name must be 1-200 characters".into()));
    }
    // Separation of duties (I16): who may create which role, and
    // in which organization, is the domain's rule.
    let placed = scenarios::party::may_create(&actor, role, organization.as_deref())?;
    let (token, hash) = new_token();
    let now = Utc::now().to_rfc3339();
    let party = st
        .store
        .write(move |tx| {
            // A party without an organization gets its own, recorded in the
            // same ledger entry as the party.
            let (org, new_org) = match placed {
                Some(id) => (
                    get_in::<Organization>(tx, Table::Organizations, &id)?.ok_or_else(|| {
                        ServiceError::NotFound(format!("no organization {}", id.escape_debug()))
                    })?,
                    false,
                ),
                None => {
                    let org = Organization {
                        id: new_id("org"),
                        name: name.clone(),
                        registration: None,
                        created_at: now.clone(),
                        standing: Vec::new(),
                    };
                    put(tx, &org)?;
                    (org, true)
                }
            };
            let p = Party {
                id: new_id("pt"),
                name,
                role,
                created_at: now,
                organization: org.id,
                created_by: Some(actor.id.clone()),
            };
            Store::insert_party(tx, &p, &hash)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "party.create",
                    &p.id,
                    json!({"name": p.name, "role": p.role, "organization": p.organization,
                        "new_organization": new_org, "created_by": p.created_by}),
                ),
                Utc::now(),
            )?;
            Ok(p)
        })
        .await?;
    Ok((party, token))
}

/// Fails unless `actor` may manage the token of party `id`: only a party
/// that may create that role in that organization (I16), so the
/// operator cannot take over, or shut out, a regulator's account.
fn may_manage(tx: &dyn StoreOps, actor: &scenarios::party::Actor, id: &str) -> ServiceResult<()> {
    let target = party_in(tx, id)?.ok_or_else(|| ServiceError::not_found("party", id))?;
    match scenarios::party::may_create(actor, target.role, Some(&target.organization)) {
        Ok(_) => Ok(()),
        Err(scenarios::Error::Forbidden(why)) => Err(ServiceError::Forbidden(format!(
            "the token of this {} is not yours to manage ({why})",
            target.role
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Replaces party `id`'s token hash by `hash`, if `actor` may manage it,
/// with the ledger entry `action`.
async fn set_token(
    st: &AppState,
    actor: Actor,
    id: String,
    hash: String,
    action: &'static str,
) -> ServiceResult<()> {
    st.store
        .write(move |tx| {
            may_manage(tx, &actor, &id)?;
            if !Store::set_token_hash(tx, &id, &hash)? {
                return Err(ServiceError::not_found("party", &id));
            }
            append(tx, NewEntry::by(&actor, action, &id, json!({})), Utc::now())
        })
        .await?;
    Ok(())
}

/// Issues a new token for party `id` (the old one stops working) and
/// returns it, to be shown once.
pub async fn reissue_token(st: &AppState, actor: Actor, id: String) -> ServiceResult<String> {
    let (token, hash) = new_token();
    set_token(st, actor, id, hash, "party.token_reissue").await?;
    Ok(token)
}

/// Revokes party `id`'s token: every request with it is refused from now
/// on. No one revokes their own.
pub async fn revoke_token(st: &AppState, actor: Actor, id: String) -> ServiceResult<()> {
    if id == actor.id {
        return Err(ServiceError::Conflict(
            "an operator cannot revoke its own token".into(),
        ));
    }
    // A value no token hashes to (token hashes are 64 hex digits).
    let revoked = format!("revoked:{}", new_id("rv"));
    set_token(st, actor, id, revoked, "party.revoke").await
}

/// Every party (the operator and the regulator list them). Blocking.
pub fn all(st: &AppState) -> ServiceResult<Vec<Party>> {
    st.store.parties()
}

/// The party holding the token whose hash is `hash`, as an actor with the
/// chain of accounts that created it; `None` for an unknown token.
pub async fn actor_by_token(st: &AppState, hash: String) -> ServiceResult<Option<Actor>> {
    let store = st.store.clone();
    let found = tokio::task::spawn_blocking(move || store.actor_by_token(&hash))
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))??;
    Ok(found.map(|(party, creators)| Actor {
        id: party.id,
        role: party.role,
        name: party.name,
        org: party.organization,
        creators,
    }))
}
