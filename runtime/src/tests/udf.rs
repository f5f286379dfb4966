//! Guest row functions: stateless ones feed aggregates at native-like
//! cost, stateful or unbounded ones are refused at registration, and a trap
//! on one row nulls that row instead of failing the query.

use super::rt;
use crate::{JobInput, JobLimits};
use sandbox::arrow::array::{Array, Int64Array, RecordBatch};
use sandbox::arrow::datatypes::{DataType, Field, Schema};
use sandbox::desensitize::TokenKey;
use sandbox::{DataPlane, JobScope, MemoryAccountant, ScopeConfig, TableData, TableVersion};
use serde_json::json;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// 1,000 people with `x = 1..=1000`.
pub(super) async fn scope() -> (JobScope, Arc<MemoryAccountant>) {
    scope_of(1000, std::time::Duration::from_secs(60)).await
}

/// `n` people with `x = 1..=n`, queries limited to `query_timeout`.
async fn scope_of(n: i64, query_timeout: std::time::Duration) -> (JobScope, Arc<MemoryAccountant>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("pid", DataType::Int64, false),
        Field::new("x", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(Int64Array::from_iter_values(1..=n)),
        ],
    )
    .unwrap();
    let spec = serde_json::from_value(json!({
        "name": "t", "path": "", "privacy_unit": "pid", "unit_kind": "person",
        "columns": [{"name": "pid", "rule": "tokenize"}, {"name": "x", "rule": "keep"}]
    }))
    .unwrap();
    let scenario: scenarios::policy::ScenarioSpec = serde_json::from_value(json!({
        "name": "udf", "class": "test", "purpose": "testing row functions",
        "tables": [{"dataset": "t", "columns": [
            {"name": "x", "ops": ["aggregate", "filter", "group"], "bounds": [0, n]},
            {"name": "pid", "ops": ["aggregate"]}
        ]}],
        "release": {"epsilon_total": 1000.0, "epsilon_per_query": 10.0,
            "min_group_size": 5, "max_rows_per_unit": 1, "max_queries_per_job": 100,
            "delta_per_query": 1e-7, "delta_total": 1e-3}
    }))
    .unwrap();
    let accountant = Arc::new(MemoryAccountant::new(scenario.release.total_budget()));
    let cfg = ScopeConfig {
        agreement_id: "ag".into(),
        scenario,
        tables: vec![TableVersion {
            spec,
            version: "v1".into(),
            unit_unique: true,
            developer_supplied: false,
            complete_columns: vec!["pid".into(), "x".into()],
            column_ranges: vec![("x".into(), 1.0, n as f64)],
            units: Default::default(),
            data: TableData::Batches(vec![batch]),
        }],
        token_key: TokenKey::new(&[1u8; 32]),
        memory_limit: 1 << 30,
        query_timeout,
    };
    let scope = DataPlane::new().open(cfg, accountant.clone()).await.unwrap();
    (scope, accountant)
}

/// A job that registers row function `name` with bounds `[lo, hi]`, runs
/// `sql` and emits the Arrow IPC result, or emits `ERR <code> <message>`.
fn job(funcs: &str, name: &str, lo: f64, hi: f64, sql: &str) -> Vec<u8> {
    job_then(funcs, name, lo, hi, sql, 0)
}

