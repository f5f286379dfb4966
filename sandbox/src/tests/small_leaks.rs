//! Issue 15, the small ones: a generalized integer column is clamped after
//! generalization, and a masked value's length says nothing of the raw
//! value's.

use crate::desensitize::TokenKey;
use crate::{DataPlane, JobScope, MemoryAccountant, ScopeConfig, TableData, TableVersion};
use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::json;
use std::sync::Arc;

const N: usize = 60;

/// `N` units with `x` in 0..=100 (raw range [0, 100], measured) and a
/// `name` of 1 to 60 characters.
async fn scope(x_rule: serde_json::Value) -> JobScope {
    let pid: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    let x: Vec<i64> = (0..N).map(|i| (i as i64 * 100) / (N as i64 - 1)).collect();
    let name: Vec<String> = (0..N).map(|i| "n".repeat(i + 1)).collect();
    let schema = Schema::new(vec![
        Field::new("pid", DataType::Utf8, false),
        Field::new("x", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(pid)),
        Arc::new(Int64Array::from(x)),
        Arc::new(StringArray::from(name)),
    ];
    let batch = RecordBatch::try_new(Arc::new(schema), cols).unwrap();
    let spec: scenarios::catalog::DatasetSpec = serde_json::from_value(json!({
        "name": "t", "path": "", "privacy_unit": "pid",
        "columns": [{"name": "pid", "rule": "keep"}, {"name": "x", "rule": x_rule},
                    {"name": "name", "rule": {"mask": {"keep_prefix": 1}}}]}))
    .unwrap();
    let table = TableVersion {
        spec,
        version: "v1".into(),
        unit_unique: true,
        developer_supplied: false,
        complete_columns: vec!["pid".into(), "x".into(), "name".into()],
        // The raw range fits the bounds [0, 100] exactly.
        column_ranges: vec![("x".into(), 0.0, 100.0)],
        units: Default::default(),
        data: TableData::Batches(vec![batch]),
    };
    let sc: scenarios::policy::ScenarioSpec = serde_json::from_value(json!({
        "name": "small", "class": "small", "purpose": "testing",
        "tables": [{"dataset": "t", "columns": [
            {"name": "x", "ops": ["aggregate", "group"], "bounds": [0, 100]},
            {"name": "name", "ops": ["group", "filter"]},
            {"name": "pid", "ops": ["aggregate"]}]}],
        "release": {"epsilon_total": 1000.0, "epsilon_per_query": 5.0,
            "min_group_size": 3, "max_rows_per_unit": 1, "max_queries_per_job": 1000,
            "delta_per_query": 1e-5, "delta_total": 1e-4}
    }))
    .unwrap();
    let cfg = ScopeConfig {
        agreement_id: "ag_small".into(),
        scenario: sc,
        tables: vec![table],
        token_key: TokenKey::new(&[6u8; 32]),
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

fn first_i64(r: &crate::Release, column: usize) -> i64 {
    let c = r.batch.column(column);
    c.as_any()
        .downcast_ref::<Int64Array>()
        .map(|a| a.value(0))
        .unwrap_or_else(|| panic!("not an integer column: {:?}", c.data_type()))
}

#[tokio::test]
async fn a_generalized_value_outside_the_bounds_is_clamped() {
    // Every raw x is within [0, 100], but below the first edge 150 every
    // value maps to 150: the generalized column is out of bounds. Unclamped
    // the sum would be 60 * 150 = 9000; clamped it is at most 60 * 100.
    let s = scope(json!({"generalize": {"edges": {"edges": [150, 300]}}})).await;
    let r = s.query("SELECT SUM(x) AS total FROM t").await.unwrap();
    let total = first_i64(&r, 0);
    // Noise scale 100 / 5 = 20 (two measurements: 40); 6000 + 10 sd.
    assert!(total <= 6_400, "the generalized values were not clamped: {total}");
    assert!(total >= 5_600, "{total}");
    // Bucketing can move a value below the lower bound: with bounds
    // [0, 100] and a bucket of 1000 every value becomes 0, within bounds.
    let s = scope(json!({"generalize": {"bucket": {"width": 1000}}})).await;
    let r = s.query("SELECT SUM(x) AS total FROM t").await.unwrap();
    assert!(first_i64(&r, 0).abs() <= 400);
}

#[tokio::test]
async fn masked_values_all_have_one_length() {
    let s = scope(json!("keep")).await;
    // Sixty distinct raw lengths; one released masked length.
    let r = s
        .query("SELECT length(name) AS l, COUNT(*) AS n FROM t GROUP BY length(name)")
        .await
        .unwrap();
    assert_eq!(r.batch.num_rows(), 1, "lengths of masked values differ");
    assert_eq!(first_i64(&r, 0), 1 + crate::desensitize::MASK_STARS as i64);
    // Nor can a filter on the length split the units.
    let r = s
        .query("SELECT COUNT(*) AS n FROM t WHERE length(name) > 30")
        .await
        .unwrap();
    assert!(first_i64(&r, 0) < 20, "{}", first_i64(&r, 0));
}

/// `N` units with a fractional `f` of 0.4 each (never whole, so no
/// measured range), and the given declared scale.
async fn fractional(scale: Option<u32>) -> JobScope {
    use datafusion::arrow::array::Float64Array;
    let pid: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    let schema = Schema::new(vec![
        Field::new("pid", DataType::Utf8, false),
        Field::new("f", DataType::Float64, false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(pid)),
        Arc::new(Float64Array::from(vec![0.4; N])),
    ];
    let batch = RecordBatch::try_new(Arc::new(schema), cols).unwrap();
    let spec: scenarios::catalog::DatasetSpec = serde_json::from_value(json!({
        "name": "t", "path": "", "privacy_unit": "pid",
        "columns": [{"name": "pid", "rule": "keep"}, {"name": "f", "rule": "keep", "scale": scale}]}))
    .unwrap();
    let table = TableVersion {
        spec,
        version: "v1".into(),
        unit_unique: true,
        developer_supplied: false,
        complete_columns: vec!["pid".into(), "f".into()],
        column_ranges: Vec::new(),
        units: Default::default(),
        data: TableData::Batches(vec![batch]),
    };
    let sc: scenarios::policy::ScenarioSpec = serde_json::from_value(json!({
        "name": "fixed", "class": "fixed", "purpose": "testing",
        "tables": [{"dataset": "t", "columns": [
            {"name": "f", "ops": ["aggregate"], "bounds": [0, 1]},
            {"name": "pid", "ops": ["aggregate"]}]}],
        "release": {"epsilon_total": 1000.0, "epsilon_per_query": 5.0,
            "min_group_size": 3, "max_rows_per_unit": 1, "max_queries_per_job": 1000,
            "delta_per_query": 1e-5, "delta_total": 1e-4}
    }))
    .unwrap();
    let cfg = ScopeConfig {
        agreement_id: "ag_fixed".into(),
        scenario: sc,
        tables: vec![table],
        token_key: TokenKey::new(&[6u8; 32]),
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

fn first_f64(r: &crate::Release, column: usize) -> f64 {
    use datafusion::arrow::array::Float64Array;
    let c = r.batch.column(column);
    c.as_any()
        .downcast_ref::<Float64Array>()
        .map(|a| a.value(0))
        .unwrap_or_else(|| panic!("not a float column: {:?}", c.data_type()))
}

#[tokio::test]
async fn fractional_sums_are_fixed_point_not_rounded_per_row() {
    // Sixty values of 0.4: rounded per row they summed to 0 and averaged 0.
    let s = fractional(None).await;
    let r = s.query("SELECT SUM(f) AS s, AVG(f) AS a FROM t").await.unwrap();
    let (sum, avg) = (first_f64(&r, 0), first_f64(&r, 1));
    // Default scale 2: units of 0.01, bounds [0, 100] units, noise scale
    // 100 / (5 / 3) = 60 units = 0.6 per measurement.
    assert!((sum - 24.0).abs() < 6.0, "sum {sum}");
    assert!((avg - 0.4).abs() < 0.15, "avg {avg}");
    // The mechanism says what it measured and in which units.
    let m = &r.lineage.mechanism;
    assert!(m.measurements.iter().any(|x| x.name.contains("1e2")), "{m:?}");
    assert!(m.bounds.iter().any(|(_, lo, hi)| (*lo, *hi) == (0, 100)), "{m:?}");
    // A declared scale of 0 is the old per-row rounding, by choice.
    let s = fractional(Some(0)).await;
    let r = s.query("SELECT AVG(f) AS a FROM t").await.unwrap();
    assert!(first_f64(&r, 0) < 0.2, "{}", first_f64(&r, 0));
}
