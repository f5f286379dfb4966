//! Issue 15, opaque tokens: a tokenized column never leaves the sandbox as
//! a value. The attacks here try to build a value-to-token dictionary (a
//! developer table holding a value both kept and tokenized, a table of
//! candidate values, a join on the unit with a public token, bisection of
//! tokens by comparison with constants) and must all be refused.

use super::i14_review::version;
use crate::desensitize::TokenKey;
use crate::{DataPlane, Error, JobScope, MemoryAccountant, ScopeConfig};
use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::json;
use std::sync::Arc;

const PEOPLE: usize = 60;

/// Units `p0..p59`, each with `name` one of ten values (six units each).
fn names(columns: &[&str]) -> RecordBatch {
    let pid: Vec<String> = (0..PEOPLE).map(|r| format!("p{r}")).collect();
    let name: Vec<String> = (0..PEOPLE).map(|r| format!("company {}", r % 10)).collect();
    let mut fields = vec![Field::new("pid", DataType::Utf8, false)];
    let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(pid))];
    for c in columns {
        fields.push(Field::new(*c, DataType::Utf8, false));
        cols.push(Arc::new(StringArray::from(name.clone())));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// Two public tables with a tokenized `name` and a developer's own table
/// holding the same names once kept (`plain`) and once tokenized (`tok`).
async fn scope() -> JobScope {
    let public = |table: &str| {
        version(
            vec![names(&["name", "district"])],
            json!({"name": table, "path": "", "privacy_unit": "pid", "unit_kind": "enterprise",
                "columns": [{"name": "pid", "rule": "tokenize"}, {"name": "name", "rule": "tokenize"},
                            {"name": "district", "rule": "keep"}]}),
        )
    };
    let mut own = version(
        vec![names(&["plain", "tok"])],
        json!({"name": "mine", "path": "", "privacy_unit": "pid", "unit_kind": "enterprise",
            "columns": [{"name": "pid", "rule": "keep"}, {"name": "plain", "rule": "keep"},
                        {"name": "tok", "rule": "tokenize"}]}),
    );
    own.developer_supplied = true;
    let all = ["group", "filter", "aggregate"];
    // The grants are written directly (not validated), as a scenario
    // approved before tokens were refused as group keys would hold them.
    let sc: scenarios::policy::ScenarioSpec = serde_json::from_value(json!({
        "name": "tokens", "class": "tokens", "purpose": "testing",
        "tables": [
            {"dataset": "reg", "columns": [{"name": "name", "ops": all}, {"name": "district", "ops": all},
                {"name": "pid", "ops": ["join", "aggregate"]}]},
            {"dataset": "tax", "columns": [{"name": "name", "ops": all},
                {"name": "pid", "ops": ["join", "aggregate"]}]},
            {"dataset": "mine", "columns": [{"name": "plain", "ops": all}, {"name": "tok", "ops": all},
                {"name": "pid", "ops": ["join"]}]}
        ],
        "release": {"epsilon_total": 1000.0, "epsilon_per_query": 2.0,
            "min_group_size": 3, "max_rows_per_unit": 1, "max_queries_per_job": 1000,
            "delta_per_query": 1e-5, "delta_total": 1e-4}
    }))
    .unwrap();
    let cfg = ScopeConfig {
        agreement_id: "ag_tokens".into(),
        scenario: sc,
        tables: vec![public("reg"), public("tax"), own],
        token_key: TokenKey::new(&[4u8; 32]),
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

async fn refused(scope: &JobScope, sql: &str) {
    match scope.query(sql).await {
        Err(Error::PolicyViolation(m)) => assert!(!m.contains("company"), "echoes a value: {m}"),
        Err(other) => panic!("{sql}: wrong error {other}"),
        Ok(r) => panic!("{sql}: released {} rows", r.batch.num_rows()),
    }
}

#[tokio::test]
async fn the_dictionary_attack_is_refused() {
    let s = scope().await;
    // The attack: the same values kept and tokenized, grouped.
    refused(&s, "SELECT plain, tok, COUNT(*) FROM mine GROUP BY plain, tok").await;
    // One value at a time through a filter on the kept copy.
    refused(
        &s,
        "SELECT tok, COUNT(*) FROM mine WHERE plain = 'company 3' GROUP BY tok",
    )
    .await;
    // A table of candidate values, tokenized by the platform, grouped.
    refused(&s, "SELECT tok, COUNT(*) FROM mine GROUP BY tok").await;
    // The public tokens themselves are never group keys either, nor
    // anything computed from them.
    refused(&s, "SELECT name, COUNT(*) FROM reg GROUP BY name").await;
    refused(
        &s,
        "SELECT substr(name, 1, 2), COUNT(*) FROM reg GROUP BY substr(name, 1, 2)",
    )
    .await;
}

#[tokio::test]
async fn tokens_cannot_be_matched_with_known_values() {
    let s = scope().await;
    let join = "FROM mine m JOIN reg r ON m.pid = r.pid";
    // A developer value grouped beside the public token of the same unit.
    refused(
        &s,
        &format!("SELECT m.plain, r.name, COUNT(*) {join} GROUP BY m.plain, r.name"),
    )
    .await;
    // Bisection: which developer values have a token below a constant.
    refused(
        &s,
        &format!("SELECT m.plain, COUNT(*) {join} WHERE r.name < '8' GROUP BY m.plain"),
    )
    .await;
    refused(
        &s,
        &format!("SELECT m.plain, COUNT(*) {join} WHERE r.name LIKE 'a%' GROUP BY m.plain"),
    )
    .await;
    refused(
        &s,
        &format!("SELECT m.plain, COUNT(*) {join} WHERE r.name IN ('00', 'ff') GROUP BY m.plain"),
    )
    .await;
    refused(
        &s,
        &format!("SELECT m.plain, COUNT(*) {join} WHERE length(r.name) > 3 GROUP BY m.plain"),
    )
    .await;
    // A token compared with a kept value or a constant.
    refused(&s, &format!("SELECT COUNT(*) {join} WHERE m.plain = r.name")).await;
    refused(&s, "SELECT COUNT(*) FROM reg WHERE name = 'company 3'").await;
    // The developer's tokens compared with public tokens, in WHERE or ON.
    refused(&s, &format!("SELECT COUNT(*) {join} WHERE m.tok = r.name")).await;
    refused(
        &s,
        "SELECT COUNT(*) FROM mine m JOIN reg r ON m.pid = r.pid AND m.tok = r.name",
    )
    .await;
    // A join on a tokenized column that is not the unit.
    refused(&s, "SELECT COUNT(*) FROM reg a JOIN tax b ON a.name = b.name").await;
    refused(&s, "SELECT COUNT(*) FROM mine m JOIN reg r ON m.tok = r.name").await;
}

#[tokio::test]
async fn tokens_still_link_public_tables_by_equality() {
    let s = scope().await;
    // Equal raw names give equal tokens under the agreement's key.
    let r = s
        .query("SELECT COUNT(*) AS n FROM reg a JOIN tax b ON a.pid = b.pid WHERE a.name = b.name")
        .await
        .unwrap();
    assert_eq!(r.batch.num_rows(), 1);
    s.query("SELECT COUNT(name) FROM reg").await.unwrap();
    s.query("SELECT district, COUNT(*) FROM reg WHERE name IS NOT NULL GROUP BY district")
        .await
        .unwrap();
    // The equality of two tokens is no token: it may be a group key.
    s.query(
        "SELECT a.name = b.name, COUNT(*) FROM reg a JOIN tax b ON a.pid = b.pid GROUP BY a.name = b.name",
    )
    .await
    .unwrap();
    // Within the developer's own table its tokens compare with each other.
    s.query("SELECT COUNT(*) FROM mine WHERE tok = tok")
        .await
        .unwrap();
}
