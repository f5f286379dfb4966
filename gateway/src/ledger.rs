//! The ledger service: the in-memory Merkle tree over committed entries,
//! signed checkpoints, inclusion and consistency proofs, receipts, and the
//! export feed. The verifier itself lives in `scenarios::ledger` so that it
//! runs offline with no platform code.
//!
//! The tree is derived data: it is rebuilt from the stored leaf hashes on
//! first use and caught up from the store whenever a proof or checkpoint is
//! asked for, so it only ever covers committed entries, in order.
//!
//! Parties other than the regulator see the ledger only as of the latest
//! *published* checkpoint, which the server's periodic signer publishes at
//! most once per [`crate::state::Config::publish_every`] (I14): the ledger
//! grows at each query a job makes, so a checkpoint signed on demand would
//! let a developer time its job's queries.

use crate::error::{ServiceError, ServiceResult};
use crate::keys::Keys;
use crate::store::{append, NewEntry, Store};
use chrono::{SubsecRound, Utc};
use scenarios::ledger::{
    note, proof_hex, verify_export_witnessed, Checkpoint, ConsistencyLink, ExportCheckpoint, ExportEntry,
    ExportHeader, KeyLink, MerkleTree, ProofError, Receipt, SignedCheckpoint, VerifierKey, VerifyFailure,
    VerifyReport, EXPORT_FORMAT, RECEIPT_FORMAT,
};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Entries read from the store per page.
const PAGE: u64 = 10_000;

/// The ledger's derived state.
#[derive(Debug, Default)]
pub struct Ledger {
    tree: Mutex<MerkleTree>,
    /// The latest published checkpoint, once there is one.
    published: Mutex<Option<SignedCheckpoint>>,
}

impl From<ProofError> for ServiceError {
    fn from(e: ProofError) -> ServiceError {
        ServiceError::BadRequest(e.to_string())
    }
}

