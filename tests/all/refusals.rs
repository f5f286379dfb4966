//! Bad input (issue 3): every refusal has a clear error and a fitting
//! status, changes nothing (no budget, no release, no ledger entry for
//! refused requests), and the server keeps serving.

use crate::fixture::{world, World};
use invis_tests::{probe, wat};
use serde_json::json;

fn assert_healthy(w: &World) {
    let r = w.developer.anonymous().get("/v1/health");
    assert_eq!(r.status, 200);
}

#[test]
fn malformed_requests_unknown_ids_and_wrong_roles() {
    let w = world(800, 5.0, &[]);
    let other = w.server.party("Other Bank", "developer");
    let before = w.server.ledger_size();
    let op = &w.server.operator;

    // Malformed JSON and unknown fields: 400 naming the problem.
    let r = op.post_raw("/v1/operator/scenarios", b"{not json", "application/json");
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "bad_request"),
        "{}",
        r.text()
    );
    let r = op.post(
        "/v1/operator/parties",
        &json!({"name": "x", "role": "developer", "admin": true}),
    );
    assert_eq!(r.status, 400);
    assert!(r.message().contains("admin"), "{}", r.message());
    let r = op.post("/v1/operator/parties", &json!({"name": "x", "role": "emperor"}));
    assert_eq!(r.status, 400);
    // Missing materials.
    let r = w.developer.post(
        "/v1/developer/applications",
        &json!({"scenario_id": w.scenario, "materials": {"qualifications": "", "data_needs": "a", "development_method": "b", "security_measures": "c", "security_officer": ""}}),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.message().contains("qualifications") && r.message().contains("security_officer"),
        "{}",
        r.message()
    );

    // Unknown ids: 404.
    assert_eq!(
        op.post(
            "/v1/operator/applications/ap_nope/decision",
            &json!({"approve": true})
        )
        .status,
        404
    );
    assert_eq!(w.developer.get("/v1/developer/jobs/job_nope").status, 404);
    assert_eq!(w.developer.get("/v1/catalog/no_such_table").status, 404);
    assert_eq!(
        w.developer
            .post_raw(
                "/v1/developer/agreements/ag_nope/jobs",
                b"\0asm",
                "application/wasm"
            )
            .status,
        404
    );

    // Authentication and roles.
    assert_eq!(w.developer.anonymous().get("/v1/catalog").status, 401);
    assert_eq!(
        w.developer
            .anonymous()
            .as_token("invis_forged")
            .get("/v1/catalog")
            .status,
        401
    );
    assert_eq!(
        w.developer
            .post("/v1/operator/parties", &json!({"name": "me", "role": "operator"}))
            .status,
        403
    );
    assert_eq!(w.developer.get("/v1/regulator/ledger").status, 403);
    assert_eq!(
        w.server
            .regulator
            .post("/v1/operator/scenarios", &json!({}))
            .status,
        403
    );

    // Illegal transitions: approving twice, signing twice.
    let r = w.server.regulator.post(
        &format!("/v1/regulator/scenarios/{}/decision", w.scenario),
        &json!({"approve": true}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let r = w.developer.post(
        &format!("/v1/developer/agreements/{}/sign", w.agreement),
        &json!({}),
    );
    assert_eq!(r.status, 409);

    // Another developer sees none of this developer's records.
    assert_eq!(
        other
            .get(&format!("/v1/developer/agreements/{}", w.agreement))
            .status,
        404
    );
    assert_eq!(
        other
            .post_raw(&w.jobs_path(), b"\0asm", "application/wasm")
            .status,
        404
    );

    // Unsafe release parameters are refused.
    let mut bad = crate::fixture::scenario(5.0);
    bad["release"]["min_group_size"] = json!(1);
    let r = op.post("/v1/operator/scenarios", &bad);
    assert_eq!(
        (r.status, r.code().as_str()),
        (422, "policy_violation"),
        "{}",
        r.text()
    );

    assert_eq!(w.server.ledger_size(), before, "refused requests write nothing");
    assert_healthy(&w);
}

#[test]
fn sql_that_does_not_parse_or_leaves_the_scenario_is_refused_for_free() {
    let w = world(800, 5.0, &[]);
    let cases: &[(&str, i64, &str)] = &[
        ("SELEC industry FROM enterprise_register", -5, "invalid query"),
        (
            "SELECT industry, COUNT(*) FROM no_such_table GROUP BY industry",
            -5,
            "not found",
        ),
        ("SELECT * FROM enterprise_register", -2, "row-level output"),
        (
            "SELECT name, COUNT(*) FROM enterprise_register GROUP BY name",
            -2,
            "not granted",
        ),
        (
            "SELECT industry, MAX(employees) FROM enterprise_register GROUP BY industry",
            -2,
            "MAX",
        ),
        (
            "SELECT industry, COUNT(*) FROM enterprise_register GROUP BY industry ORDER BY 2 DESC LIMIT 1",
            -2,
            "LIMIT",
        ),
        (
            "SELECT industry, COUNT(*) FROM enterprise_register GROUP BY industry ORDER BY 2 DESC",
            -2,
            "ORDER BY",
        ),
        (
            "SELECT industry, COUNT(*) FROM enterprise_register GROUP BY industry HAVING COUNT(*) < 5",
            -2,
            "HAVING",
        ),
        (
            "SELECT COUNT(*) FROM enterprise_register WHERE registered_capital > 100",
            -2,
            "not granted",
        ),
        (
            "SELECT industry, SUM(founded_year) FROM enterprise_register GROUP BY industry",
            -2,
            "aggregates",
        ),
        ("DROP TABLE enterprise_register", -2, "only SELECT"),
    ];
    for (sql, code, needle) in cases {
        let job = w.run(&probe(sql));
        assert_eq!(job["status"], "failed", "{sql}: {job}");
        assert_eq!(job["error"]["kind"], "guest_failed", "{sql}");
        assert!(
            job["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&code.to_string()),
            "{sql}: {job}"
        );
        let log = job["logs"][0].as_str().unwrap_or("");
        assert!(log.contains(needle), "{sql}: expected `{needle}` in `{log}`");
        assert_eq!(job["queries"].as_array().unwrap().len(), 0);
    }
    assert_eq!(w.spent(), 0.0, "refused queries cost nothing");
    assert_eq!(
        w.server.regulator.get("/v1/regulator/releases").ok()["releases"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_healthy(&w);
}

#[test]
fn invalid_modules_are_refused_at_submission() {
    let w = world(500, 5.0, &[]);
    let before = w.server.ledger_size();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not wasm",
            b"MZ\x90\x00 a windows executable".to_vec(),
            "not a WebAssembly binary",
        ),
        (
            "truncated",
            b"\0asm\x01\x00\x00\x00\x01\x05".to_vec(),
            "does not parse",
        ),
        ("empty", Vec::new(), "WASM module"),
        (
            "imports WASI",
            wat(
                r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                   (memory (export "memory") 1) (func (export "run") (result i32) (i32.const 0)))"#,
            ),
            "not part of the host ABI",
        ),
        (
            "wrong ABI type",
            wat(
                r#"(module (import "invis_v1" "query" (func (param i32) (result i32)))
                   (memory (export "memory") 1) (func (export "run") (result i32) (i32.const 0)))"#,
            ),
            "wrong type",
        ),
        (
            "no run export",
            wat(r#"(module (memory (export "memory") 1))"#),
            "does not export `run`",
        ),
        (
            "no memory",
            wat(r#"(module (func (export "run") (result i32) (i32.const 0)))"#),
            "memory",
        ),
        // Issue 19: modules that would be expensive to compile are refused
        // by their shape before any compilation (runtime/ABI.md, "Module
        // limits"). The first compiled for 11 s in a release build, and
        // for minutes in a debug one, before the limits.
        (
            "100,000 empty functions",
            wat(&format!(
                r#"(module (memory (export "memory") 1) (func (export "run") (result i32) (i32.const 0)) {})"#,
                "(func)".repeat(100_000)
            )),
            "more than the limit",
        ),
        (
            "blocks nested 1,000 deep",
            wat(&format!(
                r#"(module (memory (export "memory") 1) (func (export "run") (result i32) {} (i32.const 0)))"#,
                "(block ".repeat(1000) + &")".repeat(1000)
            )),
            "nests blocks",
        ),
        (
            "a start function that loops",
            wat(
                r#"(module (memory (export "memory") 1) (func $s (loop (br 0))) (start $s)
                   (func (export "run") (result i32) (i32.const 0)))"#,
            ),
            "start function",
        ),
    ];
    for (what, module, needle) in cases {
        let r = w.developer.post_raw(&w.jobs_path(), &module, "application/wasm");
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(r.message().contains(needle), "{what}: {}", r.message());
    }
    assert_eq!(
        w.developer.post_announced(&w.jobs_path(), 17 << 20),
        413,
        "oversized module"
    );
    assert_eq!(
        w.server.ledger_size(),
        before,
        "nothing recorded for refused modules"
    );
    assert_healthy(&w);
}

#[test]
fn hostile_jobs_are_stopped_and_the_server_keeps_serving() {
    let w = world(
        500,
        5.0,
        &[
            "--job-timeout-ms",
            "3000",
            "--job-fuel",
            "200000000",
            "--job-memory-mib",
            "16",
        ],
    );
    let forever = wat(r#"(module (memory (export "memory") 1)
        (func (export "run") (result i32) (loop $l (br $l)) (i32.const 0)))"#);
    let job = w.run(&forever);
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["kind"], "out_of_fuel", "{job}");

    let bomb = wat(r#"(module (memory (export "memory") 1)
        (func (export "run") (result i32)
          (loop $l (if (i32.ge_s (memory.grow (i32.const 16)) (i32.const 0)) (then (br $l))))
          (unreachable)))"#);
    let job = w.run(&bomb);
    assert_eq!(job["error"]["kind"], "memory_limit", "{job}");

    let recursion = wat(r#"(module (memory (export "memory") 1)
        (func $f (param i32) (result i32) (call $f (i32.add (local.get 0) (i32.const 1))))
        (func (export "run") (result i32) (call $f (i32.const 0))))"#);
    let job = w.run(&recursion);
    assert_eq!(job["error"]["kind"], "guest_trap", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stack overflow"),
        "{job}"
    );

    let trap =
        wat(r#"(module (memory (export "memory") 1) (func (export "run") (result i32) (unreachable)))"#);
    assert_eq!(w.run(&trap)["error"]["kind"], "guest_trap");

    let out_of_bounds = wat(r#"(module
        (import "invis_v1" "query" (func $q (param i32 i32) (result i64)))
        (memory (export "memory") 1)
        (func (export "run") (result i32) (i32.wrap_i64 (call $q (i32.const 65530) (i32.const 100)))))"#);
    let job = w.run(&out_of_bounds);
    assert_eq!(
        job["error"]["kind"], "guest_failed",
        "a bad pointer is an error code, not a crash: {job}"
    );
    assert!(job["error"]["message"].as_str().unwrap().contains("-1"));

    assert_eq!(w.spent(), 0.0);
    // After all that, a real job still runs.
    let ok = w.run(crate::fixture::BANK_JOB);
    assert_eq!(ok["status"], "succeeded", "{ok}");
    assert_healthy(&w);
}

/// A job that receives one protected result and then misbehaves is charged
/// for that one result, releases nothing, and the server keeps serving.
#[test]
fn hostile_jobs_after_a_query_are_charged_only_for_what_they_received() {
    let w = world(500, 10.0, &["--job-fuel", "200000000"]);
    let sql = "SELECT COUNT(*) AS n FROM enterprise_register";
    let then = |hostile: &str| {
        wat(&format!(
            r#"(module
  (import "invis_v1" "query" (func $query (param i32 i32) (result i64)))
  (import "invis_v1" "emit" (func $emit (param i32 i32) (result i32)))
  (import "invis_v1" "log" (func $log (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "{sql}")
  (func (export "run") (result i32)
    (if (i64.lt_s (call $query (i32.const 0) (i32.const {len})) (i64.const 0)) (then (return (i32.const 9))))
    {hostile}
    (i32.const 0)))"#,
            len = sql.len()
        ))
    };
    let cases = [
        // Output past the 1 MiB cap, 64 KiB at a time.
        (
            "(loop $l (drop (call $emit (i32.const 0) (i32.const 65536))) (br $l))",
            "limit_exceeded",
        ),
        // A flood of host calls.
        (
            "(loop $l (drop (call $log (i32.const 0) (i32.const 1))) (br $l))",
            "limit_exceeded",
        ),
        ("(unreachable)", "guest_trap"),
    ];
    for (i, (hostile, kind)) in cases.iter().enumerate() {
        let job = w.run(&then(hostile));
        assert_eq!(job["status"], "failed", "{job}");
        // It received a result, so its developer learns only that it
        // failed (I14); the regulator sees why.
        assert!(
            job["error"].is_null() && job["details_withheld"].is_string(),
            "{job}"
        );
        let id = job["id"].as_str().unwrap();
        let seen = w.server.regulator.get("/v1/regulator/jobs").ok();
        let seen = seen["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .unwrap()
            .clone();
        assert_eq!(seen["error"]["kind"], *kind, "{seen}");
        assert_ne!(
            w.developer.get(&format!("/v1/developer/jobs/{id}/output")).status,
            200,
            "a failed job releases no output"
        );
        let releases = w.server.regulator.get("/v1/regulator/releases").ok();
        assert!(
            !releases.to_string().contains(id),
            "no release entry for a failed job"
        );
        let spent = w.spent();
        assert!(
            (spent - (i + 1) as f64).abs() < 1e-9,
            "charged exactly the one query it received: {spent}"
        );
    }
    assert_healthy(&w);
}

/// Issue 19: compiling counts against the job's time limit. A module
/// inside the shape limits that cannot be compiled within it is refused
/// with 413, records nothing, and the server goes on compiling others;
/// a job shows what compiling it took, and a module compiled once is not
/// compiled (or charged) again.
#[test]
fn compilation_has_a_deadline_and_is_measured() {
    let w = world(200, 5.0, &["--job-timeout-ms", "1000"]);
    let before = w.server.ledger_size();
    // 9,999 functions sharing most of the 2 MiB of code: about 1.6 s in a
    // release build (`invis bench-compile`), several times that in a debug
    // one; the small module below compiles in tens of milliseconds.
    let body = "local.get 0 i32.const 7 i32.mul local.set 0 ".repeat(25);
    let costly = wat(&format!(
        r#"(module (memory (export "memory") 1) (func (export "run") (result i32) (i32.const 0)) {})"#,
        format!("(func (param i32) (result i32) {body} local.get 0)").repeat(9_999)
    ));
    let r = w.developer.post_raw(&w.jobs_path(), &costly, "application/wasm");
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.message()
            .contains("compiling the module took longer than 1000 ms"),
        "{}",
        r.message()
    );
    assert_eq!(w.server.ledger_size(), before, "nothing recorded");

    let small =
        wat(r#"(module (memory (export "memory") 1) (func (export "run") (result i32) (i32.const 0)))"#);
    let first = w.run(&small);
    assert_eq!(first["status"], "succeeded", "{first}");
    assert!(first["compile_ms"].as_u64().unwrap() >= 1, "{first}");
    let again = w.run(&small);
    assert_eq!(again["compile_ms"], 0, "served from the cache: {again}");
    assert_healthy(&w);
}
