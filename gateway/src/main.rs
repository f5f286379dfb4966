//! The `invis` command line: serve the API, run the demo, bootstrap the
//! first parties, export and verify the ledger.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gateway::state::{AppState, Config};
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
        #[command(flatten)]
        limits: LimitArgs,
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
    },
    /// Verify a ledger export offline: every hash, link, signature and root.
    VerifyLedger {
        /// The export (NDJSON).
        export: PathBuf,
        /// The operator's Ed25519 public key (hex, or a file holding it).
        /// Without it the key inside the export is used, which proves
        /// integrity but not who signed.
        #[arg(long)]
        public_key: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
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
}

fn config(data_dir: PathBuf) -> Config {
    Config {
        data_dir,
        job_limits: runtime::JobLimits::default(),
        calendar: Default::default(),
        sample_rows: 10,
    }
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
            limits,
        } => {
            let mut cfg = config(data_dir);
            cfg.job_limits = limits.limits()?;
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
        } => gateway::bench::run(enterprises, iterations, (!no_pums).then_some(pums), reps).await,
        Command::Admin {
            command:
                AdminCommand::Bootstrap {
                    data_dir,
                    operator,
                    regulator,
                    json,
                },
        } => {
            let state = AppState::open(config(data_dir))?;
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
        Command::ExportLedger { data_dir, output } => {
            let state = AppState::open(config(data_dir))?;
            let mut out: Box<dyn std::io::Write> = match output {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(&p)?)),
                None => Box::new(std::io::stdout().lock()),
            };
            gateway::ledger::export(&state.store, &state.keys, &mut out)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            out.flush()?;
            Ok(())
        }
        Command::VerifyLedger {
            export,
            public_key,
            json,
        } => {
            let key = public_key.as_deref().map(read_key).transpose()?;
            let text =
                std::fs::read_to_string(&export).with_context(|| format!("reading {}", export.display()))?;
            match scenarios::ledger::verify_export(text.lines(), key.as_deref()) {
                Ok(r) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&serde_json::json!({"ok": true, "report": r}))?
                        );
                    } else {
                        println!(
                            "ledger OK: {} entries, {} signed checkpoint(s), root {}",
                            r.entries, r.checkpoints, r.root
                        );
                        if !r.key_pinned {
                            println!("warning: no --public-key given; the key inside the export was trusted");
                        }
                    }
                    Ok(())
                }
                Err(f) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&serde_json::json!({"ok": false, "failure": f}))?
                        );
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
    }
}
