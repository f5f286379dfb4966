//! The regulator's witness (`invis witness`): a key of the regulator's own
//! and the last checkpoint it cosigned, kept in a directory on the
//! regulator's side. Each round it fetches the latest published checkpoint
//! and a consistency proof from the last one it cosigned, checks the
//! operator's signatures and that the new tree extends the old one, and
//! only then cosigns (C2SP `cosignature/v1`) and posts the cosignature
//! back, so receipts and exports carry it. A server restored from an old
//! backup and grown differently (a fork), or rolled back, is refused: no
//! cosignature is made and the round fails.
//!
//! The witness trusts nothing the server says about keys: the operator's
//! first public key is pinned when the witness is created. When the
//! operator rotates its ledger key, the witness follows the chain: it
//! accepts a later key only through its announcement (a `key.rotate`
//! entry) proven under the tree ending at it, signed by the key before,
//! and consistent with the checkpoint it is about to cosign, which extends
//! what it cosigned before. The links it followed are kept on disk.

use crate::client::Client;
use anyhow::{bail, Context, Result};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use scenarios::ledger::{
    follow_link, note, parse_proof, verify_consistency, KeyChain, KeyLink, SignedCheckpoint, VerifierKey,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const KEY_FILE: &str = "witness.ed25519.pk8";
const CONFIG_FILE: &str = "witness.json";
const LAST_FILE: &str = "last-cosigned.json";
const CHAIN_FILE: &str = "key-chain.json";

/// What a witness directory records besides its key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The witness's key name (in its verifier key and signature lines).
    name: String,
    /// The operator's Ed25519 public key, hex, pinned at creation.
    operator_key: String,
}

/// A witness and its state.
pub struct Witness {
    dir: PathBuf,
    key: Ed25519KeyPair,
    verifier: VerifierKey,
    operator: Vec<u8>,
    /// The ledger key announcements followed from the pinned key.
    links: Vec<KeyLink>,
    /// The last checkpoint this witness cosigned: every later one must
    /// extend it. Written to disk before the cosignature is sent, so a
    /// crash never lets the witness cosign a fork of something it signed.
    last: Option<SignedCheckpoint>,
}

/// Why a round did not cosign: the server's ledger does not extend what
/// the witness cosigned before, or its signatures do not verify.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// What a round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Cosigned the checkpoint of this size.
    Cosigned(u64),
    /// The published checkpoint is the one cosigned last; nothing to do.
    Unchanged(u64),
}

impl Witness {
    /// Creates a witness in `dir` (which must not hold one) named `name`,
    /// pinning the operator's public key (32 raw bytes).
    pub fn create(dir: &Path, name: &str, operator_key: &[u8]) -> Result<Witness> {
        if !note::valid_key_name(name) {
            bail!("the witness name must be non-empty, without spaces or `+`");
        }
        if operator_key.len() != 32 {
            bail!("the operator key must be a 32-byte Ed25519 public key");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if dir.join(KEY_FILE).exists() {
            bail!("{} already holds a witness", dir.display());
        }
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("key generation failed"))?;
        crate::keys::write_private(&dir.join(KEY_FILE), doc.as_ref())?;
        let config = Config {
            name: name.to_string(),
            operator_key: hex::encode(operator_key),
        };
        std::fs::write(dir.join(CONFIG_FILE), serde_json::to_vec_pretty(&config)?)?;
        Witness::open(dir)
    }

