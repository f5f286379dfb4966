//! Adversarial review of issue 15: a release must not depend on a fact of
//! the data that no mechanism protects.

use crate::desensitize::TokenKey;
use crate::{DataPlane, JobScope, MemoryAccountant, ScopeConfig, TableData, TableVersion};
use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::json;
use std::sync::Arc;

const N: usize = 60;

/// `N` units with a float `f`: all whole numbers, or one unit's value
/// fractional. The table is what `TableVersion::from_profile` builds from
/// registration's profile: a float column measured to be integral has a
/// measured range, one with a fractional value has none.
async fn scope(one_fractional: bool) -> JobScope {
    let pid: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    let mut f = vec![3.0; N];
    if one_fractional {
        f[0] = 3.5;
    }
    let schema = Schema::new(vec![
        Field::new("pid", DataType::Utf8, false),
        Field::new("f", DataType::Float64, false),
    ]);
    let cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(pid)), Arc::new(Float64Array::from(f))];
    let batch = RecordBatch::try_new(Arc::new(schema), cols).unwrap();
    let spec: scenarios::catalog::DatasetSpec = serde_json::from_value(json!({
        "name": "t", "path": "", "privacy_unit": "pid",
        "columns": [{"name": "pid", "rule": "keep"}, {"name": "f", "rule": "keep"}]}))
    .unwrap();
    let table = TableVersion {
        spec,
        version: "v1".into(),
        unit_unique: true,
        developer_supplied: false,
        complete_columns: vec!["pid".into(), "f".into()],
        column_ranges: if one_fractional {
            Vec::new()
        } else {
            vec![("f".into(), 3.0, 3.0)]
        },
        units: Default::default(),
        data: TableData::Batches(vec![batch]),
    };
    let sc: scenarios::policy::ScenarioSpec = serde_json::from_value(json!({
        "name": "whole", "class": "whole", "purpose": "testing",
        "tables": [{"dataset": "t", "columns": [
            {"name": "f", "ops": ["aggregate"], "bounds": [0, 10]},
            {"name": "pid", "ops": ["aggregate"]}]}],
        "release": {"epsilon_total": 1000.0, "epsilon_per_query": 1.0,
            "min_group_size": 3, "max_rows_per_unit": 1, "max_queries_per_job": 1000,
            "delta_per_query": 1e-7, "delta_total": 1e-5}
    }))
    .unwrap();
    let cfg = ScopeConfig {
        agreement_id: "ag_whole".into(),
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

/// A float column's sum was measured at scale 0 (released as an integer)
/// when registration found every value whole, and at scale 2 (a float in
/// steps of 0.01) otherwise: one unit's fractional value changed the type
/// of every released sum, an exact answer to "does anyone have a
/// fractional value", outside any budget (epsilon infinite between the two
/// neighbours). The scale now follows the column's declared scale and type
/// only.
#[tokio::test]
async fn the_scale_of_a_sum_does_not_depend_on_the_values() {
    for sql in ["SELECT SUM(f) AS s FROM t", "SELECT AVG(f) AS a FROM t"] {
        let whole = scope(false).await.query(sql).await.unwrap();
        let fractional = scope(true).await.query(sql).await.unwrap();
        assert_eq!(
            whole.batch.column(0).data_type(),
            fractional.batch.column(0).data_type(),
            "{sql}: the released type tells whether some value is fractional"
        );
    }
    let names = |r: &crate::Release| -> Vec<String> {
        r.lineage
            .mechanism
            .measurements
            .iter()
            .map(|m| m.name.clone())
            .collect()
    };
    let sql = "SELECT SUM(f) AS s FROM t";
    assert_eq!(
        names(&scope(false).await.query(sql).await.unwrap()),
        names(&scope(true).await.query(sql).await.unwrap()),
        "the units a sum is measured in tell it too"
    );
}
