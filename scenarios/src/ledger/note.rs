//! Checkpoints as standard signed notes, and witness cosignatures.
//!
//! Formats (C2SP, <https://c2sp.org>):
//!
//! - `tlog-checkpoint`: the body is `<origin>\n<tree size>\n<base64 root>\n`;
//! - `signed-note`: the body, an empty line, then one line per signature,
//!   `— <key name> <base64(4-byte key hash || signature)>\n` (an em dash,
//!   U+2014, and a space). An Ed25519 note signature (algorithm byte
//!   `0x01`) signs the body; its key hash is the first 4 bytes of
//!   `SHA-256(name || 0x0A || 0x01 || public key)`, and its verifier key is
//!   written `<name>+<8 hex digits of key hash>+<base64(0x01 || key)>`;
//! - `tlog-cosignature`: a witness's `cosignature/v1` (algorithm byte
//!   `0x04`) signs `cosignature/v1\ntime <seconds>\n` followed by the body,
//!   and its signature line carries `key hash || time (8 bytes, big
//!   endian) || Ed25519 signature`.
//!
//! This module parses and verifies; it holds no keys and does no IO. The
//! signing sides are the gateway's operator key and `invis witness`.

use super::Hash;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::digest::{digest, SHA256};
use ring::signature::{UnparsedPublicKey, ED25519};
use std::fmt;

/// Algorithm byte of an Ed25519 note signature (the operator's).
pub const ALG_ED25519: u8 = 0x01;

/// Algorithm byte of a `cosignature/v1` witness cosignature.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// Signature lines start with this: an em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Most signature lines a note may carry (C2SP allows verifiers a limit;
/// the Go implementation uses 100).
const MAX_SIGNATURES: usize = 100;

/// Longest note accepted, in bytes.
const MAX_NOTE: usize = 64 << 10;

/// Why a note, key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteError(pub String);

impl fmt::Display for NoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoteError {}

fn err(m: impl Into<String>) -> NoteError {
    NoteError(m.into())
}

/// The checkpoint origin of the ledger signed by `public_key`: derived from
/// the key, so a verifier holding the key knows the origin to expect and
/// two operators' logs never share one. Schema-less, no spaces, no `+`.
pub fn origin_for(public_key: &[u8]) -> String {
    let d = digest(&SHA256, public_key);
    let id = d.as_ref().get(..8).map(hex::encode).unwrap_or_default();
    format!("invis.ledger/{id}")
}

/// The `tlog-checkpoint` body of the tree of `size` entries with `root`.
pub fn checkpoint_body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", B64.encode(root))
}

/// The fields of a checkpoint body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointBody {
    /// First line.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
}

/// Parses a `tlog-checkpoint` body (extension lines after the root are
/// allowed and ignored).
pub fn parse_checkpoint_body(body: &str) -> Result<CheckpointBody, NoteError> {
    let mut lines = body.split('\n');
    let origin = lines
        .next()
        .filter(|o| !o.is_empty())
        .ok_or_else(|| err("the checkpoint has no origin"))?;
    let size_text = lines
        .next()
        .ok_or_else(|| err("the checkpoint has no tree size"))?;
    if size_text.is_empty()
        || !size_text.bytes().all(|b| b.is_ascii_digit())
        || (size_text.len() > 1 && size_text.starts_with('0'))
    {
        return Err(err("the checkpoint's tree size is not a decimal number"));
    }
    let size = size_text
        .parse()
        .map_err(|_| err("the checkpoint's tree size is too large"))?;
    let root = lines
        .next()
        .and_then(|r| B64.decode(r).ok())
        .and_then(|r| Hash::try_from(r.as_slice()).ok())
        .ok_or_else(|| err("the checkpoint's root is not a base64 SHA-256 hash"))?;
    Ok(CheckpointBody {
        origin: origin.to_string(),
        size,
        root,
    })
}

/// First 4 bytes of `SHA-256(name || "\n" || algorithm || public key)`.
pub fn key_hash(name: &str, alg: u8, public_key: &[u8]) -> [u8; 4] {
    let mut m = Vec::with_capacity(name.len() + 2 + public_key.len());
    m.extend_from_slice(name.as_bytes());
    m.push(b'\n');
    m.push(alg);
    m.extend_from_slice(public_key);
    let d = digest(&SHA256, &m);
    let mut h = [0u8; 4];
    h.copy_from_slice(d.as_ref().get(..4).unwrap_or(&[0; 4]));
    h
}

