//! `invis bench-runtime`: what a job costs the runtime, measured in one
//! run: cold compilation, cached instantiation, a trivial job end to end in
//! process, a WASM row function over many rows against the same function
//! written as a native DataFusion expression, and how well the time of a
//! row-function query tells a table with one target row from the same
//! table without it (invariant I14).

use anyhow::{anyhow, Result};
use runtime::{JobInput, JobLimits, Runtime};
use sandbox::arrow::array::{Float64Array, Int64Array, RecordBatch};
use sandbox::arrow::datatypes::{DataType, Field, Schema};
use sandbox::bench::median;
use sandbox::{DataPlane, JobScope, MemoryAccountant, ScopeConfig, TableData, TableVersion};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

const BANK: &[u8] = include_bytes!("../../../runtime/jobs/bank_credit/job.wasm");
const INSURER: &[u8] = include_bytes!("../../../runtime/jobs/insurer_risk/job.wasm");

fn us(seconds: f64) -> String {
    format!("{:.1} us", seconds * 1e6)
}

fn ms(seconds: f64) -> String {
    format!("{:.2} ms", seconds * 1e3)
}

/// A trivial job: emits two bytes and returns.
fn trivial() -> Result<Vec<u8>> {
    Ok(wat::parse_str(
        r#"(module
  (import "invis_v1" "emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "ok")
  (func (export "run") (result i32) (drop (call $emit (i32.const 0) (i32.const 2))) (i32.const 0)))"#,
    )?)
}

/// Runs the benchmark and prints its table.
pub async fn run(rows: usize, iterations: usize) -> Result<()> {
    let iterations = iterations.max(1);
    let hash = |b: &[u8]| hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref());

    // 1. Cold compile: a fresh runtime each time, so nothing is cached.
    let mut compile = Vec::new();
    for _ in 0..iterations.min(5) {
        let rt = Runtime::new()?;
        let t = Instant::now();
        rt.load(BANK)?;
        compile.push(t.elapsed().as_secs_f64());
    }

    // 2. Cached instantiation of the same module.
    let rt = Arc::new(Runtime::new()?);
    rt.load(BANK)?;
    let bank_hash = hash(BANK);
    let mut inst = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        rt.instantiate_only(&bank_hash)?;
        inst.push(t.elapsed().as_secs_f64());
    }

    // 3. A trivial job end to end (store, instance, run, output).
    let module = trivial()?;
    rt.load(&module)?;
    let module_hash = hash(&module);
    let handle = tokio::runtime::Handle::current();
    let (r2, m2, h2) = (rt.clone(), module.clone(), handle.clone());
    let trivial_times = tokio::task::spawn_blocking(move || -> Result<Vec<f64>> {
        let mut v = Vec::new();
        for _ in 0..1000 {
            let input = JobInput {
                scope: None,
                params: Vec::new(),
                limits: JobLimits::default(),
                handle: h2.clone(),
                cancel: Arc::new(AtomicBool::new(false)),
                module_hash: Some(module_hash.clone()),
                hold_slot: None,
                compile_ms: 0,
                tenant: Default::default(),
            };
            let t = Instant::now();
            let out = r2.run(&m2, input);
            v.push(t.elapsed().as_secs_f64());
            if out.result.as_deref() != Ok(b"ok".as_slice()) {
                return Err(anyhow!("the trivial job failed: {:?}", out.result));
            }
        }
        Ok(v)
    })
    .await??;

    // 4. Row function vs native expression over `rows` rows.
    let f = rt.row_function(INSURER, "coverage", (0.0, 1.0))?;
    let native = "CASE WHEN employees > 0 AND insured >= 0 THEN LEAST(insured / employees, 1.0) END";
    let (wasm, native) = sandbox::bench::row_function_vs_native(f, native, rows, iterations).await?;

    println!("invis bench-runtime (medians; this machine)");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| cold compile of the bank job ({} KiB) | {} |",
        BANK.len() / 1024,
        ms(median(compile))
    );
    println!(
        "| cached instantiation (pooling allocator) | {} (target <= 100 us) |",
        us(median(inst))
    );
    println!(
        "| trivial job end to end in process | {} |",
        us(median(trivial_times))
    );
    println!("| SUM(row function) over {rows} rows, WASM | {} |", ms(wasm));
    println!("| same function as a native expression | {} |", ms(native));
    println!(
        "| WASM / native | {:.2}x (target <= 2x) |",
        wasm / native.max(1e-9)
    );

    // 5. D against D minus one row.
    let neighbours = neighbours(&rt, rows.min(NEIGHBOUR_ROWS), iterations.max(NEIGHBOUR_REPS)).await?;
    println!();
    println!("{neighbours}");
    Ok(())
}

