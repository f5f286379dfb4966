//! Guest row functions (WASM UDFs): a job exports a function
//! `(f64, ...) -> f64` and registers it with `udf_register`; DataFusion then
//! calls it a batch at a time on desensitized columns, inside the sandbox,
//! and the policy lets its output feed COUNT/SUM/AVG arguments only.
//!
//! Differential privacy bounds how much one privacy unit can change an
//! aggregate by assuming each row's value depends on that row alone. A
//! stateful function (one that remembers a value it saw in another row)
//! would break that, so a row function must be provably stateless:
//! [`check_stateless`] refuses it unless the export and every function it
//! reaches contain no memory, global or table write, no loop, no recursion,
//! no indirect call and no host call. Such a function's result depends only
//! on its arguments and the module's initial state, and it always
//! terminates within a bound computed from its code.
//!
//! A trap on one row (division by zero, `unreachable`) makes that row's
//! value null; it does not fail the query, which would tell the developer
//! something about one row outside the privacy mechanism.
//!
//! Evaluation happens in a second instance of the job's module, in its own
//! `Store` (the job's store is busy in the `query` host call), whose host
//! imports all trap. A small generated *driver* module, one per row
//! function, imports the export and loops over a batch held in the
//! driver's own memory, which the guest code cannot address.
//!
//! Time must not tell one row's value either (invariant I14): every batch
//! of `n` rows consumes exactly `n` times the function's cost bound (plus
//! the driver's share and a constant) in fuel, whichever branches its rows
//! take and whether they trap; the driver's `pad` loop burns what the rows
//! did not use. The query's time limit, not the job's, stops an evaluation
//! that runs too long.

use crate::error::JobError;
use crate::host::{abi_functions, Limiter, ABI_MODULE};
use sandbox::udf::{RowFunction, MAX_ROW_FUNCTION_ARGS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmparser::{Operator, Parser, Payload, TypeRef, ValType};
use wasmtime::{Engine, Extern, FuncType, Global, Instance, Linker, Memory, Module, Store, Trap, TypedFunc};

/// Rows per driver call; each argument column is one 64 KiB page.
const CHUNK: usize = 8192;
/// Bytes of one column in the driver's memory.
const COLUMN_BYTES: usize = CHUNK * 8;
/// Most operators one row may execute, counted over the call tree.
///
/// Every row is padded to its function's bound (see [`WasmRowFunction`]),
/// so the bound is what every row costs, not just the worst one. At about
/// a nanosecond per operator, a function at this bound takes ~10 us per
/// row, about 10 s for a million rows: inside the default 30 s query limit.
/// Scoring formulas need tens to hundreds of operators.
pub const MAX_ROW_COST: u64 = 10_000;
/// Traps every batch pays for, whether or not its rows trap: a trap (and the
/// re-entry after it) costs microseconds of host time, far more than the
/// fuel padding can equalise, so batches with fewer trapping rows than this
/// are topped up with deliberate traps. Beyond it each trapping row still
/// costs one trap's time (invariant I14, known limits).
const TRAP_BUDGET: u64 = 1;

/// Why a function cannot be a row function (shown to the guest).
fn refuse<T>(msg: impl Into<String>) -> Result<T, String> {
    Err(msg.into())
}

/// Checks that export `name` of `bytes` is a stateless row function and
/// returns its arity.
pub fn check_stateless(bytes: &[u8], name: &str) -> Result<usize, String> {
    row_cost(bytes, name).map(|(arity, _)| arity)
}

/// Like [`check_stateless`], also returning the function's static cost
/// bound: the operators of its call tree, each counted once per call site
/// (without loops or recursion no operator runs twice in one row, and
/// wasmtime charges at most one unit of fuel per operator).
pub fn row_cost(bytes: &[u8], name: &str) -> Result<(usize, u64), String> {
    let mut types: Vec<wasmparser::FuncType> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new();
    let mut imported = 0u32;
    let mut export = None;
    let mut bodies: Vec<wasmparser::FunctionBody<'_>> = Vec::new();
    let bad = |e: wasmparser::BinaryReaderError| format!("the module does not parse: {}", e.message());
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(bad)? {
            Payload::TypeSection(r) => {
                for t in r.into_iter_err_on_gc_types() {
                    types.push(t.map_err(bad)?);
                }
            }
            Payload::ImportSection(r) => {
                for i in r.into_imports() {
                    if let TypeRef::Func(t) = i.map_err(bad)?.ty {
                        func_types.push(t);
                        imported += 1;
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    func_types.push(t.map_err(bad)?);
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(bad)?;
                    if e.name == name && e.kind == wasmparser::ExternalKind::Func {
                        export = Some(e.index);
                    }
                }
            }
            Payload::CodeSectionEntry(body) => bodies.push(body),
            _ => {}
        }
    }
    let Some(root) = export else {
        return refuse(format!("the module exports no function `{name}`"));
    };
    let ty = func_types
        .get(root as usize)
        .and_then(|t| types.get(*t as usize))
        .ok_or_else(|| format!("export `{name}` has no type"))?;
    let arity = ty.params().len();
    let f64_only = ty.params().iter().all(|p| *p == ValType::F64) && ty.results() == [ValType::F64];
    if !f64_only || arity == 0 || arity > MAX_ROW_FUNCTION_ARGS {
        return refuse(format!(
            "export `{name}` must have type (f64 x n) -> f64 with 1 <= n <= {MAX_ROW_FUNCTION_ARGS}"
        ));
    }
    let mut walk = Walk {
        name,
        imported,
        bodies: &bodies,
        cost: HashMap::new(),
        on_path: Vec::new(),
    };
    let cost = walk.cost(root)?;
    Ok((arity, cost))
}

/// Depth-first walk of the call tree with memoized costs.
struct Walk<'a, 'b> {
    name: &'a str,
    imported: u32,
    bodies: &'a [wasmparser::FunctionBody<'b>],
    cost: HashMap<u32, u64>,
    on_path: Vec<u32>,
}

