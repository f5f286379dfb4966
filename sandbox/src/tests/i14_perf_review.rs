//! I14 review of the one-row-per-unit performance change: the fused
//! `invis_measures` aggregate, whole-table counts read from an in-memory
//! table's length, and declared-complete numeric columns read without the
//! view's finite check.
//!
//! The fused figures are compared with the separate aggregates they replace
//! on what the module's own tests leave out (aggregate FILTERs, i64
//! extremes, -0.0, lanes with a filter); the whole-table count with the
//! plan it skips, and where it must not answer; and a float column declared
//! complete by a table that no registration checked must not let NaN or an
//! infinity reach a query.

use crate::desensitize::TokenKey;
use crate::measures::tests::{compare, schema};
use crate::measures::Spec;
use crate::{DataPlane, JobScope, MemoryAccountant, ScopeConfig, TableData, TableVersion};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;

/// `n` rows mixing nulls, i64 extremes, -0.0, NaN and infinities.
fn extreme_batch(n: usize, groups: i32, salt: usize) -> RecordBatch {
    let xs = [
        Some(i64::MIN),
        Some(i64::MAX),
        None,
        Some(0),
        Some(-1),
        Some(1 << 40),
        Some(7),
    ];
    let fs = [
        Some(-0.0),
        Some(f64::NAN),
        Some(-f64::NAN),
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        None,
        Some(1e300),
        Some(-1e-300),
        Some(0.005),
        Some(-0.005),
        Some(2.675),
        Some(f64::MAX),
        Some(f64::MIN_POSITIVE),
    ];
    let g: Vec<Option<i32>> = (0..n)
        .map(|i| (!(i + salt).is_multiple_of(9)).then_some(((i * 31 + salt) % groups as usize) as i32))
        .collect();
    let x: Vec<Option<i64>> = (0..n).map(|i| xs[(i * 5 + salt) % xs.len()]).collect();
    let f: Vec<Option<f64>> = (0..n).map(|i| fs[(i * 3 + salt) % fs.len()]).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int32Array::from(g)),
            Arc::new(Int64Array::from(x)),
            Arc::new(Float64Array::from(f)),
        ],
    )
    .unwrap()
}

/// Aggregate FILTERs (the general loop), i64 extremes with the widest
/// bounds (`Figure::Whole`), -0.0, NaN of both signs, ±inf, values whose
/// fixed point overflows, few groups (lanes) and many, several partitions.
#[tokio::test]
async fn fused_measures_match_separate_aggregates_under_filters_and_extremes() {
    let specs = [
        Spec::Sum {
            arg: 0,
            lo: i64::MIN,
            hi: i64::MAX,
        },
        Spec::Rows,
        Spec::Fixed {
            arg: 1,
            lo: -1_000_000_000_000_000,
            hi: 1_000_000_000_000_000,
            scale: 6,
        },
        Spec::NonNull { arg: 1 },
        Spec::Sum {
            arg: 0,
            lo: -3,
            hi: 0,
        },
        Spec::Fixed {
            arg: 1,
            lo: 0,
            hi: 300,
            scale: 2,
        },
        Spec::Rows,
    ];
    for groups in [3, 700] {
        let parts = vec![
            vec![extreme_batch(1_000, groups, 1), extreme_batch(33, groups, 2)],
            vec![extreme_batch(4_099, groups, 3), extreme_batch(0, groups, 4)],
        ];
        compare(parts, &specs).await;
    }
}

// ---------------------------------------------------------------------
// Whole-table counts read from the table's length.

const N: usize = 40;

fn people(null_unit: bool) -> RecordBatch {
    let pid: Vec<Option<String>> = (0..N)
        .map(|i| (!(null_unit && i == 0)).then(|| format!("p{i}")))
        .collect();
    let x: Vec<i64> = (0..N as i64).collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("pid", DataType::Utf8, true),
            Field::new("x", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from(pid)) as ArrayRef,
            Arc::new(Int64Array::from(x)),
        ],
    )
    .unwrap()
}

fn table(
    name: &str,
    batch: RecordBatch,
    complete: &[&str],
    units: crate::desensitize::UnitFilter,
) -> TableVersion {
    let spec: scenarios::catalog::DatasetSpec = serde_json::from_value(json!({
        "name": name, "path": "", "privacy_unit": "pid", "unit_kind": "person",
        "one_row_per_unit": true,
        "columns": [{"name": "pid", "rule": "keep"}, {"name": "x", "rule": "keep"}]}))
    .unwrap();
    TableVersion {
        spec,
        version: "v1".into(),
        unit_unique: true,
        developer_supplied: false,
        complete_columns: complete.iter().map(|c| c.to_string()).collect(),
        column_ranges: vec![("x".into(), 0.0, N as f64)],
        units,
        data: TableData::Batches(vec![batch]),
    }
}

