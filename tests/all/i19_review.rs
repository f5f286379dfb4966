//! Review of issue 19 through the real server: uploads racing for one
//! name, names the URL decodes into something else, and registration names
//! that only look plain.

use invis_tests::Server;
use serde_json::json;

fn id_of(api: &invis_tests::Api) -> String {
    api.get("/v1/whoami").ok()["id"]
        .as_str()
        .expect("party id")
        .to_string()
}

#[test]
fn racing_uploads_of_one_name_leave_one_file_and_one_entry() {
    let server = Server::start(&[]).expect("server");
    let p = server.party("Statistics Bureau", "provider");
    let dir = server.dir.join("files/providers").join(id_of(&p));
    let ledger = server.ledger_size();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || {
                let body = format!("x,n\n{}\n", format!("u{i},{i}\n").repeat(2000));
                let r = p.put_raw("/v1/provider/files/race.csv", body.as_bytes());
                (r.status, body)
            })
        })
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let won: Vec<&String> = results
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(results.iter().all(|(s, _)| *s == 201 || *s == 409));
    assert_eq!(std::fs::read_to_string(dir.join("race.csv")).unwrap(), *won[0]);
    assert_eq!(server.ledger_size(), ledger + 1);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["race.csv"], "no temporary file is left");
}

#[test]
fn names_the_url_decodes_into_paths_are_refused() {
    let server = Server::start(&[]).expect("server");
    let p = server.party("Statistics Bureau", "provider");
    let long = "a".repeat(256);
    for name in [
        "a%00b.csv",
        "a%5Cb.csv",
        "..%5C..%5Cx",
        "%2e%2e%2f%2e%2e%2fetc",
        ".upload-tmp_1",
        long.as_str(),
        "x.csv%0A",
    ] {
        let r = p.put_raw(&format!("/v1/provider/files/{name}"), b"x\n1\n");
        assert!(
            r.status == 400 || r.status == 404,
            "{name}: {} {}",
            r.status,
            r.text()
        );
    }
    let ok = p.put_raw("/v1/provider/files/data.csv", b"x\n1\n");
    assert_eq!(ok.status, 201, "{}", ok.text());
    // A registration's path: trailing slash, a temporary file's name,
    // backslashes and a NUL are refused as text.
    for path in [
        "data.csv/",
        "./data.csv",
        ".upload-x",
        "a\\..\\data.csv",
        "data.csv\u{0}",
        "data.csv/.",
    ] {
        let r = p.post(
            "/v1/provider/datasets",
            &json!({"name": "t", "path": path, "format": "csv", "privacy_unit": "x",
                "columns": [{"name": "x", "rule": "keep"}]}),
        );
        assert_eq!(r.status, 400, "{path:?}: {}", r.text());
        assert!(r.text().contains("relative path"), "{path:?}: {}", r.text());
    }
}