/// Like [`job`], spinning `spin` iterations of a loop after the query.
fn job_then(funcs: &str, name: &str, lo: f64, hi: f64, sql: &str, spin: u32) -> Vec<u8> {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    wat::parse_str(format!(
        r#"(module
  (import "invis_v1" "query" (func $query (param i32 i32) (result i64)))
  (import "invis_v1" "result_read" (func $result_read (param i32 i32) (result i32)))
  (import "invis_v1" "error_read" (func $error_read (param i32 i32) (result i32)))
  (import "invis_v1" "emit" (func $emit (param i32 i32) (result i32)))
  (import "invis_v1" "udf_register" (func $udf_register (param i32 i32 f64 f64) (result i32)))
  (memory (export "memory") 4)
  (global $g (mut f64) (f64.const 0))
  (data (i32.const 0) "{name}")
  (data (i32.const 64) "{sql}")
  (func $fail (param $code i32) (result i32)
    (local $n i32)
    (i32.store (i32.const 2048) (i32.const 0x20525245))
    (local.set $n (call $error_read (i32.const 2052) (i32.const 1000)))
    (drop (call $emit (i32.const 2048) (i32.add (local.get $n) (i32.const 4))))
    (i32.const 0))
  {funcs}
  (func (export "run") (result i32)
    (local $r i32) (local $n i64)
    (local.set $r (call $udf_register (i32.const 0) (i32.const {name_len}) (f64.const {lo}) (f64.const {hi})))
    (if (i32.ne (local.get $r) (i32.const 0)) (then (return (call $fail (local.get $r)))))
    (local.set $n (call $query (i32.const 64) (i32.const {sql_len})))
    (if (i64.lt_s (local.get $n) (i64.const 0)) (then (return (call $fail (i32.wrap_i64 (local.get $n))))))
    (local.set $r (i32.const {spin_i32}))
    (block $spun (loop $spin
      (br_if $spun (i32.eqz (local.get $r)))
      (local.set $r (i32.sub (local.get $r) (i32.const 1)))
      (br $spin)))
    (drop (call $result_read (i32.const 65536) (i32.wrap_i64 (local.get $n))))
    (drop (call $emit (i32.const 65536) (i32.wrap_i64 (local.get $n))))
    (i32.const 0)))"#,
        name = esc(name),
        sql = esc(sql),
        name_len = name.len(),
        sql_len = sql.len(),
        spin_i32 = spin as i32,
    ))
    .unwrap()
}

enum Got {
    Table(RecordBatch),
    Refused(String),
}

fn run_job(bytes: &[u8]) -> (Got, crate::JobOutcome) {
    let (r, t) = rt();
    let (scope, _acc) = t.block_on(scope());
    let out = r.run(bytes, input(&t, scope, JobLimits::default()));
    (got(&out), out)
}

pub(super) fn input(t: &tokio::runtime::Runtime, scope: JobScope, limits: JobLimits) -> JobInput {
    JobInput {
        scope: Some(Arc::new(scope)),
        params: Vec::new(),
        limits,
        handle: t.handle().clone(),
        cancel: Arc::new(AtomicBool::new(false)),
        module_hash: None,
        hold_slot: None,
        compile_ms: 0,
        tenant: Default::default(),
    }
}

fn got(out: &crate::JobOutcome) -> Got {
    let bytes = out.result.clone().expect("the job finishes");
    match bytes.strip_prefix(b"ERR ") {
        Some(msg) => Got::Refused(String::from_utf8_lossy(msg).into_owned()),
        None => {
            let mut reader =
                sandbox::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
                    .unwrap();
            Got::Table(reader.next().unwrap().unwrap())
        }
    }
}

fn value(b: &RecordBatch, col: usize) -> f64 {
    let c = b.column(col);
    if let Some(a) = c.as_any().downcast_ref::<Int64Array>() {
        return a.value(0) as f64;
    }
    c.as_any()
        .downcast_ref::<sandbox::arrow::array::Float64Array>()
        .unwrap()
        .value(0)
}

const DOUBLE: &str =
    r#"(func (export "double") (param f64) (result f64) (f64.mul (local.get 0) (f64.const 2)))"#;

#[test]
fn a_stateless_row_function_feeds_sums() {
    // Sum of 2x over x = 1..=1000 is 1,001,000 (noise at epsilon 10 is small).
    let (got, out) = run_job(&job(
        DOUBLE,
        "double",
        0.0,
        2000.0,
        "SELECT SUM(double(x)) AS s FROM t",
    ));
    let b = match got {
        Got::Table(b) => b,
        Got::Refused(m) => panic!("refused: {m}"),
    };
    let s = value(&b, 0);
    assert!((s - 1_001_000.0).abs() < 5_000.0, "sum {s}");
    assert_eq!(out.releases.len(), 1);
}

