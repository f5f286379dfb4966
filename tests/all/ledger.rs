//! The lineage ledger through the real binary: receipts (R21, R27), the
//! resumable feed (R23), durability under SIGKILL (R22), backup and
//! restore (R25), and every kind of tampering caught by `verify-ledger`.

use crate::fixture::{world, BANK_JOB};
use invis_tests::{run_invis, Api, Server};
use scenarios::ledger::{parse_proof, verify_consistency, SignedCheckpoint};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

fn verify(export: &str, key: &str, held: &[&str]) -> (i32, String) {
    let mut args = vec!["verify-ledger", export, "--public-key", key];
    for h in held {
        args.extend(["--checkpoint", h]);
    }
    let (code, out, err) = run_invis(&args).expect("verify-ledger");
    (code, format!("{out}{err}"))
}

fn checkpoint(api: &Api) -> SignedCheckpoint {
    serde_json::from_value(api.get("/v1/ledger/checkpoint").ok()).expect("checkpoint")
}

/// R21, R27: a released result carries a receipt that the developer
/// verifies offline against the released bytes; the regulator sees the
/// same receipt in its release list, filtered by agreement and developer;
/// a later checkpoint is provably an extension of the receipt's.
#[test]
fn receipts_prove_a_release_offline_and_tampering_fails() {
    let w = world(1500, 10.0, &[]);
    let job = w.run(BANK_JOB);
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = job["id"].as_str().unwrap();
    let dev = &w.developer;
    let receipt = dev.get(&format!("/v1/developer/jobs/{id}/receipt")).ok();
    let output = dev.get(&format!("/v1/developer/jobs/{id}/output"));
    assert_eq!(output.status, 200);
    let key = public_key(dev);
    let dir = &w.server.dir;
    let rpath = write(&dir.join("receipt.json"), receipt.to_string().as_bytes());
    let opath = write(&dir.join("output.bin"), &output.body);
    let (code, out, err) =
        run_invis(&["verify-receipt", &rpath, "--public-key", &key, "--output", &opath]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("result.release") && out.contains("output matches"),
        "{out}"
    );

    // Other bytes, an edited entry, a proof for another index: refused.
    let other = write(&dir.join("other.bin"), b"not the released output");
    let (code, _, err) =
        run_invis(&["verify-receipt", &rpath, "--public-key", &key, "--output", &other]).unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("output does not match"), "{err}");
    let mut edited = receipt.clone();
    edited["entry"]["body"] =
        json!(receipt["entry"]["body"]
            .as_str()
            .unwrap()
            .replacen("result.release", "result.releasE", 1));
    let epath = write(&dir.join("edited.json"), edited.to_string().as_bytes());
    let (code, _, err) = run_invis(&["verify-receipt", &epath, "--public-key", &key]).unwrap();
    assert_eq!(code, 1, "{err}");
    let mut moved = receipt.clone();
    moved["seq"] = json!(receipt["seq"].as_u64().unwrap() - 1);
    let mpath = write(&dir.join("moved.json"), moved.to_string().as_bytes());
    assert_eq!(
        run_invis(&["verify-receipt", &mpath, "--public-key", &key])
            .unwrap()
            .0,
        1
    );
    // A receipt is only the developer's for its own jobs.
    let stranger = w.server.party("Other Bank", "developer");
    assert_eq!(
        stranger.get(&format!("/v1/developer/jobs/{id}/receipt")).status,
        404
    );

    // The regulator's release list carries the receipt and filters.
    let reg = &w.server.regulator;
    let all = reg.get("/v1/regulator/releases").ok();
    assert_eq!(all["releases"].as_array().unwrap().len(), 1);
    assert_eq!(all["releases"][0]["receipt"]["seq"], receipt["seq"]);
    let mine = reg
        .get(&format!(
            "/v1/regulator/releases?agreement={}&developer={}",
            w.agreement,
            job["developer_id"].as_str().unwrap()
        ))
        .ok();
    assert_eq!(mine["releases"].as_array().unwrap().len(), 1);
    let none = reg.get("/v1/regulator/releases?developer=pt_nobody").ok();
    assert_eq!(none["releases"].as_array().unwrap().len(), 0);
    let later = reg.get("/v1/regulator/releases?since=2999-01-01T00:00:00Z").ok();
    assert_eq!(later["releases"].as_array().unwrap().len(), 0);
    assert_eq!(reg.get("/v1/regulator/releases?since=yesterday").status, 400);

    // The ledger grows; the next published checkpoint provably extends the
    // receipt's.
    w.server.party("Late Provider", "provider");
    let old: SignedCheckpoint = serde_json::from_value(receipt["checkpoint"].clone()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let new = loop {
        let new = checkpoint(dev);
        if new.checkpoint.size > old.checkpoint.size {
            break new;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no newer checkpoint was published"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let p = dev
        .get(&format!(
            "/v1/ledger/proof/consistency?first={}&second={}",
            old.checkpoint.size, new.checkpoint.size
        ))
        .ok();
    let proof: Vec<String> = serde_json::from_value(p["proof"].clone()).unwrap();
    assert!(verify_consistency(
        old.checkpoint.size,
        new.checkpoint.size,
        &old.root().unwrap(),
        &new.root().unwrap(),
        &parse_proof(&proof).unwrap()
    ));
    let r = dev.get("/v1/ledger/proof/consistency?first=5&second=999999");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(dev.get("/v1/ledger/proof/inclusion?seq=1").status, 400);
}

/// R23: the feed resumes from an index (the resumed part appended to the
/// first is one valid export), refuses an index beyond the end, and a
/// following feed delivers entries as they are appended.
#[test]
fn the_feed_resumes_from_an_index_and_follows_new_entries() {
    let server = Server::start(&[]).expect("server");
    let reg = &server.regulator;
    let key = public_key(reg);
    server.party("Provider A", "provider");
    let first = reg.get("/v1/regulator/ledger/feed?from=0");
    assert_eq!(first.status, 200);
    let size = first
        .text()
        .lines()
        .filter(|l| l.starts_with("{\"hash\""))
        .count();
    for i in 0..3 {
        server.party(&format!("Provider {i}"), "provider");
    }
    let rest = reg.get(&format!("/v1/regulator/ledger/feed?from={size}"));
    assert_eq!(rest.status, 200);
    assert!(
        !rest.text().contains("\"format\""),
        "a resumed feed has no header"
    );
    assert_eq!(
        rest.text().lines().filter(|l| l.starts_with("{\"hash\"")).count(),
        3
    );
    let mut joined = first.body.clone();
    joined.extend_from_slice(&rest.body);
    let path = write(&server.dir.join("joined.ndjson"), &joined);
    let (code, out) = verify(&path, &key, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{} entries", size + 3)), "{out}");

    let r = reg.get("/v1/regulator/ledger/feed?from=999999");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(reg.get("/v1/regulator/ledger/feed?from=-1").status, 400);
    // Whole entries are the regulator's.
    let dev = server.party("Dev", "developer");
    assert_eq!(dev.get("/v1/regulator/ledger/feed").status, 403);

    // Follow: the stream stays open and carries a party created later.
    use std::io::{Read, Write};
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let now = checkpoint(reg).checkpoint.size;
    write!(
        s,
        "GET /v1/regulator/ledger/feed?from={now}&follow=true HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        reg.token()
    )
    .unwrap();
    let created = server.party("Followed Provider", "provider");
    let id = created.get("/v1/whoami").ok()["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(&id) {
        let n = s
            .read(&mut buf)
            .expect("the followed feed delivers the new entry");
        assert!(n > 0, "the feed closed early");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// R22: appends acknowledged to many concurrent clients survive a SIGKILL
/// of the server, round after round, and the ledger verifies each time.
#[test]
fn sigkill_during_concurrent_appends_loses_no_acknowledged_entry() {
    let mut server = Server::start(&[]).expect("server");
    let key = public_key(&server.regulator);
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    for round in 0..3 {
        let op = server.operator.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..12)
            .map(|c| {
                let (op, stop, acked) = (op.clone(), stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let r = op.try_post(
                            "/v1/operator/parties",
                            &json!({"name": format!("p{round}-{c}-{i}"), "role": "provider"}),
                        );
                        // Only a complete 201 is an acknowledgement.
                        if let Some((201, body)) = r {
                            if let Some(id) = body["id"].as_str() {
                                acked.lock().unwrap().insert(id.to_string());
                            }
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        server.restart().expect("restart");
        let export = server.regulator.get("/v1/regulator/ledger");
        assert_eq!(export.status, 200);
        let path = write(&server.dir.join(format!("round{round}.ndjson")), &export.body);
        let (code, out) = verify(&path, &key, &[]);
        assert_eq!(code, 0, "round {round}: {out}");
        let text = export.text();
        let present: BTreeSet<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                v["body"]
                    .as_str()
                    .and_then(|b| serde_json::from_str::<Value>(b).ok())
            })
            .filter(|b| b["action"] == "party.create")
            .filter_map(|b| b["subject"].as_str().map(str::to_string))
            .collect();
        let acked = acked.lock().unwrap();
        assert!(
            acked.len() > 50 * (round + 1),
            "round {round}: only {} acknowledged",
            acked.len()
        );
        let lost: Vec<&String> = acked.difference(&present).collect();
        assert!(lost.is_empty(), "round {round}: acknowledged but lost: {lost:?}");
    }
}

/// R25: a backup taken while the server runs restores into a new
/// directory, verifies against the original key and its manifest, and the
/// restored platform keeps growing. Restoring over a store, or from a
/// corrupted backup, changes nothing. Restoring an old backup and letting
/// it diverge is a fork, which a held checkpoint exposes.
#[test]
fn backup_restores_verifies_keeps_growing_and_a_diverged_restore_is_a_fork() {
    let server = Server::start(&[]).expect("server");
    let key = public_key(&server.regulator);
    server.party("Provider A", "provider");
    let backup = server.dir.join("backup");
    let data_dir = server.dir.to_string_lossy().into_owned();
    let (code, out, err) = run_invis(&[
        "backup",
        "--data-dir",
        &data_dir,
        "--out",
        &backup.to_string_lossy(),
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup.join("MANIFEST.json")).unwrap()).unwrap();
    let at_backup = manifest["checkpoint"]["checkpoint"]["size"].as_u64().unwrap();
    // A second backup into the same place is refused.
    let (code, _, err) = run_invis(&[
        "backup",
        "--data-dir",
        &data_dir,
        "--out",
        &backup.to_string_lossy(),
    ])
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");

    // The original moves on; the regulator holds its newer checkpoint.
    server.party("Provider B", "provider");
    let held = checkpoint(&server.regulator);
    assert!(held.checkpoint.size > at_backup);
    let held_path = write(
        &server.dir.join("held.json"),
        serde_json::to_string(&held).unwrap().as_bytes(),
    );

    // Restore into a new directory.
    let restored = server.dir.join("restored");
    let restore = |from: &Path, into: &Path| {
        run_invis(&[
            "restore",
            "--from",
            &from.to_string_lossy(),
            "--data-dir",
            &into.to_string_lossy(),
        ])
        .unwrap()
    };
    let (code, out, err) = restore(&backup, &restored);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ledger OK"), "{out}");
    let (code, _, err) = restore(&backup, &restored);
    assert_ne!(code, 0, "restoring over a store is refused");
    assert!(err.contains("already holds"), "{err}");
    let corrupt = server.dir.join("corrupt");
    std::fs::create_dir_all(corrupt.join("keys")).unwrap();
    for f in ["MANIFEST.json", "keys/ledger.ed25519.pk8", "keys/tokenize.key"] {
        std::fs::copy(backup.join(f), corrupt.join(f)).unwrap();
    }
    let mut db = std::fs::read(backup.join("invis.db")).unwrap();
    let mid = db.len() / 2;
    db[mid] ^= 1;
    std::fs::write(corrupt.join("invis.db"), db).unwrap();
    let elsewhere = server.dir.join("elsewhere");
    let (code, _, err) = restore(&corrupt, &elsewhere);
    assert_ne!(code, 0);
    assert!(err.contains("does not match its manifest"), "{err}");
    assert!(!elsewhere.join("invis.db").exists(), "nothing installed");

    // The restored platform serves with the same tokens and keeps growing.
    let r =
        Server::spawn(&restored, &[], server.operator.token(), server.regulator.token()).expect("restored");
    assert_eq!(public_key(&r.regulator), key, "same signing key");
    r.party("Provider C", "provider");
    let export = r.regulator.get("/v1/regulator/ledger");
    let path = write(&restored.join("export.ndjson"), &export.body);
    let manifest_path = backup.join("MANIFEST.json").to_string_lossy().into_owned();
    let (code, out) = verify(&path, &key, &[&manifest_path]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{} entries", at_backup + 1)), "{out}");

    // But its history diverged from what the original signed later: the
    // regulator's held checkpoint exposes the fork.
    r.party("Provider D", "provider");
    let export = r.regulator.get("/v1/regulator/ledger");
    let path = write(&restored.join("forked.ndjson"), &export.body);
    let (code, out) = verify(&path, &key, &[&held_path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("forked history"), "{out}");
}

/// Every tampering case on a real export is caught by the binary, which
/// names the first bad entry where one can be named.
#[test]
fn verify_ledger_catches_every_kind_of_tampering() {
    let server = Server::start(&[]).expect("server");
    let reg = &server.regulator;
    for i in 0..3 {
        server.party(&format!("Provider {i}"), "provider");
    }
    let middle = checkpoint(reg);
    for i in 3..6 {
        server.party(&format!("Provider {i}"), "provider");
    }
    let key = public_key(reg);
    let held = checkpoint(reg);
    let held_path = write(
        &server.dir.join("held.json"),
        serde_json::to_string(&held).unwrap().as_bytes(),
    );
    let text = reg.get("/v1/regulator/ledger").text();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let entry_line = |seq: u64| {
        lines
            .iter()
            .position(|l| l.contains(&format!("\\\"seq\\\":{seq},")))
            .expect("entry line")
    };
    let check = |name: &str, tampered: &[String], held: &[&str], expect: &str| {
        let path = write(
            &server.dir.join(format!("{name}.ndjson")),
            tampered.join("\n").as_bytes(),
        );
        let (code, out) = verify(&path, &key, held);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains(expect), "{name}: expected `{expect}` in {out}");
    };
    let clean = write(&server.dir.join("clean.ndjson"), text.as_bytes());
    let (code, out) = verify(&clean, &key, &[&held_path]);
    assert_eq!(code, 0, "{out}");

    let mut edited = lines.clone();
    let l = entry_line(4);
    edited[l] = edited[l].replacen("party.create", "party.creatE", 1);
    check("edited", &edited, &[], "first bad entry: 4");

    let mut removed = lines.clone();
    removed.remove(entry_line(3));
    check("removed", &removed, &[], "first bad entry: 3");

    let mut swapped = lines.clone();
    swapped.swap(entry_line(3), entry_line(4));
    check("reordered", &swapped, &[], "first bad entry: 3");

    // Cutting the tail after the middle checkpoint leaves an export that is
    // whole in itself; the checkpoint the regulator holds exposes it.
    let cut = entry_line(middle.checkpoint.size);
    let truncated: Vec<String> = lines[..cut].to_vec();
    let path = write(
        &server.dir.join("truncated-alone.ndjson"),
        truncated.join("\n").as_bytes(),
    );
    assert_eq!(verify(&path, &key, &[]).0, 0, "internally whole");
    check("truncated", &truncated, &[&held_path], "entries were removed");
    let mut no_final = lines.clone();
    no_final.pop();
    check("no final checkpoint", &no_final, &[], "not covered");

    let mut forged = lines.clone();
    let last = forged.len() - 1;
    forged[last] = forged[last].replacen("\"signature\":\"", "\"signature\":\"00", 1);
    check("bad signature", &forged, &[], "signature");
    let (code, out, err) = run_invis(&["verify-ledger", &clean, "--public-key", &"ab".repeat(32)]).unwrap();
    assert_eq!(code, 1, "another operator's key: {out}{err}");
}
