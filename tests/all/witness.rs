//! The regulator's witness through the real binary (issue 16): `invis
//! witness` cosigns published checkpoints that extend what it cosigned
//! before, receipts and exports carry its cosignature, `verify-receipt` and
//! `verify-ledger --witness-key` require it, and a fork (a restored backup
//! that diverged) is refused a cosignature, so a receipt from the fork
//! fails when a witness is required.

use crate::fixture::{world, BANK_JOB};
use invis_tests::{run_invis, run_invis_as, Api, Server};
use scenarios::ledger::SignedCheckpoint;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn public_key(api: &Api) -> String {
    api.get("/v1/ledger/public-key").ok()["public_key"]
        .as_str()
        .expect("key")
        .to_string()
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).expect("write");
    path.to_string_lossy().into_owned()
}

/// Creates a witness in `dir` pinning `key`; returns its verifier key.
fn init_witness(dir: &Path, key: &str) -> String {
    let (code, out, err) = run_invis(&[
        "witness",
        "init",
        "--dir",
        &dir.to_string_lossy(),
        "--public-key",
        key,
    ])
    .expect("witness init");
    assert_eq!(code, 0, "{out}{err}");
    out.trim().to_string()
}

fn witness_once(dir: &Path, regulator: &Api) -> (i32, String) {
    let (code, out, err) = run_invis_as(
        &["witness", "run", "--once", "--dir", &dir.to_string_lossy()],
        Some(regulator),
    )
    .expect("witness run");
    (code, format!("{out}{err}"))
}

