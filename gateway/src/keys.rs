//! Secrets in the data directory: the operator's Ed25519 ledger signing key
//! and the master key from which each agreement's tokenization key is
//! derived. Created on first start with owner-only permissions.
//!
//! At rest they are sealed under a key-encryption key ([`Kek`]) when one is
//! given (`invis serve --kek-file`, or `INVIS_KEK`): AES-256-GCM with a
//! fresh nonce per write and the key's file name as associated data, so a
//! copy of the data directory (or a backup) alone yields neither key, and
//! one sealed file cannot stand in for the other. With a key-encryption
//! key given, a key file that is not sealed is refused (it was put there
//! by hand): a data directory that ran without one is sealed by `invis
//! admin rekey` ([`rekey`]), with the server stopped.

use anyhow::{bail, ensure, Context, Result};
use chrono::Utc;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The platform's keys.
pub struct Keys {
    /// The ledger signing keys by generation and where each took over.
    ledger: RwLock<LedgerKeys>,
    /// Generation 1, also `ledger.pairs[0]`.
    first: Arc<Ed25519KeyPair>,
    /// Tokenization master keys by generation.
    tokenize: RwLock<TokenKeys>,
    sealed: bool,
    /// Where new key generations are written, and under what.
    kdir: PathBuf,
    kek: Option<Kek>,
}

/// The ledger signing key generations: generation 1 is
/// `keys/ledger.ed25519.pk8`, generation n > 1 `keys/ledger.<n>.ed25519.pk8`.
struct LedgerKeys {
    /// Every key file found or made, in generation order (index 0 is
    /// generation 1). A key beyond the announced ones was made by a
    /// rotation that did not complete; it signs nothing until announced.
    pairs: Vec<Arc<Ed25519KeyPair>>,
    /// The ledger position of the announcement of generations 2, 3, ...
    announced: Vec<u64>,
}

impl LedgerKeys {
    /// The generation that signs the checkpoint of `size` entries:
    /// generation g + 1, announced in entry a, signs the sizes above a + 1
    /// (`scenarios::ledger::KeyChain`).
    fn generation_for(&self, size: u64) -> usize {
        1 + self
            .announced
            .iter()
            .take_while(|a| size > a.saturating_add(1))
            .count()
    }

    fn pair(&self, generation: usize) -> Option<&Arc<Ed25519KeyPair>> {
        generation.checked_sub(1).and_then(|i| self.pairs.get(i))
    }
}

/// The tokenization master key generations: generation 1 is
/// `keys/tokenize.key`, generation n > 1 `keys/tokenize.<n>.key`.
struct TokenKeys {
    /// Every key file found or made, in generation order (index 0 is
    /// generation 1), with its fingerprint.
    found: Vec<(hmac::Key, String)>,
    /// How many are in force: generation 1, and each generation whose
    /// `key.rotate` entry is in the ledger. A file beyond them was left by
    /// a rotation that did not complete, or put there by someone else; it
    /// tokenizes nothing.
    in_force: usize,
}

/// The fingerprint of a tokenization master key as the ledger records it:
/// an HMAC under the key of a fixed label, so it names the key without
/// yielding it.
fn token_fingerprint(key: &hmac::Key) -> String {
    hex::encode(hmac::sign(key, b"invis key fingerprint v1").as_ref())
}

/// What a key entry's endorsement signs: the key, its generation and its
/// public key (ledger) or fingerprint (tokenization).
pub fn key_record_message(key: &str, generation: u64, id: &str) -> Vec<u8> {
    format!("invis key record v1\n{key}\n{generation}\n{id}\n").into_bytes()
}

/// One ledger signing key generation, as `GET /v1/ledger/public-key` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LedgerKeyInfo {
    /// 1 for the first key.
    pub generation: u64,
    /// Hex raw Ed25519 public key.
    pub public_key: String,
    /// The C2SP note verifier key (the ledger's origin, this key).
    pub note_key: String,
    /// The `key.rotate` entry that announced it (none for the first).
    pub announced_in: Option<u64>,
    /// The first checkpoint size it signs (sizes above the announcement's
    /// tree; 0 for the first).
    pub signs_from_size: u64,
}

/// The file of ledger signing key generation `g`.
fn ledger_file(g: usize) -> String {
    if g <= 1 {
        "ledger.ed25519.pk8".to_string()
    } else {
        format!("ledger.{g}.ed25519.pk8")
    }
}

/// The file of tokenization master key generation `g`.
fn tokenize_file(g: usize) -> String {
    if g <= 1 {
        "tokenize.key".to_string()
    } else {
        format!("tokenize.{g}.key")
    }
}

/// The key files of a `keys` directory, in generation order: every ledger
/// key generation, then every tokenization master key generation.
pub fn key_files(kdir: &Path) -> Vec<String> {
    let mut files = vec![ledger_file(1)];
    let mut g = 2;
    while kdir.join(ledger_file(g)).exists() {
        files.push(ledger_file(g));
        g += 1;
    }
    let mut g = 1;
    while kdir.join(tokenize_file(g)).exists() {
        files.push(tokenize_file(g));
        g += 1;
    }
    files
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keys(public={}, sealed={})",
            self.public_key_hex(),
            self.sealed
        )
    }
}

/// The first bytes of a sealed key file.
const SEALED: &[u8] = b"invis-sealed-v1\n";

