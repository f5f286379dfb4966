//! Job metadata is released like output (I14): a job that received a
//! protected result shows its developer nothing of its logs, resource use,
//! error, queries or tables unless its output was released to them; the
//! operator and the regulator see everything; the bill carries nothing of
//! it either.

use crate::fixture::{scenario, world, world_with, World};
use invis_tests::{wat, Api};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What a job with protected results hides from its developer.
const HIDDEN: [&str; 11] = [
    "logs",
    "usage",
    "error",
    "queries",
    "tables",
    "output_hash",
    "output_bytes",
    "review",
    "charged",
    "charged_queries",
    "allowance",
];

const SQL: &str = "SELECT district, COUNT(*) AS n FROM enterprise_register GROUP BY district";

/// A job that runs [`SQL`], reads its result, logs `secret`, then runs
/// `tail` (which leaves the job's status on the stack).
fn after_a_result(secret: &str, tail: &str) -> Vec<u8> {
    wat(&format!(
        r#"(module
  (import "invis_v1" "query" (func $query (param i32 i32) (result i64)))
  (import "invis_v1" "result_read" (func $result_read (param i32 i32) (result i32)))
  (import "invis_v1" "log" (func $log (param i32 i32) (result i32)))
  (import "invis_v1" "emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 0) "{SQL}")
  (data (i32.const 1024) "{secret}")
  (func (export "run") (result i32)
    (local $r i64) (local $n i32)
    (local.set $r (call $query (i32.const 0) (i32.const {len})))
    (if (i64.lt_s (local.get $r) (i64.const 0)) (then (return (i32.const 9))))
    (local.set $n (call $result_read (i32.const 65536) (i32.wrap_i64 (local.get $r))))
    (drop (call $log (i32.const 1024) (i32.const {secret_len})))
    {tail}))"#,
        len = SQL.len(),
        secret_len = secret.len(),
    ))
}

/// Emits the result it read and succeeds.
const EMIT: &str = "(drop (call $emit (i32.const 65536) (local.get $n))) (i32.const 0)";
/// Runs until stopped.
const FOREVER: &str = "(loop $l (br $l)) (i32.const 0)";

fn assert_withheld(v: &Value, secret: &str) {
    assert!(
        v["details_withheld"]
            .as_str()
            .is_some_and(|n| n.contains("run-local")),
        "{v}"
    );
    for key in HIDDEN {
        assert!(v.get(key).is_none(), "`{key}` shown: {v}");
    }
    for key in [
        "id",
        "agreement_id",
        "module_hash",
        "status",
        "submitted_at",
        "started_at",
    ] {
        assert!(!v[key].is_null(), "`{key}` missing: {v}");
    }
    let text = v.to_string();
    for leak in [
        secret,
        "guest_trap",
        "guest_failed",
        "cancelled",
        "permission_denied",
        "district",
    ] {
        assert!(!text.contains(leak), "`{leak}` leaked: {text}");
    }
}

fn developer_job(dev: &Api, id: &str) -> Value {
    dev.get(&format!("/v1/developer/jobs/{id}")).ok()
}

