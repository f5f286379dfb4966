//! Parties' tokens: reissuing and revoking them, only by a party that may
//! create the holder's role in its organization (I16), each with its
//! ledger entry.

use crate::error::{ServiceError, ServiceResult};
use crate::keys::{new_id, new_token};
use crate::state::AppState;
use crate::store::{append, party_in, NewEntry, Store, Tx};
use chrono::Utc;
use scenarios::party::Actor;
use serde_json::json;

/// Fails unless `actor` may manage the token of party `id`: only a party
/// that may create that role in that organization (I16), so the
/// operator cannot take over, or shut out, a regulator's account.
fn may_manage(tx: &Tx<'_>, actor: &scenarios::party::Actor, id: &str) -> ServiceResult<()> {
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
