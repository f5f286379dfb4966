//! Backup and restore of a data directory (R25): a consistent snapshot of
//! the store taken while the server runs, the keys that sign and tokenize,
//! and a manifest with a signed checkpoint. Restore refuses to overwrite,
//! checks the snapshot's digest, replays the whole ledger through the
//! offline verifier against the manifest's key and checkpoint, and only
//! then installs it, so a restored platform verifies and keeps growing from
//! where it was.
//!
//! A backup holds the signing and tokenization keys: keep it as carefully
//! as the data directory itself.

use crate::keys::{Kek, Keys};
use crate::ledger::Ledger;
use crate::store::Store;
use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use scenarios::ledger::{sha256, SignedCheckpoint, VerifyReport};
use serde::{Deserialize, Serialize};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Format tag of backup manifests.
pub const BACKUP_FORMAT: &str = "invis-backup/1";
const DB: &str = "invis.db";
const MANIFEST: &str = "MANIFEST.json";

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`BACKUP_FORMAT`].
    pub format: String,
    /// When the snapshot was taken.
    pub created_at: DateTime<Utc>,
    /// A checkpoint signed just before the snapshot; the snapshot's ledger
    /// extends it.
    pub checkpoint: SignedCheckpoint,
    /// Hex Ed25519 public key of the ledger: the key signing new
    /// checkpoints at backup (the current generation).
    pub public_key: String,
    /// Hex first ledger key, from which the chain of rotated keys is
    /// followed when the ledger is verified at restore; absent in backups
    /// from before rotation, whose `public_key` is the first key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_public_key: Option<String>,
    /// Hex SHA-256 of the snapshot file.
    pub database_sha256: String,
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn copy_private(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    Ok(())
}

fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(sha256(&bytes)))
}

/// Backs up `data_dir` into the new directory `out`.
pub fn backup(data_dir: &Path, out: &Path, kek: Option<&Kek>) -> Result<Manifest> {
    ensure!(
        data_dir.join(DB).is_file(),
        "there is no store in {}",
        data_dir.display()
    );
    ensure!(
        !out.exists() || std::fs::read_dir(out)?.next().is_none(),
        "{} exists and is not empty; a backup never overwrites",
        out.display()
    );
    let store = Store::open(data_dir)?;
    let keys = Keys::load_or_create(data_dir, kek)?;
    crate::ledger::follow_key_chain(&store, &keys, crate::ledger::Enrollment::Check)?;
    let checkpoint = Ledger::new()
        .checkpoint(&store, &keys)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(out.join("keys"))?;
    let db = out.join(DB);
    store
        .snapshot(&db)
        .map_err(|e| anyhow::anyhow!("snapshot: {e}"))?;
    std::fs::File::open(&db)?.sync_all()?;
    for k in crate::keys::key_files(&data_dir.join("keys")) {
        copy_private(&data_dir.join("keys").join(&k), &out.join("keys").join(&k))?;
    }
    let manifest = Manifest {
        format: BACKUP_FORMAT.into(),
        created_at: Utc::now(),
        checkpoint,
        public_key: keys.public_key_hex(),
        first_public_key: Some(keys.first_public_key_hex()),
        database_sha256: file_sha256(&db)?,
    };
    std::fs::write(out.join(MANIFEST), serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::File::open(out.join(MANIFEST))?.sync_all()?;
    sync_dir(&out.join("keys"))?;
    sync_dir(out)?;
    Ok(manifest)
}

/// What a restore installed.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// The verifier's report on the restored ledger.
    pub report: VerifyReport,
}

/// Restores the backup in `from` into `data_dir`, which must not hold a
/// store yet.
pub fn restore(from: &Path, data_dir: &Path, kek: Option<&Kek>) -> Result<Restored> {
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(from.join(MANIFEST))
            .with_context(|| format!("reading {}", from.join(MANIFEST).display()))?,
    )
    .context("the backup manifest is malformed")?;
    ensure!(
        manifest.format == BACKUP_FORMAT,
        "unknown backup format {:?}",
        manifest.format
    );
    if data_dir.join(DB).exists() || data_dir.join("keys").exists() {
        bail!(
            "{} already holds a store or keys; restore only into a new directory",
            data_dir.display()
        );
    }
    ensure!(
        file_sha256(&from.join(DB))? == manifest.database_sha256,
        "the backup's database does not match its manifest (corrupted or altered)"
    );
    if kek.is_some() {
        // A backup made under a key-encryption key holds its keys sealed;
        // unsealed ones were put there by whoever could write the backup
        // (manifest, ledger and keys are all in their reach). Refused here,
        // before anything is copied.
        for k in crate::keys::key_files(&from.join("keys")) {
            ensure!(
                crate::keys::is_sealed_file(&from.join("keys").join(&k))?,
                "keys/{k} in the backup is not sealed: a backup made under a key-encryption key holds its \
                 keys sealed, so this one was made without it or altered; restore it without --kek-file \
                 only if it is known to be the platform's own (docs/keys.md)"
            );
        }
    }
    let pinned = hex::decode(manifest.first_public_key.as_ref().unwrap_or(&manifest.public_key))
        .context("the manifest's public key is not hex")?;

    // Stage next to the target, verify there, then move into place. A
    // restore that fails leaves nothing behind.
    let staging = data_dir.join(".restore");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let restored = install(from, data_dir, &staging, manifest, &pinned, kek);
    if restored.is_err() && staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    restored
}

