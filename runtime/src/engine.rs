//! The wasmtime embedding: one [`Runtime`] (one `Engine`) per process, one
//! `Store` per job. Modules are validated against the host ABI before they
//! are accepted, compiled once and cached by content hash.

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
/// Compiled modules kept in memory.
const CACHE_ENTRIES: usize = 64;
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
}

/// The WASM runtime.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    udf_factory: Arc<UdfFactory>,
    /// Compiled and pre-linked modules by SHA-256.
    cache: Mutex<HashMap<String, Prepared>>,
    slots: Slots,
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
        // Threads and shared memory are not compiled in (no `threads` feature).
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
            cache: Mutex::new(HashMap::new()),
            slots: Slots::new(CONCURRENT_JOBS),
            ticker_stop,
        })
    }

    /// Validates a module against the ABI and compiles it (cached).
    pub fn load(&self, bytes: &[u8]) -> Result<(ModuleInfo, Module), JobError> {
        self.prepare(bytes)
            .map(|(info, p)| (info, p.pre.module().clone()))
    }

    fn cached(&self, hash: &str) -> Option<Prepared> {
        self.cache.lock().ok().and_then(|c| c.get(hash).cloned())
    }

    /// Like [`Runtime::load`], returning the module linked against the host
    /// ABI and ready to instantiate.
    fn prepare(&self, bytes: &[u8]) -> Result<(ModuleInfo, Prepared), JobError> {
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
        let info = ModuleInfo {
            hash: hash.clone(),
            size: bytes.len() as u64,
        };
        if let Some(p) = self.cached(&hash) {
            return Ok((info, p));
        }
        let module = Module::from_binary(&self.engine, bytes).map_err(|e| {
            JobError::InvalidModule(format!(
                "the module does not validate: {}",
                first_line(&e.to_string())
            ))
        })?;
        check_interface(&module)?;
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            JobError::InvalidModule(format!(
                "the module does not link: {}",
                first_line(&e.to_string())
            ))
        })?;
        let p = Prepared {
            pre,
            bytes: Arc::from(bytes),
        };
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_ENTRIES {
                c.clear();
            }
            c.insert(hash, p.clone());
        }
        Ok((info, p))
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
        };
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
        let state = HostState::new(input, deadline, &p, self.udf_factory.clone());
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
        let (_, p) = self.prepare(bytes)?;
        Ok(Arc::new(crate::udf::UdfHost::new(
            self.udf_factory.clone(),
            &p,
            MAX_MEMORY_BYTES,
            Instant::now() + Duration::from_secs(3600),
            Arc::new(AtomicBool::new(false)),
        )?))
    }

    /// Compiled modules currently cached.
    pub fn cached_modules(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Runs a job to completion on the current thread (call it from a
    /// blocking context: queries block on `input.handle`).
    pub fn run(&self, bytes: &[u8], input: JobInput) -> JobOutcome {
        let _slot = self.slots.acquire();
        let hold = input.hold_slot;
        let outcome = self.run_in_slot(bytes, input);
        if let Some(h) = hold {
            let until = h.until(outcome.ended);
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        outcome
    }

    fn run_in_slot(&self, bytes: &[u8], input: JobInput) -> JobOutcome {
        let started = Instant::now();
        let mut usage = Usage::default();
        let known = input.module_hash.as_deref().and_then(|h| self.cached(h));
        let prepared = match known
            .map(Ok)
            .unwrap_or_else(|| self.prepare(bytes).map(|(_, p)| p))
        {
            Ok(p) => p,
            Err(e) => {
                return JobOutcome {
                    result: Err(e),
                    usage,
                    logs: Vec::new(),
                    releases: Vec::new(),
                    ended: Instant::now(),
                }
            }
        };
        if let Err(e) = host::check_params(&input.params) {
            return JobOutcome {
                result: Err(e),
                usage,
                logs: Vec::new(),
                releases: Vec::new(),
                ended: Instant::now(),
            };
        }
        let limits = input.limits;
        // The guest's own running time starts now (compiling the module is
        // not the guest's); host calls move the deadline later by the time
        // they take (`host::timed`).
        let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
        let state = HostState::new(input, deadline, &prepared, self.udf_factory.clone());
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
        let st = store.into_data();
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
}

/// Interrupts a store's guest at the first epoch tick after the deadline
/// in its data or after its cancel flag is set, recording why.
pub(crate) fn arm_deadline<T: Deadline>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let st = ctx.data_mut();
        if st.cancelled() {
            st.interrupted(JobError::Cancelled("the job was stopped".into()));
            return Ok(UpdateDeadline::Interrupt);
        }
        if Instant::now() >= st.deadline() {
            st.interrupted(JobError::DeadlineExceeded);
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

/// A counting semaphore for job slots.
struct Slots {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }
    fn acquire(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.freed.notify_one();
    }
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
