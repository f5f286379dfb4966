//! Invariant I17, data is confined to its owner, through the real server:
//! a provider brings a file only by uploading it into its own storage
//! location (or through the operator, who places it there); a dataset
//! names its file relative to that location. Each attack the issue
//! describes is a test here: reading a server file's header through a
//! registration error, telling which paths exist from the errors, and
//! registering another provider's file.

use crate::fixture::{register, upload};
use invis_tests::{run_invis_as, Api, Reply, Server};
use serde_json::{json, Value};
use std::path::PathBuf;

/// A header no answer and no log line may ever contain.
const SECRET: &str = "SECRET_HEADER_d41d8cd98f";
/// A value no answer and no log line may ever contain.
const SECRET_VALUE: &str = "SECRET_VALUE_7c4a8d09ca";

fn hex(bytes: &[u8]) -> String {
    scenarios::ledger::sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn id_of(api: &Api) -> String {
    api.get("/v1/whoami").ok()["id"]
        .as_str()
        .expect("party id")
        .to_string()
}

/// A provider's default storage location on disk.
fn location(server: &Server, provider: &Api) -> PathBuf {
    server.dir.join("files/providers").join(id_of(provider))
}

/// Registers `path` with a one-column spec.
fn register_path(provider: &Api, path: &str) -> Reply {
    provider.post(
        "/v1/provider/datasets",
        &json!({"name": "stolen", "path": path, "format": "csv", "privacy_unit": "x",
            "columns": [{"name": "x", "rule": "keep"}]}),
    )
}

/// The answer with `name` masked, so answers about different names compare.
fn masked(r: &Reply, name: &str) -> (u16, String) {
    (
        r.status,
        r.text().replace(&name.escape_debug().to_string(), "<name>"),
    )
}

fn csv_with_header(header: &str, rows: usize) -> Vec<u8> {
    let mut s = format!("x,{header}\n");
    for i in 0..rows {
        s.push_str(&format!("u{i},{}\n", i % 7));
    }
    s.into_bytes()
}

#[test]
fn a_server_path_is_refused_and_tells_nothing_about_the_file() {
    let server = Server::start_logged(&[]).expect("server");
    let provider = server.party("Statistics Bureau", "provider");
    let ledger = server.ledger_size();
    // A readable CSV outside every storage location, whose header is the
    // secret: the old registration answered "column `SECRET...` of the
    // file has no desensitization rule".
    let outside = tempfile::tempdir().unwrap();
    let file = outside.path().join("passwd.csv");
    std::fs::write(&file, csv_with_header(SECRET, 20)).unwrap();
    let existing = file.to_string_lossy().to_string();
    let absent = outside.path().join("absent.csv").to_string_lossy().to_string();
    let db = server.dir.join("invis.db").to_string_lossy().to_string();
    let a = register_path(&provider, &existing);
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(!a.text().contains(SECRET), "{}", a.text());
    assert!(a.message().contains("relative path"), "{}", a.text());
    assert!(
        a.message().contains("PUT /v1/provider/files/{name}"),
        "says how to bring data: {}",
        a.text()
    );
    // Existing or not, the server's own store or /etc/passwd: one answer.
    for other in [
        &absent,
        &db,
        &"/etc/passwd".to_string(),
        &"/etc/no-such-file".to_string(),
    ] {
        assert_eq!(
            masked(&register_path(&provider, other), other),
            masked(&a, &existing),
            "{other}"
        );
    }
    assert_eq!(server.ledger_size(), ledger, "nothing was registered");
    assert!(!server.log_text().contains(SECRET), "the log names no header");
}

#[test]
fn escapes_and_symlinks_get_the_answer_of_a_missing_file() {
    let server = Server::start(&[]).expect("server");
    let a = server.party("Market Supervision Bureau", "provider");
    let b = server.party("Tax Service", "provider");
    let a_id = id_of(&a);
    let csv = csv_with_header("n", 50);
    let a_file = upload_bytes(&a, &csv);
    let a_path = location(&server, &a).join(&a_file);
    assert!(a_path.is_file());

    let missing = register_path(&b, "missing.csv");
    assert_eq!(missing.status, 400, "{}", missing.text());
    assert!(
        missing
            .message()
            .contains("no file `missing.csv` in your storage location"),
        "{}",
        missing.text()
    );
    let missing = masked(&missing, "missing.csv");

    // B's own location holds a symlink to A's file, one out of the data
    // root, one dangling, and a directory: all look like a missing file.
    let b_dir = location(&server, &b);
    std::fs::create_dir_all(b_dir.join("dir.csv")).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&a_path, b_dir.join("link.csv")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", b_dir.join("passwd.csv")).unwrap();
        std::os::unix::fs::symlink(b_dir.join("gone.csv"), b_dir.join("dangling.csv")).unwrap();
    }
    for name in [
        "link.csv",
        "passwd.csv",
        "dangling.csv",
        "dir.csv",
        a_file.as_str(),
    ] {
        assert_eq!(masked(&register_path(&b, name), name), missing, "{name}");
    }

    // Traversal is refused as text, before any file is looked at: the
    // same answer whether the target exists or not.
    let there = format!("../{a_id}/{a_file}");
    let not_there = format!("../{a_id}/nothing.csv");
    let r = register_path(&b, &there);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        masked(&r, &there),
        masked(&register_path(&b, &not_there), &not_there)
    );
    // So is A's file by its absolute path.
    let abs = a_path.to_string_lossy().to_string();
    let r = register_path(&b, &abs);
    assert_eq!(r.status, 400, "{}", r.text());
    let gone = format!("{abs}.gone");
    assert_eq!(masked(&r, &abs), masked(&register_path(&b, &gone), &gone));

    // A registers its own file; B still cannot, by any name.
    let mine = a.post(
        "/v1/provider/datasets",
        &json!({"name": "firms", "path": a_file, "privacy_unit": "x",
            "columns": [{"name": "x", "rule": "tokenize"}, {"name": "n", "rule": "keep"}]}),
    );
    assert_eq!(mine.status, 201, "{}", mine.text());
    assert_eq!(
        mine.json()["file"],
        json!(a_file),
        "the owner sees the name it wrote"
    );
    assert!(
        !mine.text().contains(&server.dir.to_string_lossy().to_string()),
        "no server path is shown: {}",
        mine.text()
    );
    for name in [a_file.as_str(), there.as_str(), abs.as_str(), "link.csv"] {
        let r = register_path(&b, name);
        assert_eq!(r.status, 400, "{name}: {}", r.text());
    }
}

