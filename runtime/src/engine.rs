//! The wasmtime embedding: one [`Runtime`] (one `Engine`) per process, one
//! `Store` per job. Modules are checked for their shape and against the host
//! ABI before they are compiled (`shape`), compiled once with a deadline
//! and cached by content hash in a cache bounded in bytes.

use crate::error::JobError;
use crate::host::{self, HostState, HostStop, ABI_MODULE};
use crate::limits::{JobLimits, MAX_MEMORY_BYTES, MAX_MODULE_BYTES, MAX_TABLE_ELEMENTS};
use crate::udf::UdfFactory;
use sandbox::{JobScope, QueryLineage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};

/// Wall-clock length of one epoch tick.
const TICK: Duration = Duration::from_millis(5);
/// Compiled modules kept in memory, at most.
const CACHE_ENTRIES: usize = 64;
/// Bytes the cache of compiled modules may hold (compiled image plus the
/// module's bytes), at most.
pub const CACHE_BYTES: usize = 256 << 20;
/// Longest a compilation may take (a job's time limit lowers it).
pub const MAX_COMPILE: Duration = Duration::from_secs(20);
/// Compilations at once, each on one thread; more wait for one to finish
/// (counted against their deadline).
const COMPILE_SLOTS: usize = 2;
/// Jobs running at once; more wait for a slot.
pub const CONCURRENT_JOBS: usize = 32;
/// Instances one job may hold: itself, its row-function instance and one
/// driver per row function.
const INSTANCES_PER_JOB: usize = 2 + sandbox::udf::MAX_ROW_FUNCTIONS;

/// Facts about an accepted module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// SHA-256 of the module bytes, hex: the job's code identity.
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
    /// Milliseconds spent compiling it for this request (0 when it was
    /// already compiled).
    pub compile_ms: u64,
}

/// Resources a job used, recorded in its lineage and metered for fees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Fuel consumed.
    pub fuel: u64,
    /// Wall time in milliseconds, rounded up to whole seconds (always a
    /// multiple of 1000, at least 1000 once the job was started): a job's
    /// running time includes its queries', which depends on the data, so
    /// only this coarse granularity is reported (invariant I14).
    pub wall_ms: u64,
    /// Largest linear memory size reached, in bytes.
    pub peak_memory_bytes: u64,
    /// Host calls made.
    pub host_calls: u32,
    /// Queries released to the job.
    pub queries: u32,
    /// Milliseconds spent compiling the module for this job, at submission
    /// and, when it had left the cache, before the run. Counted against the
    /// job's time limit and charged (`compile_seconds`).
    #[serde(default)]
    pub compile_ms: u64,
}

/// Everything a run produced, whether it succeeded or not.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// The emitted bytes, or why the job stopped.
    pub result: Result<Vec<u8>, JobError>,
    /// Resources used.
    pub usage: Usage,
    /// Log messages.
    pub logs: Vec<String>,
    /// Lineage of every result the job received (each already charged).
    pub releases: Vec<QueryLineage>,
    /// When the run itself ended (before any hold of its slot).
    pub ended: Instant,
}

impl JobOutcome {
    /// A run that stopped with `e` before its guest ran, having used `usage`.
    fn stopped(e: JobError, usage: Usage) -> JobOutcome {
        JobOutcome {
            result: Err(e),
            usage,
            logs: Vec::new(),
            releases: Vec::new(),
            ended: Instant::now(),
        }
    }
}

/// Keep a job's slot after its run until `started + k·quantum`, for the
/// smallest `k ≥ 1` not before the run's end. A job waiting for a slot
/// starts when one is freed; without the hold its start would tell the end
/// of the job before it to the instant, and quantizing that job's visible
/// end would be for nothing (invariant I14).
#[derive(Debug, Clone, Copy)]
pub struct SlotHold {
    /// When the job counts as started.
    pub started: Instant,
    /// The quantum of visible ends.
    pub quantum: Duration,
}

