//! Invariant I14 as a property: a random expression from the allowed
//! grammar, over the PUMS columns and with extreme literals, placed in
//! WHERE, in an aggregate argument or as a group key, is either refused
//! before charging or behaves identically on D (the PUMS sample) and on D
//! minus one row (the only person of race 5): same refusal, or a release of
//! the same shape, never an execution failure on one and not the other.
//!
//! `PROPTEST_CASES=5000 cargo test -p sandbox property` runs a longer
//! search; the default run tries 300 expressions.

use super::oracle::{outcome, scope_over};
use super::pums;
use crate::JobScope;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use proptest::prelude::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};

const COLUMNS: [&str; 6] = ["age", "sex", "educ", "race", "income", "married"];

fn int_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("(-9223372036854775807 - 1)".to_string()),
        Just("9223372036854775807".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("2147483647".to_string()),
        Just("TRY_CAST('NaN' AS DOUBLE)".to_string()),
        Just("TRY_CAST('inf' AS DOUBLE)".to_string()),
        Just("1e308".to_string()),
        Just("TRY_CAST('99999999999999999999.99' AS DECIMAL(22, 2))".to_string()),
        (-100i64..100_000).prop_map(|v| v.to_string()),
    ]
}

fn const_int() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("2147483647".to_string()),
        Just("(-9223372036854775807 - 1)".to_string()),
        (1i64..5).prop_map(|v| v.to_string()),
    ]
}

fn number() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        3 => proptest::sample::select(&COLUMNS[..]).prop_map(str::to_string),
        1 => int_literal(),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                inner.clone(),
                proptest::sample::select(&["+", "-", "*"][..])
            )
                .prop_map(|(a, b, op)| format!("({a} {op} {b})")),
            (
                inner.clone(),
                proptest::sample::select(&["-1", "3", "0.5", "-9223372036854775807"][..])
            )
                .prop_map(|(a, d)| format!("({a} / {d})")),
            (inner.clone(), proptest::sample::select(&["-1", "7"][..]))
                .prop_map(|(a, d)| format!("({a} % {d})")),
            inner.clone().prop_map(|a| format!("(-{a})")),
            (
                inner.clone(),
                proptest::sample::select(&["abs", "floor", "ceil"][..])
            )
                .prop_map(|(a, f)| format!("{f}({a})")),
            (inner.clone(), const_int()).prop_map(|(a, n)| format!("round({a}, {n})")),
            (
                inner.clone(),
                inner.clone(),
                proptest::sample::select(&["coalesce", "greatest", "least", "nullif"][..])
            )
                .prop_map(|(a, b, f)| format!("{f}({a}, {b})")),
            (boolean_leaf(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("CASE WHEN {c} THEN {a} ELSE {b} END")),
            text_of(inner.clone()).prop_map(|t| format!("TRY_CAST({t} AS BIGINT)")),
            text_of(inner.clone()).prop_map(|t| format!("length({t})")),
            inner.prop_map(|a| format!("TRY_CAST({a} AS SMALLINT)")),
        ]
    })
    .boxed()
}

fn text_of(n: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![
        n.clone().prop_map(|a| format!("CAST({a} AS VARCHAR)")),
        Just("''".to_string()),
        Just("'\u{10FFFF}ÿ́'".to_string()),
        (n.clone(), const_int(), const_int())
            .prop_map(|(a, p, l)| format!("substr(CAST({a} AS VARCHAR), {p}, {l})")),
        (
            n.clone(),
            const_int(),
            proptest::sample::select(&["left", "right"][..])
        )
            .prop_map(|(a, l, f)| format!("{f}(CAST({a} AS VARCHAR), {l})")),
        (
            n.clone(),
            proptest::sample::select(&["lower", "upper", "trim"][..])
        )
            .prop_map(|(a, f)| format!("{f}(CAST({a} AS VARCHAR))")),
        (n.clone(), n).prop_map(|(a, b)| format!("concat(CAST({a} AS VARCHAR), CAST({b} AS VARCHAR))")),
    ]
    .boxed()
}

fn boolean_leaf() -> BoxedStrategy<String> {
    (
        proptest::sample::select(&COLUMNS[..]),
        proptest::sample::select(&["=", "<>", "<", ">="][..]),
        int_literal(),
    )
        .prop_map(|(c, op, v)| format!("{c} {op} {v}"))
        .boxed()
}

