//! Per-tenant limits on jobs in flight (issue "Fair share", first part):
//! each developer, and each organization, may have at most so many jobs
//! between submission and their visible end. Over the limit a submission
//! is answered 429 with `Retry-After` instead of queueing without bound, so
//! one tenant's runaway jobs cannot take every runtime slot.
//!
//! What a developer can observe of this is data-independent: the limits
//! are configuration, and a job counts from its submission to its visible
//! end, which is quantized (invariant I14), never to the moment its
//! queries over raw data finish.

use crate::error::{ApiError, ApiResult};
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
    /// Seconds a refused submission is told to wait (`Retry-After`).
    pub retry_after_secs: u64,
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
        }
    }
}

/// Counts of jobs in flight, by developer and by organization, and the
/// developers with a compilation running.
#[derive(Debug, Default)]
pub struct Tenants {
    in_flight: Mutex<HashMap<String, u32>>,
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
    pub fn admit(self: &Arc<Self>, actor: &Actor, limits: &TenantLimits) -> ApiResult<TenantSlot> {
        let keys = [developer_key(&actor.id), organization_key(&actor.org)];
        let mut counts = self
            .in_flight
            .lock()
            .map_err(|_| ApiError::Internal("tenant counts poisoned".into()))?;
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
            return Err(ApiError::RetryLater(m, limits.retry_after_secs));
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
    pub fn compile_turn(self: &Arc<Self>, actor: &Actor, limits: &TenantLimits) -> ApiResult<CompileTurn> {
        let mut c = self
            .compiling
            .lock()
            .map_err(|_| ApiError::Internal("compile turns poisoned".into()))?;
        if !c.insert(actor.id.clone()) {
            return Err(ApiError::RetryLater(
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
        };
        let (a, b, c) = (dev("a", "o1"), dev("b", "o1"), dev("c", "o2"));
        let a1 = t.admit(&a, &limits).unwrap();
        let _a2 = t.admit(&a, &limits).unwrap();
        match t.admit(&a, &limits) {
            Err(ApiError::RetryLater(m, 4)) => assert!(m.contains("developer"), "{m}"),
            other => panic!("{other:?}"),
        }
        let _b1 = t.admit(&b, &limits).unwrap();
        match t.admit(&b, &limits) {
            Err(ApiError::RetryLater(m, _)) => assert!(m.contains("organization"), "{m}"),
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
            Err(ApiError::RetryLater(..))
        ));
        assert!(
            t.compile_turn(&b, &limits).is_ok(),
            "another developer is not held back"
        );
        drop(turn);
        assert!(t.compile_turn(&a, &limits).is_ok());
    }
}