    /// Opens the witness in `dir`.
    pub fn open(dir: &Path) -> Result<Witness> {
        let config: Config = serde_json::from_slice(
            &std::fs::read(dir.join(CONFIG_FILE))
                .with_context(|| format!("{} holds no witness (run `invis witness init`)", dir.display()))?,
        )
        .with_context(|| format!("{} is malformed", dir.join(CONFIG_FILE).display()))?;
        let pk8 = std::fs::read(dir.join(KEY_FILE))?;
        let key = Ed25519KeyPair::from_pkcs8(&pk8)
            .map_err(|_| anyhow::anyhow!("the witness key is not Ed25519"))?;
        let raw: [u8; 32] = key
            .public_key()
            .as_ref()
            .try_into()
            .context("an Ed25519 public key has 32 bytes")?;
        let verifier = VerifierKey::new(&config.name, note::ALG_COSIGNATURE_V1, raw)
            .context("the witness name is not a valid key name")?;
        let operator = hex::decode(&config.operator_key).context("the pinned operator key is not hex")?;
        let last_path = dir.join(LAST_FILE);
        let last = if last_path.exists() {
            Some(
                serde_json::from_slice(&std::fs::read(&last_path)?)
                    .context("the last cosigned checkpoint is malformed")?,
            )
        } else {
            None
        };
        let chain_path = dir.join(CHAIN_FILE);
        let links: Vec<KeyLink> = if chain_path.exists() {
            serde_json::from_slice(&std::fs::read(&chain_path)?)
                .context("the followed key chain is malformed")?
        } else {
            Vec::new()
        };
        let w = Witness {
            dir: dir.to_path_buf(),
            key,
            verifier,
            operator,
            links,
            last,
        };
        // What is on disk is checked again, not trusted.
        let chain = w
            .chain()
            .map_err(|e| anyhow::anyhow!("the followed key chain does not verify: {e}"))?;
        if let Some(last) = &w.last {
            chain.verify(last).map_err(|e| {
                anyhow::anyhow!("the last cosigned checkpoint does not verify under the operator key: {e}")
            })?;
        }
        Ok(w)
    }

    /// The key chain followed so far.
    fn chain(&self) -> Result<KeyChain, String> {
        let mut chain = KeyChain::new(&self.operator);
        for l in &self.links {
            follow_link(&mut chain, l)?;
        }
        Ok(chain)
    }

    /// The ledger key generations followed (1 before any rotation).
    pub fn key_generations(&self) -> u64 {
        self.links.len() as u64 + 1
    }

    /// The witness's verifier key, for `--witness-key`.
    pub fn verifier_key(&self) -> &VerifierKey {
        &self.verifier
    }

    /// The last checkpoint this witness cosigned.
    pub fn last(&self) -> Option<&SignedCheckpoint> {
        self.last.as_ref()
    }

    /// Checks `cp` with the consistency `proof` from the last cosigned
    /// checkpoint: the operator's JSON signature and note signature verify
    /// under the pinned key, and the new tree extends the old one.
    pub fn check(&self, cp: &SignedCheckpoint, proof: &[String]) -> Result<(), Refusal> {
        self.check_chained(cp, proof, &[], &[]).map(|_| ())
    }

