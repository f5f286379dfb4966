//! `invis bench`: protected versus raw query times over the demo's data.

pub mod audit;
pub mod compile;
pub mod ledger;
pub mod load;
pub mod runtime;

use crate::demo::{self, data};
use anyhow::Result;
use sandbox::desensitize::TokenKey;
use sandbox::{DataPlane, ScopeConfig, TableVersion};
use scenarios::catalog::DatasetSpec;
use scenarios::policy::ScenarioSpec;
use std::path::{Path, PathBuf};

fn print_timings(rows: &[sandbox::bench::BenchRow]) {
    println!(
        "{:<58} {:>10} {:>14} {:>7}",
        "query", "raw ms", "protected ms", "ratio"
    );
    for r in rows {
        println!(
            "{:<58} {:>10.2} {:>14.2} {:>6.2}x",
            r.name, r.raw_ms, r.protected_ms, r.ratio
        );
    }
}

/// A part of `invis bench` that can be run alone (`--only`), for example
/// under a profiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// The demo's municipal tables, protected against raw.
    Demo,
    /// PUMS_x1000 read from CSV on every query.
    PumsCsv,
    /// PUMS_x1000 registered as an in-memory table.
    PumsMemory,
    /// Accuracy on the 1,000-person PUMS sample.
    Accuracy,
}

/// What part of the benchmark to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// These sections (all when empty).
    pub sections: Vec<Section>,
    /// Only the queries whose label contains this text.
    pub query: Option<String>,
    /// Only the raw or only the protected queries (to profile one side).
    pub side: Option<Side>,
}

/// One side of the comparison (`--side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Side {
    /// The SQL run raw in DataFusion.
    Raw,
    /// The SQL run through the policy and the mechanism.
    Protected,
}

impl Selection {
    fn sides(&self) -> sandbox::bench::Sides {
        match self.side {
            None => sandbox::bench::Sides::Both,
            Some(Side::Raw) => sandbox::bench::Sides::Raw,
            Some(Side::Protected) => sandbox::bench::Sides::Protected,
        }
    }

    fn keeps(&self, label: &str) -> bool {
        self.query.as_deref().is_none_or(|q| label.contains(q))
    }
}

/// Runs the selected benchmark sections: the demo's municipal data and,
/// when the directory exists, the PUMS census sample.
pub async fn run(
    enterprises: usize,
    iterations: usize,
    pums: Option<PathBuf>,
    reps: usize,
    selection: &Selection,
) -> Result<()> {
    let only = &selection.sections;
    let wanted = |s: Section| only.is_empty() || only.contains(&s);
    if wanted(Section::Demo) {
        demo_section(enterprises, iterations, selection).await?;
    }
    let pums_wanted = [Section::PumsCsv, Section::PumsMemory, Section::Accuracy]
        .into_iter()
        .filter(|s| wanted(*s))
        .collect::<Vec<_>>();
    match pums {
        _ if pums_wanted.is_empty() => Ok(()),
        Some(dir) if dir.join("PUMS_x1000.csv").exists() => {
            pums_section(
                &std::fs::canonicalize(&dir)?,
                iterations,
                reps,
                &pums_wanted,
                selection,
            )
            .await
        }
        Some(dir) => anyhow::bail!("no PUMS_x1000.csv in {}", dir.display()),
        None => Ok(()),
    }
}

fn pums_spec(path: &Path) -> Result<DatasetSpec> {
    Ok(serde_json::from_value(serde_json::json!({
        "name": "pums",
        "description": "California PUMS extract (smartnoise-sdk), one row per person",
        "path": path.to_string_lossy(),
        "privacy_unit": "pid",
        "unit_kind": "person",
        "one_row_per_unit": true,
        "columns": [
            {"name": "age", "rule": "keep", "not_null": true}, {"name": "sex", "rule": "keep", "not_null": true},
            {"name": "educ", "rule": "keep", "not_null": true},
            {"name": "race", "rule": "keep", "not_null": true},
            {"name": "income", "rule": "keep", "scale": 0, "not_null": true},
            {"name": "married", "rule": "keep", "not_null": true},
            {"name": "pid", "rule": "tokenize", "not_null": true}
        ]
    }))?)
}