impl Walk<'_, '_> {
    fn cost(&mut self, f: u32) -> Result<u64, String> {
        if let Some(c) = self.cost.get(&f) {
            return Ok(*c);
        }
        let name = self.name;
        if self.on_path.contains(&f) {
            return refuse(format!(
                "row function `{name}` is recursive (function {f}); row functions must always terminate"
            ));
        }
        if f < self.imported {
            return refuse(format!(
                "row function `{name}` calls the host; row functions may not"
            ));
        }
        let body = self
            .bodies
            .get((f - self.imported) as usize)
            .ok_or_else(|| format!("function {f} has no body"))?;
        self.on_path.push(f);
        let mut ops = body.get_operators_reader().map_err(|e| e.message().to_string())?;
        let mut total: u64 = 0;
        while !ops.eof() {
            let op = ops.read().map_err(|e| e.message().to_string())?;
            total += 1;
            if let Some(why) = forbidden(&op) {
                return refuse(format!(
                    "row function `{name}` is not stateless: function {f} uses {why}; a row function may read its arguments and constants only, so one row can never change another row's value"
                ));
            }
            if let Operator::Call { function_index } | Operator::ReturnCall { function_index } = op {
                total = total.saturating_add(self.cost(function_index)?);
            }
            if total > MAX_ROW_COST {
                return refuse(format!(
                    "row function `{name}` may execute more than {MAX_ROW_COST} instructions per row (counted over its call tree, every branch included); every row is padded to this bound so that its running time does not depend on its values"
                ));
            }
        }
        self.on_path.pop();
        self.cost.insert(f, total);
        Ok(total)
    }
}