/// Rows of the neighbouring tables (capped: each repetition runs queries).
const NEIGHBOUR_ROWS: usize = 5_000;
/// Least number of alternating repetitions per comparison.
const NEIGHBOUR_REPS: usize = 300;

/// A row function with four arms: ordinary values (1..=100) return at
/// once, `x > 100` runs 4,000 fast additions, `-1.5 <= x < 0` traps, and
/// `x < -1.5` runs 4,000 slow operations (square roots): the same fuel as
/// the additions, not the same cycles.
fn neighbour_module() -> Result<Vec<u8>> {
    let adds = "f64.const 1 f64.add ".repeat(2000);
    let roots = "f64.sqrt ".repeat(4000);
    Ok(wat::parse_str(format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "pick") (param f64) (result f64)
    (if (result f64) (f64.lt (local.get 0) (f64.const -1.5))
      (then local.get 0 f64.abs {roots})
      (else
        (if (f64.lt (local.get 0) (f64.const 0)) (then unreachable))
        (if (result f64) (f64.gt (local.get 0) (f64.const 100))
          (then local.get 0 {adds})
          (else (local.get 0))))))
  (func (export "run") (result i32) (i32.const 0)))"#
    ))?)
}

/// One table of `n` people whose `x` is `values`.
async fn neighbour_scope(values: &[f64]) -> Result<JobScope> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("pid", DataType::Int64, false),
        Field::new("x", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..values.len() as i64)),
            Arc::new(Float64Array::from(values.to_vec())),
        ],
    )?;
    let spec = serde_json::from_value(serde_json::json!({
        "name": "t", "path": "", "privacy_unit": "pid", "unit_kind": "person",
        "columns": [{"name": "pid", "rule": "tokenize"}, {"name": "x", "rule": "keep"}]
    }))?;
    let scenario: scenarios::policy::ScenarioSpec = serde_json::from_value(serde_json::json!({
        "name": "neighbours", "class": "bench", "purpose": "timing neighbouring tables",
        "tables": [{"dataset": "t", "columns": [
            {"name": "x", "ops": ["aggregate"], "bounds": [-2, 1000]},
            {"name": "pid", "ops": ["aggregate"]}
        ]}],
        "release": {"epsilon_total": 1.0e9, "epsilon_per_query": 1.0,
            "min_group_size": 5, "max_rows_per_unit": 1, "max_queries_per_job": 1000000,
            "delta_per_query": 1e-12, "delta_total": 1e-3}
    }))?;
    let accountant = Arc::new(MemoryAccountant::new(scenario.release.total_budget()));
    let cfg = ScopeConfig {
        agreement_id: "bench".into(),
        scenario,
        tables: vec![TableVersion {
            spec,
            version: "v1".into(),
            unit_unique: true,
            developer_supplied: false,
            complete_columns: vec!["pid".into(), "x".into()],
            column_ranges: vec![("x".into(), -2.0, 1000.0)],
            units: Default::default(),
            data: TableData::Batches(vec![batch]),
        }],
        token_key: sandbox::desensitize::TokenKey::new(&[7u8; 32]),
        memory_limit: 1 << 30,
        query_timeout: std::time::Duration::from_secs(60),
    };
    Ok(DataPlane::new().open(cfg, accountant).await?)
}