/// A key name is non-empty and has no spaces, newlines or `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// A public key with its name and algorithm, as written in a verifier key
/// string `<name>+<hex key hash>+<base64(alg || key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    /// Key name.
    pub name: String,
    /// [`ALG_ED25519`] or [`ALG_COSIGNATURE_V1`].
    pub alg: u8,
    /// Raw Ed25519 public key.
    pub public_key: [u8; 32],
}

impl VerifierKey {
    /// A verifier key; `None` when the name is not a valid key name.
    pub fn new(name: &str, alg: u8, public_key: [u8; 32]) -> Option<VerifierKey> {
        valid_key_name(name).then(|| VerifierKey {
            name: name.to_string(),
            alg,
            public_key,
        })
    }

    /// The operator's verifier key: named by the ledger's origin.
    pub fn operator(public_key: &[u8]) -> Option<VerifierKey> {
        let key = <[u8; 32]>::try_from(public_key).ok()?;
        VerifierKey::new(&origin_for(public_key), ALG_ED25519, key)
    }

    /// The operator's verifier key for `public_key` in the ledger whose
    /// first key is `first_key`: named by the ledger's origin, which is
    /// derived from the first key and so survives key rotations.
    pub fn operator_of(first_key: &[u8], public_key: &[u8]) -> Option<VerifierKey> {
        let key = <[u8; 32]>::try_from(public_key).ok()?;
        VerifierKey::new(&origin_for(first_key), ALG_ED25519, key)
    }

    /// Parses `<name>+<hex key hash>+<base64(alg || key)>`, checking the
    /// key hash.
    pub fn parse(text: &str) -> Result<VerifierKey, NoteError> {
        let text = text.trim();
        // The base64 key may itself hold `+`: split at the first two only.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err("a verifier key is `<name>+<key hash>+<base64 key>`"));
        };
        if !valid_key_name(name) {
            return Err(err("the verifier key's name is empty or has spaces"));
        }
        let raw = B64
            .decode(key)
            .map_err(|_| err("the verifier key is not base64"))?;
        let (&alg, rest) = raw
            .split_first()
            .ok_or_else(|| err("the verifier key is empty"))?;
        if alg != ALG_ED25519 && alg != ALG_COSIGNATURE_V1 {
            return Err(err(format!("unsupported verifier key algorithm 0x{alg:02x}")));
        }
        let public_key =
            <[u8; 32]>::try_from(rest).map_err(|_| err("the verifier key is not an Ed25519 key"))?;
        let vk = VerifierKey {
            name: name.to_string(),
            alg,
            public_key,
        };
        if hash.len() != 8 || hex::decode(hash).ok().as_deref() != Some(&vk.key_hash()[..]) {
            return Err(err("the verifier key's hash does not match its name and key"));
        }
        Ok(vk)
    }

    /// The 4-byte key hash.
    pub fn key_hash(&self) -> [u8; 4] {
        key_hash(&self.name, self.alg, &self.public_key)
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = vec![self.alg];
        raw.extend_from_slice(&self.public_key);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_hash()),
            B64.encode(raw)
        )
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key hash.
    pub key_hash: [u8; 4],
    /// What follows the key hash.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The signature line, with its newline.
    pub fn line(&self) -> String {
        let mut raw = self.key_hash.to_vec();
        raw.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }

    /// Parses one line (with or without its newline).
    pub fn parse_line(line: &str) -> Result<NoteSignature, NoteError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| err("a signature line starts with an em dash and a space"))?;
        let (name, sig) = rest
            .split_once(' ')
            .ok_or_else(|| err("a signature line is `— <name> <base64>`"))?;
        if !valid_key_name(name) {
            return Err(err("a signature line's key name is empty or has spaces"));
        }
        let raw = B64
            .decode(sig)
            .map_err(|_| err("a signature line's signature is not base64"))?;
        let (hash, signature) = raw
            .split_first_chunk::<4>()
            .ok_or_else(|| err("a signature line is too short to hold a key hash"))?;
        Ok(NoteSignature {
            name: name.to_string(),
            key_hash: *hash,
            signature: signature.to_vec(),
        })
    }

    fn is_from(&self, key: &VerifierKey) -> bool {
        self.name == key.name && self.key_hash == key.key_hash()
    }
}

/// The message an operator signs: the note body itself.
pub fn operator_signature(key: &VerifierKey, signature: &[u8]) -> NoteSignature {
    NoteSignature {
        name: key.name.clone(),
        key_hash: key.key_hash(),
        signature: signature.to_vec(),
    }
}

/// The message a witness signs for `cosignature/v1` at `time` (seconds
/// since the Unix epoch).
pub fn cosignature_message(time: u64, body: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {time}\n{body}").into_bytes()
}