#[test]
fn the_operator_assigns_storage_that_never_overlaps_another_providers() {
    let server = Server::start(&[]).expect("server");
    let a = server.party("Statistics Bureau", "provider");
    let b = server.party("Health Commission", "provider");
    let dev = server.party("Example Bank", "developer");
    let (a_id, b_id) = (id_of(&a), id_of(&b));
    let assign = |id: &str, dir: &str| {
        server.operator.put(
            &format!("/v1/operator/parties/{id}/storage"),
            &json!({"dir": dir}),
        )
    };
    let ledger = server.ledger_size();
    let r = assign(&a_id, "census");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        server.ledger_size(),
        ledger + 1,
        "the assignment is a ledger entry"
    );
    for (dir, status) in [
        ("census", 409),
        ("census/2024", 409),
        ("/etc", 400),
        ("../outside", 400),
        ("census/../health", 400),
        ("providers", 400),
        (&*format!("providers/{a_id}"), 400),
        ("", 400),
    ] {
        let r = assign(&b_id, dir);
        assert_eq!(r.status, status, "{dir}: {}", r.text());
    }
    // A location containing another's is refused too.
    assert_eq!(assign(&a_id, "health/2024").status, 200);
    let r = assign(&b_id, "health");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(assign(&b_id, "health-2024").status, 200);
    assert_eq!(
        assign(&id_of(&dev), "bank").status,
        409,
        "only providers have storage"
    );
    assert_eq!(assign("pt_nobody", "x").status, 404);
    assert_eq!(server.ledger_size(), ledger + 3);

    // A file the operator places in B's location is B's to register;
    // A's location is where A uploads now.
    let root = server.dir.join("files");
    std::fs::write(root.join("health-2024/visits.csv"), csv_with_header("n", 30)).unwrap();
    let r = b.get("/v1/provider/files").ok();
    assert_eq!(r["location"], "health-2024");
    assert_eq!(r["files"][0]["name"], "visits.csv");
    assert_eq!(r["files"][0]["sha256"], Value::Null, "placed, not uploaded");
    let spec = json!({"name": "visits", "path": "visits.csv", "privacy_unit": "x",
        "columns": [{"name": "x", "rule": "tokenize"}, {"name": "n", "rule": "keep"}]});
    assert_eq!(
        a.post("/v1/provider/datasets", &spec).status,
        400,
        "not in A's location"
    );
    assert_eq!(b.post("/v1/provider/datasets", &spec).status, 201);
    let name = upload_bytes(&a, &csv_with_header("n", 30));
    assert!(root.join("health/2024").join(&name).is_file());

    // A moves on; the location it left (with its file in it) is still
    // not B's to take.
    assert_eq!(assign(&a_id, "census-new").status, 200);
    for dir in ["health/2024", "census"] {
        let r = assign(&b_id, dir);
        assert_eq!(r.status, 409, "{dir}: {}", r.text());
    }
}