/// Mean and median difference of `a` minus `b`, and the accuracy of the
/// best single-threshold classifier telling them apart (0.5: chance).
fn distinguish(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|x| (*x, true))
        .chain(b.iter().map(|x| (*x, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (na, nb) = (a.len() as f64, b.len() as f64);
    // Sweep thresholds: below it say "b", above it say "a" (or the reverse).
    let (mut a_below, mut b_below, mut best) = (0.0, 0.0, 0.5f64);
    for (_, is_a) in &all {
        if *is_a {
            a_below += 1.0;
        } else {
            b_below += 1.0;
        }
        let acc = 0.5 * (b_below / nb.max(1.0) + (na - a_below) / na.max(1.0));
        best = best.max(acc).max(1.0 - acc);
    }
    (mean(a) - mean(b), median(a.to_vec()) - median(b.to_vec()), best)
}

/// Times row-function queries on D (with a target row on each costly path)
/// against D minus that row, alternating, and renders the table.
async fn neighbours(rt: &Runtime, rows: usize, reps: usize) -> Result<String> {
    let module = neighbour_module()?;
    let mut g = sandbox::sample::SplitMix64(7);
    let base: Vec<f64> = (0..rows.max(2) - 1).map(|_| (1 + g.below(100)) as f64).collect();
    let at = base.len() / 2;
    let with = |x: f64| {
        let mut v = base.clone();
        v.insert(at, x);
        v
    };
    let sql = "SELECT SUM(pick(x)) AS s FROM t";
    // What padding and traps cost: one batch of rows that all take the
    // cheap arm (padded to the bound) against one whose rows all trap.
    let f = rt.row_function(&module, "pick", (-2.0, 1e9))?;
    let batch = 8192usize;
    let (cheap, traps) = (vec![1.0; batch], vec![-1.0; batch]);
    let (mut tc, mut tt) = (Vec::new(), Vec::new());
    for _ in 0..reps.min(50) {
        for (v, slot) in [(&cheap, &mut tc), (&traps, &mut tt)] {
            let t = Instant::now();
            f.eval(&[v.as_slice()], batch).map_err(|e| anyhow!(e))?;
            slot.push(t.elapsed().as_secs_f64());
        }
    }
    let (tc, tt) = (median(tc), median(tt));
    let bound = runtime::udf::row_cost(&module, "pick").map_err(|e| anyhow!(e))?.1;
    let mut out = format!(
        "Neighbouring tables: D has {rows} rows, one of them the target; D-1 is D without it \
         ({reps} alternating repetitions each; accuracy of the best threshold on one \
         measurement, 50% = indistinguishable; A/A is D-1 against itself, the noise floor)\n\
         | measured | target row | mean D - (D-1) | median D - (D-1) | accuracy | A/A accuracy |\n|---|---|---|---|---|---|\n"
    );
    out = format!(
        "| measure | value |\n|---|---|\n\
         | a row of a function padded to its bound ({bound} instructions) | {:.2} us ({:.2} ns per instruction) |\n\
         | each trapping row beyond the first in a batch of 8192 | {:.2} us |\n\n{out}",
        tc / batch as f64 * 1e6,
        tc / (batch as f64 * bound as f64) * 1e9,
        (tt - tc) / (batch - 1) as f64 * 1e6
    );
    let minus = base.clone();
    for (label, x) in [
        ("ordinary value", 50.0),
        ("expensive arm (4,000 additions)", 1000.0),
        ("trap", -1.0),
        ("slow operations (4,000 square roots)", -2.0),
    ] {
        let d = with(x);
        // The row function alone, on the columns.
        let f = rt.row_function(&module, "pick", (-2.0, 1e9))?;
        let mut times: [Vec<f64>; 3] = Default::default();
        for i in 0..reps {
            let order: [(&Vec<f64>, usize); 3] = if i % 2 == 0 {
                [(&d, 0), (&minus, 1), (&minus, 2)]
            } else {
                [(&minus, 1), (&minus, 2), (&d, 0)]
            };
            for (v, which) in order {
                let t = Instant::now();
                f.eval(&[v.as_slice()], v.len()).map_err(|e| anyhow!(e))?;
                if let Some(slot) = times.get_mut(which) {
                    slot.push(t.elapsed().as_secs_f64());
                }
            }
        }
        let [td, tm, tm2] = &times;
        let (mean, med, acc) = distinguish(td, tm);
        let (_, _, aa) = distinguish(tm, tm2);
        out.push_str(&format!(
            "| row function alone | {label} | {} | {} | {:.1}% | {:.1}% |\n",
            us(mean),
            us(med),
            acc * 100.0,
            aa * 100.0
        ));
        // The whole query through the sandbox (policy, bounding, noise).
        let (sd, sm, sm2) = (
            neighbour_scope(&d).await?,
            neighbour_scope(&minus).await?,
            neighbour_scope(&minus).await?,
        );
        for s in [&sd, &sm, &sm2] {
            s.register_row_function(rt.row_function(&module, "pick", (-2.0, 1e9))?)?;
        }
        let mut times: [Vec<f64>; 3] = Default::default();
        for i in 0..reps {
            let order: [(&JobScope, usize); 3] = if i % 2 == 0 {
                [(&sd, 0), (&sm, 1), (&sm2, 2)]
            } else {
                [(&sm, 1), (&sm2, 2), (&sd, 0)]
            };
            for (s, which) in order {
                let t = Instant::now();
                s.query(sql).await?;
                if let Some(slot) = times.get_mut(which) {
                    slot.push(t.elapsed().as_secs_f64());
                }
            }
        }
        let [qd, qm, qm2] = &times;
        let (mean, med, acc) = distinguish(qd, qm);
        let (_, _, aa) = distinguish(qm, qm2);
        out.push_str(&format!(
            "| query through the sandbox | {label} | {} | {} | {:.1}% | {:.1}% |\n",
            us(mean),
            us(med),
            acc * 100.0,
            aa * 100.0
        ));
    }
    Ok(out)
}
