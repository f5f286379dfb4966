//! The `invis` command line: serve the API, run the demo, bootstrap the
//! first parties, export and verify the ledger and receipts, back up and
//! restore, and benchmark.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gateway::keys::Kek;
use gateway::state::{AppState, Config};
use scenarios::ledger::{Receipt, SignedCheckpoint, VerifierKey};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "invis",
    version,
    about = "Invis: a usable-but-invisible computation sandbox for public data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        /// Directory of the store and keys.
        #[arg(long, env = "INVIS_DATA_DIR", default_value = "invis-data")]
        data_dir: PathBuf,
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The data root: every provider's storage location is a directory
        /// under it (`providers/<party id>`, or one the operator assigns with
        /// `PUT /v1/operator/parties/{id}/storage`). Default: `files` in the
        /// data directory. Must not hold the data directory.
        #[arg(long, env = "INVIS_DATA_ROOT")]
        data_root: Option<PathBuf>,
        /// Largest file a provider may upload, in bytes (default 2 GiB).
        #[arg(long, default_value_t = gateway::storage::DEFAULT_MAX_UPLOAD)]
        max_upload_bytes: u64,
        /// File of the key-encryption key (64 hex digits) that seals the
        /// ledger signing key and the tokenization master key at rest; keep
        /// it outside the data directory and its backups. Without it (and
        /// without `INVIS_KEK`), the keys are stored unsealed. Keys found
        /// unsealed are sealed on the first start with one.
        #[arg(long, env = "INVIS_KEK_FILE")]
        kek_file: Option<PathBuf>,
        /// Jobs one developer may have in flight (submitted and not yet
        /// ended); more are refused with 429 and `Retry-After`.
        #[arg(long, default_value_t = gateway::tenants::TenantLimits::default().jobs_per_developer)]
        max_jobs_per_developer: u32,
        /// Jobs one organization's developers may have in flight together.
        #[arg(long, default_value_t = gateway::tenants::TenantLimits::default().jobs_per_organization)]
        max_jobs_per_organization: u32,
        /// Work units one developer may use in each window (a unit is 1M
        /// fuel, 10,000 catalog rows read or 10 ms of compiling; over it,
        /// 429 until the next window). Default: 30 jobs at the fuel limit
        /// (60,000 at the default limit).
        #[arg(long)]
        work_per_developer: Option<u64>,
        /// Work units one organization's developers may use together in
        /// each window. Default: twice the developer's.
        #[arg(long)]
        work_per_organization: Option<u64>,
        /// The work window in seconds.
        #[arg(long, default_value_t = gateway::tenants::TenantLimits::default().work_window_secs)]
        work_window_secs: u64,
        #[command(flatten)]
        limits: LimitArgs,
        /// Working-day calendar for review and filing deadlines (JSON:
        /// `{"holidays": ["2026-10-01", ...], "workdays": ["2026-10-10", ...]}`);
        /// weekends are off by default.
        #[arg(long)]
        calendar: Option<PathBuf>,
        /// The published tariff (JSON: `{"per_job_fen": 100, "per_query_fen":
        /// 20, "per_million_rows_fen": 50, "per_billion_fuel_fen": 10,
        /// "per_compile_second_fen": 5}`, the defaults).
        #[arg(long)]
        tariff: Option<PathBuf>,
        #[command(flatten)]
        time: TimeArgs,
    },
    /// Write the demo's synthetic datasets (Parquet) to a directory.
    GenDemoData {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Enterprises to generate.
        #[arg(long, default_value_t = 30_000)]
        enterprises: usize,
    },
    /// Run the whole product story in one process, on synthetic data.
    Demo {
        /// Keep data and store here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Enterprises to generate.
        #[arg(long, default_value_t = 30_000)]
        enterprises: usize,
    },
    /// Time protected queries against the same queries run raw in DataFusion.
    Bench {
        /// Enterprises in the synthetic data set.
        #[arg(long, default_value_t = 30_000)]
        enterprises: usize,
        /// Timed runs per query (the median is reported).
        #[arg(long, default_value_t = 10)]
        iterations: usize,
        /// Directory of the PUMS census files (PUMS_x1000.csv, PUMS_pid.csv).
        #[arg(long, default_value = "../shared/data/pums")]
        pums: PathBuf,
        /// Skip the PUMS section.
        #[arg(long)]
        no_pums: bool,
        /// Releases per query for the accuracy table.
        #[arg(long, default_value_t = 50)]
        reps: usize,
        /// Run only these sections (repeat or separate with commas; all
        /// when absent).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<gateway::bench::Section>,
        /// Run only the queries whose label contains this text (for
        /// example `--query SUM` under a profiler).
        #[arg(long)]
        query: Option<String>,
        /// Run only one side of each comparison, for a profiler.
        #[arg(long, value_enum)]
        side: Option<gateway::bench::Side>,
    },
    /// Time the ledger: durable appends (one client and many), proofs,
    /// export and offline verification of a large ledger.
    BenchLedger {
        /// Entries in the large ledger that is proven and verified.
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Durable appends timed per round of the many-client phases (the
        /// single client times a tenth of them, at most 10,000).
        #[arg(long, default_value_t = 100_000)]
        appends: u64,
        /// Concurrent clients of the group-commit phase.
        #[arg(long, default_value_t = 32)]
        clients: u64,
        /// Directory for the benchmark's store (a temporary one when absent;
        /// it must be on the disk whose durability is measured).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Time the WASM runtime: cold compile, cached instantiation, a trivial
    /// job end to end, and a row function against the same native
    /// expression.
    BenchRuntime {
        /// Rows the row function is evaluated on.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Timed runs per query (the median is reported).
        #[arg(long, default_value_t = 10)]
        iterations: usize,
    },
    /// Time the compilation of the largest modules the shape limits admit
    /// (and check that the attacks they refuse are refused quickly).
    BenchCompile {
        /// Measure only this case, in this process (the benchmark runs each
        /// case in a child process of its own this way).
        #[arg(long, hide = true)]
        case: Option<usize>,
    },
    /// Fair share under a hostile tenant: one developer submits only
    /// looping jobs, three others ordinary ones; prints ordinary jobs'
    /// latency against idle, throughput, refusals, server errors, how the
    /// loops ended, the ledger's verification and peak RSS, for each
    /// number of clients and share of looping clients (a fresh server in
    /// this process for each).
    BenchLoad {
        /// Client counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,50,200")]
        clients: Vec<usize>,
        /// Shares of looping clients in percent, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,10,50")]
        looping: Vec<usize>,
        /// Seconds of load per configuration.
        #[arg(long, default_value_t = 15)]
        secs: u64,
        /// Enterprises in the generated data.
        #[arg(long, default_value_t = 2_000)]
        enterprises: usize,
        /// Time quantum of jobs' visible ends, ms.
        #[arg(long, default_value_t = 10)]
        quantum_ms: u64,
    },
    /// Audit the privacy mechanisms: run each many times on neighbouring
    /// datasets and print the empirical lower bound on its epsilon next to
    /// the claimed one; broken mechanisms (negative controls) must be
    /// flagged. Exits 1 when a bound exceeds its claim.
    BenchAudit {
        /// Runs per neighbouring dataset and mechanism.
        #[arg(long, default_value_t = 100_000)]
        samples: usize,
        /// Runs per neighbour of the end-to-end `JobScope::query` audit
        /// (0 skips it; each run is a whole query).
        #[arg(long, default_value_t = 5_000)]
        query_samples: usize,
        /// Confidence of the lower bounds.
        #[arg(long, default_value_t = 0.95)]
        confidence: f64,
    },
    /// Administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Export the ledger from a store, with a checkpoint signed now.
    ExportLedger {
        /// Directory of the store and keys.
        #[arg(long, env = "INVIS_DATA_DIR", default_value = "invis-data")]
        data_dir: PathBuf,
        /// Output file (standard output when absent).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// First entry; an export resumed from a later entry has no header
        /// and can be appended to an earlier one.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Verify a ledger export offline: every hash, link, signature, root and
    /// consistency proof, and that checkpoints held from before are
    /// prefixes of it. Exits 1 and names the first bad entry on failure.
    VerifyLedger {
        /// The export (NDJSON).
        export: PathBuf,
        /// The operator's Ed25519 public key (hex, or a file holding it).
        /// Without it the key inside the export is used, which proves
        /// integrity but not who signed.
        #[arg(long)]
        public_key: Option<String>,
        /// A signed checkpoint obtained earlier (a checkpoint, receipt or
        /// backup manifest JSON file); repeatable. A forked or truncated
        /// history fails against it.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// Require a cosignature of this witness (its verifier key
        /// `<name>+<hash>+<key>`, or a file holding it) on at least one
        /// checkpoint; repeatable. The report says up to which size each
        /// witness vouches for the history.
        #[arg(long)]
        witness_key: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a job on the scenario's synthetic sample data, here, with the
    /// platform's runtime, policy and privacy mechanism, and print what it
    /// would emit. No server and no real data are needed.
    RunLocal {
        /// The job module (.wasm).
        job: PathBuf,
        /// A scenario bundle file (from
        /// `GET /v1/developer/scenarios/{id}/bundle`), or a scenario id whose
        /// bundle is fetched from --server with INVIS_TOKEN.
        #[arg(long)]
        scenario: String,
        /// Platform to fetch a bundle from.
        #[arg(long, env = "INVIS_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Synthetic rows per dataset.
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        /// Job parameters (text).
        #[arg(long, default_value = "")]
        params: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Verify a release receipt offline: the entry, its inclusion proof and
    /// the signed checkpoint, and optionally the released bytes.
    VerifyReceipt {
        /// The receipt (JSON).
        receipt: PathBuf,
        /// The operator's Ed25519 public key (hex, or a file holding it).
        #[arg(long)]
        public_key: Option<String>,
        /// The released output, to check against the entry's output hash.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Require this witness's cosignature (its verifier key, or a file
        /// holding it) on the receipt's checkpoint; repeatable.
        #[arg(long)]
        witness_key: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Call the API as the holder of INVIS_TOKEN: any route of `invis
    /// routes`, answered as readable tables (or JSON with --json).
    /// Example: `invis call POST /v1/operator/objections/ob_1/resolution
    /// upheld=false reason="checked against the source"`.
    Call {
        /// GET, POST or PUT.
        method: String,
        /// The route's path with its ids filled in.
        path: String,
        /// key=value fields: the JSON body of a POST (values that parse as
        /// JSON are JSON, others text), or the query of a GET.
        fields: Vec<String>,
        /// Send this file as the body instead (with POST a .wasm module as
        /// application/wasm, anything else as JSON; with PUT the bytes as
        /// they are, streamed: `invis call PUT /v1/provider/files/firms.csv
        /// --body firms.csv`).
        #[arg(long)]
        body: Option<PathBuf>,
        /// The platform.
        #[arg(long, env = "INVIS_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The regulator's witness: cosigns the operator's published
    /// checkpoints only when they extend the last one it cosigned.
    Witness {
        #[command(subcommand)]
        command: WitnessCommand,
    },
    /// List every route of the HTTP API and who may call it.
    Routes {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Back up a data directory (store snapshot, keys, signed manifest)
    /// into a new directory; safe while the server runs.
    Backup {
        /// Directory of the store and keys.
        #[arg(long, env = "INVIS_DATA_DIR", default_value = "invis-data")]
        data_dir: PathBuf,
        /// The new backup directory.
        #[arg(long)]
        out: PathBuf,
        /// File of the key-encryption key, when the keys are sealed (also
        /// `INVIS_KEK_FILE` or `INVIS_KEK`). Sealed keys are copied sealed.
        #[arg(long)]
        kek_file: Option<PathBuf>,
    },
    /// Restore a backup into a new data directory after verifying its
    /// whole ledger.
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to create.
        #[arg(long, env = "INVIS_DATA_DIR", default_value = "invis-data")]
        data_dir: PathBuf,
        /// File of the key-encryption key, when the backup's keys are sealed.
        #[arg(long)]
        kek_file: Option<PathBuf>,
    },
}

/// Per-job limits of the server.
#[derive(clap::Args)]
struct LimitArgs {
    /// Wall-clock limit of a job, in milliseconds.
    #[arg(long, default_value_t = runtime::JobLimits::default().timeout_ms)]
    job_timeout_ms: u64,
    /// Fuel (instructions) of a job.
    #[arg(long, default_value_t = runtime::JobLimits::default().fuel)]
    job_fuel: u64,
    /// Linear memory cap of a job, in MiB.
    #[arg(long, default_value_t = runtime::JobLimits::default().memory_bytes >> 20)]
    job_memory_mib: u64,
}

impl LimitArgs {
    fn limits(&self) -> Result<runtime::JobLimits> {
        let l = runtime::JobLimits {
            timeout_ms: self.job_timeout_ms,
            fuel: self.job_fuel,
            memory_bytes: self.job_memory_mib << 20,
            ..runtime::JobLimits::default()
        };
        l.validate()
            .map_err(|e| anyhow::anyhow!("invalid job limits: {e}"))?;
        Ok(l)
    }
}

/// How coarse time is as seen from outside the platform (I14).
#[derive(clap::Args)]
struct TimeArgs {
    /// Time quantum in milliseconds: a job's end (its final status, its
    /// `finished_at`, the answer to `?wait=true`) becomes visible only at a
    /// whole number of quanta after it started, so how long a job took,
    /// which can depend on the data its queries read, is seen only to the
    /// quantum.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    time_quantum_ms: u64,
    /// How often, in milliseconds, a ledger checkpoint is signed and
    /// published while the ledger grows. Parties other than the regulator
    /// see the ledger only as of the latest published checkpoint. Must be
    /// at least the time quantum.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    checkpoint_every_ms: u64,
}

#[derive(Subcommand)]
enum WitnessCommand {
    /// Create a witness: a new Ed25519 key and the pinned operator key,
    /// in a new directory. Prints the witness's verifier key.
    Init {
        /// The witness's directory (its key and last cosigned checkpoint).
        #[arg(long)]
        dir: PathBuf,
        /// The witness's key name (no spaces or `+`).
        #[arg(long, default_value = "witness.regulator.invis")]
        name: String,
        /// The operator's Ed25519 public key (hex, or a file holding it).
        #[arg(long)]
        public_key: String,
    },
    /// Print the witness's verifier key.
    Key {
        /// The witness's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Fetch, check and cosign the latest published checkpoint, with the
    /// regulator's token in INVIS_TOKEN; once, or every --every-secs.
    /// Exits 1 when the ledger does not extend what was cosigned before.
    Run {
        /// The witness's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The platform.
        #[arg(long, env = "INVIS_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// One round only.
        #[arg(long)]
        once: bool,
        /// Seconds between rounds when not --once.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        every_secs: u64,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create the first operator and regulator and print their tokens.
    Bootstrap {
        /// Directory of the store and keys.
        #[arg(long, env = "INVIS_DATA_DIR", default_value = "invis-data")]
        data_dir: PathBuf,
        /// Operator name.
        #[arg(long, default_value = "Platform Operator")]
        operator: String,
        /// Regulator name.
        #[arg(long, default_value = "Big Data Authority")]
        regulator: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a key-encryption key (64 hex digits) in a new file readable by
    /// its owner only, for `invis serve --kek-file`.
    NewKek {
        /// The file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-seal every key in the data directory under a new key-encryption
    /// key (the server must be stopped; docs/keys.md). Running it again
    /// finishes a run that was interrupted.
    Rekey {
        /// Directory of the store and keys.
        #[arg(long, env = "INVIS_DATA_DIR", default_value = "invis-data")]
        data_dir: PathBuf,
        /// The current key-encryption key (else `INVIS_KEK_FILE` or
        /// `INVIS_KEK`; none when the keys are stored unsealed).
        #[arg(long)]
        kek_file: Option<PathBuf>,
        /// The new key-encryption key (made by `invis admin new-kek`).
        #[arg(long)]
        new_kek_file: PathBuf,
    },
}

/// The configuration of `data_dir`, with the key-encryption key of
/// `INVIS_KEK_FILE` or `INVIS_KEK` when one is set.
fn config(data_dir: PathBuf) -> Result<Config> {
    let mut cfg = Config::new(data_dir);
    cfg.kek = kek(None)?;
    Ok(cfg)
}

/// The key-encryption key of `file`, else of `INVIS_KEK_FILE`, else of
/// `INVIS_KEK` (64 hex digits); none when nothing is set.
fn kek(file: Option<PathBuf>) -> Result<Option<Kek>> {
    let file = file.or_else(|| std::env::var_os("INVIS_KEK_FILE").map(PathBuf::from));
    Kek::load(file.as_deref())
}

fn read_key(arg: &str) -> Result<Vec<u8>> {
    let text = if std::path::Path::new(arg).exists() {
        std::fs::read_to_string(arg)?
    } else {
        arg.to_string()
    };
    let key = hex::decode(text.trim()).context("the public key must be hex")?;
    anyhow::ensure!(key.len() == 32, "an Ed25519 public key has 32 bytes");
    Ok(key)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INVIS_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            data_root,
            max_upload_bytes,
            kek_file,
            max_jobs_per_developer,
            max_jobs_per_organization,
            work_per_developer,
            work_per_organization,
            work_window_secs,
            limits,
            calendar,
            tariff,
            time,
        } => {
            let mut cfg = config(data_dir)?;
            cfg.kek = kek(kek_file)?;
            anyhow::ensure!(
                max_jobs_per_developer >= 1 && max_jobs_per_organization >= max_jobs_per_developer,
                "--max-jobs-per-developer must be at least 1 and at most --max-jobs-per-organization"
            );
            cfg.tenant_limits.jobs_per_developer = max_jobs_per_developer;
            cfg.tenant_limits.jobs_per_organization = max_jobs_per_organization;
            if let Some(root) = data_root {
                cfg.data_root = root;
            }
            cfg.max_upload_bytes = max_upload_bytes;
            cfg.job_limits = limits.limits()?;
            let derived = cfg.tenant_limits.with_work_for(cfg.job_limits.fuel);
            let work_per_developer = work_per_developer.unwrap_or(derived.work_per_developer);
            let work_per_organization =
                work_per_organization.unwrap_or(derived.work_per_organization.max(work_per_developer));
            anyhow::ensure!(
                work_per_developer >= 1
                    && work_per_organization >= work_per_developer
                    && (1..=86_400).contains(&work_window_secs),
                "--work-per-developer must be at least 1 and at most --work-per-organization, \
                 and --work-window-secs between 1 and 86400"
            );
            cfg.tenant_limits.work_per_developer = work_per_developer;
            cfg.tenant_limits.work_per_organization = work_per_organization;
            cfg.tenant_limits.work_window_secs = work_window_secs;
            anyhow::ensure!(
                time.checkpoint_every_ms >= time.time_quantum_ms,
                "--checkpoint-every-ms ({}) must be at least --time-quantum-ms ({})",
                time.checkpoint_every_ms,
                time.time_quantum_ms
            );
            cfg.time_quantum = std::time::Duration::from_millis(time.time_quantum_ms);
            cfg.checkpoint_every = std::time::Duration::from_millis(time.checkpoint_every_ms);
            if let Some(path) = calendar {
                let text = std::fs::read(&path)
                    .map_err(|e| anyhow::anyhow!("reading the calendar {}: {e}", path.display()))?;
                cfg.calendar = serde_json::from_slice(&text)
                    .map_err(|e| anyhow::anyhow!("the calendar {} is not valid: {e}", path.display()))?;
            }
            if let Some(path) = tariff {
                let text = std::fs::read(&path)
                    .map_err(|e| anyhow::anyhow!("reading the tariff {}: {e}", path.display()))?;
                cfg.tariff = serde_json::from_slice(&text)
                    .map_err(|e| anyhow::anyhow!("the tariff {} is not valid: {e}", path.display()))?;
            }
            let state = AppState::open(cfg)?;
            let (listener, addr) = gateway::server::bind(listen).await?;
            println!("invis listening on http://{addr}");
            gateway::server::serve(state, listener).await
        }
        Command::GenDemoData { out, enterprises } => {
            let f = gateway::demo::data::generate(&out, enterprises)?;
            println!(
                "{}\n{}\n{}",
                f.register.display(),
                f.insurance.display(),
                f.tax.display()
            );
            Ok(())
        }
        Command::Demo {
            data_dir,
            enterprises,
        } => {
            gateway::demo::run(gateway::demo::DemoOptions {
                data_dir,
                enterprises,
            })
            .await
        }
        Command::Bench {
            enterprises,
            iterations,
            pums,
            no_pums,
            reps,
            only,
            query,
            side,
        } => {
            let selection = gateway::bench::Selection {
                sections: only,
                query,
                side,
            };
            gateway::bench::run(
                enterprises,
                iterations,
                (!no_pums).then_some(pums),
                reps,
                &selection,
            )
            .await
        }
        Command::Admin {
            command:
                AdminCommand::Rekey {
                    data_dir,
                    kek_file,
                    new_kek_file,
                },
        } => {
            let new = Kek::load(Some(&new_kek_file))?
                .ok_or_else(|| anyhow::anyhow!("no key-encryption key in {}", new_kek_file.display()))?;
            let n = gateway::keys::rekey(&data_dir, kek(kek_file)?.as_ref(), &new)?;
            println!(
                "re-sealed {n} key files in {} under {}: start the server with the new key-encryption key; \
                 the old one opens nothing here any more (copies made before, such as backups, still need it)",
                data_dir.join("keys").display(),
                new_kek_file.display()
            );
            Ok(())
        }
        Command::Admin {
            command: AdminCommand::NewKek { out },
        } => {
            Kek::create_file(&out)?;
            println!(
                "created the key-encryption key {}: keep it outside the data directory and its backups; \
                 without it the sealed keys cannot be opened",
                out.display()
            );
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Bootstrap {
                    data_dir,
                    operator,
                    regulator,
                    json,
                },
        } => {
            let state = AppState::open(config(data_dir)?)?;
            let parties = gateway::server::bootstrap(&state.store, &operator, &regulator)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&parties)?);
            } else {
                for p in parties {
                    println!(
                        "{:<10} {:<24} {}  token: {}",
                        p.role.as_str(),
                        p.name,
                        p.id,
                        p.token
                    );
                }
                println!("keep these tokens: they are shown once and stored only as hashes");
            }
            Ok(())
        }
        Command::ExportLedger {
            data_dir,
            output,
            from,
        } => {
            let state = AppState::open(config(data_dir)?)?;
            let mut out: Box<dyn std::io::Write> = match output {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(&p)?)),
                None => Box::new(std::io::stdout().lock()),
            };
            state
                .ledger
                .export(&state.store, &state.keys, from, from == 0, &mut out)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            out.flush()?;
            Ok(())
        }
        Command::VerifyLedger {
            export,
            public_key,
            checkpoint,
            witness_key,
            json,
        } => verify_ledger(&export, public_key.as_deref(), &checkpoint, &witness_key, json),
        Command::Witness { command } => witness(command),
        Command::Call {
            method,
            path,
            fields,
            body,
            server,
            json,
        } => {
            let code = gateway::cli::call(&gateway::cli::Call {
                method,
                path,
                fields,
                body,
                server,
                token: std::env::var("INVIS_TOKEN").ok(),
                json,
            })?;
            std::process::exit(code);
        }
        Command::Routes { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(gateway::api::ROUTES)?);
            } else {
                println!("{:<6} {:<48} access", "method", "path");
                for r in gateway::api::ROUTES {
                    let access = match r.access {
                        gateway::api::Access::Public => "anyone".to_string(),
                        gateway::api::Access::Authenticated => "every authenticated party".to_string(),
                        gateway::api::Access::Role(role) => format!("{role} only"),
                    };
                    println!("{:<6} {:<48} {access}", r.method, r.path);
                }
            }
            Ok(())
        }
        Command::VerifyReceipt {
            receipt,
            public_key,
            output,
            witness_key,
            json,
        } => verify_receipt(
            &receipt,
            public_key.as_deref(),
            output.as_deref(),
            &witness_key,
            json,
        ),
        Command::BenchAudit {
            samples,
            query_samples,
            confidence,
        } => gateway::bench::audit::run(samples, query_samples, confidence).await,
        Command::BenchCompile { case } => match case {
            Some(i) => gateway::bench::compile::measure(i),
            None => gateway::bench::compile::run(),
        },
        Command::BenchRuntime { rows, iterations } => gateway::bench::runtime::run(rows, iterations).await,
        Command::BenchLoad {
            clients,
            looping,
            secs,
            enterprises,
            quantum_ms,
        } => {
            gateway::bench::load::run(gateway::bench::load::LoadOptions {
                clients,
                loop_percent: looping,
                secs,
                enterprises,
                quantum_ms,
            })
            .await
        }
        Command::RunLocal {
            job,
            scenario,
            server,
            rows,
            params,
            json,
        } => {
            let code = gateway::local::run(gateway::local::LocalRun {
                job,
                scenario,
                server,
                rows,
                params: params.into_bytes(),
                json,
            })
            .await?;
            std::process::exit(code)
        }
        Command::Backup {
            data_dir,
            out,
            kek_file,
        } => {
            let kek = kek(kek_file)?;
            let m = gateway::backup::backup(&data_dir, &out, kek.as_ref())?;
            println!(
                "backed up {} ({} ledger entries, root {}) to {}",
                data_dir.display(),
                m.checkpoint.checkpoint.size,
                m.checkpoint.checkpoint.root,
                out.display()
            );
            if kek.is_some() {
                println!("the backup holds the signing and tokenization keys sealed: it opens only with the key-encryption key");
            } else {
                println!("the backup holds the signing and tokenization keys unsealed: store it as carefully as the data");
            }
            Ok(())
        }
        Command::Restore {
            from,
            data_dir,
            kek_file,
        } => {
            let r = gateway::backup::restore(&from, &data_dir, kek(kek_file)?.as_ref())?;
            println!(
                "restored {} into {}: ledger OK, {} entries, {} signed checkpoint(s), root {}",
                from.display(),
                data_dir.display(),
                r.report.entries,
                r.report.checkpoints,
                r.report.root
            );
            Ok(())
        }
        Command::BenchLedger {
            entries,
            appends,
            clients,
            dir,
        } => gateway::bench::ledger::run(entries, appends, clients, dir.as_deref()),
    }
}

/// A signed checkpoint from a file holding a checkpoint, a receipt or a
/// backup manifest.
fn held_checkpoint(path: &std::path::Path) -> Result<SignedCheckpoint> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let cp = if v.get("signature").is_some() {
        v
    } else {
        v["checkpoint"].clone()
    };
    serde_json::from_value(cp).with_context(|| format!("{} holds no signed checkpoint", path.display()))
}

