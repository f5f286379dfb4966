//! Secrets in the data directory: the operator's Ed25519 ledger signing key
//! and the master key from which each agreement's tokenization key is
//! derived. Created on first start with owner-only permissions.

use anyhow::{Context, Result};
use chrono::Utc;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::path::Path;

/// The platform's keys.
pub struct Keys {
    ledger: Ed25519KeyPair,
    tokenize_master: hmac::Key,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys(public={})", self.public_key_hex())
    }
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

impl Keys {
    /// Loads the keys from `dir/keys`, creating them on first use.
    pub fn load_or_create(dir: &Path) -> Result<Keys> {
        let kdir = dir.join("keys");
        std::fs::create_dir_all(&kdir)?;
        let rng = SystemRandom::new();
        let lpath = kdir.join("ledger.ed25519.pk8");
        if !lpath.exists() {
            let doc =
                Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("key generation failed"))?;
            write_private(&lpath, doc.as_ref())?;
        }
        let pk8 = std::fs::read(&lpath)?;
        let ledger = Ed25519KeyPair::from_pkcs8(&pk8)
            .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key", lpath.display()))?;
        let tpath = kdir.join("tokenize.key");
        if !tpath.exists() {
            let mut k = [0u8; 32];
            rng.fill(&mut k)
                .map_err(|_| anyhow::anyhow!("random generation failed"))?;
            write_private(&tpath, &k)?;
        }
        let t = std::fs::read(&tpath)?;
        anyhow::ensure!(t.len() == 32, "{} must hold 32 bytes", tpath.display());
        Ok(Keys {
            ledger,
            tokenize_master: hmac::Key::new(hmac::HMAC_SHA256, &t),
        })
    }

    /// Signs with the ledger key.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.ledger.sign(msg).as_ref().to_vec()
    }

    /// The operator's C2SP note verifier key: the ledger key named by the
    /// ledger's checkpoint origin (`docs/ledger.md`).
    pub fn note_key(&self) -> scenarios::ledger::VerifierKey {
        let public_key = self.public_key();
        // An Ed25519 public key is 32 bytes and the origin a valid key
        // name, so this always holds.
        let raw: [u8; 32] = public_key.as_slice().try_into().unwrap_or([0; 32]);
        scenarios::ledger::VerifierKey {
            name: scenarios::ledger::note::origin_for(&public_key),
            alg: scenarios::ledger::note::ALG_ED25519,
            public_key: raw,
        }
    }

    /// The ledger public key (raw 32 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.ledger.public_key().as_ref().to_vec()
    }

    /// The ledger public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    /// The tokenization key of one agreement: tokens of two agreements
    /// cannot be linked.
    pub fn token_key(&self, agreement_id: &str) -> [u8; 32] {
        let tag = hmac::sign(
            &self.tokenize_master,
            format!("invis tokenize v1 {agreement_id}").as_bytes(),
        );
        let mut k = [0u8; 32];
        k.copy_from_slice(tag.as_ref().get(..32).unwrap_or(&[0u8; 32]));
        k
    }
}

/// A fresh id with a type prefix, for example `job_019a4c3e5f21b7d09a6c4e12`:
/// the creation time in milliseconds (12 hex digits) and 48 random bits.
///
/// Ids made close in time sort next to each other (as UUIDv7 and ULIDs
/// do), so the ledger's index by subject, which every entry updates, takes
/// the entries of the jobs and records in flight at one end of the tree:
/// one or two index pages per commit instead of one page per entry, which
/// `invis bench-ledger` measures as a large share of an append's cost. The
/// creation time an id shows is shown by its record anyway.
pub fn new_id(prefix: &str) -> String {
    let millis = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0) & 0xffff_ffff_ffff;
    let mut b = [0u8; 6];
    // The system RNG does not fail on supported platforms; a repeated id
    // would be refused by the store's primary key.
    let _ = SystemRandom::new().fill(&mut b);
    format!("{prefix}_{millis:012x}{}", hex::encode(b))
}

/// A fresh API token (shown once) and the hash that is stored.
pub fn new_token() -> (String, String) {
    let mut b = [0u8; 24];
    let _ = SystemRandom::new().fill(&mut b);
    let token = format!("invis_{}", hex::encode(b));
    let hash = token_hash(&token);
    (token, hash)
}

/// SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}
