//! Keys at rest (issue 16): the ledger signing key and the tokenization
//! master key are sealed under a key-encryption key given at `invis serve`,
//! so a copy of the data directory, or a backup, alone opens neither.

use invis_tests::{run_invis, Server};

const SEALED: &[u8] = b"invis-sealed-v1\n";

fn sealed(dir: &std::path::Path) -> bool {
    ["ledger.ed25519.pk8", "tokenize.key"]
        .iter()
        .all(|f| std::fs::read(dir.join("keys").join(f)).is_ok_and(|b| b.starts_with(SEALED)))
}

#[test]
fn keys_are_sealed_at_rest_and_the_data_directory_alone_opens_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |p: &str| tmp.path().join(p).to_string_lossy().into_owned();
    let kek = path("kek");
    let (code, _, err) = run_invis(&["admin", "new-kek", "--out", &kek]).unwrap();
    assert_eq!(code, 0, "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&kek).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
    }
    let (code, _, _) = run_invis(&["admin", "new-kek", "--out", &kek]).unwrap();
    assert_ne!(code, 0, "an existing key-encryption key is never overwritten");

    // Bootstrapped and served under the KEK: the keys are sealed.
    let server = Server::start(&["--kek-file", &kek]).unwrap();
    assert!(sealed(&server.dir), "sealed under the KEK");
    let key = server.operator.get("/v1/ledger/public-key").ok();
    let data_dir = server.dir.to_string_lossy().into_owned();

    // A backup without the KEK is refused and creates nothing.
    let (code, _, err) = run_invis(&["backup", "--data-dir", &data_dir, "--out", &path("b0")]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("sealed"), "{err}");
    // With it, the backup holds the keys sealed.
    let (code, out, err) = run_invis(&[
        "backup",
        "--data-dir",
        &data_dir,
        "--out",
        &path("b1"),
        "--kek-file",
        &kek,
    ])
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sealed"), "{out}");
    assert!(sealed(&tmp.path().join("b1")));

    // The backup alone restores nothing, and leaves nothing behind.
    let (code, _, err) = run_invis(&["restore", "--from", &path("b1"), "--data-dir", &path("r0")]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("sealed"), "{err}");
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("r0"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed restore leaves nothing: {left:?}");
    // With another KEK it does not open either.
    let other = path("other");
    run_invis(&["admin", "new-kek", "--out", &other]).unwrap();
    let (code, _, err) = run_invis(&[
        "restore",
        "--from",
        &path("b1"),
        "--data-dir",
        &path("r1"),
        "--kek-file",
        &other,
    ])
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("does not open"), "{err}");
    // With its own, it restores.
    let (code, _, err) = run_invis(&[
        "restore",
        "--from",
        &path("b1"),
        "--data-dir",
        &path("r2"),
        "--kek-file",
        &kek,
    ])
    .unwrap();
    assert_eq!(code, 0, "{err}");

    // The restored directory does not serve without the KEK.
    let (code, _, err) = run_invis(&["serve", "--data-dir", &path("r2"), "--listen", "127.0.0.1:0"]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("sealed"), "{err}");
    // And the running server still serves with the same key.
    assert_eq!(server.operator.get("/v1/ledger/public-key").ok(), key);
}