#[test]
fn uploads_are_hashed_size_limited_and_leave_nothing_behind() {
    let server = Server::start(&["--max-upload-bytes", "1000"]).expect("server");
    let p = server.party("Statistics Bureau", "provider");
    let dir = location(&server, &p);
    let bytes = csv_with_header("n", 40);
    assert!(bytes.len() < 1000);
    let ledger = server.ledger_size();
    let r = p.put_raw("/v1/provider/files/firms.csv", &bytes);
    assert_eq!(r.status, 201, "{}", r.text());
    let up = r.json();
    assert_eq!(up["sha256"], json!(hex(&bytes)));
    assert_eq!(up["size"], json!(bytes.len()));
    assert_eq!(server.ledger_size(), ledger + 1, "the upload is a ledger entry");
    assert_eq!(std::fs::read(dir.join("firms.csv")).unwrap(), bytes);
    let listed = p.get("/v1/provider/files").ok();
    assert_eq!(
        listed["files"],
        json!([{"name": "firms.csv", "size": bytes.len(), "sha256": hex(&bytes),
            "uploaded_at": up["uploaded_at"]}])
    );

    // A file is never replaced.
    let r = p.put_raw("/v1/provider/files/firms.csv", b"x\n1\n");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(std::fs::read(dir.join("firms.csv")).unwrap(), bytes);

    // Over the limit, declared or streamed: 413, and nothing stays.
    let big = vec![b'7'; 1001];
    let r = p.put_raw("/v1/provider/files/big.csv", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    let r = p.put_chunked(
        "/v1/provider/files/big.csv",
        std::io::Cursor::new(vec![b'7'; 5000]),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // Bad names and an empty file: 400.
    for name in [
        "..",
        ".hidden",
        "a%2Fb.csv",
        "a%20b.csv",
        "%2E%2E",
        "caf%C3%A9.csv",
    ] {
        let r = p.put_raw(&format!("/v1/provider/files/{name}"), b"x\n1\n");
        assert_eq!(r.status, 400, "{name}: {}", r.text());
    }
    let r = p.put_raw("/v1/provider/files/empty.csv", b"");
    assert_eq!(r.status, 400, "{}", r.text());
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["firms.csv"], "no partial or temporary file is left");
    assert_eq!(server.ledger_size(), ledger + 1);
    // The CLI streams a file the same way.
    let local = tempfile::tempdir().unwrap();
    let path = local.path().join("cli.csv");
    std::fs::write(&path, b"x\n1\n").unwrap();
    let (code, out, err) = run_invis_as(
        &[
            "call",
            "PUT",
            "/v1/provider/files/cli.csv",
            "--body",
            &path.to_string_lossy(),
            "--json",
        ],
        Some(&p),
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&hex(b"x\n1\n")), "{out}");
    // Only providers upload (the authorization matrix covers every role).
    let dev = server.party("Example Bank", "developer");
    assert_eq!(dev.put_raw("/v1/provider/files/x.csv", b"x\n1\n").status, 403);
}

