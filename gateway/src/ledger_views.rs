//! What each party sees of the ledger (I14): the regulator sees it as it
//! stands; everyone else sees it as of the latest published checkpoint
//! (signed and published at a fixed pace, see [`crate::ledger`]), with
//! proofs only up to that size, so that polling does not time each query
//! of a running job. Also the regulator's views over it: the witness's
//! checkpoint with its key chain, and every release with its lineage and
//! receipt (R21, R23). Blocking.

use crate::error::{ServiceError, ServiceResult};
use crate::records::{JobRecord, JobStatus};
use crate::state::AppState;
use crate::store::Table;
use chrono::{DateTime, Utc};
use scenarios::ledger::{KeyLink, Receipt, SignedCheckpoint};
use scenarios::party::{Actor, Role};
use serde_json::{json, Value};

/// The current signed checkpoint (signed now if the ledger grew) for the
/// regulator; the latest published one for everyone else.
pub fn checkpoint_for(st: &AppState, actor: &Actor) -> ServiceResult<SignedCheckpoint> {
    let cp = match actor.role {
        Role::Regulator => st.ledger.checkpoint(&st.store, &st.keys)?,
        _ => st.ledger.published(&st.store, &st.keys)?,
    };
    st.ledger.with_note(&st.store, &st.keys, cp)
}

/// Stored checkpoints in a size range: every one for the regulator, the
/// published ones for everyone else.
pub fn checkpoints_for(
    st: &AppState,
    actor: &Actor,
    from: u64,
    to: u64,
) -> ServiceResult<Vec<SignedCheckpoint>> {
    let list = match actor.role {
        Role::Regulator => st.store.checkpoints(from, to)?,
        _ => st.store.published_checkpoints(from, to)?,
    };
    list.into_iter()
        .map(|cp| st.ledger.with_note(&st.store, &st.keys, cp))
        .collect::<ServiceResult<Vec<_>>>()
}

/// The largest tree size `actor` may ask proofs about: none for the
/// regulator, the published size for everyone else.
fn proof_limit(st: &AppState, actor: &Actor) -> ServiceResult<Option<u64>> {
    match actor.role {
        Role::Regulator => Ok(None),
        _ => Ok(Some(st.ledger.published(&st.store, &st.keys)?.checkpoint.size)),
    }
}

/// Refuses a proof about a tree larger than the caller may see.
fn within(limit: Option<u64>, size: u64) -> ServiceResult<()> {
    match limit {
        Some(published) if size > published => Err(ServiceError::BadRequest(format!(
            "proofs are served up to the latest published checkpoint (size {published}); size {size} is beyond it"
        ))),
        _ => Ok(()),
    }
}

/// The inclusion proof of entry `seq` in the tree of `size`, if `actor`
/// may see that tree.
pub fn inclusion_for(st: &AppState, actor: &Actor, seq: u64, size: u64) -> ServiceResult<Vec<String>> {
    within(proof_limit(st, actor)?, size)?;
    st.ledger.inclusion_proof(&st.store, seq, size)
}

/// The consistency proof from the tree of `first` to that of `second`, if
/// `actor` may see both.
pub fn consistency_for(st: &AppState, actor: &Actor, first: u64, second: u64) -> ServiceResult<Vec<String>> {
    let limit = proof_limit(st, actor)?;
    within(limit, first)?;
    within(limit, second)?;
    st.ledger.consistency_proof(&st.store, first, second)
}

/// The regulator's receipt for entry `seq`, under the current checkpoint.
pub fn receipt(st: &AppState, seq: u64) -> ServiceResult<Receipt> {
    let current = st.ledger.checkpoint(&st.store, &st.keys)?;
    st.ledger.receipt(&st.store, &st.keys, seq, &current)
}

/// The receipt of the released result of job `id` of `developer`: proven
/// under the published checkpoint, or one over the ledger up to the
/// release entry, never the ledger as it stands now, whose size would tell
/// the caller how far other jobs have got.
pub fn release_receipt(st: &AppState, developer: &str, id: &str) -> ServiceResult<Receipt> {
    let j = crate::jobs::own_job(st, developer, id)?;
    st.ledger
        .published_release_receipt(&st.store, &st.keys, &j.id)?
        .ok_or_else(|| ServiceError::Conflict(format!("job {} has no released output", j.id)))
}

/// Stores a witness's cosignature of the checkpoint of `size` (verified
/// first); false when that witness's line was stored already.
pub fn cosign(
    st: &AppState,
    actor: &Actor,
    size: u64,
    witness: &scenarios::ledger::VerifierKey,
    cosignature: &str,
) -> ServiceResult<bool> {
    st.ledger
        .cosign(&st.store, &st.keys, actor, size, witness, cosignature)
}

