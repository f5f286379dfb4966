//! Proof by attack (R17): classic attacks on statistical releases, run many
//! times against the real release path. Each must fail to learn a single
//! value: the attacker's success rate stays within what the privacy budget
//! it spent allows (for ε-DP, a yes/no guess is right with probability at
//! most e^ε / (1 + e^ε)), where a release without noise would let it
//! succeed every time.

use super::{column_i64, open, spec};
use crate::profile::profile;
use crate::{DataPlane, Error, JobScope, MemoryAccountant, ScopeConfig, TableVersion};
use std::sync::Arc;

/// A predicate matching exactly one person of PUMS.csv (pid 1), and one
/// that differs only in a value nobody has (educ runs 1..16).
const TARGET: &str = "age = 59 AND educ = 9 AND race = 1 AND sex = 1 AND married = 1";
const NOBODY: &str = "age = 59 AND educ = 17 AND race = 1 AND sex = 1 AND married = 1";

/// The released count, or `None` when it was withheld.
async fn count(scope: &JobScope, sql: &str) -> Option<i64> {
    use crate::arrow::array::{Array, AsArray};
    let r = scope.query(sql).await.expect(sql);
    let c = r
        .batch
        .column_by_name("n")?
        .as_primitive::<crate::arrow::datatypes::Int64Type>();
    (c.len() == 1 && !c.is_null(0)).then(|| c.value(0))
}

/// Runs `attack` against a world where the isolated set holds one person
/// and one where it holds none, `trials` times each, and returns the
/// attacker's accuracy at telling them apart.
async fn accuracy<F, Fut>(trials: usize, attack: F) -> f64
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut right = 0;
    for _ in 0..trials {
        if attack(TARGET).await {
            right += 1;
        }
        if !attack(NOBODY).await {
            right += 1;
        }
    }
    right as f64 / (2 * trials) as f64
}

/// The bound on a yes/no guess after spending `epsilon`, plus a margin of
/// four standard errors for `n` guesses.
fn bound(epsilon: f64, n: usize) -> f64 {
    let p = epsilon.exp() / (1.0 + epsilon.exp());
    p + 4.0 * (0.25 / n as f64).sqrt()
}

#[tokio::test]
async fn differencing_two_large_queries_does_not_reveal_membership() {
    // Q1 counts everyone; Q2 everyone but the isolated set. Their difference
    // is the isolated set's size: 1 or 0. Each query spends 0.1.
    let (scope, _) = open("PUMS_pid.csv", 0.1, 1e6).await;
    let scope = Arc::new(scope);
    let trials = 300;
    let acc = accuracy(trials, |pred| {
        let scope = scope.clone();
        async move {
            let all = count(&scope, "SELECT COUNT(*) AS n FROM pums WHERE age >= 18").await;
            let rest = count(
                &scope,
                &format!("SELECT COUNT(*) AS n FROM pums WHERE age >= 18 AND NOT ({pred})"),
            )
            .await;
            match (all, rest) {
                (Some(a), Some(b)) => a - b >= 1,
                _ => false,
            }
        }
    })
    .await;
    assert!(acc <= bound(0.2, 2 * trials), "differencing accuracy {acc}");
}

#[tokio::test]
async fn a_tracker_padding_the_target_past_the_threshold_learns_nothing() {
    // The target alone is below any threshold, so pad it with a large set
    // and subtract the padding: classic tracker.
    let (scope, _) = open("PUMS_pid.csv", 0.1, 1e6).await;
    let scope = Arc::new(scope);
    // Asked directly, the isolated person is never released.
    for _ in 0..20 {
        assert_eq!(
            count(&scope, &format!("SELECT COUNT(*) AS n FROM pums WHERE {TARGET}")).await,
            None
        );
    }
    let trials = 300;
    let acc = accuracy(trials, |pred| {
        let scope = scope.clone();
        async move {
            let padded = count(
                &scope,
                &format!("SELECT COUNT(*) AS n FROM pums WHERE ({pred}) OR sex = 0"),
            )
            .await;
            let padding = count(
                &scope,
                &format!("SELECT COUNT(*) AS n FROM pums WHERE sex = 0 AND NOT ({pred})"),
            )
            .await;
            match (padded, padding) {
                (Some(a), Some(b)) => a - b >= 1,
                _ => false,
            }
        }
    })
    .await;
    assert!(acc <= bound(0.2, 2 * trials), "tracker accuracy {acc}");
}