/// Operators a row function may not execute, and why.
fn forbidden(op: &Operator<'_>) -> Option<&'static str> {
    use Operator::*;
    Some(match op {
        Loop { .. } => "a loop",
        CallIndirect { .. } | ReturnCallIndirect { .. } | CallRef { .. } | ReturnCallRef { .. } => {
            "an indirect call"
        }
        GlobalSet { .. } => "global.set",
        I32Store { .. }
        | I64Store { .. }
        | F32Store { .. }
        | F64Store { .. }
        | I32Store8 { .. }
        | I32Store16 { .. }
        | I64Store8 { .. }
        | I64Store16 { .. }
        | I64Store32 { .. }
        | V128Store { .. }
        | V128Store8Lane { .. }
        | V128Store16Lane { .. }
        | V128Store32Lane { .. }
        | V128Store64Lane { .. } => "a memory store",
        MemoryGrow { .. }
        | MemoryInit { .. }
        | DataDrop { .. }
        | MemoryCopy { .. }
        | MemoryFill { .. }
        | MemoryDiscard { .. } => "a memory write",
        TableInit { .. }
        | ElemDrop { .. }
        | TableCopy { .. }
        | TableFill { .. }
        | TableSet { .. }
        | TableGrow { .. } => "a table write",
        StructSet { .. }
        | ArraySet { .. }
        | ArrayFill { .. }
        | ArrayCopy { .. }
        | ArrayInitData { .. }
        | ArrayInitElem { .. } => "a heap write",
        _ => return None,
    })
}

/// The driver module for functions of `arity` arguments: `eval(start, end)`
/// computes rows `start..end`, reading column `c` at `c * 64 KiB` and
/// writing results after the last column; `progress` holds the row being
/// computed, so a trap can be pinned to its row. `pad(a, b)` burns fuel in
/// two loops whose bodies cost one unit apart, so any amount above a small
/// minimum can be burnt exactly; `trap()` traps like a row that traps.
fn driver_wat(arity: usize) -> String {
    let loads: String = (0..arity)
        .map(|c| format!("(f64.load offset={} (local.get $a))", c * COLUMN_BYTES))
        .collect::<Vec<_>>()
        .join(" ");
    let params = vec!["f64"; arity].join(" ");
    let pages = arity + 1;
    format!(
        r#"(module
  (import "udf" "f" (func $f (param {params}) (result f64)))
  (memory (export "io") {pages} {pages})
  (global $progress (export "progress") (mut i32) (i32.const 0))
  (func (export "eval") (param $start i32) (param $end i32)
    (local $i i32) (local $a i32)
    (local.set $i (local.get $start))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (global.set $progress (local.get $i))
        (local.set $a (i32.shl (local.get $i) (i32.const 3)))
        (f64.store offset={out} (local.get $a) (call $f {loads}))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))
  (func (export "pad") (param $a i64) (param $b i64)
    (block $done
      (loop $next
        (br_if $done (i64.eqz (local.get $a)))
        (local.set $a (i64.sub (local.get $a) (i64.const 1)))
        (br $next)))
    (block $done
      (loop $next
        (br_if $done (i64.eqz (local.get $b)))
        (local.set $b (i64.sub (local.get $b) (i64.const 1)))
        (drop (local.get $b))
        (br $next))))
  (func $nested (unreachable))
  (func (export "trap") (call $nested)))"#,
        out = arity * COLUMN_BYTES
    )
}

/// A module standing in for a row function while a driver is calibrated.
fn calibration_wat(arity: usize) -> String {
    let params = vec!["f64"; arity].join(" ");
    format!(r#"(module (func (export "f") (param {params}) (result f64) (f64.const 0)))"#)
}

/// Fuel the driver's own code consumes, measured once per arity (fuel is a
/// deterministic function of the compiled code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Calibration {
    /// One `eval` call over no rows.
    call: u64,
    /// The driver's share of one row (measured with a function of one
    /// operator, which is therefore included).
    row: u64,
    /// `pad(0, 0)`.
    pad_base: u64,
    /// One iteration of `pad`'s first loop; the second costs one more.
    pad_step: u64,
    /// One `trap()` call.
    trap: u64,
}