impl SlotHold {
    /// The first whole quantum after `started` that is not before `end`.
    pub fn until(&self, end: Instant) -> Instant {
        let q = self.quantum.as_nanos().max(1);
        let ran = end.saturating_duration_since(self.started).as_nanos();
        let k = (ran.div_ceil(q)).max(1);
        let wait = u64::try_from(k.saturating_mul(q)).unwrap_or(u64::MAX);
        self.started + Duration::from_nanos(wait)
    }
}

/// What a run needs besides the module.
pub struct JobInput {
    /// The data door; `None` for a run without data access.
    pub scope: Option<Arc<JobScope>>,
    /// Parameters readable with `params_read`.
    pub params: Vec<u8>,
    /// Limits.
    pub limits: JobLimits,
    /// Tokio runtime that executes queries.
    pub handle: tokio::runtime::Handle,
    /// Set to stop the job at its next tick or host call.
    pub cancel: Arc<AtomicBool>,
    /// The module's SHA-256 (hex) when the caller already knows it: a
    /// cached module then starts without hashing the bytes again.
    pub module_hash: Option<String>,
    /// Hold the slot after the run (see [`SlotHold`]); `None` frees it at
    /// once.
    pub hold_slot: Option<SlotHold>,
    /// Milliseconds already spent compiling the module for this job (at
    /// submission): they count against `limits.timeout_ms`.
    pub compile_ms: u64,
    /// Whose job it is: the CPU is shared fairly between tenants
    /// ([`crate::fair`]).
    pub tenant: crate::fair::Tenant,
}

/// The WASM runtime.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    udf_factory: Arc<UdfFactory>,
    /// Compiled and pre-linked modules by SHA-256.
    cache: Mutex<Cache>,
    slots: Slots,
    /// Who runs now: as many leases as cores, shared fairly.
    cpu: Arc<crate::fair::FairCpu>,
    compile_slots: Arc<Slots>,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::SeqCst);
    }
}

fn internal(e: impl std::fmt::Display) -> JobError {
    JobError::Internal(e.to_string())
}

