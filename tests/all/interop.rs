//! Interoperability of the ledger's standard checkpoints (issue 16): an
//! independent implementation, Go's `golang.org/x/mod/sumdb/note` and
//! `sumdb/tlog` from Debian's `golang-golang-x-mod-dev`, verifies a real
//! export: every checkpoint note's operator signature, every root
//! recomputed from the entries, every consistency proof; and the regulator
//! witness's `cosignature/v1` lines, checked from the C2SP specification
//! with Go's `crypto/ed25519`. The program is `tests/interop/note_verify.go`,
//! built here without network. Skipped, saying so, when `go` is not
//! installed (`.ci/run` installs it).

use invis_tests::{run_invis, run_invis_as, Server};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Builds the Go verifier into `dir`; `None` when Go is not installed.
fn build_verifier(dir: &Path) -> Option<PathBuf> {
    if Command::new("go").arg("version").output().is_err() {
        eprintln!("SKIPPED: `go` is not installed (apt-get install golang-go golang-golang-x-mod-dev)");
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/note_verify.go");
    let out = dir.join("note_verify");
    let started = Instant::now();
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .output()
        .expect("go build");
    assert!(
        built.status.success(),
        "go build failed (is golang-golang-x-mod-dev installed?): {}",
        String::from_utf8_lossy(&built.stderr)
    );
    eprintln!(
        "built the Go verifier in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Some(out)
}

fn run(verifier: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(verifier).args(args).output().expect("run verifier");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn go_sumdb_note_verifies_the_checkpoints_and_cosignatures() {
    let server = Server::start(&[]).expect("server");
    let Some(verifier) = build_verifier(&server.dir) else {
        return;
    };
    let reg = &server.regulator;
    let key = reg.get("/v1/ledger/public-key").ok();
    let (hex_key, note_key) = (
        key["public_key"].as_str().unwrap().to_string(),
        key["note_key"].as_str().unwrap().to_string(),
    );
    let wdir = server.dir.join("witness");
    let (code, wkey, err) = run_invis(&[
        "witness",
        "init",
        "--dir",
        &wdir.to_string_lossy(),
        "--public-key",
        &hex_key,
    ])
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let wkey = wkey.trim().to_string();
    // Two rounds of growth, publication and cosigning.
    for round in 0..2 {
        server.party(&format!("Provider {round}"), "provider");
        let size = reg.get("/v1/ledger/checkpoint").ok()["checkpoint"]["size"]
            .as_u64()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.operator.get("/v1/ledger/checkpoint").ok()["checkpoint"]["size"]
            .as_u64()
            .unwrap()
            < size
        {
            assert!(Instant::now() < deadline, "not published");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (code, out, err) = run_invis_as(
            &["witness", "run", "--once", "--dir", &wdir.to_string_lossy()],
            Some(reg),
        )
        .unwrap();
        assert_eq!(code, 0, "{out}{err}");
    }
    let export = reg.get("/v1/regulator/ledger");
    let path = server.dir.join("export.ndjson");
    std::fs::write(&path, &export.body).unwrap();
    let p = path.to_string_lossy().into_owned();

    let (ok, out) = run(&verifier, &[&p, &note_key, &wkey]);
    assert!(ok, "{out}");
    assert!(out.contains("operator note signature(s) OK"), "{out}");
    assert!(out.contains("cosignature/v1 (crypto/ed25519): 2 by"), "{out}");
    eprintln!("{out}");

    // The independent verifier refuses what it should: a forged operator
    // note signature, an edited entry, another witness.
    let text = String::from_utf8(export.body.clone()).unwrap();
    let forged = text.replacen("\\n\\n\u{2014} invis.ledger/", "\\n\\n\u{2014} invis.ledger/x", 1);
    assert_ne!(forged, text);
    let fpath = server.dir.join("forged.ndjson");
    std::fs::write(&fpath, forged).unwrap();
    let (ok, out) = run(&verifier, &[&fpath.to_string_lossy(), &note_key]);
    assert!(!ok, "{out}");
    let edited = text.replacen("Provider 0", "Provider 9", 1);
    assert_ne!(edited, text);
    let epath = server.dir.join("edited.ndjson");
    std::fs::write(&epath, edited).unwrap();
    let (ok, out) = run(&verifier, &[&epath.to_string_lossy(), &note_key]);
    assert!(!ok && out.contains("root"), "{out}");
    let other_dir = server.dir.join("other-witness");
    let (_, other, _) = run_invis(&[
        "witness",
        "init",
        "--dir",
        &other_dir.to_string_lossy(),
        "--name",
        "other.witness",
        "--public-key",
        &hex_key,
    ])
    .unwrap();
    let (ok, out) = run(&verifier, &[&p, &note_key, other.trim()]);
    assert!(!ok && out.contains("no cosignature"), "{out}");
}