impl Calibration {
    /// The least amount `pad` can burn exactly: with loops of `s` and
    /// `s + 1` units every amount from `(s + 1)(s - 1)` up is a sum of them.
    fn pad_min(&self) -> u64 {
        self.pad_base + (self.pad_step + 1) * self.pad_step.saturating_sub(1)
    }

    /// Iterations of `pad`'s two loops that burn exactly `fuel` (at least
    /// [`Calibration::pad_min`]).
    fn pad_split(&self, fuel: u64) -> Option<(u64, u64)> {
        let d = fuel.checked_sub(self.pad_base)?;
        let s = self.pad_step.max(1);
        let b = d % s;
        let a = d.checked_sub(b * (s + 1))? / s;
        Some((a, b))
    }
}

/// State of the store row functions run in.
pub(crate) struct UdfState {
    limiter: Limiter,
    stop: Option<JobError>,
    /// The current query's deadline (set by `query` before each query).
    deadline: Instant,
    cancel: Arc<AtomicBool>,
}

impl crate::engine::Deadline for UdfState {
    fn deadline(&self) -> Instant {
        self.deadline
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
    fn interrupted(&mut self, why: JobError) {
        self.stop = Some(why);
    }
}

/// Compiled drivers and the trapping host imports, shared by all jobs.
pub(crate) struct UdfFactory {
    engine: Engine,
    linker: Linker<UdfState>,
    drivers: Mutex<HashMap<usize, (Module, Calibration)>>,
}

impl UdfFactory {
    pub(crate) fn new(engine: &Engine) -> wasmtime::Result<Self> {
        let mut linker = Linker::new(engine);
        for (name, params, results) in abi_functions() {
            let ty = FuncType::new(engine, params, results);
            linker.func_new(ABI_MODULE, name, ty, |_, _, _| {
                Err(wasmtime::Error::msg(
                    "host calls are not available inside a row function",
                ))
            })?;
        }
        Ok(UdfFactory {
            engine: engine.clone(),
            linker,
            drivers: Mutex::new(HashMap::new()),
        })
    }

    fn driver(&self, arity: usize) -> Result<(Module, Calibration), JobError> {
        let internal = |e: &dyn std::fmt::Display| JobError::Internal(format!("row function driver: {e}"));
        let mut cache = self
            .drivers
            .lock()
            .map_err(|_| JobError::Internal("driver cache poisoned".into()))?;
        if let Some(d) = cache.get(&arity) {
            return Ok(d.clone());
        }
        let wasm = wat::parse_str(driver_wat(arity)).map_err(|e| internal(&e))?;
        let m = Module::from_binary(&self.engine, &wasm).map_err(|e| internal(&e))?;
        let cal = self.calibrate(&m, arity).map_err(|e| internal(&e))?;
        cache.insert(arity, (m.clone(), cal));
        Ok((m, cal))
    }

