//! Measuring the cost of protection: the same SQL timed raw in DataFusion
//! (over the raw tables, no policy) and through [`JobScope::query`] (plan
//! check, contribution bounding, noise, threshold, Arrow IPC), in one run.
//!
//! Only timings leave this module, never a raw result, so it is not a way
//! around the policy.

use crate::scope::{Accountant, DataPlane, MemoryAccountant, ScopeConfig};
use crate::{Error, Result};
use datafusion::prelude::SessionContext;
use scenarios::budget::{Budget, Delta, Epsilon};
use std::sync::Arc;
use std::time::Instant;

/// Timings of one query.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    /// Label.
    pub name: String,
    /// Median wall time of the raw query, milliseconds.
    pub raw_ms: f64,
    /// Median wall time of the protected query, milliseconds.
    pub protected_ms: f64,
    /// `protected_ms / raw_ms`.
    pub ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times each `(name, protected_sql, raw_sql)` `iterations` times, raw and
/// protected interleaved so both see the same machine state. The raw SQL
/// is given separately because it reads raw columns (for example a join on
/// raw ids where the protected query joins tokens).
pub async fn compare(
    plane: &DataPlane,
    cfg: ScopeConfig,
    cases: &[(String, String, String)],
    iterations: usize,
) -> Result<Vec<BenchRow>> {
    let raw = SessionContext::new();
    for t in &cfg.tables {
        raw.register_table(t.spec.name.as_str(), plane.raw_provider(t).await?)?;
    }
    let unlimited = Budget {
        epsilon: Epsilon(u64::MAX / 4),
        delta: Delta(u64::MAX / 4),
    };
    let accountant: Arc<dyn Accountant> = Arc::new(MemoryAccountant::new(unlimited));
    let mut cfg = cfg;
    cfg.scenario.release.max_queries_per_job = u32::MAX;
    let scope = plane.open(cfg, accountant).await?;
    let mut rows = Vec::with_capacity(cases.len());
    for (name, protected_sql, raw_sql) in cases {
        // One warm-up of each, so file metadata and caches are equal.
        raw.sql(raw_sql).await?.collect().await?;
        scope.query(protected_sql).await?;
        let (mut r, mut p) = (Vec::new(), Vec::new());
        for _ in 0..iterations.max(1) {
            let t = Instant::now();
            raw.sql(raw_sql).await?.collect().await?;
            r.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            scope
                .query(protected_sql)
                .await
                .map_err(|e| Error::Internal(format!("{name}: {e}")))?;
            p.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (raw_ms, protected_ms) = (median(r), median(p));
        rows.push(BenchRow {
            name: name.clone(),
            raw_ms,
            protected_ms,
            ratio: protected_ms / raw_ms,
        });
    }
    Ok(rows)
}
