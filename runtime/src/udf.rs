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

use crate::error::JobError;
use crate::host::{abi_functions, Limiter, ABI_MODULE};
use sandbox::udf::{RowFunction, MAX_ROW_FUNCTION_ARGS};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmparser::{Operator, Parser, Payload, TypeRef, ValType};
use wasmtime::{Engine, Extern, FuncType, Global, Instance, Linker, Memory, Module, Store, Trap, TypedFunc};

/// Rows per driver call; each argument column is one 64 KiB page.
const CHUNK: usize = 8192;
/// Bytes of one column in the driver's memory.
const COLUMN_BYTES: usize = CHUNK * 8;
/// Most operators one row may execute, counted over the call tree.
pub const MAX_ROW_COST: u64 = 1_000_000;

/// Why a function cannot be a row function (shown to the guest).
fn refuse<T>(msg: impl Into<String>) -> Result<T, String> {
    Err(msg.into())
}

/// Checks that export `name` of `bytes` is a stateless row function and
/// returns its arity.
pub fn check_stateless(bytes: &[u8], name: &str) -> Result<usize, String> {
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
    walk.cost(root)?;
    Ok(arity)
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
                    "row function `{name}` may execute more than {MAX_ROW_COST} instructions per row"
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
/// computed, so a trap can be pinned to its row.
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
        (br $next)))))"#,
        out = arity * COLUMN_BYTES
    )
}

/// State of the store row functions run in.
pub(crate) struct UdfState {
    limiter: Limiter,
    stop: Option<JobError>,
}

/// Compiled drivers and the trapping host imports, shared by all jobs.
pub(crate) struct UdfFactory {
    engine: Engine,
    linker: Linker<UdfState>,
    drivers: Mutex<HashMap<usize, Module>>,
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

    fn driver(&self, arity: usize) -> Result<Module, JobError> {
        let internal = |e: &dyn std::fmt::Display| JobError::Internal(format!("row function driver: {e}"));
        let mut cache = self
            .drivers
            .lock()
            .map_err(|_| JobError::Internal("driver cache poisoned".into()))?;
        if let Some(m) = cache.get(&arity) {
            return Ok(m.clone());
        }
        let wasm = wat::parse_str(driver_wat(arity)).map_err(|e| internal(&e))?;
        let m = Module::from_binary(&self.engine, &wasm).map_err(|e| internal(&e))?;
        cache.insert(arity, m.clone());
        Ok(m)
    }
}

struct Driver {
    eval: TypedFunc<(i32, i32), ()>,
    io: Memory,
    progress: Global,
    arity: usize,
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

impl UdfHost {
    /// Instantiates the job's module a second time, with host imports that
    /// trap, the job's memory cap, and the job's deadline and cancel flag.
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
        };
        let mut store = Store::new(&factory.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Row functions always terminate (no loops or recursion) within
        // MAX_ROW_COST per row; fuel is only a backstop.
        store
            .set_fuel(u64::MAX / 4)
            .map_err(|e| JobError::Internal(e.to_string()))?;
        crate::engine::arm_deadline(&mut store, deadline, cancel, |s: &mut UdfState, e| {
            s.stop = Some(e)
        });
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

    /// Why row functions stopped (deadline, cancellation), if they did.
    pub(crate) fn stop(&self) -> Option<JobError> {
        self.inner.lock().ok().and_then(|i| i.store.data().stop.clone())
    }

    /// Checks export `name` and prepares its driver. Refusals are messages
    /// for the guest.
    pub(crate) fn add(self: &Arc<Self>, name: &str, bounds: (f64, f64)) -> Result<WasmRowFunction, String> {
        let arity = check_stateless(&self.bytes, name)?;
        let driver = self.factory.driver(arity).map_err(|e| e.to_string())?;
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
        let io = d
            .get_memory(&mut inner.store, "io")
            .ok_or("driver without memory")?;
        let progress = d
            .get_global(&mut inner.store, "progress")
            .ok_or("driver without progress")?;
        inner.drivers.push(Driver {
            eval,
            io,
            progress,
            arity,
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
#[derive(Debug)]
pub(crate) struct WasmRowFunction {
    host: Arc<UdfHost>,
    name: String,
    index: usize,
    arity: usize,
    bounds: (f64, f64),
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
        let (eval, io, progress, arity) = (d.eval.clone(), d.io, d.progress, d.arity);
        let mut out = Vec::with_capacity(rows);
        let mut start = 0;
        while start < rows {
            let n = (rows - start).min(CHUNK);
            {
                let mem = io.data_mut(&mut inner.store);
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
            let mut trapped: Vec<usize> = Vec::new();
            let mut from = 0usize;
            while from < n {
                match eval.call(&mut inner.store, (from as i32, n as i32)) {
                    Ok(()) => break,
                    Err(e) => {
                        if let Some(stop) = &inner.store.data().stop {
                            return Err(stop.to_string());
                        }
                        if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt | Trap::OutOfFuel)) {
                            return Err("row function interrupted".into());
                        }
                        // A trap on one row: that row is null, go on after it.
                        let at = progress.get(&mut inner.store).i32().unwrap_or(0).max(0) as usize;
                        trapped.push(at);
                        from = (at + 1).max(from + 1);
                    }
                }
            }
            let mem = io.data(&inner.store);
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
