//! Invariant I14, tried as an attacker would: an expression that fails (or
//! is expensive, or yields NaN) only on rows meeting a secret condition
//! must not change anything a job observes. For every function and
//! operator the policy allows (generated from `policy::FUNCTIONS` and
//! `policy::OPERATORS`, so a newly allowed one is covered automatically)
//! and every extreme argument of its kind, the expression is wrapped in a
//! CASE whose condition exactly one row meets, and again in one no row
//! meets; the two queries must have the same outcome: both refused with
//! the same message, or both released with the same shape.

use crate::desensitize::TokenKey;
use crate::policy::{Arg, FUNCTIONS, OPERATORS};
use crate::{DataPlane, JobScope, MemoryAccountant, ScopeConfig, TableData, TableVersion};
use datafusion::arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::json;
use std::sync::Arc;

/// Rows of the synthetic table; the target is row 0 (`i = 777`).
const ROWS: usize = 300;
/// The target's value of `i`, met by exactly one row.
const TARGET: &str = "777";
/// A value of `i` no row has.
const NOBODY: &str = "-5";

fn table() -> RecordBatch {
    let n = ROWS;
    let i: Vec<i64> = (0..n as i64).map(|r| if r == 0 { 777 } else { r }).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(
            (0..n).map(|r| format!("p{r}")).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(i)),
        Arc::new(Float64Array::from(
            (0..n).map(|r| r as f64 / 7.0).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            (0..n).map(|r| format!("name {r} é")).collect::<Vec<_>>(),
        )),
        Arc::new(Date32Array::from(
            (0..n as i32).map(|r| r * 100).collect::<Vec<_>>(),
        )),
        Arc::new(TimestampMicrosecondArray::from(
            (0..n as i64).map(|r| r * 86_400_000_000).collect::<Vec<_>>(),
        )),
        Arc::new(
            Decimal128Array::from((0..n as i128).map(|r| r * 125).collect::<Vec<_>>())
                .with_precision_and_scale(12, 2)
                .unwrap(),
        ),
    ];
    let schema = Schema::new(vec![
        Field::new("pid", DataType::Utf8, false),
        Field::new("i", DataType::Int64, false),
        Field::new("f", DataType::Float64, false),
        Field::new("s", DataType::Utf8, false),
        Field::new("d", DataType::Date32, false),
        Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("n", DataType::Decimal128(12, 2), false),
    ]);
    RecordBatch::try_new(Arc::new(schema), columns).unwrap()
}

pub(super) async fn scope_over(
    batches: Vec<RecordBatch>,
    spec: serde_json::Value,
    grant: serde_json::Value,
) -> JobScope {
    let spec: scenarios::catalog::DatasetSpec = serde_json::from_value(spec).unwrap();
    let sc: scenarios::policy::ScenarioSpec = serde_json::from_value(json!({
        "name": "oracle", "class": "oracle", "purpose": "testing",
        "tables": [grant],
        "release": {"epsilon_total": 10.0, "epsilon_per_query": 1.0,
            "min_group_size": 5, "max_rows_per_unit": 1, "max_queries_per_job": 1000000,
            "delta_per_query": 1e-7, "delta_total": 1e-4}
    }))
    .unwrap();
    let columns: Vec<String> = spec.columns.iter().map(|c| c.name.clone()).collect();
    let table = TableVersion {
        spec,
        version: "v1".into(),
        unit_unique: true,
        developer_supplied: false,
        complete_columns: columns,
        column_ranges: Vec::new(),
        units: Default::default(),
        data: TableData::Batches(batches),
    };
    let cfg = ScopeConfig {
        agreement_id: "ag_oracle".into(),
        scenario: sc,
        tables: vec![table],
        token_key: TokenKey::new(&[3u8; 32]),
        memory_limit: 1 << 30,
        query_timeout: std::time::Duration::from_secs(60),
    };
    DataPlane::new()
        .open(
            cfg,
            Arc::new(MemoryAccountant::new(crate::bench::unlimited_budget())),
        )
        .await
        .unwrap()
}

async fn oracle_scope() -> JobScope {
    let cols = ["i", "f", "s", "d", "t", "n"];
    let mut columns: Vec<serde_json::Value> =
        cols.iter().map(|c| json!({"name": c, "rule": "keep"})).collect();
    columns.push(json!({"name": "pid", "rule": "tokenize"}));
    let mut grants: Vec<serde_json::Value> = cols
        .iter()
        .map(|c| json!({"name": c, "ops": ["group", "filter", "aggregate"], "bounds": [-1000, 1000]}))
        .collect();
    grants.push(json!({"name": "pid", "ops": ["join", "aggregate"]}));
    scope_over(
        vec![table()],
        json!({"name": "t", "path": "", "privacy_unit": "pid", "unit_kind": "person", "columns": columns}),
        json!({"dataset": "t", "columns": grants}),
    )
    .await
}

