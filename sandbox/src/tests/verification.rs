//! Issue 15, cross-verification inside the guarantee: answers are
//! randomized response, and a subject that cannot be verified (absent,
//! not consenting, suspended, over its limit) is answered exactly like a
//! consenting subject whose claim does not match. An attacker comparing
//! answers learns consent or presence no better than ε allows.

use super::i14_review::version;
use crate::noise::SystemRng;
use crate::verify::{flips, truth_probability, Claim, Claimed};
use crate::{DataPlane, Error};
use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use scenarios::budget::Epsilon;
use serde_json::json;
use std::sync::Arc;

/// Subjects per kind of record.
const PER_KIND: usize = 1500;

#[test]
fn randomized_response_flips_with_the_stated_probability() {
    let mut rng = SystemRng::default();
    for eps in [Epsilon(250_000), Epsilon(1_000_000), Epsilon(2_000_000)] {
        let n = 40_000;
        let flipped = (0..n).filter(|_| flips(&mut rng, eps).unwrap()).count() as f64;
        let q = 1.0 - truth_probability(eps);
        let sd = (q * (1.0 - q) / n as f64).sqrt();
        assert!(
            (flipped / n as f64 - q).abs() < 5.0 * sd,
            "eps {eps}: {flipped} of {n}, q {q}"
        );
    }
}

fn claim(unit: String, employees: i64) -> Claim {
    Claim {
        unit,
        values: [("employees".to_string(), Claimed::Number(employees as f64))].into(),
    }
}

#[tokio::test]
async fn answers_do_not_reveal_consent_or_presence_beyond_epsilon() {
    // Units u0..: kinds by position. Every present subject has 7 employees.
    let kinds = [
        "match",
        "mismatch",
        "no_consent",
        "suspended",
        "over_limit",
        "absent",
    ];
    let present = PER_KIND * (kinds.len() - 1);
    let pid: Vec<String> = (0..present).map(|i| format!("u{i}")).collect();
    let schema = Schema::new(vec![
        Field::new("pid", DataType::Utf8, false),
        Field::new("employees", DataType::Int64, false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(pid)),
        Arc::new(Int64Array::from(vec![7i64; present])),
    ];
    let batch = RecordBatch::try_new(Arc::new(schema), cols).unwrap();
    let mut t = version(
        vec![batch],
        json!({"name": "firms", "path": "", "privacy_unit": "pid", "unit_kind": "enterprise",
            "columns": [{"name": "pid", "rule": "keep"}, {"name": "employees", "rule": "keep"}]}),
    );
    let unit = |kind: usize, i: usize| format!("u{}", kind * PER_KIND + i);
    let consenting: std::collections::HashSet<String> = (0..PER_KIND)
        .flat_map(|i| [unit(0, i), unit(1, i), unit(3, i), unit(4, i)])
        .collect();
    t.units.only = Some(Arc::new(consenting));
    t.units.exclude = Arc::new((0..PER_KIND).map(|i| unit(3, i)).collect());
    let mut claims = Vec::new();
    let mut eligible = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        for i in 0..PER_KIND {
            // Every claim but the mismatching ones is the true value.
            claims.push(claim(unit(k, i), if *kind == "mismatch" { 8 } else { 7 }));
            eligible.push(*kind != "over_limit");
        }
    }
    let eps = Epsilon(1_000_000);
    let plane = DataPlane::new();
    let answers = plane
        .verify_randomized(&t, &claims, &eligible, eps)
        .await
        .unwrap();
    let rate = |k: usize| {
        answers[k * PER_KIND..(k + 1) * PER_KIND]
            .iter()
            .filter(|a| **a)
            .count() as f64
            / PER_KIND as f64
    };
    let p = truth_probability(eps);
    let sd = (p * (1.0 - p) / PER_KIND as f64).sqrt();
    assert!(
        (rate(0) - p).abs() < 5.0 * sd,
        "a match is reported as match with p"
    );
    // Every subject that is not verifiable answers like a mismatch: the
    // best test between any two of them has no advantage.
    for (k, kind) in kinds.iter().enumerate().skip(1) {
        assert!(
            (rate(k) - (1.0 - p)).abs() < 5.0 * sd,
            "{kind}: {} match answers, expected {}",
            rate(k),
            1.0 - p
        );
    }
    // The only difference, a true match, is bounded by e^eps both ways.
    let bound = eps.as_f64().exp();
    let (yes, no) = (rate(0), rate(1));
    assert!(yes / no <= bound * 1.25 && (1.0 - no) / (1.0 - yes) <= bound * 1.25);
}

