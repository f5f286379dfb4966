//! Per-tenant limits (issue "Fair share"):
//!
//! - **jobs in flight**: each developer, and each organization, may have
//!   at most so many jobs between submission and their visible end (queued
//!   for a runtime slot or running);
//! - **work per window**: each developer, and each organization, may use
//!   at most so many work units in each window of `work_window_secs`
//!   (aligned to the clock). A job's work is charged when its end becomes
//!   visible, from what it is metered at ([`work_units`]).
//!
//! Over a limit a submission is answered 429 with `Retry-After` instead of
//! queueing without bound, so one tenant's runaway jobs cannot take every
//! runtime slot or the machine. The CPU itself is shared between running
//! jobs by `runtime::fair`.
//!
//! What a developer can observe of this is data-independent: the limits
//! are configuration; a job counts from its submission to its visible end,
//! which is quantized (invariant I14), never to the moment its queries
//! over raw data finish; and work is computed from the job's metering
//! (`crate::metering::metered`): its fuel (which depends on its code and on the
//! results released to it) and the catalog's published row counts of the
//! tables its queries read, or, for a job whose details are withheld, its
//! allowance. Measured time or CPU of work over raw data never enters it.

use crate::error::{ServiceError, ServiceResult};
use scenarios::party::Actor;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Jobs in flight a developer and an organization may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TenantLimits {
    /// Per developer.
    pub jobs_per_developer: u32,
    /// Per organization (all its developers together).
    pub jobs_per_organization: u32,
    /// Seconds a refused submission is told to wait (`Retry-After`) when
    /// it is over a limit on jobs in flight.
    pub retry_after_secs: u64,
    /// Work units per developer in each window.
    pub work_per_developer: u64,
    /// Work units per organization in each window.
    pub work_per_organization: u64,
    /// The window's length in seconds.
    pub work_window_secs: u64,
}

/// Fuel in one work unit.
pub const FUEL_PER_UNIT: u64 = 1_000_000;
/// Catalog rows metered in one work unit.
pub const ROWS_PER_UNIT: u64 = 10_000;
/// Compile milliseconds in one work unit.
pub const COMPILE_MS_PER_UNIT: u64 = 10;

/// The work units of what jobs were metered at: fuel, catalog rows read
/// and compile time, each rounded up.
pub fn work_units(m: &scenarios::fees::Metered) -> u64 {
    m.fuel
        .div_ceil(FUEL_PER_UNIT)
        .saturating_add(m.rows.div_ceil(ROWS_PER_UNIT))
        .saturating_add(m.compile_ms.div_ceil(COMPILE_MS_PER_UNIT))
}

impl Default for TenantLimits {
    /// A quarter and a half of the runtime's slots: one developer, or one
    /// organization, leaves room for the others.
    fn default() -> Self {
        let slots = u32::try_from(runtime::CONCURRENT_JOBS).unwrap_or(32);
        TenantLimits {
            jobs_per_developer: (slots / 4).max(1),
            jobs_per_organization: (slots / 2).max(1),
            retry_after_secs: 1,
            work_per_developer: 0,
            work_per_organization: 0,
            work_window_secs: 60,
        }
        .with_work_for(runtime::JobLimits::default().fuel)
    }
}

/// Jobs at the fuel limit one developer may run per window by default
/// (an organization twice as many).
pub const DEFAULT_FULL_JOBS_PER_WINDOW: u64 = 30;

impl TenantLimits {
    /// The default work budgets for jobs of `fuel` at most: 30 such jobs a
    /// window for a developer, 60 for an organization (60,000 and 120,000
    /// units at the default fuel limit), so no single job exceeds them.
    pub fn with_work_for(mut self, fuel: u64) -> Self {
        let job = fuel.div_ceil(FUEL_PER_UNIT).max(1);
        self.work_per_developer = job.saturating_mul(DEFAULT_FULL_JOBS_PER_WINDOW);
        self.work_per_organization = self.work_per_developer.saturating_mul(2);
        self
    }
}

/// Counts of jobs in flight, by developer and by organization, and the
/// developers with a compilation running.
#[derive(Debug, Default)]
pub struct Tenants {
    in_flight: Mutex<HashMap<String, u32>>,
    /// Work used, by developer and organization key: the window it was
    /// used in, and how much.
    work: Mutex<HashMap<String, (u64, u64)>>,
    compiling: Mutex<std::collections::HashSet<String>>,
}

/// A developer's one compilation; dropping it frees the developer to
/// compile another module.
#[derive(Debug)]
pub struct CompileTurn {
    tenants: Arc<Tenants>,
    developer: String,
}