    /// Measures the fuel of the driver's own code in a throwaway store,
    /// with a one-operator function in place of the row function.
    fn calibrate(&self, driver: &Module, arity: usize) -> wasmtime::Result<Calibration> {
        let stand_in = Module::from_binary(&self.engine, &wat::parse_str(calibration_wat(arity))?)?;
        let mut store = Store::new(
            &self.engine,
            UdfState {
                limiter: Limiter {
                    memory_bytes: COLUMN_BYTES * (MAX_ROW_FUNCTION_ARGS + 1),
                    table_elements: 0,
                    peak_memory: 0,
                    hit: false,
                    instances: 2,
                },
                stop: None,
                deadline: Instant::now() + std::time::Duration::from_secs(60),
                cancel: Arc::new(AtomicBool::new(false)),
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.set_fuel(1 << 40)?;
        crate::engine::arm_deadline(&mut store);
        let f = Instance::new(&mut store, &stand_in, &[])?
            .get_func(&mut store, "f")
            .ok_or_else(|| wasmtime::Error::msg("stand-in without `f`"))?;
        let d = Instance::new(&mut store, driver, &[Extern::Func(f)])?;
        let eval = d.get_typed_func::<(i32, i32), ()>(&mut store, "eval")?;
        let pad = d.get_typed_func::<(i64, i64), ()>(&mut store, "pad")?;
        let trap = d.get_typed_func::<(), ()>(&mut store, "trap")?;
        let used = |store: &mut Store<UdfState>, run: &mut dyn FnMut(&mut Store<UdfState>)| {
            let before = store.get_fuel().unwrap_or(0);
            run(store);
            before.saturating_sub(store.get_fuel().unwrap_or(0))
        };
        let call = used(&mut store, &mut |s| drop(eval.call(s, (0, 0))));
        let ten = used(&mut store, &mut |s| drop(eval.call(s, (0, 10))));
        let pad_base = used(&mut store, &mut |s| drop(pad.call(s, (0, 0))));
        let pad_a = used(&mut store, &mut |s| drop(pad.call(s, (1, 0))));
        let pad_b = used(&mut store, &mut |s| drop(pad.call(s, (0, 1))));
        let trap_fuel = used(&mut store, &mut |s| drop(trap.call(s, ())));
        let cal = Calibration {
            call,
            row: ten.saturating_sub(call) / 10,
            pad_base,
            pad_step: pad_a.saturating_sub(pad_base),
            trap: trap_fuel,
        };
        // The padding is exact only if these hold; check them once rather
        // than trust the engine's fuel costs.
        let linear = used(&mut store, &mut |s| drop(pad.call(s, (7, 5))));
        let exact = cal.pad_step >= 1
            && pad_b == pad_a + 1
            && linear == pad_base + 7 * cal.pad_step + 5 * (cal.pad_step + 1)
            && ten == call + 10 * cal.row;
        if !exact {
            return Err(wasmtime::Error::msg(format!(
                "fuel of the driver is not linear: {cal:?}"
            )));
        }
        Ok(cal)
    }
}

struct Driver {
    eval: TypedFunc<(i32, i32), ()>,
    pad: TypedFunc<(i64, i64), ()>,
    trap: TypedFunc<(), ()>,
    io: Memory,
    progress: Global,
    arity: usize,
    /// Fuel every row is padded to.
    per_row: u64,
    /// Fuel every batch costs on top of its rows.
    per_batch: u64,
    cal: Calibration,
}

struct UdfInner {
    store: Store<UdfState>,
    instance: Instance,
    drivers: Vec<Driver>,
}

/// The second instance of one job's module, where its row functions run.
pub(crate) struct UdfHost {
    factory: Arc<UdfFactory>,
    bytes: Arc<[u8]>,
    inner: Mutex<UdfInner>,
}

impl std::fmt::Debug for UdfHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UdfHost")
    }
}

/// Fuel the backstop starts with: row functions always terminate within
/// their bound; the deadline, not fuel, stops a query that runs too long.
const UDF_FUEL: u64 = u64::MAX / 4;

impl UdfHost {
    /// Instantiates the job's module a second time, with host imports that
    /// trap, the job's memory cap and cancel flag, and `deadline` for the
    /// module's start function (each query then sets its own, see
    /// [`UdfHost::set_deadline`]).
    pub(crate) fn new(
        factory: Arc<UdfFactory>,
        module: &crate::engine::Prepared,
        memory_bytes: usize,
        deadline: Instant,
        cancel: Arc<AtomicBool>,
    ) -> Result<UdfHost, JobError> {
        let state = UdfState {
            limiter: Limiter {
                memory_bytes,
                table_elements: 10_000,
                peak_memory: 0,
                hit: false,
                instances: 1 + sandbox::udf::MAX_ROW_FUNCTIONS,
            },
            stop: None,
            deadline,
            cancel,
        };
        let mut store = Store::new(&factory.engine, state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(UDF_FUEL)
            .map_err(|e| JobError::Internal(e.to_string()))?;
        crate::engine::arm_deadline(&mut store);
        let instance = factory
            .linker
            .instantiate(&mut store, module.pre.module())
            .map_err(|e| {
                JobError::GuestTrap(format!(
                    "the module could not be instantiated for row functions: {}",
                    e.to_string().lines().next().unwrap_or("")
                ))
            })?;
        Ok(UdfHost {
            factory,
            bytes: module.bytes.clone(),
            inner: Mutex::new(UdfInner {
                store,
                instance,
                drivers: Vec::new(),
            }),
        })
    }

    /// Sets the deadline of the row functions' evaluations (before each
    /// query: the query's own limit). Waits for a batch still running from
    /// a query that timed out, which its own deadline stops.
    pub(crate) fn set_deadline(&self, deadline: Instant) {
        if let Ok(mut inner) = self.inner.lock() {
            let st = inner.store.data_mut();
            st.deadline = deadline;
            st.stop = None;
        }
    }

    /// Fuel row functions consumed so far in this store (for tests).
    #[cfg(test)]
    pub(crate) fn fuel_used(&self) -> u64 {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.store.get_fuel().ok())
            .map_or(0, |f| UDF_FUEL.saturating_sub(f))
    }