fn boolean() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (
            number(),
            proptest::sample::select(&["=", "<>", "<", "<=", ">", ">="][..]),
            number()
        )
            .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
        (number(), number(), number()).prop_map(|(a, l, h)| format!("({a} BETWEEN {l} AND {h})")),
        (number(), int_literal(), int_literal()).prop_map(|(a, x, y)| format!("({a} IN ({x}, {y}))")),
        text_of(number()).prop_map(|t| format!("({t} LIKE '%1\\\\')")),
        number().prop_map(|a| format!("({a} IS NULL)")),
    ];
    leaf.prop_recursive(2, 8, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} AND {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} OR {b})")),
            inner.prop_map(|a| format!("(NOT {a})")),
        ]
    })
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        boolean().prop_map(|b| format!("SELECT COUNT(*) AS n FROM pums WHERE {b}")),
        number().prop_map(|e| format!("SELECT COUNT({e}) AS n FROM pums")),
        number().prop_map(|e| format!("SELECT {e} AS g, COUNT(*) AS n FROM pums GROUP BY {e}")),
        text_of(number()).prop_map(|e| format!("SELECT {e} AS g, COUNT(*) AS n FROM pums GROUP BY {e}")),
        (boolean(), number()).prop_map(|(b, e)| format!("SELECT COUNT({e}) AS n FROM pums WHERE {b}")),
    ]
}

async fn pums_batches() -> Vec<RecordBatch> {
    SessionContext::new()
        .read_csv(pums("PUMS_pid.csv"), CsvReadOptions::new().has_header(true))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

async fn scope(batches: Vec<RecordBatch>) -> JobScope {
    let mut columns: Vec<serde_json::Value> = COLUMNS
        .iter()
        .map(|c| json!({"name": c, "rule": "keep"}))
        .collect();
    columns.push(json!({"name": "pid", "rule": "tokenize"}));
    let mut grants: Vec<serde_json::Value> = COLUMNS
        .iter()
        .map(|c| json!({"name": c, "ops": ["group", "filter", "aggregate"], "bounds": [0, 500000]}))
        .collect();
    grants.push(json!({"name": "pid", "ops": ["join", "aggregate"]}));
    scope_over(
        batches,
        json!({"name": "pums", "path": "", "privacy_unit": "pid", "unit_kind": "person", "columns": columns}),
        json!({"dataset": "pums", "columns": grants}),
    )
    .await
}

#[test]
fn random_expressions_behave_the_same_without_one_person() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (d, d_minus) = rt.block_on(async {
        let all = pums_batches().await;
        // D minus the only person of race 5.
        let without = all
            .iter()
            .map(|b| {
                let race = datafusion::arrow::compute::cast(
                    b.column_by_name("race").unwrap(),
                    &datafusion::arrow::datatypes::DataType::Int64,
                )
                .unwrap();
                let keep = datafusion::arrow::compute::kernels::cmp::neq(
                    &race,
                    &datafusion::arrow::array::Int64Array::new_scalar(5),
                )
                .unwrap();
                datafusion::arrow::compute::filter_record_batch(b, &keep).unwrap()
            })
            .collect::<Vec<_>>();
        let rows = |v: &[RecordBatch]| v.iter().map(RecordBatch::num_rows).sum::<usize>();
        assert_eq!(rows(&all), rows(&without) + 1);
        (scope(all).await, scope(without).await)
    });
    let tried = AtomicUsize::new(0);
    let released = AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(sql in query())| {
        let (a, b) = rt.block_on(async { (d.query(&sql).await, d_minus.query(&sql).await) });
        tried.fetch_add(1, Ordering::Relaxed);
        if a.is_ok() {
            released.fetch_add(1, Ordering::Relaxed);
        }
        let (a, b) = (outcome(&a), outcome(&b));
        prop_assert_eq!(&a, &b, "{}", sql);
        prop_assert!(!a.contains("empty input"), "execution failed: {}", sql);
    });
    eprintln!(
        "property: {} random queries, {} released on both D and D minus one row, the rest refused on both",
        tried.load(Ordering::Relaxed),
        released.load(Ordering::Relaxed)
    );
}