#[tokio::test]
async fn a_batch_names_each_subject_once() {
    let schema = Schema::new(vec![
        Field::new("pid", DataType::Utf8, false),
        Field::new("employees", DataType::Int64, false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a"])),
        Arc::new(Int64Array::from(vec![1i64])),
    ];
    let t = version(
        vec![RecordBatch::try_new(Arc::new(schema), cols).unwrap()],
        json!({"name": "firms", "path": "", "privacy_unit": "pid",
            "columns": [{"name": "pid", "rule": "keep"}, {"name": "employees", "rule": "keep"}]}),
    );
    // Repeating a subject would spend ε once per copy: refused.
    let claims = [claim("a".into(), 1), claim("a".into(), 2)];
    let r = DataPlane::new()
        .verify_randomized(&t, &claims, &[true, true], Epsilon(1_000_000))
        .await;
    assert!(matches!(r, Err(Error::InvalidQuery(_))), "{r:?}");
}

#[test]
fn a_batch_costs_one_query_and_zcdp_answers_within_its_rho() {
    use crate::verify::mechanism;
    use scenarios::budget::Rho;
    let laplace: scenarios::policy::ReleaseRules = serde_json::from_value(json!({
        "epsilon_total": 3.0, "epsilon_per_query": 0.5, "min_group_size": 10}))
    .unwrap();
    let (eps, cost) = mechanism(&laplace);
    assert_eq!(
        (eps, cost.epsilon, cost.rho),
        (Epsilon(500_000), Epsilon(500_000), Rho(0))
    );
    let gauss: scenarios::policy::ReleaseRules = serde_json::from_value(json!({
        "noise": "gaussian", "rho_total": 1.0, "rho_per_query": 0.125, "min_group_size": 10}))
    .unwrap();
    let (eps, cost) = mechanism(&gauss);
    // sqrt(2 * 0.125) = 0.5 exactly; eps^2 / 2 never exceeds rho.
    assert_eq!(
        (eps, cost.rho, cost.epsilon),
        (Epsilon(500_000), Rho(125_000), Epsilon(0))
    );
    let odd = scenarios::policy::ReleaseRules {
        rho_per_query: Rho(100_001),
        ..gauss
    };
    let (eps, cost) = mechanism(&odd);
    assert!(eps.as_f64() * eps.as_f64() / 2.0 <= cost.rho.as_f64());
}

/// An empirical lower bound on the epsilon of randomized response: run the
/// mechanism on neighbouring inputs (the true answer "match" and "no
/// match"), take the best distinguishing test (report "match"), and bound
/// ln(P[match | match] / P[match | no match]) from below with one-sided
/// 99.9% normal confidence bounds on both rates. It must not exceed the
/// claimed epsilon, and for this mechanism it should come close to it.
#[test]
fn an_audit_of_randomized_response_finds_no_more_than_the_claimed_epsilon() {
    let mut rng = SystemRng::default();
    let n = 60_000usize;
    for eps in [Epsilon(500_000), Epsilon(1_000_000), Epsilon(2_000_000)] {
        let rate = |truth: bool, rng: &mut SystemRng| {
            let answers = crate::verify::randomize(&vec![truth; n], eps, rng).unwrap();
            answers.iter().filter(|a| **a).count() as f64 / n as f64
        };
        let (p1, p0) = (rate(true, &mut rng), rate(false, &mut rng));
        let z = 3.09;
        let lower = |p: f64| p - z * (p * (1.0 - p) / n as f64).sqrt();
        let upper = |p: f64| p + z * (p * (1.0 - p) / n as f64).sqrt();
        // Both tests ("match" and "no match"), each bounded conservatively.
        let bound = (lower(p1) / upper(p0))
            .ln()
            .max((lower(1.0 - p0) / upper(1.0 - p1)).ln());
        assert!(bound <= eps.as_f64(), "eps {eps}: empirical lower bound {bound}");
        assert!(
            bound >= 0.85 * eps.as_f64(),
            "eps {eps}: the claim is loose? {bound}"
        );
    }
}
