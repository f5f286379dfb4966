//! `invis bench-load`: fair share under a hostile tenant (issue "Fair
//! share"). One developer (its own organization) submits only jobs that
//! loop forever; three others submit ordinary jobs (7 in 9 of one query, 2
//! in 9 of three). For each number of clients and share of looping
//! clients, a fresh server (in this process, on 127.0.0.1, the demo's
//! data) is measured: ordinary jobs' latency percentiles against their
//! idle median, their throughput, refusals (429), server errors (5xx), how
//! every looping job ended, the ledger's verification with one finish
//! entry per job, and the process's peak RSS.

use crate::client::Client;
use crate::demo::{self, data};
use crate::server::{bind, bootstrap, serve};
use crate::state::{AppState, Config};
use crate::store::Table;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Client counts to measure.
    pub clients: Vec<usize>,
    /// Shares of looping clients to measure, in percent.
    pub loop_percent: Vec<usize>,
    /// Seconds of load per configuration.
    pub secs: u64,
    /// Enterprises in the generated data.
    pub enterprises: usize,
    /// The time quantum jobs' visible ends are rounded to, in ms.
    pub quantum_ms: u64,
}

const ONE_QUERY: &str = "SELECT industry, COUNT(*) AS n FROM enterprise_register GROUP BY industry";
const THREE_QUERIES: [&str; 3] = [
    "SELECT industry, COUNT(*) AS n FROM enterprise_register GROUP BY industry",
    "SELECT district, AVG(employees) AS e FROM enterprise_register GROUP BY district",
    "SELECT district, SUM(employees) AS s FROM enterprise_register GROUP BY district",
];
const LOOP: &str = r#"(module (memory (export "memory") 1) (func (export "run") (result i32) (loop $l (br $l)) (i32.const 0)))"#;