fn pums_scenario(epsilon: f64) -> Result<ScenarioSpec> {
    Ok(serde_json::from_value(serde_json::json!({
        "name": "census tables", "class": "demography", "purpose": "benchmark",
        "tables": [{"dataset": "pums", "columns": [
            {"name": "sex", "ops": ["group"]}, {"name": "educ", "ops": ["group"]},
            {"name": "race", "ops": ["group"]}, {"name": "married", "ops": ["group"]},
            {"name": "income", "ops": ["aggregate"], "bounds": [0, 500000]},
            {"name": "age", "ops": ["group", "filter"]}
        ]}],
        "release": {"epsilon_total": 10.0, "epsilon_per_query": epsilon, "min_group_size": 5}
    }))?)
}

/// The census scenario under today's defaults (delta per query and in
/// total left to them) and caps for a population of `units` people, as a
/// job runs it (`ReleaseRules::within_caps`).
fn pums_scenario_for(epsilon: f64, units: u64) -> Result<ScenarioSpec> {
    let mut spec = pums_scenario(epsilon)?;
    spec.release = spec.release.within_caps(units);
    Ok(spec)
}

/// The table and its number of people (the population's size).
async fn pums_table(path: &Path) -> Result<(TableVersion, u64)> {
    let spec = pums_spec(path)?;
    let p = sandbox::profile::profile(&spec).await?;
    Ok((TableVersion::from_profile(spec, &p), p.units))
}

/// The five census queries of issue 5 (income clamped to [0, 500000]).
fn pums_queries() -> Vec<(&'static str, &'static str, usize, Option<&'static str>)> {
    vec![
        ("COUNT(*)", "SELECT COUNT(*) AS n FROM pums", 0, None),
        (
            "COUNT by sex",
            "SELECT sex, COUNT(*) AS n FROM pums GROUP BY sex",
            1,
            None,
        ),
        (
            "AVG(income) by educ",
            "SELECT educ, AVG(income) AS avg_income FROM pums GROUP BY educ",
            1,
            Some(
                "SELECT educ, SUM(LEAST(GREATEST(income, 0), 500000)), COUNT(income) FROM pums GROUP BY educ",
            ),
        ),
        (
            "SUM(income) by married",
            "SELECT married, SUM(income) AS total FROM pums GROUP BY married",
            1,
            None,
        ),
        (
            "COUNT by race, sex",
            "SELECT race, sex, COUNT(*) AS n FROM pums GROUP BY race, sex",
            2,
            None,
        ),
    ]
}

async fn pums_section(
    dir: &Path,
    iterations: usize,
    reps: usize,
    sections: &[Section],
    selection: &Selection,
) -> Result<()> {
    let (big, big_units) = pums_table(&dir.join("PUMS_x1000.csv")).await?;
    let plane = DataPlane::new();
    let cfg = |t: TableVersion, units: u64, eps: f64| -> Result<ScopeConfig> {
        Ok(ScopeConfig {
            agreement_id: "bench".into(),
            scenario: pums_scenario_for(eps, units)?,
            tables: vec![t],
            token_key: TokenKey::new(&[1u8; 32]),
            memory_limit: 4 << 30,
            query_timeout: std::time::Duration::from_secs(60),
        })
    };
    let cases: Vec<(String, String, String)> = pums_queries()
        .iter()
        .filter(|(n, ..)| selection.keeps(n))
        .map(|(n, q, _, _)| (n.to_string(), q.to_string(), q.to_string()))
        .collect();
    if sections.contains(&Section::PumsCsv) {
        let rows = sandbox::bench::compare(
            &plane,
            cfg(big.clone(), big_units, 1.0)?,
            &cases,
            iterations,
            selection.sides(),
        )
        .await?;
        println!();
        println!("PUMS_x1000.csv: 1,000,000 rows (CSV, read on every query); median of {iterations} runs");
        print_timings(&rows);
    }
    if sections.contains(&Section::PumsMemory) {
        // The same rows held in memory: no parsing hides the per-query cost
        // of the policy, total evaluation and the mechanism.
        let batches = sandbox::files::read_csv(&dir.join("PUMS_x1000.csv")).await?;
        let mut in_memory = big;
        in_memory.data = sandbox::TableData::Batches(batches);
        let rows = sandbox::bench::compare(
            &plane,
            cfg(in_memory, big_units, 1.0)?,
            &cases,
            iterations,
            selection.sides(),
        )
        .await?;
        println!();
        println!(
            "PUMS_x1000 in memory: the same 1,000,000 rows registered as an in-memory table; median of {iterations} runs"
        );
        print_timings(&rows);
    }
    if !sections.contains(&Section::Accuracy) {
        return Ok(());
    }
    println!();
    let (small, small_units) = pums_table(&dir.join("PUMS_pid.csv")).await?;
    let rules = pums_scenario_for(1.0, small_units)?.release;
    println!(
        "today's defaults and caps for {small_units} people: delta per query {}, delta total {}, epsilon total {}",
        rules.delta_per_query, rules.delta_total, rules.epsilon_total
    );
    println!("PUMS.csv (1,000 real people): mean relative error over {reps} releases per query");
    println!(
        "{:<26} {:>7} {:>12} {:>12} {:>10}",
        "query", "epsilon", "invis", "laplace ref", "released"
    );
    for eps in [1.0, 0.1] {
        let cases: Vec<sandbox::bench::AccuracyCase> = pums_queries()
            .into_iter()
            .filter(|(n, ..)| selection.keeps(n))
            .map(|(n, q, k, parts)| sandbox::bench::AccuracyCase {
                name: n.into(),
                sql: q.into(),
                keys: k,
                avg_parts_sql: parts.map(str::to_string),
            })
            .collect();
        for r in sandbox::bench::accuracy(&plane, cfg(small.clone(), small_units, eps)?, &cases, reps).await?
        {
            println!(
                "{:<26} {:>7} {:>11.2}% {:>11.2}% {:>9.0}%",
                r.name,
                r.epsilon,
                100.0 * r.mean_relative_error,
                100.0 * r.reference_relative_error,
                100.0 * r.released_fraction
            );
        }
    }
    Ok(())
}