/// Waits until a non-regulator party sees a published checkpoint of at
/// least `size` entries.
fn published_at_least(api: &Api, size: u64) -> SignedCheckpoint {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cp: SignedCheckpoint =
            serde_json::from_value(api.get("/v1/ledger/checkpoint").ok()).expect("checkpoint");
        if cp.checkpoint.size >= size {
            return cp;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of {size} entries was published"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn verify_receipt(path: &str, key: &str, witness: Option<&str>) -> (i32, String) {
    let mut args = vec!["verify-receipt", path, "--public-key", key];
    if let Some(w) = witness {
        args.extend(["--witness-key", w]);
    }
    let (code, out, err) = run_invis(&args).expect("verify-receipt");
    (code, format!("{out}{err}"))
}

/// The witness cosigns; the developer's receipt and the regulator's export
/// then carry the cosignature and verify with the witness required; a
/// wrong witness key, a receipt from before the cosignature, a cosignature
/// moved onto another checkpoint and a forged operator note signature all
/// fail; the cosignature route refuses bad input.
#[test]
fn the_witness_cosigns_and_receipts_and_exports_carry_it() {
    let w = world(1500, 10.0, &[]);
    let job = w.run(BANK_JOB);
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = job["id"].as_str().unwrap();
    let dev = &w.developer;
    let reg = &w.server.regulator;
    let dir = &w.server.dir;
    let key = public_key(dev);
    let before = dev.get(&format!("/v1/developer/jobs/{id}/receipt")).ok();
    let seq = before["seq"].as_u64().unwrap();
    assert!(
        before["checkpoint"]["note"]
            .as_str()
            .unwrap()
            .contains('\u{2014}'),
        "receipts carry the signed note: {before}"
    );
    published_at_least(dev, seq + 1);

    let wdir = dir.join("witness");
    let wkey = init_witness(&wdir, &key);
    assert!(wkey.starts_with("witness.regulator.invis+"), "{wkey}");
    let (code, out) = witness_once(&wdir, reg);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cosigned the checkpoint"), "{out}");
    // The cosignature is in the ledger.
    let cosigns = reg.get("/v1/regulator/ledger").text();
    assert!(cosigns.contains("witness.cosign"), "recorded in the ledger");

    // The developer's receipt now rests on the cosigned checkpoint.
    let receipt = dev.get(&format!("/v1/developer/jobs/{id}/receipt")).ok();
    let rpath = write(&dir.join("receipt.json"), receipt.to_string().as_bytes());
    let (code, out) = verify_receipt(&rpath, &key, Some(&wkey));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("witness witness.regulator.invis cosigned"), "{out}");
    // Another witness's key is not satisfied by it.
    let other = init_witness(&dir.join("other-witness"), &key);
    let (code, out) = verify_receipt(&rpath, &key, Some(&other));
    assert_eq!(code, 1, "{out}");
    // Not even a key file with the same name but another key.
    let (code, out) = verify_receipt(&rpath, &key, Some("witness.regulator.invis+00000000+BA=="));
    assert_ne!(code, 0, "{out}");
    // The receipt fetched before the witness ran has no cosignature.
    let bpath = write(&dir.join("before.json"), before.to_string().as_bytes());
    let (code, out) = verify_receipt(&bpath, &key, Some(&wkey));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no cosignature"), "{out}");
    // Without a witness required it still verifies.
    assert_eq!(verify_receipt(&bpath, &key, None).0, 0);

    // The cosignature line moved onto another checkpoint does not verify.
    let note = receipt["checkpoint"]["note"].as_str().unwrap();
    let cos_line = note
        .lines()
        .find(|l| l.starts_with("\u{2014} witness.regulator.invis "))
        .expect("cosignature line");
    let latest = reg.get("/v1/ledger/checkpoint").ok()["checkpoint"]["size"]
        .as_u64()
        .unwrap();
    let mut moved = reg
        .get(&format!("/v1/regulator/ledger/receipts/{}", latest - 1))
        .ok();
    let moved_note = format!("{}{cos_line}\n", moved["checkpoint"]["note"].as_str().unwrap());
    moved["checkpoint"]["note"] = json!(moved_note);
    let mpath = write(&dir.join("moved.json"), moved.to_string().as_bytes());
    let (code, out) = verify_receipt(&mpath, &key, Some(&wkey));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not verify"), "{out}");
    // A forged operator note signature fails even without a witness.
    let mut forged = receipt.clone();
    let text = forged["checkpoint"]["note"].as_str().unwrap().to_string();
    let op_line = text
        .lines()
        .find(|l| l.starts_with('\u{2014}'))
        .unwrap()
        .to_string();
    // One base64 digit inside the signature changed.
    let mut chars: Vec<char> = op_line.chars().collect();
    let i = chars.len() - 8;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let bad_line: String = chars.into_iter().collect();
    forged["checkpoint"]["note"] = json!(text.replacen(&op_line, &bad_line, 1));
    let fpath = write(&dir.join("forged.json"), forged.to_string().as_bytes());
    let (code, out) = verify_receipt(&fpath, &key, None);
    assert_eq!(code, 1, "{out}");

    // The export carries the cosignature; verify-ledger requires it.
    let export = reg.get("/v1/regulator/ledger");
    let epath = write(&dir.join("export.ndjson"), &export.body);
    let (code, out, err) = run_invis(&[
        "verify-ledger",
        &epath,
        "--public-key",
        &key,
        "--witness-key",
        &wkey,
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("witness witness.regulator.invis cosigned the first"),
        "{out}"
    );
    let (code, out, err) = run_invis(&[
        "verify-ledger",
        &epath,
        "--public-key",
        &key,
        "--witness-key",
        &other,
    ])
    .unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no checkpoint"), "{err}");

    // A second round cosigns the newer published checkpoint.
    published_at_least(dev, latest);
    let (code, out) = witness_once(&wdir, reg);
    assert_eq!(code, 0, "{out}");

    // The cosignature route refuses bad input with 4xx.
    let post = |body: Value| reg.post("/v1/regulator/witness/cosignatures", &body);
    let r = post(json!({"size": 1, "witness_key": "nonsense", "cosignature": cos_line}));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post(json!({"size": 999_999, "witness_key": wkey, "cosignature": cos_line}));
    assert_eq!(r.status, 404, "{}", r.text());
    let r = post(json!({"size": 1, "witness_key": wkey, "cosignature": "not a line"}));
    assert_eq!(r.status, 400, "{}", r.text());
    let size = receipt["checkpoint"]["checkpoint"]["size"].as_u64().unwrap();
    let r = post(json!({"size": size, "witness_key": other, "cosignature": cos_line}));
    assert_eq!(r.status, 400, "another key's line: {}", r.text());
    let r = post(json!({"size": size, "witness_key": wkey, "cosignature": cos_line, "extra": 1}));
    assert_eq!(
        r.status,
        422,
        "unknown fields, as on every JSON route: {}",
        r.text()
    );
    let r = dev.post(
        "/v1/regulator/witness/cosignatures",
        &json!({"size": size, "witness_key": wkey, "cosignature": cos_line}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

/// A server restored from an old backup that then diverged is a fork: the
/// witness, which cosigned the original's later checkpoint, refuses to
/// cosign it and keeps its state; the fork's receipts and export fail when
/// the witness is required.
#[test]
fn a_forked_restore_is_refused_a_cosignature() {
    let server = Server::start(&[]).expect("server");
    let key = public_key(&server.regulator);
    server.party("Provider A", "provider");
    let backup = server.dir.join("backup");
    let (code, out, err) = run_invis(&[
        "backup",
        "--data-dir",
        &server.dir.to_string_lossy(),
        "--out",
        &backup.to_string_lossy(),
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");

    // The original moves on and the witness cosigns it.
    server.party("Provider B", "provider");
    let size = server.regulator.get("/v1/ledger/checkpoint").ok()["checkpoint"]["size"]
        .as_u64()
        .unwrap();
    published_at_least(&server.operator, size);
    let wdir = server.dir.join("witness");
    let wkey = init_witness(&wdir, &key);
    let (code, out) = witness_once(&wdir, &server.regulator);
    assert_eq!(code, 0, "{out}");
    let last_path = wdir.join("last-cosigned.json");
    let cosigned = std::fs::read(&last_path).unwrap();

    // Restore the old backup and let it grow past what was cosigned.
    let restored = server.dir.join("restored");
    let (code, out, err) = run_invis(&[
        "restore",
        "--from",
        &backup.to_string_lossy(),
        "--data-dir",
        &restored.to_string_lossy(),
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let r =
        Server::spawn(&restored, &[], server.operator.token(), server.regulator.token()).expect("restored");
    // Before it grows, the restored ledger is smaller than what was
    // cosigned: a rollback, refused by the server (409) and the witness.
    let (code, out) = witness_once(&wdir, &r.regulator);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("REFUSED") && out.contains("fewer than"), "{out}");
    for name in ["Provider C", "Provider D", "Provider E", "Provider F"] {
        r.party(name, "provider");
    }
    let fork_size = r.regulator.get("/v1/ledger/checkpoint").ok()["checkpoint"]["size"]
        .as_u64()
        .unwrap();
    published_at_least(&r.operator, fork_size);

    let (code, out) = witness_once(&wdir, &r.regulator);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("REFUSED") && out.contains("forked history"), "{out}");
    assert_eq!(
        std::fs::read(&last_path).unwrap(),
        cosigned,
        "the witness state is unchanged"
    );

    // A receipt from the fork fails when the witness is required.
    let receipt = r
        .regulator
        .get(&format!("/v1/regulator/ledger/receipts/{}", fork_size - 1))
        .ok();
    let rpath = write(
        &restored.join("fork-receipt.json"),
        receipt.to_string().as_bytes(),
    );
    assert_eq!(verify_receipt(&rpath, &key, None).0, 0, "valid without a witness");
    let (code, out) = verify_receipt(&rpath, &key, Some(&wkey));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no cosignature"), "{out}");
    // And so does its export.
    let export = r.regulator.get("/v1/regulator/ledger");
    let epath = write(&restored.join("fork.ndjson"), &export.body);
    let (code, out, err) = run_invis(&[
        "verify-ledger",
        &epath,
        "--public-key",
        &key,
        "--witness-key",
        &wkey,
    ])
    .unwrap();
    assert_eq!(code, 1, "{out}{err}");

    // The original still extends what was cosigned: the witness goes on.
    server.party("Provider G", "provider");
    let size = server.regulator.get("/v1/ledger/checkpoint").ok()["checkpoint"]["size"]
        .as_u64()
        .unwrap();
    published_at_least(&server.operator, size);
    let (code, out) = witness_once(&wdir, &server.regulator);
    assert_eq!(code, 0, "{out}");
}

/// Rotating the ledger signing key (issue 16): the new key is announced in
/// a `key.rotate` entry under a checkpoint signed by the old one, and
/// everyone holding only the first key follows the chain: the witness
/// cosigns across the rotation, a receipt after it carries the chain and
/// verifies with the first key, the export verifies with the first key
/// and fails with the announcement altered, and a backup carries and
/// restores both generations. Only the operator rotates, and only with a
/// reason.
#[test]
fn verifiers_and_the_witness_follow_a_rotated_ledger_key() {
    let mut w = world(1500, 10.0, &[]);
    let job = w.run(BANK_JOB);
    assert_eq!(job["status"], "succeeded", "{job}");
    let dev = w.developer.clone();
    let reg = w.server.regulator.clone();
    let dir = w.server.dir.clone();
    let first = public_key(&dev);
    let wdir = dir.join("witness");
    let wkey = init_witness(&wdir, &first);
    let seq = dev
        .get(&format!(
            "/v1/developer/jobs/{}/receipt",
            job["id"].as_str().unwrap()
        ))
        .ok()["seq"]
        .as_u64()
        .unwrap();
    published_at_least(&dev, seq + 1);
    let (code, out) = witness_once(&wdir, &reg);
    assert_eq!(code, 0, "{out}");

    // Only the operator, and only with a reason.
    let why = json!({"reason": "scheduled rotation"});
    assert_eq!(dev.post("/v1/operator/keys/ledger/rotate", &why).status, 403);
    let r = w
        .server
        .operator
        .post("/v1/operator/keys/ledger/rotate", &json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!dir.join("keys/ledger.2.ed25519.pk8").exists(), "nothing rotated");
    assert_eq!(public_key(&dev), first);
    let r = w.server.operator.post("/v1/operator/keys/ledger/rotate", &why);
    assert_eq!(r.status, 201, "{}", r.text());
    let rotated = r.json();
    assert_eq!(rotated["generation"], 2, "{rotated}");
    let announced = rotated["announced_in"].as_u64().unwrap();
    assert_eq!(rotated["announced_under"]["checkpoint"]["size"], announced + 1);
    assert!(dir.join("keys/ledger.2.ed25519.pk8").exists());
    let info = dev.get("/v1/ledger/public-key").ok();
    let second = info["public_key"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(info["first_public_key"], first.as_str());
    assert_eq!(info["generation"], 2);
    assert_eq!(info["keys"][1]["announced_in"], announced, "{info}");
    assert_eq!(info["keys"][0]["public_key"], first.as_str(), "{info}");

    // A job after the rotation; its checkpoints are signed by the new key.
    let job = w.run(BANK_JOB);
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = job["id"].as_str().unwrap();
    let seq = dev.get(&format!("/v1/developer/jobs/{id}/receipt")).ok()["seq"]
        .as_u64()
        .unwrap();
    published_at_least(&dev, seq + 1);
    // The witness follows the chain and cosigns across the rotation.
    let (code, out) = witness_once(&wdir, &reg);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cosigned the checkpoint"), "{out}");
    assert!(wdir.join("key-chain.json").exists());

    // The receipt carries the chain and verifies with the first key and
    // the witness required.
    let receipt = dev.get(&format!("/v1/developer/jobs/{id}/receipt")).ok();
    assert_eq!(receipt["key_chain"][0]["seq"], announced, "{receipt}");
    let rpath = write(&dir.join("rotated-receipt.json"), receipt.to_string().as_bytes());
    let (code, out) = verify_receipt(&rpath, &first, Some(&wkey));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 generations followed"), "{out}");
    // Without its chain, it does not.
    let mut bare = receipt.clone();
    bare.as_object_mut().unwrap().remove("key_chain");
    let bpath = write(&dir.join("bare-receipt.json"), bare.to_string().as_bytes());
    let (code, out) = verify_receipt(&bpath, &first, None);
    assert_eq!(code, 1, "{out}");
    // Nor with a chain whose announcement names another key.
    let mut forged = receipt.clone();
    let body = forged["key_chain"][0]["entry"]["body"]
        .as_str()
        .unwrap()
        .to_string();
    forged["key_chain"][0]["entry"]["body"] = json!(body.replace(&second, &"ab".repeat(32)));
    let fpath = write(&dir.join("forged-receipt.json"), forged.to_string().as_bytes());
    let (code, out) = verify_receipt(&fpath, &first, None);
    assert_eq!(code, 1, "{out}");

    // The export verifies with the first key, the witness required.
    let export = reg.get("/v1/regulator/ledger").text();
    let epath = write(&dir.join("rotated.ndjson"), export.as_bytes());
    let (code, out, err) = run_invis(&[
        "verify-ledger",
        &epath,
        "--public-key",
        &first,
        "--witness-key",
        &wkey,
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 generations followed"), "{out}");
    // With the announcement altered (another key announced), it fails at
    // that entry.
    let altered = export.replacen(&second, &"ab".repeat(32), 1);
    assert_ne!(altered, export);
    let apath = write(&dir.join("altered.ndjson"), altered.as_bytes());
    let (code, out, err) = run_invis(&["verify-ledger", &apath, "--public-key", &first]).unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&format!("entry {announced}")), "{err}");
    // The new key alone is not the ledger's identity.
    let (code, out, err) = run_invis(&["verify-ledger", &epath, "--public-key", &second]).unwrap();
    assert_eq!(code, 1, "{out}{err}");

    // A restart keeps the chain; a backup carries both generations and
    // restores, verified from the first key.
    w.server.restart().expect("restart");
    assert_eq!(public_key(&w.server.operator), second);
    let data_dir = dir.to_string_lossy().into_owned();
    let b = dir.join("rotated-backup").to_string_lossy().into_owned();
    let (code, out, err) = run_invis(&["backup", "--data-dir", &data_dir, "--out", &b]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(Path::new(&b).join("keys/ledger.2.ed25519.pk8").exists());
    let r = dir.join("rotated-restore").to_string_lossy().into_owned();
    let (code, out, err) = run_invis(&["restore", "--from", &b, "--data-dir", &r]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
}
