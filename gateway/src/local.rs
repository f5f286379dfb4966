//! Local runs on sample data (`invis run-local`): a developer runs a job in
//! the same runtime, with the same ABI, policy checks and release mechanism,
//! against synthetic rows generated from the scenario's schema, before
//! applying. No server and no real data are involved.
//!
//! What a local run needs is a *bundle*: the approved scenario and the
//! schema, rules and domains of its datasets, with no path and no data. The
//! development catalog serves it (`GET /v1/developer/scenarios/{id}/bundle`)
//! and `run-local` accepts it as a file or fetches it by scenario id.

use crate::client::Client;
use crate::records::DatasetRecord;
use anyhow::{bail, Context, Result};
use runtime::{JobInput, JobLimits, Runtime};
use sandbox::arrow::record_batch::RecordBatch;
use sandbox::desensitize::TokenKey;
use sandbox::sample::{parse_type, sample_table};
use sandbox::{DataPlane, MemoryAccountant, ScopeConfig};
use scenarios::catalog::DatasetSpec;
use scenarios::policy::ScenarioSpec;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Format tag of a bundle.
pub const BUNDLE_FORMAT: &str = "invis-local-bundle/1";

/// A scenario and its datasets' schemas: everything a local run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The scenario's id on the platform it came from (empty for a
    /// hand-written bundle).
    #[serde(default)]
    pub scenario_id: String,
    /// The scenario.
    pub scenario: ScenarioSpec,
    /// Its datasets.
    pub datasets: Vec<BundleDataset>,
}

/// One dataset of a bundle: its registration without the file path, and
/// its column types.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleDataset {
    /// Name, columns, rules, domains, privacy unit (path blanked).
    pub spec: DatasetSpec,
    /// Arrow type of each column, as recorded at registration.
    pub types: Vec<(String, String)>,
    /// True when each privacy unit has one row.
    pub unit_unique: bool,
}

/// The bundle of an approved scenario over the current catalog.
pub fn bundle(scenario_id: &str, spec: &ScenarioSpec, catalog: &[DatasetRecord]) -> Bundle {
    let datasets = spec
        .tables
        .iter()
        .filter_map(|t| catalog.iter().find(|d| d.name == t.dataset))
        .map(|d| {
            let mut s = d.spec.clone();
            s.path = String::new();
            BundleDataset {
                spec: s,
                types: d
                    .profile
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.data_type.clone()))
                    .collect(),
                unit_unique: d.spec.one_row_per_unit,
            }
        })
        .collect();
    Bundle {
        format: BUNDLE_FORMAT.into(),
        scenario_id: scenario_id.into(),
        scenario: spec.clone(),
        datasets,
    }
}

/// Options of `invis run-local`.
#[derive(Debug)]
pub struct LocalRun {
    /// The job module.
    pub job: PathBuf,
    /// A bundle file, or a scenario id fetched from `server`.
    pub scenario: String,
    /// Platform to fetch a bundle from (with `INVIS_TOKEN`).
    pub server: String,
    /// Synthetic rows per dataset.
    pub rows: usize,
    /// Job parameters.
    pub params: Vec<u8>,
    /// Print one JSON object instead of text.
    pub json: bool,
}

fn load_bundle(opts: &LocalRun) -> Result<Bundle> {
    let path = Path::new(&opts.scenario);
    let bundle: Bundle = if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a scenario bundle", path.display()))?
    } else {
        let token = std::env::var("INVIS_TOKEN").map_err(|_| {
            anyhow::anyhow!(
                "`{}` is not a file; to fetch the scenario's bundle from {}, set INVIS_TOKEN to your developer token",
                opts.scenario.escape_debug(),
                opts.server
            )
        })?;
        let client = Client::new(&opts.server).with_token(&token);
        let reply = client
            .get(&format!("/v1/developer/scenarios/{}/bundle", opts.scenario))?
            .ok()?;
        serde_json::from_value(reply.json()).context("the server's bundle does not parse")?
    };
    if bundle.format != BUNDLE_FORMAT {
        bail!("unsupported bundle format `{}`", bundle.format.escape_debug());
    }
    Ok(bundle)
}