impl Drop for CompileTurn {
    fn drop(&mut self) {
        let mut c = match self.tenants.compiling.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        c.remove(&self.developer);
    }
}

/// A job's place in its tenants' counts; dropping it gives it back.
#[derive(Debug)]
pub struct TenantSlot {
    tenants: Arc<Tenants>,
    keys: [String; 2],
}

fn developer_key(id: &str) -> String {
    format!("developer:{id}")
}

fn organization_key(org: &str) -> String {
    format!("organization:{org}")
}

impl Tenants {
    /// Takes a place for one job of `actor`, or refuses with 429 when the
    /// developer or its organization is at its limit. Changes nothing when
    /// it refuses.
    pub fn admit(self: &Arc<Self>, actor: &Actor, limits: &TenantLimits) -> ServiceResult<TenantSlot> {
        let keys = [developer_key(&actor.id), organization_key(&actor.org)];
        let mut counts = self
            .in_flight
            .lock()
            .map_err(|_| ServiceError::Internal("tenant counts poisoned".into()))?;
        let count = |k: &String| counts.get(k).copied().unwrap_or(0);
        let over = if count(&keys[0]) >= limits.jobs_per_developer {
            Some(format!(
                "you have {} jobs in flight, the most a developer may have; submit again when one has ended",
                limits.jobs_per_developer
            ))
        } else if count(&keys[1]) >= limits.jobs_per_organization {
            Some(format!(
                "your organization has {} jobs in flight, the most it may have; submit again when one has ended",
                limits.jobs_per_organization
            ))
        } else {
            None
        };
        if let Some(m) = over {
            return Err(ServiceError::RetryLater(m, limits.retry_after_secs));
        }
        let (window, left) = current_window(limits);
        let used = self.work_used(&keys, window);
        let over = if used[0] >= limits.work_per_developer {
            Some(format!(
                "you have used your {} work units of this {}-second window; submit again when the next begins",
                limits.work_per_developer, limits.work_window_secs
            ))
        } else if used[1] >= limits.work_per_organization {
            Some(format!(
                "your organization has used its {} work units of this {}-second window; submit again when the next begins",
                limits.work_per_organization, limits.work_window_secs
            ))
        } else {
            None
        };
        if let Some(m) = over {
            return Err(ServiceError::RetryLater(m, left));
        }
        for k in &keys {
            *counts.entry(k.clone()).or_insert(0) += 1;
        }
        Ok(TenantSlot {
            tenants: self.clone(),
            keys,
        })
    }

    /// Takes the developer's one compilation, or refuses with 429 while
    /// another of its modules compiles: the platform's compile threads are
    /// few, and one developer's stream of new modules must not keep them
    /// from everyone else's.
    pub fn compile_turn(
        self: &Arc<Self>,
        actor: &Actor,
        limits: &TenantLimits,
    ) -> ServiceResult<CompileTurn> {
        let mut c = self
            .compiling
            .lock()
            .map_err(|_| ServiceError::Internal("compile turns poisoned".into()))?;
        if !c.insert(actor.id.clone()) {
            return Err(ServiceError::RetryLater(
                "another of your modules is being compiled; submit again when it is done \
                 (a module already compiled is not compiled again)"
                    .into(),
                limits.retry_after_secs,
            ));
        }
        Ok(CompileTurn {
            tenants: self.clone(),
            developer: actor.id.clone(),
        })
    }

    fn work_used(&self, keys: &[String; 2], window: u64) -> [u64; 2] {
        let work = self.work.lock().unwrap_or_else(|p| p.into_inner());
        keys.each_ref().map(|k| match work.get(k) {
            Some((w, used)) if *w == window => *used,
            _ => 0,
        })
    }

    /// Charges `units` of work to `actor` and its organization in the
    /// current window.
    pub fn charge(&self, actor: &Actor, units: u64, limits: &TenantLimits) {
        let (window, _) = current_window(limits);
        let mut work = self.work.lock().unwrap_or_else(|p| p.into_inner());
        // Entries of past windows are dropped as they are met.
        work.retain(|_, (w, _)| *w == window);
        for k in [developer_key(&actor.id), organization_key(&actor.org)] {
            let e = work.entry(k).or_insert((window, 0));
            e.1 = e.1.saturating_add(units);
        }
    }

    /// Work used by `actor` and by its organization in the current window,
    /// and the seconds until the next window.
    pub fn work(&self, actor: &Actor, limits: &TenantLimits) -> ([u64; 2], u64) {
        let (window, left) = current_window(limits);
        let keys = [developer_key(&actor.id), organization_key(&actor.org)];
        (self.work_used(&keys, window), left)
    }