/// A witness's cosignature line from its Ed25519 signature over
/// [`cosignature_message`].
pub fn cosignature(key: &VerifierKey, time: u64, signature: &[u8]) -> NoteSignature {
    let mut sig = time.to_be_bytes().to_vec();
    sig.extend_from_slice(signature);
    NoteSignature {
        name: key.name.clone(),
        key_hash: key.key_hash(),
        signature: sig,
    }
}

/// A parsed signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The body, ending with a newline.
    pub body: String,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Parses a signed note: body, empty line, signature lines.
    pub fn parse(text: &str) -> Result<Note, NoteError> {
        if text.len() > MAX_NOTE {
            return Err(err("the note is too long"));
        }
        if !text.ends_with('\n') {
            return Err(err("a note ends with a newline"));
        }
        let split = text
            .rfind("\n\n")
            .ok_or_else(|| err("a note has a body, an empty line and signatures"))?;
        let (body, sigs) = (
            text.get(..=split).unwrap_or_default(),
            text.get(split + 2..).unwrap_or_default(),
        );
        let mut signatures = Vec::new();
        for line in sigs.split_terminator('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(err("the note has too many signatures"));
            }
            signatures.push(NoteSignature::parse_line(line)?);
        }
        if signatures.is_empty() {
            return Err(err("the note has no signature"));
        }
        Ok(Note {
            body: body.to_string(),
            signatures,
        })
    }

    /// The note's text.
    pub fn text(&self) -> String {
        let mut t = self.body.clone();
        t.push('\n');
        for s in &self.signatures {
            t.push_str(&s.line());
        }
        t
    }

    fn signatures_by<'a>(&'a self, key: &'a VerifierKey) -> impl Iterator<Item = &'a NoteSignature> + 'a {
        self.signatures.iter().filter(move |s| s.is_from(key))
    }

    /// Checks the operator's Ed25519 note signature under `key`: every
    /// line from `key` must verify (as Go's `note.Open` requires).
    pub fn verify_signature(&self, key: &VerifierKey) -> Result<(), NoteError> {
        let mut any = false;
        for s in self.signatures_by(key) {
            any = true;
            if key.alg != ALG_ED25519 || !key.verify(self.body.as_bytes(), &s.signature) {
                return Err(err(format!(
                    "the note signature of `{}` does not verify",
                    key.name
                )));
            }
        }
        if any {
            Ok(())
        } else {
            Err(err(format!("the note carries no signature of `{}`", key.name)))
        }
    }

    /// Checks a `cosignature/v1` from `key` (every line from it must
    /// verify); returns its time (seconds).
    pub fn verify_cosignature(&self, key: &VerifierKey) -> Result<u64, NoteError> {
        if key.alg != ALG_COSIGNATURE_V1 {
            return Err(err(format!("`{}` is not a cosignature/v1 witness key", key.name)));
        }
        let mut first = None;
        for s in self.signatures_by(key) {
            let verified = s.signature.split_first_chunk::<8>().and_then(|(time, sig)| {
                let time = u64::from_be_bytes(*time);
                key.verify(&cosignature_message(time, &self.body), sig)
                    .then_some(time)
            });
            let Some(time) = verified else {
                return Err(err(format!(
                    "the cosignature of witness `{}` does not verify over this checkpoint",
                    key.name
                )));
            };
            first.get_or_insert(time);
        }
        first.ok_or_else(|| {
            err(format!(
                "the checkpoint carries no cosignature of witness `{}`",
                key.name
            ))
        })
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

    fn vk(name: &str, alg: u8, kp: &Ed25519KeyPair) -> VerifierKey {
        VerifierKey::new(name, alg, kp.public_key().as_ref().try_into().unwrap()).unwrap()
    }

    /// The Go `sumdb/note` documentation's example verifier key parses
    /// and keeps its key hash (`PeterNeumann+c74f20a3+...`).
    #[test]
    fn the_go_documentation_verifier_key_parses() {
        let text = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let k = VerifierKey::parse(text).unwrap();
        assert_eq!((k.name.as_str(), k.alg), ("PeterNeumann", ALG_ED25519));
        assert_eq!(k.to_string(), text);
        let bad = text.replace("c74f20a3", "c74f20a4");
        assert!(VerifierKey::parse(&bad).is_err());
        // Keys whose base64 holds `+` round-trip.
        for b in 0..=255u8 {
            let k = VerifierKey::new("n", ALG_COSIGNATURE_V1, [b; 32]).unwrap();
            assert_eq!(VerifierKey::parse(&k.to_string()).unwrap(), k);
        }
    }

    #[test]
    fn signed_and_cosigned_notes_round_trip_and_verify() {
        let (op, wit) = (keypair(), keypair());
        let opk = VerifierKey::operator(op.public_key().as_ref()).unwrap();
        let wk = vk("witness.example", ALG_COSIGNATURE_V1, &wit);
        let body = checkpoint_body(&opk.name, 7, &[9u8; 32]);
        assert_eq!(
            parse_checkpoint_body(&body).unwrap(),
            CheckpointBody {
                origin: opk.name.clone(),
                size: 7,
                root: [9; 32]
            }
        );
        let sig = operator_signature(&opk, op.sign(body.as_bytes()).as_ref());
        let cos = cosignature(
            &wk,
            1_700_000_000,
            wit.sign(&cosignature_message(1_700_000_000, &body)).as_ref(),
        );
        let note = Note {
            body: body.clone(),
            signatures: vec![sig, cos.clone()],
        };
        let parsed = Note::parse(&note.text()).unwrap();
        assert_eq!(parsed, note);
        parsed.verify_signature(&opk).unwrap();
        assert_eq!(parsed.verify_cosignature(&wk).unwrap(), 1_700_000_000);
        // A wrong witness key, a witness key used as an operator key, and
        // a cosignature moved onto another checkpoint all fail.
        let other = vk("witness.example", ALG_COSIGNATURE_V1, &keypair());
        assert!(parsed.verify_cosignature(&other).is_err());
        assert!(parsed.verify_signature(&wk).is_err());
        let other_body = checkpoint_body(&opk.name, 8, &[9u8; 32]);
        let moved = Note {
            body: other_body.clone(),
            signatures: vec![
                operator_signature(&opk, op.sign(other_body.as_bytes()).as_ref()),
                cos,
            ],
        };
        moved.verify_signature(&opk).unwrap();
        let e = moved.verify_cosignature(&wk).unwrap_err();
        assert!(e.0.contains("does not verify"), "{e}");
        // A forged operator signature fails.
        let forged = Note {
            body: other_body,
            signatures: vec![operator_signature(&opk, keypair().sign(b"x").as_ref())],
        };
        assert!(forged.verify_signature(&opk).is_err());
    }

    #[test]
    fn malformed_notes_and_bodies_are_refused_without_panics() {
        for text in [
            "",
            "\n",
            "a\n1\nAAAA\n",
            "a\n1\nAAAA\n\n",
            "a\n1\nAAAA\n\n\u{2014} k\n",
            "a\n1\nAAAA\n\n\u{2014} k AAA\n",
            "a\n1\nAAAA\n\n- k AAAAAAAA\n",
            "a\n1\nAAAA\n\n\u{2014} k+x AAAAAAAA\n",
            "a\n1\nAAAA\n\n\u{2014} k AAAAAAAA",
        ] {
            assert!(Note::parse(text).is_err(), "{text:?}");
        }
        for body in [
            "",
            "o\n",
            "o\nx\n",
            "o\n01\nAAAA\n",
            "o\n1\nAAAA\n",
            "o\n99999999999999999999999\n",
        ] {
            assert!(parse_checkpoint_body(body).is_err(), "{body:?}");
        }
        for key in ["", "a+b", "a+00000000+", "a+00000000+AQ==", "a b+00000000+AQ=="] {
            assert!(VerifierKey::parse(key).is_err(), "{key:?}");
        }
    }

    /// As Go's `note.Open` does, a signature line from a known key that
    /// does not verify fails the note even when another line from that key
    /// verifies (docs/ledger.md: every line claiming to be the witness's
    /// must verify).
    #[test]
    fn a_bad_line_beside_a_good_one_from_the_same_key_fails() {
        let (op, wit) = (keypair(), keypair());
        let opk = VerifierKey::operator(op.public_key().as_ref()).unwrap();
        let wk = vk("witness.example", ALG_COSIGNATURE_V1, &wit);
        let body = checkpoint_body(&opk.name, 7, &[9u8; 32]);
        let sig = operator_signature(&opk, op.sign(body.as_bytes()).as_ref());
        let cos = cosignature(
            &wk,
            1_700_000_000,
            wit.sign(&cosignature_message(1_700_000_000, &body)).as_ref(),
        );
        let mut bad_cos = cos.clone();
        bad_cos.signature[8] ^= 1;
        let mut bad_sig = sig.clone();
        bad_sig.signature[0] ^= 1;
        let note = Note {
            body: body.clone(),
            signatures: vec![sig.clone(), cos.clone(), bad_cos],
        };
        note.verify_signature(&opk).unwrap();
        assert!(note.verify_cosignature(&wk).is_err());
        let note = Note {
            body,
            signatures: vec![bad_sig, sig, cos],
        };
        assert!(note.verify_signature(&opk).is_err());
        note.verify_cosignature(&wk).unwrap();
    }
}
