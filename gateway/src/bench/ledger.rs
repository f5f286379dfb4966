//! `invis bench-ledger`: durable append throughput (one client, then many
//! through group commit), proof generation, and export plus offline
//! verification of a large ledger, all measured in one run on the disk the
//! store lives on.

use crate::keys::{new_id, Keys};
use crate::ledger::Ledger;
use crate::store::{append, NewEntry, Store, SyncStats};
use anyhow::{anyhow, Result};
use chrono::Utc;
use scenarios::ledger::{parse_proof, verify_consistency, verify_inclusion, MerkleTree};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// A release-sized entry (about 600 bytes of canonical text) about `job`.
fn entry(i: u64, job: &str) -> NewEntry {
    NewEntry::system(
        "query.release",
        job,
        serde_json::json!({
            "agreement": "ag_bench", "scenario": "sc_bench",
            "sql": "SELECT industry, district, COUNT(*) AS n, AVG(paid) AS avg_paid FROM insurance GROUP BY industry, district",
            "plan_hash": "6c1f0e3b9d2a4c5e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e",
            "mechanism": {"noise": "discrete_laplace", "epsilon": 0.1, "min_group_size": 10, "max_rows_per_unit": 12},
            "epsilon_spent": 100000, "released_groups": 142, "suppressed_groups": 9,
            "output_hash": format!("{:064x}", i),
        }),
    )
}

/// The subject of a client's next entry: each client runs jobs one after
/// another, and a job makes [`ENTRIES_PER_JOB`] entries (its charge and
/// release entries), as the server names jobs.
#[derive(Default)]
struct Job {
    id: String,
    entries: u64,
}

/// Rounds of the many-client phase; the median is reported.
const ROUNDS: usize = 3;

/// Entries a benchmark job makes.
const ENTRIES_PER_JOB: u64 = 4;

impl Job {
    fn next(&mut self) -> &str {
        if self.entries.is_multiple_of(ENTRIES_PER_JOB) {
            self.id = new_id("job");
        }
        self.entries += 1;
        &self.id
    }
}

fn err(e: crate::error::ServiceError) -> anyhow::Error {
    anyhow!("{e}")
}

/// How the benchmark's clients wait for their appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clients {
    /// Async tasks on a runtime with one worker per core, as the server's
    /// request handlers call [`Store::write`].
    Tasks,
    /// One OS thread each, blocked in [`Store::tx`].
    Threads,
}