/// A scope over an already profiled table with a fresh budget.
async fn fresh(t: &TableVersion, eps_q: f64, eps_total: f64) -> JobScope {
    let sc = super::scenario("pums", eps_q, eps_total);
    let acc = Arc::new(MemoryAccountant::new(sc.release.total_budget()));
    let cfg = ScopeConfig {
        agreement_id: "a".into(),
        scenario: sc,
        tables: vec![t.clone()],
        token_key: crate::desensitize::TokenKey::new(&[3u8; 32]),
        memory_limit: 1 << 30,
        query_timeout: std::time::Duration::from_secs(60),
    };
    DataPlane::new().open(cfg, acc).await.unwrap()
}

#[tokio::test]
async fn averaging_repeated_queries_is_stopped_by_the_budget() {
    // Per attack: a budget of 1.0 allows five pairs at 0.1 each; the
    // attacker averages the five differences.
    let s = spec("PUMS_pid.csv", "pums");
    let p = profile(&s).await.unwrap();
    let table = Arc::new(TableVersion::from_profile(s, &p));
    let trials = 100;
    let acc = accuracy(trials, |pred| {
        let table = table.clone();
        async move {
            let scope = fresh(&table, 0.1, 1.0).await;
            let mut diffs = Vec::new();
            loop {
                let a = scope
                    .query("SELECT COUNT(*) AS n FROM pums WHERE age >= 18")
                    .await;
                let b = scope
                    .query(&format!(
                        "SELECT COUNT(*) AS n FROM pums WHERE age >= 18 AND NOT ({pred})"
                    ))
                    .await;
                match (a, b) {
                    (Ok(a), Ok(b)) => diffs.push(column_i64(&a.batch, "n")[0] - column_i64(&b.batch, "n")[0]),
                    (Err(Error::BudgetExhausted(_)), _) | (_, Err(Error::BudgetExhausted(_))) => break,
                    (a, b) => panic!("unexpected {a:?} {b:?}"),
                }
                assert!(diffs.len() <= 5, "the budget must stop the averaging");
            }
            assert_eq!(diffs.len(), 5);
            let mean = diffs.iter().sum::<i64>() as f64 / diffs.len() as f64;
            mean >= 0.5
        }
    })
    .await;
    assert!(acc <= bound(1.0, 2 * trials), "averaging accuracy {acc}");
}

#[tokio::test]
async fn probing_for_an_unknown_key_gives_the_same_answer_as_for_a_missing_one() {
    // Age 87 belongs to two people, age 94 to nobody: neither key is ever
    // released, so the answer does not say whether the key exists.
    let (scope, _) = open("PUMS_pid.csv", 1.0, 1e6).await;
    for age in [87, 94] {
        for _ in 0..50 {
            let r = scope
                .query(&format!(
                    "SELECT age, COUNT(*) AS n FROM pums WHERE age = {age} GROUP BY age"
                ))
                .await
                .unwrap();
            assert_eq!(r.batch.num_rows(), 0, "age {age} was released");
        }
    }
}

#[tokio::test]
async fn an_outlier_cannot_be_read_from_a_sum() {
    // One person with an income of a billion: the released sum moves by at
    // most the declared bound (500,000), so the outlier's value stays hidden.
    let dir = tempfile::tempdir().unwrap();
    let with = dir.path().join("outlier.csv");
    let mut text = std::fs::read_to_string(super::pums("PUMS_pid.csv")).unwrap();
    text.push_str("40,1,9,1,1000000000.0,1,1001\n");
    std::fs::write(&with, text).unwrap();
    let mean_sum = |path: String| async move {
        let mut s = spec("PUMS_pid.csv", "pums");
        s.path = path;
        let p = profile(&s).await.unwrap();
        let scope = fresh(&TableVersion::from_profile(s, &p), 1.0, 1e6).await;
        let mut total = 0.0;
        for _ in 0..100 {
            let r = scope
                .query("SELECT SUM(income) AS s, AVG(income) AS a FROM pums")
                .await
                .unwrap();
            use crate::arrow::array::AsArray;
            // A float column is summed at its declared scale (default 2):
            // the sum is released as a float.
            let s = crate::arrow::compute::cast(
                r.batch.column_by_name("s").unwrap(),
                &crate::arrow::datatypes::DataType::Float64,
            )
            .unwrap();
            total += s.as_primitive::<crate::arrow::datatypes::Float64Type>().value(0);
            let avg = r
                .batch
                .column_by_name("a")
                .unwrap()
                .as_primitive::<crate::arrow::datatypes::Float64Type>()
                .value(0);
            assert!(avg <= 500_000.0);
        }
        total / 100.0
    };
    let without = mean_sum(super::pums("PUMS_pid.csv")).await;
    let with = mean_sum(with.to_string_lossy().to_string()).await;
    let shift = with - without;
    assert!(
        shift < 1_500_000.0,
        "the outlier moved the mean released sum by {shift}"
    );
}