#[test]
fn registration_errors_name_no_value_of_the_file() {
    let server = Server::start_logged(&[]).expect("server");
    let p = server.party("Statistics Bureau", "provider");
    // A header without a rule.
    let name = upload_bytes(&p, &csv_with_header(SECRET, 20));
    let r = p.post(
        "/v1/provider/datasets",
        &json!({"name": "t", "path": name, "privacy_unit": "x",
            "columns": [{"name": "x", "rule": "keep"}]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().contains(SECRET), "{}", r.text());
    assert!(r.message().contains("column 2 of 2"), "{}", r.text());
    // A declared column the file lacks is named: the spec is the provider's.
    let r = p.post(
        "/v1/provider/datasets",
        &json!({"name": "t", "path": name, "privacy_unit": "x",
            "columns": [{"name": "x", "rule": "keep"}, {"name": "absent_col", "rule": "keep"},
                {"name": "other", "rule": "keep"}]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().contains(SECRET), "{}", r.text());
    // A value that does not parse, past the rows the schema is inferred
    // from: Arrow's error quotes it; neither the answer nor the log does.
    let mut csv = String::from("x,n\n");
    for i in 0..1500 {
        csv.push_str(&format!("u{i},{i}\n"));
    }
    csv.push_str(&format!("u9999,{SECRET_VALUE}\n"));
    let name = upload_bytes(&p, csv.as_bytes());
    let r = p.post(
        "/v1/provider/datasets",
        &json!({"name": "t", "path": name, "privacy_unit": "x",
            "columns": [{"name": "x", "rule": "keep"}, {"name": "n", "rule": "keep"}]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().contains(SECRET_VALUE), "{}", r.text());
    let log = server.log_text();
    assert!(
        log.contains("dataset file could not be scanned"),
        "the failure is logged"
    );
    assert!(!log.contains(SECRET), "the log names no header");
    assert!(!log.contains(SECRET_VALUE), "the log names no value");
}

#[test]
fn the_upload_route_streams_past_the_request_body_limit() {
    // 20 MiB: more than any other route accepts (a module's 16 MiB).
    let server = Server::start(&[]).expect("server");
    let p = server.party("Statistics Bureau", "provider");
    let mut csv = String::from("x,n\n");
    let mut i = 0u64;
    while csv.len() < 20 << 20 {
        csv.push_str(&format!("unit{i:012},{}\n", i % 97));
        i += 1;
    }
    let r = p.put_chunked(
        "/v1/provider/files/big.csv",
        std::io::Cursor::new(csv.clone().into_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["sha256"], json!(hex(csv.as_bytes())));
    register(
        &server,
        &p,
        &json!({"name": "big", "path": "big.csv", "privacy_unit": "x",
            "columns": [{"name": "x", "rule": "tokenize"}, {"name": "n", "rule": "keep"}]}),
    );
}

/// Uploads `bytes` from a local file outside the server; returns the name.
fn upload_bytes(provider: &Api, bytes: &[u8]) -> String {
    let dir = tempfile::Builder::new()
        .prefix("invis-upload-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("data.csv");
    std::fs::write(&path, bytes).unwrap();
    upload(provider, &path)
}