impl Runtime {
    /// Builds the engine: fuel metering and epoch interruption on, no
    /// threads or shared memory, a bounded native stack for guests, and a
    /// pooling allocator sized for [`CONCURRENT_JOBS`] jobs (instance
    /// memory is reserved once and reused copy-on-write, which makes a
    /// cached instantiation take microseconds).
    pub fn new() -> Result<Runtime, JobError> {
        let mut pool = PoolingAllocationConfig::new();
        let slots = u32::try_from(CONCURRENT_JOBS * INSTANCES_PER_JOB).unwrap_or(u32::MAX);
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(MAX_TABLE_ELEMENTS)
            .max_memory_size(MAX_MEMORY_BYTES);
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(512 << 10);
        // Each compilation runs on its own compile thread only (the
        // `parallel-compilation` feature is off): with it, every
        // compilation shares one thread pool, and one given up at its
        // deadline (it cannot be interrupted) keeps every later one waiting
        // behind its functions.
        // Threads and shared memory are not compiled in (no `threads` feature).
        // A module's initial memory image is built at compile time and kept
        // with the compiled module: with wasmtime's default it may span
        // 16 MiB of zeros for two one-byte data segments far apart (a
        // 69-byte module took 15.7 MB of the cache, review of issue 19).
        // Beyond 1 MiB an image is built only when at least half of it is
        // data; sparser memories are initialized segment by segment.
        config.memory_guaranteed_dense_image_size(1 << 20);
        config.wasm_memory64(false);
        config.wasm_multi_memory(false);
        let engine = Engine::new(&config).map_err(internal)?;
        let mut linker = Linker::new(&engine);
        host::link(&mut linker).map_err(internal)?;
        let udf_factory = Arc::new(UdfFactory::new(&engine).map_err(internal)?);
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("invis-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(TICK);
                    e.increment_epoch();
                }
            })
            .map_err(internal)?;
        Ok(Runtime {
            engine,
            linker,
            udf_factory,
            cache: Mutex::new(Cache::default()),
            slots: Slots::new(CONCURRENT_JOBS),
            cpu: crate::fair::FairCpu::new(
                std::env::var("INVIS_CPU_LEASES")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            ),
            compile_slots: Arc::new(Slots::new(COMPILE_SLOTS)),
            ticker_stop,
        })
    }

    /// Checks a module's shape and interface and compiles it (cached),
    /// within [`MAX_COMPILE`].
    pub fn load(&self, bytes: &[u8]) -> Result<(ModuleInfo, Module), JobError> {
        self.load_within(bytes, MAX_COMPILE)
    }

    /// Like [`Runtime::load`], with a compilation deadline of `limit`
    /// (at most [`MAX_COMPILE`]): a job's time limit.
    pub fn load_within(&self, bytes: &[u8], limit: Duration) -> Result<(ModuleInfo, Module), JobError> {
        self.load_metered(bytes, limit).0
    }

    /// Like [`Runtime::load_within`], also returning the milliseconds
    /// spent compiling for this request whether the module was accepted or
    /// not (refused after compiling, or given up at the deadline): what a
    /// submission is charged even when it fails (review of issue 18: a
    /// module that compiled for seconds and was then refused cost its
    /// developer nothing). Waiting for a compile slot is not counted.
    pub fn load_metered(
        &self,
        bytes: &[u8],
        limit: Duration,
    ) -> (Result<(ModuleInfo, Module), JobError>, u64) {
        let mut spent = Duration::ZERO;
        let r = self
            .prepare_spent(bytes, limit, &mut spent)
            .map(|(info, p)| (info, p.pre.module().clone()));
        let ms = if spent.is_zero() { 0 } else { millis_up(spent) };
        (r, ms)
    }

    fn cached(&self, hash: &str) -> Option<Prepared> {
        self.cache.lock().ok().and_then(|mut c| c.get(hash))
    }

    /// Like [`Runtime::load_within`], returning the module linked against
    /// the host ABI and ready to instantiate.
    fn prepare(&self, bytes: &[u8], limit: Duration) -> Result<(ModuleInfo, Prepared), JobError> {
        let mut spent = Duration::ZERO;
        self.prepare_spent(bytes, limit, &mut spent)
    }

    /// Like [`Runtime::prepare`], setting `spent` to the time spent
    /// compiling (zero when nothing was compiled).
    fn prepare_spent(
        &self,
        bytes: &[u8],
        limit: Duration,
        spent: &mut Duration,
    ) -> Result<(ModuleInfo, Prepared), JobError> {
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(JobError::InvalidModule(format!(
                "the module is larger than {MAX_MODULE_BYTES} bytes"
            )));
        }
        if bytes.get(..4) != Some(b"\0asm") {
            return Err(JobError::InvalidModule(
                "not a WebAssembly binary (missing the \\0asm header)".into(),
            ));
        }
        let hash = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        let mut info = ModuleInfo {
            hash: hash.clone(),
            size: bytes.len() as u64,
            compile_ms: 0,
        };
        if let Some(p) = self.cached(&hash) {
            return Ok((info, p));
        }
        crate::shape::check(bytes, &crate::shape::SHAPE_LIMITS)?;
        let bytes: Arc<[u8]> = Arc::from(bytes);
        let (module, took) = self.compile(bytes.clone(), limit.min(MAX_COMPILE), spent)?;
        info.compile_ms = millis_up(took);
        check_interface(&module)?;
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            JobError::InvalidModule(format!(
                "the module does not link: {}",
                first_line(&e.to_string())
            ))
        })?;
        let p = Prepared { pre, bytes };
        if let Ok(mut c) = self.cache.lock() {
            c.insert(hash, p.clone());
        }
        Ok((info, p))
    }

    /// Compiles on a thread of its own, one of at most [`COMPILE_SLOTS`],
    /// and gives up at `limit` (waiting for a slot included). Cranelift
    /// cannot be interrupted: a compilation given up on finishes in the
    /// background, still holding its slot, and its result is dropped; the
    /// shape limits keep that bounded. Returns the time compiling took
    /// once a slot was free: waiting for another party's compilation counts
    /// against the deadline, but is neither this module's `compile_ms` nor
    /// charged to its job.
    /// `spent` is set to the time compiling took, or, given up, had taken
    /// so far.
    fn compile(
        &self,
        bytes: Arc<[u8]>,
        limit: Duration,
        spent: &mut Duration,
    ) -> Result<(Module, Duration), JobError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let given_up = Arc::new(AtomicBool::new(false));
        let began: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let (engine, slots, gave_up, begin) = (
            self.engine.clone(),
            self.compile_slots.clone(),
            given_up.clone(),
            began.clone(),
        );
        std::thread::Builder::new()
            .name("invis-compile".into())
            .spawn(move || {
                let _slot = slots.acquire();
                if gave_up.load(Ordering::SeqCst) {
                    return;
                }
                let started = Instant::now();
                if let Ok(mut b) = begin.lock() {
                    *b = Some(started);
                }
                let m = Module::from_binary(&engine, &bytes);
                let _ = tx.send((m, started.elapsed()));
            })
            .map_err(internal)?;
        match rx.recv_timeout(limit) {
            Ok((Ok(m), took)) => {
                *spent = took;
                Ok((m, took))
            }
            Ok((Err(e), took)) => {
                *spent = took;
                Err(JobError::InvalidModule(format!(
                    "the module does not validate: {}",
                    first_line(&e.to_string())
                )))
            }
            Err(_) => {
                given_up.store(true, Ordering::SeqCst);
                *spent = began
                    .lock()
                    .ok()
                    .and_then(|b| b.map(|b| b.elapsed()))
                    .unwrap_or_default();
                Err(JobError::LimitExceeded(format!(
                    "compiling the module took longer than {} ms, the compilation limit",
                    limit.as_millis()
                )))
            }
        }
    }

    /// Instantiates a cached module in a fresh store with default limits
    /// and drops it, without running anything: the per-job set-up cost,
    /// for benchmarks and health checks.
    pub fn instantiate_only(&self, hash: &str) -> Result<(), JobError> {
        let p = self
            .cached(hash)
            .ok_or_else(|| JobError::InvalidModule(format!("module {hash} is not loaded")))?;
        let limits = JobLimits::default();
        let input = JobInput {
            scope: None,
            params: Vec::new(),
            limits,
            handle: tokio::runtime::Handle::try_current().map_err(internal)?,
            cancel: Arc::new(AtomicBool::new(false)),
            module_hash: None,
            hold_slot: None,
            compile_ms: 0,
            tenant: Default::default(),
        };
        let state = HostState::new(
            input,
            Duration::from_millis(limits.timeout_ms),
            &p,
            self.udf_factory.clone(),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_fuel(limits.fuel).map_err(internal)?;
        p.pre.instantiate(&mut store).map_err(|e| classify(&store, e))?;
        Ok(())
    }

    /// Export `name` of a module as a row function outside any job (for
    /// benchmarks): the same checks, second instance and driver as
    /// `udf_register`.
    pub fn row_function(
        &self,
        bytes: &[u8],
        name: &str,
        bounds: (f64, f64),
    ) -> Result<Arc<dyn sandbox::udf::RowFunction>, JobError> {
        let f = self
            .udf_host(bytes)?
            .add(name, bounds)
            .map_err(JobError::InvalidModule)?;
        Ok(Arc::new(f))
    }

    /// A row-function instance of a module outside any job, with an hour's
    /// deadline and no cancel flag.
    pub(crate) fn udf_host(&self, bytes: &[u8]) -> Result<Arc<crate::udf::UdfHost>, JobError> {
        let (_, p) = self.prepare(bytes, MAX_COMPILE)?;
        Ok(Arc::new(crate::udf::UdfHost::new(
            self.udf_factory.clone(),
            &p,
            MAX_MEMORY_BYTES,
            Instant::now() + Duration::from_secs(3600),
            Arc::new(AtomicBool::new(false)),
        )?))
    }

    /// Whether the module of SHA-256 `hash` (hex) is compiled and cached.
    pub fn is_compiled(&self, hash: &str) -> bool {
        self.cache.lock().is_ok_and(|c| c.entries.contains_key(hash))
    }

    /// Compiled modules currently cached.
    pub fn cached_modules(&self) -> usize {
        self.cache.lock().map(|c| c.entries.len()).unwrap_or(0)
    }

    /// Bytes the cached modules hold (compiled images and module bytes).
    pub fn cached_bytes(&self) -> usize {
        self.cache.lock().map(|c| c.bytes).unwrap_or(0)
    }

    /// Runs a job to completion on the current thread (call it from a
    /// blocking context: queries block on `input.handle`).
    pub fn run(&self, bytes: &[u8], input: JobInput) -> JobOutcome {
        let _slot = self.slots.acquire_for(&input.tenant.organization);
        let hold = input.hold_slot;
        // On a thread of its own at a lower scheduling priority: a guest
        // that computes (or loops) yields the core to the platform's own
        // work (HTTP, the store, the ledger, queries) instead of taking
        // its OS share of it; guests share among themselves by lease.
        let outcome = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("invis-guest".into())
                .stack_size(GUEST_THREAD_STACK)
                .spawn_scoped(s, || {
                    lower_priority();
                    self.run_in_slot(bytes, input)
                })
                .map_err(|e| internal(format!("starting the guest thread: {e}")))
                .and_then(|h| h.join().map_err(|_| internal("the guest thread panicked")))
        })
        .unwrap_or_else(|e| JobOutcome::stopped(e, Usage::default()));
        if let Some(h) = hold {
            let until = h.until(outcome.ended);
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        outcome
    }

    fn run_in_slot(&self, bytes: &[u8], input: JobInput) -> JobOutcome {
        let started = Instant::now();
        let mut usage = Usage {
            compile_ms: input.compile_ms,
            ..Usage::default()
        };
        let limits = input.limits;
        let budget = Duration::from_millis(limits.timeout_ms.saturating_sub(input.compile_ms));
        let known = input.module_hash.as_deref().and_then(|h| self.cached(h));
        let prepared = match known.map(Ok).unwrap_or_else(|| {
            self.prepare(bytes, budget).map(|(info, p)| {
                usage.compile_ms = usage.compile_ms.saturating_add(info.compile_ms);
                p
            })
        }) {
            Ok(p) => p,
            Err(e) => return JobOutcome::stopped(e, usage),
        };
        if let Err(e) = host::check_params(&input.params) {
            return JobOutcome::stopped(e, usage);
        }
        // The guest runs only while it holds a share of the CPU; waiting
        // for one is not its running time.
        let lease = self.cpu.acquire(&input.tenant);
        // The guest's own running time starts now, counted in its thread's
        // CPU time outside host calls; what compiling the module took, at
        // submission and here, is taken off its limit. The wall-clock
        // backstop moves later by host calls and waits for the CPU
        // (`host::timed`, `HostState::tick`).
        let budget = Duration::from_millis(limits.timeout_ms.saturating_sub(usage.compile_ms));
        let mut state = HostState::new(input, budget, &prepared, self.udf_factory.clone());
        state.lease = Some(lease);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let result = (|| -> Result<(), JobError> {
            store.set_fuel(limits.fuel).map_err(internal)?;
            arm_deadline(&mut store);
            let instance = prepared
                .pre
                .instantiate(&mut store)
                .map_err(|e| classify(&store, e))?;
            let run = instance
                .get_typed_func::<(), i32>(&mut store, "run")
                .map_err(|e| JobError::InvalidModule(format!("export `run` must be () -> i32: {e}")))?;
            let status = run.call(&mut store, ()).map_err(|e| classify(&store, e))?;
            if status != 0 {
                return Err(JobError::GuestFailed(status));
            }
            Ok(())
        })();
        usage.fuel = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        usage.wall_ms = coarse_wall_ms(started.elapsed());
        let mut st = store.into_data();
        // Freed before any hold of the job slot.
        st.lease = None;
        usage.peak_memory_bytes = st.limiter.peak_memory as u64;
        usage.host_calls = st.host_calls;
        usage.queries = st.releases.len() as u32;
        JobOutcome {
            result: result.map(|()| st.output),
            usage,
            logs: st.logs,
            releases: st.releases,
            ended: Instant::now(),
        }
    }
}

