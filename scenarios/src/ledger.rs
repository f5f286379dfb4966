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

/// A checkpoint line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Hex Ed25519 signature over [`Checkpoint::signing_message`].
    pub signature: String,
}

/// What a successful verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints whose signature and root were checked.
    pub checkpoints: u64,
    /// Hex Merkle root over all entries.
    pub root: String,
    /// True when the key came from `--public-key` rather than the export itself.
    pub key_pinned: bool,
}

/// Where and why verification failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyFailure {
    /// The first entry that is altered, missing or out of place, when the
    /// failure can be pinned to one.
    pub first_bad_entry: Option<u64>,
    /// 1-based line of the export where the problem was seen.
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

/// Verifies an export read as lines. `pinned_key` is the operator's public
/// key obtained out of band; without it the key in the header is used and
/// the report says so.
pub fn verify_export<I, S>(lines: I, pinned_key: Option<&[u8]>) -> Result<VerifyReport, VerifyFailure>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let fail = |first_bad_entry: Option<u64>, line: u64, reason: String| VerifyFailure {
        first_bad_entry,
        line,
        reason,
    };
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

    let mut leaves: Vec<Hash> = Vec::new();
    let mut checkpoints = 0u64;
    let mut last_checkpoint_size = 0u64;
    for (idx, line) in iter {
        let lineno = idx as u64 + 1;
        let value: serde_json::Value = serde_json::from_str(line.as_ref()).map_err(|e| {
            fail(
                Some(leaves.len() as u64),
                lineno,
                format!("line is not JSON: {e}"),
            )
        })?;
        if value.get("checkpoint").is_some() {
            let sc: SignedCheckpoint = serde_json::from_value(value)
                .map_err(|e| fail(None, lineno, format!("malformed checkpoint: {e}")))?;
            let sig =
                hex::decode(&sc.signature).map_err(|_| fail(None, lineno, "signature is not hex".into()))?;
            if !sc.checkpoint.verify(&key, &sig) {
                return Err(fail(
                    None,
                    lineno,
                    "checkpoint signature does not verify with the operator key".into(),
                ));
            }
            let size = sc.checkpoint.size;
            if size > leaves.len() as u64 {
                return Err(fail(
                    Some(leaves.len() as u64),
                    lineno,
                    format!(
                        "signed checkpoint covers {size} entries but only {} precede it: entries were removed",
                        leaves.len()
                    ),
                ));
            }
            if size < last_checkpoint_size {
                return Err(fail(None, lineno, "checkpoints go backwards".into()));
            }
            let root = merkle_root(leaves.get(..size as usize).unwrap_or(&leaves));
            if hex::encode(root) != sc.checkpoint.root {
                return Err(fail(
                    None,
                    lineno,
                    format!(
                        "the entries before this checkpoint do not hash to its signed root (size {size})"
                    ),
                ));
            }
            last_checkpoint_size = size;
            checkpoints += 1;
            continue;
        }
        let seq = leaves.len() as u64;
        let entry: ExportEntry = serde_json::from_value(value)
            .map_err(|e| fail(Some(seq), lineno, format!("malformed entry line: {e}")))?;
        let computed = leaf_hash(entry.body.as_bytes());
        if hex::encode(computed) != entry.hash {
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
        let expected_prev = leaves.last().copied().unwrap_or(ZERO_HASH);
        if body.prev != hex::encode(expected_prev) {
            let culprit = seq.saturating_sub(1);
            return Err(fail(
                Some(culprit),
                lineno,
                format!("chain broken between entries {culprit} and {seq}: entry {culprit} was altered or replaced"),
            ));
        }
        leaves.push(computed);
    }
    if checkpoints == 0 {
        return Err(fail(None, 0, "the export has no signed checkpoint".into()));
    }
    if last_checkpoint_size != leaves.len() as u64 {
        return Err(fail(
            Some(last_checkpoint_size),
            0,
            format!(
                "entries {last_checkpoint_size}..{} are not covered by any signed checkpoint",
                leaves.len()
            ),
        ));
    }
    Ok(VerifyReport {
        entries: leaves.len() as u64,
        checkpoints,
        root: hex::encode(merkle_root(&leaves)),
        key_pinned: pinned_key.is_some(),
    })
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

    fn export(n: u64, kp: &Ed25519KeyPair) -> Vec<String> {
        let mut lines = vec![serde_json::to_string(&ExportHeader {
            format: EXPORT_FORMAT.into(),
            public_key: hex::encode(kp.public_key().as_ref()),
            exported_at: Utc::now(),
        })
        .unwrap()];
        let mut prev = ZERO_HASH;
        let mut leaves = vec![];
        for seq in 0..n {
            let body = EntryBody {
                seq,
                prev: hex::encode(prev),
                time: Utc::now(),
                actor: "pt_a".into(),
                role: "operator".into(),
                action: "test.append".into(),
                subject: format!("x{seq}"),
                details: serde_json::json!({"n": seq}),
            };
            let text = String::from_utf8(body.canonical()).unwrap();
            prev = leaf_hash(text.as_bytes());
            leaves.push(prev);
            lines.push(
                serde_json::to_string(&ExportEntry {
                    hash: hex::encode(prev),
                    body: text,
                })
                .unwrap(),
            );
        }
        let cp = Checkpoint {
            size: n,
            root: hex::encode(merkle_root(&leaves)),
            time: Utc::now(),
        };
        let sig = kp.sign(&cp.signing_message());
        lines.push(
            serde_json::to_string(&SignedCheckpoint {
                checkpoint: cp,
                signature: hex::encode(sig.as_ref()),
            })
            .unwrap(),
        );
        lines
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
    fn clean_export_verifies() {
        let kp = keypair();
        let lines = export(10, &kp);
        let r = verify_export(&lines, Some(kp.public_key().as_ref())).unwrap();
        assert_eq!(r.entries, 10);
        assert!(r.key_pinned);
    }

    #[test]
    fn edited_entry_is_named() {
        let kp = keypair();
        let mut lines = export(10, &kp);
        lines[4] = lines[4].replace("x3", "x9");
        let f = verify_export(&lines, Some(kp.public_key().as_ref())).unwrap_err();
        assert_eq!(f.first_bad_entry, Some(3));
    }

    #[test]
    fn removed_reordered_and_truncated_are_caught() {
        let kp = keypair();
        let pk = kp.public_key().as_ref().to_vec();
        let lines = export(10, &kp);
        let mut removed = lines.clone();
        removed.remove(6);
        assert_eq!(
            verify_export(&removed, Some(&pk)).unwrap_err().first_bad_entry,
            Some(5)
        );
        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        assert_eq!(
            verify_export(&swapped, Some(&pk)).unwrap_err().first_bad_entry,
            Some(2)
        );
        let mut truncated = lines.clone();
        truncated.remove(10);
        assert!(verify_export(&truncated, Some(&pk)).is_err());
    }

    #[test]
    fn foreign_key_is_refused() {
        let kp = keypair();
        let lines = export(3, &kp);
        let other = keypair();
        let f = verify_export(&lines, Some(other.public_key().as_ref())).unwrap_err();
        assert!(f.reason.contains("signature"));
    }
}
