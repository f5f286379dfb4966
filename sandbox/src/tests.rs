//! Tests of the policy checker and the release mechanism on the PUMS
//! census sample (`../shared/data/pums`, read in place): which SQL is
//! accepted, which is refused and why (R16), and that released values are
//! bounded, noisy and thresholded (R17).

use crate::desensitize::TokenKey;
use crate::profile::profile;
use crate::{DataPlane, Error, JobScope, MemoryAccountant, ScopeConfig, TableVersion};
use scenarios::budget::{Budget, Delta, Epsilon};
use scenarios::catalog::DatasetSpec;
use scenarios::policy::ScenarioSpec;

use serde_json::json;
use std::sync::Arc;

mod attacks;
mod i14_perf_review;
mod i14_review;
mod i14_review2;
mod i15_review;
mod i19_review;
mod oracle;
mod property;
mod small_leaks;
mod tokens;
mod verification;

pub(super) fn pums(file: &str) -> String {
    format!("{}/../../shared/data/pums/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// The dataset over a PUMS file, declared one row per unit unless the
/// file repeats persons (`PUMS_dup.csv`).
pub(super) fn spec(file: &str, name: &str) -> DatasetSpec {
    let one_row_per_unit = !file.contains("dup");
    serde_json::from_value(json!({
        "name": name,
        "path": pums(file),
        "privacy_unit": "pid",
        "unit_kind": "person",
        "one_row_per_unit": one_row_per_unit,
        "columns": [
            {"name": "age", "rule": "keep", "not_null": true},
            {"name": "sex", "rule": "keep", "not_null": true},
            {"name": "educ", "rule": "keep", "not_null": true},
            {"name": "race", "rule": "keep", "not_null": true},
            {"name": "income", "rule": "keep", "not_null": true},
            {"name": "married", "rule": "keep", "not_null": true},
            {"name": "pid", "rule": "tokenize", "not_null": true}
        ]
    }))
    .unwrap()
}

pub(super) fn scenario(table: &str, epsilon_per_query: f64, epsilon_total: f64) -> ScenarioSpec {
    serde_json::from_value(json!({
        "name": "census", "class": "demography", "purpose": "testing",
        "tables": [{"dataset": table, "columns": [
            {"name": "age", "ops": ["group", "filter", "aggregate"], "bounds": [0, 100]},
            {"name": "sex", "ops": ["group", "filter"]},
            {"name": "educ", "ops": ["group", "filter", "aggregate"]},
            {"name": "race", "ops": ["group", "filter"]},
            {"name": "income", "ops": ["aggregate", "filter"], "bounds": [0, 500000]},
            {"name": "married", "ops": ["group", "filter", "aggregate"], "bounds": [0, 1]},
            {"name": "pid", "ops": ["join", "aggregate"]}
        ]}],
        "release": {"epsilon_total": epsilon_total, "epsilon_per_query": epsilon_per_query,
            "min_group_size": 5, "max_rows_per_unit": 1, "max_queries_per_job": 100000,
            "delta_per_query": 1e-7, "delta_total": (epsilon_total * 1e-4).max(1e-4)}
    }))
    .unwrap()
}

pub(super) async fn open(file: &str, eps_q: f64, eps_total: f64) -> (JobScope, Arc<MemoryAccountant>) {
    let name = "pums";
    let spec = spec(file, name);
    let p = profile(&spec).await.expect("profile");
    let sc = scenario(name, eps_q, eps_total);
    let accountant = Arc::new(MemoryAccountant::new(sc.release.total_budget()));
    let cfg = ScopeConfig {
        agreement_id: "ag_test".into(),
        scenario: sc,
        tables: vec![TableVersion::from_profile(spec, &p)],
        token_key: TokenKey::new(&[9u8; 32]),
        memory_limit: 1 << 30,
        query_timeout: std::time::Duration::from_secs(60),
    };
    let scope = DataPlane::new()
        .open(cfg, accountant.clone())
        .await
        .expect("scope");
    (scope, accountant)
}

#[tokio::test]
async fn accepted_queries() {
    let (scope, acc) = open("PUMS_pid.csv", 0.1, 100.0).await;
    for sql in [
        "SELECT COUNT(*) FROM pums",
        "SELECT sex, COUNT(*) FROM pums GROUP BY sex",
        "SELECT educ, AVG(income) FROM pums GROUP BY educ",
        "SELECT married, SUM(income) AS total FROM pums GROUP BY married",
        "SELECT race, sex, COUNT(*) FROM pums GROUP BY race, sex",
        "SELECT COUNT(DISTINCT pid) FROM pums WHERE age > 30",
        "SELECT floor(age / 10) AS decade, COUNT(*) FROM pums GROUP BY floor(age / 10)",
        "SELECT sex, SUM(CASE WHEN married = 1 THEN 1 ELSE 0 END) AS wed FROM pums GROUP BY sex",
        "SELECT sex, COUNT(*) FROM pums WHERE educ IN (1, 2, 3) AND age BETWEEN 20 AND 60 GROUP BY sex",
        "SELECT sex, AVG(age) FROM pums WHERE CAST(educ AS VARCHAR) = '9' GROUP BY sex",
    ] {
        let r = scope.query(sql).await;
        assert!(r.is_ok(), "{sql}: {r:?}");
    }
    assert_eq!(acc.releases().len(), 10);
}

#[tokio::test]
async fn refused_queries_name_the_rule_and_cost_nothing() {
    let (scope, acc) = open("PUMS_pid.csv", 0.1, 100.0).await;
    let cases = [
        ("SELECT * FROM pums", "row-level output"),
        ("SELECT age FROM pums", "row-level output"),
        ("SELECT income FROM pums WHERE age = 59", "row-level output"),
        (
            "SELECT sex, COUNT(*) FROM pums GROUP BY sex HAVING COUNT(*) > 1",
            "HAVING",
        ),
        ("SELECT sex, MAX(income) FROM pums GROUP BY sex", "MAX"),
        (
            "SELECT sex, ROW_NUMBER() OVER (ORDER BY income) FROM pums",
            "window",
        ),
        ("SELECT COUNT(*) FROM pums LIMIT 1", "LIMIT"),
        (
            "SELECT sex, COUNT(*) FROM pums GROUP BY sex ORDER BY sex",
            "ORDER BY",
        ),
        (
            "SELECT COUNT(*) FROM (SELECT * FROM pums WHERE age = 59) t",
            "derived tables",
        ),
        (
            "SELECT COUNT(*) FROM pums WHERE income IN (SELECT income FROM pums)",
            "subqueries",
        ),
        (
            "SELECT COUNT(*) FROM pums a JOIN pums b ON a.pid = b.pid",
            "self-join",
        ),
        (
            "SELECT COUNT(*) FROM pums UNION SELECT COUNT(*) FROM pums",
            "UNION",
        ),
        ("SELECT COUNT(pid) FROM pums", "privacy unit"),
        ("SELECT COUNT(*) FROM pums WHERE pid = 'x'", "privacy unit"),
        (
            "SELECT COUNT(DISTINCT income) FROM pums",
            "only allowed on the privacy unit",
        ),
        ("SELECT SUM(income / age) FROM pums", "division"),
        ("SELECT SUM(educ) FROM pums", "no declared bounds"),
        (
            "SELECT sex, COUNT(*) FROM pums WHERE CAST('1' || sex AS INT) > 0 GROUP BY sex",
            "TRY_CAST",
        ),
        (
            "SELECT sex, COUNT(*) FROM pums WHERE random() < 0.5 GROUP BY sex",
            "function `random`",
        ),
        ("SELECT sex, COUNT(*) FROM pums GROUP BY ROLLUP (sex)", "ROLLUP"),
        ("SELECT __unit, COUNT(*) FROM pums GROUP BY __unit", "not granted"),
        (
            "SELECT sex, SUM(income) FILTER (WHERE age > 50) FROM pums GROUP BY sex",
            "FILTER",
        ),
        ("EXPLAIN SELECT COUNT(*) FROM pums", "only SELECT"),
        (
            "COPY (SELECT COUNT(*) FROM pums) TO '/tmp/invis-leak.csv'",
            "only SELECT",
        ),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "only SELECT",
        ),
        ("SET datafusion.execution.batch_size = 1", "only SELECT"),
        ("SELECT DISTINCT sex FROM pums", "DISTINCT"),
        ("SELECT 1", "read a table"),
    ];
    for (sql, needle) in cases {
        match scope.query(sql).await {
            Err(Error::PolicyViolation(m)) => {
                assert!(m.contains(needle), "{sql}: `{m}` lacks `{needle}`")
            }
            other => panic!("{sql}: expected a policy violation, got {other:?}"),
        }
    }
    for sql in [
        "SELEC 1",
        "SELECT nope, COUNT(*) FROM pums GROUP BY nope",
        "SELECT COUNT(*) FROM other",
    ] {
        assert!(
            matches!(scope.query(sql).await, Err(Error::InvalidQuery(_))),
            "{sql}"
        );
    }
    assert_eq!(acc.spent(), Budget::default(), "refusals are free");
    assert!(!std::path::Path::new("/tmp/invis-leak.csv").exists());
}

pub(super) fn column_i64(b: &crate::arrow::record_batch::RecordBatch, name: &str) -> Vec<i64> {
    use crate::arrow::array::AsArray;
    use crate::arrow::datatypes::Int64Type;
    b.column_by_name(name)
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

fn column_str(b: &crate::arrow::record_batch::RecordBatch, name: &str) -> Vec<String> {
    let a = crate::arrow::compute::cast(
        b.column_by_name(name).unwrap(),
        &crate::arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    use crate::arrow::array::AsArray;
    a.as_string::<i32>()
        .iter()
        .map(|s| s.unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn only_the_scenarios_aggregate_functions_are_allowed() {
    let name = "pums";
    let spec = spec("PUMS_pid.csv", name);
    let p = profile(&spec).await.unwrap();
    let mut sc = scenario(name, 0.1, 10.0);
    sc.aggregates = [scenarios::policy::AggregateFn::Count].into_iter().collect();
    let cfg = ScopeConfig {
        agreement_id: "ag".into(),
        scenario: sc.clone(),
        tables: vec![TableVersion::from_profile(spec, &p)],
        token_key: TokenKey::new(&[1u8; 32]),
        memory_limit: 1 << 30,
        query_timeout: std::time::Duration::from_secs(60),
    };
    let acc = Arc::new(MemoryAccountant::new(sc.release.total_budget()));
    let scope = DataPlane::new().open(cfg, acc).await.unwrap();
    assert!(scope
        .query("SELECT sex, COUNT(*) FROM pums GROUP BY sex")
        .await
        .is_ok());
    match scope
        .query("SELECT sex, AVG(income) FROM pums GROUP BY sex")
        .await
    {
        Err(Error::PolicyViolation(m)) => assert!(m.contains("AVG is not among"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn gaussian_scenarios_spend_rho_and_release_accurate_counts() {
    let name = "pums";
    let spec = spec("PUMS_pid.csv", name);
    let p = profile(&spec).await.unwrap();
    let mut sc = scenario(name, 1.0, 10.0);
    sc.release.noise = scenarios::policy::NoiseKind::Gaussian;
    sc.release.epsilon_per_query = Epsilon(0);
    sc.release.epsilon_total = Epsilon(0);
    sc.release.rho_per_query = scenarios::budget::Rho(500_000);
    sc.release.rho_total = scenarios::budget::Rho(1_000_000);
    sc.release.delta_total = Delta(10_000_000);
    sc.release.max_queries_per_job = 100;
    sc.release.validate().unwrap();
    let acc = Arc::new(MemoryAccountant::new(sc.release.total_budget()));
    let cfg = ScopeConfig {
        agreement_id: "ag".into(),
        scenario: sc,
        tables: vec![TableVersion::from_profile(spec, &p)],
        token_key: TokenKey::new(&[1u8; 32]),
        memory_limit: 1 << 30,
        query_timeout: std::time::Duration::from_secs(60),
    };
    let scope = DataPlane::new().open(cfg, acc.clone()).await.unwrap();
    let r = scope
        .query("SELECT sex, COUNT(*) AS n FROM pums GROUP BY sex")
        .await
        .unwrap();
    assert_eq!(r.lineage.mechanism.noise, "discrete_gaussian");
    // One measurement at rho 0.5, sensitivity 1: sigma = 1.
    assert_eq!(
        r.lineage.mechanism.measurements[0].scale,
        "sigma2=1000000/1000000"
    );
    let n = column_i64(&r.batch, "n");
    assert!((n[0] - 486).abs() < 10 && (n[1] - 514).abs() < 10, "{n:?}");
    scope.query("SELECT COUNT(*) FROM pums").await.unwrap();
    assert!(
        matches!(scope.query("SELECT COUNT(*) FROM pums").await, Err(Error::BudgetExhausted(m)) if m.contains("rho"))
    );
    assert_eq!(acc.spent().rho, scenarios::budget::Rho(1_000_000));
    assert_eq!(acc.spent().epsilon, Epsilon(0));
}

#[tokio::test]
async fn public_domains_release_every_category_and_spend_no_delta() {
    let name = "pums";
    let mut spec = spec("PUMS_pid.csv", name);
    let cats = |v: &[&str]| {
        Some(scenarios::catalog::Domain::Categories(
            v.iter().map(|s| s.to_string()).collect(),
        ))
    };
    spec.columns.iter_mut().find(|c| c.name == "race").unwrap().domain =
        cats(&["1", "2", "3", "4", "5", "6", "7"]);
    spec.columns.iter_mut().find(|c| c.name == "sex").unwrap().domain = cats(&["0", "1"]);
    let p = profile(&spec).await.unwrap();
    let mut sc = scenario(name, 1.0, 10.0);
    sc.release.delta_total = Delta(10_000_000);
    sc.release.max_queries_per_job = 100;
    for g in sc.tables[0]
        .columns
        .iter_mut()
        .filter(|g| g.name == "race" || g.name == "sex")
    {
        g.public_domain = true;
    }
    sc.validate(|_| Some(&spec)).unwrap();
    let acc = Arc::new(MemoryAccountant::new(sc.release.total_budget()));
    let cfg = ScopeConfig {
        agreement_id: "ag".into(),
        scenario: sc,
        tables: vec![TableVersion::from_profile(spec.clone(), &p)],
        token_key: TokenKey::new(&[1u8; 32]),
        memory_limit: 1 << 30,
        query_timeout: std::time::Duration::from_secs(60),
    };
    let scope = DataPlane::new().open(cfg, acc.clone()).await.unwrap();
    let r = scope
        .query("SELECT race, sex, COUNT(*) AS n FROM pums GROUP BY race, sex")
        .await
        .unwrap();
    // Every combination, including race 7 that nobody has; small cells have
    // their values withheld, large ones not.
    assert_eq!(r.batch.num_rows(), 14);
    assert_eq!(
        column_i64(&r.batch, "race"),
        vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    );
    use crate::arrow::array::Array;
    let n = r.batch.column_by_name("n").unwrap();
    for row in 8..14 {
        assert!(n.is_null(row), "race 5, 6 and 7 cells are all small: row {row}");
    }
    assert!(!n.is_null(0) && !n.is_null(1), "race 1 cells are large");
    assert_eq!(r.lineage.cost.delta, Delta(0), "no key depends on the data");
    // A key outside the public domain falls back to thresholded keys.
    let r = scope
        .query("SELECT educ, COUNT(*) AS n FROM pums GROUP BY educ")
        .await
        .unwrap();
    assert!(r.lineage.cost.delta > Delta(0));
}

#[tokio::test]
async fn dominated_and_estimable_sums_are_withheld() {
    // Group a: one unit holds the whole sum (dominated). Group c: the two
    // largest hold almost all (p% rule). Groups b and d: many small equal
    // contributions. Epsilon is large so that the noisy decisions are crisp:
    // this tests the rules, not the noise.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("firms.csv");
    let mut csv = String::from("pid,grp,val\n");
    let mut pid = 0;
    let mut row = |g: &str, v: i64, csv: &mut String| {
        pid += 1;
        csv.push_str(&format!("{pid},{g},{v}\n"));
    };
    row("a", 1000, &mut csv);
    for _ in 0..300 {
        row("a", 0, &mut csv);
        row("b", 100, &mut csv);
        row("c", 1, &mut csv);
        row("d", 100, &mut csv);
    }
    row("c", 1000, &mut csv);
    row("c", 1000, &mut csv);
    std::fs::write(&path, csv).unwrap();
    let spec: DatasetSpec = serde_json::from_value(json!({
        "name": "firms", "path": path.to_string_lossy(), "privacy_unit": "pid", "unit_kind": "firm",
        "columns": [{"name": "pid", "rule": "tokenize"}, {"name": "grp", "rule": "keep"}, {"name": "val", "rule": "keep"}]
    }))
    .unwrap();
    let p = profile(&spec).await.unwrap();
    let sc: ScenarioSpec = serde_json::from_value(json!({
        "name": "s", "class": "c", "purpose": "p",
        "tables": [{"dataset": "firms", "columns": [
            {"name": "grp", "ops": ["group"]}, {"name": "val", "ops": ["aggregate"], "bounds": [0, 1000]}
        ]}],
        "release": {"epsilon_total": 100000.0, "epsilon_per_query": 500.0, "min_group_size": 5,
            "max_queries_per_job": 1000, "delta_total": 1e-3,
            "dominance": {"n": 1, "k": 50}, "p_percent": 50}
    }))
    .unwrap();
    let acc = Arc::new(MemoryAccountant::new(sc.release.total_budget()));
    let cfg = ScopeConfig {
        agreement_id: "ag".into(),
        scenario: sc,
        tables: vec![TableVersion::from_profile(spec, &p)],
        token_key: TokenKey::new(&[1u8; 32]),
        memory_limit: 1 << 30,
        query_timeout: std::time::Duration::from_secs(60),
    };
    let scope = DataPlane::new().open(cfg, acc).await.unwrap();
    use crate::arrow::array::Array;
    let mut withheld = std::collections::BTreeMap::<String, usize>::new();
    let runs = 20;
    for _ in 0..runs {
        let r = scope
            .query("SELECT grp, COUNT(*) AS n, SUM(val) AS total, AVG(val) AS mean FROM firms GROUP BY grp")
            .await
            .unwrap();
        assert_eq!(column_str(&r.batch, "grp"), ["a", "b", "c", "d"]);
        let (n, total, mean) = (r.batch.column(1), r.batch.column(2), r.batch.column(3));
        for (i, g) in ["a", "b", "c", "d"].iter().enumerate() {
            assert!(!n.is_null(i), "counts are never withheld by the sum rules");
            assert_eq!(
                total.is_null(i),
                mean.is_null(i),
                "SUM and AVG are withheld together"
            );
            if total.is_null(i) {
                *withheld.entry(g.to_string()).or_default() += 1;
            }
        }
        let names: Vec<&str> = r
            .lineage
            .mechanism
            .measurements
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("top1")) && names.iter().any(|n| n.starts_with("top2")),
            "{names:?}"
        );
    }
    let w = |g: &str| withheld.get(g).copied().unwrap_or(0);
    assert!(
        w("a") >= runs - 2 && w("c") >= runs - 2,
        "dominated cells released: {withheld:?}"
    );
    assert!(
        w("b") <= 2 && w("d") <= 2,
        "balanced cells withheld: {withheld:?}"
    );
    // Without GROUP BY the ranking of contributions sorts on a column of
    // `TotalExec`; its ordering must not be passed to its input by
    // position (planning failed, and the answer fell back to an empty
    // input for every such query).
    for sql in [
        "SELECT SUM(val) AS total FROM firms",
        "SELECT SUM(val) AS total, AVG(val) AS mean FROM firms",
    ] {
        let r = scope.query(sql).await.unwrap();
        assert!(!r.fallback, "{sql}: released the fallback");
    }
}

#[tokio::test]
async fn units_in_many_groups_keep_at_most_l0_of_them() {
    // PUMS_dup repeats people; grouping by a per-row random-ish key would
    // put a unit in several groups. Age is per person, so use a key that
    // varies within a person: none exists in PUMS, so repeat rows with the
    // unit's rows spread over educ levels via a join-free expression.
    let (scope, _) = open("PUMS_dup.csv", 1.0, 1e6).await;
    // `educ` is constant per person, so grouping is unit-determined only if
    // the table has one row per unit; PUMS_dup does not, so L0 applies.
    let r = scope
        .query("SELECT educ, COUNT(*) AS n FROM pums GROUP BY educ")
        .await
        .unwrap();
    assert_eq!(r.lineage.mechanism.contribution, "bounded_per_unit");
    assert_eq!(r.lineage.mechanism.max_groups_per_unit, 1);
    let total: i64 = column_i64(&r.batch, "n").iter().sum();
    // About 1000 people, each counted once in one group (minus small
    // suppressed groups), not 1948 rows.
    assert!(total < 1100, "{total}");
}

#[tokio::test]
async fn suspended_and_non_consenting_units_never_reach_a_query() {
    let name = "pums";
    let spec = spec("PUMS_pid.csv", name);
    let p = profile(&spec).await.unwrap();
    let run = |units: crate::desensitize::UnitFilter| {
        let (spec, p) = (spec.clone(), p.clone());
        async move {
            let sc = scenario(name, 5.0, 1e6);
            let mut t = TableVersion::from_profile(spec, &p);
            t.units = units;
            let acc = Arc::new(MemoryAccountant::new(sc.release.total_budget()));
            let cfg = ScopeConfig {
                agreement_id: "ag".into(),
                scenario: sc,
                tables: vec![t],
                token_key: TokenKey::new(&[1u8; 32]),
                memory_limit: 1 << 30,
                query_timeout: std::time::Duration::from_secs(60),
            };
            let scope = DataPlane::new().open(cfg, acc).await.unwrap();
            let r = scope.query("SELECT COUNT(*) AS n FROM pums").await.unwrap();
            column_i64(&r.batch, "n")[0]
        }
    };
    let first_half: std::collections::HashSet<String> = (1..=500).map(|i| i.to_string()).collect();
    let suspended = run(crate::desensitize::UnitFilter {
        exclude: Arc::new(first_half.clone()),
        only: None,
    })
    .await;
    assert!((suspended - 500).abs() < 10, "{suspended}");
    let consenting = run(crate::desensitize::UnitFilter {
        exclude: Arc::new((1..=50).map(|i| i.to_string()).collect()),
        only: Some(Arc::new(first_half)),
    })
    .await;
    assert!((consenting - 450).abs() < 10, "{consenting}");
}

#[tokio::test]
async fn counts_are_accurate_noisy_and_keys_sorted() {
    let (scope, _) = open("PUMS_pid.csv", 1.0, 100.0).await;
    let r = scope
        .query("SELECT sex, COUNT(*) AS n FROM pums GROUP BY sex")
        .await
        .unwrap();
    assert_eq!(column_i64(&r.batch, "sex"), vec![0, 1]);
    let n = column_i64(&r.batch, "n");
    // True counts 486 and 514; noise scale 1 (one measurement at epsilon 1).
    assert!((n[0] - 486).abs() < 40 && (n[1] - 514).abs() < 40, "{n:?}");
    assert_eq!(r.lineage.mechanism.measurements.len(), 1);
    assert_eq!(r.lineage.mechanism.measurements[0].scale, "1000000/1000000");
    // Repeating the query gives fresh noise: not always the exact answer.
    let mut exact = 0;
    for _ in 0..10 {
        let r = scope
            .query("SELECT sex, COUNT(*) AS n FROM pums GROUP BY sex")
            .await
            .unwrap();
        if column_i64(&r.batch, "n") == vec![486, 514] {
            exact += 1;
        }
    }
    assert!(exact < 10, "noise must be added");
}

#[tokio::test]
async fn a_group_of_one_is_never_released() {
    // race 5 has one person, race 6 five: both under min_group_size + margin.
    let (scope, _) = open("PUMS_pid.csv", 1.0, 1000.0).await;
    for _ in 0..30 {
        let r = scope
            .query("SELECT race, COUNT(*) AS n FROM pums GROUP BY race")
            .await
            .unwrap();
        let races = column_i64(&r.batch, "race");
        assert!(!races.contains(&5) && !races.contains(&6), "{races:?}");
        assert!(races.contains(&1) && races.contains(&3), "{races:?}");
    }
}

#[tokio::test]
async fn sums_are_clamped_to_declared_bounds() {
    let (scope, _) = open("PUMS_pid.csv", 1.0, 100.0).await;
    // AVG(age) must lie in [0, 100] whatever the noise.
    let r = scope
        .query("SELECT educ, AVG(age) AS a FROM pums GROUP BY educ")
        .await
        .unwrap();
    use crate::arrow::array::AsArray;
    use crate::arrow::datatypes::Float64Type;
    for v in r
        .batch
        .column_by_name("a")
        .unwrap()
        .as_primitive::<Float64Type>()
        .iter()
        .flatten()
    {
        assert!((0.0..=100.0).contains(&v), "{v}");
    }
    let b = &r.lineage.mechanism.bounds;
    assert!(
        b.len() == 1 && b[0].0.contains("pums.age") && (b[0].1, b[0].2) == (0, 100),
        "{b:?}"
    );
}

#[tokio::test]
async fn each_unit_counts_once_when_it_has_several_rows() {
    // PUMS_dup repeats each person 1-3 times (1948 rows, 1000 people). With
    // k = 1 row per unit the released count is about 1000, not 1948.
    let (scope, _) = open("PUMS_dup.csv", 1.0, 100.0).await;
    let r = scope.query("SELECT COUNT(*) AS n FROM pums").await.unwrap();
    let n = column_i64(&r.batch, "n")[0];
    assert!((n - 1000).abs() < 50, "{n}");
    assert_eq!(r.lineage.mechanism.contribution, "bounded_per_unit");
    let r = scope
        .query("SELECT COUNT(DISTINCT pid) AS units FROM pums")
        .await
        .unwrap();
    assert!((column_i64(&r.batch, "units")[0] - 1000).abs() < 50);
}

#[tokio::test]
async fn the_budget_is_charged_before_release_and_then_refuses() {
    let (scope, acc) = open("PUMS_pid.csv", 0.5, 1.0).await;
    scope.query("SELECT COUNT(*) FROM pums").await.unwrap();
    scope.query("SELECT COUNT(*) FROM pums").await.unwrap();
    let third = scope.query("SELECT COUNT(*) FROM pums").await;
    assert!(matches!(third, Err(Error::BudgetExhausted(_))), "{third:?}");
    assert_eq!(
        acc.spent(),
        Budget {
            epsilon: Epsilon(1_000_000),
            delta: Delta(0),
            rho: Default::default()
        }
    );
    assert_eq!(acc.releases().len(), 2);
}

#[tokio::test]
async fn the_ipc_result_decodes_in_the_guest_sdk() {
    let (scope, _) = open("PUMS_pid.csv", 1.0, 100.0).await;
    let r = scope
        .query("SELECT sex, COUNT(*) AS n, AVG(income) AS mean_income, SUM(income) AS total FROM pums GROUP BY sex")
        .await
        .unwrap();
    let t = invis::ipc::decode(&r.ipc).expect("decodes");
    assert_eq!(t.num_rows(), r.batch.num_rows());
    let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["sex", "n", "mean_income", "total"]);
    assert_eq!(t.i64("n", 0), Some(column_i64(&r.batch, "n")[0]));
    assert!(t.f64("mean_income", 1).is_some());
    assert_eq!(r.lineage.output_hash.as_deref().map(str::len), Some(64));
    assert_eq!(column_str(&r.batch, "sex"), ["0", "1"]);
}

/// A native row function for testing the policy and clamping.
#[derive(Debug)]
struct Native {
    name: &'static str,
    bounds: (f64, f64),
    f: fn(f64) -> f64,
}

impl crate::udf::RowFunction for Native {
    fn name(&self) -> &str {
        self.name
    }
    fn arity(&self) -> usize {
        1
    }
    fn bounds(&self) -> (f64, f64) {
        self.bounds
    }
    fn eval(&self, args: &[&[f64]], rows: usize) -> Result<Vec<f64>, String> {
        let a = args.first().ok_or("no argument")?;
        Ok(a.iter().take(rows).map(|x| (self.f)(*x)).collect())
    }
}

fn native(name: &'static str, bounds: (f64, f64), f: fn(f64) -> f64) -> Arc<dyn crate::udf::RowFunction> {
    Arc::new(Native { name, bounds, f })
}

#[tokio::test]
async fn row_functions_feed_aggregates_only_and_are_clamped_to_their_bounds() {
    let (scope, acc) = open("PUMS_pid.csv", 10.0, 1000.0).await;
    scope
        .register_row_function(native("half", (0.0, 250_000.0), |x| x / 2.0))
        .unwrap();
    // Accepted inside aggregates; the sum of halves is about half the sum.
    let full = scope.query("SELECT SUM(income) AS s FROM pums").await.unwrap();
    let half = scope
        .query("SELECT SUM(half(income)) AS s FROM pums")
        .await
        .unwrap();
    // A row function's output is fractional: it is summed in fixed point
    // (issue 15) and released as a float.
    let get = |r: &crate::Release| {
        let c = datafusion::arrow::compute::cast(
            r.batch.column(0),
            &datafusion::arrow::datatypes::DataType::Float64,
        )
        .unwrap();
        c.as_any()
            .downcast_ref::<datafusion::arrow::array::Float64Array>()
            .map(|a| a.value(0))
            .unwrap()
    };
    let ratio = get(&half) / get(&full);
    assert!((ratio - 0.5).abs() < 0.03, "ratio {ratio}");
    scope
        .query("SELECT sex, AVG(half(income)) AS a, COUNT(half(age)) AS c FROM pums GROUP BY sex")
        .await
        .unwrap();
    let released = acc.releases().len();
    // Refused anywhere its output could leave per row or select rows.
    for (sql, place) in [
        ("SELECT half(income) FROM pums", "row-level"),
        (
            "SELECT half(income) AS h, COUNT(*) FROM pums GROUP BY half(income)",
            "GROUP BY",
        ),
        ("SELECT COUNT(*) FROM pums WHERE half(income) > 1000", "WHERE"),
    ] {
        let e = scope.query(sql).await.unwrap_err().to_string();
        assert!(e.contains(place), "{sql}: {e}");
    }
    assert_eq!(acc.releases().len(), released, "refusals release nothing");
    // A function that lies about its range is clamped: every row gives
    // 10^9, declared at most 1, so the sum is about the row count.
    scope
        .register_row_function(native("liar", (0.0, 1.0), |_| 1e9))
        .unwrap();
    let n = get(&scope.query("SELECT COUNT(*) AS n FROM pums").await.unwrap());
    let s = get(&scope.query("SELECT SUM(liar(age)) AS s FROM pums").await.unwrap());
    assert!((s - n).abs() < n / 20.0, "sum {s} vs count {n}");
    // Names that shadow built-ins, bad names and bad bounds are refused.
    for f in [
        native("sum", (0.0, 1.0), |x| x),
        native("abs", (0.0, 1.0), |x| x),
        native("Bad-Name", (0.0, 1.0), |x| x),
        native("half", (0.0, 1.0), |x| x),
        native("inf", (0.0, f64::INFINITY), |x| x),
    ] {
        assert!(scope.register_row_function(f).is_err());
    }
}

#[tokio::test]
async fn verification_answers_match_or_no_match_and_never_a_value() {
    use crate::verify::{Claim, Claimed};
    let spec = spec("PUMS_pid.csv", "pums");
    let p = profile(&spec).await.unwrap();
    let mut t = TableVersion::from_profile(spec, &p);
    let claim = |unit: &str, values: &[(&str, Claimed)]| Claim {
        unit: unit.into(),
        values: values.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
    };
    let plane = DataPlane::new();
    // pid 1 is 59, sex 1, income 0.0; pid 2 is 31 with income 17000.
    let claims = [
        claim(
            "1",
            &[("age", Claimed::Number(59.0)), ("sex", Claimed::Number(1.0))],
        ),
        claim("1", &[("age", Claimed::Number(58.0))]),
        claim("2", &[("income", Claimed::Text("17000".into()))]),
        claim("no-such-person", &[("age", Claimed::Number(1.0))]),
    ];
    let r = plane.verify(&t, &claims).await.unwrap();
    assert_eq!(r, [Some(true), Some(false), Some(true), None]);
    // Withheld subjects are unknown, as if absent.
    t.units.exclude = Arc::new(["1".to_string()].into_iter().collect());
    let r = plane.verify(&t, &claims[..2]).await.unwrap();
    assert_eq!(r, [None, None]);
    // The unit column and unknown columns cannot be checked.
    assert!(plane
        .verify(&t, &[claim("2", &[("pid", Claimed::Number(2.0))])])
        .await
        .is_err());
    assert!(plane
        .verify(&t, &[claim("2", &[("salary", Claimed::Number(2.0))])])
        .await
        .is_err());
}

#[tokio::test]
async fn only_whole_number_columns_skip_the_clamp_kernel() {
    // PUMS incomes are floats holding whole numbers: their range is kept,
    // so a SUM within the bounds converts them exactly instead of clamping.
    let spec = spec("PUMS_pid.csv", "pums");
    let p = profile(&spec).await.unwrap();
    let income = p.columns.iter().find(|c| c.name == "income").unwrap();
    assert_eq!(
        (income.data_type.as_str(), income.integral),
        ("Float64", Some(true))
    );
    let t = TableVersion::from_profile(spec, &p);
    assert!(t.column_ranges.iter().any(|(n, _, _)| n == "income"));

    // A float column with a fractional value keeps the kernel.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.csv");
    std::fs::write(&path, "id,x\n1,2.0\n2,1.5\n3,\n").unwrap();
    let spec: DatasetSpec = serde_json::from_value(json!({
        "name": "f", "path": path.to_string_lossy(), "privacy_unit": "id",
        "columns": [{"name": "id", "rule": "keep"}, {"name": "x", "rule": "keep"}]
    }))
    .unwrap();
    let p = profile(&spec).await.unwrap();
    let x = p.columns.iter().find(|c| c.name == "x").unwrap();
    assert_eq!(x.integral, Some(false));
    let t = TableVersion::from_profile(spec, &p);
    assert!(!t.column_ranges.iter().any(|(n, _, _)| n == "x"));
    assert!(
        t.column_ranges.iter().any(|(n, _, _)| n == "id"),
        "integers keep theirs"
    );
}

/// A row function that remembers every value it is given.
#[derive(Debug, Default)]
struct Spy {
    seen: std::sync::Mutex<Vec<f64>>,
}

impl crate::udf::RowFunction for Spy {
    fn name(&self) -> &str {
        "spy"
    }
    fn arity(&self) -> usize {
        1
    }
    fn bounds(&self) -> (f64, f64) {
        (0.0, 10.0)
    }
    fn eval(&self, args: &[&[f64]], rows: usize) -> Result<Vec<f64>, String> {
        let col = args.first().ok_or("no argument")?;
        self.seen.lock().unwrap().extend_from_slice(&col[..rows]);
        Ok(col[..rows].to_vec())
    }
}

#[tokio::test]
async fn an_excluded_row_never_reaches_a_user_expression() {
    // The only person of race 5 (pid 313) objected. Every expression of a
    // query, in WHERE as in the aggregates, is evaluated on the rows that
    // survive the exclusion only: a row function watching `race` never sees
    // a 5, and an expression that fails only on that row changes nothing.
    let name = "pums";
    let spec = spec("PUMS_pid.csv", name);
    let p = profile(&spec).await.unwrap();
    let run = |exclude: bool| {
        let (spec, p) = (spec.clone(), p.clone());
        async move {
            let mut sc = scenario(name, 1.0, 1e6);
            sc.tables[0]
                .columns
                .iter_mut()
                .filter(|c| c.name == "race")
                .for_each(|c| {
                    c.ops.insert(scenarios::policy::ColumnOp::Aggregate);
                });
            let mut t = TableVersion::from_profile(spec, &p);
            if exclude {
                t.units.exclude = Arc::new(["313".to_string()].into_iter().collect());
            }
            let acc = Arc::new(MemoryAccountant::new(sc.release.total_budget()));
            let cfg = ScopeConfig {
                agreement_id: "ag".into(),
                scenario: sc,
                tables: vec![t],
                token_key: TokenKey::new(&[1u8; 32]),
                memory_limit: 1 << 30,
                query_timeout: std::time::Duration::from_secs(60),
            };
            let scope = DataPlane::new().open(cfg, acc).await.unwrap();
            let spy = Arc::new(Spy::default());
            scope.register_row_function(spy.clone()).unwrap();
            let before = crate::total::NULLED.with(|n| n.get());
            let r = scope
                .query(
                    "SELECT SUM(spy(race)) AS s FROM pums \
                     WHERE abs(CASE WHEN race = 5 THEN -9223372036854775807 - 1 ELSE 0 END) >= 0",
                )
                .await
                .unwrap();
            let nulled = crate::total::NULLED.with(|n| n.get()) - before;
            let seen = spy.seen.lock().unwrap().clone();
            (r.fallback, seen, nulled)
        }
    };
    let (fallback, seen, nulled) = run(true).await;
    assert!(!fallback);
    assert!(
        !seen.is_empty() && !seen.contains(&5.0),
        "the excluded row reached a row function"
    );
    assert_eq!(
        nulled, 0,
        "the WHERE expression was evaluated on the excluded row"
    );
    // Control: without the objection the row is seen by both, and the
    // failing expression fails nothing (that row is merely NULL, so
    // filtered out).
    let (fallback, seen, nulled) = run(false).await;
    assert!(!fallback);
    assert!(seen.contains(&5.0));
    assert_eq!(nulled, 1);
}

/// What decides a query's release path is declared by the provider and
/// checked at registration, never measured (docs/privacy-model.md): a file
/// that breaks its declaration is refused, with counts but no value.
#[tokio::test]
async fn a_file_that_breaks_its_declarations_is_refused() {
    let mut dup = spec("PUMS_dup.csv", "pums");
    dup.one_row_per_unit = true;
    let e = profile(&dup).await.unwrap_err().to_string();
    assert!(e.contains("declares one row per unit"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, "pid,x,f\n1,5,0.5\n2,,1.5\n3,7,NaN\n").unwrap();
    let declared = |column: &str| -> DatasetSpec {
        serde_json::from_value(json!({
            "name": "t", "path": path.to_string_lossy(), "privacy_unit": "pid",
            "one_row_per_unit": true,
            "columns": [
                {"name": "pid", "rule": "tokenize"},
                {"name": "x", "rule": "keep", "not_null": column == "x"},
                {"name": "f", "rule": "keep", "not_null": column == "f"}
            ]
        }))
        .unwrap()
    };
    let e = profile(&declared("x")).await.unwrap_err().to_string();
    assert!(
        e.contains("`x` is declared not null but has missing values"),
        "{e}"
    );
    let e = profile(&declared("f")).await.unwrap_err().to_string();
    assert!(e.contains("`f` is declared not null but holds NaN"), "{e}");
    assert!(!e.contains("0.5") && !e.contains("1.5"), "no value is named: {e}");
    // Declared and true: accepted, and only the declaration counts.
    let ok = profile(&declared("none")).await.unwrap();
    let t = TableVersion::from_profile(declared("none"), &ok);
    assert!(t.unit_unique && t.complete_columns.is_empty());
    let mut undeclared = declared("none");
    undeclared.one_row_per_unit = false;
    let t = TableVersion::from_profile(undeclared.clone(), &profile(&undeclared).await.unwrap());
    assert!(
        !t.unit_unique,
        "a unique file that does not declare it takes the bounded path"
    );
}

/// A file is not accepted while it is profiled: no error names anything
/// read from it (invariant I17). The old message quoted a header field
/// without a rule, so any readable file that parsed as CSV leaked its
/// first line.
#[tokio::test]
async fn profile_errors_name_nothing_read_from_the_file() {
    const SECRET: &str = "root_x_0_0_secret";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, format!("pid,{SECRET}\n1,2\n")).unwrap();
    let spec = |columns: serde_json::Value| -> DatasetSpec {
        serde_json::from_value(json!({
            "name": "t", "path": path.to_string_lossy(), "privacy_unit": "pid", "columns": columns
        }))
        .unwrap()
    };
    let e = profile(&spec(json!([{"name": "pid", "rule": "keep"}])))
        .await
        .unwrap_err()
        .to_string();
    assert!(!e.contains(SECRET), "{e}");
    assert!(e.contains("column 2 of 2"), "{e}");
    let e = profile(&spec(
        json!([{"name": "pid", "rule": "keep"}, {"name": "gone", "rule": "keep"}]),
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(!e.contains(SECRET), "{e}");

    // A value the parser chokes on, past the rows the schema is inferred
    // from: its message quotes the value; ours does not.
    let mut csv = String::from("pid,n\n");
    for i in 0..1500 {
        csv.push_str(&format!("{i},{i}\n"));
    }
    csv.push_str(&format!("9999,{SECRET}\n"));
    std::fs::write(&path, csv).unwrap();
    let e = profile(&spec(
        json!([{"name": "pid", "rule": "keep"}, {"name": "n", "rule": "keep"}]),
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, crate::Error::InvalidDataset(_)), "{e:?}");
    assert!(!e.to_string().contains(SECRET), "{e}");

    // A missing file names no path.
    let missing = dir.path().join("missing.csv");
    let mut s = spec(json!([{"name": "pid", "rule": "keep"}]));
    s.path = missing.to_string_lossy().into_owned();
    let e = profile(&s).await.unwrap_err().to_string();
    assert!(!e.contains("missing.csv"), "{e}");
}
