//! Key rotation (issue 16): a new generation of the ledger signing key or
//! of the tokenization master key, announced in a `key.rotate` entry
//! endorsed by the ledger key in force (`docs/keys.md`). Kept apart from
//! `keys` (the key material), which the application state holds.

use crate::error::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::store::{append, blocking, NewEntry};
use chrono::Utc;
use scenarios::ledger::SignedCheckpoint;
use scenarios::party::Actor;
use serde_json::{json, Value};

/// Which key a rotation renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotatedKey {
    /// The ledger signing key.
    Ledger,
    /// The tokenization master key.
    Tokenization,
}

impl RotatedKey {
    /// The key's name in the ledger and in answers.
    pub fn name(self) -> &'static str {
        match self {
            RotatedKey::Ledger => "ledger",
            RotatedKey::Tokenization => "tokenization",
        }
    }
}

/// A rotation recorded in the ledger.
#[derive(Debug)]
pub struct Rotated {
    /// The new generation.
    pub generation: u64,
    /// The details of its `key.rotate` entry.
    pub details: Value,
    /// The entry's sequence number.
    pub seq: u64,
}

/// The reason of a rotation, trimmed: 1 to 1000 bytes, or 400.
fn checked_reason(reason: String) -> ServiceResult<String> {
    let reason = reason.trim().to_string();
    if reason.is_empty() || reason.len() > 1000 {
        return Err(ServiceError::BadRequest(
            "a rotation needs a `reason` of 1 to 1000 bytes (it is recorded in the ledger)".into(),
        ));
    }
    Ok(reason)
}

/// The shared course of a key rotation (one at a time): the new generation
/// is made and written before anything uses it; its `key.rotate` entry,
/// endorsed by the ledger key in force (`crate::ledger::follow_key_chain`),
/// puts it in force in the same transaction; if the entry does not commit,
/// the generation is withdrawn and its file is replaced by the next
/// rotation.
async fn rotate(st: &AppState, actor: Actor, reason: String, kind: RotatedKey) -> ServiceResult<Rotated> {
    let _one_at_a_time = st.key_rotation.lock().await;
    let keys = st.keys.clone();
    let first = st.keys.first_public_key();
    let (generation, details) = blocking(move || {
        let fail = |e: anyhow::Error| ServiceError::Internal(e.to_string());
        Ok(match kind {
            RotatedKey::Ledger => {
                let (g, public_key) = keys.prepare_ledger_rotation().map_err(fail)?;
                let note_key = scenarios::ledger::VerifierKey::operator_of(&first, &public_key)
                    .ok_or_else(|| ServiceError::Internal("the new ledger key is not an Ed25519 key".into()))?
                    .to_string();
                let id = hex::encode(&public_key);
                let endorsement = keys.endorse("ledger", g, &id);
                (
                    g,
                    json!({"key": "ledger", "generation": g, "public_key": id, "note_key": note_key,
                           "endorsement": endorsement, "reason": reason}),
                )
            }
            RotatedKey::Tokenization => {
                let (g, fingerprint) = keys.prepare_token_rotation().map_err(fail)?;
                let endorsement = keys.endorse("tokenization", g, &fingerprint);
                (
                    g,
                    json!({"key": "tokenization", "generation": g, "fingerprint": fingerprint,
                           "endorsement": endorsement, "reason": reason}),
                )
            }
        })
    })
    .await?;
    let subject = match kind {
        RotatedKey::Ledger => crate::ledger::LEDGER_KEY_SUBJECT,
        RotatedKey::Tokenization => crate::ledger::TOKEN_KEY_SUBJECT,
    };
    let keys = st.keys.clone();
    let now = Utc::now();
    let entry = details.clone();
    let written = st
        .store
        .clone()
        .write(move |tx| {
            let seq = append(
                tx,
                NewEntry::by(&actor, scenarios::ledger::KEY_ROTATE, subject, entry),
                now,
            )?;
            // In force before the entry commits: for the ledger key, no
            // tree beyond the entry can be read, and so signed, before the
            // new key signs it.
            match kind {
                RotatedKey::Ledger => keys.announce_ledger(generation, seq),
                RotatedKey::Tokenization => keys.announce_token(generation),
            }
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
            Ok(seq)
        })
        .await;
    match written {
        Ok(seq) => Ok(Rotated {
            generation,
            details,
            seq,
        }),
        Err(e) => {
            // Withdrawn only when the entry is not in the ledger (a write
            // that failed after committing keeps it; a restart rebuilds the
            // keys in force from the ledger either way).
            let store = st.store.clone();
            let recorded = blocking(move || {
                Ok(store.ledger_for(subject)?.iter().any(|e| {
                    serde_json::from_str::<scenarios::ledger::EntryBody>(&e.body).is_ok_and(|b| {
                        b.action == scenarios::ledger::KEY_ROTATE
                            && b.details.get("generation").and_then(|g| g.as_u64()) == Some(generation)
                    })
                }))
            })
            .await;
            if matches!(recorded, Ok(false)) {
                match kind {
                    RotatedKey::Ledger => st.keys.withdraw_ledger(generation),
                    RotatedKey::Tokenization => st.keys.withdraw_token(generation),
                }
            }
            Err(e)
        }
    }
}

/// Rotates the tokenization master key: a new generation, used by
/// agreements issued from now on (open agreements keep theirs).
pub async fn rotate_token_key(st: &AppState, actor: Actor, reason: String) -> ServiceResult<Rotated> {
    let reason = checked_reason(reason)?;
    rotate(st, actor, reason, RotatedKey::Tokenization).await
}

/// Rotates the ledger signing key; returns the rotation with the
/// checkpoint of the tree ending at its announcement, signed by the old
/// key (checkpoints of larger trees are signed by the new one).
pub async fn rotate_ledger_key(
    st: &AppState,
    actor: Actor,
    reason: String,
) -> ServiceResult<(Rotated, SignedCheckpoint)> {
    let reason = checked_reason(reason)?;
    let r = rotate(st, actor, reason, RotatedKey::Ledger).await?;
    let seq = r.seq;
    // The tree ending at the announcement, signed by the old key.
    let st2 = st.clone();
    let announced_under = blocking(move || {
        st2.ledger
            .checkpoint_at(&st2.store, &st2.keys, seq.saturating_add(1))
    })
    .await?;
    Ok((r, announced_under))
}