/// Runs a job locally and prints what it would emit. Returns the exit code:
/// 0 when the job succeeded, 1 when it failed.
pub async fn run(opts: LocalRun) -> Result<i32> {
    let bytes = std::fs::read(&opts.job).with_context(|| format!("reading {}", opts.job.display()))?;
    let bundle = load_bundle(&opts)?;
    if !(1..=1_000_000).contains(&opts.rows) {
        bail!("--rows must be between 1 and 1000000");
    }
    let mut tables = Vec::new();
    for t in &bundle.scenario.tables {
        let d = bundle
            .datasets
            .iter()
            .find(|d| d.spec.name == t.dataset)
            .with_context(|| format!("the bundle has no schema for dataset `{}`", t.dataset))?;
        let types = d
            .types
            .iter()
            .map(|(n, ty)| Ok((n.clone(), parse_type(ty)?)))
            .collect::<Result<Vec<_>, sandbox::Error>>()?;
        tables.push(sample_table(&d.spec, &types, opts.rows, d.unit_unique)?);
    }
    let accountant = Arc::new(MemoryAccountant::new(bundle.scenario.release.total_budget()));
    let limits = JobLimits::default();
    let cfg = ScopeConfig {
        agreement_id: "local".into(),
        scenario: bundle.scenario.clone(),
        tables,
        token_key: TokenKey::new(&[0u8; 32]),
        memory_limit: usize::try_from(limits.query_memory_bytes).unwrap_or(usize::MAX),
        query_timeout: std::time::Duration::from_millis(limits.query_timeout_ms),
    };
    let scope = DataPlane::new().open(cfg, accountant.clone()).await?;
    let rt = Runtime::new()?;
    let input = JobInput {
        scope: Some(Arc::new(scope)),
        params: opts.params.clone(),
        limits,
        handle: tokio::runtime::Handle::current(),
        cancel: Arc::new(AtomicBool::new(false)),
        module_hash: None,
        hold_slot: None,
        compile_ms: 0,
        tenant: Default::default(),
    };
    let outcome = tokio::task::spawn_blocking(move || rt.run(&bytes, input)).await?;
    let spent = accountant.spent();
    let queries: Vec<_> = outcome
        .releases
        .iter()
        .map(|l| json!({"sql": l.sql, "epsilon": l.cost.epsilon.as_f64(), "groups": l.released_groups}))
        .collect();
    let code = i32::from(outcome.result.is_err());
    if opts.json {
        let (output, error) = match &outcome.result {
            Ok(o) => (Some(render(o)), None),
            Err(e) => (None, Some(json!({"kind": e.kind(), "message": e.to_string()}))),
        };
        let v = json!({
            "scenario": bundle.scenario.name,
            "rows_per_dataset": opts.rows,
            "status": if code == 0 { "succeeded" } else { "failed" },
            "output": output,
            "error": error,
            "logs": outcome.logs,
            "usage": outcome.usage,
            "queries": queries,
            "epsilon_spent": spent.epsilon.as_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(code);
    }
    println!(
        "local run of {} on scenario \"{}\" ({} synthetic rows per dataset; no real data)",
        opts.job.display(),
        bundle.scenario.name,
        opts.rows
    );
    for q in &outcome.releases {
        println!(
            "  query (epsilon {:.3}, {} groups released): {}",
            q.cost.epsilon.as_f64(),
            q.released_groups.unwrap_or(0),
            q.sql
        );
    }
    for l in &outcome.logs {
        println!("  log: {l}");
    }
    let u = &outcome.usage;
    println!(
        "  usage: fuel {}, wall {} ms, peak memory {} KiB, host calls {}",
        u.fuel,
        u.wall_ms,
        u.peak_memory_bytes / 1024,
        u.host_calls
    );
    match &outcome.result {
        Ok(o) => {
            println!("succeeded; the job would emit ({} bytes):", o.len());
            println!("{}", render(o));
        }
        Err(e) => println!("failed ({}): {e}", e.kind()),
    }
    Ok(code)
}

/// Output as text: Arrow IPC streams as tables, UTF-8 as is, other bytes
/// as a hex preview.
pub fn render(output: &[u8]) -> String {
    if output.starts_with(&[0xFF, 0xFF, 0xFF, 0xFF]) {
        if let Ok(tables) = decode_streams(output) {
            let mut s = String::new();
            for batches in tables {
                match sandbox::arrow::util::pretty::pretty_format_batches(&batches) {
                    Ok(t) => s.push_str(&format!("{t}\n")),
                    Err(_) => s.push_str("(an Arrow table that cannot be displayed)\n"),
                }
            }
            return s;
        }
    }
    match std::str::from_utf8(output) {
        Ok(t) => t.to_string(),
        Err(_) => {
            let preview: String = output.iter().take(64).map(|b| format!("{b:02x}")).collect();
            format!("({} binary bytes) {preview}...", output.len())
        }
    }
}

/// Decodes one or more Arrow IPC streams written back to back.
fn decode_streams(bytes: &[u8]) -> Result<Vec<Vec<RecordBatch>>> {
    use sandbox::arrow::buffer::Buffer;
    use sandbox::arrow::ipc::reader::StreamDecoder;
    let mut buf = Buffer::from(bytes.to_vec());
    let mut tables = Vec::new();
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(b)) => batches.push(b),
            Ok(None) => {
                decoder.finish()?;
                tables.push(batches);
                return Ok(tables);
            }
            // The decoder stops with this error at the end-of-stream marker
            // when more bytes follow: the next stream starts there.
            Err(e) if e.to_string().contains("Unexpected EOS") && buf.len() < before && !buf.is_empty() => {
                tables.push(std::mem::take(&mut batches));
                decoder = StreamDecoder::new();
            }
            Err(e) => return Err(e.into()),
        }
    }
}