/// A job module that runs `queries` in turn and succeeds whatever they
/// return (a refusal, when the budget is spent, is a fast answer too).
fn queries_job(queries: &[&str]) -> Result<Vec<u8>> {
    let mut data = String::new();
    let mut calls = String::new();
    let mut at = 0usize;
    for q in queries {
        data.push_str(&format!(
            "(data (i32.const {at}) \"{}\")\n",
            q.replace('"', "\\22")
        ));
        calls.push_str(&format!(
            "(drop (call $query (i32.const {at}) (i32.const {})))\n",
            q.len()
        ));
        at += q.len() + 16;
    }
    let wat = format!(
        r#"(module
  (import "invis_v1" "query" (func $query (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  {data}
  (func (export "run") (result i32)
    {calls}
    (i32.const 0)))"#
    );
    Ok(wat::parse_str(&wat)?)
}

/// One configuration's measurements.
#[derive(Debug, Default, Clone)]
struct Measured {
    clients: usize,
    looping_clients: usize,
    idle_p50_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    jobs_per_sec: f64,
    refused_429: u64,
    errors_5xx: u64,
    loops_submitted: u64,
    loops_stopped: usize,
    loops_not_stopped: usize,
    finish_entries: usize,
    jobs: usize,
    ledger_ok: bool,
    peak_rss_mib: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

/// Everything a configuration's clients need.
struct World {
    /// The looping developer, then the three ordinary ones: (client, jobs path).
    developers: Vec<(Client, String)>,
}

/// Creates providers, datasets, the scenario and four developers (each its
/// own organization) with signed agreements.
fn set_up(base: &str, boot: &[crate::server::Bootstrapped], files: &data::DemoFiles) -> Result<World> {
    let anon = Client::new(base);
    let token = |role| {
        boot.iter()
            .find(|b| b.role == role)
            .map(|b| b.token.clone())
            .context("bootstrap party missing")
    };
    let operator = anon.with_token(&token(scenarios::party::Role::Operator)?);
    let regulator = anon.with_token(&token(scenarios::party::Role::Regulator)?);
    for (name, spec, local) in demo::dataset_specs(files) {
        let p = operator
            .post("/v1/operator/parties", &json!({"name": name, "role": "provider"}))?
            .ok()?
            .json();
        let provider = anon.with_token(p["token"].as_str().unwrap_or(""));
        let file = spec["path"].as_str().unwrap_or("");
        provider
            .put_file(&format!("/v1/provider/files/{file}"), &local)?
            .ok()?;
        let d = provider.post("/v1/provider/datasets", &spec)?.ok()?.json();
        let id = d["id"].as_str().unwrap_or("");
        operator
            .post(
                &format!("/v1/operator/datasets/{id}/review"),
                &json!({"approve": true}),
            )?
            .ok()?;
    }
    let mut spec = demo::bank_scenario();
    // The smallest share of the largest total: as many queries as the
    // budget allows.
    spec["release"]["epsilon_total"] = json!(10.0);
    spec["release"]["epsilon_per_query"] = json!(0.01);
    let mut developers = Vec::new();
    for (i, name) in ["Looping Lab", "Bank A", "Bank B", "Bank C"].iter().enumerate() {
        let d = operator
            .post(
                "/v1/operator/parties",
                &json!({"name": name, "role": "developer"}),
            )?
            .ok()?
            .json();
        let dev = anon.with_token(d["token"].as_str().unwrap_or(""));
        spec["name"] = json!(format!("load scenario {i}"));
        let sc = operator.post("/v1/operator/scenarios", &spec)?.ok()?.json();
        let sc_id = sc["id"].as_str().unwrap_or("").to_string();
        if sc["status"] == "pending" {
            regulator
                .post(
                    &format!("/v1/regulator/scenarios/{sc_id}/decision"),
                    &json!({"approve": true, "reason": "load benchmark"}),
                )?
                .ok()?;
        }
        let app = dev
            .post(
                "/v1/developer/applications",
                &json!({"scenario_id": sc_id, "materials": demo::materials()}),
            )?
            .ok()?
            .json();
        let app_id = app["id"].as_str().unwrap_or("");
        let decided = operator
            .post(
                &format!("/v1/operator/applications/{app_id}/decision"),
                &json!({"approve": true, "reason": "load benchmark", "valid_days": 30}),
            )?
            .ok()?
            .json();
        let ag = decided["agreement"]["id"].as_str().unwrap_or("").to_string();
        dev.post(&format!("/v1/developer/agreements/{ag}/sign"), &json!({}))?
            .ok()?;
        // The looping tenant does not wait for its jobs: it keeps as many
        // in flight as it is let.
        let wait = if i == 0 { "" } else { "?wait=true" };
        developers.push((dev, format!("/v1/developer/agreements/{ag}/jobs{wait}")));
    }
    Ok(World { developers })
}

/// Counters shared by the clients of one configuration.
#[derive(Default)]
struct Tally {
    latencies: Mutex<Vec<f64>>,
    refused: AtomicU64,
    server_errors: AtomicU64,
    loops: AtomicU64,
}

fn drive(world: &World, clients: usize, looping: usize, secs: u64) -> Result<(Arc<Tally>, f64)> {
    let one = Arc::new(queries_job(&[ONE_QUERY])?);
    let three = Arc::new(queries_job(&THREE_QUERIES)?);
    let looping_job = Arc::new(wat::parse_str(LOOP)?);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for c in 0..clients {
        let is_loop = c < looping;
        let (dev, path) = if is_loop {
            world.developers[0].clone()
        } else {
            world.developers[1 + (c - looping) % 3].clone()
        };
        let (one, three, lj, tally, stop) = (
            one.clone(),
            three.clone(),
            looping_job.clone(),
            tally.clone(),
            stop.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut n = c;
            while !stop.load(Ordering::SeqCst) {
                let module: &[u8] = if is_loop {
                    &lj
                } else if n % 9 < 7 {
                    &one
                } else {
                    &three
                };
                n += 1;
                let t = Instant::now();
                let Ok(r) = dev.post_bytes(&path, module, "application/wasm") else {
                    tally.server_errors.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                match r.status {
                    200..=299 if is_loop => {
                        tally.loops.fetch_add(1, Ordering::SeqCst);
                    }
                    200..=299 if !stop.load(Ordering::SeqCst) => {
                        let ms = t.elapsed().as_secs_f64() * 1000.0;
                        if let Ok(mut l) = tally.latencies.lock() {
                            l.push(ms);
                        }
                    }
                    429 => {
                        tally.refused.fetch_add(1, Ordering::SeqCst);
                        // The hostile tenant comes back at once; the others
                        // as told (`Retry-After: 1`).
                        std::thread::sleep(if is_loop {
                            Duration::from_millis(50)
                        } else {
                            Duration::from_secs(1)
                        });
                    }
                    s if s >= 500 => {
                        tally.server_errors.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        }));
    }
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();
    for t in threads {
        let _ = t.join();
    }
    Ok((tally, elapsed))
}

/// Median latency of `n` one-query jobs run one at a time on an idle server.
fn idle_p50(world: &World, n: usize) -> Result<f64> {
    let one = queries_job(&[ONE_QUERY])?;
    let (dev, path) = &world.developers[1];
    let mut l = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        dev.post_bytes(path, &one, "application/wasm")?.ok()?;
        l.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    l.sort_by(f64::total_cmp);
    Ok(percentile(&l, 0.5))
}

async fn measure(opts: &LoadOptions, clients: usize, percent: usize) -> Result<Measured> {
    let tmp = tempfile::Builder::new().prefix("invis-load-").tempdir()?;
    let files = data::generate(&tmp.path().join("data"), opts.enterprises)?;
    let config = Config {
        time_quantum: Duration::from_millis(opts.quantum_ms),
        checkpoint_every: Duration::from_secs(1),
        ..Config::new(tmp.path().join("store"))
    };
    let state = AppState::open(config)?;
    let boot = bootstrap(&state.store, "Operator", "Regulator")?;
    let (listener, addr) = bind("127.0.0.1:0".parse()?).await?;
    let server = tokio::spawn(serve(state.clone(), listener));
    let base = format!("http://{addr}");
    let looping = clients * percent / 100;
    let secs = opts.secs;
    let measured = tokio::task::spawn_blocking(move || -> Result<(Measured, Arc<Tally>)> {
        let world = set_up(&base, &boot, &files)?;
        let idle = idle_p50(&world, 30)?;
        let (tally, elapsed) = drive(&world, clients, looping, secs)?;
        let mut l = tally.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_by(f64::total_cmp);
        Ok((
            Measured {
                clients,
                looping_clients: looping,
                idle_p50_ms: idle,
                p50_ms: percentile(&l, 0.5),
                p99_ms: percentile(&l, 0.99),
                jobs_per_sec: l.len() as f64 / elapsed,
                ..Measured::default()
            },
            tally,
        ))
    })
    .await??;
    let (mut m, tally) = measured;
    m.refused_429 = tally.refused.load(Ordering::SeqCst);
    m.errors_5xx = tally.server_errors.load(Ordering::SeqCst);
    m.loops_submitted = tally.loops.load(Ordering::SeqCst);
    // Every job ends (the loops by their limits) before the ledger is read.
    let deadline = Instant::now() + Duration::from_secs(600);
    let jobs = loop {
        let st = state.clone();
        let jobs: Vec<crate::records::JobRecord> =
            tokio::task::spawn_blocking(move || st.store.list(Table::Jobs, None)).await??;
        if jobs.iter().all(|j| j.status.is_final()) || Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    m.jobs = jobs.len();
    let loop_hash = hex::encode(scenarios::ledger::sha256(&wat::parse_str(LOOP)?));
    for j in jobs.iter().filter(|j| j.module_hash == loop_hash) {
        let kind = j.error.as_ref().and_then(|e| e["kind"].as_str()).unwrap_or("");
        if j.status.is_final() && matches!(kind, "deadline_exceeded" | "out_of_fuel") {
            m.loops_stopped += 1;
        } else {
            m.loops_not_stopped += 1;
        }
    }
    let st = state.clone();
    let (ok, finishes) = tokio::task::spawn_blocking(move || -> Result<(bool, usize)> {
        let path = st.config.data_dir.join("load-export.ndjson");
        {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
            st.ledger
                .export(&st.store, &st.keys, 0, true, &mut w)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let text = std::fs::read_to_string(&path)?;
        let finishes = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                v["body"]
                    .as_str()
                    .and_then(|b| serde_json::from_str::<Value>(b).ok())
            })
            .filter(|b| b["action"] == "job.finish")
            .count();
        let report = crate::ledger::verify_file(&path, Some(&st.keys.first_public_key()), &[], &[])?;
        Ok((report.is_ok(), finishes))
    })
    .await??;
    m.ledger_ok = ok;
    m.finish_entries = finishes;
    m.peak_rss_mib = super::compile::memory().1 >> 20;
    server.abort();
    Ok(m)
}

/// Runs every configuration and prints the table.
pub async fn run(opts: LoadOptions) -> Result<()> {
    if opts.clients.is_empty() || opts.loop_percent.is_empty() {
        bail!("give at least one client count and one looping share");
    }
    println!(
        "invis bench-load: {} s of load per configuration, {} enterprises, time quantum {} ms, {} cores",
        opts.secs,
        opts.enterprises,
        opts.quantum_ms,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| clients | looping | idle p50 ms | p50 ms | p99 ms | p99/idle p50 | ordinary jobs/s | 429 | 5xx | loops stopped | finish entries / jobs | ledger | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all_ok = true;
    for &clients in &opts.clients {
        for &percent in &opts.loop_percent {
            let m = measure(&opts, clients, percent).await?;
            let ratio = m.p99_ms / m.idle_p50_ms;
            println!(
                "| {} | {} ({}%) | {:.1} | {:.1} | {:.1} | {:.0}x | {:.1} | {} | {} | {}/{} | {}/{} | {} | {} |",
                m.clients,
                m.looping_clients,
                percent,
                m.idle_p50_ms,
                m.p50_ms,
                m.p99_ms,
                ratio,
                m.jobs_per_sec,
                m.refused_429,
                m.errors_5xx,
                m.loops_stopped,
                m.loops_stopped + m.loops_not_stopped,
                m.finish_entries,
                m.jobs,
                if m.ledger_ok { "verifies" } else { "FAILS" },
                m.peak_rss_mib
            );
            all_ok &=
                m.errors_5xx == 0 && m.loops_not_stopped == 0 && m.ledger_ok && m.finish_entries == m.jobs;
        }
    }
    if !all_ok {
        bail!("a configuration had server errors, a loop not stopped by its limits, or a ledger that does not verify with one finish entry per job");
    }
    Ok(())
}
