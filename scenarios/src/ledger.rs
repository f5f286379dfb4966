//! Lineage ledger types: entries, their hashes, the Merkle tree over them,
//! signed checkpoints, and the offline verifier (R21-R23, R27).
//!
//! Hashing follows RFC 6962 / 9162: a leaf hash is `SHA-256(0x00 || entry)`,
//! an interior node is `SHA-256(0x01 || left || right)`. Each entry also
//! names the leaf hash of its predecessor (`prev`), so the entries form a
//! hash chain that localises an edit, and the Merkle root in a signed
//! checkpoint commits to the whole history at that size.
//!
//! The export is NDJSON: a header line, one line per entry holding the
//! canonical entry text as a JSON string (so the hashed bytes survive
//! exactly), and checkpoint lines. Storage and signing keys live in the
//! gateway; this module does no IO.

use crate::{Error, Result};
use chrono::{DateTime, Utc};
use ring::digest::{Context, SHA256};
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

mod merkle;
pub mod note;
pub use merkle::{verify_consistency, verify_inclusion, MerkleTree, ProofError};
pub use note::VerifierKey;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev` of the first entry.
pub const ZERO_HASH: Hash = [0u8; 32];

/// Format tag in export headers.
pub const EXPORT_FORMAT: &str = "invis-ledger/1";

/// One ledger entry as hashed. Field order is the canonical order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    /// Position in the ledger, from 0.
    pub seq: u64,
    /// Hex leaf hash of entry `seq - 1` (zeros for the first).
    pub prev: String,
    /// When the action happened.
    pub time: DateTime<Utc>,
    /// Acting party id, or `system`.
    pub actor: String,
    /// Acting party's role, or `system`.
    pub role: String,
    /// What happened, as `noun.verb` (for example `query.release`).
    pub action: String,
    /// Id of the record acted on.
    pub subject: String,
    /// Action-specific lineage: purpose, approver, datasets and version
    /// hashes, SQL and plan hash, mechanism and parameters, budget spent,
    /// module hash, resource use, output hash.
    pub details: serde_json::Value,
}

impl EntryBody {
    /// The canonical bytes that are hashed and stored.
    pub fn canonical(&self) -> Vec<u8> {
        // Serializing a struct of strings, numbers and a JSON value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The canonical text of an entry from `actor` to the end: everything
/// that does not depend on the entry's place in the ledger. It is rendered
/// where the entry is made, so the one thread that sequences entries only
/// adds `seq`, `prev` and `time` (see [`EntryTail::complete`]); the result is
/// byte for byte [`EntryBody::canonical`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryTail(String);

/// The fields of [`EntryBody`] after `time`, in the same order.
#[derive(Serialize)]
struct TailFields<'a> {
    actor: &'a str,
    role: &'a str,
    action: &'a str,
    subject: &'a str,
    details: &'a serde_json::Value,
}

impl EntryTail {
    /// Renders the fields after `time`.
    pub fn new(
        actor: &str,
        role: &str,
        action: &str,
        subject: &str,
        details: &serde_json::Value,
    ) -> EntryTail {
        let fields = TailFields {
            actor,
            role,
            action,
            subject,
            details,
        };
        // `{"actor":...}` with its opening brace replaced by the comma that
        // follows `time`. Serializing strings and a JSON value cannot fail.
        let text = serde_json::to_string(&fields).unwrap_or_default();
        EntryTail(format!(",{}", text.get(1..).unwrap_or_default()))
    }

    /// The canonical text of the entry at `seq` after the entry whose hex
    /// leaf hash is `prev`, made at `time`.
    pub fn complete(&self, seq: u64, prev: &str, time: &DateTime<Utc>) -> String {
        // A timestamp serializes to a plain JSON string.
        let time = serde_json::to_string(time).unwrap_or_default();
        let mut text = String::with_capacity(self.0.len() + 128);
        text.push_str("{\"seq\":");
        text.push_str(&seq.to_string());
        text.push_str(",\"prev\":\"");
        text.push_str(prev);
        text.push_str("\",\"time\":");
        text.push_str(&time);
        text.push_str(&self.0);
        text
    }
}

/// `SHA-256(0x00 || bytes)`.
pub fn leaf_hash(bytes: &[u8]) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0x00]);
    c.update(bytes);
    to_hash(c.finish().as_ref())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0x01]);
    c.update(left);
    c.update(right);
    to_hash(c.finish().as_ref())
}

/// Plain SHA-256 of `bytes` (for output and module hashes).
pub fn sha256(bytes: &[u8]) -> Hash {
    to_hash(ring::digest::digest(&SHA256, bytes).as_ref())
}

fn to_hash(d: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(d);
    h
}

/// Parses 64 hex digits.
pub fn parse_hash(s: &str) -> Option<Hash> {
    let v = hex::decode(s).ok()?;
    (v.len() == 32).then(|| to_hash(&v))
}

/// The Merkle tree hash (RFC 6962 MTH) of `leaves`. The empty tree hashes to
/// `SHA-256("")`.
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(b""),
        1 => leaves[0],
        n => {
            let k = largest_power_of_two_below(n);
            node_hash(&merkle_root(&leaves[..k]), &merkle_root(&leaves[k..]))
        }
    }
}

fn largest_power_of_two_below(n: usize) -> usize {
    // n >= 2 here, so the result is >= 1 and < n.
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// A signed statement of the ledger's size and root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Number of entries covered.
    pub size: u64,
    /// Hex Merkle root over the first `size` leaf hashes.
    pub root: String,
    /// When it was signed.
    pub time: DateTime<Utc>,
}

impl Checkpoint {
    /// The exact bytes the operator's Ed25519 key signs.
    pub fn signing_message(&self) -> Vec<u8> {
        format!(
            "{EXPORT_FORMAT} checkpoint\nsize {}\nroot {}\ntime {}\n",
            self.size,
            self.root,
            self.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
        .into_bytes()
    }

    /// Checks `signature` against `public_key` (raw 32-byte Ed25519).
    pub fn verify(&self, public_key: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&self.signing_message(), signature)
            .is_ok()
    }
}

/// A header line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// Hex Ed25519 public key of the operator, as claimed by the exporter.
    pub public_key: String,
    /// Export time.
    pub exported_at: DateTime<Utc>,
}

/// An entry line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportEntry {
    /// Hex leaf hash recorded when the entry was appended.
    pub hash: String,
    /// The canonical entry text exactly as hashed.
    pub body: String,
}

/// A signed checkpoint, as served by the API and carried in receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Hex Ed25519 signature over [`Checkpoint::signing_message`].
    pub signature: String,
    /// The same tree as a C2SP signed note (`tlog-checkpoint` body, the
    /// operator's Ed25519 note signature, then any witness cosignatures;
    /// [`note`]). Absent in checkpoints stored before notes existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl SignedCheckpoint {
    /// The signed root, if it is well-formed hex.
    pub fn root(&self) -> Option<Hash> {
        parse_hash(&self.checkpoint.root)
    }

    /// True when the signature verifies under `public_key`, and so does the
    /// note when there is one (a ledger whose key never rotated: the origin
    /// is derived from the same key).
    pub fn verify(&self, public_key: &[u8]) -> bool {
        self.verify_under(public_key, public_key)
    }

    /// True when the signature verifies under `public_key` and so does the
    /// note, whose origin is derived from `first_key`, the ledger's first
    /// signing key (the origin does not change when the key rotates).
    pub fn verify_under(&self, first_key: &[u8], public_key: &[u8]) -> bool {
        hex::decode(&self.signature).is_ok_and(|sig| self.checkpoint.verify(public_key, &sig))
            && self.verify_note_under(first_key, public_key).is_ok()
    }

    /// The `tlog-checkpoint` body this checkpoint's note must have in the
    /// ledger whose first key is `first_key`.
    pub fn note_body(&self, first_key: &[u8]) -> Option<String> {
        Some(note::checkpoint_body(
            &note::origin_for(first_key),
            self.checkpoint.size,
            &self.root()?,
        ))
    }

    /// The note, parsed and checked: its body is this checkpoint's (origin
    /// from `public_key`, size, root) and the operator's note signature
    /// verifies. `Ok(None)` without a note.
    pub fn verify_note(&self, public_key: &[u8]) -> Result<Option<note::Note>, String> {
        self.verify_note_under(public_key, public_key)
    }

    /// [`SignedCheckpoint::verify_note`] in a ledger whose first key is
    /// `first_key` (the origin) and whose key for this size is `public_key`.
    pub fn verify_note_under(
        &self,
        first_key: &[u8],
        public_key: &[u8],
    ) -> Result<Option<note::Note>, String> {
        let Some(text) = &self.note else {
            return Ok(None);
        };
        let parsed = note::Note::parse(text).map_err(|e| format!("the checkpoint note is malformed: {e}"))?;
        if Some(&parsed.body) != self.note_body(first_key).as_ref() {
            return Err(format!(
                "the checkpoint note does not state this checkpoint (origin {}, size {}, root)",
                note::origin_for(first_key),
                self.checkpoint.size
            ));
        }
        let key = VerifierKey::operator_of(first_key, public_key)
            .ok_or("the operator key is not an Ed25519 key")?;
        parsed.verify_signature(&key).map_err(|e| e.0)?;
        Ok(Some(parsed))
    }

    /// Checks that `witness` cosigned this checkpoint (the note must also
    /// verify under the operator key); returns the cosignature's time.
    pub fn witnessed_by(&self, public_key: &[u8], witness: &VerifierKey) -> Result<u64, String> {
        self.witnessed_by_under(public_key, public_key, witness)
    }

    /// [`SignedCheckpoint::witnessed_by`] in a ledger whose first key is
    /// `first_key` and whose key for this size is `public_key`.
    pub fn witnessed_by_under(
        &self,
        first_key: &[u8],
        public_key: &[u8],
        witness: &VerifierKey,
    ) -> Result<u64, String> {
        let parsed = self.verify_note_under(first_key, public_key)?.ok_or_else(|| {
            format!(
                "the checkpoint at size {} carries no note, so no cosignature of witness `{}`",
                self.checkpoint.size, witness.name
            )
        })?;
        parsed.verify_cosignature(witness).map_err(|e| e.0)
    }

    /// True when the note holds a signature line claiming to be by
    /// `witness` (its name and key hash), valid or not.
    fn names(&self, witness: &VerifierKey) -> bool {
        let hash = witness.key_hash();
        self.note
            .as_deref()
            .and_then(|t| note::Note::parse(t).ok())
            .is_some_and(|n| {
                n.signatures
                    .iter()
                    .any(|s| s.name == witness.name && s.key_hash == hash)
            })
    }
}

/// Action of a key rotation entry.
pub const KEY_ROTATE: &str = "key.rotate";

/// A rotation of the ledger signing key as announced in the ledger: a
/// `key.rotate` entry whose details are `{"key": "ledger", "generation":
/// g, "public_key": "<hex>", "note_key": "<verifier key>", ...}`
/// (`docs/ledger.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Position of the announcing entry.
    pub seq: u64,
    /// The new key's generation (the first key is generation 1).
    pub generation: u64,
    /// The new raw Ed25519 public key.
    pub public_key: Vec<u8>,
}