fn listed(dev: &Api, id: &str) -> Value {
    let all = dev.get("/v1/developer/jobs").ok();
    all["jobs"]
        .as_array()
        .and_then(|a| a.iter().find(|j| j["id"] == id))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The regulator's complete record of a job.
fn regulator_job(w: &World, id: &str) -> Value {
    let all = w.server.regulator.get("/v1/regulator/jobs").ok();
    all["jobs"]
        .as_array()
        .and_then(|a| a.iter().find(|j| j["id"] == id))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Every view the developer has of a job hides its details.
fn assert_withheld_everywhere(w: &World, id: &str, secret: &str) {
    assert_withheld(&developer_job(&w.developer, id), secret);
    assert_withheld(&listed(&w.developer, id), secret);
}

fn submit(w: &World, module: &[u8]) -> String {
    let r = w.developer.post_raw(
        &format!("/v1/developer/agreements/{}/jobs", w.agreement),
        module,
        "application/wasm",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["id"].as_str().expect("job id").to_string()
}

/// Waits until the ledger shows that job `id` received a result.
fn wait_received(w: &World, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let feed = w.server.regulator.get("/v1/regulator/ledger").text();
        let received = feed.lines().any(|l| {
            let body: Value = serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|e| serde_json::from_str(e["body"].as_str()?).ok())
                .unwrap_or(Value::Null);
            body["action"] == "query.release" && body["subject"] == id
        });
        if received {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} received no result");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_final(dev: &Api, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = developer_job(dev, id);
        if !["queued", "running"].contains(&j["status"].as_str().unwrap_or("")) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A job that fails after receiving a result (a trap, a chosen non-zero
/// status carrying 32 bits) shows its developer only that it failed, in
/// the submit response, the job and the job list; the regulator sees its
/// logs and error. A job that fails before any query shows everything.
/// The bill meters the undisclosed jobs at their allowance.
#[test]
fn a_job_that_received_results_and_failed_discloses_nothing_to_its_developer() {
    let w = world(500, 10.0, &[]);
    let secret = "first district count is 4321";
    let mut undisclosed = Vec::new();
    for (tail, kind) in [
        ("(unreachable)", "guest_trap"),
        ("(i32.const 1234567)", "guest_failed"),
    ] {
        let job = w.run(&after_a_result(secret, tail));
        assert_eq!(job["status"], "failed", "{job}");
        assert_withheld(&job, secret);
        let id = job["id"].as_str().unwrap().to_string();
        assert_withheld_everywhere(&w, &id, secret);
        assert!(!developer_job(&w.developer, &id).to_string().contains("1234567"));
        // The regulator's record is complete.
        let seen = regulator_job(&w, &id);
        assert_eq!(seen["error"]["kind"], kind, "{seen}");
        assert_eq!(seen["logs"][0], secret, "{seen}");
        assert_eq!(seen["queries"][0]["sql"], SQL, "{seen}");
        assert!(seen["usage"]["fuel"].as_u64().unwrap() > 0, "{seen}");
        undisclosed.push(id);
    }

    // Before any query its error and logs are all its code's: shown.
    let debug = wat(r#"(module
        (import "invis_v1" "log" (func $log (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "about to trap")
        (func (export "run") (result i32) (drop (call $log (i32.const 0) (i32.const 13))) (unreachable)))"#);
    let early = w.run(&debug);
    assert_eq!(early["status"], "failed", "{early}");
    assert_eq!(early["error"]["kind"], "guest_trap", "{early}");
    assert_eq!(early["logs"][0], "about to trap", "{early}");
    assert!(early["usage"]["fuel"].as_u64().is_some(), "{early}");
    assert!(early.get("details_withheld").is_none(), "{early}");
    assert_eq!(
        listed(&w.developer, early["id"].as_str().unwrap())["logs"][0],
        "about to trap"
    );

    // The bill: each undisclosed job at its fuel limit and, for its one
    // query, every table of the scenario; the disclosed one at its use.
    let st = w
        .developer
        .get(&format!("/v1/developer/agreements/{}/statement", w.agreement))
        .ok();
    let m = &st["statement"]["metered"];
    let catalog = w.developer.get("/v1/catalog").ok();
    let all_rows: u64 = catalog["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["rows"].as_u64().unwrap())
        .sum();
    let fuel_limit = 2_000_000_000u64; // the default --job-fuel
    assert_eq!(m["jobs"], json!(3), "{st}");
    assert_eq!(m["queries"], json!(2), "{st}");
    assert_eq!(m["rows"], json!(2 * all_rows), "{st}");
    assert_eq!(
        m["fuel"],
        json!(2 * fuel_limit + early["usage"]["fuel"].as_u64().unwrap()),
        "{st}"
    );
    let seen = w
        .server
        .regulator
        .get(&format!("/v1/regulator/agreements/{}/statement", w.agreement))
        .ok();
    assert_eq!(seen["statement"], st["statement"], "one bill for everyone");
    for id in &undisclosed {
        assert!(
            regulator_job(&w, id)["usage"]["fuel"].as_u64().unwrap() < fuel_limit / 10,
            "the allowance is not what the job used"
        );
    }
}

/// The airlock and stops: a job held for review shows nothing until the
/// operator approves it, then everything; a withheld one never; a job
/// stopped by an objection or a halt after receiving a result shows
/// nothing. The operator reviews with the complete record.
#[test]
fn held_withheld_and_stopped_jobs_disclose_nothing_until_released() {
    let mut sc = scenario(10.0);
    sc["release"]["review_required"] = json!(true);
    let w = world_with(
        500,
        sc,
        &["--job-fuel", "100000000000", "--job-timeout-ms", "60000"],
    );
    let op = &w.server.operator;
    let secret = "held output says 77";

    let held = w.run(&after_a_result(secret, EMIT));
    assert_eq!(held["status"], "awaiting_review", "{held}");
    assert_withheld(&held, secret);
    let id = held["id"].as_str().unwrap().to_string();
    assert_withheld_everywhere(&w, &id, secret);
    // The operator reviews the complete record.
    let reviews = op.get("/v1/operator/reviews").ok();
    let r = reviews["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["job"]["id"] == id)
        .expect("under review");
    assert_eq!(r["job"]["logs"][0], secret, "{r}");
    assert!(r["job"]["usage"]["fuel"].as_u64().unwrap() > 0, "{r}");
    op.post(
        &format!("/v1/operator/reviews/{id}/decision"),
        &json!({"approve": true}),
    )
    .ok();
    // Released: everything, but no ledger positions.
    let shown = developer_job(&w.developer, &id);
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(shown["logs"][0], secret, "{shown}");
    assert_eq!(shown["queries"][0]["sql"], SQL, "{shown}");
    assert!(shown["queries"][0].get("ledger_seq").is_none(), "{shown}");
    assert!(shown["usage"]["fuel"].as_u64().unwrap() > 0, "{shown}");
    assert!(shown["output_hash"].is_string() && shown.get("details_withheld").is_none());

    let withheld = w.run(&after_a_result(secret, EMIT));
    let wid = withheld["id"].as_str().unwrap().to_string();
    op.post(
        &format!("/v1/operator/reviews/{wid}/decision"),
        &json!({"approve": false, "reason": "the district counts are too fine"}),
    )
    .ok();
    let after = developer_job(&w.developer, &wid);
    assert_eq!(after["status"], "withheld", "{after}");
    assert_withheld(&after, secret);
    assert!(!after.to_string().contains("too fine"), "{after}");
    assert_eq!(regulator_job(&w, &wid)["logs"][0], secret);

    // Stopped by an objection (to one subject: the dataset stays open)
    // after it received a result.
    let objected = submit(&w, &after_a_result(secret, FOREVER));
    wait_received(&w, &objected);
    let ob = op
        .post(
            "/v1/operator/objections",
            &json!({"dataset": "enterprise_register", "subject": "E000001",
                "objector": "an enterprise owner", "grounds": "my record is wrong"}),
        )
        .ok();
    assert_eq!(ob["stopped_jobs"], json!([objected]), "{ob}");
    let stopped = wait_final(&w.developer, &objected);
    assert_eq!(stopped["status"], "failed", "{stopped}");
    assert_withheld(&stopped, secret);
    assert_eq!(regulator_job(&w, &objected)["error"]["kind"], "cancelled");

    // Stopped by a halt after it received a result.
    let halted = submit(&w, &after_a_result(secret, FOREVER));
    wait_received(&w, &halted);
    let report = op
        .post(
            &format!("/v1/operator/agreements/{}/halt", w.agreement),
            &json!({"risk": "a result may single out a firm", "measures": "jobs stopped"}),
        )
        .ok();
    assert_eq!(report["stopped_jobs"], json!([halted]), "{report}");
    let stopped = wait_final(&w.developer, &halted);
    assert_eq!(stopped["status"], "failed", "{stopped}");
    assert_withheld(&stopped, secret);
    assert_withheld(&listed(&w.developer, &halted), secret);
    assert!(!regulator_job(&w, &halted)["error"].is_null());
}
