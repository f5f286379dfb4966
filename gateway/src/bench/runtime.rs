//! `invis bench-runtime`: what a job costs the runtime, measured in one
//! run: cold compilation, cached instantiation, a trivial job end to end in
//! process, and a WASM row function over many rows against the same
//! function written as a native DataFusion expression.

use anyhow::{anyhow, Result};
use runtime::{JobInput, JobLimits, Runtime};
use sandbox::bench::median;
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
    Ok(())
}
