//! The airlock: outputs held for the operator's review (a scenario that
//! requires it) wait here; the operator releases them, with the
//! `result.release` entry, or withholds them with a reason. The
//! developer's organization, nor an account it created, reviews its own
//! output (I16).

use crate::error::{ServiceError, ServiceResult};
use crate::records::{JobRecord, JobStatus};
use crate::state::AppState;
use crate::store::{append, get_in, party_in, put, NewEntry, Table};
use chrono::Utc;
use scenarios::party::Actor;
use serde_json::{json, Value};

/// How much of a held output the review preview shows, in bytes.
const PREVIEW_BYTES: usize = 16 * 1024;

/// Jobs whose output waits in the airlock, each with a preview of its
/// output (already protected), as text. Blocking.
pub fn waiting(st: &AppState) -> ServiceResult<Vec<(JobRecord, String)>> {
    let store = &st.store;
    let jobs: Vec<JobRecord> = store.list(Table::Jobs, Some(("status", "awaiting_review")))?;
    let mut out = Vec::with_capacity(jobs.len());
    for j in jobs {
        let output = store.job_output(&j.id)?.unwrap_or_default();
        let preview = String::from_utf8_lossy(output.get(..PREVIEW_BYTES).unwrap_or(&output)).into_owned();
        out.push((j, preview));
    }
    Ok(out)
}

/// Releases (`approve`) or withholds (with a `reason`) the output of job
/// `id`, waiting for review, with its ledger entries in one transaction.
pub async fn decide(
    st: &AppState,
    actor: Actor,
    id: String,
    approve: bool,
    reason: Option<String>,
) -> ServiceResult<JobRecord> {
    if !approve && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ServiceError::BadRequest(
            "withholding an output needs a reason".into(),
        ));
    }
    let store = st.store.clone();
    store
        .write(move |tx| {
            let mut j: JobRecord = get_in(tx, Table::Jobs, &id)?
                .ok_or_else(|| ServiceError::NotFound(format!("no job {}", id.escape_debug())))?;
            if j.status != JobStatus::AwaitingReview {
                return Err(ServiceError::Conflict(format!(
                    "job {} is not waiting for review",
                    j.id
                )));
            }
            // The developer's organization, nor an account it created,
            // reviews its output (I16).
            let org = party_in(tx, &j.developer_id)?
                .map(|p| p.organization)
                .unwrap_or_default();
            scenarios::party::check_independent(&actor, &j.developer_id, &org)?;
            let now = Utc::now();
            j.status = if approve {
                JobStatus::Succeeded
            } else {
                JobStatus::Withheld
            };
            let decision = json!({"approve": approve, "reason": reason, "by": actor.id, "at": now});
            if let Some(Value::Object(r)) = j.review.as_mut() {
                r.insert("decision".into(), decision.clone());
            } else {
                j.review = Some(json!({"decision": decision}));
            }
            put(tx, &j)?;
            let action = if approve {
                "review.approve"
            } else {
                "review.withhold"
            };
            append(
                tx,
                NewEntry::by(
                    &actor,
                    action,
                    &j.id,
                    json!({"reason": reason, "output_hash": j.output_hash}),
                ),
                now,
            )?;
            if approve {
                append(tx, crate::jobs::release_entry(&actor, &j, Some(&actor.id)), now)?;
            }
            Ok(j)
        })
        .await
}