/// The ledger key announcement in `body`, if it is one: `Ok(None)` for any
/// other entry (a tokenization key rotation among them), an error for a
/// ledger key announcement that is malformed.
pub fn announcement(body: &EntryBody, first_key: &[u8]) -> Result<Option<Announcement>, String> {
    if body.action != KEY_ROTATE || body.details.get("key").and_then(|k| k.as_str()) != Some("ledger") {
        return Ok(None);
    }
    let seq = body.seq;
    let generation = body
        .details
        .get("generation")
        .and_then(|g| g.as_u64())
        .ok_or_else(|| format!("the key announcement in entry {seq} has no generation"))?;
    let public_key = body
        .details
        .get("public_key")
        .and_then(|k| k.as_str())
        .and_then(|k| hex::decode(k).ok())
        .filter(|k| k.len() == 32)
        .ok_or_else(|| format!("the key announcement in entry {seq} has no 32-byte hex public key"))?;
    if let Some(nk) = body.details.get("note_key") {
        let expected = VerifierKey::operator_of(first_key, &public_key).map(|k| k.to_string());
        if nk.as_str().map(str::to_string) != expected {
            return Err(format!(
                "the key announcement in entry {seq} names a note key other than the new key under the ledger's origin"
            ));
        }
    }
    Ok(Some(Announcement {
        seq,
        generation,
        public_key,
    }))
}

/// The chain of ledger signing keys a verifier follows from the first key
/// it pinned (invariant I8). Generation `g + 1`, announced in entry `a`,
/// signs exactly the checkpoints of size greater than `a + 1`, and is
/// accepted only once the checkpoint of size `a + 1` (the tree ending at
/// its announcement) verified under generation `g`; generation `g` signs
/// the sizes up to `a + 1`.
#[derive(Debug, Clone)]
pub struct KeyChain {
    first: Vec<u8>,
    announced: Vec<(Announcement, bool)>,
}

impl KeyChain {
    /// A chain starting at the ledger's first key.
    pub fn new(first_key: &[u8]) -> KeyChain {
        KeyChain {
            first: first_key.to_vec(),
            announced: Vec::new(),
        }
    }

    /// The first key (the origin's).
    pub fn first(&self) -> &[u8] {
        &self.first
    }

    /// Number of key generations announced so far, the first included.
    pub fn generations(&self) -> u64 {
        self.announced.len() as u64 + 1
    }

    /// Records an announcement read from entry `body`; an error when it is
    /// malformed, names a generation out of turn, comes before the previous
    /// announcement or repeats a key.
    pub fn observe(&mut self, body: &EntryBody) -> Result<(), String> {
        let Some(a) = announcement(body, &self.first)? else {
            return Ok(());
        };
        let expected = self.generations() + 1;
        if a.generation != expected {
            return Err(format!(
                "entry {} announces ledger key generation {} where generation {expected} comes next",
                a.seq, a.generation
            ));
        }
        if let Some((before, _)) = self.announced.last().filter(|(b, _)| b.seq >= a.seq) {
            return Err(format!(
                "entry {} announces ledger key generation {} where only an entry after {} can",
                a.seq, a.generation, before.seq
            ));
        }
        if a.public_key == self.first || self.announced.iter().any(|(b, _)| b.public_key == a.public_key) {
            return Err(format!("entry {} announces a ledger key used before", a.seq));
        }
        self.announced.push((a, false));
        Ok(())
    }

    /// The key that must sign the checkpoint of `size` entries, with its
    /// generation: an error when an announcement it depends on was not
    /// confirmed by a checkpoint signed by the key before it.
    pub fn key_for(&self, size: u64) -> Result<(&[u8], u64), String> {
        let mut key: &[u8] = &self.first;
        let mut generation = 1;
        for (a, confirmed) in &self.announced {
            if size <= a.seq.saturating_add(1) {
                break;
            }
            if !*confirmed {
                return Err(format!(
                    "ledger key generation {} (announced in entry {}) is not covered by a checkpoint of size {} \
                     signed by generation {generation}: the announcement is not signed by the key before it",
                    a.generation,
                    a.seq,
                    a.seq.saturating_add(1)
                ));
            }
            key = &a.public_key;
            generation = a.generation;
        }
        Ok((key, generation))
    }

    /// A checkpoint of `size` entries verified under the key for its size:
    /// it confirms the announcement that ends that tree, if any.
    pub fn confirm(&mut self, size: u64) {
        for (a, confirmed) in &mut self.announced {
            if a.seq.saturating_add(1) == size {
                *confirmed = true;
            }
        }
    }

    /// Checks `cp` under the key for its size (JSON signature and note).
    pub fn verify(&self, cp: &SignedCheckpoint) -> Result<u64, String> {
        let size = cp.checkpoint.size;
        let (key, generation) = self.key_for(size)?;
        if !cp.verify_under(&self.first, key) {
            return Err(format!(
                "the signature of the checkpoint at size {size} does not verify with the operator key \
                 (generation {generation})"
            ));
        }
        Ok(generation)
    }
}

/// A checkpoint line of an export: the signed checkpoint and, after the
/// first, the proof that an earlier checkpoint's tree (normally the one
/// before it) is a prefix of this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Hex Ed25519 signature over [`Checkpoint::signing_message`].
    pub signature: String,
    /// The C2SP signed note with witness cosignatures
    /// ([`SignedCheckpoint::note`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Consistency with an earlier checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyLink>,
}