/// Native stack of a guest thread: room for the guest's bounded stack
/// (`max_wasm_stack`) and the host calls beneath it.
const GUEST_THREAD_STACK: usize = 4 << 20;

/// The nice value of guest threads (Linux: per thread).
const GUEST_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`GUEST_NICE`]
/// (Linux only; elsewhere, and if refused, it runs at the usual one).
fn lower_priority() {
    // On Linux the nice value is the thread's: `PRIO_PROCESS` with a
    // thread id changes that thread alone. A refusal is harmless.
    #[cfg(target_os = "linux")]
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), GUEST_NICE);
}

/// Store data that carries its own deadline: the epoch callback reads it
/// on every tick instead of a value captured when the store was armed, so
/// the host can move it (later by the time spent in host calls for a job,
/// to each query's limit for row functions).
pub(crate) trait Deadline: 'static {
    /// When the guest must stop.
    fn deadline(&self) -> Instant;
    /// Whether the job was stopped (objection, halt, stop).
    fn cancelled(&self) -> bool;
    /// Records why the guest is being interrupted.
    fn interrupted(&mut self, why: JobError);
    /// Called first on every tick: a job gives its share of the CPU to
    /// others here ([`crate::fair`]).
    fn tick(&mut self) {}
    /// Why the guest must stop now for time, if it must.
    fn overdue(&self) -> Option<JobError> {
        (Instant::now() >= self.deadline()).then_some(JobError::DeadlineExceeded)
    }
}