impl Ledger {
    /// An empty service; the tree is loaded on first use.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// The tree, caught up with every committed entry.
    fn tree(&self, store: &Store) -> ServiceResult<MutexGuard<'_, MerkleTree>> {
        let mut tree = self
            .tree
            .lock()
            .map_err(|_| ServiceError::Internal("ledger tree lock poisoned".into()))?;
        loop {
            let page = store.ledger_hashes(tree.size(), PAGE)?;
            if page.is_empty() {
                return Ok(tree);
            }
            for (seq, h) in page {
                if seq != tree.size() {
                    return Err(ServiceError::Internal(format!(
                        "ledger entry {} is missing from the store",
                        tree.size()
                    )));
                }
                tree.push(h);
            }
        }
    }

    /// Number of committed entries.
    pub fn size(&self, store: &Store) -> ServiceResult<u64> {
        Ok(self.tree(store)?.size())
    }

    /// A signed checkpoint over every committed entry: the stored one if it
    /// is current, otherwise a new one, signed and stored.
    pub fn checkpoint(&self, store: &Store, keys: &Keys) -> ServiceResult<SignedCheckpoint> {
        let tree = self.tree(store)?;
        let size = tree.size();
        if let Some(cp) = store.checkpoint_at_or_before(size)? {
            if cp.checkpoint.size == size {
                return Ok(cp);
            }
        }
        let root = tree.root();
        drop(tree);
        sign_and_store(store, keys, size, root)
    }

    /// A signed checkpoint over the first `size` entries (at most the
    /// committed ones): the stored one, or one signed now and stored.
    pub fn checkpoint_at(&self, store: &Store, keys: &Keys, size: u64) -> ServiceResult<SignedCheckpoint> {
        if let Some(cp) = store
            .checkpoint_at_or_before(size)?
            .filter(|c| c.checkpoint.size == size)
        {
            return Ok(cp);
        }
        let root = self.tree(store)?.root_at(size)?;
        sign_and_store(store, keys, size, root)
    }

    /// Publishes the current checkpoint (signed now if the ledger grew):
    /// from now on it is what parties other than the regulator see of the
    /// ledger. Called by the periodic signer only, so publications come
    /// at a fixed pace whatever the ledger does.
    pub fn publish(&self, store: &Store, keys: &Keys) -> ServiceResult<SignedCheckpoint> {
        let before = self.published_now()?;
        if let Some(p) = &before {
            if p.checkpoint.size == self.size(store)? {
                return Ok(p.clone());
            }
        }
        let cp = self.checkpoint(store, keys)?;
        store.put_publication(cp.checkpoint.size, Utc::now())?;
        let mut published = self
            .published
            .lock()
            .map_err(|_| ServiceError::Internal("published checkpoint lock poisoned".into()))?;
        if published
            .as_ref()
            .is_none_or(|p| p.checkpoint.size <= cp.checkpoint.size)
        {
            *published = Some(cp.clone());
        }
        Ok(cp)
    }

    fn published_now(&self) -> ServiceResult<Option<SignedCheckpoint>> {
        Ok(self
            .published
            .lock()
            .map_err(|_| ServiceError::Internal("published checkpoint lock poisoned".into()))?
            .clone())
    }

    /// The latest published checkpoint (published now if nothing was yet:
    /// only before the periodic signer's first round).
    pub fn published(&self, store: &Store, keys: &Keys) -> ServiceResult<SignedCheckpoint> {
        match self.published_now()? {
            Some(cp) => Ok(cp),
            None => self.publish(store, keys),
        }
    }

    /// The receipt of a job's `result.release` entry as its developer
    /// gets it: under the published checkpoint when that covers the entry,
    /// otherwise under a checkpoint over the ledger up to and including
    /// the entry (signed once and stored). Never under the ledger as it
    /// stands at the request, whose size would tell how far other jobs
    /// have got.
    pub fn published_release_receipt(
        &self,
        store: &Store,
        keys: &Keys,
        job_id: &str,
    ) -> ServiceResult<Option<Receipt>> {
        let Some(seq) = store.ledger_seq_of(job_id, "result.release")? else {
            return Ok(None);
        };
        let published = self.published(store, keys)?;
        // A published checkpoint a witness cosigned is preferred, so the
        // receipt carries the cosignature (`verify-receipt --witness-key`).
        let cosigned = match store.largest_cosigned(seq.saturating_add(1), published.checkpoint.size)? {
            Some(size) => store.published_checkpoints(size, size)?.pop(),
            None => None,
        };
        let checkpoint = match cosigned {
            Some(cp) => cp,
            None if published.checkpoint.size > seq => published,
            None => self.checkpoint_at(store, keys, seq.saturating_add(1))?,
        };
        self.receipt(store, keys, seq, &checkpoint).map(Some)
    }

    /// `cp` with its C2SP signed note: the `tlog-checkpoint` body, the
    /// operator's Ed25519 note signature and every witness cosignature
    /// stored for its size. Ed25519 signatures are deterministic and the
    /// body has no time in it, so the note is the same whenever it is made
    /// and only the cosignatures are stored.
    pub fn with_note(
        &self,
        store: &Store,
        keys: &Keys,
        mut cp: SignedCheckpoint,
    ) -> ServiceResult<SignedCheckpoint> {
        let size = cp.checkpoint.size;
        let body = cp
            .note_body(&keys.first_public_key())
            .ok_or_else(|| ServiceError::Internal(format!("checkpoint {size} has a malformed root")))?;
        let mut text = format!("{body}\n");
        text.push_str(
            &note::operator_signature(&keys.note_key_at(size), &keys.sign_at(size, body.as_bytes())).line(),
        );
        for line in store.cosignatures(cp.checkpoint.size)? {
            text.push_str(line.trim_end_matches('\n'));
            text.push('\n');
        }
        cp.note = Some(text);
        Ok(cp)
    }

    /// The latest published checkpoint with its note, and a consistency
    /// proof to it from the tree of size `from` (a witness's last cosigned
    /// checkpoint). A published ledger smaller than `from` is a conflict:
    /// the history the witness cosigned was rolled back or forked.
    pub fn for_witness(
        &self,
        store: &Store,
        keys: &Keys,
        from: u64,
    ) -> ServiceResult<(SignedCheckpoint, Vec<String>)> {
        let cp = self.published(store, keys)?;
        let size = cp.checkpoint.size;
        if from > size {
            return Err(ServiceError::Conflict(format!(
                "the published ledger has {size} entries, fewer than the {from} of the checkpoint the witness last cosigned"
            )));
        }
        let proof = if from == 0 {
            Vec::new()
        } else {
            self.consistency_proof(store, from, size)?
        };
        Ok((self.with_note(store, keys, cp)?, proof))
    }

    /// Stores `witness`'s cosignature line of the published checkpoint of
    /// `size` after checking it verifies over that checkpoint's note body,
    /// and records it in the ledger. Returns false when this witness's (this
    /// verifier key's) cosignature of that size was stored before (the
    /// first is kept).
    pub fn cosign(
        &self,
        store: &Store,
        keys: &Keys,
        actor: &scenarios::party::Actor,
        size: u64,
        witness: &VerifierKey,
        line: &str,
    ) -> ServiceResult<bool> {
        if witness.alg != note::ALG_COSIGNATURE_V1 {
            return Err(ServiceError::BadRequest(
                "the witness key is not a cosignature/v1 key (algorithm 0x04)".into(),
            ));
        }
        let sig = note::NoteSignature::parse_line(line).map_err(|e| ServiceError::BadRequest(e.0))?;
        let cp = store
            .published_checkpoints(size, size)?
            .pop()
            .ok_or_else(|| ServiceError::NotFound(format!("no published checkpoint of size {size}")))?;
        let cp = self.with_note(store, keys, cp)?;
        let body = cp
            .note_body(&keys.first_public_key())
            .ok_or_else(|| ServiceError::Internal("checkpoint root malformed".into()))?;
        let parsed = note::Note {
            body,
            signatures: vec![sig.clone()],
        };
        let time = parsed
            .verify_cosignature(witness)
            .map_err(|e| ServiceError::BadRequest(e.0))?;
        let entry = NewEntry::by(
            actor,
            "witness.cosign",
            &format!("checkpoint:{size}"),
            serde_json::json!({
                "witness": witness.to_string(),
                "size": size,
                "root": cp.checkpoint.root,
                "cosigned_at": time,
            }),
        );
        // Kept per verifier key, not per name: a witness that chose a name
        // another key took first is not shut out.
        store.put_cosignature(size, &witness.to_string(), &sig.line(), entry, Utc::now())
    }

    /// The audit path of entry `seq` in the tree of size `size`.
    pub fn inclusion_proof(&self, store: &Store, seq: u64, size: u64) -> ServiceResult<Vec<String>> {
        Ok(proof_hex(&self.tree(store)?.inclusion_proof(seq, size)?))
    }

    /// The consistency proof between tree sizes `first` and `second`.
    pub fn consistency_proof(&self, store: &Store, first: u64, second: u64) -> ServiceResult<Vec<String>> {
        Ok(proof_hex(&self.tree(store)?.consistency_proof(first, second)?))
    }

    /// A receipt for entry `seq` under `checkpoint` (normally the current
    /// one, from [`Ledger::checkpoint`], fetched once for many receipts).
    pub fn receipt(
        &self,
        store: &Store,
        keys: &Keys,
        seq: u64,
        checkpoint: &SignedCheckpoint,
    ) -> ServiceResult<Receipt> {
        let entry = store
            .ledger(seq, 1)?
            .pop()
            .filter(|e| e.seq == seq)
            .ok_or_else(|| ServiceError::NotFound(format!("no ledger entry {seq}")))?;
        let checkpoint = self.with_note(store, keys, checkpoint.clone())?;
        let inclusion = self.inclusion_proof(store, seq, checkpoint.checkpoint.size)?;
        let key_chain = self.key_chain(store, keys, checkpoint.checkpoint.size)?;
        Ok(Receipt {
            key_chain,
            format: RECEIPT_FORMAT.into(),
            public_key: keys.first_public_key_hex(),
            seq,
            entry: ExportEntry {
                hash: entry.hash,
                body: entry.body,
            },
            inclusion,
            checkpoint,
        })
    }

    /// The links from the first ledger key to the one that signs the
    /// checkpoint of `size` entries: each announcement before it, proven
    /// under the checkpoint that ends at it, signed by the key before
    /// (`scenarios::ledger::KeyLink`).
    pub fn key_chain(&self, store: &Store, keys: &Keys, size: u64) -> ServiceResult<Vec<KeyLink>> {
        let mut links = Vec::new();
        for a in keys.ledger_announcements() {
            let end = a.saturating_add(1);
            if size <= end {
                break;
            }
            let entry = store
                .ledger(a, 1)?
                .pop()
                .filter(|e| e.seq == a)
                .ok_or_else(|| ServiceError::Internal(format!("the key announcement {a} is missing")))?;
            let cp = self.checkpoint_at(store, keys, end)?;
            links.push(KeyLink {
                seq: a,
                entry: ExportEntry {
                    hash: entry.hash,
                    body: entry.body,
                },
                inclusion: self.inclusion_proof(store, a, end)?,
                checkpoint: self.with_note(store, keys, cp)?,
            });
        }
        Ok(links)
    }

    /// The receipt of the `result.release` entry of a job, if it was released.
    pub fn release_receipt(
        &self,
        store: &Store,
        keys: &Keys,
        job_id: &str,
        checkpoint: &SignedCheckpoint,
    ) -> ServiceResult<Option<Receipt>> {
        store
            .ledger_seq_of(job_id, "result.release")?
            .map(|s| self.receipt(store, keys, s, checkpoint))
            .transpose()
    }

    /// Writes the ledger from entry `from` as export lines: the header
    /// (when asked: a resumed feed appended to an earlier one leaves it out
    /// and is still one valid export), every entry, each stored checkpoint
    /// after the entry that completes it with a consistency proof from the
    /// checkpoint before it, and a checkpoint over everything at the end.
    /// Returns the size reached.
    pub fn export(
        &self,
        store: &Store,
        keys: &Keys,
        from: u64,
        header: bool,
        out: &mut dyn Write,
    ) -> ServiceResult<u64> {
        if header {
            let header = ExportHeader {
                format: EXPORT_FORMAT.into(),
                public_key: keys.first_public_key_hex(),
                exported_at: Utc::now(),
            };
            line(out, &header)?;
        }
        let last = self.checkpoint(store, keys)?;
        let end = last.checkpoint.size;
        if from > end {
            return Err(ServiceError::BadRequest(format!(
                "the ledger has {end} entries; cannot start at {from}"
            )));
        }
        let mut previous = store.checkpoint_at_or_before(from)?.map(|c| c.checkpoint.size);
        let mut pending = store
            .checkpoints(from.saturating_add(1), end)?
            .into_iter()
            .peekable();
        let mut next = from;
        while next < end {
            let page = store.ledger(next, PAGE.min(end - next))?;
            if page.is_empty() {
                break;
            }
            for e in page {
                next = e.seq + 1;
                line(
                    out,
                    &ExportEntry {
                        hash: e.hash,
                        body: e.body,
                    },
                )?;
                while let Some(cp) = pending.next_if(|c| c.checkpoint.size == next) {
                    self.write_checkpoint(store, keys, out, cp, &mut previous)?;
                }
            }
        }
        if from == end {
            self.write_checkpoint(store, keys, out, last, &mut previous)?;
        }
        Ok(end)
    }

    fn write_checkpoint(
        &self,
        store: &Store,
        keys: &Keys,
        out: &mut dyn Write,
        cp: SignedCheckpoint,
        previous: &mut Option<u64>,
    ) -> ServiceResult<()> {
        let cp = self.with_note(store, keys, cp)?;
        let size = cp.checkpoint.size;
        let consistency = match *previous {
            Some(p) if p < size => Some(ConsistencyLink {
                from: p,
                proof: self.consistency_proof(store, p, size)?,
            }),
            _ => None,
        };
        *previous = Some(size);
        line(
            out,
            &ExportCheckpoint {
                checkpoint: cp.checkpoint,
                signature: cp.signature,
                note: cp.note,
                consistency,
            },
        )
    }
}