#[test]
fn a_row_function_that_lies_about_its_range_is_clamped() {
    let big = r#"(func (export "big") (param f64) (result f64) (f64.const 1e12))"#;
    let (got, _) = run_job(&job(big, "big", 0.0, 1.0, "SELECT SUM(big(x)) AS s FROM t"));
    let b = match got {
        Got::Table(b) => b,
        Got::Refused(m) => panic!("refused: {m}"),
    };
    let s = value(&b, 0);
    assert!((s - 1000.0).abs() < 50.0, "clamped sum {s}");
}

#[test]
fn a_trap_on_one_row_nulls_that_row_only() {
    // Traps (unreachable) on rows with x > 900: COUNT of non-null is ~900.
    let picky = r#"(func (export "picky") (param f64) (result f64)
        (if (f64.gt (local.get 0) (f64.const 900)) (then unreachable))
        (local.get 0))"#;
    let (got, out) = run_job(&job(
        picky,
        "picky",
        0.0,
        1000.0,
        "SELECT COUNT(picky(x)) AS n FROM t",
    ));
    let b = match got {
        Got::Table(b) => b,
        Got::Refused(m) => panic!("refused: {m}"),
    };
    let n = value(&b, 0);
    assert!((n - 900.0).abs() < 10.0, "count {n}");
    assert!(out.result.is_ok());
}

#[test]
fn stateful_unbounded_or_host_calling_row_functions_are_refused() {
    let cases = [
        (
            r#"(func (export "f") (param f64) (result f64) (global.set $g (local.get 0)) (global.get $g))"#,
            "not stateless",
        ),
        (
            r#"(func (export "f") (param f64) (result f64) (f64.store (i32.const 0) (local.get 0)) (local.get 0))"#,
            "not stateless",
        ),
        (
            r#"(func (export "f") (param f64) (result f64) (loop $l (br $l)) (local.get 0))"#,
            "a loop",
        ),
        (
            r#"(func $f (export "f") (param f64) (result f64) (call $f (local.get 0)))"#,
            "recursive",
        ),
        (
            r#"(func (export "f") (param f64) (result f64) (drop (call $emit (i32.const 0) (i32.const 1))) (local.get 0))"#,
            "calls the host",
        ),
        (
            r#"(func (export "f") (param i32) (result f64) (f64.const 0))"#,
            "must have type",
        ),
        (
            r#"(func (export "g") (param f64) (result f64) (local.get 0))"#,
            "exports no function",
        ),
    ];
    for (funcs, why) in cases {
        let (got, out) = run_job(&job(funcs, "f", 0.0, 1.0, "SELECT SUM(f(x)) AS s FROM t"));
        let Got::Refused(msg) = got else {
            panic!("{funcs}: accepted")
        };
        assert!(msg.contains(why), "{funcs}: {msg}");
        assert!(out.releases.is_empty(), "nothing released or charged");
    }
}

#[test]
fn row_functions_cannot_group_filter_or_shadow_builtins() {
    for (sql, name, why) in [
        (
            "SELECT double(x) AS d, COUNT(*) AS n FROM t GROUP BY double(x)",
            "double",
            "GROUP BY",
        ),
        (
            "SELECT COUNT(*) AS n FROM t WHERE double(x) > 10",
            "double",
            "WHERE",
        ),
    ] {
        let (got, out) = run_job(&job(DOUBLE, name, 0.0, 2000.0, sql));
        let Got::Refused(msg) = got else {
            panic!("{sql}: accepted")
        };
        assert!(msg.contains(why), "{sql}: {msg}");
        assert!(out.releases.is_empty());
    }
    let sum = r#"(func (export "sum") (param f64) (result f64) (local.get 0))"#;
    let (got, _) = run_job(&job(sum, "sum", 0.0, 1.0, "SELECT COUNT(*) AS n FROM t"));
    let Got::Refused(msg) = got else {
        panic!("shadowing accepted")
    };
    assert!(msg.contains("already exists"), "{msg}");
}