    /// [`Witness::check`] following the ledger key chain: `links` are the
    /// announcements before `cp` (those already followed are skipped) and
    /// `link_proofs` the consistency proof from each link's tree to `cp`.
    /// Returns the links newly followed.
    pub fn check_chained(
        &self,
        cp: &SignedCheckpoint,
        proof: &[String],
        links: &[KeyLink],
        link_proofs: &[Vec<String>],
    ) -> Result<Vec<KeyLink>, Refusal> {
        let size = cp.checkpoint.size;
        let mut chain = self.chain().map_err(Refusal)?;
        let known = self.links.len();
        if links.len() < known
            || links.iter().zip(&self.links).any(|(a, b)| {
                (a.seq, &a.entry, &a.checkpoint.checkpoint) != (b.seq, &b.entry, &b.checkpoint.checkpoint)
            })
        {
            return Err(Refusal(
                "the server's key chain does not start with the rotations this witness followed".into(),
            ));
        }
        let new_root = cp
            .root()
            .ok_or_else(|| Refusal("a checkpoint root is not a hash".into()))?;
        let mut followed = Vec::new();
        for (i, link) in links.iter().enumerate().skip(known) {
            let at = link.checkpoint.checkpoint.size;
            if self.last.as_ref().is_some_and(|l| l.checkpoint.size > at) {
                return Err(Refusal(format!(
                    "a ledger key announced in entry {} after the checkpoint this witness cosigned at size {}                      was signed by the key it replaces: the history was rewritten",
                    link.seq,
                    self.last.as_ref().map_or(0, |l| l.checkpoint.size)
                )));
            }
            follow_link(&mut chain, link).map_err(|e| Refusal(format!("key chain: {e}")))?;
            let link_root = link
                .checkpoint
                .root()
                .ok_or_else(|| Refusal("a checkpoint root is not a hash".into()))?;
            let p = link_proofs
                .get(i)
                .and_then(|p| parse_proof(p))
                .ok_or_else(|| Refusal("the key chain's consistency proof is missing or malformed".into()))?;
            if at >= size || !verify_consistency(at, size, &link_root, &new_root, &p) {
                return Err(Refusal(format!(
                    "forked history: the checkpoint at size {size} does not extend the tree of size {at}                      that announced ledger key generation {}",
                    chain.generations()
                )));
            }
            followed.push(link.clone());
        }
        if let Err(e) = chain.verify(cp) {
            return Err(Refusal(format!(
                "the checkpoint at size {size} is not signed by the operator key: {e}"
            )));
        }
        let key = chain.key_for(size).map_err(Refusal)?.0.to_vec();
        match cp.verify_note_under(&self.operator, &key) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(Refusal(format!(
                    "the checkpoint at size {size} has no signed note"
                )))
            }
            Err(e) => return Err(Refusal(e)),
        }
        let Some(last) = &self.last else {
            return Ok(followed);
        };
        let old = last.checkpoint.size;
        if size < old {
            return Err(Refusal(format!(
                "the ledger went back from {old} entries, cosigned before, to {size}: rolled back or forked"
            )));
        }
        let (Some(old_root), Some(new_root)) = (last.root(), cp.root()) else {
            return Err(Refusal("a checkpoint root is not a hash".into()));
        };
        let proof = parse_proof(proof)
            .ok_or_else(|| Refusal("the consistency proof is not a list of hashes".into()))?;
        if !verify_consistency(old, size, &old_root, &new_root, &proof) {
            return Err(Refusal(format!(
                "forked history: the checkpoint at size {size} does not extend the checkpoint at size {old} \
                 this witness cosigned"
            )));
        }
        Ok(followed)
    }

    /// The `cosignature/v1` line of `cp` at `time` (seconds since the
    /// Unix epoch). Call [`Witness::check`] first.
    pub fn cosign(&self, cp: &SignedCheckpoint, time: u64) -> Result<String> {
        let body = cp
            .note_body(&self.operator)
            .context("the checkpoint root is not a hash")?;
        let sig = self.key.sign(&note::cosignature_message(time, &body));
        Ok(note::cosignature(&self.verifier, time, sig.as_ref()).line())
    }

    /// Records the key chain followed (written and synced before anything
    /// signed by a new key is cosigned).
    fn remember_links(&mut self, links: Vec<KeyLink>) -> Result<()> {
        let tmp = self.dir.join(format!("{CHAIN_FILE}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&links)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(CHAIN_FILE))?;
        self.links = links;
        Ok(())
    }

    /// Records `cp` as the last cosigned checkpoint (written and synced
    /// before the cosignature leaves).
    fn remember(&mut self, cp: &SignedCheckpoint) -> Result<()> {
        let tmp = self.dir.join(format!("{LAST_FILE}.tmp"));
        let mut stored = cp.clone();
        stored.note = None;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&stored)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(LAST_FILE))?;
        self.last = Some(stored);
        Ok(())
    }

    /// One round against the server `client` talks to (with the
    /// regulator's token). A refusal is returned as an error that
    /// downcasts to [`Refusal`].
    pub fn run_once(&mut self, client: &Client) -> Result<Outcome> {
        let from = self.last.as_ref().map_or(0, |c| c.checkpoint.size);
        let reply = client.get(&format!("/v1/regulator/witness/checkpoint?from={from}"))?;
        if reply.status == 409 {
            return Err(Refusal(format!(
                "the server cannot extend the checkpoint this witness cosigned: {}",
                reply.error_message()
            ))
            .into());
        }
        if !(200..300).contains(&reply.status) {
            bail!(
                "HTTP {} fetching the checkpoint: {}",
                reply.status,
                reply.error_message()
            );
        }
        let body = reply.json();
        let cp: SignedCheckpoint = serde_json::from_value(body["checkpoint"].clone())
            .context("the server's checkpoint is malformed")?;
        let proof: Vec<String> = serde_json::from_value(body["consistency"]["proof"].clone())
            .context("the server's consistency proof is malformed")?;
        if body["consistency"]["from"].as_u64() != Some(from) {
            return Err(Refusal("the consistency proof starts from another size".into()).into());
        }
        let links: Vec<KeyLink> = match body.get("key_chain") {
            Some(v) if !v.is_null() => {
                serde_json::from_value(v.clone()).context("the server's key chain is malformed")?
            }
            _ => Vec::new(),
        };
        let link_proofs: Vec<Vec<String>> = match body.get("key_chain_consistency") {
            Some(v) if !v.is_null() => {
                serde_json::from_value(v.clone()).context("the server's key chain proofs are malformed")?
            }
            _ => Vec::new(),
        };
        let followed = self.check_chained(&cp, &proof, &links, &link_proofs)?;
        if !followed.is_empty() {
            let mut all = self.links.clone();
            all.extend(followed);
            self.remember_links(all)?;
        }
        let size = cp.checkpoint.size;
        if self.last.as_ref().is_some_and(|l| {
            l.checkpoint.size == size && cp.note.as_deref().is_some_and(|n| self.cosigned(n))
        }) {
            return Ok(Outcome::Unchanged(size));
        }
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let line = self.cosign(&cp, time)?;
        self.remember(&cp)?;
        let reply = client.post(
            "/v1/regulator/witness/cosignatures",
            &serde_json::json!({
                "size": size,
                "witness_key": self.verifier.to_string(),
                "cosignature": line,
            }),
        )?;
        if !(200..300).contains(&reply.status) {
            bail!(
                "HTTP {} posting the cosignature: {}",
                reply.status,
                reply.error_message()
            );
        }
        Ok(Outcome::Cosigned(size))
    }

    /// True when `note_text` already carries this witness's valid
    /// cosignature.
    fn cosigned(&self, note_text: &str) -> bool {
        note::Note::parse(note_text).is_ok_and(|n| n.verify_cosignature(&self.verifier).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use crate::ledger::Ledger;
    use crate::store::{append, NewEntry, Store};
    use chrono::Utc;

    fn add(store: &Store, n: usize) {
        store
            .tx(move |tx| {
                for i in 0..n {
                    append(
                        tx,
                        NewEntry::system("test.entry", &format!("x{i}"), serde_json::json!({})),
                        Utc::now(),
                    )?;
                }
                Ok(())
            })
            .unwrap();
    }

    /// The witness cosigns an extension, refuses a fork, a rollback, a
    /// forged operator signature and a checkpoint without a note; the
    /// server refuses a cosignature over another checkpoint or by a key
    /// that did not make it.
    #[test]
    fn cosigns_extensions_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = Keys::load_or_create(dir.path(), None).unwrap();
        let ledger = Ledger::new();
        let mut w = Witness::create(&dir.path().join("w"), "regulator.witness", &keys.public_key()).unwrap();
        add(&store, 3);
        let (cp, proof) = ledger.for_witness(&store, &keys, 0).unwrap();
        w.check(&cp, &proof).unwrap();
        let line = w.cosign(&cp, 1_800_000_000).unwrap();
        w.remember(&cp).unwrap();
        let reg = scenarios::party::Actor {
            id: "pt_reg".into(),
            role: scenarios::party::Role::Regulator,
            name: "Regulator".into(),
            org: "org_reg".into(),
            creators: vec![],
        };
        // The server refuses the line for another size, or under another key.
        assert!(ledger
            .cosign(&store, &keys, &reg, 99, w.verifier_key(), &line)
            .is_err());
        let other = VerifierKey::new("regulator.witness", note::ALG_COSIGNATURE_V1, [1; 32]).unwrap();
        assert!(ledger.cosign(&store, &keys, &reg, 3, &other, &line).is_err());
        assert!(ledger
            .cosign(&store, &keys, &reg, 3, w.verifier_key(), &line)
            .unwrap());
        let cp3 = ledger.with_note(&store, &keys, cp.clone()).unwrap();
        cp3.witnessed_by(&keys.public_key(), w.verifier_key()).unwrap();
        // An extension is cosigned.
        add(&store, 4);
        ledger.publish(&store, &keys).unwrap();
        let (cp8, proof) = ledger.for_witness(&store, &keys, 3).unwrap();
        assert_eq!(cp8.checkpoint.size, 8, "3 entries, the cosignature's, 4");
        w.check(&cp8, &proof).unwrap();
        // A fork: another store whose history differs, signed by the same key.
        let fork_dir = tempfile::tempdir().unwrap();
        let fork = Store::open(fork_dir.path()).unwrap();
        let fork_keys = {
            std::fs::create_dir_all(fork_dir.path().join("keys")).unwrap();
            for f in ["ledger.ed25519.pk8", "tokenize.key"] {
                std::fs::copy(
                    dir.path().join("keys").join(f),
                    fork_dir.path().join("keys").join(f),
                )
                .unwrap();
            }
            Keys::load_or_create(fork_dir.path(), None).unwrap()
        };
        fork.tx(|tx| {
            append(
                tx,
                NewEntry::system("test.entry", "y", serde_json::json!({})),
                Utc::now(),
            )?;
            Ok(())
        })
        .unwrap();
        add(&fork, 9);
        let fork_ledger = Ledger::new();
        let (fcp, fproof) = fork_ledger.for_witness(&fork, &fork_keys, 3).unwrap();
        let e = w.check(&fcp, &fproof).unwrap_err();
        assert!(e.0.contains("forked history"), "{e}");
        // A rollback, a forged signature and a note-less checkpoint.
        let mut small = cp.clone();
        small.checkpoint.size = 2;
        assert!(w.check(&small, &[]).is_err());
        let mut forged = cp8.clone();
        forged.signature = "00".repeat(64);
        assert!(w.check(&forged, &proof).is_err());
        let mut bare = cp8.clone();
        bare.note = None;
        assert!(w.check(&bare, &proof).unwrap_err().0.contains("no signed note"));
    }

    /// Appends a `key.rotate` announcing the next ledger key and puts it in
    /// force as the server does; returns the announcement's position.
    fn rotate(store: &Store, keys: &std::sync::Arc<Keys>) -> u64 {
        let (g, pk) = keys.prepare_ledger_rotation().unwrap();
        let k = keys.clone();
        let seq = store
            .tx(move |tx| {
                let seq = append(
                    tx,
                    NewEntry::system(
                        "key.rotate",
                        crate::ledger::LEDGER_KEY_SUBJECT,
                        serde_json::json!({"key": "ledger", "generation": g, "public_key": hex::encode(&pk)}),
                    ),
                    Utc::now(),
                )?;
                k.announce_ledger(g, seq).unwrap();
                Ok(seq)
            })
            .unwrap();
        Ledger::new().checkpoint_at(store, keys, seq + 1).unwrap();
        seq
    }

    /// Across a ledger key rotation the witness accepts the new key only
    /// through its announcement under the old key, consistent with the
    /// checkpoint it cosigns; it keeps the chain it followed.
    #[test]
    fn follows_a_rotated_key_only_through_its_announcement() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = std::sync::Arc::new(Keys::load_or_create(dir.path(), None).unwrap());
        let ledger = Ledger::new();
        let wdir = dir.path().join("w");
        let mut w = Witness::create(&wdir, "regulator.witness", &keys.first_public_key()).unwrap();
        add(&store, 3);
        let (cp, proof) = ledger.for_witness(&store, &keys, 0).unwrap();
        w.check(&cp, &proof).unwrap();
        w.remember(&cp).unwrap();
        let a = rotate(&store, &keys);
        assert_eq!(a, 3);
        add(&store, 2);
        ledger.publish(&store, &keys).unwrap();
        let (cp, proof) = ledger.for_witness(&store, &keys, 3).unwrap();
        assert_eq!(
            (cp.checkpoint.size, keys.generation_for(cp.checkpoint.size)),
            (6, 2)
        );
        let links = ledger.key_chain(&store, &keys, 6).unwrap();
        let proofs: Vec<Vec<String>> = links
            .iter()
            .map(|l| {
                ledger
                    .consistency_proof(&store, l.checkpoint.checkpoint.size, 6)
                    .unwrap()
            })
            .collect();
        // Without the chain, the new key is refused.
        assert!(w.check(&cp, &proof).unwrap_err().0.contains("not signed"));
        // Without the proof that the announcement's tree is a prefix, too.
        assert!(w.check_chained(&cp, &proof, &links, &[]).is_err());
        // An altered announcement, or one proven under another tree, too.
        let mut bad = links.clone();
        bad[0].entry.body = bad[0].entry.body.replace("ledger", "Ledger");
        assert!(w.check_chained(&cp, &proof, &bad, &proofs).is_err());
        let mut bad = links.clone();
        bad[0].checkpoint = ledger.checkpoint_at(&store, &keys, 3).unwrap();
        assert!(w.check_chained(&cp, &proof, &bad, &proofs).is_err());
        // With it, accepted.
        let followed = w.check_chained(&cp, &proof, &links, &proofs).unwrap();
        assert_eq!(followed.len(), 1);
        w.remember_links(followed).unwrap();
        w.remember(&cp).unwrap();
        // Kept on disk and checked again when opened.
        let again = Witness::open(&wdir).unwrap();
        assert_eq!(again.key_generations(), 2);
        // A server whose chain differs from the one followed is refused.
        let (cp2, proof2) = ledger.for_witness(&store, &keys, 6).unwrap();
        assert!(again.check_chained(&cp2, &proof2, &[], &[]).is_err());
        again.check_chained(&cp2, &proof2, &links, &proofs).unwrap();
        // A witness that cosigned beyond the announcement under the old
        // key refuses the announcement: that history was rewritten.
        let w2dir = dir.path().join("w2");
        let mut w2 = Witness::create(&w2dir, "other.witness", &keys.first_public_key()).unwrap();
        let mut late = ledger.checkpoint_at(&store, &keys, 5).unwrap();
        late.note = None;
        w2.last = Some(late);
        let e = w2.check_chained(&cp, &[], &links, &proofs).unwrap_err();
        assert!(e.0.contains("rewritten"), "{e}");
    }

    /// The last cosigned checkpoint on disk is checked again when the
    /// witness opens: one altered (another root or size) or not signed by
    /// the operator is refused, so a tampered state file cannot make the
    /// witness cosign a fork of what it cosigned.
    #[test]
    fn a_tampered_last_cosigned_checkpoint_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = Keys::load_or_create(dir.path(), None).unwrap();
        let ledger = Ledger::new();
        let wdir = dir.path().join("w");
        let mut w = Witness::create(&wdir, "regulator.witness", &keys.public_key()).unwrap();
        add(&store, 3);
        let (cp, proof) = ledger.for_witness(&store, &keys, 0).unwrap();
        w.check(&cp, &proof).unwrap();
        w.remember(&cp).unwrap();
        Witness::open(&wdir).unwrap();
        let good = std::fs::read(wdir.join(LAST_FILE)).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["checkpoint"]["root"] = hex::encode([7u8; 32]).into();
        std::fs::write(wdir.join(LAST_FILE), serde_json::to_vec(&v).unwrap()).unwrap();
        let e = Witness::open(&wdir).err().unwrap();
        assert!(format!("{e:#}").contains("last cosigned"), "{e:#}");
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["checkpoint"]["size"] = 2.into();
        std::fs::write(wdir.join(LAST_FILE), serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(Witness::open(&wdir).is_err());
        std::fs::write(wdir.join(LAST_FILE), &good).unwrap();
        Witness::open(&wdir).unwrap();
    }

    /// Two witnesses that chose the same name (another key): the first
    /// cosignature stored does not shut the other out, and each verifies
    /// under its own key.
    #[test]
    fn a_witness_name_taken_by_another_key_does_not_shut_it_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = Keys::load_or_create(dir.path(), None).unwrap();
        let ledger = Ledger::new();
        let reg = scenarios::party::Actor {
            id: "pt_reg".into(),
            role: scenarios::party::Role::Regulator,
            name: "Regulator".into(),
            org: "org_reg".into(),
            creators: vec![],
        };
        add(&store, 3);
        let (cp, _) = ledger.for_witness(&store, &keys, 0).unwrap();
        let squat = Witness::create(&dir.path().join("s"), "regulator.witness", &keys.public_key()).unwrap();
        let real = Witness::create(&dir.path().join("w"), "regulator.witness", &keys.public_key()).unwrap();
        for w in [&squat, &real] {
            let line = w.cosign(&cp, 1_800_000_000).unwrap();
            assert!(ledger
                .cosign(&store, &keys, &reg, 3, w.verifier_key(), &line)
                .unwrap());
        }
        let cp3 = ledger.with_note(&store, &keys, cp).unwrap();
        cp3.witnessed_by(&keys.public_key(), real.verifier_key()).unwrap();
        cp3.witnessed_by(&keys.public_key(), squat.verifier_key())
            .unwrap();
    }
}