/// Subject of ledger key announcements.
pub const LEDGER_KEY_SUBJECT: &str = "ledger";

/// Subject of tokenization master key entries.
pub const TOKEN_KEY_SUBJECT: &str = "tokenization";

/// Action of the entry recording a key's first generation.
pub const KEY_ENROLL: &str = "key.enroll";

/// Whether `store` is only read ([`Enrollment::Check`], backups and
/// restores) or may record the first generation of keys it has not seen
/// yet ([`Enrollment::Record`], `invis serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    /// Check what the ledger records; write nothing.
    Check,
    /// Also record keys the ledger does not know yet.
    Record,
}

/// Puts in force in `keys` exactly the key generations the ledger of
/// `store` records, each checked against its key file, so a key file put
/// into the data directory by anyone without the ledger's signing key is
/// never used (invariant I8; `docs/keys.md`, "What the ledger pins"):
///
/// - `key.enroll` entries record generation 1 of the ledger key (its
///   public key) and of the tokenization master key (its fingerprint);
///   `key.rotate` entries every later generation. Each carries an
///   `endorsement`: a signature by the ledger key in force at that entry
///   over [`crate::keys::key_record_message`]. An entry without a valid
///   one, or a key file that is not the key recorded, stops the start.
/// - Generations are taken in turn; files beyond them are ignored (a
///   rotation that did not complete) and replaced by the next rotation.
/// - The newest stored checkpoint must verify under the key in force at
///   its size: a swapped first ledger key is caught even if its entry was
///   rewritten.
/// - Each ledger announcement's tree is signed by the key before it (a
///   rotation interrupted after its entry committed is completed here).
///
/// With [`Enrollment::Record`], keys the ledger has never seen (a new data
/// directory) are enrolled. Key files beyond the recorded generations are
/// then forgotten (never used, sealed or adopted).
pub fn follow_key_chain(store: &Store, keys: &Keys, enrollment: Enrollment) -> anyhow::Result<()> {
    follow(store, keys, enrollment).map_err(|e| anyhow::anyhow!(e.detail()))?;
    keys.forget_unrecorded();
    Ok(())
}

