//! The host ABI, version 1: the guest's only door out of its sandbox.
//!
//! Every function lives in the import module [`ABI_MODULE`]. Pointers and
//! lengths are `i32` offsets into the guest's exported `memory`; every
//! range is bounds-checked and a bad one returns [`code::INVALID_ARGUMENT`]
//! rather than trapping. Negative return values are error codes; the text
//! of the last error can be read with `error_read`. The full specification
//! is `runtime/ABI.md`.

use crate::error::JobError;
use crate::limits::{JobLimits, MAX_PARAMS_BYTES, MAX_SQL_BYTES};
use crate::udf::{UdfFactory, UdfHost};
use sandbox::{JobScope, QueryLineage};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Caller, Extern, FuncType, Linker, ResourceLimiter, ValType};

/// Import module name of ABI version 1.
pub const ABI_MODULE: &str = "invis_v1";

/// Error codes returned by host functions (always negative). They are
/// defined once, in the guest SDK, so both sides of the ABI agree.
pub use invis::code;

/// Fuel charged per host call, on top of the guest's own instructions.
const HOST_CALL_FUEL: u64 = 10_000;
/// Extra fuel charged per query.
const QUERY_FUEL: u64 = 1_000_000;
/// Extra fuel charged per row function registration (the module is
/// analysed and instantiated a second time).
const UDF_FUEL: u64 = 1_000_000;
/// Time row functions get beyond a query's own limit. The sandbox's timer
/// releases the empty input at `query_timeout_ms`; a row-function batch
/// already running then cannot be interrupted by it (the batch is one
/// synchronous call), so the row-function store's deadline, slightly later,
/// stops it and frees the function for the job's next query.
const ROW_FUNCTION_SLACK: Duration = Duration::from_millis(100);
/// How often a running query looks at the job's cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(5);

/// The imports of ABI v1 and their types, for validating modules.
pub fn abi_functions() -> Vec<(&'static str, Vec<ValType>, Vec<ValType>)> {
    use ValType::{F64, I32, I64};
    vec![
        ("query", vec![I32, I32], vec![I64]),
        ("result_read", vec![I32, I32], vec![I32]),
        ("error_read", vec![I32, I32], vec![I32]),
        ("emit", vec![I32, I32], vec![I32]),
        ("log", vec![I32, I32], vec![I32]),
        ("params_len", vec![], vec![I32]),
        ("params_read", vec![I32, I32], vec![I32]),
        ("udf_register", vec![I32, I32, F64, F64], vec![I32]),
    ]
}

/// True when `ty` is the ABI type of import `name`.
pub fn import_matches(name: &str, ty: &FuncType) -> bool {
    abi_functions().iter().any(|(n, params, results)| {
        let same = |a: &mut dyn ExactSizeIterator<Item = ValType>, b: &[ValType]| {
            a.len() == b.len() && a.zip(b).all(|(x, y)| ValType::eq(&x, y))
        };
        *n == name && same(&mut ty.params(), params) && same(&mut ty.results(), results)
    })
}

/// Why the host stopped the guest (carried through wasmtime as an error).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HostStop(pub JobError);

/// Memory and table caps, remembering when one was hit.
pub(crate) struct Limiter {
    pub memory_bytes: usize,
    pub table_elements: usize,
    pub peak_memory: usize,
    pub hit: bool,
    /// Instances (and memories) the store may hold: 1 for a job, more for
    /// the row-function store, which adds a driver per function.
    pub instances: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = true;
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }
    fn instances(&self) -> usize {
        self.instances
    }
    fn tables(&self) -> usize {
        4 * self.instances
    }
    fn memories(&self) -> usize {
        self.instances
    }
}