/// Rotating the tokenization master key: agreements issued afterwards use
/// the new generation, open ones keep theirs (and their jobs keep running),
/// the rotation is in the ledger, and only the operator may rotate.
#[test]
fn a_rotated_tokenization_key_serves_new_agreements_and_keeps_open_ones() {
    use crate::fixture::{open_agreement, scenario, world, BANK_JOB};
    let w = world(200, 10.0, &[]);
    let agreement =
        |api: &invis_tests::Api, id: &str| api.get(&format!("/v1/developer/agreements/{id}")).ok();
    let before = agreement(&w.developer, &w.agreement);
    assert_eq!(before["agreement"]["token_generation"], 1, "{before}");
    let why = serde_json::json!({"reason": "scheduled yearly rotation"});
    assert_eq!(
        w.developer
            .post("/v1/operator/keys/tokenization/rotate", &why)
            .status,
        403
    );
    let r = w
        .server
        .operator
        .post("/v1/operator/keys/tokenization/rotate", &serde_json::json!({}));
    assert_eq!(r.status, 400, "a reason is required: {}", r.text());
    assert!(
        !w.server.dir.join("keys/tokenize.2.key").exists(),
        "nothing rotated"
    );
    let r = w
        .server
        .operator
        .post("/v1/operator/keys/tokenization/rotate", &why);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["generation"], 2);
    assert!(w.server.dir.join("keys/tokenize.2.key").exists());

    // The open agreement keeps generation 1 and its jobs still run.
    let after = agreement(&w.developer, &w.agreement);
    assert_eq!(after["agreement"]["token_generation"], 1);
    assert_eq!(w.run(BANK_JOB)["status"], "succeeded");
    // An agreement issued now is on generation 2.
    let other = w.server.party("Second Bank", "developer");
    let mut spec = scenario(10.0);
    spec["name"] = serde_json::json!("second scenario");
    let (_, id) = open_agreement(&w.server, &other, &spec);
    assert_eq!(agreement(&other, &id)["agreement"]["token_generation"], 2);

    let export = w.server.regulator.get("/v1/regulator/ledger").text();
    let rotations: Vec<serde_json::Value> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["body"].as_str().and_then(|b| serde_json::from_str(b).ok()))
        .filter(|b: &serde_json::Value| b["action"] == "key.rotate")
        .collect();
    assert_eq!(rotations.len(), 1, "{rotations:?}");
    let text = rotations[0].to_string();
    assert!(text.contains("\"generation\":2"), "{text}");
}