impl ExportCheckpoint {
    /// The signed part.
    pub fn signed(&self) -> SignedCheckpoint {
        SignedCheckpoint {
            checkpoint: self.checkpoint.clone(),
            signature: self.signature.clone(),
            note: self.note.clone(),
        }
    }
}

/// A consistency proof from an earlier tree size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyLink {
    /// The earlier size.
    pub from: u64,
    /// Hex hashes of the RFC 6962 consistency proof.
    pub proof: Vec<String>,
}

/// Parses a list of hex hashes.
pub fn parse_proof(proof: &[String]) -> Option<Vec<Hash>> {
    proof.iter().map(|h| parse_hash(h)).collect()
}

/// Hex-encodes a list of hashes.
pub fn proof_hex(proof: &[Hash]) -> Vec<String> {
    proof.iter().map(hex::encode).collect()
}

/// What a successful verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints whose signature and root were checked.
    pub checkpoints: u64,
    /// Consistency proofs between checkpoints that were checked.
    pub consistency_proofs: u64,
    /// Checkpoints held by the verifier (from receipts or earlier exports)
    /// that were found to be prefixes of this export.
    pub held_checkpoints: u64,
    /// Hex Merkle root over all entries.
    pub root: String,
    /// True when the key came from `--public-key` rather than the export itself.
    pub key_pinned: bool,
    /// Checkpoints whose C2SP note was checked.
    pub notes: u64,
    /// For each witness required, the largest checkpoint it cosigned.
    pub witnessed: Vec<Witnessed>,
    /// Ledger signing key generations followed (1 when the key never
    /// rotated), each announced under the one before it.
    pub key_generations: u64,
}

/// The largest tree a required witness cosigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Witnessed {
    /// The witness's key name.
    pub witness: String,
    /// The size of the largest checkpoint it cosigned.
    pub size: u64,
    /// The cosignature's time, seconds since the Unix epoch.
    pub time: u64,
}

/// Where and why verification failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyFailure {
    /// The first entry that is altered, missing or out of place, when the
    /// failure can be pinned to one.
    pub first_bad_entry: Option<u64>,
    /// 1-based line of the export where the problem was seen (0: after
    /// the last line, or in a held checkpoint).
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

fn fail(first_bad_entry: Option<u64>, line: u64, reason: String) -> VerifyFailure {
    VerifyFailure {
        first_bad_entry,
        line,
        reason,
    }
}

/// The state of an export being verified line by line.
struct Verifier<'k> {
    chain: KeyChain,
    witnesses: &'k [VerifierKey],
    witnessed: Vec<Option<(u64, u64)>>,
    notes: u64,
    tree: MerkleTree,
    prev: Hash,
    checkpoints: u64,
    proofs: u64,
    last: Option<u64>,
}

impl Verifier<'_> {
    fn entry(&mut self, line: &str, lineno: u64) -> Result<(), VerifyFailure> {
        let seq = self.tree.size();
        let entry: ExportEntry = serde_json::from_str(line)
            .map_err(|e| fail(Some(seq), lineno, format!("malformed entry line: {e}")))?;
        let computed = leaf_hash(entry.body.as_bytes());
        if parse_hash(&entry.hash) != Some(computed) {
            return Err(fail(
                Some(seq),
                lineno,
                format!("entry {seq} was altered: its content does not match its hash"),
            ));
        }
        let body: EntryBody = serde_json::from_str(&entry.body)
            .map_err(|e| fail(Some(seq), lineno, format!("entry {seq} body is malformed: {e}")))?;
        if body.seq != seq {
            return Err(fail(
                Some(seq.min(body.seq)),
                lineno,
                format!(
                    "expected entry {seq} here but found entry {}: entries were removed or reordered",
                    body.seq
                ),
            ));
        }
        if parse_hash(&body.prev) != Some(self.prev) {
            let culprit = seq.saturating_sub(1);
            return Err(fail(
                Some(culprit),
                lineno,
                format!("chain broken between entries {culprit} and {seq}: entry {culprit} was altered or replaced"),
            ));
        }
        self.chain
            .observe(&body)
            .map_err(|reason| fail(Some(seq), lineno, reason))?;
        self.prev = computed;
        self.tree.push(computed);
        Ok(())
    }

    fn checkpoint(&mut self, line: &str, lineno: u64) -> Result<(), VerifyFailure> {
        let have = self.tree.size();
        let cp: ExportCheckpoint = serde_json::from_str(line)
            .map_err(|e| fail(None, lineno, format!("malformed checkpoint: {e}")))?;
        let size = cp.checkpoint.size;
        if size > have {
            return Err(fail(
                Some(have),
                lineno,
                format!("signed checkpoint covers {size} entries but only {have} precede it: entries were removed"),
            ));
        }
        self.chain
            .verify(&cp.signed())
            .map_err(|reason| fail(None, lineno, reason))?;
        let key = self
            .chain
            .key_for(size)
            .map_err(|reason| fail(None, lineno, reason))?
            .0
            .to_vec();
        let root = cp
            .signed()
            .root()
            .ok_or_else(|| fail(None, lineno, "the checkpoint root is not a hash".into()))?;
        if cp.note.is_some() {
            self.notes += 1;
        }
        for (w, seen) in self.witnesses.iter().zip(self.witnessed.iter_mut()) {
            // A cosignature line naming a required witness must verify; a
            // checkpoint it has not cosigned is simply not counted.
            match cp.signed().witnessed_by_under(self.chain.first(), &key, w) {
                Ok(time) => *seen = Some((size, time)),
                Err(reason) if cp.signed().names(w) => {
                    return Err(fail(None, lineno, format!("checkpoint at size {size}: {reason}")))
                }
                Err(_) => {}
            }
        }
        if self.last.is_some_and(|last_size| size < last_size) {
            return Err(fail(None, lineno, "checkpoints go backwards".into()));
        }
        if let Some(link) = &cp.consistency {
            // The earlier tree is the one the verified entries give (every
            // earlier checkpoint line was checked against it).
            let from = link.from;
            let earlier = self.tree.root_at(from.min(size)).map_err(|_| {
                fail(
                    None,
                    lineno,
                    format!("consistency proof from size {from}, beyond this checkpoint"),
                )
            })?;
            let proof = parse_proof(&link.proof)
                .ok_or_else(|| fail(None, lineno, "consistency proof is not a list of hashes".into()))?;
            if from > size || !merkle::verify_consistency(from, size, &earlier, &root, &proof) {
                return Err(fail(
                    None,
                    lineno,
                    format!("forked history: the signed trees of sizes {from} and {size} are not consistent"),
                ));
            }
            self.proofs += 1;
        }
        if self.tree.root_at(size).ok() != Some(root) {
            return Err(fail(
                None,
                lineno,
                format!(
                    "the entries before this checkpoint do not hash to its signed root (size {size}): \
                     they were rewritten after it was signed"
                ),
            ));
        }
        self.chain.confirm(size);
        self.last = Some(size);
        self.checkpoints += 1;
        Ok(())
    }

    /// A checkpoint the verifier obtained elsewhere (a receipt, an earlier
    /// export) must describe a prefix of this export.
    fn held(&self, cp: &SignedCheckpoint) -> Result<(), VerifyFailure> {
        let size = cp.checkpoint.size;
        if let Err(reason) = self.chain.verify(cp) {
            return Err(fail(
                None,
                0,
                format!("the held checkpoint at size {size} is not signed by the operator key: {reason}"),
            ));
        }
        if size > self.tree.size() {
            return Err(fail(
                Some(self.tree.size()),
                0,
                format!(
                    "a held signed checkpoint covers {size} entries but the export has only {}: entries were removed",
                    self.tree.size()
                ),
            ));
        }
        if self.tree.root_at(size).ok() != cp.root() {
            return Err(fail(
                None,
                0,
                format!(
                    "forked history: the held checkpoint at size {size} (signed {}) does not match this \
                     export's first {size} entries; the operator has signed two different histories",
                    cp.checkpoint.time.to_rfc3339()
                ),
            ));
        }
        Ok(())
    }
}