/// Tables named `names`, each of all [`N`] people, complete, nothing
/// removed.
fn everyone(names: &[&str]) -> Vec<TableVersion> {
    names
        .iter()
        .map(|n| table(n, people(false), &["pid", "x"], Default::default()))
        .collect()
}

/// A scope over `tables`, each granted `x` (group, filter, aggregate in
/// [0, 100]) and `pid`.
async fn open(tables: Vec<TableVersion>) -> JobScope {
    let grants: Vec<serde_json::Value> = tables
        .iter()
        .map(|t| {
            json!({"dataset": t.spec.name, "columns": [
                {"name": "x", "ops": ["group", "filter", "aggregate"], "bounds": [0, 100]},
                {"name": "pid", "ops": ["join", "aggregate"]}]})
        })
        .collect();
    open_with(tables, grants).await
}

/// A scope over `tables` with these grants, at generous release rules.
async fn open_with(tables: Vec<TableVersion>, grants: Vec<serde_json::Value>) -> JobScope {
    let sc: scenarios::policy::ScenarioSpec = serde_json::from_value(json!({
        "name": "perf", "class": "perf", "purpose": "testing",
        "tables": grants,
        "release": {"epsilon_total": 1000.0, "epsilon_per_query": 5.0,
            "min_group_size": 3, "max_rows_per_unit": 1, "max_queries_per_job": 1000,
            "delta_per_query": 1e-5, "delta_total": 1e-4}
    }))
    .unwrap();
    let cfg = ScopeConfig {
        agreement_id: "ag_perf".into(),
        scenario: sc,
        tables,
        token_key: TokenKey::new(&[9u8; 32]),
        memory_limit: 64 << 20,
        query_timeout: std::time::Duration::from_secs(30),
    };
    DataPlane::new()
        .open(
            cfg,
            Arc::new(MemoryAccountant::new(crate::bench::unlimited_budget())),
        )
        .await
        .unwrap()
}

fn only_i64(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| (0..b.num_columns()).map(move |i| b.column(i).as_primitive::<Int64Type>().value(0)))
        .collect()
}

/// The figures read from the length are the plan's; every way rows can be
/// removed (an objection, even of a unit that has no row; consent; a unit
/// not declared complete), a condition, a group or a join turns it off.
#[tokio::test]
async fn whole_table_counts_read_from_the_length_are_the_plans_and_only_where_nothing_is_removed() {
    let all = || crate::desensitize::UnitFilter::default();
    let s = open(everyone(&["t"])).await;
    for sql in [
        "SELECT COUNT(*) AS n FROM t",
        "SELECT COUNT(*) AS n, COUNT(DISTINCT pid) AS u, COUNT(x) AS c FROM t",
    ] {
        let (prepared, _) = s.prepare(sql).await.unwrap();
        assert_eq!(prepared.whole_table_count.as_deref(), Some("t"), "{sql}");
        let read = s.execute(&prepared).await.unwrap();
        let ran = s.execute_plan(&prepared).await.unwrap();
        assert_eq!(only_i64(&read), only_i64(&ran), "{sql}");
        assert!(only_i64(&read).iter().all(|n| *n == N as i64), "{sql}");
    }
    for sql in [
        "SELECT COUNT(*) AS n FROM t WHERE x > 3",
        "SELECT x, COUNT(*) AS n FROM t GROUP BY x",
        "SELECT SUM(x) AS s FROM t",
    ] {
        let (prepared, _) = s.prepare(sql).await.unwrap();
        assert!(prepared.whole_table_count.is_none(), "{sql}");
    }
    assert_eq!(s.exact_rows("t"), Some(N as u64));

    // Two tables joined on the unit: never one table's length.
    let s = open(everyone(&["t", "u"])).await;
    let (prepared, _) = s
        .prepare("SELECT COUNT(*) AS n FROM t JOIN u ON t.pid = u.pid")
        .await
        .unwrap();
    assert!(prepared.whole_table_count.is_none());

    // Rows the view removes: no length is read, and the plan removes them.
    let objection = crate::desensitize::UnitFilter {
        exclude: Arc::new(HashSet::from(["p3".to_string()])),
        only: None,
    };
    let consent = crate::desensitize::UnitFilter {
        exclude: Default::default(),
        only: Some(Arc::new((5..N).map(|i| format!("p{i}")).collect())),
    };
    for (t, expected) in [
        (table("t", people(false), &["pid", "x"], objection), N - 1),
        (table("t", people(false), &["pid", "x"], consent), N - 5),
        (table("t", people(true), &["x"], all()), N - 1),
    ] {
        let s = open(vec![t]).await;
        assert_eq!(s.exact_rows("t"), None);
        let (prepared, _) = s.prepare("SELECT COUNT(*) AS n FROM t").await.unwrap();
        let read = s.execute(&prepared).await.unwrap();
        assert_eq!(only_i64(&read), vec![expected as i64]);
    }
}

