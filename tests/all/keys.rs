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

    // Bootstrap wrote the keys unsealed; the first start with a KEK seals
    // them in place, and the platform keeps its identity.
    let server = Server::start(&["--kek-file", &kek]).unwrap();
    assert!(sealed(&server.dir), "sealed on the first start with a KEK");
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