/// State of one running job, owned by its wasmtime `Store`.
pub(crate) struct HostState {
    pub limiter: Limiter,
    pub limits: JobLimits,
    /// The data door; `None` for runs that may not query.
    pub scope: Option<Arc<JobScope>>,
    pub handle: tokio::runtime::Handle,
    /// The wall-clock backstop: the guest's start plus
    /// [`crate::engine::backstop`] of its time limit, moved later by the
    /// time every host call and every wait for the CPU took. Reached only
    /// when the guest is starved of the CPU it holds a lease for.
    pub deadline: Instant,
    /// The guest's time limit, counted in CPU time of its own thread outside
    /// host calls (I14: neither the data nor others' load decides whether a
    /// job meets it).
    pub cpu_budget: Duration,
    /// The thread's CPU time when the guest started.
    pub cpu_started: Duration,
    /// CPU time of the thread spent inside host calls.
    pub cpu_in_host: Duration,
    pub cancel: Arc<AtomicBool>,
    pub params: Vec<u8>,
    pub pending: Option<Vec<u8>>,
    pub last_error: String,
    pub output: Vec<u8>,
    pub logs: Vec<String>,
    pub host_calls: u32,
    pub releases: Vec<QueryLineage>,
    /// Set when the host decided to stop the guest, so the trap that
    /// follows is reported with this cause.
    pub stop: Option<JobError>,
    /// The job's module and its bytes, for a second instance that runs
    /// row functions.
    pub module: crate::engine::Prepared,
    pub udf_factory: Arc<UdfFactory>,
    /// Created at the first `udf_register`.
    pub udfs: Option<Arc<UdfHost>>,
    /// The job's share of the CPU while it runs.
    pub lease: Option<crate::fair::Lease>,
}

impl HostState {
    /// The state of a job about to start.
    pub(crate) fn new(
        input: crate::JobInput,
        cpu_budget: Duration,
        module: &crate::engine::Prepared,
        udf_factory: Arc<UdfFactory>,
    ) -> HostState {
        let limits = input.limits;
        let deadline = Instant::now() + crate::engine::backstop(cpu_budget);
        HostState {
            limiter: Limiter {
                memory_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
                table_elements: limits.table_elements as usize,
                peak_memory: 0,
                hit: false,
                instances: 1,
            },
            limits,
            scope: input.scope,
            handle: input.handle,
            deadline,
            cpu_budget,
            cpu_started: crate::engine::thread_cpu(),
            cpu_in_host: Duration::ZERO,
            cancel: input.cancel,
            params: input.params,
            pending: None,
            last_error: String::new(),
            output: Vec::new(),
            logs: Vec::new(),
            host_calls: 0,
            releases: Vec::new(),
            stop: None,
            module: module.clone(),
            udf_factory,
            udfs: None,
            lease: None,
        }
    }
}

impl crate::engine::Deadline for HostState {
    fn deadline(&self) -> Instant {
        self.deadline
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
    fn interrupted(&mut self, why: JobError) {
        self.stop = Some(why);
    }
    /// Past the time limit in the guest's own CPU time; or, far later in
    /// wall-clock time while it held the CPU, starved of it.
    fn overdue(&self) -> Option<JobError> {
        let used = crate::engine::thread_cpu()
            .saturating_sub(self.cpu_started)
            .saturating_sub(self.cpu_in_host);
        if used >= self.cpu_budget {
            return Some(JobError::DeadlineExceeded);
        }
        (Instant::now() >= self.deadline).then(|| {
            JobError::Internal("the platform was too busy to give the job the time it is allowed".into())
        })
    }
    /// Gives the CPU to a waiting job once a slice is used up; the wait
    /// moves the deadline later, so a job's outcome never depends on
    /// others' load (I14).
    fn tick(&mut self) {
        if let Some(lease) = &mut self.lease {
            let waited = lease.yield_if_due();
            self.deadline = self.deadline.checked_add(waited).unwrap_or(self.deadline);
        }
    }
}

type C<'a> = Caller<'a, HostState>;

/// Runs host function `f` and moves the guest's deadline later by exactly
/// the time it took: how long a query (or any host call) runs may depend on
/// the data, and it must never decide whether the job meets its deadline
/// (I14). The deadline is checked on entry (`enter`) and by the epoch
/// callback, which reads it from the store on every tick.
fn timed<R>(caller: &mut C<'_>, f: impl FnOnce(&mut C<'_>) -> R) -> R {
    let (entered, cpu) = (Instant::now(), crate::engine::thread_cpu());
    let r = f(caller);
    let spent = entered.elapsed();
    let cpu_spent = crate::engine::thread_cpu().saturating_sub(cpu);
    let st = caller.data_mut();
    st.deadline = st.deadline.checked_add(spent).unwrap_or(st.deadline);
    st.cpu_in_host = st.cpu_in_host.saturating_add(cpu_spent);
    r
}