fn follow(store: &Store, keys: &Keys, enrollment: Enrollment) -> ServiceResult<()> {
    let bad = |seq: u64, what: String| {
        ServiceError::Internal(format!(
            "ledger entry {seq}: {what}; the keys directory or the ledger was altered outside the platform \
             (docs/keys.md, \"What the ledger pins\")"
        ))
    };
    let first = keys.first_public_key();
    let first_hex = hex::encode(&first);
    let ledger = Ledger::new();
    let mut ledger_enrolled = false;
    for e in store.ledger_for(LEDGER_KEY_SUBJECT)? {
        let body = entry_body(&e)?;
        let endorsed =
            |id: &str, generation: u64| keys.endorsed_at(e.seq, "ledger", generation, id, endorsement(&body));
        if body.action == KEY_ENROLL {
            let key = body.details.get("public_key").and_then(|k| k.as_str());
            if key != Some(first_hex.as_str()) {
                return Err(bad(
                    e.seq,
                    "keys/ledger.ed25519.pk8 is not the ledger key enrolled here".into(),
                ));
            }
            if !endorsed(&first_hex, 1) {
                return Err(bad(
                    e.seq,
                    "the ledger key's enrollment is not endorsed by it".into(),
                ));
            }
            ledger_enrolled = true;
            continue;
        }
        let Some(a) = scenarios::ledger::announcement(&body, &first).map_err(ServiceError::Internal)? else {
            continue;
        };
        if a.generation < keys.current_generation() + 1 {
            continue;
        }
        if !ledger_enrolled {
            return Err(bad(
                a.seq,
                "a ledger key is announced before the first one was enrolled".into(),
            ));
        }
        if !endorsed(&hex::encode(&a.public_key), a.generation) {
            return Err(bad(
                a.seq,
                format!(
                    "the announcement of ledger key generation {} is not endorsed by the key before it",
                    a.generation
                ),
            ));
        }
        let (_, pair) = keys.ledger_key(a.generation).ok_or_else(|| {
            bad(
                a.seq,
                format!(
                    "ledger key generation {} is announced but its key file is missing",
                    a.generation
                ),
            )
        })?;
        if pair != a.public_key {
            return Err(bad(
                a.seq,
                format!(
                    "ledger key generation {} in the keys directory is not the key announced",
                    a.generation
                ),
            ));
        }
        // The tree ending at the announcement, signed before the new key
        // takes over (the first checkpoint of a size is kept, so this is a
        // no-op when it exists).
        ledger.checkpoint_at(store, keys, a.seq.saturating_add(1))?;
        keys.announce_ledger(a.generation, a.seq)
            .map_err(|err| ServiceError::Internal(err.to_string()))?;
    }
    let mut token_enrolled = false;
    for e in store.ledger_for(TOKEN_KEY_SUBJECT)? {
        let body = entry_body(&e)?;
        let enroll = body.action == KEY_ENROLL;
        if !enroll && body.action != scenarios::ledger::KEY_ROTATE {
            continue;
        }
        let generation = if enroll {
            1
        } else {
            u64::from(keys.token_generation()) + 1
        };
        if !enroll && !token_enrolled {
            return Err(bad(
                e.seq,
                "a tokenization key is rotated before the first one was enrolled".into(),
            ));
        }
        if body.details.get("generation").and_then(|g| g.as_u64()) != Some(generation) {
            return Err(bad(
                e.seq,
                format!("expected tokenization key generation {generation}"),
            ));
        }
        let recorded = body
            .details
            .get("fingerprint")
            .and_then(|f| f.as_str())
            .unwrap_or("");
        let file = keys.token_fingerprint(generation).ok_or_else(|| {
            bad(
                e.seq,
                format!("tokenization key generation {generation} is recorded but its key file is missing"),
            )
        })?;
        if file != recorded {
            return Err(bad(
                e.seq,
                format!(
                    "tokenization key generation {generation} in the keys directory is not the key recorded"
                ),
            ));
        }
        if !keys.endorsed_at(e.seq, "tokenization", generation, recorded, endorsement(&body)) {
            return Err(bad(
                e.seq,
                format!("tokenization key generation {generation} is not endorsed by the ledger key"),
            ));
        }
        if enroll {
            token_enrolled = true;
        } else {
            keys.announce_token(generation)
                .map_err(|err| ServiceError::Internal(err.to_string()))?;
        }
    }
    check_newest_checkpoint(store, keys)?;
    if enrollment == Enrollment::Record && !(ledger_enrolled && token_enrolled) {
        check_unenrolled(store, &ledger, !ledger_enrolled, !token_enrolled)?;
        enroll(store, keys, !ledger_enrolled, !token_enrolled)?;
    }
    Ok(())
}

