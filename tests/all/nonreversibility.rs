//! Issue 15, non-reversibility II, over HTTP: the token dictionary attack
//! and its variants fail, and cross-verification answers (randomized
//! response, charged to the budget) do not tell a consenting subject whose
//! claim does not match from one that did not consent or is absent.

use invis_tests::{probe, Api, Server};
use serde_json::{json, Value};

/// Registers `firms`: `n` enterprises `F0000..`, a tokenized legal name
/// shared by ten firms each, a kept district and seven employees each.
fn firms(server: &Server, n: usize) -> Api {
    let dir = server.dir.join("registry");
    std::fs::create_dir_all(&dir).unwrap();
    let mut csv = String::from("enterprise_id,legal_name,district,employees,contact,margin\n");
    for i in 0..n {
        let contact = "c".repeat(1 + i % 40);
        csv.push_str(&format!(
            "F{i:04},Firm {},D{},7,{contact},0.4\n",
            i % (n / 10).max(1),
            i % 4
        ));
    }
    let path = dir.join("firms.csv");
    std::fs::write(&path, csv).unwrap();
    let provider = server.party("Enterprise Registry", "provider");
    crate::fixture::register(
        server,
        &provider,
        &json!({"name": "firms", "path": path.to_string_lossy(), "privacy_unit": "enterprise_id",
            "unit_kind": "enterprise", "columns": [
                {"name": "enterprise_id", "rule": "tokenize"},
                {"name": "legal_name", "rule": "tokenize"},
                {"name": "district", "rule": "keep", "domain": {"categories": ["D0", "D1", "D2", "D3"]}},
                {"name": "employees", "rule": "keep"},
                {"name": "contact", "rule": {"mask": {"keep_prefix": 1}}},
                {"name": "margin", "rule": "keep", "scale": 2}]}),
    );
    provider
}

fn scenario(legal_name_ops: Value, epsilon_total: f64, epsilon_per_query: f64) -> Value {
    json!({
        "name": "Enterprise checks", "class": "enterprise-analysis",
        "purpose": "aggregate statistics and checks of declared figures",
        "tables": [{"dataset": "firms", "columns": [
            {"name": "enterprise_id", "ops": ["join", "aggregate"]},
            {"name": "legal_name", "ops": legal_name_ops},
            {"name": "district", "ops": ["group", "filter"]},
            {"name": "employees", "ops": ["verify", "aggregate"], "bounds": [0, 100]},
            {"name": "contact", "ops": ["group", "filter"]},
            {"name": "margin", "ops": ["aggregate"], "bounds": [0, 1]}]}],
        "release": {"epsilon_total": epsilon_total, "epsilon_per_query": epsilon_per_query,
            "min_group_size": 5}
    })
}

