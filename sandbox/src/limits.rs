//! A query's memory and time limits, drawn afresh for every query with
//! Laplace noise (invariant I14).
//!
//! Why noisy. A query that runs out of memory or time is released as the
//! mechanism's answer on an empty input, which looks nothing like its true
//! answer; with a fixed limit an attacker tunes a query (padding its keys,
//! say) until it sits just below the limit, and then one row more or less
//! decides whether it crosses: an exact, noise-free bit (found by review:
//! an exact count read through the memory limit). Whether a quantity
//! crosses a threshold drawn as `base + Laplace(b)` is instead
//! `Δ/b`-differentially private, where `Δ` is the most one row can move
//! the quantity. Total evaluation bounds `Δ` (text at most
//! `total::MAX_TEXT_BYTES`, expressions at most `policy::MAX_QUERY_NODES`
//! nodes): we estimate about 256 KiB of accounted memory and 20 ms of work
//! per row at worst (not measured), so
//! with `b` half the base limit (512 MiB and 15 s by default) a limit's
//! verdict costs at most about 5·10⁻⁴ and 1.3·10⁻³ per query; this is
//! not charged to the budget and is stated in `docs/invariants.md`.
//!
//! What this module must not do: let a limit be decided by a fixed
//! threshold on anything that depends on the data.

use crate::noise::{discrete_laplace, RandomSource};
use crate::Result;
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool, MemoryReservation};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Granularity of the memory limit's noise.
const KIB: usize = 1024;

/// `base + Laplace(base / 2)`, kept within `[base / 2, 3 · base]` (the
/// limits still protect the machine).
fn noisy(base: u128, rng: &mut dyn RandomSource) -> Result<u128> {
    let scale = (base / 2).max(1);
    let draw = discrete_laplace(rng, scale, 1)?;
    let value = i128::try_from(base).unwrap_or(i128::MAX).saturating_add(draw);
    let lo = i128::try_from(base / 2).unwrap_or(i128::MAX);
    let hi = i128::try_from(base.saturating_mul(3)).unwrap_or(i128::MAX);
    Ok(u128::try_from(value.clamp(lo, hi)).unwrap_or(base))
}

/// A query's time limit: `base` with noise (see the module docs).
pub(crate) fn noisy_timeout(base: Duration, rng: &mut dyn RandomSource) -> Result<Duration> {
    let ms = noisy(base.as_millis().max(1), rng)?;
    Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
}

/// A memory pool whose limit is drawn again before every query.
#[derive(Debug)]
pub(crate) struct NoisyPool {
    base: usize,
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl NoisyPool {
    /// A pool around `base` bytes.
    pub(crate) fn new(base: usize) -> Self {
        NoisyPool {
            base,
            limit: AtomicUsize::new(base),
            used: AtomicUsize::new(0),
        }
    }

    /// Draws the limit of the next query.
    pub(crate) fn redraw(&self, rng: &mut dyn RandomSource) -> Result<()> {
        let kib = noisy((self.base / KIB).max(1) as u128, rng)?;
        let bytes = usize::try_from(kib)
            .unwrap_or(usize::MAX / KIB)
            .saturating_mul(KIB);
        self.limit.store(bytes, Ordering::SeqCst);
        Ok(())
    }
}

impl std::fmt::Display for NoisyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The drawn limit is the platform's business, not an error text's.
        write!(f, "noisy pool")
    }
}

impl MemoryPool for NoisyPool {
    fn name(&self) -> &str {
        "noisy"
    }
    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
    }
    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }
    fn try_grow(&self, _reservation: &MemoryReservation, additional: usize) -> datafusion::error::Result<()> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let next = used.checked_add(additional)?;
                (next <= limit).then_some(next)
            })
            .map(|_| ())
            .map_err(|_| {
                datafusion::error::DataFusionError::ResourcesExhausted(
                    "the query needs more memory than a query may use".into(),
                )
            })
    }
    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::SystemRng;

    #[test]
    fn limits_vary_around_their_base_within_bounds() {
        let mut rng = SystemRng::default();
        let base = Duration::from_secs(30);
        let draws: Vec<Duration> = (0..2000)
            .map(|_| noisy_timeout(base, &mut rng).unwrap())
            .collect();
        assert!(draws.iter().all(|d| *d >= base / 2 && *d <= base * 3));
        let distinct: std::collections::BTreeSet<u128> = draws.iter().map(Duration::as_millis).collect();
        assert!(distinct.len() > 1000, "the limit is noisy");
        let mut sorted = draws.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2].as_secs_f64();
        assert!((median - 30.0).abs() < 2.0, "{median}");
        let pool = NoisyPool::new(1 << 30);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            pool.redraw(&mut rng).unwrap();
            seen.insert(pool.limit.load(Ordering::SeqCst));
        }
        // About 18% of draws fall below half the base and are clamped to
        // it (one value); the others are all distinct.
        assert!(seen.len() > 120, "{} distinct limits", seen.len());
        assert!(seen.iter().all(|l| *l >= 1 << 29 && *l <= 3 << 30));
    }
}