/// Before keys are enrolled into a ledger that already has entries (a data
/// directory from before enrollment): the store's `subject` and `action`
/// columns, by which key entries are found, are not hashed, so an
/// enrollment could have been moved out of sight to get another key
/// enrolled (and endorsed) in its place. Every entry's text is checked
/// against its leaf hash and searched for an enrollment of a key about to
/// be enrolled, and the newest stored checkpoint must sign the tree the
/// entries make. Whoever rewrites entries and hashes must then drop every
/// checkpoint, and what the server signs next is a fork the witness
/// refuses. Runs only when an enrollment is missing, so not on an ordinary
/// start.
fn check_unenrolled(store: &Store, ledger: &Ledger, ledger_key: bool, token_key: bool) -> ServiceResult<()> {
    let altered = |seq: u64, what: &str| {
        ServiceError::Internal(format!(
            "ledger entry {seq} {what}; the store was altered outside the platform, so no key is enrolled \
             (docs/keys.md, \"What the ledger pins\")"
        ))
    };
    let mut from = 0;
    loop {
        let page = store.ledger(from, PAGE)?;
        let Some(last) = page.last() else {
            break;
        };
        from = last.seq.saturating_add(1);
        for e in &page {
            if scenarios::ledger::parse_hash(&e.hash) != Some(scenarios::ledger::leaf_hash(e.body.as_bytes()))
            {
                return Err(altered(e.seq, "does not match its hash"));
            }
            if !e.body.contains(KEY_ENROLL) {
                continue;
            }
            let body = entry_body(e)?;
            let key = body.details.get("key").and_then(|k| k.as_str());
            if body.action == KEY_ENROLL
                && ((ledger_key && key == Some("ledger")) || (token_key && key == Some("tokenization")))
            {
                return Err(altered(
                    e.seq,
                    "enrolls a key the store does not list under its subject",
                ));
            }
        }
    }
    if let Some(cp) = store.checkpoint_at_or_before(u64::MAX >> 1)? {
        let size = cp.checkpoint.size;
        let root = ledger.tree(store)?.root_at(size).ok();
        if root.is_none() || root != cp.root() {
            return Err(altered(
                size.saturating_sub(1),
                "or one before it is not what the stored checkpoint of that size signed",
            ));
        }
    }
    Ok(())
}

/// A key entry's `endorsement` (empty when it has none, which verifies
/// under no key).
fn endorsement(body: &scenarios::ledger::EntryBody) -> &str {
    body.details
        .get("endorsement")
        .and_then(|s| s.as_str())
        .unwrap_or("")
}

fn entry_body(e: &crate::store::StoredEntry) -> ServiceResult<scenarios::ledger::EntryBody> {
    serde_json::from_str(&e.body)
        .map_err(|err| ServiceError::Internal(format!("ledger entry {} is malformed: {err}", e.seq)))
}

/// The newest stored checkpoint verifies under the key in force at its size.
fn check_newest_checkpoint(store: &Store, keys: &Keys) -> ServiceResult<()> {
    let Some(cp) = store.checkpoint_at_or_before(u64::MAX >> 1)? else {
        return Ok(());
    };
    let size = cp.checkpoint.size;
    let public = keys
        .ledger_key(keys.generation_for(size))
        .map(|(_, k)| k)
        .unwrap_or_default();
    if hex::decode(&cp.signature).is_ok_and(|sig| cp.checkpoint.verify(&public, &sig)) {
        Ok(())
    } else {
        Err(ServiceError::Internal(format!(
            "the stored checkpoint of {size} entries does not verify under the ledger key in force at that size: \
             the keys directory does not hold the keys that signed this ledger (docs/keys.md, \"What the ledger pins\")"
        )))
    }
}

/// Records the first generation of the ledger key and/or the tokenization
/// master key, endorsed by the ledger key (one transaction).
fn enroll(store: &Store, keys: &Keys, ledger_key: bool, token_key: bool) -> ServiceResult<()> {
    let mut entries = Vec::new();
    if ledger_key {
        let id = keys.first_public_key_hex();
        let endorsement = keys.endorse("ledger", 1, &id);
        entries.push(NewEntry::system(
            KEY_ENROLL,
            LEDGER_KEY_SUBJECT,
            serde_json::json!({"key": "ledger", "generation": 1, "public_key": id, "endorsement": endorsement}),
        ));
    }
    if token_key {
        let id = keys
            .token_fingerprint(1)
            .ok_or_else(|| ServiceError::Internal("the tokenization key is missing".into()))?;
        let endorsement = keys.endorse("tokenization", 1, &id);
        entries.push(NewEntry::system(
            KEY_ENROLL,
            TOKEN_KEY_SUBJECT,
            serde_json::json!({"key": "tokenization", "generation": 1, "fingerprint": id, "endorsement": endorsement}),
        ));
    }
    store.tx(move |tx| {
        for e in entries {
            append(tx, e, Utc::now())?;
        }
        Ok(())
    })
}