/// How many times its time limit a guest may take in wall-clock time while
/// it holds the CPU before it is stopped as starved (an `Internal` error,
/// never `DeadlineExceeded`): guests run below the platform's priority, so
/// under heavy platform load their CPU time advances slower than the clock.
const BACKSTOP_FACTOR: u32 = 20;

/// The wall-clock backstop for a guest limited to `budget` of CPU time.
pub(crate) fn backstop(budget: Duration) -> Duration {
    budget
        .saturating_mul(BACKSTOP_FACTOR)
        .max(Duration::from_secs(10))
}

/// CPU time of the calling thread (Linux); elsewhere, the time since the
/// process first asked, which makes the limit a wall-clock one.
pub(crate) fn thread_cpu() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }
}

/// Interrupts a store's guest at the first epoch tick after the deadline
/// in its data or after its cancel flag is set, recording why.
pub(crate) fn arm_deadline<T: Deadline>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let st = ctx.data_mut();
        st.tick();
        if st.cancelled() {
            st.interrupted(JobError::Cancelled("the job was stopped".into()));
            return Ok(UpdateDeadline::Interrupt);
        }
        if let Some(why) = st.overdue() {
            st.interrupted(why);
            return Ok(UpdateDeadline::Interrupt);
        }
        Ok(UpdateDeadline::Continue(1))
    });
}

