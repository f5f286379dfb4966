//! Fair sharing of the CPU between tenants (issue "Fair share"):
//! running guests are time-sliced, and the slices go to organizations in
//! turn, then to the developers within one, not to whoever came first.
//!
//! A job runs only while it holds a [`Lease`]; there are as many leases as
//! cores. On every epoch tick (`engine::arm_deadline`) a guest that has
//! held its lease for a [`SLICE`] and sees another job waiting gives it up
//! and queues again. A free lease goes to the waiting organization that
//! has held leases the least, then within it to the developer that has,
//! then to that developer's jobs in arrival order. Host calls keep the
//! lease, so the queries a job triggers are counted on its tenant's share.
//!
//! Held time is measured here, and it includes queries over raw data; it
//! only orders the queue. Nothing a developer sees is computed from it:
//! the time a job waits for a lease is taken off its deadline (a job's
//! outcome never depends on others' load or data), and its visible end is
//! quantized as before (invariant I14).
//!
//! Accounting follows virtual time: an organization (developer) that
//! becomes active again starts at the least held time among the active
//! ones, so idling builds up no credit and a newcomer has no debt.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest a guest runs before it gives its lease to a waiting job.
pub const SLICE: Duration = Duration::from_millis(10);

/// Whose job it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Tenant {
    /// The developer's organization.
    pub organization: String,
    /// The developer.
    pub developer: String,
}

/// Held time and activity of one organization or developer.
#[derive(Debug, Default)]
struct Account {
    /// Held time (virtual), nanoseconds.
    used: u128,
    /// Leases held now.
    holding: usize,
    /// Jobs waiting now.
    waiting: usize,
}

impl Account {
    fn active(&self) -> bool {
        self.holding + self.waiting > 0
    }
}

#[derive(Debug, Default)]
struct Queue {
    free: usize,
    /// Waiting tickets: organization → developer → arrival order.
    waiting: BTreeMap<String, BTreeMap<String, VecDeque<u64>>>,
    orgs: HashMap<String, Account>,
    /// By (organization, developer).
    devs: HashMap<(String, String), Account>,
    granted: HashSet<u64>,
    next_ticket: u64,
}

/// The least held time among the active accounts of `accounts` selected by
/// `keep`, or 0.
fn floor<K>(accounts: &HashMap<K, Account>, keep: impl Fn(&K) -> bool) -> u128 {
    accounts
        .iter()
        .filter(|(k, a)| a.active() && keep(k))
        .map(|(_, a)| a.used)
        .min()
        .unwrap_or(0)
}

impl Queue {
    /// Marks one more waiting job of `t`, bringing an inactive organization
    /// or developer up to the floor of the active ones.
    fn arrive(&mut self, t: &Tenant, ticket: u64) {
        let org_floor = floor(&self.orgs, |_| true);
        let org = self.orgs.entry(t.organization.clone()).or_default();
        if !org.active() {
            org.used = org.used.max(org_floor);
        }
        org.waiting += 1;
        let dev_floor = floor(&self.devs, |(o, _)| *o == t.organization);
        let dev = self
            .devs
            .entry((t.organization.clone(), t.developer.clone()))
            .or_default();
        if !dev.active() {
            dev.used = dev.used.max(dev_floor);
        }
        dev.waiting += 1;
        self.waiting
            .entry(t.organization.clone())
            .or_default()
            .entry(t.developer.clone())
            .or_default()
            .push_back(ticket);
    }

    /// Gives free leases to waiting jobs, fairly.
    fn dispatch(&mut self) {
        while self.free > 0 {
            let Some(org) = self
                .waiting
                .keys()
                .min_by_key(|o| self.orgs.get(*o).map_or(0, |a| a.used))
                .cloned()
            else {
                return;
            };
            let Some(devs) = self.waiting.get_mut(&org) else {
                return;
            };
            let Some(dev) = devs
                .keys()
                .min_by_key(|d| self.devs.get(&(org.clone(), (*d).clone())).map_or(0, |a| a.used))
                .cloned()
            else {
                self.waiting.remove(&org);
                continue;
            };
            let ticket = devs.get_mut(&dev).and_then(VecDeque::pop_front);
            if devs.get(&dev).is_some_and(VecDeque::is_empty) {
                devs.remove(&dev);
            }
            if devs.is_empty() {
                self.waiting.remove(&org);
            }
            let Some(ticket) = ticket else {
                continue;
            };
            for a in [
                self.orgs.get_mut(&org),
                self.devs.get_mut(&(org.clone(), dev.clone())),
            ]
            .into_iter()
            .flatten()
            {
                a.waiting = a.waiting.saturating_sub(1);
                a.holding += 1;
            }
            self.granted.insert(ticket);
            self.free -= 1;
        }
    }

    /// Takes back a lease of `t` held for `held`.
    fn release(&mut self, t: &Tenant, held: Duration) {
        self.free += 1;
        let key = (t.organization.clone(), t.developer.clone());
        for a in [self.orgs.get_mut(&t.organization), self.devs.get_mut(&key)]
            .into_iter()
            .flatten()
        {
            a.used = a.used.saturating_add(held.as_nanos());
            a.holding = a.holding.saturating_sub(1);
        }
        // Inactive accounts are forgotten: they come back at the floor.
        if self.devs.get(&key).is_some_and(|a| !a.active()) {
            self.devs.remove(&key);
        }
        if self.orgs.get(&t.organization).is_some_and(|a| !a.active()) {
            self.orgs.remove(&t.organization);
        }
    }

