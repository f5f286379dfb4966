//! `invis bench-audit`: the privacy audit at length. Every release
//! mechanism is run many times on neighbouring datasets and the best
//! distinguishing test gives an empirical lower bound on its `ε`, which
//! must not exceed the claimed `ε` (`sandbox::audit`); the negative
//! controls, which break their claims on purpose, must be flagged. The
//! figures go in `docs/privacy-model.md` ("Auditing").

use anyhow::{bail, Result};
use sandbox::audit::{self, Audit, Audited};
use std::time::Instant;

fn row(a: &Audit, seconds: f64) {
    println!(
        "{:<34} {:>7.3} {:>8.1e} {:>9} {:<32} {:>7.4} {:>7.4} {:>8.3} {:>6} {:>7.1}",
        a.name,
        a.claim.epsilon,
        a.claim.delta,
        a.samples,
        a.estimate.test.to_string(),
        a.estimate.p_favoured,
        a.estimate.p_other,
        a.estimate.epsilon_lb,
        if a.within_claim() { "ok" } else { "FLAG" },
        seconds,
    );
}

async fn run_one(m: &mut dyn Audited, samples: usize, confidence: f64) -> Result<Audit> {
    let t = Instant::now();
    let a = audit::audit(m, samples, confidence).await?;
    row(&a, t.elapsed().as_secs_f64());
    Ok(a)
}

/// Audits every mechanism with `samples` runs per neighbour (the
/// end-to-end query path with `query_samples`), then the negative
/// controls, at `confidence`. Fails when a mechanism exceeds its claim or
/// a negative control is not flagged.
pub async fn run(samples: usize, query_samples: usize, confidence: f64) -> Result<()> {
    if !(0.5..1.0).contains(&confidence) {
        bail!("the confidence must be in [0.5, 1)");
    }
    let samples = samples.max(2);
    println!(
        "privacy audit: {samples} runs per neighbour (half choose the test, half bound it), \
         Clopper-Pearson at {:.1}% confidence",
        confidence * 100.0
    );
    println!(
        "{:<34} {:>7} {:>8} {:>9} {:<32} {:>7} {:>7} {:>8} {:>6} {:>7}",
        "mechanism", "eps", "delta", "samples", "test", "p(fav)", "p(oth)", "eps_lb", "", "s"
    );
    let mut failures = Vec::new();
    for mut m in audit::mechanisms().await? {
        let a = run_one(m.as_mut(), samples, confidence).await?;
        if !a.within_claim() {
            failures.push(a.name);
        }
    }
    if query_samples > 0 {
        let mut m = audit::end_to_end().await?;
        let a = run_one(&mut m, query_samples.max(2), confidence).await?;
        if !a.within_claim() {
            failures.push(a.name);
        }
    }
    println!("negative controls (must be flagged):");
    for mut m in audit::negative_controls().await? {
        let a = run_one(m.as_mut(), samples, confidence).await?;
        if a.within_claim() {
            failures.push(format!("{} (not flagged)", a.name));
        }
    }
    if !failures.is_empty() {
        bail!("audit failed: {}", failures.join(", "));
    }
    println!("every mechanism within its claim; every negative control flagged");
    Ok(())
}