/// Granularity of the reported wall time.
const WALL_GRANULARITY_MS: u64 = 1000;

/// `elapsed` in milliseconds rounded up to a whole number of
/// [`WALL_GRANULARITY_MS`]: any run that started reports at least one unit.
pub(crate) fn coarse_wall_ms(elapsed: Duration) -> u64 {
    let unit = u128::from(WALL_GRANULARITY_MS) * 1_000_000;
    let units = elapsed.as_nanos().div_ceil(unit);
    u64::try_from(units)
        .unwrap_or(u64::MAX / WALL_GRANULARITY_MS)
        .saturating_mul(WALL_GRANULARITY_MS)
}

/// A compiled module linked against the host ABI, with its bytes (which
/// row functions analyse).
#[derive(Clone)]
pub(crate) struct Prepared {
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) bytes: Arc<[u8]>,
}

/// Job slots an organization may hold at once: a quarter, so it takes
/// four organizations (not two) to fill the runtime, and an organization's
/// jobs beyond its share wait for one of its own to end.
pub const SLOTS_PER_ORGANIZATION: usize = CONCURRENT_JOBS / 4;

/// Job slots: a counting semaphore, with at most
/// [`SLOTS_PER_ORGANIZATION`] held by one organization (jobs without an
/// organization, such as local runs and benchmarks, are not capped).
struct Slots {
    state: Mutex<SlotCounts>,
    freed: std::sync::Condvar,
}