#[test]
fn the_token_dictionary_attack_fails() {
    let server = Server::start(&[]).expect("server");
    firms(&server, 200);
    // A scenario cannot make a token a group key.
    let r = server.operator.post(
        "/v1/operator/scenarios",
        &scenario(json!(["group", "filter"]), 10.0, 1.0),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.message().contains("tokenized"), "{}", r.text());
    let dev = server.party("Curious Bank", "developer");
    let (_, agreement) = crate::fixture::open_agreement(
        &server,
        &dev,
        &scenario(json!(["filter", "aggregate"]), 10.0, 1.0),
    );
    let before = dev.get(&format!("/v1/developer/agreements/{agreement}")).ok()["budget"]["spent"].clone();

    // The developer's own table: every firm's name once kept, once
    // tokenized by the platform (the candidate dictionary).
    let mut csv = String::from("eid,plain,tok\n");
    for i in 0..200 {
        csv.push_str(&format!("F{i:04},Firm {},Firm {}\n", i % 20, i % 20));
    }
    let upload = |tok_ops: Value| {
        json!({"name": "mine", "privacy_unit": "eid", "unit_kind": "enterprise",
            "columns": [{"name": "eid", "rule": "keep"}, {"name": "plain", "rule": "keep"},
                        {"name": "tok", "rule": "tokenize"}],
            "grant": [{"name": "eid", "ops": ["join"]}, {"name": "plain", "ops": ["group", "filter"]},
                      {"name": "tok", "ops": tok_ops}],
            "csv": csv})
    };
    let datasets = format!("/v1/developer/agreements/{agreement}/datasets");
    let r = dev.post(&datasets, &upload(json!(["group", "filter"])));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.message().contains("tokenized"), "{}", r.text());
    assert!(!r.text().contains("Firm"), "no value is echoed");
    let r = dev.post(&datasets, &upload(json!(["filter", "aggregate"])));
    assert_eq!(r.status, 201, "{}", r.text());

    let join = "FROM mine m JOIN firms f ON m.eid = f.enterprise_id";
    let attacks = [
        // The attack: kept and tokenized values grouped together.
        "SELECT plain, tok, COUNT(*) FROM mine GROUP BY plain, tok".to_string(),
        // Public tokens as group keys, or beside the developer's values.
        "SELECT legal_name, COUNT(*) FROM firms GROUP BY legal_name".to_string(),
        format!("SELECT m.plain, f.legal_name, COUNT(*) {join} GROUP BY m.plain, f.legal_name"),
        // Bisecting public tokens per developer value.
        format!("SELECT m.plain, COUNT(*) {join} WHERE f.legal_name < '8' GROUP BY m.plain"),
        // Matching the developer's tokens, or its values, with public tokens.
        format!("SELECT COUNT(*) {join} WHERE m.tok = f.legal_name"),
        "SELECT COUNT(*) FROM mine m JOIN firms f ON m.eid = f.enterprise_id AND m.plain = f.legal_name"
            .to_string(),
        // A join on a tokenized column that is not the unit.
        "SELECT COUNT(*) FROM mine m JOIN firms f ON m.tok = f.legal_name".to_string(),
    ];
    for sql in &attacks {
        let job = dev
            .post_raw(
                &format!("/v1/developer/agreements/{agreement}/jobs?wait=true"),
                &probe(sql),
                "application/wasm",
            )
            .ok();
        assert_eq!(job["status"], "failed", "{sql}: {job}");
        let log = job["logs"][0].as_str().unwrap_or("");
        assert!(
            log.contains("tokenized") || log.contains("privacy unit"),
            "{sql}: {log}"
        );
        assert!(!log.contains("Firm"), "{sql}: a value is echoed: {log}");
        assert_eq!(job["queries"].as_array().map(Vec::len), Some(0), "{sql}");
    }
    // Refusals are free.
    let after = dev.get(&format!("/v1/developer/agreements/{agreement}")).ok()["budget"]["spent"].clone();
    assert_eq!(before, after);
}