/// Extreme values of each argument kind, as SQL.
fn extremes(kind: Arg) -> Vec<&'static str> {
    match kind {
        Arg::Number => vec![
            "i",
            "f",
            "n",
            "(-9223372036854775807 - 1)",
            "9223372036854775807",
            "0",
            "-1",
            "TRY_CAST('NaN' AS DOUBLE)",
            "TRY_CAST('inf' AS DOUBLE)",
            "TRY_CAST('-inf' AS DOUBLE)",
            "1e308",
            "-1e308",
            "TRY_CAST('9999999999.99' AS DECIMAL(12, 2))",
            "TRY_CAST(NULL AS BIGINT)",
        ],
        Arg::Text => vec!["s", "''", "'\u{10FFFF}\u{0}x'", "CAST(i AS VARCHAR)", "'ÿ́̂̃̄'"],
        Arg::Time => vec![
            "d",
            "t",
            "TRY_CAST('9999-12-31' AS DATE)",
            "TRY_CAST('0001-01-01' AS DATE)",
            "TRY_CAST('+262142-01-01' AS DATE)",
            "TRY_CAST('2262-04-12T00:00:00' AS TIMESTAMP)",
            "TRY_CAST('1677-09-21T00:00:00' AS TIMESTAMP)",
        ],
        Arg::Any => vec![
            "i",
            "s",
            "d",
            "n",
            "(-9223372036854775807 - 1)",
            "TRY_CAST('NaN' AS DOUBLE)",
            "TRY_CAST('9999-12-31' AS DATE)",
        ],
        Arg::ConstInt => vec![
            "1",
            "0",
            "-1",
            "2147483647",
            "-2147483648",
            "9223372036854775807",
            "(-9223372036854775807 - 1)",
        ],
        Arg::ConstUnit => vec!["'month'", "'year'", "'nanosecond'", "'nonsense'", "''"],
    }
}

/// `v` on the row meeting the condition `i = {k}`, `otherwise` elsewhere.
fn only_on_target(v: &str, otherwise: &str) -> String {
    format!("CASE WHEN i = {{k}} THEN {v} ELSE {otherwise} END")
}

fn default_arg(kind: Arg) -> &'static str {
    match kind {
        Arg::Number | Arg::Any => "i",
        Arg::Text => "s",
        Arg::Time => "t",
        Arg::ConstInt => "1",
        Arg::ConstUnit => "'month'",
    }
}

/// Calls of every allowed function, one extreme argument at a time.
fn function_calls() -> Vec<String> {
    let mut out = Vec::new();
    for f in FUNCTIONS {
        let mut arities = vec![f.args.len()];
        if f.optional > 0 {
            arities.push(f.args.len() - f.optional);
        }
        if f.variadic {
            arities.push(f.args.len() + 2);
        }
        for arity in arities {
            let kinds: Vec<Arg> = (0..arity)
                .map(|i| *f.args.get(i).or(f.args.last()).unwrap_or(&Arg::Any))
                .collect();
            for (p, kind) in kinds.iter().enumerate() {
                for v in extremes(*kind) {
                    // A non-constant argument takes the extreme value on the
                    // target's row only, so the call fails (if it can) on
                    // that one row; a constant one is extreme on every row
                    // and the whole call is put under the condition.
                    let special = if kind.constant() {
                        v.to_string()
                    } else {
                        only_on_target(v, default_arg(*kind))
                    };
                    let args: Vec<String> = kinds
                        .iter()
                        .enumerate()
                        .map(|(i, k)| {
                            if i == p {
                                special.clone()
                            } else {
                                default_arg(*k).to_string()
                            }
                        })
                        .collect();
                    out.push(format!("{}({})", f.name, args.join(", ")));
                }
            }
        }
    }
    out
}

