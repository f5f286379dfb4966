//! Time seen from outside is coarse (I14): a job's end becomes visible
//! only at a whole number of time quanta after its start, however long the
//! data made it run, and what a developer sees of the ledger's growth and
//! of its budget moves at the publication pace, not at each query.

use crate::fixture::world;
use chrono::{DateTime, Utc};
use invis_tests::{run_invis, wat};
use scenarios::ledger::SignedCheckpoint;
use serde_json::Value;
use std::time::{Duration, Instant};

/// A job that spins `spins[0]` iterations, then for each further entry
/// runs a query and spins that many, and returns `status`.
fn spinning(queries_then_spins: &[u64], first: u64, status: i32) -> Vec<u8> {
    let sql = "SELECT COUNT(*) AS n FROM enterprise_register";
    let mut body = format!("(call $spin (i64.const {first}))\n");
    for spins in queries_then_spins {
        body.push_str(&format!(
            "(if (i64.lt_s (call $query (i32.const 0) (i32.const {len})) (i64.const 0)) (then (return (i32.const 9))))\n\
             (call $spin (i64.const {spins}))\n",
            len = sql.len()
        ));
    }
    wat(&format!(
        r#"(module
  (import "invis_v1" "query" (func $query (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{sql}")
  (func $spin (param $n i64)
    (block $done (loop $l
      (br_if $done (i64.le_s (local.get $n) (i64.const 0)))
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br $l))))
  (func (export "run") (result i32)
    {body}
    (i32.const {status})))"#
    ))
}

fn time(v: &Value, key: &str) -> DateTime<Utc> {
    v[key]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Milliseconds from `started_at` to `finished_at`, exactly.
fn ran_ms(job: &Value) -> f64 {
    let d = time(job, "finished_at") - time(job, "started_at");
    d.num_microseconds().expect("duration") as f64 / 1000.0
}

/// Jobs of different lengths, with and without queries, answered to
/// `?wait=true` or polled: each is seen to end at a whole number of
/// quanta after it started, and never earlier.
#[test]
fn job_ends_are_seen_at_whole_time_quanta() {
    const QUANTUM_MS: f64 = 1000.0;
    let w = world(
        300,
        10.0,
        &[
            "--time-quantum-ms",
            "1000",
            "--checkpoint-every-ms",
            "1000",
            "--job-fuel",
            "100000000000",
        ],
    );
    let mut quanta = Vec::new();
    for (queries, first) in [
        (&[][..], 0),
        (&[][..], 150_000_000),
        (&[0][..], 0),
        (&[150_000_000][..], 0),
        (&[0, 900_000_000][..], 50_000_000),
    ] {
        let sent = Utc::now();
        let job = w.run(&spinning(queries, first, 0));
        let answered = Utc::now();
        assert_eq!(job["status"], "succeeded", "{job}");
        let ran = ran_ms(&job);
        let k = (ran / QUANTUM_MS).round();
        assert!(k >= 1.0, "{ran} ms: {job}");
        assert!(
            (ran - k * QUANTUM_MS).abs() < 1.0,
            "the job was seen to end {ran} ms after it started, not at a whole quantum"
        );
        // The answer did not come before the end it reports.
        assert!(answered >= time(&job, "finished_at"), "{job}");
        assert!(time(&job, "started_at") >= sent - chrono::Duration::milliseconds(5));
        quanta.push(k);
    }
    assert!(
        quanta.iter().any(|k| *k >= 2.0),
        "some job ran past one quantum: {quanta:?}"
    );

    // Polled instead of waited for: the status turns final at the quantum.
    let r = w.developer.post_raw(
        &format!("/v1/developer/agreements/{}/jobs", w.agreement),
        &spinning(&[100_000_000], 0, 3),
        "application/wasm",
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (job, seen) = loop {
        let j = w.developer.get(&format!("/v1/developer/jobs/{id}")).ok();
        let now = Utc::now();
        if !["queued", "running"].contains(&j["status"].as_str().unwrap_or("")) {
            break (j, now);
        }
        assert!(j["finished_at"].is_null(), "{j}");
        assert!(Instant::now() < deadline, "job {id} did not end");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job.get("details_withheld").is_some(),
        "it received a result: {job}"
    );
    let ran = ran_ms(&job);
    assert!(
        (ran - (ran / QUANTUM_MS).round() * QUANTUM_MS).abs() < 1.0,
        "{ran} ms"
    );
    assert!(
        seen >= time(&job, "finished_at"),
        "seen final before its end: {job}"
    );
}

/// A developer polling the ledger checkpoint, the proofs and its budget
/// while its job runs three queries sees them move only at the
/// publication pace, never at each query; the regulator sees the ledger
/// as it stands. The released job's receipt still verifies offline.
#[test]
fn polling_the_ledger_and_the_budget_does_not_time_a_jobs_queries() {
    const PUBLISH_MS: u128 = 1000;
    let w = world(
        300,
        10.0,
        &[
            "--time-quantum-ms",
            "500",
            "--checkpoint-every-ms",
            "1000",
            "--job-fuel",
            "100000000000",
        ],
    );
    let dev = &w.developer;
    let checkpoint = |api: &invis_tests::Api| -> SignedCheckpoint {
        serde_json::from_value(api.get("/v1/ledger/checkpoint").ok()).expect("checkpoint")
    };
    let spent_before = w.spent();
    let r = dev.post_raw(
        &format!("/v1/developer/agreements/{}/jobs", w.agreement),
        &spinning(&[60_000_000, 60_000_000, 60_000_000], 0, 0),
        "application/wasm",
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let mut changes: Vec<(Duration, u64)> = Vec::new();
    let mut last = checkpoint(dev).checkpoint.size;
    let mut ahead = false;
    let job = loop {
        let size = checkpoint(dev).checkpoint.size;
        if size != last {
            changes.push((started.elapsed(), size));
            last = size;
        }
        // Proofs beyond the published size are refused to the developer.
        let beyond = dev.get(&format!(
            "/v1/ledger/proof/consistency?first=1&second={}",
            size + 1
        ));
        let current = checkpoint(&w.server.regulator).checkpoint.size;
        // Only when no checkpoint was published meanwhile (publication is
        // monotonic: the same size after the request means it held during it).
        let published = checkpoint(dev).checkpoint.size;
        if current > size && published == size {
            ahead = true;
            assert_eq!(beyond.status, 400, "{}", beyond.text());
            assert!(beyond.message().contains("published"), "{}", beyond.text());
        }
        // The budget is read before the status: a job still running after
        // the read was running during it (it ended between the two reads
        // otherwise, and its charges may then be shown).
        let spent_now = w.spent();
        let j = dev.get(&format!("/v1/developer/jobs/{id}")).ok();
        if !["queued", "running"].contains(&j["status"].as_str().unwrap_or("")) {
            break j;
        }
        // The budget does not move while the job runs.
        assert_eq!(spent_now, spent_before, "charges shown while the job runs");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "job {id} did not end"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(w.spent(), spent_before + 3.0, "all three charges at the end");
    assert!(
        ahead,
        "the regulator saw the ledger ahead of the published checkpoint"
    );
    // The query entries were appended hundreds of milliseconds apart; the
    // developer saw the ledger move at most once per publication period.
    let regulator_feed = w.server.regulator.get("/v1/regulator/ledger").text();
    let query_entries = regulator_feed
        .lines()
        .filter(|l| l.contains("query.") && l.contains(&id))
        .count();
    assert_eq!(query_entries, 6, "three charges and three releases");
    for pair in changes.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap.as_millis() >= PUBLISH_MS * 3 / 4,
            "the published ledger moved twice within {} ms: {changes:?}",
            gap.as_millis()
        );
    }
    // The stored checkpoints a developer can list are the published ones.
    let listed = dev.get("/v1/ledger/checkpoints").ok();
    let all = w.server.regulator.get("/v1/ledger/checkpoints").ok();
    assert!(listed["checkpoints"].as_array().unwrap().len() <= all["checkpoints"].as_array().unwrap().len());

    // The released job's receipt is proven under a checkpoint that reveals
    // no more than the release itself or a publication, even when the
    // ledger has moved on since, and verifies.
    w.server.party("Late Provider", "provider");
    let receipt = dev.get(&format!("/v1/developer/jobs/{id}/receipt")).ok();
    let seq = receipt["seq"].as_u64().unwrap();
    let size = receipt["checkpoint"]["checkpoint"]["size"].as_u64().unwrap();
    let published: Vec<u64> = dev.get("/v1/ledger/checkpoints").ok()["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["checkpoint"]["size"].as_u64().unwrap())
        .collect();
    assert!(size == seq + 1 || published.contains(&size), "{receipt}");
    let dir = &w.server.dir;
    let rpath = dir.join("timing-receipt.json");
    std::fs::write(&rpath, receipt.to_string()).unwrap();
    let output = dev.get(&format!("/v1/developer/jobs/{id}/output"));
    let opath = dir.join("timing-output.bin");
    std::fs::write(&opath, &output.body).unwrap();
    let key = dev.get("/v1/ledger/public-key").ok()["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out, err) = run_invis(&[
        "verify-receipt",
        &rpath.to_string_lossy(),
        "--public-key",
        &key,
        "--output",
        &opath.to_string_lossy(),
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
}