#[derive(Default)]
struct SlotCounts {
    free: usize,
    by_org: HashMap<String, usize>,
}

struct Slot<'a> {
    slots: &'a Slots,
    org: String,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            state: Mutex::new(SlotCounts {
                free: n,
                by_org: HashMap::new(),
            }),
            freed: std::sync::Condvar::new(),
        }
    }

    fn acquire(&self) -> Slot<'_> {
        self.acquire_for("")
    }

    fn acquire_for(&self, org: &str) -> Slot<'_> {
        let capped = !org.is_empty();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.free == 0 || (capped && st.by_org.get(org).copied().unwrap_or(0) >= SLOTS_PER_ORGANIZATION) {
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.free -= 1;
        if capped {
            *st.by_org.entry(org.to_string()).or_insert(0) += 1;
        }
        Slot {
            slots: self,
            org: org.to_string(),
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut st = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
        st.free += 1;
        if let Some(n) = st.by_org.get_mut(&self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.by_org.remove(&self.org);
            }
        }
        drop(st);
        // A waiter of any organization may be the one that can go now.
        self.slots.freed.notify_all();
    }
}

/// Compiled modules by hash, least recently used evicted first once
/// [`CACHE_ENTRIES`] or [`CACHE_BYTES`] would be exceeded.
struct Cache {
    entries: HashMap<String, Cached>,
    bytes: usize,
    clock: u64,
    limit: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            entries: HashMap::new(),
            bytes: 0,
            clock: 0,
            limit: CACHE_BYTES,
        }
    }
}

struct Cached {
    prepared: Prepared,
    cost: usize,
    used: u64,
}

impl Cache {
    fn get(&mut self, hash: &str) -> Option<Prepared> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(hash).map(|c| {
            c.used = now;
            c.prepared.clone()
        })
    }

    /// What a module costs to keep: its compiled image (code and
    /// metadata) and its bytes.
    fn cost(p: &Prepared) -> usize {
        let image = p.pre.module().image_range();
        (image.end as usize)
            .saturating_sub(image.start as usize)
            .saturating_add(p.bytes.len())
    }

    fn insert(&mut self, hash: String, prepared: Prepared) {
        let cost = Self::cost(&prepared);
        if cost > self.limit || self.entries.contains_key(&hash) {
            return;
        }
        while !self.entries.is_empty()
            && (self.entries.len() >= CACHE_ENTRIES || self.bytes.saturating_add(cost) > self.limit)
        {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(h, _)| h.clone());
            match oldest.and_then(|h| self.entries.remove(&h)) {
                Some(gone) => self.bytes = self.bytes.saturating_sub(gone.cost),
                None => break,
            }
        }
        self.clock += 1;
        self.bytes = self.bytes.saturating_add(cost);
        self.entries.insert(
            hash,
            Cached {
                prepared,
                cost,
                used: self.clock,
            },
        );
    }
}