/// Key files are trusted only as far as the ledger records them (issue 16):
/// with the data directory writable but the key-encryption key and the
/// ledger key out of reach, an attacker who swaps in a key of their own,
/// or adds a generation, unsealed, is refused at the next start (left as
/// found, not sealed over or served); a sealed ledger key from elsewhere
/// is refused by its enrollment.
#[test]
fn key_files_the_ledger_does_not_record_are_refused_or_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = tmp.path().join("kek").to_string_lossy().into_owned();
    run_invis(&["admin", "new-kek", "--out", &kek]).unwrap();
    let args = ["--kek-file", kek.as_str()];
    let mut server = Server::start(&args).unwrap();
    let (op, reg) = (
        server.operator.token().to_string(),
        server.regulator.token().to_string(),
    );
    let enrolled = server.regulator.get("/v1/regulator/ledger").text();
    assert_eq!(
        enrolled.matches("key.enroll").count(),
        2,
        "the first ledger and tokenization keys are enrolled: {enrolled}"
    );
    server.kill();
    let dir = server.dir.clone();
    let data_dir = dir.to_string_lossy().into_owned();
    let kd = dir.join("keys");
    let serve = || {
        run_invis(&[
            "serve",
            "--data-dir",
            &data_dir,
            "--listen",
            "127.0.0.1:0",
            "--kek-file",
            &kek,
        ])
        .unwrap()
    };

    // The tokenization master key swapped for one the attacker knows.
    let sealed = std::fs::read(kd.join("tokenize.key")).unwrap();
    std::fs::write(kd.join("tokenize.key"), [7u8; 32]).unwrap();
    let (code, _, err) = serve();
    assert_ne!(code, 0);
    assert!(err.contains("keys/tokenize.key is not sealed"), "{err}");
    assert_eq!(
        std::fs::read(kd.join("tokenize.key")).unwrap(),
        [7u8; 32],
        "refused as found, not sealed over"
    );
    std::fs::write(kd.join("tokenize.key"), &sealed).unwrap();

    // The ledger key swapped for another data directory's, sealed under the
    // same KEK (an insider's copy from another deployment).
    let other = tempfile::tempdir().unwrap();
    let boot = std::process::Command::new(invis_tests::invis())
        .args([
            "admin",
            "bootstrap",
            "--data-dir",
            &other.path().to_string_lossy(),
        ])
        .env("INVIS_KEK_FILE", &kek)
        .output()
        .unwrap();
    assert!(boot.status.success(), "{}", String::from_utf8_lossy(&boot.stderr));
    let ours = std::fs::read(kd.join("ledger.ed25519.pk8")).unwrap();
    std::fs::copy(
        other.path().join("keys/ledger.ed25519.pk8"),
        kd.join("ledger.ed25519.pk8"),
    )
    .unwrap();
    let (code, _, err) = serve();
    assert_ne!(code, 0);
    assert!(err.contains("not the ledger key enrolled"), "{err}");
    std::fs::write(kd.join("ledger.ed25519.pk8"), &ours).unwrap();

    // A next generation nobody rotated, unsealed: refused too, as found.
    std::fs::write(kd.join("tokenize.2.key"), [9u8; 32]).unwrap();
    let (code, _, err) = serve();
    assert_ne!(code, 0);
    assert!(err.contains("keys/tokenize.2.key is not sealed"), "{err}");
    assert_eq!(std::fs::read(kd.join("tokenize.2.key")).unwrap(), [9u8; 32]);
    std::fs::remove_file(kd.join("tokenize.2.key")).unwrap();

    // A rotation records its generation's fingerprint, and it survives a
    // restart.
    let server = Server::spawn(&dir, &args, &op, &reg).unwrap();
    let r = server.operator.post(
        "/v1/operator/keys/tokenization/rotate",
        &serde_json::json!({"reason": "scheduled"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["generation"], 2);
    let file = std::fs::read(kd.join("tokenize.2.key")).unwrap();
    assert!(file.starts_with(SEALED), "sealed");
    let recorded = r.json()["fingerprint"].as_str().unwrap_or("").to_string();
    assert_eq!(recorded.len(), 64, "{}", r.text());
    let ledger = server.regulator.get("/v1/regulator/ledger").text();
    assert!(ledger.contains(&recorded), "the fingerprint is in the ledger");
    drop(server);
    // And the rotated generation survives a restart.
    let server = Server::spawn(&dir, &args, &op, &reg).unwrap();
    assert_eq!(server.operator.get("/v1/ledger/public-key").status, 200);
}

/// Rotating the key-encryption key (issue 16): `invis admin rekey`
/// re-seals every key under a new one; the old one opens nothing after,
/// the platform keeps its keys, and a wrong current key changes nothing.
#[test]
fn the_key_encryption_key_rotates_and_the_platform_keeps_its_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let file = |n: &str| {
        let p = tmp.path().join(n).to_string_lossy().into_owned();
        run_invis(&["admin", "new-kek", "--out", &p]).unwrap();
        p
    };
    let (a, b, wrong) = (file("a"), file("b"), file("wrong"));
    let mut server = Server::start(&["--kek-file", &a]).unwrap();
    let key = server.operator.get("/v1/ledger/public-key").ok();
    let (op, reg) = (
        server.operator.token().to_string(),
        server.regulator.token().to_string(),
    );
    server.kill();
    let dir = server.dir.clone();
    let d = dir.to_string_lossy().into_owned();
    let before = std::fs::read(dir.join("keys/tokenize.key")).unwrap();
    let rekey = |cur: &str, new: &str| {
        run_invis(&[
            "admin",
            "rekey",
            "--data-dir",
            &d,
            "--kek-file",
            cur,
            "--new-kek-file",
            new,
        ])
        .unwrap()
    };
    let (code, _, err) = rekey(&wrong, &b);
    assert_ne!(code, 0);
    assert!(err.contains("does not open"), "{err}");
    assert_eq!(
        std::fs::read(dir.join("keys/tokenize.key")).unwrap(),
        before,
        "nothing changed"
    );
    let (code, out, err) = rekey(&a, &b);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("re-sealed 2 key files"), "{out}");
    let (code, _, err) = run_invis(&[
        "serve",
        "--data-dir",
        &d,
        "--listen",
        "127.0.0.1:0",
        "--kek-file",
        &a,
    ])
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("does not open"), "{err}");
    let server = Server::spawn(&dir, &["--kek-file", &b], &op, &reg).unwrap();
    assert_eq!(server.operator.get("/v1/ledger/public-key").ok(), key);

    // A data directory that ran without a KEK is not served under one (its
    // unsealed key files could have been put there by anyone): sealing it
    // is an explicit step, `rekey` without a current key.
    let plain = tempfile::tempdir().unwrap();
    let p = plain.path().to_string_lossy().into_owned();
    let (code, _, err) = run_invis(&["admin", "bootstrap", "--data-dir", &p]).unwrap();
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_invis(&[
        "serve",
        "--data-dir",
        &p,
        "--listen",
        "127.0.0.1:0",
        "--kek-file",
        &a,
    ])
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("is not sealed"), "{err}");
    assert!(!sealed(plain.path()), "nothing was sealed over");
    let (code, out, err) = run_invis(&["admin", "rekey", "--data-dir", &p, "--new-kek-file", &a]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("re-sealed 2 key files"), "{out}");
    assert!(sealed(plain.path()));
}