/// The tables under a query are planned with two optimizer rules only
/// (`exec::RelationPlanner`): a join on the units still runs as a hash
/// join on them, not as a nested loop, and each view reads only the
/// columns the query uses.
#[tokio::test]
async fn relations_join_on_their_units_and_read_only_what_the_query_uses() {
    let s = open(everyone(&["t", "u"])).await;
    for sql in [
        "SELECT COUNT(*) AS n FROM t JOIN u ON t.pid = u.pid WHERE t.x > 3",
        "SELECT COUNT(*) AS n FROM t AS a JOIN u AS b ON b.pid = a.pid WHERE a.x > 3",
        "SELECT COUNT(*) AS n FROM t JOIN u USING (pid) WHERE t.x > 3",
    ] {
        let (prepared, _) = s.prepare(sql).await.unwrap();
        let (plan, _) = s.physical_plan(&prepared).await.unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string();
        assert!(text.contains("HashJoinExec"), "{sql}\n{text}");
        assert!(!text.contains("NestedLoopJoinExec"), "{sql}\n{text}");
        // Only `t`'s view reads `x`; `u`'s reads its unit alone.
        let reading_x = text.lines().filter(|l| l.contains("x := x")).count();
        assert_eq!(reading_x, 1, "{sql}\n{text}");
        let n = only_i64(&s.execute_plan(&prepared).await.unwrap());
        assert_eq!(n, vec![N as i64 - 4], "{sql}");
    }
}

/// Each JOIN links the table it adds to the tables before it: a unit
/// equality between two tables already joined does not (it would leave
/// the new table joined to every row, so one of its rows would count once
/// for every row of the others). Found by review.
#[tokio::test]
async fn a_join_must_link_the_table_it_adds() {
    let s = open(everyone(&["t", "u", "v"])).await;
    for sql in [
        "SELECT COUNT(*) AS n FROM t JOIN u ON t.pid = u.pid JOIN v ON t.pid = u.pid",
        "SELECT COUNT(*) AS n FROM t JOIN u ON t.pid = u.pid JOIN v ON u.pid = t.pid AND v.x > 1",
        // A link and, beside it, an equality of two tables already joined.
        "SELECT COUNT(*) AS n FROM t JOIN u ON t.pid = u.pid JOIN v ON t.pid = v.pid AND t.pid = u.pid",
    ] {
        let e = s.prepare(sql).await.map(|_| ()).unwrap_err();
        assert!(matches!(e, crate::Error::PolicyViolation(_)), "{sql}: {e}");
        assert!(e.to_string().contains("link"), "{sql}: {e}");
    }
    // A column is checked against the table the planner resolved it to,
    // never another table whose name has the same last part: here `t.pid`
    // is `v`'s unit, of another kind than `u`'s (found by review).
    let mut tables = everyone(&["t", "u", "v"]);
    if let Some(v) = tables.last_mut() {
        v.spec.unit_kind = Some("household".into());
    }
    let s2 = open(tables).await;
    let sql =
        "SELECT COUNT(*) AS n FROM (public.t JOIN u ON public.t.pid = u.pid) JOIN v AS t ON u.pid = x.t.pid";
    let e = s2.prepare(sql).await.map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("same kind of privacy unit"), "{e}");
    // A chain or a star of links is fine, and counts each unit once.
    for sql in [
        "SELECT COUNT(*) AS n FROM t JOIN u ON t.pid = u.pid JOIN v ON u.pid = v.pid",
        "SELECT COUNT(*) AS n FROM t JOIN u ON t.pid = u.pid JOIN v ON v.pid = t.pid",
        "SELECT COUNT(*) AS n FROM t JOIN u USING (pid) JOIN v USING (pid)",
    ] {
        let (prepared, _) = s.prepare(sql).await.unwrap();
        let n = only_i64(&s.execute_plan(&prepared).await.unwrap());
        assert_eq!(n, vec![N as i64], "{sql}");
    }
}

