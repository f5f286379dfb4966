//! The spine (issue 3): one real job end to end through `invis serve`,
//! covering R1-R4, R8, R11-R13, R16, R17, R21-R23 and R27.

use crate::fixture::{self, materials, world, BANK_JOB};
use invis_tests::{probe, run_invis, Server};
use serde_json::{json, Value};

/// The whole path: catalog, scenario approval, application, agreement, a
/// Rust guest job with three protected queries, the released table, the
/// regulator's lineage view, and an offline-verified ledger export.
#[test]
fn one_job_end_to_end_over_http() {
    let server = Server::start(&[]).expect("server");
    let data = server.dir.join("data");
    let data_s = data.to_string_lossy().to_string();
    let (code, _, err) = run_invis(&["gen-demo-data", "--out", &data_s, "--enterprises", "4000"]).unwrap();
    assert_eq!(code, 0, "{err}");

    // R1/R2: providers register datasets with a rule per column.
    let providers: Vec<_> = [
        "Market Supervision Bureau",
        "Social Security Bureau",
        "Tax Service",
    ]
    .iter()
    .map(|n| server.party(n, "provider"))
    .collect();
    for (p, spec) in providers.iter().zip(fixture::dataset_specs(&data_s)) {
        // I17: the file is uploaded into the provider's own location first.
        let r = p.post("/v1/provider/datasets", &fixture::brought(p, &spec));
        assert_eq!(r.status, 201, "{}", r.text());
        let d = r.json();
        assert_eq!(d["version"], 1);
        assert_eq!(d["version_hash"].as_str().unwrap().len(), 64);
        // R2: a version is used only once the operator approved its rules.
        assert_eq!(d["rules_review"]["status"], "pending");
        let id = d["id"].as_str().unwrap();
        assert_eq!(developer_view_of(&server, d["name"].as_str().unwrap()), 404);
        let review = format!("/v1/operator/datasets/{id}/review");
        assert_eq!(
            server.operator.post(&review, &json!({"approve": false})).status,
            400
        );
        let approved = server.operator.post(&review, &json!({"approve": true})).ok();
        assert_eq!(approved["rules_review"]["status"], "approved");
        assert_eq!(
            server.operator.post(&review, &json!({"approve": true})).status,
            409
        );
    }
    // One source per data item: another provider cannot register the same name.
    let dup = providers[1].post(
        "/v1/provider/datasets",
        &fixture::brought(&providers[1], &fixture::dataset_specs(&data_s)[0]),
    );
    assert_eq!(dup.status, 409, "{}", dup.text());

    // R3: the catalog shows synthetic, desensitized samples, never real rows.
    let developer = server.party("Example Bank", "developer");
    let cat = developer.get("/v1/catalog/enterprise_register").ok();
    assert_eq!(cat["rows"], 4000);
    // Catalog columns say name, type, rule, declared domain and description;
    // nothing measured from the data (an extreme is one unit's value).
    for c in cat["columns"].as_array().unwrap() {
        let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["description", "domain", "name", "rule", "type"]);
    }
    let sample = &cat["sample"];
    let cols: Vec<&str> = sample["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !cols.contains(&"legal_rep_phone"),
        "dropped columns are never shown"
    );
    assert!(
        !cols.iter().any(|c| c.starts_with("__")),
        "hidden columns are never shown"
    );
    let id_col = cols.iter().position(|c| *c == "enterprise_id").unwrap();
    for row in sample["rows"].as_array().unwrap() {
        let id = row[id_col].as_str().unwrap();
        assert!(
            !id.starts_with("91350200"),
            "a real-looking id leaked into the sample: {id}"
        );
        assert_eq!(id.len(), 32, "tokenized");
    }

    // R8: only approved scenarios are visible to developers.
    let sc = server
        .operator
        .post("/v1/operator/scenarios", &{
            // 4000 enterprises in three tables: delta below 1/(1000 N).
            let mut sc = fixture::scenario(5.0);
            sc["release"]["delta_per_query"] = json!(5e-8);
            sc["release"]["delta_total"] = json!(5e-6);
            sc
        })
        .ok();
    let sc_id = sc["id"].as_str().unwrap().to_string();
    assert_eq!(
        developer.get("/v1/developer/scenarios").ok()["scenarios"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        developer.get(&format!("/v1/developer/scenarios/{sc_id}")).status,
        404
    );
    let apply_early = developer.post(
        "/v1/developer/applications",
        &json!({"scenario_id": sc_id, "materials": materials()}),
    );
    assert_eq!(apply_early.status, 404, "cannot apply for an unapproved scenario");
    server
        .regulator
        .post(
            &format!("/v1/regulator/scenarios/{sc_id}/decision"),
            &json!({"approve": true}),
        )
        .ok();
    assert_eq!(
        developer.get("/v1/developer/scenarios").ok()["scenarios"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // R11/R12: application with materials, reviewed by the operator.
    let app = developer
        .post(
            "/v1/developer/applications",
            &json!({"scenario_id": sc_id, "materials": materials()}),
        )
        .ok();
    assert!(app["due_on"].is_string());
    let app_id = app["id"].as_str().unwrap();
    let d = server
        .operator
        .post(
            &format!("/v1/operator/applications/{app_id}/decision"),
            &json!({"approve": true, "valid_days": 30}),
        )
        .ok();
    let ag = d["agreement"]["id"].as_str().unwrap().to_string();
    let jobs = format!("/v1/developer/agreements/{ag}/jobs?wait=true");

    // R13: no job before the agreement is signed.
    let early = developer.post_raw(&jobs, BANK_JOB, "application/wasm");
    assert_eq!(early.status, 403, "{}", early.text());
    assert!(early.message().contains("not signed"));
    developer
        .post(&format!("/v1/developer/agreements/{ag}/sign"), &json!({}))
        .ok();

    // R16/R17: the job receives only protected aggregates and emits its table.
    let job = developer.post_raw(&jobs, BANK_JOB, "application/wasm").ok();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["queries"].as_array().unwrap().len(), 3);
    assert_eq!(
        job["tables"].as_array().unwrap().len(),
        3,
        "every dataset version read is recorded"
    );
    let usage = &job["usage"];
    assert!(usage["fuel"].as_u64().unwrap() > 0 && usage["peak_memory_bytes"].as_u64().unwrap() > 0);
    let out = developer.get(&format!(
        "/v1/developer/jobs/{}/output",
        job["id"].as_str().unwrap()
    ));
    assert_eq!(out.status, 200);
    let csv = out.text();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "industry,district,enterprises,avg_employees,avg_insured_staff,avg_monthly_contribution,grade_a_share"
    );
    let rows: Vec<&str> = lines.collect();
    // Of the 48 industry x district cells, those whose noisy count of
    // enterprises passes the threshold are released: which ones is random
    // (19 to 30 were seen in runs of this test), never more than 48.
    assert!(
        rows.len() >= 10 && rows.len() <= 48,
        "{} cells released",
        rows.len()
    );
    let agreement = developer.get(&format!("/v1/developer/agreements/{ag}")).ok();
    assert_eq!(agreement["budget"]["spent"]["epsilon"], 3.0);
    assert_eq!(agreement["budget"]["remaining"]["epsilon"], 2.0);

    // R21: the regulator lists releases with their lineage.
    let rel = server.regulator.get("/v1/regulator/releases").ok();
    let releases = rel["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 1);
    let actions: Vec<&str> = releases[0]["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entry"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "job.submit",
            "query.charge",
            "query.release",
            "query.charge",
            "query.release",
            "query.charge",
            "query.release",
            "job.finish",
            "result.release"
        ]
    );
    let charge = &releases[0]["lineage"][1]["entry"]["details"];
    assert_eq!(charge["purpose"], "price inclusive-finance loans");
    assert_eq!(charge["mechanism"]["noise"], "discrete_laplace");
    assert_eq!(charge["tables"].as_array().unwrap().len(), 1);
    assert_eq!(
        releases[0]["lineage"][0]["entry"]["actor"], job["developer_id"],
        "R27: attributable to the developer"
    );

    // R22/R23: export the ledger and verify it offline with the pinned key.
    let export = server.regulator.get("/v1/regulator/ledger");
    assert_eq!(export.status, 200);
    let key = server.regulator.get("/v1/regulator/ledger/public-key").ok()["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let path = server.dir.join("export.ndjson");
    std::fs::write(&path, &export.body).unwrap();
    let (code, out, err) =
        run_invis(&["verify-ledger", &path.to_string_lossy(), "--public-key", &key]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ledger OK"), "{out}");

    // A single edited byte is caught and the entry named.
    let text = export.text();
    let lines: Vec<&str> = text.lines().collect();
    let victim = lines.iter().position(|l| l.contains("query.release")).unwrap();
    let mut tampered: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    tampered[victim] = tampered[victim].replacen("output_hash", "output_hasH", 1);
    let bad = server.dir.join("tampered.ndjson");
    std::fs::write(&bad, tampered.join("\n")).unwrap();
    let (code, _, err) = run_invis(&["verify-ledger", &bad.to_string_lossy(), "--public-key", &key]).unwrap();
    assert_eq!(code, 1);
    let body: Value = serde_json::from_str(lines[victim]).unwrap();
    let seq = serde_json::from_str::<Value>(body["body"].as_str().unwrap()).unwrap()["seq"].clone();
    assert!(err.contains(&format!("first bad entry: {seq}")), "{err}");
}

/// Restarting the server keeps everything: parties, agreements, budgets,
/// jobs, outputs and the ledger, which keeps growing and verifying.
#[test]
fn restart_keeps_everything() {
    let mut w = world(1500, 10.0, &[]);
    let job = w.run(BANK_JOB);
    assert_eq!(job["status"], "succeeded", "{job}");
    let job_id = job["id"].as_str().unwrap().to_string();
    let before = w.server.ledger_size();
    let spent = w.spent();

    // Kill hard and start again on the same directory with the same tokens.
    let op = w.server.operator.clone();
    let reg = w.server.regulator.clone();
    w.server.kill();
    let dir = w.server.dir.clone();
    let op_token = token_of(&op);
    let reg_token = token_of(&reg);
    let server = Server::spawn(&dir, &[], &op_token, &reg_token).expect("restart");
    let dev = server.operator.anonymous().as_token(&token_of(&w.developer));
    assert_eq!(server.ledger_size(), before);
    let j = dev.get(&format!("/v1/developer/jobs/{job_id}")).ok();
    assert_eq!(j["status"], "succeeded");
    assert_eq!(
        dev.get(&format!("/v1/developer/jobs/{job_id}/output")).status,
        200
    );
    let ag = dev.get(&format!("/v1/developer/agreements/{}", w.agreement)).ok();
    assert_eq!(ag["budget"]["spent"]["epsilon"].as_f64().unwrap(), spent);

    // The ledger continues from where it was and still verifies.
    let again = dev
        .post_raw(
            &format!("/v1/developer/agreements/{}/jobs?wait=true", w.agreement),
            BANK_JOB,
            "application/wasm",
        )
        .ok();
    assert_eq!(again["status"], "succeeded");
    assert!(server.ledger_size() > before);
    let export = server.regulator.get("/v1/regulator/ledger");
    let path = dir.join("after-restart.ndjson");
    std::fs::write(&path, &export.body).unwrap();
    let (code, out, err) = run_invis(&["verify-ledger", &path.to_string_lossy()]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    w.server = server;
}

fn token_of(api: &invis_tests::Api) -> String {
    api.token().to_string()
}

/// A probe job's successful query returns an Arrow IPC stream the guest SDK
/// decodes: the released table has the selected columns and no group below
/// the threshold.
#[test]
fn released_result_is_arrow_ipc_with_only_large_groups() {
    let w = world(3000, 5.0, &[]);
    let job = w.run(&probe(
        "SELECT district, COUNT(*) AS n, SUM(employees) AS staff FROM enterprise_register GROUP BY district",
    ));
    assert_eq!(job["status"], "succeeded", "{job}");
    let out = w.developer.get(&format!(
        "/v1/developer/jobs/{}/output",
        job["id"].as_str().unwrap()
    ));
    let table = invis::ipc::decode(&out.body).expect("the output is the IPC the host sent");
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["district", "n", "staff"]);
    assert!(table.num_rows() >= 4 && table.num_rows() <= 6);
    let mechanism = &w.server.regulator.get("/v1/regulator/releases").ok()["releases"][0]["lineage"][1]
        ["entry"]["details"]["mechanism"];
    let threshold = mechanism["threshold"].as_i64().unwrap();
    for row in 0..table.num_rows() {
        assert!(
            table.i64("n", row).unwrap() >= threshold,
            "a group below the threshold was released"
        );
    }
}

/// A job running when the server is killed is closed as `interrupted` on
/// the next start; nothing of it is released.
#[test]
fn a_job_interrupted_by_a_crash_is_closed_on_restart() {
    let mut w = world(
        300,
        5.0,
        &["--job-timeout-ms", "60000", "--job-fuel", "100000000000"],
    );
    let forever = invis_tests::wat(
        r#"(module (memory (export "memory") 1) (func (export "run") (result i32) (loop $l (br $l)) (i32.const 0)))"#,
    );
    let path = format!("/v1/developer/agreements/{}/jobs", w.agreement);
    let r = w.developer.post_raw(&path, &forever, "application/wasm");
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (op, reg, dev) = (
        token_of(&w.server.operator),
        token_of(&w.server.regulator),
        token_of(&w.developer),
    );
    w.server.kill();
    let server = Server::spawn(&w.server.dir.clone(), &[], &op, &reg).expect("restart");
    let dev = server.operator.anonymous().as_token(&dev);
    let job = dev.get(&format!("/v1/developer/jobs/{id}")).ok();
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["kind"], "interrupted");
    assert_eq!(dev.get(&format!("/v1/developer/jobs/{id}/output")).status, 409);
    w.server = server;
}

/// Status of a dataset's catalog page as a fresh developer sees it.
fn developer_view_of(server: &Server, name: &str) -> u16 {
    server
        .party("Catalog Reader", "developer")
        .get(&format!("/v1/catalog/{name}"))
        .status
}