/// Copies the backup into `staging`, verifies it there and moves it into
/// `data_dir`.
fn install(
    from: &Path,
    data_dir: &Path,
    staging: &Path,
    manifest: Manifest,
    pinned: &[u8],
    kek: Option<&Kek>,
) -> Result<Restored> {
    std::fs::create_dir_all(staging.join("keys"))?;
    std::fs::copy(from.join(DB), staging.join(DB))?;
    let files = crate::keys::key_files(&from.join("keys"));
    for k in &files {
        copy_private(&from.join("keys").join(k), &staging.join("keys").join(k))?;
    }
    let report = {
        let store = Store::open(staging)?;
        let keys = Keys::load_or_create(staging, kek)?;
        crate::ledger::follow_key_chain(&store, &keys, crate::ledger::Enrollment::Check)?;
        ensure!(
            keys.public_key_hex() == manifest.public_key
                && manifest
                    .first_public_key
                    .as_ref()
                    .is_none_or(|k| *k == keys.first_public_key_hex()),
            "the backup's signing key does not match its manifest"
        );
        let export = staging.join("verify.ndjson");
        {
            let mut w = BufWriter::new(std::fs::File::create(&export)?);
            Ledger::new()
                .export(&store, &keys, 0, true, &mut w)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            w.flush()?;
        }
        let report = crate::ledger::verify_file(
            &export,
            Some(pinned),
            std::slice::from_ref(&manifest.checkpoint),
            &[],
        )?
        .map_err(|f| {
            anyhow::anyhow!(
                "the backup's ledger does not verify: line {}: {}",
                f.line,
                f.reason
            )
        })?;
        std::fs::remove_file(&export)?;
        report
    };
    // Closing the store folded its log into the database file.
    ensure!(
        std::fs::metadata(staging.join("invis.db-wal")).map_or(true, |m| m.len() == 0),
        "the staged store did not close cleanly; nothing was installed"
    );
    std::fs::create_dir_all(data_dir.join("keys"))?;
    std::fs::rename(staging.join(DB), data_dir.join(DB))?;
    for k in &files {
        std::fs::rename(staging.join("keys").join(k), data_dir.join("keys").join(k))?;
    }
    std::fs::remove_dir_all(staging)?;
    sync_dir(&data_dir.join("keys"))?;
    sync_dir(data_dir)?;
    Ok(Restored { manifest, report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{append, NewEntry};

    /// A data directory with a few entries and a checkpoint, its keys
    /// sealed under `kek` when one is given.
    fn platform(dir: &Path, kek: Option<&Kek>) -> Keys {
        let store = Store::open(dir).unwrap();
        let keys = Keys::load_or_create(dir, kek).unwrap();
        crate::ledger::follow_key_chain(&store, &keys, crate::ledger::Enrollment::Record).unwrap();
        store
            .tx(|tx| {
                for i in 0..3 {
                    append(
                        tx,
                        NewEntry::system("test.entry", &format!("x{i}"), serde_json::json!({})),
                        Utc::now(),
                    )?;
                }
                Ok(())
            })
            .unwrap();
        Ledger::new().checkpoint(&store, &keys).unwrap();
        keys
    }

    #[test]
    fn a_backup_with_unsealed_keys_is_not_restored_under_a_key_encryption_key() {
        let kek = Kek::parse(&[4u8; 32]).unwrap();
        let t = tempfile::tempdir().unwrap();
        // The operator's platform seals its keys.
        let ours = platform(&t.path().join("ours"), Some(&kek));
        backup(&t.path().join("ours"), &t.path().join("b-ours"), Some(&kek)).unwrap();
        // Someone who can write where backups are kept, without the KEK,
        // puts a backup of their own in its place: a consistent history
        // and manifest, with keys they hold, unsealed.
        let theirs = platform(&t.path().join("theirs"), None);
        backup(&t.path().join("theirs"), &t.path().join("b-theirs"), None).unwrap();
        assert_ne!(ours.public_key(), theirs.public_key());
        // Restored with the operator's KEK, it must not put their keys
        // into use (sealed under the KEK, as if they were the operator's).
        let restored = restore(&t.path().join("b-theirs"), &t.path().join("r"), Some(&kek));
        let err = restored.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("not sealed"), "{err}");
        assert!(
            !t.path().join("r/keys").exists(),
            "a refused restore leaves nothing"
        );
        // The operator's own backup restores.
        restore(&t.path().join("b-ours"), &t.path().join("r2"), Some(&kek)).unwrap();
    }
}