/// Verifies an export read as lines. `pinned_key` is the operator's public
/// key obtained out of band; without it the key in the header is used and
/// the report says so. `held` are signed checkpoints the verifier obtained
/// before (from receipts or earlier exports): each must be a prefix of this
/// export, which is how a rewritten (forked) history is caught even when
/// the export is internally consistent.
pub fn verify_export<I, S>(
    lines: I,
    pinned_key: Option<&[u8]>,
    held: &[SignedCheckpoint],
) -> Result<VerifyReport, VerifyFailure>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    verify_export_witnessed(lines, pinned_key, held, &[])
}

/// [`verify_export`], also requiring that each of `witnesses` cosigned at
/// least one checkpoint of the export (C2SP `cosignature/v1`, [`note`]);
/// every cosignature line naming a required witness must verify. The
/// report gives, per witness, the largest checkpoint it cosigned: the
/// entries up to it are the ones the witness vouches were not forked.
pub fn verify_export_witnessed<I, S>(
    lines: I,
    pinned_key: Option<&[u8]>,
    held: &[SignedCheckpoint],
    witnesses: &[VerifierKey],
) -> Result<VerifyReport, VerifyFailure>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut iter = lines
        .into_iter()
        .enumerate()
        .filter(|(_, l)| !l.as_ref().trim().is_empty());
    let (_, header_line) = iter
        .next()
        .ok_or_else(|| fail(None, 1, "the export is empty".into()))?;
    let header: ExportHeader = serde_json::from_str(header_line.as_ref())
        .map_err(|e| fail(None, 1, format!("the first line is not an export header: {e}")))?;
    if header.format != EXPORT_FORMAT {
        return Err(fail(
            None,
            1,
            format!("unknown export format `{}`", header.format.escape_debug()),
        ));
    }
    let header_key = hex::decode(&header.public_key)
        .map_err(|_| fail(None, 1, "the header's public key is not hex".into()))?;
    let key: Vec<u8> = pinned_key.map(<[u8]>::to_vec).unwrap_or(header_key);
    let mut v = Verifier {
        chain: KeyChain::new(&key),
        witnesses,
        witnessed: vec![None; witnesses.len()],
        notes: 0,
        tree: MerkleTree::new(),
        prev: ZERO_HASH,
        checkpoints: 0,
        proofs: 0,
        last: None,
    };
    for (idx, line) in iter {
        let (line, lineno) = (line.as_ref().trim(), idx as u64 + 1);
        if line.starts_with("{\"checkpoint\"") {
            v.checkpoint(line, lineno)?;
        } else if line.starts_with("{\"format\"") {
            // A resumed feed appended to an earlier one repeats the header.
            let h: ExportHeader = serde_json::from_str(line)
                .map_err(|e| fail(None, lineno, format!("malformed header line: {e}")))?;
            if h.format != header.format || h.public_key != header.public_key {
                return Err(fail(
                    None,
                    lineno,
                    "a later header names a different format or key".into(),
                ));
            }
        } else {
            v.entry(line, lineno)?;
        }
    }
    let size = v.tree.size();
    let Some(last_size) = v.last else {
        return Err(fail(None, 0, "the export has no signed checkpoint".into()));
    };
    if last_size != size {
        return Err(fail(
            Some(last_size),
            0,
            format!("entries {last_size}..{size} are not covered by any signed checkpoint"),
        ));
    }
    for cp in held {
        v.held(cp)?;
    }
    let mut witnessed = Vec::new();
    for (w, seen) in witnesses.iter().zip(&v.witnessed) {
        let Some((size, time)) = *seen else {
            return Err(fail(
                None,
                0,
                format!(
                    "no checkpoint of the export carries a valid cosignature of witness `{}`",
                    w.name
                ),
            ));
        };
        witnessed.push(Witnessed {
            witness: w.name.clone(),
            size,
            time,
        });
    }
    Ok(VerifyReport {
        notes: v.notes,
        witnessed,
        entries: size,
        checkpoints: v.checkpoints,
        consistency_proofs: v.proofs,
        held_checkpoints: held.len() as u64,
        root: hex::encode(v.tree.root()),
        key_pinned: pinned_key.is_some(),
        key_generations: v.chain.generations(),
    })
}

/// Format tag of receipts.
pub const RECEIPT_FORMAT: &str = "invis-receipt/1";

/// Proof that one entry (typically a `result.release`) is in the ledger:
/// the entry, its inclusion proof, and the signed checkpoint it leads to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Always [`RECEIPT_FORMAT`].
    pub format: String,
    /// Hex Ed25519 public key of the operator, as claimed by the issuer.
    pub public_key: String,
    /// Index of the entry.
    pub seq: u64,
    /// The entry: its leaf hash and canonical text.
    pub entry: ExportEntry,
    /// Hex audit path from the entry to the checkpoint's root.
    pub inclusion: Vec<String>,
    /// A signed checkpoint covering the entry.
    pub checkpoint: SignedCheckpoint,
    /// When the ledger key rotated before the checkpoint's size: each
    /// announcement, in order, proven under the checkpoint that ends at it,
    /// signed by the key before it ([`KeyChain`]). Empty (and absent)
    /// before any rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_chain: Vec<KeyLink>,
}

/// One link of a receipt's key chain: a ledger key announcement, its
/// inclusion proof, and the checkpoint of size `seq + 1` signed by the
/// previous key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLink {
    /// Position of the `key.rotate` entry.
    pub seq: u64,
    /// The entry: its leaf hash and canonical text.
    pub entry: ExportEntry,
    /// Hex audit path from the entry to the checkpoint's root.
    pub inclusion: Vec<String>,
    /// The checkpoint of size `seq + 1`, signed by the key before the one
    /// announced.
    pub checkpoint: SignedCheckpoint,
}

/// What a verified receipt proves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptReport {
    /// Entry index.
    pub seq: u64,
    /// The entry's action.
    pub action: String,
    /// The entry's subject (a job id for releases).
    pub subject: String,
    /// Size of the signed tree the entry was proven in.
    pub checkpoint_size: u64,
    /// True when an output file was given and matched the entry's output hash.
    pub output_matches: bool,
    /// True when the key came from the caller rather than the receipt.
    pub key_pinned: bool,
    /// True when the checkpoint's C2SP note was checked.
    pub note_checked: bool,
    /// The required witnesses whose cosignature of the checkpoint verified.
    pub witnessed_by: Vec<String>,
    /// Ledger signing key generations followed to the checkpoint's key (1
    /// when the key never rotated).
    pub key_generations: u64,
}

/// Verifies a receipt offline. With `output`, the released bytes must hash
/// to the entry's `output_hash`.
pub fn verify_receipt(
    r: &Receipt,
    pinned_key: Option<&[u8]>,
    output: Option<&[u8]>,
) -> Result<ReceiptReport> {
    verify_receipt_witnessed(r, pinned_key, output, &[])
}