/// `checkpoint` signed with the operator key: its JSON signature and its
/// C2SP note with the operator's note signature only.
pub fn sign_checkpoint(keys: &Keys, checkpoint: Checkpoint) -> SignedCheckpoint {
    let size = checkpoint.size;
    let signature = hex::encode(keys.sign_at(size, &checkpoint.signing_message()));
    let mut cp = SignedCheckpoint {
        checkpoint,
        signature,
        note: None,
    };
    if let Some(body) = cp.note_body(&keys.first_public_key()) {
        let line =
            note::operator_signature(&keys.note_key_at(size), &keys.sign_at(size, body.as_bytes())).line();
        cp.note = Some(format!("{body}\n{line}"));
    }
    cp
}

/// Signs the checkpoint of the tree of `size` entries with `root` now and
/// stores it; when one for that size was stored first, that one is
/// returned (the first signed for a size is the one everybody gets).
fn sign_and_store(
    store: &Store,
    keys: &Keys,
    size: u64,
    root: scenarios::ledger::Hash,
) -> ServiceResult<SignedCheckpoint> {
    let checkpoint = Checkpoint {
        size,
        root: hex::encode(root),
        // Signed and stored at microsecond precision.
        time: Utc::now().trunc_subsecs(6),
    };
    let signature = hex::encode(keys.sign_at(size, &checkpoint.signing_message()));
    let cp = SignedCheckpoint {
        checkpoint,
        signature,
        note: None,
    };
    store.put_checkpoint(&cp)?;
    Ok(store
        .checkpoint_at_or_before(size)?
        .filter(|c| c.checkpoint.size == size)
        .unwrap_or(cp))
}

/// Verifies an export file offline (see `scenarios::ledger::verify_export`);
/// an unreadable line fails verification at that line. The outer error is
/// only for a file that cannot be opened.
pub fn verify_file(
    path: &Path,
    pinned_key: Option<&[u8]>,
    held: &[SignedCheckpoint],
    witnesses: &[VerifierKey],
) -> std::io::Result<Result<VerifyReport, VerifyFailure>> {
    let lines = BufReader::new(std::fs::File::open(path)?)
        .lines()
        .map(|l| l.unwrap_or_else(|e| format!("<unreadable line: {e}>")));
    Ok(verify_export_witnessed(lines, pinned_key, held, witnesses))
}