/// The key-encryption key: 32 bytes held outside the data directory (a
/// file given at `invis serve --kek-file`, or 64 hex digits in `INVIS_KEK`).
#[derive(Clone)]
pub struct Kek([u8; 32]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Parses 64 hex digits (surrounding whitespace ignored) or 32 raw
    /// bytes. The error never shows the input.
    pub fn parse(bytes: &[u8]) -> Result<Kek> {
        let hexed = std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
            .filter(|k| k.len() == 32);
        let raw = hexed.unwrap_or_else(|| bytes.to_vec());
        let k: [u8; 32] = raw
            .try_into()
            .map_err(|_| anyhow::anyhow!("a key-encryption key is 32 bytes, or 64 hex digits"))?;
        Ok(Kek(k))
    }

    /// The key from `file`, else from the `INVIS_KEK` environment variable,
    /// else none.
    pub fn load(file: Option<&Path>) -> Result<Option<Kek>> {
        if let Some(f) = file {
            let bytes = std::fs::read(f)
                .with_context(|| format!("reading the key-encryption key {}", f.display()))?;
            return Kek::parse(&bytes)
                .with_context(|| format!("{} holds no key-encryption key", f.display()))
                .map(Some);
        }
        match std::env::var("INVIS_KEK") {
            Ok(v) if !v.trim().is_empty() => Kek::parse(v.as_bytes()).context("INVIS_KEK").map(Some),
            _ => Ok(None),
        }
    }

    /// A fresh key as 64 hex digits.
    pub fn generate() -> Result<String> {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| anyhow::anyhow!("random generation failed"))?;
        Ok(hex::encode(k))
    }

    /// Writes a fresh key to the new file `path` (owner-only, never
    /// overwriting).
    pub fn create_file(path: &Path) -> Result<()> {
        write_private(path, format!("{}\n", Kek::generate()?).as_bytes())
    }

    fn aead(&self) -> Result<LessSafeKey> {
        let key = UnboundKey::new(&AES_256_GCM, &self.0).map_err(|_| anyhow::anyhow!("AES-256-GCM key"))?;
        Ok(LessSafeKey::new(key))
    }

    /// `SEALED || nonce || ciphertext and tag`, bound to `name`.
    fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("random generation failed"))?;
        let mut data = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| anyhow::anyhow!("sealing {name} failed"))?;
        let mut out = SEALED.to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let wrong = || {
            anyhow::anyhow!(
                "the key-encryption key does not open keys/{name} (a different key, or the file was altered or swapped)"
            )
        };
        let body = sealed.strip_prefix(SEALED).ok_or_else(wrong)?;
        let (nonce, data) = body.split_at_checked(NONCE_LEN).ok_or_else(wrong)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut data = data.to_vec();
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut data)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