    fn anyone_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }
}

/// The CPU, shared fairly between tenants.
#[derive(Debug)]
pub struct FairCpu {
    queue: Mutex<Queue>,
    turn: Condvar,
}

impl FairCpu {
    /// `leases` jobs run at once (at least one).
    pub fn new(leases: usize) -> Arc<FairCpu> {
        Arc::new(FairCpu {
            queue: Mutex::new(Queue {
                free: leases.max(1),
                ..Queue::default()
            }),
            turn: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding it; a poisoned queue is consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a lease for a job of `tenant`.
    pub fn acquire(self: &Arc<Self>, tenant: &Tenant) -> Lease {
        self.wait_turn(tenant);
        Lease {
            cpu: self.clone(),
            tenant: tenant.clone(),
            since: Instant::now(),
        }
    }

    fn wait_turn(&self, tenant: &Tenant) {
        let mut q = self.lock();
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.arrive(tenant, ticket);
        q.dispatch();
        self.turn.notify_all();
        while !q.granted.remove(&ticket) {
            q = self.turn.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A job's right to run; dropping it gives the lease to the next job.
#[derive(Debug)]
pub struct Lease {
    cpu: Arc<FairCpu>,
    tenant: Tenant,
    since: Instant,
}

impl Lease {
    /// Gives the lease up and queues again when it has been held for a
    /// [`SLICE`] and another job waits. Returns how long it waited.
    pub fn yield_if_due(&mut self) -> Duration {
        let held = self.since.elapsed();
        if held < SLICE {
            return Duration::ZERO;
        }
        {
            let mut q = self.cpu.lock();
            if !q.anyone_waiting() {
                return Duration::ZERO;
            }
            q.release(&self.tenant, held);
            q.dispatch();
        }
        self.cpu.turn.notify_all();
        let asked = Instant::now();
        self.cpu.wait_turn(&self.tenant);
        self.since = Instant::now();
        asked.elapsed()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut q = self.cpu.lock();
        q.release(&self.tenant, self.since.elapsed());
        q.dispatch();
        drop(q);
        self.cpu.turn.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    fn t(org: &str, dev: &str) -> Tenant {
        Tenant {
            organization: org.into(),
            developer: dev.into(),
        }
    }

    /// Spins on `cpu` as `tenant` until `stop`, yielding like a guest, and
    /// counts the slices it ran.
    fn spinner(cpu: Arc<FairCpu>, tenant: Tenant, stop: Arc<AtomicBool>, slices: Arc<AtomicU64>) {
        let mut lease = cpu.acquire(&tenant);
        while !stop.load(Ordering::SeqCst) {
            let start = Instant::now();
            while start.elapsed() < SLICE {
                std::hint::spin_loop();
            }
            slices.fetch_add(1, Ordering::SeqCst);
            lease.yield_if_due();
        }
    }

    #[test]
    fn organizations_share_alike_however_many_jobs_each_runs() {
        let cpu = FairCpu::new(1);
        let stop = Arc::new(AtomicBool::new(false));
        let (many, one) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut threads = Vec::new();
        for i in 0..6 {
            let (cpu, stop, n) = (cpu.clone(), stop.clone(), many.clone());
            threads.push(std::thread::spawn(move || {
                spinner(cpu, t("loud", &format!("d{}", i % 2)), stop, n)
            }));
        }
        {
            let (cpu, stop, n) = (cpu.clone(), stop.clone(), one.clone());
            threads.push(std::thread::spawn(move || spinner(cpu, t("quiet", "q"), stop, n)));
        }
        std::thread::sleep(Duration::from_millis(600));
        stop.store(true, Ordering::SeqCst);
        for th in threads {
            th.join().unwrap();
        }
        let (m, o) = (many.load(Ordering::SeqCst), one.load(Ordering::SeqCst));
        // One job of the quiet organization gets about as many slices as
        // the six of the loud one together.
        assert!(o * 3 >= m && m * 3 >= o, "loud {m} slices, quiet {o}");
    }

    #[test]
    fn a_lone_job_never_waits_and_a_freed_lease_goes_to_the_waiting() {
        let cpu = FairCpu::new(1);
        let mut lease = cpu.acquire(&t("o", "d"));
        std::thread::sleep(SLICE * 2);
        assert_eq!(lease.yield_if_due(), Duration::ZERO, "nobody waits");
        let got = Arc::new(AtomicBool::new(false));
        let (c, g) = (cpu.clone(), got.clone());
        let waiter = std::thread::spawn(move || {
            let _l = c.acquire(&t("p", "e"));
            g.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!got.load(Ordering::SeqCst), "one lease, held");
        drop(lease);
        waiter.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
        let q = cpu.lock();
        assert_eq!(q.free, 1);
        assert!(
            q.orgs.is_empty() && q.devs.is_empty(),
            "inactive accounts are forgotten"
        );
    }
}