fn line(out: &mut dyn Write, v: &impl serde::Serialize) -> ServiceResult<()> {
    let text = serde_json::to_string(v)?;
    writeln!(out, "{text}").map_err(|e| ServiceError::Internal(format!("export write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{append, NewEntry};
    use scenarios::ledger::verify_export;

    fn add(store: &Store, subject: &'static str, action: &'static str, n: usize) {
        store
            .tx(move |tx| {
                for _ in 0..n {
                    append(
                        tx,
                        NewEntry::system(action, subject, serde_json::json!({})),
                        Utc::now(),
                    )?;
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn receipts_reveal_no_more_of_the_ledger_than_the_release_or_a_publication() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = Keys::load_or_create(dir.path(), None).unwrap();
        let key = hex::decode(keys.public_key_hex()).unwrap();
        let ledger = Ledger::new();
        add(&store, "x", "test.entry", 3);
        assert_eq!(ledger.published(&store, &keys).unwrap().checkpoint.size, 3);
        add(&store, "x", "test.entry", 2);
        add(&store, "job_a", "result.release", 1);
        add(&store, "x", "test.entry", 2);
        // The published view has not moved; the regulator's has.
        assert_eq!(ledger.published(&store, &keys).unwrap().checkpoint.size, 3);
        assert_eq!(ledger.checkpoint(&store, &keys).unwrap().checkpoint.size, 8);
        // The receipt is proven over the ledger up to the release, not 8.
        let r = ledger
            .published_release_receipt(&store, &keys, "job_a")
            .unwrap()
            .unwrap();
        assert_eq!((r.seq, r.checkpoint.checkpoint.size), (5, 6));
        scenarios::ledger::verify_receipt(&r, Some(&key), None).unwrap();
        // Once a publication covers it, that one.
        assert_eq!(ledger.publish(&store, &keys).unwrap().checkpoint.size, 8);
        let r = ledger
            .published_release_receipt(&store, &keys, "job_a")
            .unwrap()
            .unwrap();
        assert_eq!(r.checkpoint.checkpoint.size, 8);
        scenarios::ledger::verify_receipt(&r, Some(&key), None).unwrap();
        assert!(ledger
            .published_release_receipt(&store, &keys, "job_b")
            .unwrap()
            .is_none());
        // Only publications are listed as published; the export holds
        // every checkpoint, in order, and verifies.
        let sizes = |v: Vec<SignedCheckpoint>| v.iter().map(|c| c.checkpoint.size).collect::<Vec<_>>();
        assert_eq!(sizes(store.published_checkpoints(0, u64::MAX).unwrap()), [3, 8]);
        assert_eq!(sizes(store.checkpoints(0, u64::MAX).unwrap()), [3, 6, 8]);
        let mut out = Vec::new();
        ledger.export(&store, &keys, 0, true, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let report = verify_export(text.lines(), Some(&key), &[r.checkpoint]).unwrap();
        assert_eq!((report.entries, report.checkpoints), (8, 3));
    }

    /// A data directory opened as `invis serve` opens it.
    fn open(dir: &Path) -> (Store, Keys) {
        let store = Store::open(dir).unwrap();
        let keys = Keys::load_or_create(dir, None).unwrap();
        follow_key_chain(&store, &keys, Enrollment::Record).unwrap();
        (store, keys)
    }

    fn reopen(dir: &Path) -> Result<Keys, String> {
        let store = Store::open(dir).unwrap();
        let keys = Keys::load_or_create(dir, None).map_err(|e| e.to_string())?;
        follow_key_chain(&store, &keys, Enrollment::Record).map_err(|e| e.to_string())?;
        Ok(keys)
    }

    fn forge(store: &Store, subject: &'static str, details: serde_json::Value) {
        store
            .tx(move |tx| {
                append(tx, NewEntry::system("key.rotate", subject, details), Utc::now())?;
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn first_keys_are_enrolled_once_and_checked_at_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = open(dir.path());
        Ledger::new().checkpoint(&store, &keys).unwrap();
        let enrolled = |s: &Store| {
            [LEDGER_KEY_SUBJECT, TOKEN_KEY_SUBJECT]
                .iter()
                .map(|sub| s.ledger_for(sub).unwrap().len())
                .collect::<Vec<_>>()
        };
        assert_eq!(enrolled(&store), [1, 1]);
        drop(keys);
        reopen(dir.path()).unwrap();
        assert_eq!(enrolled(&store), [1, 1], "enrolled once");

        // A tokenization master key swapped for one the attacker knows.
        let kd = dir.path().join("keys");
        let original = std::fs::read(kd.join("tokenize.key")).unwrap();
        std::fs::write(kd.join("tokenize.key"), [7u8; 32]).unwrap();
        let err = reopen(dir.path()).unwrap_err();
        assert!(
            err.contains("tokenization key generation 1 in the keys directory is not the key recorded"),
            "{err}"
        );
        std::fs::write(kd.join("tokenize.key"), &original).unwrap();
        reopen(dir.path()).unwrap();

        // The first ledger key swapped for another: its enrollment says no.
        let other = tempfile::tempdir().unwrap();
        let _ = Keys::load_or_create(other.path(), None).unwrap();
        let theirs = std::fs::read(other.path().join("keys/ledger.ed25519.pk8")).unwrap();
        let ours = std::fs::read(kd.join("ledger.ed25519.pk8")).unwrap();
        std::fs::write(kd.join("ledger.ed25519.pk8"), &theirs).unwrap();
        let err = reopen(dir.path()).unwrap_err();
        assert!(err.contains("not the ledger key enrolled"), "{err}");
        std::fs::write(kd.join("ledger.ed25519.pk8"), &ours).unwrap();
        reopen(dir.path()).unwrap();

        // Where nothing is enrolled (a backup being checked), the newest
        // stored checkpoint says no.
        let bare = tempfile::tempdir().unwrap();
        {
            let store = Store::open(bare.path()).unwrap();
            let keys = Keys::load_or_create(bare.path(), None).unwrap();
            add(&store, "x", "test.entry", 2);
            Ledger::new().checkpoint(&store, &keys).unwrap();
        }
        std::fs::write(bare.path().join("keys/ledger.ed25519.pk8"), &theirs).unwrap();
        let store = Store::open(bare.path()).unwrap();
        let keys = Keys::load_or_create(bare.path(), None).unwrap();
        let err = follow_key_chain(&store, &keys, Enrollment::Check)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not verify under the ledger key"), "{err}");
    }

    #[test]
    fn key_files_and_entries_put_in_by_hand_are_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = open(dir.path());
        let kd = dir.path().join("keys");
        // A next-generation tokenization file nobody rotated: ignored.
        std::fs::write(kd.join("tokenize.2.key"), [9u8; 32]).unwrap();
        drop(keys);
        let keys = reopen(dir.path()).unwrap();
        assert_eq!(keys.token_generation(), 1);
        assert!(keys.token_key("ag", 2).is_err());
        // A rotation replaces it rather than adopting it.
        let (g, fingerprint) = keys.prepare_token_rotation().unwrap();
        assert_eq!(g, 2);
        assert_ne!(std::fs::read(kd.join("tokenize.2.key")).unwrap(), [9u8; 32]);
        // ... and an entry appended by hand that records it, without the
        // ledger key's endorsement, stops the start.
        forge(
            &store,
            TOKEN_KEY_SUBJECT,
            serde_json::json!({"key": "tokenization", "generation": 2, "fingerprint": fingerprint}),
        );
        drop(keys);
        let err = reopen(dir.path()).unwrap_err();
        assert!(err.contains("not endorsed by the ledger key"), "{err}");

        // A ledger key announced by hand, with its file in place.
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = open(dir.path());
        let (g, public) = keys.prepare_ledger_rotation().unwrap();
        // Endorsed by another key, not the one before it.
        let wrongly_endorsed = {
            let other = Keys::load_or_create(tempfile::tempdir().unwrap().path(), None).unwrap();
            other.endorse("ledger", g, &hex::encode(&public))
        };
        let note_key = scenarios::ledger::VerifierKey::operator_of(&keys.first_public_key(), &public)
            .unwrap()
            .to_string();
        forge(
            &store,
            LEDGER_KEY_SUBJECT,
            serde_json::json!({"key": "ledger", "generation": g, "public_key": hex::encode(&public),
                               "note_key": note_key, "endorsement": wrongly_endorsed}),
        );
        drop(keys);
        let err = reopen(dir.path()).unwrap_err();
        assert!(err.contains("is not endorsed by the key before it"), "{err}");
    }

    #[test]
    /// With a key-encryption key given, unsealed key files are refused
    /// whatever the store says; here the store is also altered
    /// (enrollments moved out of sight, checkpoints dropped) to get them
    /// enrolled.
    fn sealed_keys_are_not_replaced_by_unsealed_ones_with_the_store_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let kek = crate::keys::Kek::parse(&[5u8; 32]).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let keys = Keys::load_or_create(dir.path(), Some(&kek)).unwrap();
            follow_key_chain(&store, &keys, Enrollment::Record).unwrap();
            add(&store, "x", "test.entry", 3);
            Ledger::new().checkpoint(&store, &keys).unwrap();
        }
        // The attacker holds neither the KEK nor the ledger key, but can
        // write the data directory: keys of their own, unsealed ...
        let theirs = tempfile::tempdir().unwrap();
        let their_keys = Keys::load_or_create(theirs.path(), None).unwrap();
        for f in ["ledger.ed25519.pk8", "tokenize.key"] {
            std::fs::copy(
                theirs.path().join("keys").join(f),
                dir.path().join("keys").join(f),
            )
            .unwrap();
        }
        // ... and the store: the enrollments and checkpoints hidden.
        {
            let c = rusqlite::Connection::open(dir.path().join("invis.db")).unwrap();
            c.execute_batch(
                "DROP TRIGGER ledger_no_update; DROP TRIGGER checkpoints_no_delete;
                 UPDATE ledger SET subject = 'x' WHERE action = 'key.enroll';
                 DELETE FROM checkpoints;",
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let started = Keys::load_or_create(dir.path(), Some(&kek))
            .and_then(|k| follow_key_chain(&store, &k, Enrollment::Record).map(|_| k));
        match started {
            Ok(k) => assert_ne!(
                k.public_key(),
                their_keys.public_key(),
                "the server started signing with a ledger key the attacker holds"
            ),
            Err(e) => assert!(e.to_string().contains("is not sealed"), "{e}"),
        }
    }

    #[test]
    fn a_hidden_tokenization_enrollment_does_not_get_another_key_endorsed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = open(dir.path());
        add(&store, "x", "test.entry", 2);
        Ledger::new().checkpoint(&store, &keys).unwrap();
        let ledger_key = keys.public_key();
        drop((store, keys));
        // A tokenization master key the attacker knows ...
        std::fs::write(dir.path().join("keys/tokenize.key"), [7u8; 32]).unwrap();
        // ... and the enrollment moved out of sight: only an unhashed
        // column changes, so the ledger's tree and checkpoints stay valid.
        {
            let c = rusqlite::Connection::open(dir.path().join("invis.db")).unwrap();
            c.execute_batch(
                "DROP TRIGGER ledger_no_update;
                 UPDATE ledger SET subject = 'x' WHERE action = 'key.enroll' AND subject = 'tokenization';",
            )
            .unwrap();
            assert_eq!(c.changes(), 1, "the tokenization enrollment's subject");
        }
        let started = reopen(dir.path());
        if let Ok(k) = &started {
            assert_eq!(k.public_key(), ledger_key);
            let theirs = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
            let expected = ring::hmac::sign(&theirs, b"invis tokenize v1 ag_1");
            assert_ne!(
                k.token_key("ag_1", 1).unwrap().as_slice(),
                &expected.as_ref()[..32],
                "the server tokenizes with a master key the attacker chose"
            );
        }
        let err = started.unwrap_err();
        assert!(err.contains("does not list under its subject"), "{err}");
        let sql = |q: &str| {
            rusqlite::Connection::open(dir.path().join("invis.db"))
                .unwrap()
                .execute_batch(&format!("DROP TRIGGER IF EXISTS ledger_no_update; {q}"))
                .unwrap()
        };
        // The entry's text altered so that it no longer reads as an
        // enrollment, its hash left: the text does not match it.
        sql("UPDATE ledger SET action = 'x', body = replace(body, 'key.enroll', 'key.enrolx') WHERE subject = 'x';");
        let err = reopen(dir.path()).unwrap_err();
        assert!(err.contains("does not match its hash"), "{err}");
        // Its hash rewritten too: the tree no longer gives the signed root.
        let (seq, body): (i64, String) = rusqlite::Connection::open(dir.path().join("invis.db"))
            .unwrap()
            .query_row(
                "SELECT seq, body FROM ledger WHERE subject = 'x' AND action = 'x'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let h = hex::encode(scenarios::ledger::leaf_hash(body.as_bytes()));
        sql(&format!("UPDATE ledger SET hash = '{h}' WHERE seq = {seq};"));
        let err = reopen(dir.path()).unwrap_err();
        assert!(err.contains("not what the stored checkpoint"), "{err}");
    }

    #[test]
    fn a_next_generation_ledger_key_put_in_by_hand_is_replaced_not_announced() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, keys) = open(dir.path());
        drop(keys);
        // Someone who can write the keys directory puts a ledger key they
        // hold where the next rotation would write generation 2.
        let theirs_dir = tempfile::tempdir().unwrap();
        let theirs = Keys::load_or_create(theirs_dir.path(), None).unwrap();
        std::fs::copy(
            theirs_dir.path().join("keys/ledger.ed25519.pk8"),
            dir.path().join("keys/ledger.2.ed25519.pk8"),
        )
        .unwrap();
        let keys = reopen(dir.path()).unwrap();
        assert_eq!(keys.current_generation(), 1);
        // The operator rotates: the key announced and endorsed must be a
        // fresh one, never the file found there.
        let (g, public) = keys.prepare_ledger_rotation().unwrap();
        assert_eq!(g, 2);
        assert_ne!(
            public,
            theirs.first_public_key(),
            "a key put in by hand was adopted"
        );
        assert_ne!(
            std::fs::read(dir.path().join("keys/ledger.2.ed25519.pk8")).unwrap(),
            std::fs::read(theirs_dir.path().join("keys/ledger.ed25519.pk8")).unwrap()
        );
    }
}