fn print_json(v: serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Witness verifier keys, each given as the key or a file holding it.
fn read_witness_keys(args: &[String]) -> Result<Vec<VerifierKey>> {
    args.iter()
        .map(|arg| {
            let text = if std::path::Path::new(arg).exists() {
                std::fs::read_to_string(arg)?
            } else {
                arg.clone()
            };
            let key = VerifierKey::parse(&text).map_err(|e| anyhow::anyhow!("--witness-key: {e}"))?;
            anyhow::ensure!(
                key.alg == scenarios::ledger::note::ALG_COSIGNATURE_V1,
                "--witness-key: `{}` is not a cosignature/v1 witness key",
                key.name
            );
            Ok(key)
        })
        .collect()
}

fn witness(command: WitnessCommand) -> Result<()> {
    use gateway::witness::{Outcome, Refusal, Witness};
    match command {
        WitnessCommand::Init {
            dir,
            name,
            public_key,
        } => {
            let w = Witness::create(&dir, &name, &read_key(&public_key)?)?;
            println!("{}", w.verifier_key());
            Ok(())
        }
        WitnessCommand::Key { dir } => {
            println!("{}", Witness::open(&dir)?.verifier_key());
            Ok(())
        }
        WitnessCommand::Run {
            dir,
            server,
            once,
            every_secs,
        } => {
            let mut w = Witness::open(&dir)?;
            let token =
                std::env::var("INVIS_TOKEN").context("INVIS_TOKEN must hold the regulator's token")?;
            let client = gateway::client::Client::new(&server).with_token(&token);
            loop {
                match w.run_once(&client) {
                    Ok(Outcome::Cosigned(size)) => {
                        println!("witness: cosigned the checkpoint of {size} entries");
                    }
                    Ok(Outcome::Unchanged(size)) => {
                        println!("witness: the checkpoint of {size} entries is already cosigned");
                    }
                    Err(e) => match e.downcast_ref::<Refusal>() {
                        Some(r) => {
                            eprintln!("witness REFUSED to cosign: {r}");
                            std::process::exit(1);
                        }
                        None if once => return Err(e),
                        None => eprintln!("witness: round failed, retrying: {e:#}"),
                    },
                }
                if once {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_secs(every_secs));
            }
        }
    }
}

fn verify_ledger(
    export: &std::path::Path,
    key: Option<&str>,
    held: &[PathBuf],
    witnesses: &[String],
    json: bool,
) -> Result<()> {
    let key = key.map(read_key).transpose()?;
    let witnesses = read_witness_keys(witnesses)?;
    let held = held
        .iter()
        .map(|p| held_checkpoint(p))
        .collect::<Result<Vec<_>>>()?;
    let verdict = gateway::ledger::verify_file(export, key.as_deref(), &held, &witnesses)
        .with_context(|| format!("reading {}", export.display()))?;
    match verdict {
        Ok(r) => {
            if json {
                return print_json(serde_json::json!({"ok": true, "report": r}));
            }
            println!(
                "ledger OK: {} entries, {} signed checkpoint(s), {} consistency proof(s), {} held checkpoint(s) \
                 consistent, root {}",
                r.entries, r.checkpoints, r.consistency_proofs, r.held_checkpoints, r.root
            );
            for w in &r.witnessed {
                println!(
                    "witness {} cosigned the first {} entries (cosignature time {})",
                    w.witness, w.size, w.time
                );
            }
            if r.key_generations > 1 {
                println!(
                    "the ledger signing key rotated: {} generations followed, each announced under the one before",
                    r.key_generations
                );
            }
            if !r.key_pinned {
                println!("warning: no --public-key given; the key inside the export was trusted");
            }
            Ok(())
        }
        Err(f) => {
            if json {
                print_json(serde_json::json!({"ok": false, "failure": f}))?;
            } else {
                let at = f
                    .first_bad_entry
                    .map(|e| format!("first bad entry: {e}; "))
                    .unwrap_or_default();
                eprintln!("ledger INVALID: {at}line {}: {}", f.line, f.reason);
            }
            std::process::exit(1);
        }
    }
}

fn verify_receipt(
    receipt: &std::path::Path,
    key: Option<&str>,
    output: Option<&std::path::Path>,
    witnesses: &[String],
    json: bool,
) -> Result<()> {
    let key = key.map(read_key).transpose()?;
    let witnesses = read_witness_keys(witnesses)?;
    let text = std::fs::read_to_string(receipt).with_context(|| format!("reading {}", receipt.display()))?;
    let output = output
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let parsed: Result<Receipt, _> = serde_json::from_str(&text);
    let result = parsed
        .map_err(|e| format!("the receipt is malformed: {e}"))
        .and_then(|r| {
            scenarios::ledger::verify_receipt_witnessed(&r, key.as_deref(), output.as_deref(), &witnesses)
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(r) => {
            if json {
                return print_json(serde_json::json!({"ok": true, "report": r}));
            }
            println!(
                "receipt OK: entry {} ({} {}) is in the signed ledger of {} entries{}",
                r.seq,
                r.action,
                r.subject,
                r.checkpoint_size,
                if r.output_matches {
                    "; the output matches its hash"
                } else {
                    ""
                }
            );
            for w in &r.witnessed_by {
                println!("witness {w} cosigned the receipt's checkpoint");
            }
            if r.key_generations > 1 {
                println!(
                    "the ledger signing key rotated: {} generations followed from the first key, each announced \
                     under the one before",
                    r.key_generations
                );
            }
            if !r.key_pinned {
                println!("warning: no --public-key given; the key inside the receipt was trusted");
            }
            Ok(())
        }
        Err(reason) => {
            if json {
                print_json(serde_json::json!({"ok": false, "reason": reason}))?;
            } else {
                eprintln!("receipt INVALID: {reason}");
            }
            std::process::exit(1);
        }
    }
}
