//! `invis bench`: protected versus raw query times over the demo's data.

use crate::demo::{self, data};
use anyhow::Result;
use sandbox::desensitize::TokenKey;
use sandbox::{DataPlane, ScopeConfig, TableData, TableVersion};
use scenarios::catalog::DatasetSpec;
use scenarios::policy::ScenarioSpec;

/// Generates the demo data, registers it in memory and prints the table.
pub async fn run(enterprises: usize, iterations: usize) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("invis-bench-").tempdir()?;
    let files = data::generate(tmp.path(), enterprises)?;
    let mut tables = Vec::new();
    for (_, spec) in demo::dataset_specs(&files) {
        let spec: DatasetSpec = serde_json::from_value(spec)?;
        let p = sandbox::profile::profile(&spec).await?;
        tables.push(TableVersion {
            spec,
            version: p.version,
            unit_unique: p.unit_unique,
            data: TableData::File(p.fingerprint),
        });
    }
    let scenario: ScenarioSpec = serde_json::from_value(demo::bank_scenario())?;
    let cfg = ScopeConfig {
        agreement_id: "bench".into(),
        scenario,
        tables,
        token_key: TokenKey::new(&[1u8; 32]),
        memory_limit: 4 << 30,
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
    let rows = sandbox::bench::compare(&DataPlane::new(), cfg, &cases, iterations).await?;
    println!(
        "{enterprises} enterprises, {} insurance rows; median of {iterations} runs",
        enterprises * 12
    );
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
    Ok(())
}
