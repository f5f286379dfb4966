//! Ledger export and signed checkpoints. The verifier itself lives in
//! `scenarios::ledger` so that it runs offline with no platform code.

use crate::error::{ApiError, ApiResult};
use crate::keys::Keys;
use crate::store::Store;
use chrono::Utc;
use scenarios::ledger::{
    merkle_root, parse_hash, Checkpoint, ExportEntry, ExportHeader, Hash, SignedCheckpoint, EXPORT_FORMAT,
};
use std::io::Write;

const PAGE: u64 = 10_000;

/// Signs a checkpoint over the first `size` leaf hashes.
pub fn sign_checkpoint(keys: &Keys, leaves: &[Hash]) -> SignedCheckpoint {
    let checkpoint = Checkpoint {
        size: leaves.len() as u64,
        root: hex::encode(merkle_root(leaves)),
        time: Utc::now(),
    };
    let signature = hex::encode(keys.sign(&checkpoint.signing_message()));
    SignedCheckpoint {
        checkpoint,
        signature,
    }
}

/// Writes the whole ledger as an export: header, every entry, and a
/// checkpoint signed now over all of them. Returns the checkpoint.
pub fn export(store: &Store, keys: &Keys, out: &mut dyn Write) -> ApiResult<SignedCheckpoint> {
    let io = |e: std::io::Error| ApiError::Internal(format!("export write: {e}"));
    let header = ExportHeader {
        format: EXPORT_FORMAT.into(),
        public_key: keys.public_key_hex(),
        exported_at: Utc::now(),
    };
    writeln!(out, "{}", serde_json::to_string(&header)?).map_err(io)?;
    let mut leaves: Vec<Hash> = Vec::new();
    let mut from = 0u64;
    loop {
        let page = store.ledger(from, PAGE)?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            let h = parse_hash(&e.hash)
                .ok_or_else(|| ApiError::Internal(format!("bad hash at entry {}", e.seq)))?;
            leaves.push(h);
            let line = ExportEntry {
                hash: e.hash.clone(),
                body: e.body.clone(),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?).map_err(io)?;
        }
        from = page.last().map(|e| e.seq + 1).unwrap_or(from);
    }
    let cp = sign_checkpoint(keys, &leaves);
    writeln!(out, "{}", serde_json::to_string(&cp)?).map_err(io)?;
    Ok(cp)
}