/// [`verify_receipt`], also requiring a valid `cosignature/v1` of the
/// receipt's checkpoint from each of `witnesses`.
pub fn verify_receipt_witnessed(
    r: &Receipt,
    pinned_key: Option<&[u8]>,
    output: Option<&[u8]>,
    witnesses: &[VerifierKey],
) -> Result<ReceiptReport> {
    let bad = |m: String| Error::LedgerInvalid(m);
    if r.format != RECEIPT_FORMAT {
        return Err(bad(format!(
            "unknown receipt format `{}`",
            r.format.escape_debug()
        )));
    }
    let claimed =
        hex::decode(&r.public_key).map_err(|_| bad("the receipt's public key is not hex".into()))?;
    let first = pinned_key.unwrap_or(&claimed);
    let mut chain = KeyChain::new(first);
    for link in &r.key_chain {
        follow_link(&mut chain, link).map_err(|e| bad(format!("key chain: {e}")))?;
    }
    if let Some(last) = r.key_chain.last() {
        if r.checkpoint.checkpoint.size <= last.checkpoint.checkpoint.size {
            return Err(bad("the key chain goes beyond the receipt's checkpoint".into()));
        }
    }
    chain.verify(&r.checkpoint).map_err(bad)?;
    let key = chain
        .key_for(r.checkpoint.checkpoint.size)
        .map_err(bad)?
        .0
        .to_vec();
    let note_checked = r
        .checkpoint
        .verify_note_under(first, &key)
        .map_err(bad)?
        .is_some();
    let mut witnessed_by = Vec::new();
    for w in witnesses {
        r.checkpoint
            .witnessed_by_under(first, &key, w)
            .map_err(|e| bad(format!("witness required: {e}")))?;
        witnessed_by.push(w.name.clone());
    }
    let leaf = leaf_hash(r.entry.body.as_bytes());
    if parse_hash(&r.entry.hash) != Some(leaf) {
        return Err(bad(
            "the entry was altered: its content does not match its hash".into()
        ));
    }
    let body: EntryBody =
        serde_json::from_str(&r.entry.body).map_err(|e| bad(format!("the entry is malformed: {e}")))?;
    if body.seq != r.seq {
        return Err(bad(format!(
            "the receipt names entry {} but holds entry {}",
            r.seq, body.seq
        )));
    }
    let proof =
        parse_proof(&r.inclusion).ok_or_else(|| bad("the inclusion proof is not a list of hashes".into()))?;
    let root = r
        .checkpoint
        .root()
        .ok_or_else(|| bad("the checkpoint root is not a hash".into()))?;
    if !merkle::verify_inclusion(r.seq, r.checkpoint.checkpoint.size, &leaf, &proof, &root) {
        return Err(bad(format!(
            "the inclusion proof does not place entry {} under the signed root of size {}",
            r.seq, r.checkpoint.checkpoint.size
        )));
    }
    let output_matches = match output {
        None => false,
        Some(bytes) => {
            let claimed = body.details.get("output_hash").and_then(|v| v.as_str());
            if claimed != Some(hex::encode(sha256(bytes)).as_str()) {
                return Err(bad(
                    "the output does not match the output hash in the entry".into()
                ));
            }
            true
        }
    };
    Ok(ReceiptReport {
        seq: r.seq,
        action: body.action,
        subject: body.subject,
        checkpoint_size: r.checkpoint.checkpoint.size,
        output_matches,
        key_pinned: pinned_key.is_some(),
        note_checked,
        witnessed_by,
        key_generations: chain.generations(),
    })
}

/// Follows one key chain link: its checkpoint is the tree ending at the
/// announcement, signed by the chain's current key, and the announcement
/// is in it.
pub fn follow_link(chain: &mut KeyChain, link: &KeyLink) -> Result<(), String> {
    let size = link.checkpoint.checkpoint.size;
    if size != link.seq.saturating_add(1) {
        return Err(format!(
            "the announcement in entry {} must be proven under the checkpoint of size {}, not {size}",
            link.seq,
            link.seq.saturating_add(1)
        ));
    }
    let leaf = leaf_hash(link.entry.body.as_bytes());
    if parse_hash(&link.entry.hash) != Some(leaf) {
        return Err(format!(
            "the announcement in entry {} was altered: its content does not match its hash",
            link.seq
        ));
    }
    let body: EntryBody = serde_json::from_str(&link.entry.body)
        .map_err(|e| format!("the announcement in entry {} is malformed: {e}", link.seq))?;
    if body.seq != link.seq {
        return Err(format!(
            "the link names entry {} but holds entry {}",
            link.seq, body.seq
        ));
    }
    if announcement(&body, chain.first())?.is_none() {
        return Err(format!("entry {} is not a ledger key announcement", link.seq));
    }
    chain.observe(&body)?;
    // The announcement is the last entry of this tree, so the key before
    // it must sign the tree.
    chain.verify(&link.checkpoint)?;
    let proof = parse_proof(&link.inclusion).ok_or("the inclusion proof is not a list of hashes")?;
    let root = link
        .checkpoint
        .root()
        .ok_or("the checkpoint root is not a hash")?;
    if !merkle::verify_inclusion(link.seq, size, &leaf, &proof, &root) {
        return Err(format!(
            "the inclusion proof does not place the announcement in entry {} under the signed root of size {size}",
            link.seq
        ));
    }
    chain.confirm(size);
    Ok(())
}