/// Times `n` single-entry transactions split over `clients` clients;
/// returns appends per second and the group-commit counters of the run.
fn appends(
    store: &Arc<Store>,
    first: u64,
    n: u64,
    clients: u64,
    how: Clients,
) -> Result<(f64, SyncStats, f64)> {
    let before = store.sync_stats();
    let clients = clients.max(1);
    let per = n / clients;
    let t = Instant::now();
    match how {
        Clients::Threads => {
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let store = store.clone();
                    std::thread::spawn(move || -> Result<()> {
                        let mut job = Job::default();
                        for i in 0..per {
                            let e = entry(first + c * per + i, job.next());
                            store.tx(move |tx| append(tx, e, Utc::now())).map_err(err)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| anyhow!("an append thread panicked"))??;
            }
        }
        Clients::Tasks => {
            // A runtime of its own (the command itself runs inside one).
            let store = store.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                rt.block_on(async {
                    let tasks: Vec<_> = (0..clients)
                        .map(|c| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                let mut job = Job::default();
                                for i in 0..per {
                                    let e = entry(first + c * per + i, job.next());
                                    store
                                        .write(move |tx| append(tx, e, Utc::now()))
                                        .await
                                        .map_err(err)?;
                                }
                                Ok::<(), anyhow::Error>(())
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.map_err(|_| anyhow!("an append task panicked"))??;
                    }
                    Ok::<(), anyhow::Error>(())
                })
            })
            .join()
            .map_err(|_| anyhow!("the append runtime panicked"))??;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let after = store.sync_stats();
    let stats = SyncStats {
        commits: after.commits - before.commits,
        flushes: after.flushes - before.flushes,
        flush_time: after.flush_time - before.flush_time,
        write_time: after.write_time - before.write_time,
    };
    Ok(((per * clients) as f64 / secs, stats, secs))
}

/// Runs the benchmark in a temporary store under `dir` (or the system's
/// temporary directory).
pub fn run(entries: u64, n: u64, clients: u64, dir: Option<&Path>) -> Result<()> {
    let tmp = match dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let store = Arc::new(Store::open(tmp.path())?);
    let keys = Keys::load_or_create(tmp.path(), None)?;
    println!("ledger benchmark in {}", tmp.path().display());
    println!("{:<52} {:>16}", "measure", "value");
    let row = |name: &str, value: String| println!("{name:<52} {value:>16}");

    let batching = |(s, secs, n): (SyncStats, f64, u64)| {
        let flushes = s.flushes.max(1) as f64;
        row(
            "  entries per transaction",
            format!("{:.1}", n as f64 / s.commits.max(1) as f64),
        );
        row("  entries per flush", format!("{:.1}", n as f64 / flushes));
        row(
            "  mean flush (fdatasync), us",
            format!("{:.0}", s.flush_time.as_secs_f64() * 1e6 / flushes),
        );
        row(
            "  writer busy, % of the time",
            format!("{:.0}", 100.0 * s.write_time.as_secs_f64() / secs),
        );
        row(
            "  flushes in flight, mean",
            format!("{:.2}", s.flush_time.as_secs_f64() / secs),
        );
        row(
            "  writer time per entry, us",
            format!("{:.1}", s.write_time.as_secs_f64() * 1e6 / n as f64),
        );
    };
    // One client waits a whole flush per append: a tenth of the appends
    // tells its rate as well.
    let one = (n / 10).clamp(1, 10_000);
    let (single, stats, secs) = appends(&store, 0, one, 1, Clients::Tasks)?;
    row("durable appends/s, 1 client", format!("{single:.0}"));
    batching((stats, secs, one));
    let mut first = one;
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let (rate, stats, secs) = appends(&store, first, n, clients, Clients::Tasks)?;
        first += n;
        rounds.push((rate, stats, secs));
    }
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(many, stats, secs)) = rounds.get(rounds.len() / 2) else {
        return Err(anyhow!("no rounds ran"));
    };
    row(
        &format!("durable appends/s, {clients} clients (async, as the server)"),
        format!("{many:.0}"),
    );
    row(
        &format!("  slowest / fastest of {ROUNDS} rounds (median above)"),
        format!(
            "{:.0} / {:.0}",
            rounds.first().map_or(0.0, |r| r.0),
            rounds.last().map_or(0.0, |r| r.0)
        ),
    );
    batching((stats, secs, n));
    row("  ratio to 1 client", format!("{:.1}x", many / single));
    let (threads, stats, secs) = appends(&store, first, n, clients, Clients::Threads)?;
    row(
        &format!("durable appends/s, {clients} blocking threads"),
        format!("{threads:.0}"),
    );
    batching((stats, secs, n));

    // Grow to the large size with bulk transactions (not timed as appends).
    let t = Instant::now();
    let mut next = store.ledger_size().map_err(err)?;
    while next < entries {
        let batch = (entries - next).min(20_000);
        store
            .tx(move |tx| {
                let mut job = Job::default();
                for i in next..next + batch {
                    append(tx, entry(i, job.next()), Utc::now())?;
                }
                Ok(())
            })
            .map_err(err)?;
        next += batch;
    }
    let size = store.ledger_size().map_err(err)?;
    row(
        &format!("bulk load to {size} entries, s"),
        format!("{:.2}", t.elapsed().as_secs_f64()),
    );

    let ledger = Ledger::new();
    let t = Instant::now();
    ledger.size(&store).map_err(err)?;
    row("Merkle tree load from store, ms", format!("{:.0}", ms(t)));
    let t = Instant::now();
    let cp = ledger.checkpoint(&store, &keys).map_err(err)?;
    row(
        "checkpoint (root + Ed25519 signature), ms",
        format!("{:.2}", ms(t)),
    );
    let root = cp.root().ok_or_else(|| anyhow!("bad root"))?;

    let samples = 1000u64;
    let mut rng = sandbox::sample::SplitMix64(7);
    let t = Instant::now();
    let mut proofs = Vec::new();
    for _ in 0..samples {
        let seq = rng.next_u64() % size;
        proofs.push((seq, ledger.inclusion_proof(&store, seq, size).map_err(err)?));
    }
    row(
        "inclusion proof generation, us",
        format!("{:.1}", us(t) / samples as f64),
    );
    let t = Instant::now();
    for (seq, p) in &proofs {
        let leaf = store.ledger_hashes(*seq, 1).map_err(err)?;
        let leaf = leaf.first().map(|l| l.1).ok_or_else(|| anyhow!("missing leaf"))?;
        let p = parse_proof(p).ok_or_else(|| anyhow!("bad proof"))?;
        anyhow::ensure!(
            verify_inclusion(*seq, size, &leaf, &p, &root),
            "inclusion proof failed"
        );
    }
    row(
        "inclusion proof check (with leaf read), us",
        format!("{:.1}", us(t) / samples as f64),
    );
    let t = Instant::now();
    let mut pairs = Vec::new();
    for _ in 0..samples {
        let first = 1 + rng.next_u64() % (size - 1);
        pairs.push((first, ledger.consistency_proof(&store, first, size).map_err(err)?));
    }
    row(
        "consistency proof generation, us",
        format!("{:.1}", us(t) / samples as f64),
    );
    // Check the proofs against roots computed independently from the leaves.
    let check = MerkleTree::from_leaves(
        store
            .ledger_hashes(0, size)
            .map_err(err)?
            .into_iter()
            .map(|(_, h)| h),
    );
    for (first, p) in &pairs {
        let earlier = check.root_at(*first).map_err(|e| anyhow!("{e}"))?;
        let p = parse_proof(p).ok_or_else(|| anyhow!("bad proof"))?;
        anyhow::ensure!(
            verify_consistency(*first, size, &earlier, &root, &p),
            "consistency proof failed"
        );
    }

    let path = tmp.path().join("export.ndjson");
    let t = Instant::now();
    {
        let mut w = BufWriter::new(std::fs::File::create(&path)?);
        ledger.export(&store, &keys, 0, true, &mut w).map_err(err)?;
        w.flush()?;
    }
    let bytes = std::fs::metadata(&path)?.len();
    row(
        &format!("export {size} entries ({} MB), s", bytes >> 20),
        format!("{:.2}", t.elapsed().as_secs_f64()),
    );
    let key = keys.public_key();
    let t = Instant::now();
    let report = crate::ledger::verify_file(&path, Some(&key), std::slice::from_ref(&cp), &[])?
        .map_err(|f| anyhow!("verification failed: {}", f.reason))?;
    let secs = t.elapsed().as_secs_f64();
    row(
        &format!("offline verification of {} entries, s", report.entries),
        format!("{secs:.2}"),
    );
    row(
        "  entries verified per second",
        format!("{:.0}", report.entries as f64 / secs),
    );
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn us(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}