    /// Checks export `name` and prepares its driver. Refusals are messages
    /// for the guest.
    pub(crate) fn add(self: &Arc<Self>, name: &str, bounds: (f64, f64)) -> Result<WasmRowFunction, String> {
        let (arity, cost) = row_cost(&self.bytes, name)?;
        let (driver, cal) = self.factory.driver(arity).map_err(|e| e.to_string())?;
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| "row functions are unavailable".to_string())?;
        let inner = &mut *inner;
        let f = inner
            .instance
            .get_func(&mut inner.store, name)
            .ok_or_else(|| format!("the module exports no function `{name}`"))?;
        let d = Instance::new(&mut inner.store, &driver, &[Extern::Func(f)])
            .map_err(|e| format!("row function `{name}` could not be prepared: {e}"))?;
        let eval = d
            .get_typed_func::<(i32, i32), ()>(&mut inner.store, "eval")
            .map_err(|e| e.to_string())?;
        let pad = d
            .get_typed_func::<(i64, i64), ()>(&mut inner.store, "pad")
            .map_err(|e| e.to_string())?;
        let trap = d
            .get_typed_func::<(), ()>(&mut inner.store, "trap")
            .map_err(|e| e.to_string())?;
        let io = d
            .get_memory(&mut inner.store, "io")
            .ok_or("driver without memory")?;
        let progress = d
            .get_global(&mut inner.store, "progress")
            .ok_or("driver without progress")?;
        // What a batch may consume at most, whatever its data: per row the
        // driver's share, the function's bound, and one re-entry (a row may
        // trap); per batch one call, the deliberate traps and the least
        // amount `pad` can burn exactly.
        let per_row = cal.row + cost + cal.call;
        let per_batch = cal.call + TRAP_BUDGET * cal.trap + cal.pad_min();
        inner.drivers.push(Driver {
            eval,
            pad,
            trap,
            io,
            progress,
            arity,
            per_row,
            per_batch,
            cal,
        });
        Ok(WasmRowFunction {
            host: self.clone(),
            name: name.to_string(),
            index: inner.drivers.len() - 1,
            arity,
            bounds,
        })
    }
}

/// One registered row function.
///
/// Its running time must not depend on the rows' values (I14), so every
/// batch of `n` rows consumes exactly `n * per_row + per_batch` fuel, where
/// `per_row` covers the function's static bound: after the driver has run
/// (and re-entered after every trapping row), the fuel it used is measured
/// and the rest is burnt by the driver's `pad` loop. A batch with fewer
/// trapping rows than [`TRAP_BUDGET`] also traps deliberately, so that the
/// host's trap handling happens as often as for one with a trapping row.
#[derive(Debug)]
pub(crate) struct WasmRowFunction {
    host: Arc<UdfHost>,
    name: String,
    index: usize,
    arity: usize,
    bounds: (f64, f64),
}