/// Whole milliseconds, rounded up.
fn millis_up(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

/// Maps a wasmtime error to why the job stopped.
fn classify(store: &Store<HostState>, e: wasmtime::Error) -> JobError {
    if let Some(stop) = &store.data().stop {
        return stop.clone();
    }
    if let Some(HostStop(j)) = e.downcast_ref::<HostStop>() {
        return j.clone();
    }
    if store.data().limiter.hit {
        return JobError::MemoryLimit;
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => JobError::OutOfFuel,
        Some(Trap::Interrupt) => JobError::DeadlineExceeded,
        Some(Trap::StackOverflow) => JobError::GuestTrap("stack overflow".into()),
        Some(t) => JobError::GuestTrap(t.to_string()),
        None => JobError::GuestTrap(first_line(&e.to_string())),
    }
}

/// Checks imports and exports against ABI v1.
fn check_interface(module: &Module) -> Result<(), JobError> {
    for imp in module.imports() {
        let (m, n) = (imp.module(), imp.name());
        match imp.ty() {
            ExternType::Func(ty) if m == ABI_MODULE => {
                if !host::import_matches(n, &ty) {
                    return Err(JobError::InvalidModule(format!(
                        "import `{m}.{n}` is not a function of the host ABI (or has the wrong type)"
                    )));
                }
            }
            _ => {
                return Err(JobError::InvalidModule(format!(
                    "import `{}.{}` is not part of the host ABI `{ABI_MODULE}`; jobs have no filesystem, network, clock or other imports",
                    m.escape_debug(),
                    n.escape_debug()
                )))
            }
        }
    }
    let mut has_run = false;
    let mut has_memory = false;
    for exp in module.exports() {
        match (exp.name(), exp.ty()) {
            ("run", ExternType::Func(ty)) => {
                let ok = ty.params().len() == 0
                    && ty.results().len() == 1
                    && ty
                        .results()
                        .all(|r| wasmtime::ValType::eq(&r, &wasmtime::ValType::I32));
                if !ok {
                    return Err(JobError::InvalidModule(
                        "export `run` must have type () -> i32".into(),
                    ));
                }
                has_run = true;
            }
            ("memory", ExternType::Memory(_)) => has_memory = true,
            _ => {}
        }
    }
    if !has_run {
        return Err(JobError::InvalidModule("the module does not export `run`".into()));
    }
    if !has_memory {
        return Err(JobError::InvalidModule(
            "the module does not export its `memory`".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(rt: &Runtime, i: usize) -> (String, Prepared) {
        let bytes = wat::parse_str(format!(
            r#"(module (memory (export "memory") 1) (func (export "run") (result i32) (i32.const {i})))"#
        ))
        .unwrap_or_default();
        let (info, p) = rt.prepare(&bytes, MAX_COMPILE).unwrap_or_else(|e| panic!("{e}"));
        (info.hash, p)
    }

    /// Review of issue 19: `compile_ms` is the module's own compilation,
    /// charged to its job; time spent waiting for another party's
    /// compilation to free a slot is not (it counts against the deadline
    /// only), so neither fees nor the figure depend on others' modules.
    #[test]
    fn waiting_for_a_compile_slot_is_not_compile_time() {
        let rt = Runtime::new().unwrap();
        let bytes = wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "run") (result i32) i32.const 0))"#,
        )
        .unwrap();
        let slots = rt.compile_slots.clone();
        let (held, release) = std::sync::mpsc::channel::<()>();
        let (ready, go) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _a = slots.acquire();
            let _b = slots.acquire();
            let _ = ready.send(());
            let _ = release.recv_timeout(Duration::from_millis(600));
        });
        go.recv().unwrap();
        let (info, _) = rt.load(&bytes).unwrap();
        drop(held);
        holder.join().unwrap();
        assert!(info.compile_ms < 300, "{} ms", info.compile_ms);
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_to_stay_within_its_bytes() {
        let rt = Runtime::new().unwrap_or_else(|e| panic!("{e}"));
        let (h0, p0) = prepared(&rt, 0);
        let one = Cache::cost(&p0);
        assert!(one > 0);
        let mut cache = Cache {
            limit: 3 * one + one / 2,
            ..Cache::default()
        };
        cache.insert(h0.clone(), p0);
        let mut hashes = Vec::new();
        for i in 1..6 {
            let (h, p) = prepared(&rt, i);
            cache.insert(h.clone(), p);
            hashes.push(h);
            // Touch the first module: it is the most recently used.
            assert!(cache.get(&h0).is_some(), "the recently used module stays ({i})");
            assert!(cache.bytes <= cache.limit, "{} > {}", cache.bytes, cache.limit);
        }
        assert_eq!(cache.entries.len(), 3);
        assert!(
            cache.get(&hashes[0]).is_none(),
            "the least recently used went first"
        );
        assert!(cache.get(&hashes[4]).is_some());
        // A module larger than the whole cache is not kept.
        let mut tiny = Cache {
            limit: one / 2,
            ..Cache::default()
        };
        let (h, p) = prepared(&rt, 9);
        tiny.insert(h.clone(), p);
        assert!(tiny.get(&h).is_none() && tiny.bytes == 0);
    }
}