fn memory_range(caller: &mut C<'_>, ptr: i32, len: i32) -> Option<(wasmtime::Memory, usize, usize)> {
    let mem = match caller.get_export("memory") {
        Some(Extern::Memory(m)) => m,
        _ => return None,
    };
    let start = usize::try_from(ptr).ok()?;
    let len = usize::try_from(len).ok()?;
    let end = start.checked_add(len)?;
    (end <= mem.data_size(&*caller)).then_some((mem, start, end))
}

/// The first check of every call that takes a length: a negative one is
/// `INVALID_ARGUMENT` whatever else is wrong (runtime/ABI.md).
fn negative_length(caller: &mut C<'_>, len: i32) -> Option<i32> {
    (len < 0).then(|| fail(caller, code::INVALID_ARGUMENT, "the length is negative"))
}

fn read_bytes(caller: &mut C<'_>, ptr: i32, len: i32, max: usize) -> Result<Vec<u8>, i32> {
    match usize::try_from(len) {
        Err(_) => return Err(code::INVALID_ARGUMENT),
        Ok(l) if l > max => return Err(code::LIMIT_EXCEEDED),
        Ok(_) => {}
    }
    let (mem, start, end) = memory_range(caller, ptr, len).ok_or(code::INVALID_ARGUMENT)?;
    mem.data(&*caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(code::INVALID_ARGUMENT)
}

fn write_bytes(caller: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), i32> {
    let len = i32::try_from(bytes.len()).map_err(|_| code::INVALID_ARGUMENT)?;
    let (mem, start, end) = memory_range(caller, ptr, len).ok_or(code::INVALID_ARGUMENT)?;
    let dst = mem
        .data_mut(&mut *caller)
        .get_mut(start..end)
        .ok_or(code::INVALID_ARGUMENT)?;
    dst.copy_from_slice(bytes);
    Ok(())
}

fn stop(caller: &mut C<'_>, e: JobError) -> wasmtime::Error {
    caller.data_mut().stop = Some(e.clone());
    wasmtime::Error::new(HostStop(e))
}

/// Counts a host call and charges its fuel; stops the guest past a limit.
fn enter(caller: &mut C<'_>, fuel: u64) -> wasmtime::Result<()> {
    let st = caller.data_mut();
    st.host_calls += 1;
    if st.host_calls > st.limits.host_calls {
        let n = st.limits.host_calls;
        return Err(stop(
            caller,
            JobError::LimitExceeded(format!("more than {n} host calls")),
        ));
    }
    if caller.data().cancel.load(Ordering::SeqCst) {
        return Err(stop(caller, JobError::Cancelled("the job was stopped".into())));
    }
    if let Some(e) = crate::engine::Deadline::overdue(caller.data()) {
        return Err(stop(caller, e));
    }
    let left = caller.get_fuel()?;
    if left < fuel {
        caller.set_fuel(0)?;
        return Err(stop(caller, JobError::OutOfFuel));
    }
    caller.set_fuel(left - fuel)?;
    Ok(())
}

fn fail(caller: &mut C<'_>, code: i32, msg: impl Into<String>) -> i32 {
    caller.data_mut().last_error = msg.into();
    code
}

fn error_code(e: &sandbox::Error) -> i32 {
    match e {
        sandbox::Error::InvalidQuery(_) => code::INVALID_QUERY,
        sandbox::Error::PolicyViolation(_) => code::POLICY_VIOLATION,
        sandbox::Error::BudgetExhausted(_) => code::BUDGET_EXHAUSTED,
        sandbox::Error::AccessClosed(_) | sandbox::Error::InvalidDataset(_) => code::ACCESS_CLOSED,
        sandbox::Error::ResourcesExhausted(_) => code::LIMIT_EXCEEDED,
        sandbox::Error::Internal(_) => code::INTERNAL,
    }
}

fn host_query(caller: &mut C<'_>, ptr: i32, len: i32) -> wasmtime::Result<i64> {
    enter(caller, HOST_CALL_FUEL + QUERY_FUEL)?;
    if let Some(c) = negative_length(caller, len) {
        return Ok(i64::from(c));
    }
    let sql = match read_bytes(caller, ptr, len, MAX_SQL_BYTES).map(String::from_utf8) {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => {
            return Ok(i64::from(fail(
                caller,
                code::INVALID_ARGUMENT,
                "the SQL is not UTF-8",
            )))
        }
        Err(c) => {
            return Ok(i64::from(fail(
                caller,
                c,
                "the SQL pointer or length is invalid or too long",
            )))
        }
    };
    let Some(scope) = caller.data().scope.clone() else {
        return Ok(i64::from(fail(
            caller,
            code::ACCESS_CLOSED,
            "this run has no data access",
        )));
    };
    // Row functions evaluated by this query stop at the query's own limit
    // (plus slack), not the job's: a row function interrupted there fails
    // only this query's execution, which the sandbox releases as the
    // mechanism's answer on an empty input.
    if let Some(udfs) = caller.data().udfs.clone() {
        let limit = Duration::from_millis(caller.data().limits.query_timeout_ms);
        udfs.set_deadline(Instant::now() + limit + ROW_FUNCTION_SLACK);
    }
    let handle = caller.data().handle.clone();
    let cancel = caller.data().cancel.clone();
    // The sandbox times the query itself (`ScopeConfig::query_timeout`); the
    // host only stops waiting when the job is cancelled.
    let result = handle.block_on(async {
        tokio::select! {
            r = scope.query(&sql) => Some(r),
            () = cancelled(&cancel) => None,
        }
    });
    // A cancellation (objection, halt, stop) stops the job even when the
    // query came back: a row function it interrupted made the sandbox
    // release an empty input, which must not reach the guest as an answer.
    if cancel.load(Ordering::SeqCst) {
        return Err(stop(caller, JobError::Cancelled("the job was stopped".into())));
    }
    match result {
        None => Err(stop(caller, JobError::Cancelled("the job was stopped".into()))),
        Some(Err(e)) => {
            let c = error_code(&e);
            let msg = match &e {
                // Internal details are for the platform's log, not the guest.
                sandbox::Error::Internal(detail) => {
                    tracing::warn!(error = %detail, "query failed inside the platform");
                    "the query failed inside the platform; its budget stays charged".to_string()
                }
                other => other.to_string(),
            };
            Ok(i64::from(fail(caller, c, msg)))
        }
        Some(Ok(release)) => {
            let n = release.ipc.len() as i64;
            let st = caller.data_mut();
            st.pending = Some(release.ipc);
            st.releases.push(release.lineage);
            Ok(n)
        }
    }
}

/// Resolves once `flag` is set, looking every [`CANCEL_POLL`].
async fn cancelled(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

fn host_result_read(caller: &mut C<'_>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    enter(caller, HOST_CALL_FUEL)?;
    if let Some(c) = negative_length(caller, len) {
        return Ok(c);
    }
    let Some(pending) = caller.data_mut().pending.take() else {
        return Ok(fail(caller, code::NO_RESULT, "no query result is pending"));
    };
    if usize::try_from(len).map_or(true, |l| l < pending.len()) {
        let n = pending.len();
        caller.data_mut().pending = Some(pending);
        return Ok(fail(
            caller,
            code::BUFFER_TOO_SMALL,
            format!("the result needs {n} bytes"),
        ));
    }
    match write_bytes(caller, ptr, &pending) {
        Ok(()) => Ok(i32::try_from(pending.len()).unwrap_or(i32::MAX)),
        Err(c) => {
            caller.data_mut().pending = Some(pending);
            Ok(fail(caller, c, "the destination pointer or length is invalid"))
        }
    }
}

fn host_error_read(caller: &mut C<'_>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    enter(caller, HOST_CALL_FUEL)?;
    if len < 0 {
        // A negative length is an invalid argument like everywhere else
        // (runtime/ABI.md); the last error stays readable.
        return Ok(code::INVALID_ARGUMENT);
    }
    let msg = caller.data().last_error.clone().into_bytes();
    let cap = usize::try_from(len).unwrap_or(0);
    let mut n = msg.len().min(cap);
    // Never cut a UTF-8 character in half.
    while n > 0 && n < msg.len() && (msg.get(n).is_some_and(|b| b & 0xC0 == 0x80)) {
        n -= 1;
    }
    if let Err(c) = write_bytes(caller, ptr, msg.get(..n).unwrap_or(&[])) {
        return Ok(c);
    }
    Ok(i32::try_from(msg.len()).unwrap_or(i32::MAX))
}

fn host_emit(caller: &mut C<'_>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    let fuel = HOST_CALL_FUEL + u64::try_from(len.max(0)).unwrap_or(0) / 16;
    enter(caller, fuel)?;
    if let Some(c) = negative_length(caller, len) {
        return Ok(c);
    }
    let room = {
        let st = caller.data();
        usize::try_from(st.limits.output_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(st.output.len())
    };
    if usize::try_from(len).is_ok_and(|l| l > room) {
        let cap = caller.data().limits.output_bytes;
        return Err(stop(
            caller,
            JobError::LimitExceeded(format!("output larger than {cap} bytes")),
        ));
    }
    match read_bytes(caller, ptr, len, room) {
        Ok(bytes) => {
            caller.data_mut().output.extend_from_slice(&bytes);
            Ok(0)
        }
        Err(c) => Ok(fail(caller, c, "the emit pointer or length is invalid")),
    }
}

fn host_log(caller: &mut C<'_>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    enter(caller, HOST_CALL_FUEL)?;
    if let Some(c) = negative_length(caller, len) {
        return Ok(c);
    }
    let (count, cap, max) = {
        let st = caller.data();
        (
            st.logs.len(),
            st.limits.log_message_bytes as usize,
            st.limits.log_messages as usize,
        )
    };
    if count >= max {
        return Ok(fail(
            caller,
            code::LIMIT_EXCEEDED,
            format!("at most {max} log messages"),
        ));
    }
    let take = len.min(i32::try_from(cap).unwrap_or(i32::MAX));
    match read_bytes(caller, ptr, take, cap) {
        Ok(bytes) => {
            let msg = String::from_utf8_lossy(&bytes).into_owned();
            caller.data_mut().logs.push(msg);
            Ok(0)
        }
        Err(c) => Ok(fail(caller, c, "the log pointer or length is invalid")),
    }
}

fn host_params_len(caller: &mut C<'_>) -> wasmtime::Result<i32> {
    enter(caller, HOST_CALL_FUEL)?;
    Ok(i32::try_from(caller.data().params.len()).unwrap_or(i32::MAX))
}

fn host_params_read(caller: &mut C<'_>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    enter(caller, HOST_CALL_FUEL)?;
    if let Some(c) = negative_length(caller, len) {
        return Ok(c);
    }
    let params = caller.data().params.clone();
    if usize::try_from(len).map_or(true, |l| l < params.len()) {
        return Ok(fail(
            caller,
            code::BUFFER_TOO_SMALL,
            format!("the parameters need {} bytes", params.len()),
        ));
    }
    match write_bytes(caller, ptr, &params) {
        Ok(()) => Ok(i32::try_from(params.len()).unwrap_or(i32::MAX)),
        Err(c) => Ok(fail(caller, c, "the destination pointer or length is invalid")),
    }
}

fn host_udf_register(caller: &mut C<'_>, ptr: i32, len: i32, lo: f64, hi: f64) -> wasmtime::Result<i32> {
    enter(caller, HOST_CALL_FUEL + UDF_FUEL)?;
    if let Some(c) = negative_length(caller, len) {
        return Ok(c);
    }
    let name = match read_bytes(caller, ptr, len, 64).map(String::from_utf8) {
        Ok(Ok(s)) => s,
        _ => {
            return Ok(fail(
                caller,
                code::INVALID_ARGUMENT,
                "the row function name is invalid or longer than 64 bytes",
            ))
        }
    };
    if let Err(m) = sandbox::udf::valid_name(&name) {
        return Ok(fail(caller, code::INVALID_ARGUMENT, m));
    }
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Ok(fail(
            caller,
            code::INVALID_ARGUMENT,
            "the bounds must be finite numbers with lo <= hi",
        ));
    }
    let Some(scope) = caller.data().scope.clone() else {
        return Ok(fail(caller, code::ACCESS_CLOSED, "this run has no data access"));
    };
    let exported = caller
        .data()
        .module
        .pre
        .module()
        .exports()
        .any(|e| e.name() == name && matches!(e.ty(), wasmtime::ExternType::Func(_)));
    if !exported {
        return Ok(fail(
            caller,
            code::INVALID_ARGUMENT,
            format!("the module exports no function `{name}`"),
        ));
    }
    // A name taken or a seventeenth function is refused before anything is
    // prepared: a refusal must not use up one of the job's instances.
    if let Err(e) = scope.row_function_admissible(&name) {
        let c = error_code(&e);
        return Ok(fail(caller, c, e.to_string()));
    }
    // Whether the export is a stateless row function is a fact of the
    // module (-2); what fails after that is the platform's (-9).
    let bytes = caller.data().module.bytes.clone();
    if let Err(m) = crate::udf::check_stateless(&bytes, &name) {
        return Ok(fail(caller, code::POLICY_VIOLATION, m));
    }
    let host = match caller.data().udfs.clone() {
        Some(h) => h,
        None => {
            let st = caller.data();
            // The second instance gets the guest's remaining time (modules
            // have no start function, `shape`); later each query sets the
            // row functions' deadline.
            let made = UdfHost::new(
                st.udf_factory.clone(),
                &st.module,
                st.limiter.memory_bytes,
                st.deadline,
                st.cancel.clone(),
            );
            match made {
                Ok(h) => {
                    let h = Arc::new(h);
                    caller.data_mut().udfs = Some(h.clone());
                    h
                }
                // The module was admitted and instantiated once already:
                // a second instance failing is the platform's fault.
                Err(e) => return Ok(fail(caller, code::INTERNAL, e.to_string())),
            }
        }
    };
    let f = match host.add(&name, (lo, hi)) {
        Ok(f) => f,
        Err(m) => return Ok(fail(caller, code::INTERNAL, m)),
    };
    match scope.register_row_function(Arc::new(f)) {
        Ok(()) => Ok(0),
        Err(e) => {
            let c = error_code(&e);
            Ok(fail(caller, c, e.to_string()))
        }
    }
}

/// Adds every ABI v1 function to `linker`, each wrapped in [`timed`] so
/// that no host call's duration counts against the guest's deadline.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ABI_MODULE, "query", |mut c: C<'_>, p: i32, l: i32| {
        timed(&mut c, |c| host_query(c, p, l))
    })?;
    linker.func_wrap(ABI_MODULE, "result_read", |mut c: C<'_>, p: i32, l: i32| {
        timed(&mut c, |c| host_result_read(c, p, l))
    })?;
    linker.func_wrap(ABI_MODULE, "error_read", |mut c: C<'_>, p: i32, l: i32| {
        timed(&mut c, |c| host_error_read(c, p, l))
    })?;
    linker.func_wrap(ABI_MODULE, "emit", |mut c: C<'_>, p: i32, l: i32| {
        timed(&mut c, |c| host_emit(c, p, l))
    })?;
    linker.func_wrap(ABI_MODULE, "log", |mut c: C<'_>, p: i32, l: i32| {
        timed(&mut c, |c| host_log(c, p, l))
    })?;
    linker.func_wrap(ABI_MODULE, "params_len", |mut c: C<'_>| {
        timed(&mut c, host_params_len)
    })?;
    linker.func_wrap(ABI_MODULE, "params_read", |mut c: C<'_>, p: i32, l: i32| {
        timed(&mut c, |c| host_params_read(c, p, l))
    })?;
    linker.func_wrap(
        ABI_MODULE,
        "udf_register",
        |mut c: C<'_>, p: i32, l: i32, lo: f64, hi: f64| {
            timed(&mut c, |c| host_udf_register(c, p, l, lo, hi))
        },
    )?;
    Ok(())
}

/// Checks that a parameters blob is within limits.
pub fn check_params(params: &[u8]) -> Result<(), JobError> {
    if params.len() > MAX_PARAMS_BYTES {
        return Err(JobError::LimitExceeded(format!(
            "job parameters exceed {MAX_PARAMS_BYTES} bytes"
        )));
    }
    Ok(())
}