/// Why evaluation stopped, for the query's log (the job learns nothing:
/// the sandbox releases an empty input, or the job is cancelled).
fn interrupted(store: &mut Store<UdfState>, e: &wasmtime::Error) -> Option<String> {
    match store.data_mut().stop.take() {
        Some(JobError::Cancelled(_)) => Some("the job was stopped".into()),
        Some(_) => Some("interrupted at the query's time limit".into()),
        None if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt | Trap::OutOfFuel)) => {
            Some("row function interrupted".into())
        }
        None => None,
    }
}

impl RowFunction for WasmRowFunction {
    fn name(&self) -> &str {
        &self.name
    }
    fn arity(&self) -> usize {
        self.arity
    }
    fn bounds(&self) -> (f64, f64) {
        self.bounds
    }
    fn eval(&self, args: &[&[f64]], rows: usize) -> Result<Vec<f64>, String> {
        let mut inner = self
            .host
            .inner
            .lock()
            .map_err(|_| "row functions are unavailable".to_string())?;
        let inner = &mut *inner;
        let d = inner.drivers.get(self.index).ok_or("unknown row function")?;
        if args.len() != d.arity || args.iter().any(|a| a.len() < rows) {
            return Err("wrong number of arguments".into());
        }
        let (eval, pad, trap, io, progress, arity) = (
            d.eval.clone(),
            d.pad.clone(),
            d.trap.clone(),
            d.io,
            d.progress,
            d.arity,
        );
        let (per_row, per_batch, cal) = (d.per_row, d.per_batch, d.cal);
        let store = &mut inner.store;
        let mut out = Vec::with_capacity(rows);
        let mut start = 0;
        while start < rows {
            let n = (rows - start).min(CHUNK);
            {
                let mem = io.data_mut(&mut *store);
                for (c, col) in args.iter().enumerate() {
                    let dst = mem
                        .get_mut(c * COLUMN_BYTES..c * COLUMN_BYTES + n * 8)
                        .ok_or("driver memory too small")?;
                    let src = col.get(start..start + n).ok_or("short argument column")?;
                    for (d, v) in dst.chunks_exact_mut(8).zip(src) {
                        d.copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            let before = store.get_fuel().map_err(|e| e.to_string())?;
            let mut trapped: Vec<usize> = Vec::new();
            let mut from = 0usize;
            while from < n {
                match eval.call(&mut *store, (from as i32, n as i32)) {
                    Ok(()) => break,
                    Err(e) => {
                        if let Some(why) = interrupted(store, &e) {
                            return Err(why);
                        }
                        // A trap on one row: that row is null, go on after it.
                        let at = progress.get(&mut *store).i32().unwrap_or(0).max(0) as usize;
                        trapped.push(at);
                        from = (at + 1).max(from + 1);
                    }
                }
            }
            for _ in (trapped.len() as u64)..TRAP_BUDGET {
                if let Err(e) = trap.call(&mut *store, ()) {
                    if let Some(why) = interrupted(store, &e) {
                        return Err(why);
                    }
                }
            }
            // Burn the rest of the batch's fixed cost.
            let used = before.saturating_sub(store.get_fuel().map_err(|e| e.to_string())?);
            let target = (n as u64) * per_row + per_batch;
            let (a, b) = target
                .checked_sub(used)
                .and_then(|left| cal.pad_split(left))
                .ok_or("row function exceeded its cost bound")?;
            if let Err(e) = pad.call(&mut *store, (a as i64, b as i64)) {
                return Err(interrupted(store, &e).unwrap_or_else(|| e.to_string()));
            }
            let mem = io.data(&*store);
            let results = mem
                .get(arity * COLUMN_BYTES..arity * COLUMN_BYTES + n * 8)
                .ok_or("driver memory too small")?;
            let first = out.len();
            out.extend(
                results
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
            );
            for t in trapped {
                if let Some(v) = out.get_mut(first + t) {
                    *v = f64::NAN;
                }
            }
            start += n;
        }
        Ok(out)
    }
}