    /// Jobs in flight of `actor` and of its organization.
    pub fn in_flight(&self, actor: &Actor) -> (u32, u32) {
        let counts = match self.in_flight.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let get = |k: String| counts.get(&k).copied().unwrap_or(0);
        (get(developer_key(&actor.id)), get(organization_key(&actor.org)))
    }
}

/// The index of the current work window and the whole seconds until the
/// next one (at least 1).
fn current_window(limits: &TenantLimits) -> (u64, u64) {
    let w = limits.work_window_secs.max(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (now / w, (w - now % w).max(1))
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut counts = match self.tenants.in_flight.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        for k in &self.keys {
            if let Some(n) = counts.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scenarios::party::Role;

    fn dev(id: &str, org: &str) -> Actor {
        Actor {
            id: id.into(),
            role: Role::Developer,
            name: id.into(),
            org: org.into(),
            creators: Vec::new(),
        }
    }

    #[test]
    fn each_developer_and_organization_is_held_to_its_limit() {
        let t = Arc::new(Tenants::default());
        let limits = TenantLimits {
            jobs_per_developer: 2,
            jobs_per_organization: 3,
            retry_after_secs: 4,
            ..TenantLimits::default()
        };
        let (a, b, c) = (dev("a", "o1"), dev("b", "o1"), dev("c", "o2"));
        let a1 = t.admit(&a, &limits).unwrap();
        let _a2 = t.admit(&a, &limits).unwrap();
        match t.admit(&a, &limits) {
            Err(ServiceError::RetryLater(m, 4)) => assert!(m.contains("developer"), "{m}"),
            other => panic!("{other:?}"),
        }
        let _b1 = t.admit(&b, &limits).unwrap();
        match t.admit(&b, &limits) {
            Err(ServiceError::RetryLater(m, _)) => assert!(m.contains("organization"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Another organization is not affected.
        let _c1 = t.admit(&c, &limits).unwrap();
        assert_eq!(t.in_flight(&a), (2, 3));
        // A refusal changed nothing; an ended job gives its place back.
        drop(a1);
        assert_eq!(t.in_flight(&a), (1, 2));
        assert!(t.admit(&b, &limits).is_ok());
    }

    #[test]
    fn a_developer_compiles_one_module_at_a_time() {
        let t = Arc::new(Tenants::default());
        let limits = TenantLimits::default();
        let (a, b) = (dev("a", "o1"), dev("b", "o1"));
        let turn = t.compile_turn(&a, &limits).unwrap();
        assert!(matches!(
            t.compile_turn(&a, &limits),
            Err(ServiceError::RetryLater(..))
        ));
        assert!(
            t.compile_turn(&b, &limits).is_ok(),
            "another developer is not held back"
        );
        drop(turn);
        assert!(t.compile_turn(&a, &limits).is_ok());
    }

    #[test]
    fn work_over_the_window_budget_is_refused_until_the_next_window() {
        let t = Arc::new(Tenants::default());
        let limits = TenantLimits {
            work_per_developer: 100,
            work_per_organization: 150,
            work_window_secs: 3600,
            ..TenantLimits::default()
        };
        let (a, b, c) = (dev("a", "o1"), dev("b", "o1"), dev("c", "o2"));
        drop(t.admit(&a, &limits).unwrap());
        t.charge(&a, 100, &limits);
        match t.admit(&a, &limits) {
            Err(ServiceError::RetryLater(m, secs)) => {
                assert!(m.contains("work units"), "{m}");
                assert!((1..=3600).contains(&secs), "until the next window: {secs}");
            }
            other => panic!("{other:?}"),
        }
        // The organization has 50 left: b may go on, until it is used.
        drop(t.admit(&b, &limits).unwrap());
        t.charge(&b, 50, &limits);
        match t.admit(&b, &limits) {
            Err(ServiceError::RetryLater(m, _)) => assert!(m.contains("organization"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(
            t.admit(&c, &limits).is_ok(),
            "another organization is not held back"
        );
        assert_eq!(t.work(&a, &limits).0, [100, 150]);
        // A charge in a window that has passed does not count.
        t.work.lock().unwrap().values_mut().for_each(|(w, _)| *w -= 1);
        assert!(t.admit(&a, &limits).is_ok());
    }

    #[test]
    fn work_is_counted_from_metering_only() {
        let m = scenarios::fees::Metered {
            fuel: 2_000_001,
            rows: 10_000,
            compile_ms: 15,
            ..Default::default()
        };
        assert_eq!(work_units(&m), 3 + 1 + 2);
    }
}