// ---------------------------------------------------------------------
// Declared-complete float columns of tables no registration checked.

/// 30 units with `f` NaN, 30 with +inf, 30 with 1.5; `f` declared complete
/// by the table's constructor (as a test, the bench or a local run may).
fn broken_floats() -> TableVersion {
    let n = 90;
    let pid: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let f: Vec<f64> = (0..n)
        .map(|i| match i / 30 {
            0 => f64::NAN,
            1 => f64::INFINITY,
            _ => 1.5,
        })
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("pid", DataType::Utf8, false),
            Field::new("f", DataType::Float64, false),
        ])),
        vec![
            Arc::new(StringArray::from(pid)) as ArrayRef,
            Arc::new(Float64Array::from(f)),
        ],
    )
    .unwrap();
    let spec: scenarios::catalog::DatasetSpec = serde_json::from_value(json!({
        "name": "t", "path": "", "privacy_unit": "pid", "unit_kind": "person",
        "one_row_per_unit": true,
        "columns": [{"name": "pid", "rule": "keep"}, {"name": "f", "rule": "keep"}]}))
    .unwrap();
    TableVersion {
        spec,
        version: "v1".into(),
        unit_unique: true,
        developer_supplied: false,
        complete_columns: vec!["pid".into(), "f".into()],
        column_ranges: Vec::new(),
        units: Default::default(),
        data: TableData::Batches(vec![batch]),
    }
}

/// The view used to turn NaN and ±inf into NULL on every read. Reading a
/// declared-complete column unchecked trusts registration, which in-memory
/// tables never went through: NaN and inf reached the query as group keys.
#[tokio::test]
async fn unchecked_complete_floats_of_in_memory_tables_never_reach_a_query() {
    let s = open_with(
        vec![broken_floats()],
        vec![json!({"dataset": "t", "columns": [
            {"name": "f", "ops": ["group", "filter", "aggregate"], "bounds": [0, 10]},
            {"name": "pid", "ops": ["aggregate"]}]})],
    )
    .await;
    let r = s
        .query("SELECT f, COUNT(*) AS n FROM t GROUP BY f")
        .await
        .unwrap();
    let keys = r.batch.column(0);
    let keys = keys.as_primitive_opt::<Float64Type>().expect("float keys");
    for i in 0..keys.len() {
        assert!(
            keys.is_null(i) || keys.value(i).is_finite(),
            "a non-finite value reached the query as a key: {}",
            keys.value(i)
        );
    }
}

/// Sample tables (local runs) declare every column complete; a float
/// column's synthetic values must then be finite in the column's type.
#[test]
fn sample_floats_of_a_wide_domain_are_finite() {
    let spec: scenarios::catalog::DatasetSpec = serde_json::from_value(json!({
        "name": "s", "path": "", "privacy_unit": "pid",
        "columns": [{"name": "pid", "rule": "keep"},
                    {"name": "wide", "rule": "keep", "domain": {"range": {"min": -1.7e308, "max": 1.7e308}}},
                    {"name": "big", "rule": "keep", "domain": {"range": {"min": 0.0, "max": 1e307}}},
                    {"name": "narrow", "rule": "keep", "domain": {"range": {"min": 0.0, "max": 1e39}}}]}))
    .unwrap();
    let types = vec![
        ("pid".to_string(), DataType::Utf8),
        ("wide".to_string(), DataType::Float64),
        ("big".to_string(), DataType::Float64),
        ("narrow".to_string(), DataType::Float32),
    ];
    let t = crate::sample::sample_table(&spec, &types, 500, true).unwrap();
    assert!(t.complete_columns.iter().any(|c| c == "wide"));
    let TableData::Batches(b) = &t.data else {
        panic!("in memory")
    };
    for name in ["wide", "big", "narrow"] {
        let c = b[0].column_by_name(name).unwrap();
        let c = datafusion::arrow::compute::cast(c, &DataType::Float64).unwrap();
        let bad = c
            .as_primitive::<Float64Type>()
            .values()
            .iter()
            .filter(|v| !v.is_finite())
            .count();
        assert_eq!(bad, 0, "{name}: {bad} of 500 synthetic values are not finite");
    }
}