/// Writes the ledger's entries from `from` to `out` (with the export's
/// header when `from` is 0), each burst closed by a signed checkpoint;
/// with `follow`, waits for more (polling every `poll`) until `gone` says
/// the reader went away or `out` fails. Errors end the feed, logged.
pub fn feed(
    st: &AppState,
    from: u64,
    follow: bool,
    poll: std::time::Duration,
    out: &mut impl std::io::Write,
    gone: impl Fn() -> bool,
) {
    let mut from = from;
    let mut header = from == 0;
    loop {
        match st.ledger.export(&st.store, &st.keys, from, header, out) {
            Ok(end) => from = end,
            Err(e) => {
                tracing::error!(error = %e, "ledger feed stopped");
                return;
            }
        }
        header = false;
        if out.flush().is_err() || !follow {
            return;
        }
        loop {
            std::thread::sleep(poll);
            if gone() {
                return;
            }
            match st.ledger.size(&st.store) {
                Ok(n) if n > from => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "ledger feed stopped");
                    return;
                }
            }
        }
    }
}

/// Refuses a feed of the ledger starting beyond its end.
pub fn check_feed_start(st: &AppState, from: u64) -> ServiceResult<()> {
    let size = st.ledger.size(&st.store)?;
    if from > size {
        return Err(ServiceError::BadRequest(format!(
            "the ledger has {size} entries; a feed cannot start at {from}"
        )));
    }
    Ok(())
}

/// What the regulator's witness cosigns: a checkpoint with its
/// consistency proof from size `from`, and the key chain: each ledger key
/// announcement before the checkpoint, under the tree ending at it (signed
/// by the key before), with the consistency proof from that tree to the
/// checkpoint.
pub type ForWitness = (SignedCheckpoint, Vec<String>, Vec<KeyLink>, Vec<Vec<String>>);

/// The witness's checkpoint, proof and key chain ([`ForWitness`]).
pub fn for_witness(st: &AppState, from: u64) -> ServiceResult<ForWitness> {
    let (cp, proof) = st.ledger.for_witness(&st.store, &st.keys, from)?;
    let size = cp.checkpoint.size;
    let chain = st.ledger.key_chain(&st.store, &st.keys, size)?;
    let chain_proofs = chain
        .iter()
        .map(|l| {
            st.ledger
                .consistency_proof(&st.store, l.checkpoint.checkpoint.size, size)
        })
        .collect::<ServiceResult<Vec<_>>>()?;
    Ok((cp, proof, chain, chain_proofs))
}

/// Filters of the release list; all optional, combined with AND.
#[derive(Debug, Default)]
pub struct ReleaseFilter {
    /// Of this agreement.
    pub agreement: Option<String>,
    /// Of this scenario.
    pub scenario: Option<String>,
    /// Of this developer.
    pub developer: Option<String>,
    /// Released at or after.
    pub since: Option<DateTime<Utc>>,
    /// Released before.
    pub until: Option<DateTime<Utc>>,
}

impl ReleaseFilter {
    fn keeps(&self, j: &JobRecord) -> bool {
        let at = j.finished_at;
        self.agreement.as_ref().is_none_or(|a| *a == j.agreement_id)
            && self.scenario.as_ref().is_none_or(|s| *s == j.scenario_id)
            && self.developer.as_ref().is_none_or(|d| *d == j.developer_id)
            && self.since.is_none_or(|t| at.is_some_and(|at| at >= t))
            && self.until.is_none_or(|t| at.is_some_and(|at| at < t))
    }
}

/// Every release `filter` keeps, by time, each as `{job, lineage,
/// receipt}`: the job, its ledger entries and its receipt under one
/// current checkpoint.
pub fn releases(st: &AppState, filter: &ReleaseFilter) -> ServiceResult<Vec<Value>> {
    let store = &st.store;
    let mut jobs: Vec<JobRecord> = match &filter.agreement {
        Some(a) => store.list(Table::Jobs, Some(("agreement_id", a)))?,
        None => store.list(Table::Jobs, None)?,
    };
    jobs.retain(|j| j.status == JobStatus::Succeeded && filter.keeps(j));
    jobs.sort_by_key(|j| j.finished_at);
    // One current checkpoint serves every receipt in the list.
    let current = st.ledger.checkpoint(store, &st.keys)?;
    let mut releases = Vec::new();
    for j in &jobs {
        let lineage: Vec<Value> = store
            .ledger_for(&j.id)?
            .iter()
            .map(|e| {
                let body: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
                json!({"seq": e.seq, "hash": e.hash, "entry": body})
            })
            .collect();
        let receipt = st.ledger.release_receipt(store, &st.keys, &j.id, &current)?;
        releases.push(json!({"job": j, "lineage": lineage, "receipt": receipt}));
    }
    Ok(releases)
}
