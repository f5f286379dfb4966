//! Measuring the cost of protection: the same SQL timed raw in DataFusion
//! (over the raw tables, no policy) and through [`JobScope::query`](crate::JobScope::query) (plan
//! check, contribution bounding, noise, threshold, Arrow IPC), in one run.
//!
//! Only timings leave this module, never a raw result, so it is not a way
//! around the policy.

use crate::scope::{Accountant, DataPlane, MemoryAccountant, ScopeConfig};
use crate::{Error, Result};
use datafusion::prelude::SessionContext;
use scenarios::budget::{Budget, Delta, Epsilon, Rho};
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

/// A budget no run of benchmarks or tests exhausts.
pub(crate) fn unlimited_budget() -> Budget {
    Budget {
        epsilon: Epsilon(u64::MAX / 4),
        delta: Delta(u64::MAX / 4),
        rho: Rho(u64::MAX / 4),
    }
}

/// The median of `v` (`NaN` when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Which side of a comparison runs: both, or one alone (to profile it;
/// the other's time is then NaN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sides {
    /// Raw and protected, interleaved.
    #[default]
    Both,
    /// Only the raw query.
    Raw,
    /// Only the protected query.
    Protected,
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
    sides: Sides,
) -> Result<Vec<BenchRow>> {
    let raw = SessionContext::new();
    for t in &cfg.tables {
        raw.register_table(t.spec.name.as_str(), plane.raw_provider(t).await?)?;
    }
    let unlimited = unlimited_budget();
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
            if sides != Sides::Protected {
                let t = Instant::now();
                raw.sql(raw_sql).await?.collect().await?;
                r.push(t.elapsed().as_secs_f64() * 1e3);
            }
            if sides == Sides::Raw {
                continue;
            }
            let t = Instant::now();
            let release = scope
                .query(protected_sql)
                .await
                .map_err(|e| Error::Internal(format!("{name}: {e}")))?;
            p.push(t.elapsed().as_secs_f64() * 1e3);
            // A release that fell back to an empty input did not do the
            // work being measured.
            if release.fallback {
                return Err(Error::Internal(format!("{name}: execution failed; see the log")));
            }
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

/// Accuracy of one query at one epsilon.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccuracyRow {
    /// Label.
    pub name: String,
    /// Epsilon per query.
    pub epsilon: f64,
    /// Mean relative error of released values against the exact answer,
    /// over released groups and repetitions.
    pub mean_relative_error: f64,
    /// The same for a continuous Laplace mechanism with the same noise
    /// scales and no threshold (what OpenDP's `make_laplace` adds), by
    /// simulation; for reference only.
    pub reference_relative_error: f64,
    /// Fraction of the exact answer's groups that were released.
    pub released_fraction: f64,
}

fn cell_text(b: &datafusion::arrow::record_batch::RecordBatch, col: usize, row: usize) -> String {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let a = b.column(col);
    let a = datafusion::arrow::compute::cast(a, &datafusion::arrow::datatypes::DataType::Utf8)
        .unwrap_or_else(|_| a.clone());
    ArrayFormatter::try_new(a.as_ref(), &FormatOptions::default())
        .map(|f| f.value(row).to_string())
        .unwrap_or_default()
}

fn cell_f64(b: &datafusion::arrow::record_batch::RecordBatch, col: usize, row: usize) -> Option<f64> {
    use datafusion::arrow::array::{Array, AsArray};
    let a = datafusion::arrow::compute::cast(b.column(col), &datafusion::arrow::datatypes::DataType::Float64)
        .ok()?;
    let a = a.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
    (!a.is_null(row)).then(|| a.value(row))
}

/// Rows of a result keyed by their first `keys` columns.
fn keyed(
    batches: &[datafusion::arrow::record_batch::RecordBatch],
    keys: usize,
) -> Vec<(String, Vec<Option<f64>>)> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let k: Vec<String> = (0..keys).map(|c| cell_text(b, c, r)).collect();
            let v = (keys..b.num_columns()).map(|c| cell_f64(b, c, r)).collect();
            out.push((k.join("|"), v));
        }
    }
    out
}

/// A continuous Laplace sample by inversion (reference simulation only,
/// never used for a release).
fn reference_laplace(g: &mut crate::sample::SplitMix64, scale: f64) -> f64 {
    let u = g.unit() - 0.5;
    -scale * u.signum() * (1.0 - 2.0 * u.abs()).max(1e-300).ln()
}

/// One accuracy case.
#[derive(Debug, Clone)]
pub struct AccuracyCase {
    /// Label.
    pub name: String,
    /// The query, protected and raw.
    pub sql: String,
    /// Leading group-key columns.
    pub keys: usize,
    /// For an AVG query: raw SQL returning the keys, the exact clamped sum
    /// and the exact count per group, so the reference divides a noisy sum
    /// by a noisy count as the mechanism does.
    pub avg_parts_sql: Option<String>,
}