#[test]
fn the_insurer_example_row_function_is_stateless() {
    let bytes = include_bytes!("../../jobs/insurer_risk/job.wasm");
    assert_eq!(crate::udf::check_stateless(bytes, "coverage"), Ok(2));
    // `run` writes memory and loops: it could never be a row function.
    assert!(crate::udf::check_stateless(bytes, "run").is_err());
}

/// A row function whose arms differ wildly in cost: `x < 0` traps, `x > 100`
/// runs `ops` additions, anything else returns `x` at once.
fn branchy(ops: usize) -> String {
    let adds = "f64.const 1 f64.add ".repeat(ops);
    format!(
        r#"(func (export "pick") (param f64) (result f64)
        (if (f64.lt (local.get 0) (f64.const 0)) (then unreachable))
        (if (result f64) (f64.gt (local.get 0) (f64.const 100))
          (then local.get 0 {adds})
          (else (local.get 0))))"#
    )
}

#[test]
fn every_batch_costs_the_same_fuel_whatever_branch_or_trap_its_rows_take() {
    let (r, _t) = rt();
    let module = wat::parse_str(format!(
        r#"(module (memory (export "memory") 1) {} (func (export "run") (result i32) (i32.const 0)))"#,
        branchy(2000)
    ))
    .unwrap();
    let host = r.udf_host(&module).unwrap();
    let f = host.add("pick", (0.0, 1e9)).unwrap();
    // Fuel of one evaluation, and its values.
    let eval = |xs: &[f64]| {
        let before = host.fuel_used();
        let out = sandbox::udf::RowFunction::eval(&f, &[xs], xs.len()).unwrap();
        (host.fuel_used() - before, out)
    };
    // One batch and a half (the driver works 8192 rows at a time).
    let rows = 12_000;
    let cheap = vec![1.0; rows];
    let dear = vec![1000.0; rows];
    let traps = vec![-1.0; rows];
    let mut one_dear = cheap.clone();
    one_dear[5000] = 1000.0;
    let mut one_trap = cheap.clone();
    one_trap[5000] = -1.0;
    let mut mixed = cheap.clone();
    for (i, x) in mixed.iter_mut().enumerate() {
        *x = [1.0, 1000.0, -1.0][i % 3];
    }
    let (fuel, out) = eval(&cheap);
    assert!(out.iter().all(|v| *v == 1.0));
    for (what, xs) in [
        ("every row on the expensive arm", &dear),
        ("every row trapping", &traps),
        ("one expensive row", &one_dear),
        ("one trapping row", &one_trap),
        ("a mix of all three", &mixed),
    ] {
        let (f2, out) = eval(xs);
        assert_eq!(f2, fuel, "{what}: fuel differs from the cheap arm's");
        for (x, v) in xs.iter().zip(&out) {
            match *x {
                x if x < 0.0 => assert!(v.is_nan(), "{what}: a trapping row is null"),
                x if x > 100.0 => assert_eq!(*v, x + 2000.0, "{what}"),
                x => assert_eq!(*v, x, "{what}"),
            }
        }
    }
    // The expensive arm alone is 4,000 operators: the fuel is the padding,
    // not an accident of three cheap inputs.
    assert!(fuel >= rows as u64 * 4000, "fuel {fuel}");
    // Fewer rows cost proportionally less (the bound is per row).
    let (small, _) = eval(&cheap[..100]);
    let (small_trap, _) = eval(&traps[..100]);
    assert_eq!(small, small_trap);
    assert!(small < fuel / 50);
}