impl From<VerifyFailure> for Error {
    fn from(f: VerifyFailure) -> Error {
        Error::LedgerInvalid(f.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn keypair() -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
    }

    fn body(seq: u64, prev: &Hash, subject: &str) -> String {
        let body = EntryBody {
            seq,
            prev: hex::encode(prev),
            time: Utc::now(),
            actor: "pt_a".into(),
            role: "operator".into(),
            action: "result.release".into(),
            subject: subject.into(),
            details: serde_json::json!({"n": seq, "output_hash": hex::encode(sha256(subject.as_bytes()))}),
        };
        String::from_utf8(body.canonical()).unwrap()
    }

    #[test]
    fn a_completed_tail_is_the_canonical_text() {
        let details = [
            serde_json::json!({}),
            serde_json::json!(null),
            serde_json::json!({"z": 1, "a": [1.5, -2, "x"], "m": {"b": true, "a": null}}),
            serde_json::json!({"sql": "SELECT \"a\"\n\tFROM t WHERE s = '\u{1}\\'", "名称": "数据 🔒"}),
            serde_json::json!({"big": u64::MAX, "small": i64::MIN, "f": 1e-300}),
        ];
        let times = [
            Utc::now(),
            DateTime::<Utc>::from_timestamp(0, 0).unwrap(),
            DateTime::<Utc>::from_timestamp(1_790_000_000, 123_000).unwrap(),
        ];
        for (i, d) in details.iter().enumerate() {
            for t in &times {
                let (actor, subject) = ("pt_\"a\\", format!("job_{i}\u{7f}\u{2028}"));
                let prev = hex::encode(sha256(&[i as u8]));
                let body = EntryBody {
                    seq: i as u64 * 1_000_003,
                    prev: prev.clone(),
                    time: *t,
                    actor: actor.into(),
                    role: "developer".into(),
                    action: "query.release".into(),
                    subject: subject.clone(),
                    details: d.clone(),
                };
                let tail = EntryTail::new(actor, "developer", "query.release", &subject, d);
                assert_eq!(
                    tail.complete(body.seq, &prev, t),
                    String::from_utf8(body.canonical()).unwrap()
                );
            }
        }
    }

    fn sign(kp: &Ed25519KeyPair, tree: &MerkleTree, size: u64) -> SignedCheckpoint {
        let checkpoint = Checkpoint {
            size,
            root: hex::encode(tree.root_at(size).unwrap()),
            time: Utc::now(),
        };
        let signature = hex::encode(kp.sign(&checkpoint.signing_message()).as_ref());
        let mut cp = SignedCheckpoint {
            checkpoint,
            signature,
            note: None,
        };
        let pk = kp.public_key().as_ref();
        let body = cp.note_body(pk).unwrap();
        let key = VerifierKey::operator(pk).unwrap();
        cp.note = Some(
            note::Note {
                signatures: vec![note::operator_signature(&key, kp.sign(body.as_bytes()).as_ref())],
                body,
            }
            .text(),
        );
        cp
    }

    /// Adds `witness`'s cosignature to the checkpoint's note.
    fn cosign(cp: &mut SignedCheckpoint, witness: &Ed25519KeyPair, name: &str) -> VerifierKey {
        let wk = VerifierKey::new(
            name,
            note::ALG_COSIGNATURE_V1,
            witness.public_key().as_ref().try_into().unwrap(),
        )
        .unwrap();
        let mut n = note::Note::parse(cp.note.as_deref().unwrap()).unwrap();
        let sig = witness.sign(&note::cosignature_message(1_800_000_000, &n.body));
        n.signatures
            .push(note::cosignature(&wk, 1_800_000_000, sig.as_ref()));
        cp.note = Some(n.text());
        wk
    }

    /// An export of `n` entries with a checkpoint after every entry in
    /// `at` (and one at the end), each linked to the previous by a
    /// consistency proof. `rewrite` replaces the subject of one entry and
    /// re-chains everything after it, as an operator rewriting history would.
    fn export_with(
        n: u64,
        at: &[u64],
        kp: &Ed25519KeyPair,
        rewrite: Option<u64>,
    ) -> (Vec<String>, MerkleTree, Vec<SignedCheckpoint>) {
        let mut lines = vec![serde_json::to_string(&ExportHeader {
            format: EXPORT_FORMAT.into(),
            public_key: hex::encode(kp.public_key().as_ref()),
            exported_at: Utc::now(),
        })
        .unwrap()];
        let mut tree = MerkleTree::new();
        let mut prev = ZERO_HASH;
        let mut signed = vec![];
        let mut last: Option<u64> = None;
        for seq in 0..n {
            let subject = if rewrite == Some(seq) {
                format!("forged{seq}")
            } else {
                format!("x{seq}")
            };
            let text = body(seq, &prev, &subject);
            prev = leaf_hash(text.as_bytes());
            tree.push(prev);
            lines.push(
                serde_json::to_string(&ExportEntry {
                    hash: hex::encode(prev),
                    body: text,
                })
                .unwrap(),
            );
            let size = seq + 1;
            if at.contains(&size) || size == n {
                let cp = sign(kp, &tree, size);
                let consistency = last.map(|from| ConsistencyLink {
                    from,
                    proof: proof_hex(&tree.consistency_proof(from, size).unwrap()),
                });
                lines.push(
                    serde_json::to_string(&ExportCheckpoint {
                        checkpoint: cp.checkpoint.clone(),
                        signature: cp.signature.clone(),
                        note: cp.note.clone(),
                        consistency,
                    })
                    .unwrap(),
                );
                signed.push(cp);
                last = Some(size);
            }
        }
        (lines, tree, signed)
    }

    fn export(n: u64, kp: &Ed25519KeyPair) -> Vec<String> {
        export_with(n, &[], kp, None).0
    }

    #[test]
    fn rfc6962_shapes() {
        let l: Vec<Hash> = (0..5u8).map(|i| leaf_hash(&[i])).collect();
        let expect = node_hash(
            &node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3])),
            &l[4],
        );
        assert_eq!(merkle_root(&l), expect);
        assert_eq!(merkle_root(&[]), sha256(b""));
        // RFC 6962 test vector: the empty tree hash.
        assert_eq!(
            hex::encode(merkle_root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn clean_export_verifies_with_its_consistency_links() {
        let kp = keypair();
        let (lines, _, signed) = export_with(10, &[3, 4, 8], &kp, None);
        let r = verify_export(&lines, Some(kp.public_key().as_ref()), &signed).unwrap();
        assert_eq!(r.entries, 10);
        assert_eq!(r.checkpoints, 4);
        assert_eq!(r.consistency_proofs, 3);
        assert_eq!(r.held_checkpoints, 4);
        assert!(r.key_pinned);
    }

    #[test]
    fn edited_entry_is_named() {
        let kp = keypair();
        let mut lines = export(10, &kp);
        lines[4] = lines[4].replace("x3", "x9");
        let f = verify_export(&lines, Some(kp.public_key().as_ref()), &[]).unwrap_err();
        assert_eq!(f.first_bad_entry, Some(3));
        // One flipped byte in the stored hash is caught the same way.
        let mut lines = export(10, &kp);
        let flipped =
            lines[6]
                .replacen("\"hash\":\"", "\"hash\":\"0", 1)
                .replacen("\"hash\":\"00", "\"hash\":\"01", 1);
        lines[6] = flipped;
        let f = verify_export(&lines, Some(kp.public_key().as_ref()), &[]).unwrap_err();
        assert_eq!(f.first_bad_entry, Some(5), "{}", f.reason);
    }

    #[test]
    fn removed_reordered_and_truncated_are_caught() {
        let kp = keypair();
        let pk = kp.public_key().as_ref().to_vec();
        let lines = export(10, &kp);
        let mut removed = lines.clone();
        removed.remove(6);
        assert_eq!(
            verify_export(&removed, Some(&pk), &[])
                .unwrap_err()
                .first_bad_entry,
            Some(5)
        );
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        assert_eq!(
            verify_export(&swapped, Some(&pk), &[])
                .unwrap_err()
                .first_bad_entry,
            Some(2)
        );
        // Dropping the tail and its checkpoint leaves an export that is
        // internally whole; a checkpoint the regulator holds catches it.
        let (lines, _, signed) = export_with(10, &[6], &kp, None);
        let truncated: Vec<String> = lines[..8].to_vec();
        assert!(verify_export(&truncated, Some(&pk), &[]).is_ok());
        let f = verify_export(&truncated, Some(&pk), &signed[1..]).unwrap_err();
        assert_eq!(f.first_bad_entry, Some(6), "{}", f.reason);
        // Without its final checkpoint, the tail is uncovered.
        let mut no_final = lines.clone();
        no_final.pop();
        let f = verify_export(&no_final, Some(&pk), &[]).unwrap_err();
        assert!(f.reason.contains("not covered"), "{}", f.reason);
    }

    #[test]
    fn forked_history_is_caught() {
        let kp = keypair();
        let pk = kp.public_key().as_ref().to_vec();
        // The regulator holds a checkpoint at size 8 from the honest
        // history; the operator later rewrites entry 5 and re-signs.
        let (_, _, honest) = export_with(12, &[8], &kp, None);
        let (forked, _, _) = export_with(12, &[8], &kp, Some(5));
        assert!(verify_export(&forked, Some(&pk), &[]).is_ok(), "internally whole");
        let f = verify_export(&forked, Some(&pk), &honest[..1]).unwrap_err();
        assert!(f.reason.contains("forked history"), "{}", f.reason);
        // Two signed checkpoints in one export that are not consistent: the
        // honest checkpoint at 8 spliced before the forked tail.
        let (honest_lines, _, _) = export_with(12, &[8], &kp, None);
        let mut spliced = forked.clone();
        spliced[9] = honest_lines[9].clone();
        let f = verify_export(&spliced, Some(&pk), &[]).unwrap_err();
        assert!(
            f.reason.contains("rewritten") || f.reason.contains("forked"),
            "{}",
            f.reason
        );
    }

    #[test]
    fn foreign_key_is_refused() {
        let kp = keypair();
        let lines = export(3, &kp);
        let other = keypair();
        let f = verify_export(&lines, Some(other.public_key().as_ref()), &[]).unwrap_err();
        assert!(f.reason.contains("signature"));
    }

    fn receipt(kp: &Ed25519KeyPair, seq: u64) -> Receipt {
        let (lines, tree, signed) = export_with(9, &[], kp, None);
        let entry: ExportEntry = serde_json::from_str(&lines[seq as usize + 1]).unwrap();
        Receipt {
            format: RECEIPT_FORMAT.into(),
            public_key: hex::encode(kp.public_key().as_ref()),
            seq,
            entry,
            inclusion: proof_hex(&tree.inclusion_proof(seq, 9).unwrap()),
            checkpoint: signed[0].clone(),
            key_chain: vec![],
        }
    }

    #[test]
    fn receipts_verify_and_tampered_receipts_do_not() {
        let kp = keypair();
        let pk = kp.public_key().as_ref().to_vec();
        let r = receipt(&kp, 4);
        let rep = verify_receipt(&r, Some(&pk), Some(b"x4")).unwrap();
        assert_eq!(
            (rep.seq, rep.subject.as_str(), rep.output_matches),
            (4, "x4", true)
        );
        assert!(
            verify_receipt(&r, Some(&pk), Some(b"x5")).is_err(),
            "other output"
        );
        let mut moved = r.clone();
        moved.seq = 5;
        assert!(verify_receipt(&moved, Some(&pk), None).is_err(), "other index");
        let mut edited = r.clone();
        edited.entry.body = edited.entry.body.replace("x4", "x7");
        assert!(verify_receipt(&edited, Some(&pk), None).is_err(), "edited entry");
        let mut reproved = r.clone();
        reproved.inclusion.pop();
        assert!(verify_receipt(&reproved, Some(&pk), None).is_err(), "short proof");
        let mut resized = r.clone();
        resized.checkpoint.checkpoint.size = 10;
        assert!(
            verify_receipt(&resized, Some(&pk), None).is_err(),
            "unsigned size"
        );
        let other = keypair();
        assert!(verify_receipt(&r, Some(other.public_key().as_ref()), None).is_err());
    }

    #[test]
    fn notes_are_checked_and_witnesses_required() {
        let kp = keypair();
        let pk = kp.public_key().as_ref().to_vec();
        let witness = keypair();
        let (lines, _, _) = export_with(10, &[4], &kp, None);
        let r = verify_export(&lines, Some(&pk), &[]).unwrap();
        assert_eq!(r.notes, 2);
        // Cosign the checkpoint at 4 (line 5 + 1 entry lines + header).
        let mut lines = lines;
        let mut cp: ExportCheckpoint = serde_json::from_str(&lines[5]).unwrap();
        let mut signed = cp.signed();
        let wk = cosign(&mut signed, &witness, "regulator.witness");
        cp.note = signed.note.clone();
        lines[5] = serde_json::to_string(&cp).unwrap();
        let r = verify_export_witnessed(&lines, Some(&pk), &[], std::slice::from_ref(&wk)).unwrap();
        assert_eq!(r.witnessed[0].size, 4);
        // Another witness's key is not satisfied.
        let other = VerifierKey::new("other.witness", note::ALG_COSIGNATURE_V1, [7; 32]).unwrap();
        let f = verify_export_witnessed(&lines, Some(&pk), &[], &[other]).unwrap_err();
        assert!(f.reason.contains("no checkpoint"), "{}", f.reason);
        // The same name with a wrong key: its line does not match the key
        // hash, so nothing is cosigned by it.
        let wrong = VerifierKey::new("regulator.witness", note::ALG_COSIGNATURE_V1, [7; 32]).unwrap();
        assert!(verify_export_witnessed(&lines, Some(&pk), &[], &[wrong]).is_err());
        // The cosignature moved onto the final checkpoint does not verify.
        let cos_line = signed
            .note
            .as_deref()
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string();
        let last = lines.len() - 1;
        let mut fin: ExportCheckpoint = serde_json::from_str(&lines[last]).unwrap();
        fin.note = Some(format!("{}{cos_line}\n", fin.note.unwrap()));
        lines[last] = serde_json::to_string(&fin).unwrap();
        let f = verify_export_witnessed(&lines, Some(&pk), &[], std::slice::from_ref(&wk)).unwrap_err();
        assert!(f.reason.contains("does not verify"), "{}", f.reason);
        // A note whose operator signature is forged, or that states another
        // root, fails even without a witness.
        let (mut lines, _, _) = export_with(3, &[], &kp, None);
        let mut fin: ExportCheckpoint = serde_json::from_str(&lines[4]).unwrap();
        let n = note::Note::parse(fin.note.as_deref().unwrap()).unwrap();
        let forged = note::Note {
            signatures: vec![note::operator_signature(
                &VerifierKey::operator(&pk).unwrap(),
                keypair().sign(n.body.as_bytes()).as_ref(),
            )],
            body: n.body.clone(),
        };
        fin.note = Some(forged.text());
        lines[4] = serde_json::to_string(&fin).unwrap();
        let f = verify_export(&lines, Some(&pk), &[]).unwrap_err();
        assert!(f.reason.contains("signature"), "{}", f.reason);
        let mut other_root = n.clone();
        other_root.body = note::checkpoint_body(&note::origin_for(&pk), 3, &[1; 32]);
        fin.note = Some(other_root.text());
        lines[4] = serde_json::to_string(&fin).unwrap();
        assert!(verify_export(&lines, Some(&pk), &[]).is_err());
    }

    #[test]
    fn receipts_can_require_a_witness() {
        let kp = keypair();
        let pk = kp.public_key().as_ref().to_vec();
        let witness = keypair();
        let mut r = receipt(&kp, 4);
        let plain = r.clone();
        let wk = cosign(&mut r.checkpoint, &witness, "regulator.witness");
        let rep = verify_receipt_witnessed(&r, Some(&pk), None, std::slice::from_ref(&wk)).unwrap();
        assert_eq!(rep.witnessed_by, ["regulator.witness"]);
        assert!(rep.note_checked);
        let e = verify_receipt_witnessed(&plain, Some(&pk), None, std::slice::from_ref(&wk)).unwrap_err();
        assert!(e.to_string().contains("no cosignature"), "{e}");
        let other = VerifierKey::new("regulator.witness", note::ALG_COSIGNATURE_V1, [7; 32]).unwrap();
        assert!(verify_receipt_witnessed(&r, Some(&pk), None, &[other]).is_err());
    }

    /// Export lines, the tree, each entry's text, the checkpoints.
    type Rotating = (Vec<String>, MerkleTree, Vec<(u64, String)>, Vec<SignedCheckpoint>);

    /// An export of `n` entries in which entry `a` announces key
    /// generation `g` for each `(a, g)` in `rotations` (generation `g` is
    /// `keys[g - 1]`), with a checkpoint at each size in `at` and at the
    /// end, signed by `keys[signer(size) - 1]`.
    fn export_rotating(
        n: u64,
        rotations: &[(u64, usize)],
        at: &[u64],
        keys: &[Ed25519KeyPair],
        signer: &dyn Fn(u64) -> usize,
    ) -> Rotating {
        let first = keys[0].public_key().as_ref().to_vec();
        let mut lines = vec![serde_json::to_string(&ExportHeader {
            format: EXPORT_FORMAT.into(),
            public_key: hex::encode(&first),
            exported_at: Utc::now(),
        })
        .unwrap()];
        let (mut tree, mut prev, mut bodies, mut cps) = (MerkleTree::new(), ZERO_HASH, vec![], vec![]);
        let mut last: Option<u64> = None;
        for seq in 0..n {
            let text = match rotations.iter().find(|(a, _)| *a == seq) {
                Some((_, g)) => {
                    let pk = keys[g - 1].public_key().as_ref();
                    let b = EntryBody {
                        seq,
                        prev: hex::encode(prev),
                        time: Utc::now(),
                        actor: "pt_op".into(),
                        role: "operator".into(),
                        action: KEY_ROTATE.into(),
                        subject: "ledger".into(),
                        details: serde_json::json!({
                            "key": "ledger", "generation": g, "public_key": hex::encode(pk),
                            "note_key": VerifierKey::operator_of(&first, pk).unwrap().to_string(),
                            "reason": "scheduled"
                        }),
                    };
                    String::from_utf8(b.canonical()).unwrap()
                }
                None => body(seq, &prev, &format!("x{seq}")),
            };
            prev = leaf_hash(text.as_bytes());
            tree.push(prev);
            lines.push(
                serde_json::to_string(&ExportEntry {
                    hash: hex::encode(prev),
                    body: text.clone(),
                })
                .unwrap(),
            );
            bodies.push((seq, text));
            let size = seq + 1;
            if at.contains(&size) || size == n {
                let cp = sign_in(&first, &keys[signer(size) - 1], &tree, size);
                let consistency = last.map(|from| ConsistencyLink {
                    from,
                    proof: proof_hex(&tree.consistency_proof(from, size).unwrap()),
                });
                lines.push(
                    serde_json::to_string(&ExportCheckpoint {
                        checkpoint: cp.checkpoint.clone(),
                        signature: cp.signature.clone(),
                        note: cp.note.clone(),
                        consistency,
                    })
                    .unwrap(),
                );
                cps.push(cp);
                last = Some(size);
            }
        }
        (lines, tree, bodies, cps)
    }

    /// [`sign`] in the ledger whose origin comes from `first`.
    fn sign_in(first: &[u8], kp: &Ed25519KeyPair, tree: &MerkleTree, size: u64) -> SignedCheckpoint {
        let mut cp = sign(kp, tree, size);
        let body = cp.note_body(first).unwrap();
        let key = VerifierKey::operator_of(first, kp.public_key().as_ref()).unwrap();
        cp.note = Some(
            note::Note {
                signatures: vec![note::operator_signature(&key, kp.sign(body.as_bytes()).as_ref())],
                body,
            }
            .text(),
        );
        cp
    }

    /// The honest signer of a ledger rotated at entries 3 (to generation 2)
    /// and 7 (to generation 3).
    fn honest(size: u64) -> usize {
        match size {
            0..=4 => 1,
            5..=8 => 2,
            _ => 3,
        }
    }

    #[test]
    fn a_chain_of_two_rotations_verifies_from_the_first_key() {
        let keys = [keypair(), keypair(), keypair()];
        let first = keys[0].public_key().as_ref();
        let (lines, tree, bodies, cps) =
            export_rotating(10, &[(3, 2), (7, 3)], &[2, 4, 6, 8], &keys, &honest);
        let r = verify_export(&lines, Some(first), &cps).unwrap();
        assert_eq!((r.entries, r.checkpoints, r.key_generations), (10, 5, 3));
        // The later keys alone do not verify it: the origin and the first
        // checkpoints are the first key's.
        assert!(verify_export(&lines, Some(keys[2].public_key().as_ref()), &[]).is_err());

        // A receipt for entry 9 under the last checkpoint carries the chain.
        let link = |seq: u64| KeyLink {
            seq,
            entry: ExportEntry {
                hash: hex::encode(leaf_hash(bodies[seq as usize].1.as_bytes())),
                body: bodies[seq as usize].1.clone(),
            },
            inclusion: proof_hex(&tree.inclusion_proof(seq, seq + 1).unwrap()),
            checkpoint: cps.iter().find(|c| c.checkpoint.size == seq + 1).unwrap().clone(),
        };
        let mut r = Receipt {
            format: RECEIPT_FORMAT.into(),
            public_key: hex::encode(first),
            seq: 9,
            entry: ExportEntry {
                hash: hex::encode(leaf_hash(bodies[9].1.as_bytes())),
                body: bodies[9].1.clone(),
            },
            inclusion: proof_hex(&tree.inclusion_proof(9, 10).unwrap()),
            checkpoint: cps.last().unwrap().clone(),
            key_chain: vec![link(3), link(7)],
        };
        verify_receipt(&r, Some(first), None).unwrap();
        // Without the chain, or with a link missing or altered, it fails.
        let full = r.key_chain.clone();
        r.key_chain = vec![];
        assert!(verify_receipt(&r, Some(first), None).is_err());
        r.key_chain = vec![full[1].clone()];
        assert!(verify_receipt(&r, Some(first), None).is_err());
        r.key_chain = full.clone();
        r.key_chain[1].entry.body = r.key_chain[1].entry.body.replace("scheduled", "scheduleD");
        assert!(verify_receipt(&r, Some(first), None).is_err());
        // A link proven under a checkpoint the new key signed itself.
        r.key_chain = full;
        r.key_chain[1].checkpoint = sign_in(first, &keys[2], &tree, 8);
        assert!(verify_receipt(&r, Some(first), None).is_err());
    }

    #[test]
    fn a_checkpoint_signed_by_an_unannounced_key_is_refused() {
        let keys = [keypair(), keypair()];
        let (lines, ..) = export_rotating(6, &[], &[3], &keys, &|s| if s > 3 { 2 } else { 1 });
        let f = verify_export(&lines, Some(keys[0].public_key().as_ref()), &[]).unwrap_err();
        assert!(f.reason.contains("does not verify"), "{}", f.reason);
    }

    #[test]
    fn an_announcement_signed_only_by_the_new_key_is_refused() {
        let keys = [keypair(), keypair()];
        // The tree ending at the announcement (size 4) is signed by the new key.
        let (lines, ..) = export_rotating(6, &[(3, 2)], &[2, 4], &keys, &|s| if s >= 4 { 2 } else { 1 });
        let f = verify_export(&lines, Some(keys[0].public_key().as_ref()), &[]).unwrap_err();
        assert!(f.reason.contains("size 4 does not verify"), "{}", f.reason);
    }

    #[test]
    fn an_announcement_not_covered_by_an_old_key_checkpoint_is_refused() {
        let keys = [keypair(), keypair()];
        // No checkpoint ends at the announcement: the new key is never confirmed.
        let (lines, ..) = export_rotating(6, &[(3, 2)], &[2], &keys, &|s| if s > 4 { 2 } else { 1 });
        let f = verify_export(&lines, Some(keys[0].public_key().as_ref()), &[]).unwrap_err();
        assert!(
            f.reason.contains("not covered by a checkpoint of size 4"),
            "{}",
            f.reason
        );
        // Nor may the old key go on signing past its announcement.
        let (lines, ..) = export_rotating(6, &[(3, 2)], &[4], &keys, &|_| 1);
        let f = verify_export(&lines, Some(keys[0].public_key().as_ref()), &[]).unwrap_err();
        assert!(f.reason.contains("size 6 does not verify"), "{}", f.reason);
        // An announcement out of turn, or altered, is refused too.
        let (lines, ..) = export_rotating(6, &[(3, 3)], &[4], &[keypair(), keypair(), keypair()], &|_| 1);
        assert!(verify_export(&lines, None, &[])
            .unwrap_err()
            .reason
            .contains("comes next"));
        let (mut lines, ..) = export_rotating(
            10,
            &[(3, 2), (7, 3)],
            &[2, 4, 6, 8],
            &[keypair(), keypair(), keypair()],
            &honest,
        );
        lines[5] = lines[5].replace("scheduled", "Scheduled");
        assert_eq!(
            verify_export(&lines, None, &[]).unwrap_err().first_bad_entry,
            Some(3)
        );
    }

    /// Random, truncated and mutated notes, export lines and receipts are
    /// refused or accepted, never a panic; a mutated note never verifies.
    #[test]
    fn fuzzed_notes_exports_and_receipts_never_panic() {
        let kp = keypair();
        let pk = kp.public_key().as_ref().to_vec();
        let witness = keypair();
        let (mut lines, _, _) = export_with(10, &[4], &kp, None);
        let mut cp: ExportCheckpoint = serde_json::from_str(&lines[5]).unwrap();
        let mut signed = cp.signed();
        let wk = cosign(&mut signed, &witness, "regulator.witness");
        cp.note = signed.note.clone();
        lines[5] = serde_json::to_string(&cp).unwrap();
        verify_export_witnessed(&lines, Some(&pk), &[], std::slice::from_ref(&wk)).unwrap();
        let note_text = signed.note.clone().unwrap();
        let receipt = serde_json::to_string(&receipt(&kp, 4)).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mutate = |s: &str, r: u64| -> String {
            let mut b = s.as_bytes().to_vec();
            if b.is_empty() {
                return String::new();
            }
            let i = (r as usize) % b.len();
            match (r >> 32) % 4 {
                0 => b.truncate(i),
                1 => b[i] ^= 1 << ((r >> 40) % 8),
                2 => {
                    let c = b[i];
                    b.insert(i, c)
                }
                _ => {
                    b.remove(i);
                }
            }
            String::from_utf8_lossy(&b).into_owned()
        };
        for _ in 0..3000 {
            let r = next();
            let t = mutate(&note_text, r);
            if let Ok(n) = note::Note::parse(&t) {
                let _ = n.verify_cosignature(&wk);
                if t != note_text && n.body != signed.note_body(&pk).unwrap() {
                    assert!(
                        n.verify_signature(&VerifierKey::operator(&pk).unwrap()).is_err(),
                        "{t:?}"
                    );
                }
            }
            let _ = note::parse_checkpoint_body(&t);
            let _ = VerifierKey::parse(&mutate(&wk.to_string(), next()));
            let mut l = lines.clone();
            let k = (next() as usize) % l.len();
            l[k] = mutate(&l[k], next());
            let _ = verify_export_witnessed(&l, Some(&pk), &[], std::slice::from_ref(&wk));
            let _ = verify_export(&l, None, &[]);
            if let Ok(rc) = serde_json::from_str::<Receipt>(&mutate(&receipt, next())) {
                let _ = verify_receipt_witnessed(&rc, Some(&pk), None, std::slice::from_ref(&wk));
                let _ = verify_receipt(&rc, None, Some(b"x4"));
            }
        }
    }

    /// Announcements come in ledger order: a later generation announced at
    /// an earlier position (links spliced out of order, as a receipt could
    /// carry them) would be "signed" by the first key instead of the key it
    /// replaces, so it is refused.
    #[test]
    fn an_announcement_before_the_previous_one_is_refused() {
        let first = [1u8; 32];
        let ann = |seq: u64, generation: u64, key: u8| EntryBody {
            seq,
            prev: hex::encode(ZERO_HASH),
            time: Utc::now(),
            actor: "pt_op".into(),
            role: "operator".into(),
            action: KEY_ROTATE.into(),
            subject: "ledger".into(),
            details: serde_json::json!({
                "key": "ledger", "generation": generation, "public_key": hex::encode([key; 32]),
            }),
        };
        let mut chain = KeyChain::new(&first);
        chain.observe(&ann(10, 2, 2)).unwrap();
        let e = chain.observe(&ann(5, 3, 3)).unwrap_err();
        assert!(e.contains("after"), "{e}");
        assert!(chain.observe(&ann(10, 3, 3)).is_err(), "the same entry");
        chain.observe(&ann(11, 3, 3)).unwrap();
        assert_eq!(chain.generations(), 3);
    }
}