/// Measures accuracy: each case is run `reps` times at the scope's
/// epsilon and every released value is compared with the exact answer.
pub async fn accuracy(
    plane: &DataPlane,
    cfg: ScopeConfig,
    cases: &[AccuracyCase],
    reps: usize,
) -> Result<Vec<AccuracyRow>> {
    let raw = SessionContext::new();
    for t in &cfg.tables {
        raw.register_table(t.spec.name.as_str(), plane.raw_provider(t).await?)?;
    }
    let epsilon = cfg.scenario.release.epsilon_per_query.as_f64();
    let unlimited = unlimited_budget();
    let mut cfg = cfg;
    cfg.scenario.release.max_queries_per_job = u32::MAX;
    let scope = plane
        .open(cfg, Arc::new(MemoryAccountant::new(unlimited)))
        .await?;
    let mut g = crate::sample::SplitMix64(7);
    let mut rows = Vec::new();
    for case in cases {
        let exact = keyed(&raw.sql(&case.sql).await?.collect().await?, case.keys);
        let parts = match &case.avg_parts_sql {
            Some(p) => Some(keyed(&raw.sql(p).await?.collect().await?, case.keys)),
            None => None,
        };
        let (mut err, mut n, mut released, mut ref_err, mut ref_n) = (0.0, 0usize, 0usize, 0.0, 0usize);
        for _ in 0..reps.max(1) {
            let r = scope
                .query(&case.sql)
                .await
                .map_err(|e| Error::Internal(format!("{}: {e}", case.name)))?;
            let got = keyed(std::slice::from_ref(&r.batch), case.keys);
            for (k, truth) in &exact {
                let Some((_, noisy)) = got.iter().find(|(gk, _)| gk == k) else {
                    continue;
                };
                released += 1;
                for (t, v) in truth.iter().zip(noisy) {
                    if let (Some(t), Some(v)) = (t, v) {
                        if *t != 0.0 {
                            err += (v - t).abs() / t.abs();
                            n += 1;
                        }
                    }
                }
            }
            // Reference: the same noise scales, continuous Laplace, no threshold.
            let ms = &r.lineage.mechanism.measurements;
            let scale_of = |prefix: &str| {
                ms.iter()
                    .find(|m| m.name.starts_with(prefix))
                    .map(|m| m.scale_f64)
            };
            let units = scale_of("units").unwrap_or(1.0);
            let sum = scale_of("sum").unwrap_or(units);
            let count = scale_of("count").or_else(|| scale_of("rows")).unwrap_or(units);
            // Over the groups this release kept, as the error above is.
            for (k, truth) in exact.iter().filter(|(k, _)| got.iter().any(|(gk, _)| gk == k)) {
                for t in truth.iter().flatten().filter(|t| **t != 0.0) {
                    let noisy = match &parts {
                        Some(p) => {
                            let Some((_, v)) = p.iter().find(|(pk, _)| pk == k) else {
                                continue;
                            };
                            let (s, c) = (
                                v.first().copied().flatten().unwrap_or(0.0),
                                v.get(1).copied().flatten().unwrap_or(0.0),
                            );
                            (s + reference_laplace(&mut g, sum))
                                / (c + reference_laplace(&mut g, count)).max(1.0)
                        }
                        None if ms.len() == 1 => t + reference_laplace(&mut g, units),
                        None => t + reference_laplace(&mut g, sum),
                    };
                    ref_err += (noisy - t).abs() / t.abs();
                    ref_n += 1;
                }
            }
        }
        rows.push(AccuracyRow {
            name: case.name.clone(),
            epsilon,
            mean_relative_error: if n > 0 { err / n as f64 } else { f64::NAN },
            reference_relative_error: if ref_n > 0 {
                ref_err / ref_n as f64
            } else {
                f64::NAN
            },
            released_fraction: released as f64 / (exact.len() * reps.max(1)).max(1) as f64,
        });
    }
    Ok(rows)
}

/// Times `SELECT SUM(f(insured, employees))` with a two-argument row
/// function against `SELECT SUM(native)` over `rows` synthetic rows
/// (`insured` in 0..=150, `employees` in 0..=200); returns the median of
/// each in seconds after a warm-up, and fails if the two sums differ.
pub async fn row_function_vs_native(
    f: Arc<dyn crate::udf::RowFunction>,
    native: &str,
    rows: usize,
    iterations: usize,
) -> Result<(f64, f64)> {
    use datafusion::arrow::array::{Array, Float64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut g = crate::sample::SplitMix64(42);
    let insured: Float64Array = (0..rows).map(|_| Some(g.below(151) as f64)).collect();
    let employees: Float64Array = (0..rows).map(|_| Some(g.below(201) as f64)).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("insured", DataType::Float64, true),
        Field::new("employees", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(insured), Arc::new(employees)])?;
    let ctx = SessionContext::new();
    ctx.register_batch("t", batch)?;
    let name = f.name().to_string();
    ctx.register_udf(crate::udf::scalar_udf(f));
    let queries = [
        format!("SELECT SUM({name}(insured, employees)) AS s FROM t"),
        format!("SELECT SUM({native}) AS s FROM t"),
    ];
    let mut times = [Vec::new(), Vec::new()];
    let mut sums = [None, None];
    for _ in 0..=iterations.max(1) {
        for (i, sql) in queries.iter().enumerate() {
            let t = Instant::now();
            let out = ctx.sql(sql).await?.collect().await?;
            let d = t.elapsed().as_secs_f64();
            let v = out.first().and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .filter(|a| !a.is_null(0))
                    .map(|a| a.value(0))
            });
            if let (Some(slot), Some(sum)) = (times.get_mut(i), sums.get_mut(i)) {
                slot.push(d);
                *sum = v;
            }
        }
    }
    if let [Some(a), Some(b)] = sums {
        if (a - b).abs() > 1e-6 * b.abs().max(1.0) {
            return Err(Error::Internal(format!(
                "the row function and the native expression disagree: {a} vs {b}"
            )));
        }
    }
    let [wasm, native] = times.map(|mut v| {
        v.remove(0); // warm-up
        median(v)
    });
    Ok((wasm, native))
}