/// Every allowed binary operator between extreme operands, and the other
/// allowed forms (negation, casts, LIKE, IN, BETWEEN, IS ..., CASE).
fn operator_forms() -> Vec<String> {
    let mut out = Vec::new();
    for (op, kind) in OPERATORS {
        let values = extremes(*kind);
        for l in &values {
            for r in [
                "i",
                "1",
                "-1",
                "9223372036854775807",
                "(-9223372036854775807 - 1)",
                "1e308",
                "s",
                "d",
            ] {
                out.push(format!("({} {op} {r})", only_on_target(l, default_arg(*kind))));
            }
        }
    }
    for v in extremes(Arg::Number) {
        let v = &only_on_target(v, "i");
        out.push(format!("(-({v}))"));
        out.push(format!("CAST({v} AS VARCHAR)"));
        out.push(format!("TRY_CAST({v} AS INT)"));
        out.push(format!("TRY_CAST({v} AS SMALLINT)"));
        out.push(format!("({v} BETWEEN -1 AND 9223372036854775807)"));
        out.push(format!("({v} IN (1, 2, -9223372036854775807))"));
        out.push(format!("({v} IS NULL)"));
    }
    for v in extremes(Arg::Text) {
        let v = &only_on_target(v, "s");
        out.push(format!("({v} LIKE '%a\\\\')"));
        out.push(format!("TRY_CAST({v} AS BIGINT)"));
        out.push(format!("TRY_CAST({v} AS DATE)"));
        out.push(format!("(NOT ({v} = 'x'))"));
    }
    for v in extremes(Arg::Time) {
        let v = &only_on_target(v, "t");
        out.push(format!("CAST({v} AS TIMESTAMP)"));
        out.push(format!("TRY_CAST({v} AS DATE)"));
        out.push(format!("({v} + INTERVAL '1000000 years')"));
        out.push(format!("({v} - INTERVAL '1 day')"));
    }
    out
}

/// What a job can observe of one query: refused with a message, or
/// released with a schema.
///
/// A release that fell back to an empty input (execution failed) is an
/// outcome of its own: the attacker would see it as a release far from
/// the true one.
pub(super) fn outcome(r: &crate::Result<crate::Release>) -> String {
    match r {
        Ok(rel) if rel.fallback => "released from an empty input (execution failed)".to_string(),
        Ok(rel) => format!("released {:?}", rel.batch.schema().fields()),
        Err(e) => format!("refused {e}"),
    }
}

/// Runs `expr` (which may itself hold `{k}`) in the WHERE clause and, when
/// `everywhere`, also as an aggregate argument and as a group key, under a
/// condition one row meets (`{k}` = the target) and one no row meets.
async fn check(scope: &JobScope, expr: &str, everywhere: bool, stats: &mut (usize, usize)) -> Vec<String> {
    let mut failures = Vec::new();
    let forms = [
        "SELECT COUNT(*) AS n FROM t WHERE (CASE WHEN i = {k} THEN {e} END) IS NULL",
        "SELECT COUNT(CASE WHEN i = {k} THEN {e} END) AS n FROM t",
        "SELECT (CASE WHEN i = {k} THEN {e} END) AS g, COUNT(*) AS n FROM t GROUP BY (CASE WHEN i = {k} THEN {e} END)",
    ];
    for form in forms.iter().take(if everywhere { 3 } else { 1 }) {
        let meets = form.replace("{e}", expr).replace("{k}", TARGET);
        let nobody = form.replace("{e}", expr).replace("{k}", NOBODY);
        // Refusals quote the query; the condition's constant is the one
        // thing that legitimately differs.
        let a = outcome(&scope.query(&meets).await).replace(TARGET, "{k}");
        let b = outcome(&scope.query(&nobody).await).replace(NOBODY, "{k}");
        if a.starts_with("released") {
            stats.0 += 1;
        } else {
            stats.1 += 1;
        }
        if a != b {
            failures.push(format!("{meets}\n   -> {a}\n   vs {b}"));
        }
    }
    failures
}

#[tokio::test]
async fn no_allowed_function_or_operator_fails_on_one_row() {
    let scope = oracle_scope().await;
    let calls = function_calls();
    let forms = operator_forms();
    let mut stats = (0usize, 0usize);
    let mut failures = Vec::new();
    for e in &calls {
        failures.extend(check(&scope, e, true, &mut stats).await);
    }
    for e in &forms {
        failures.extend(check(&scope, e, false, &mut stats).await);
    }
    eprintln!(
        "oracle: {} functions, {} operators, {} expressions ({} calls, {} operator forms), {} query pairs released, {} refused before charging",
        FUNCTIONS.len(),
        OPERATORS.len(),
        calls.len() + forms.len(),
        calls.len(),
        forms.len(),
        stats.0,
        stats.1
    );
    assert!(
        failures.is_empty(),
        "{} outcomes differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Most generated queries must run: a suite that only sees refusals
    // would prove nothing.
    assert!(stats.0 > stats.1, "released {} refused {}", stats.0, stats.1);
}

#[tokio::test]
async fn the_issue_example_reads_nothing() {
    // The attack of issue 14: the query failed when the target's income
    // exceeded a guess and succeeded otherwise.
    let scope = oracle_scope().await;
    let q = |k: &str| {
        format!(
            "SELECT COUNT(*) AS n FROM t WHERE abs(CASE WHEN i = {k} AND f > 0 THEN -9223372036854775807 - 1 ELSE 0 END) >= 0"
        )
    };
    let meets = scope.query(&q(TARGET)).await;
    let nobody = scope.query(&q(NOBODY)).await;
    assert!(meets.is_ok() && nobody.is_ok(), "{meets:?} {nobody:?}");
}