fn random_key(rng: &SystemRandom) -> Result<Vec<u8>> {
    let mut k = [0u8; 32];
    rng.fill(&mut k)
        .map_err(|_| anyhow::anyhow!("random generation failed"))?;
    Ok(k.to_vec())
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

/// Replaces `path` by a file holding `bytes`, atomically.
fn replace_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("sealing");
    if tmp.exists() {
        std::fs::remove_file(&tmp)?;
    }
    write_private(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The key in `dir/name`: created by `make` when absent, opened with `kek`
/// when sealed. With `kek` given, a key file that is not sealed is refused.
fn key_file(
    dir: &Path,
    name: &str,
    kek: Option<&Kek>,
    make: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let path = dir.join(name);
    if !path.exists() {
        let plain = make()?;
        match kek {
            Some(k) => write_private(&path, &k.seal(name, &plain)?)?,
            None => write_private(&path, &plain)?,
        }
        return Ok(plain);
    }
    let stored = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    match (stored.starts_with(SEALED), kek) {
        (true, Some(k)) => k.open(name, &stored),
        (true, None) => bail!(
            "the keys in {} are sealed: give their key-encryption key with --kek-file or INVIS_KEK",
            dir.display()
        ),
        (false, Some(_)) => bail!(
            "keys/{name} is not sealed, but a key-encryption key was given: a key file put there by hand is never \
             used. To seal the keys of a data directory that ran without a key-encryption key, stop the server and \
             run `invis admin rekey --new-kek-file FILE` (docs/keys.md)"
        ),
        (false, None) => Ok(stored),
    }
}

/// Whether the key file at `path` is sealed under a key-encryption key.
pub fn is_sealed_file(path: &Path) -> Result<bool> {
    let stored = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(stored.starts_with(SEALED))
}

/// Where `invis admin rekey` stages the keys sealed under the new
/// key-encryption key, and where it moves the old ones aside.
const REKEY_STAGING: &str = "keys.rekey";
const REKEY_ASIDE: &str = "keys.old";
/// Written last into the staging directory: every key is in it.
const REKEY_COMPLETE: &str = "COMPLETE";

/// Re-seals every key file in `dir/keys` under `new` (rotation of the
/// key-encryption key; the server must be stopped). The keys themselves do
/// not change, so nothing in the ledger does. `old` opens them (none when
/// they are stored unsealed). Each key is opened, sealed under `new` and
/// checked to open again into a staging directory, which then replaces
/// `keys` by two renames; a run interrupted at any point leaves either the
/// old directory in place or a complete staging directory, and running
/// the command again finishes it. Returns the number of key files.
pub fn rekey(dir: &Path, old: Option<&Kek>, new: &Kek) -> Result<usize> {
    let kdir = dir.join("keys");
    let staging = dir.join(REKEY_STAGING);
    let aside = dir.join(REKEY_ASIDE);
    if !kdir.exists() {
        // Interrupted between the two renames: finish.
        ensure!(
            staging.join(REKEY_COMPLETE).exists(),
            "there are no keys in {}",
            dir.display()
        );
        // The staged keys were sealed by the interrupted run: finish only
        // if that run was towards this key, so that success means the keys
        // open with the key-encryption key named.
        for name in key_files(&staging) {
            let stored = std::fs::read(staging.join(&name))
                .with_context(|| format!("reading {REKEY_STAGING}/{name}"))?;
            ensure!(
                stored.starts_with(SEALED) && new.open(&name, &stored).is_ok(),
                "the interrupted rotation of the key-encryption key in {} sealed the keys under another new key: \
                 run `invis admin rekey` again with the --new-kek-file it was started with",
                dir.display()
            );
        }
        return finish_rekey(dir);
    }
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    if aside.exists() {
        std::fs::remove_dir_all(&aside)?;
    }
    std::fs::create_dir(&staging)?;
    let files = key_files(&kdir);
    for name in &files {
        let stored = std::fs::read(kdir.join(name)).with_context(|| format!("reading keys/{name}"))?;
        let plain = match (stored.starts_with(SEALED), old) {
            (true, Some(k)) => k.open(name, &stored)?,
            (true, None) => bail!(
                "the keys are sealed: give their current key-encryption key with --kek-file or INVIS_KEK"
            ),
            // Keys sealed under a key-encryption key are all sealed by the
            // platform; an unsealed one among them was put there from
            // outside, and sealing it would make it pass for the platform's.
            (false, Some(_)) => bail!(
                "keys/{name} is not sealed although a current key-encryption key was given: it was not written \
                 by the platform under that key; restore the platform's own file (from a backup) before rekeying \
                 (docs/keys.md)"
            ),
            (false, None) => stored,
        };
        let sealed = new.seal(name, &plain)?;
        ensure!(
            new.open(name, &sealed)? == plain,
            "sealing keys/{name} under the new key-encryption key did not round-trip"
        );
        write_private(&staging.join(name), &sealed)?;
    }
    write_private(&staging.join(REKEY_COMPLETE), b"")?;
    std::fs::File::open(&staging)?.sync_all()?;
    std::fs::rename(&kdir, &aside)?;
    std::fs::File::open(dir)?.sync_all()?;
    finish_rekey(dir)?;
    Ok(files.len())
}

/// Moves a complete staging directory into place and drops the old keys.
fn finish_rekey(dir: &Path) -> Result<usize> {
    let staging = dir.join(REKEY_STAGING);
    std::fs::rename(&staging, dir.join("keys"))?;
    std::fs::remove_file(dir.join("keys").join(REKEY_COMPLETE))?;
    std::fs::File::open(dir)?.sync_all()?;
    let aside = dir.join(REKEY_ASIDE);
    if aside.exists() {
        std::fs::remove_dir_all(&aside)?;
    }
    Ok(key_files(&dir.join("keys")).len())
}

impl Keys {
    /// Loads the keys from `dir/keys`, creating them on first use, sealed
    /// under `kek` when one is given (see the module documentation).
    pub fn load_or_create(dir: &Path, kek: Option<&Kek>) -> Result<Keys> {
        let kdir = dir.join("keys");
        if !kdir.exists() && (dir.join(REKEY_STAGING).exists() || dir.join(REKEY_ASIDE).exists()) {
            bail!(
                "a rotation of the key-encryption key in {} was interrupted: run `invis admin rekey` again to finish it",
                dir.display()
            );
        }
        std::fs::create_dir_all(&kdir)?;
        let rng = SystemRandom::new();
        let pk8 = key_file(&kdir, "ledger.ed25519.pk8", kek, || {
            Ed25519KeyPair::generate_pkcs8(&rng)
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| anyhow::anyhow!("key generation failed"))
        })?;
        let first = Arc::new(
            Ed25519KeyPair::from_pkcs8(&pk8)
                .map_err(|_| anyhow::anyhow!("keys/ledger.ed25519.pk8 is not an Ed25519 PKCS#8 key"))?,
        );
        let mut pairs = vec![first.clone()];
        let mut g = 2;
        while kdir.join(ledger_file(g)).exists() {
            let name = ledger_file(g);
            let pk8 = key_file(&kdir, &name, kek, || bail!("keys/{name} vanished"))?;
            pairs.push(Arc::new(Ed25519KeyPair::from_pkcs8(&pk8).map_err(|_| {
                anyhow::anyhow!("keys/{name} is not an Ed25519 PKCS#8 key")
            })?));
            g += 1;
        }
        let mut found = Vec::new();
        let mut g = 1;
        loop {
            let name = tokenize_file(g);
            if g > 1 && !kdir.join(&name).exists() {
                break;
            }
            let t = key_file(&kdir, &name, kek, || random_key(&rng))?;
            anyhow::ensure!(t.len() == 32, "keys/{name} must hold 32 bytes");
            let key = hmac::Key::new(hmac::HMAC_SHA256, &t);
            let fingerprint = token_fingerprint(&key);
            found.push((key, fingerprint));
            g += 1;
        }
        if kek.is_none() {
            tracing::warn!(
                "the platform's keys are stored unsealed in {}: give a key-encryption key (--kek-file or INVIS_KEK) \
                 so that a copy of the data directory alone does not yield them",
                kdir.display()
            );
        }
        Ok(Keys {
            ledger: RwLock::new(LedgerKeys {
                pairs,
                announced: Vec::new(),
            }),
            first,
            tokenize: RwLock::new(TokenKeys { found, in_force: 1 }),
            sealed: kek.is_some(),
            kdir,
            kek: kek.cloned(),
        })
    }

    fn token_keys(&self) -> std::sync::RwLockReadGuard<'_, TokenKeys> {
        self.tokenize.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current tokenization master key generation: agreements issued
    /// now are pinned to it.
    pub fn token_generation(&self) -> u32 {
        u32::try_from(self.token_keys().in_force).unwrap_or(u32::MAX)
    }

    /// The fingerprint of tokenization master key `generation`, if its file
    /// was found or made (in force or not).
    pub fn token_fingerprint(&self, generation: u64) -> Option<String> {
        let t = self.token_keys();
        let i = usize::try_from(generation).ok()?.checked_sub(1)?;
        t.found.get(i).map(|(_, f)| f.clone())
    }

    /// The next tokenization master key generation, made and written
    /// (sealed when the keys are) before it is announced, and its
    /// fingerprint. It tokenizes nothing until [`Keys::announce_token`]. A
    /// file left where it goes (by a rotation that did not complete, or by
    /// anyone else) is replaced, never adopted.
    pub fn prepare_token_rotation(&self) -> Result<(u64, String)> {
        let mut t = self
            .tokenize
            .write()
            .map_err(|_| anyhow::anyhow!("the tokenization keys are unavailable"))?;
        let g = t.in_force + 1;
        let name = tokenize_file(g);
        let k = random_key(&SystemRandom::new())?;
        let bytes = match &self.kek {
            Some(kek) => kek.seal(&name, &k)?,
            None => k.clone(),
        };
        let path = self.kdir.join(&name);
        if path.exists() {
            replace_private(&path, &bytes)?;
        } else {
            write_private(&path, &bytes)?;
            std::fs::File::open(&self.kdir)?.sync_all()?;
        }
        let in_force = t.in_force;
        t.found.truncate(in_force);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &k);
        let fingerprint = token_fingerprint(&key);
        t.found.push((key, fingerprint.clone()));
        Ok((g as u64, fingerprint))
    }

    /// Puts tokenization master key `generation` in force (its `key.rotate`
    /// entry is in the ledger): agreements issued from now on use it.
    pub fn announce_token(&self, generation: u64) -> Result<()> {
        let mut t = self
            .tokenize
            .write()
            .map_err(|_| anyhow::anyhow!("the tokenization keys are unavailable"))?;
        ensure!(
            generation == t.in_force as u64 + 1,
            "tokenization key generation {generation} announced out of turn"
        );
        ensure!(
            t.found.len() as u64 >= generation,
            "tokenization key generation {generation} is announced in the ledger but keys/{} is missing",
            tokenize_file(generation as usize)
        );
        t.in_force += 1;
        Ok(())
    }

    /// Withdraws tokenization master key `generation` (its entry did not
    /// commit).
    pub fn withdraw_token(&self, generation: u64) {
        if let Ok(mut t) = self.tokenize.write() {
            if t.in_force as u64 == generation && generation > 1 {
                t.in_force -= 1;
            }
        }
    }

    /// The endorsement of a key entry recording `generation` of `key`
    /// (`ledger` or `tokenization`) as `id` (its public key or
    /// fingerprint): the signature (hex) of its [`key_record_message`] by
    /// the ledger key in force for the next entry. The caller holds the
    /// rotation lock, so no announcement moves the key in between.
    pub fn endorse(&self, key: &str, generation: u64, id: &str) -> String {
        let g = self.current_generation() as usize;
        let msg = key_record_message(key, generation, id);
        hex::encode(self.ledger_pair(g).sign(&msg).as_ref())
    }

    /// Whether `signature` (hex) endorses the record of `generation` of
    /// `key` as `id` ([`Keys::endorse`]) under the ledger key in force at
    /// entry `seq`.
    pub fn endorsed_at(&self, seq: u64, key: &str, generation: u64, id: &str, signature: &str) -> bool {
        let g = self.ledger_keys().generation_for(seq.saturating_add(1));
        let public = self.ledger_pair(g).public_key().as_ref().to_vec();
        let msg = key_record_message(key, generation, id);
        hex::decode(signature).is_ok_and(|sig| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
                .verify(&msg, &sig)
                .is_ok()
        })
    }

    /// Drops the key files found beyond the generations the ledger records
    /// (called once `crate::ledger::follow_key_chain` has put those in
    /// force): a ledger or tokenization key file nobody announced (a
    /// rotation that did not commit, or a file put there by someone else)
    /// is never used, sealed in place or adopted by the next rotation,
    /// which writes a fresh key over it.
    pub fn forget_unrecorded(&self) {
        if let Ok(mut l) = self.ledger.write() {
            let n = l.announced.len() + 1;
            l.pairs.truncate(n);
        }
        if let Ok(mut t) = self.tokenize.write() {
            let n = t.in_force;
            t.found.truncate(n);
        }
    }

    /// Whether the keys are sealed at rest.
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    fn ledger_keys(&self) -> std::sync::RwLockReadGuard<'_, LedgerKeys> {
        // Nothing panics while holding the lock; a poisoned one still holds
        // consistent keys.
        self.ledger.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The ledger key pair of `generation`, or the first.
    fn ledger_pair(&self, generation: usize) -> Arc<Ed25519KeyPair> {
        self.ledger_keys()
            .pair(generation)
            .cloned()
            .unwrap_or_else(|| self.first.clone())
    }

    /// The generation that signs the checkpoint of `size` entries.
    pub fn generation_for(&self, size: u64) -> u64 {
        self.ledger_keys().generation_for(size) as u64
    }

    /// Signs `msg` for the checkpoint of `size` entries, with the ledger
    /// key generation in force at that size.
    pub fn sign_at(&self, size: u64, msg: &[u8]) -> Vec<u8> {
        let g = self.ledger_keys().generation_for(size);
        self.ledger_pair(g).sign(msg).as_ref().to_vec()
    }

    /// The operator's C2SP note verifier key for the checkpoint of `size`
    /// entries: the key in force at that size, named by the ledger's
    /// origin (derived from the first key, so it survives rotations;
    /// `docs/ledger.md`).
    pub fn note_key_at(&self, size: u64) -> scenarios::ledger::VerifierKey {
        let g = self.ledger_keys().generation_for(size);
        self.note_key_of(g)
    }

    fn note_key_of(&self, generation: usize) -> scenarios::ledger::VerifierKey {
        let public_key = self.ledger_pair(generation).public_key().as_ref().to_vec();
        // An Ed25519 public key is 32 bytes and the origin a valid key
        // name, so this always holds.
        let raw: [u8; 32] = public_key.as_slice().try_into().unwrap_or([0; 32]);
        scenarios::ledger::VerifierKey {
            name: scenarios::ledger::note::origin_for(&self.first_public_key()),
            alg: scenarios::ledger::note::ALG_ED25519,
            public_key: raw,
        }
    }

    /// The current note verifier key.
    pub fn note_key(&self) -> scenarios::ledger::VerifierKey {
        self.note_key_of(self.current_generation() as usize)
    }

    /// The first ledger public key (raw 32 bytes): the one verifiers pin,
    /// and the one the checkpoint origin is derived from.
    pub fn first_public_key(&self) -> Vec<u8> {
        self.ledger_pair(1).public_key().as_ref().to_vec()
    }

    /// The first ledger public key, hex.
    pub fn first_public_key_hex(&self) -> String {
        hex::encode(self.first_public_key())
    }

    /// The ledger generation signing new checkpoints.
    pub fn current_generation(&self) -> u64 {
        self.ledger_keys().announced.len() as u64 + 1
    }

    /// The current ledger public key (raw 32 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        let g = self.current_generation() as usize;
        self.ledger_pair(g).public_key().as_ref().to_vec()
    }

    /// The current ledger public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    /// The announced ledger key generations, first to current.
    pub fn ledger_history(&self) -> Vec<LedgerKeyInfo> {
        let announced = self.ledger_keys().announced.clone();
        let mut out = Vec::new();
        for g in 1..=announced.len() + 1 {
            let at = g.checked_sub(2).and_then(|i| announced.get(i)).copied();
            out.push(LedgerKeyInfo {
                generation: g as u64,
                public_key: hex::encode(self.ledger_pair(g).public_key().as_ref()),
                note_key: self.note_key_of(g).to_string(),
                announced_in: at,
                signs_from_size: at.map_or(0, |a| a.saturating_add(2)),
            });
        }
        out
    }

    /// The generation and raw public key of ledger key `generation`, if its
    /// file was found or made (announced or not).
    pub fn ledger_key(&self, generation: u64) -> Option<(u64, Vec<u8>)> {
        let l = self.ledger_keys();
        let pair = l.pair(usize::try_from(generation).ok()?)?;
        Some((generation, pair.public_key().as_ref().to_vec()))
    }

    /// Positions of the announcements of generations 2, 3, ...
    pub fn ledger_announcements(&self) -> Vec<u64> {
        self.ledger_keys().announced.clone()
    }

    /// The next ledger key generation, made and written (sealed when the
    /// keys are) before it is announced, and its raw public key. It signs
    /// nothing until [`Keys::announce_ledger`]. A key this process made
    /// for a rotation whose entry did not commit is reused; a file found at
    /// start beyond the announced generations (a rotation interrupted
    /// before a restart, or a file put there by someone else) is replaced,
    /// never adopted ([`Keys::forget_unrecorded`]).
    pub fn prepare_ledger_rotation(&self) -> Result<(u64, Vec<u8>)> {
        let mut l = self
            .ledger
            .write()
            .map_err(|_| anyhow::anyhow!("the ledger keys are unavailable"))?;
        let g = l.announced.len() + 2;
        if l.pairs.len() < g {
            let name = ledger_file(g);
            let pk8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("key generation failed"))?;
            let pair = Ed25519KeyPair::from_pkcs8(pk8.as_ref())
                .map_err(|_| anyhow::anyhow!("key generation failed"))?;
            let bytes = match &self.kek {
                Some(kek) => kek.seal(&name, pk8.as_ref())?,
                None => pk8.as_ref().to_vec(),
            };
            // A file already there was found at start beyond the announced
            // generations (a rotation that did not commit before a restart,
            // or a file put there by someone else): replaced, never adopted.
            let path = self.kdir.join(&name);
            if path.exists() {
                replace_private(&path, &bytes)?;
            } else {
                write_private(&path, &bytes)?;
                std::fs::File::open(&self.kdir)?.sync_all()?;
            }
            l.pairs.push(Arc::new(pair));
        }
        let pair = l
            .pair(g)
            .ok_or_else(|| anyhow::anyhow!("ledger key generation {g} is missing"))?;
        Ok((g as u64, pair.public_key().as_ref().to_vec()))
    }

    /// Records that `generation` was announced in entry `seq`: from now on
    /// it signs the checkpoints of sizes above `seq + 1`. Generations are
    /// announced in turn.
    pub fn announce_ledger(&self, generation: u64, seq: u64) -> Result<()> {
        let mut l = self
            .ledger
            .write()
            .map_err(|_| anyhow::anyhow!("the ledger keys are unavailable"))?;
        ensure!(
            generation == l.announced.len() as u64 + 2,
            "ledger key generation {generation} announced out of turn"
        );
        ensure!(
            l.announced.last().is_none_or(|a| *a < seq),
            "ledger key generation {generation} announced before the previous one"
        );
        ensure!(
            l.pairs.len() as u64 >= generation,
            "ledger key generation {generation} is announced in the ledger but keys/{} is missing",
            ledger_file(generation as usize)
        );
        l.announced.push(seq);
        Ok(())
    }

    /// Withdraws the announcement of `generation` (its entry did not
    /// commit).
    pub fn withdraw_ledger(&self, generation: u64) {
        if let Ok(mut l) = self.ledger.write() {
            if l.announced.len() as u64 + 1 == generation {
                l.announced.pop();
            }
        }
    }

    /// The tokenization key of one agreement, from the master key of the
    /// generation it was issued under: tokens of two agreements cannot be
    /// linked.
    pub fn token_key(&self, agreement_id: &str, generation: u32) -> Result<[u8; 32]> {
        let t = self.token_keys();
        let master = usize::try_from(generation)
            .ok()
            .and_then(|g| g.checked_sub(1))
            .filter(|i| *i < t.in_force)
            .and_then(|i| t.found.get(i))
            .map(|(k, _)| k)
            .ok_or_else(|| {
                anyhow::anyhow!("tokenization master key generation {generation} is not in force")
            })?;
        let tag = hmac::sign(master, format!("invis tokenize v1 {agreement_id}").as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(tag.as_ref().get(..32).unwrap_or(&[0u8; 32]));
        Ok(k)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(b: u8) -> Kek {
        Kek([b; 32])
    }

    #[test]
    fn sealed_keys_open_only_with_their_key_encryption_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keys::load_or_create(dir.path(), Some(&kek(1))).unwrap();
        assert!(k.sealed());
        let pk8 = std::fs::read(dir.path().join("keys/ledger.ed25519.pk8")).unwrap();
        assert!(pk8.starts_with(SEALED));
        assert!(
            Ed25519KeyPair::from_pkcs8(&pk8).is_err(),
            "the file alone is not a key"
        );
        // The same KEK opens the same keys.
        let again = Keys::load_or_create(dir.path(), Some(&kek(1))).unwrap();
        assert_eq!(again.public_key(), k.public_key());
        assert_eq!(
            again.token_key("ag_1", 1).unwrap(),
            k.token_key("ag_1", 1).unwrap()
        );
        // A copy of the directory without it, or with another, yields nothing.
        let none = Keys::load_or_create(dir.path(), None).unwrap_err().to_string();
        assert!(none.contains("sealed"), "{none}");
        let other = Keys::load_or_create(dir.path(), Some(&kek(2)))
            .unwrap_err()
            .to_string();
        assert!(other.contains("does not open"), "{other}");
    }

    #[test]
    fn unsealed_keys_are_refused_under_a_kek_and_sealed_by_rekey_alone() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Keys::load_or_create(dir.path(), None).unwrap();
        assert!(!plain.sealed());
        let t = std::fs::read(dir.path().join("keys/tokenize.key")).unwrap();
        assert_eq!(t.len(), 32);
        let err = Keys::load_or_create(dir.path(), Some(&kek(7)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not sealed") && err.contains("invis admin rekey"),
            "{err}"
        );
        let t = std::fs::read(dir.path().join("keys/ledger.ed25519.pk8")).unwrap();
        assert!(!t.starts_with(SEALED), "nothing sealed over");
        rekey(dir.path(), None, &kek(7)).unwrap();
        let sealed = Keys::load_or_create(dir.path(), Some(&kek(7))).unwrap();
        assert_eq!(sealed.public_key(), plain.public_key());
        assert_eq!(
            sealed.token_key("ag", 1).unwrap(),
            plain.token_key("ag", 1).unwrap()
        );
        let t = std::fs::read(dir.path().join("keys/tokenize.key")).unwrap();
        assert!(t.starts_with(SEALED));
    }

    #[test]
    fn a_sealed_file_cannot_stand_in_for_the_other_or_be_altered() {
        let dir = tempfile::tempdir().unwrap();
        Keys::load_or_create(dir.path(), Some(&kek(3))).unwrap();
        let kdir = dir.path().join("keys");
        let (a, b) = (kdir.join("ledger.ed25519.pk8"), kdir.join("tokenize.key"));
        let (ab, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        std::fs::write(&a, &bb).unwrap();
        std::fs::write(&b, &ab).unwrap();
        assert!(
            Keys::load_or_create(dir.path(), Some(&kek(3))).is_err(),
            "swapped files"
        );
        let mut flipped = ab.clone();
        if let Some(x) = flipped.last_mut() {
            *x ^= 1;
        }
        std::fs::write(&a, &flipped).unwrap();
        std::fs::write(&b, &bb).unwrap();
        assert!(
            Keys::load_or_create(dir.path(), Some(&kek(3))).is_err(),
            "altered file"
        );
    }

    #[test]
    fn a_rotated_tokenization_key_serves_new_agreements_and_keeps_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keys::load_or_create(dir.path(), Some(&kek(5))).unwrap();
        assert_eq!(k.token_generation(), 1);
        let before = k.token_key("ag_old", 1).unwrap();
        let (g, fingerprint) = k.prepare_token_rotation().unwrap();
        assert_eq!(k.token_generation(), 1, "not in force before its entry");
        assert!(k.token_key("ag_old", 2).is_err());
        k.announce_token(g).unwrap();
        assert_eq!(k.token_generation(), 2);
        assert_eq!(k.token_fingerprint(2), Some(fingerprint));
        assert_eq!(
            k.token_key("ag_old", 1).unwrap(),
            before,
            "generation 1 unchanged"
        );
        assert_ne!(
            k.token_key("ag_old", 2).unwrap(),
            before,
            "a new master, new tokens"
        );
        assert!(k.token_key("ag", 3).is_err() && k.token_key("ag", 0).is_err());
        let file = std::fs::read(dir.path().join("keys/tokenize.2.key")).unwrap();
        assert!(file.starts_with(SEALED), "written sealed");
        // A restart finds every file, and puts in force what the ledger
        // records (here by hand).
        let again = Keys::load_or_create(dir.path(), Some(&kek(5))).unwrap();
        assert_eq!(again.token_generation(), 1);
        assert!(again.token_key("ag_new", 2).is_err());
        again.announce_token(2).unwrap();
        assert_eq!(
            again.token_key("ag_new", 2).unwrap(),
            k.token_key("ag_new", 2).unwrap()
        );
        assert_eq!(
            key_files(&dir.path().join("keys")),
            ["ledger.ed25519.pk8", "tokenize.key", "tokenize.2.key"]
        );
    }

    #[test]
    fn a_rotated_ledger_key_signs_only_above_its_announcement() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keys::load_or_create(dir.path(), Some(&kek(6))).unwrap();
        let first = k.first_public_key();
        let (g, pk) = k.prepare_ledger_rotation().unwrap();
        assert_eq!(g, 2);
        assert_ne!(pk, first);
        let file = std::fs::read(dir.path().join("keys/ledger.2.ed25519.pk8")).unwrap();
        assert!(file.starts_with(SEALED), "written sealed");
        // Unannounced, it signs nothing; preparing again reuses it.
        assert_eq!(k.generation_for(100), 1);
        assert_eq!(k.public_key(), first);
        assert_eq!(k.prepare_ledger_rotation().unwrap(), (2, pk.clone()));
        // Announced in entry 9: sizes up to 10 stay with the first key.
        assert!(k.announce_ledger(3, 9).is_err(), "out of turn");
        k.announce_ledger(2, 9).unwrap();
        assert_eq!((k.generation_for(10), k.generation_for(11)), (1, 2));
        assert_eq!(k.public_key(), pk);
        assert_eq!(k.first_public_key(), first);
        let msg = b"m";
        let ok = |key: &[u8], sig: &[u8]| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
                .verify(msg, sig)
                .is_ok()
        };
        assert!(ok(&first, &k.sign_at(10, msg)) && ok(&pk, &k.sign_at(11, msg)));
        // The note key keeps the origin of the first key.
        assert_eq!(k.note_key_at(11).name, k.note_key_at(1).name);
        assert_eq!(k.ledger_history().len(), 2);
        assert_eq!(k.ledger_history()[1].signs_from_size, 11);
        // A restart finds the file; the ledger says when it took over.
        let again = Keys::load_or_create(dir.path(), Some(&kek(6))).unwrap();
        assert_eq!(again.ledger_key(2).map(|(_, p)| p), Some(pk));
        assert_eq!(again.current_generation(), 1, "until the ledger is followed");
        assert_eq!(
            key_files(&dir.path().join("keys")),
            ["ledger.ed25519.pk8", "ledger.2.ed25519.pk8", "tokenize.key"]
        );
    }

    #[test]
    fn key_encryption_keys_parse_from_hex_or_raw_bytes_and_errors_show_nothing() {
        let hex = Kek::generate().unwrap();
        assert!(Kek::parse(format!("  {hex}\n").as_bytes()).is_ok());
        assert!(Kek::parse(&[9u8; 32]).is_ok());
        let e = Kek::parse(b"secret-but-short").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    /// Sealed key files of two generations swapped, or a ledger key put
    /// where a tokenization key goes, do not open: each is bound to its
    /// file name.
    #[test]
    fn sealed_generations_swapped_do_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keys::load_or_create(dir.path(), Some(&kek(8))).unwrap();
        k.prepare_ledger_rotation().unwrap();
        k.announce_ledger(2, 3).unwrap();
        k.prepare_ledger_rotation().unwrap();
        for g in [2, 3] {
            k.prepare_token_rotation().unwrap();
            k.announce_token(g).unwrap();
        }
        let kd = dir.path().join("keys");
        let swap = |a: &str, b: &str| {
            let (x, y) = (
                std::fs::read(kd.join(a)).unwrap(),
                std::fs::read(kd.join(b)).unwrap(),
            );
            std::fs::write(kd.join(a), y).unwrap();
            std::fs::write(kd.join(b), x).unwrap();
        };
        Keys::load_or_create(dir.path(), Some(&kek(8))).unwrap();
        for (a, b) in [
            ("ledger.2.ed25519.pk8", "ledger.3.ed25519.pk8"),
            ("tokenize.2.key", "tokenize.3.key"),
            ("tokenize.key", "tokenize.2.key"),
            ("ledger.ed25519.pk8", "ledger.2.ed25519.pk8"),
        ] {
            swap(a, b);
            assert!(
                Keys::load_or_create(dir.path(), Some(&kek(8))).is_err(),
                "{a} <-> {b}"
            );
            swap(a, b);
        }
        Keys::load_or_create(dir.path(), Some(&kek(8))).unwrap();
    }

    #[test]
    fn rekey_finishes_an_interrupted_run_only_under_the_key_it_was_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let public = Keys::load_or_create(dir.path(), Some(&kek(1)))
            .unwrap()
            .public_key();
        // A run towards KEK 2 interrupted between the two renames.
        std::fs::create_dir(dir.path().join(REKEY_STAGING)).unwrap();
        for f in key_files(&dir.path().join("keys")) {
            let plain = kek(1)
                .open(&f, &std::fs::read(dir.path().join("keys").join(&f)).unwrap())
                .unwrap();
            std::fs::write(
                dir.path().join(REKEY_STAGING).join(&f),
                kek(2).seal(&f, &plain).unwrap(),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join(REKEY_STAGING).join(REKEY_COMPLETE), b"").unwrap();
        std::fs::rename(dir.path().join("keys"), dir.path().join(REKEY_ASIDE)).unwrap();
        // Run again naming another new key (KEK 2's file was lost, or a
        // fresh one was made): it must not report success while the keys
        // end up sealed under a key the operator did not name.
        let finished = rekey(dir.path(), Some(&kek(1)), &kek(3));
        if finished.is_ok() {
            let opened = Keys::load_or_create(dir.path(), Some(&kek(3)));
            assert!(
                opened.is_ok_and(|k| k.public_key() == public),
                "rekey succeeded but the keys do not open with the new key-encryption key"
            );
        }
        // With the key it was asked for, it finishes.
        if !dir.path().join("keys").exists() {
            rekey(dir.path(), Some(&kek(1)), &kek(2)).unwrap();
            assert_eq!(
                Keys::load_or_create(dir.path(), Some(&kek(2)))
                    .unwrap()
                    .public_key(),
                public
            );
        }
    }

    #[test]
    fn rekey_with_a_current_key_does_not_seal_an_unsealed_file_found_among_sealed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keys::load_or_create(dir.path(), Some(&kek(1))).unwrap();
        let token = k.token_key("ag", 1).unwrap();
        drop(k);
        // Someone without the KEK puts a tokenization key of theirs in.
        std::fs::write(dir.path().join("keys/tokenize.key"), [7u8; 32]).unwrap();
        let err = rekey(dir.path(), Some(&kek(1)), &kek(2));
        assert!(
            err.is_err(),
            "an unsealed key among sealed ones was sealed under the new KEK"
        );
        assert!(Keys::load_or_create(dir.path(), Some(&kek(2))).is_err());
        let _ = token;
    }

    #[test]
    fn rekeying_reseals_every_key_and_an_interrupted_run_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keys::load_or_create(dir.path(), Some(&kek(1))).unwrap();
        k.prepare_token_rotation().unwrap();
        let (public, token) = (k.public_key(), k.token_key("ag", 1).unwrap());
        drop(k);
        assert!(
            rekey(dir.path(), Some(&kek(2)), &kek(3)).is_err(),
            "the wrong current key"
        );
        assert!(
            dir.path().join("keys/ledger.ed25519.pk8").exists(),
            "nothing moved"
        );
        assert_eq!(rekey(dir.path(), Some(&kek(1)), &kek(3)).unwrap(), 3);
        assert!(
            Keys::load_or_create(dir.path(), Some(&kek(1))).is_err(),
            "the old key opens nothing"
        );
        let again = Keys::load_or_create(dir.path(), Some(&kek(3))).unwrap();
        assert_eq!(
            (again.public_key(), again.token_key("ag", 1).unwrap()),
            (public.clone(), token)
        );
        assert!(!dir.path().join(REKEY_STAGING).exists() && !dir.path().join(REKEY_ASIDE).exists());

        // Interrupted between the renames: the server refuses to start (it
        // would otherwise make new keys), and rekey finishes.
        rekey(dir.path(), Some(&kek(3)), &kek(4)).unwrap();
        std::fs::create_dir(dir.path().join(REKEY_STAGING)).unwrap();
        for f in key_files(&dir.path().join("keys")) {
            std::fs::copy(
                dir.path().join("keys").join(&f),
                dir.path().join(REKEY_STAGING).join(&f),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join(REKEY_STAGING).join(REKEY_COMPLETE), b"").unwrap();
        std::fs::rename(dir.path().join("keys"), dir.path().join(REKEY_ASIDE)).unwrap();
        let err = Keys::load_or_create(dir.path(), Some(&kek(4)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("interrupted"), "{err}");
        assert!(!dir.path().join("keys").exists(), "no fresh keys made");
        rekey(dir.path(), Some(&kek(4)), &kek(4)).unwrap();
        assert_eq!(
            Keys::load_or_create(dir.path(), Some(&kek(4)))
                .unwrap()
                .public_key(),
            public
        );

        // Unsealed keys are sealed by it.
        let plain = tempfile::tempdir().unwrap();
        let p = Keys::load_or_create(plain.path(), None).unwrap().public_key();
        rekey(plain.path(), None, &kek(5)).unwrap();
        assert!(Keys::load_or_create(plain.path(), None).is_err());
        assert_eq!(
            Keys::load_or_create(plain.path(), Some(&kek(5)))
                .unwrap()
                .public_key(),
            p
        );
    }
}