#[test]
fn catalog_counts_masked_lengths_and_fractional_sums() {
    let server = Server::start(&[]).expect("server");
    firms(&server, 900);
    let dev = server.party("Curious Bank", "developer");
    // 900 rows are published as 1,000 (the public granularity).
    let cat = dev.get("/v1/catalog/firms").ok();
    assert_eq!(cat["rows"], 1000, "{cat}");
    let (_, agreement) =
        crate::fixture::open_agreement(&server, &dev, &scenario(json!(["filter"]), 10.0, 1.0));
    // Forty raw contact lengths; every masked contact has one length.
    let job = dev
        .post_raw(
            &format!("/v1/developer/agreements/{agreement}/jobs?wait=true"),
            &probe("SELECT length(contact) AS l, COUNT(*) AS n FROM firms GROUP BY length(contact)"),
            "application/wasm",
        )
        .ok();
    assert_eq!(job["status"], "succeeded", "{job}");
    let out = dev.get(&format!(
        "/v1/developer/jobs/{}/output",
        job["id"].as_str().unwrap()
    ));
    let table = invis::ipc::decode(&out.body).expect("IPC");
    assert_eq!(table.num_rows(), 1, "masked lengths differ");
    assert_eq!(table.i64("l", 0), Some(1 + 8));

    // Fractional values are summed in fixed point at the declared scale:
    // 900 margins of 0.4 average 0.4, not the 0 of per-row rounding.
    let margin = cat["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "margin")
        .cloned()
        .unwrap();
    assert_eq!(margin["scale"], 2, "{margin}");
    let job = dev
        .post_raw(
            &format!("/v1/developer/agreements/{agreement}/jobs?wait=true"),
            &probe("SELECT SUM(margin) AS s, AVG(margin) AS a FROM firms"),
            "application/wasm",
        )
        .ok();
    assert_eq!(job["status"], "succeeded", "{job}");
    let out = dev.get(&format!(
        "/v1/developer/jobs/{}/output",
        job["id"].as_str().unwrap()
    ));
    let table = invis::ipc::decode(&out.body).expect("IPC");
    let (sum, avg) = (table.f64("s", 0).unwrap(), table.f64("a", 0).unwrap());
    assert!((avg - 0.4).abs() < 0.1, "avg {avg}");
    assert!((sum - 360.0).abs() < 60.0, "sum {sum}");
}

/// The share of "match" among `results[range]`.
fn match_rate(results: &[Value], range: std::ops::Range<usize>) -> f64 {
    let n = range.len() as f64;
    results[range].iter().filter(|r| *r == "match").count() as f64 / n
}

#[test]
fn verification_answers_hide_consent_and_presence() {
    const K: usize = 300;
    let server = Server::start(&[]).expect("server");
    let provider = firms(&server, 3 * K);
    let dev = server.party("Example Bank", "developer");
    let (scenario_id, agreement) =
        crate::fixture::open_agreement(&server, &dev, &scenario(json!(["filter"]), 3.0, 1.0));
    // F0000..F0599 consent; F0600..F0899 do not.
    let consenting: Vec<String> = (0..2 * K).map(|i| format!("F{i:04}")).collect();
    provider
        .post(
            "/v1/provider/consents",
            &json!({"scenario_id": scenario_id, "units": consenting, "basis": "application form"}),
        )
        .ok();
    let verify = format!("/v1/developer/agreements/{agreement}/verify");
    let agreement_path = format!("/v1/developer/agreements/{agreement}");
    // Four kinds of record, K each: consenting and true, consenting and
    // false, true but not consenting, absent.
    let mut records = Vec::new();
    for i in 0..K {
        records.push(json!({"subject": format!("F{i:04}"), "claims": {"employees": 7}}));
    }
    for i in K..2 * K {
        records.push(json!({"subject": format!("F{i:04}"), "claims": {"employees": 8}}));
    }
    for i in 2 * K..3 * K {
        records.push(json!({"subject": format!("F{i:04}"), "claims": {"employees": 7}}));
    }
    for i in 0..K {
        records.push(json!({"subject": format!("X{i:04}"), "claims": {"employees": 7}}));
    }
    let r = dev.post(&verify, &json!({"dataset": "firms", "records": records}));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let results = body["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 4 * K);
    assert!(
        results.iter().all(|r| r == "match" || r == "no_match"),
        "one answer shape"
    );
    let eps = body["mechanism"]["epsilon"].as_f64().unwrap();
    assert_eq!(eps, 1.0);
    let p = body["mechanism"]["truth_probability"].as_f64().unwrap();
    assert!((p - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-9);
    let sd = (p * (1.0 - p) / K as f64).sqrt();
    assert!((match_rate(&results, 0..K) - p).abs() < 5.0 * sd);
    // Mismatching, non-consenting and absent subjects: the same
    // distribution, so the attacker's best test has no advantage.
    for (kind, range) in [
        ("mismatch", K..2 * K),
        ("no consent", 2 * K..3 * K),
        ("absent", 3 * K..4 * K),
    ] {
        let rate = match_rate(&results, range);
        assert!((rate - (1.0 - p)).abs() < 5.0 * sd, "{kind}: {rate}");
    }
    // The batch was charged as one query.
    let spent = dev.get(&agreement_path).ok()["budget"]["spent"]["epsilon"]
        .as_f64()
        .unwrap();
    assert_eq!(spent, 1.0);

    // Over its limit a subject is answered in the same shape, charged.
    let one = |subject: &str| json!({"dataset": "firms", "records": [{"subject": subject, "claims": {"employees": 7}}]});
    let shape = |v: &Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        (keys, v["mechanism"].clone(), v["charged"].clone())
    };
    let a = dev.post(&verify, &one("F0001"));
    let b = dev.post(&verify, &one("F0700"));
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(
        shape(&a.json()),
        shape(&b.json()),
        "consenting and not, same shape"
    );

    // A subject named twice in a batch, and a batch the budget does not
    // cover: refused, nothing charged or recorded.
    let ledger = server.ledger_size();
    let r = dev.post(
        &verify,
        &json!({"dataset": "firms", "records": [
            {"subject": "F0001", "claims": {"employees": 7}},
            {"subject": "F0001", "claims": {"employees": 8}}]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = dev.post(&verify, &one("F0002"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "budget_exhausted"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("F0002"));
    assert_eq!(server.ledger_size(), ledger);
    let spent = dev.get(&agreement_path).ok()["budget"]["spent"]["epsilon"]
        .as_f64()
        .unwrap();
    assert_eq!(spent, 3.0);
    // The ledger names no subject and counts no consent.
    let text = server.regulator.get("/v1/regulator/ledger").text();
    assert!(!text.contains("F0001") && !text.contains("\"consenting\""));
    assert_eq!(text.matches("verify.batch").count(), 3);
}