/// A row function that costs about `ops` operators whatever the row.
fn slow(ops: usize) -> String {
    let adds = "f64.const 1 f64.add ".repeat(ops / 2);
    format!(r#"(func (export "slow") (param f64) (result f64) local.get 0 {adds})"#)
}

#[test]
fn a_query_longer_than_the_job_deadline_does_not_fail_the_job() {
    // 100,000 rows of ~9,000 operators each take far longer than the job's
    // 50 ms; after the query the guest spins a little, within its own time.
    let (r, t) = rt();
    let (scope, _acc) = t.block_on(scope_of(100_000, std::time::Duration::from_secs(60)));
    let limits = JobLimits {
        timeout_ms: 50,
        ..JobLimits::default()
    };
    let bytes = job_then(
        &slow(9000),
        "slow",
        0.0,
        1.0,
        "SELECT COUNT(slow(x)) AS n FROM t",
        2_000_000,
    );
    // Compiled at submission, as the gateway does: compiling counts
    // against the job's time limit, and 50 ms would not cover it.
    r.load(&bytes).unwrap();
    let started = std::time::Instant::now();
    let out = r.run(&bytes, input(&t, scope, limits));
    let took = started.elapsed();
    assert!(out.result.is_ok(), "{:?} after {took:?}", out.result);
    // Not a timing claim: only that the test did what it says (the run
    // outlasted the job's deadline several times over).
    assert!(took.as_millis() > 200, "the query took only {took:?}");
    let b = match got(&out) {
        Got::Table(b) => b,
        Got::Refused(m) => panic!("refused: {m}"),
    };
    let n = value(&b, 0);
    assert!((n - 100_000.0).abs() < 100.0, "count {n}");
    assert_eq!(out.usage.wall_ms % 1000, 0, "wall time is coarse");
    assert!(out.usage.wall_ms >= 1000);

    // The deadline still holds after the query: a guest that spins for
    // seconds once its query is back is stopped.
    let (scope, _acc) = t.block_on(scope_of(100_000, std::time::Duration::from_secs(60)));
    let bytes = job_then(
        &slow(9000),
        "slow",
        0.0,
        1.0,
        "SELECT COUNT(slow(x)) AS n FROM t",
        u32::MAX,
    );
    r.load(&bytes).unwrap();
    let out = r.run(&bytes, input(&t, scope, limits));
    assert_eq!(out.result, Err(crate::JobError::DeadlineExceeded));
    assert_eq!(out.releases.len(), 1, "the query was answered first");
}

#[test]
fn a_row_function_past_the_query_limit_releases_an_empty_input_and_the_job_goes_on() {
    // 100,000 rows of ~9,000 operators cannot finish in 100 ms: the row
    // function is interrupted at the query's limit, the sandbox releases
    // its answer on an empty input (a noisy count near 0), and the job
    // succeeds.
    let (r, t) = rt();
    let (scope, _acc) = t.block_on(scope_of(100_000, std::time::Duration::from_millis(100)));
    let limits = JobLimits {
        timeout_ms: 50,
        query_timeout_ms: 100,
        ..JobLimits::default()
    };
    let bytes = job(&slow(9000), "slow", 0.0, 1.0, "SELECT COUNT(slow(x)) AS n FROM t");
    r.load(&bytes).unwrap();
    let out = r.run(&bytes, input(&t, scope, limits));
    assert!(out.result.is_ok(), "{:?}", out.result);
    let b = match got(&out) {
        Got::Table(b) => b,
        Got::Refused(m) => panic!("refused: {m}"),
    };
    let n = value(&b, 0);
    assert!(n.abs() < 100.0, "count {n} is not the empty input's");
    assert_eq!(out.releases.len(), 1, "released and charged");
}

#[test]
fn cancelling_a_job_inside_a_row_function_query_stops_it() {
    let (r, t) = rt();
    let (scope, _acc) = t.block_on(scope_of(100_000, std::time::Duration::from_secs(60)));
    let bytes = job(&slow(9000), "slow", 0.0, 1.0, "SELECT COUNT(slow(x)) AS n FROM t");
    let inp = input(&t, scope, JobLimits::default());
    let cancel = inp.cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let out = r.run(&bytes, inp);
    assert!(
        matches!(out.result, Err(crate::JobError::Cancelled(_))),
        "{:?}",
        out.result
    );
}

#[test]
fn a_row_function_over_the_cost_bound_is_refused() {
    let (got, _) = run_job(&job(
        &slow(2 * crate::udf::MAX_ROW_COST as usize),
        "slow",
        0.0,
        1.0,
        "SELECT COUNT(slow(x)) AS n FROM t",
    ));
    let Got::Refused(msg) = got else {
        panic!("accepted")
    };
    assert!(msg.contains("instructions per row"), "{msg}");
}