async fn demo_section(enterprises: usize, iterations: usize, selection: &Selection) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("invis-bench-").tempdir()?;
    let files = data::generate(tmp.path(), enterprises)?;
    let mut tables = Vec::new();
    for (_, spec, local) in demo::dataset_specs(&files) {
        // In process, as the operator's tool: the sandbox reads the local
        // file where the server would read the one it accepted.
        let mut spec: DatasetSpec = serde_json::from_value(spec)?;
        spec.path = local.to_string_lossy().into_owned();
        let p = sandbox::profile::profile(&spec).await?;
        tables.push(TableVersion::from_profile(spec, &p));
    }
    let scenario: ScenarioSpec = serde_json::from_value(demo::bank_scenario())?;
    let cfg = ScopeConfig {
        agreement_id: "bench".into(),
        scenario,
        tables,
        token_key: TokenKey::new(&[1u8; 32]),
        memory_limit: 4 << 30,
        query_timeout: std::time::Duration::from_secs(60),
    };
    let case = |name: &str, sql: &str, raw: &str| (name.to_string(), sql.to_string(), raw.to_string());
    let cases = vec![
        case(
            "count by industry, district (register)",
            "SELECT industry, district, COUNT(*) FROM enterprise_register GROUP BY industry, district",
            "SELECT industry, district, COUNT(*) FROM enterprise_register GROUP BY industry, district",
        ),
        case(
            "avg employees by industry, district",
            "SELECT industry, district, AVG(employees) FROM enterprise_register GROUP BY industry, district",
            "SELECT industry, district, AVG(employees) FROM enterprise_register GROUP BY industry, district",
        ),
        case(
            "insurance sums by industry, district (join, 12 rows/unit)",
            "SELECT r.industry, r.district, SUM(s.insured_count), SUM(s.amount_paid) FROM enterprise_register r \
             JOIN social_insurance s ON r.enterprise_id = s.enterprise_id GROUP BY r.industry, r.district",
            "SELECT r.industry, r.district, SUM(s.insured_count), SUM(s.amount_paid) FROM enterprise_register r \
             JOIN social_insurance s ON r.enterprise_id = s.enterprise_id GROUP BY r.industry, r.district",
        ),
        case(
            "grade A count by industry, district (join)",
            "SELECT r.industry, r.district, COUNT(*) FROM enterprise_register r JOIN tax_credit t \
             ON r.enterprise_id = t.enterprise_id WHERE t.grade = 'A' GROUP BY r.industry, r.district",
            "SELECT r.industry, r.district, COUNT(*) FROM enterprise_register r JOIN tax_credit t \
             ON r.enterprise_id = t.enterprise_id WHERE t.grade = 'A' GROUP BY r.industry, r.district",
        ),
    ];
    let cases: Vec<_> = cases.into_iter().filter(|(n, ..)| selection.keeps(n)).collect();
    let rows = sandbox::bench::compare(&DataPlane::new(), cfg, &cases, iterations, selection.sides()).await?;
    println!(
        "{enterprises} enterprises, {} insurance rows; median of {iterations} runs",
        enterprises * 12
    );
    print_timings(&rows);
    Ok(())
}
