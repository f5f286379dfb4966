//! The shape a module must have before it is compiled. Compiling is the
//! one thing the platform does with a module before any limit of the job
//! applies, and its cost grows with the number of functions, the size of
//! each body, its locals and how deeply its blocks nest: an upload of
//! 100,000 empty functions once compiled for 11 s on both cores and kept
//! 600 MiB. This pass reads the binary once, linearly and without
//! compiling, and refuses anything beyond [`ShapeLimits`], whose values
//! come from `invis bench-compile` (figures in `runtime/ABI.md`, "Module
//! limits").
//!
//! It also refuses what would fail after compiling anyway (imports outside
//! the ABI, no `run` or `memory` export), so a module that is refused never
//! costs a compilation, and a start function: a module runs only through
//! `run`, under the job's fuel and deadline.

use crate::error::JobError;
use crate::host::ABI_MODULE;
use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef};

/// What a module may contain. Every limit is checked before compilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    /// Functions the module defines (imports not counted).
    pub functions: u32,
    /// Bytes of one function body.
    pub body_bytes: u32,
    /// Bytes of all function bodies together.
    pub code_bytes: u32,
    /// Locals of one function, parameters included.
    pub locals: u32,
    /// Depth of nested `block`, `loop`, `if` and `try_table` in one body.
    pub nesting: u32,
    /// Imports (each must be a host ABI function).
    pub imports: u32,
    /// Exports.
    pub exports: u32,
    /// Globals the module defines.
    pub globals: u32,
    /// Data segments.
    pub data_segments: u32,
    /// Element segments.
    pub element_segments: u32,
    /// Function types.
    pub types: u32,
    /// Locals (and loop parameters) carried around loops, summed over the
    /// module: for each `loop`, the distinct locals its body (nested
    /// blocks included) reads or writes, plus the loop's own parameters.
    /// The compiler gives every loop header a block parameter for each of
    /// them, and its register allocator's work grows with their product:
    /// 2,000 locals read inside loops nested 120 deep (18 KB) compiled for
    /// 5 s, three such nests for over 20 s, within every other limit.
    pub loop_locals: u32,
    /// Branch points of one body: each `br_if`, `br_table`, `if`, `block`
    /// and `loop` counts 1, each `call_indirect`, `return_call_indirect`,
    /// `call_ref`, `table.get` and `table.set` 3 (they branch inside the
    /// compiled code). The compiler's work grows faster than linearly with
    /// them in one function: 24,000 `br_if`s in one 120 KB body compiled
    /// for 5.7 s, 12,000 `call_indirect`s for 4.1 s.
    pub body_branches: u32,
    /// Branch points of the whole module, counted as in
    /// [`ShapeLimits::body_branches`]: branchy code costs about ten times
    /// more to compile per byte than arithmetic.
    pub branches: u32,
}

/// The platform's limits, chosen from measurement (`invis bench-compile`,
/// release build): the largest module they admit compiles in a few seconds
/// and a bounded amount of memory. Ordinary jobs are far inside them: the
/// example jobs have under 200 functions, bodies under 8 KiB and nesting
/// under 20.
pub const SHAPE_LIMITS: ShapeLimits = ShapeLimits {
    functions: 10_000,
    body_bytes: 128 << 10,
    code_bytes: 2 << 20,
    locals: 2_000,
    nesting: 128,
    imports: 64,
    exports: 1_000,
    globals: 1_000,
    data_segments: 1_000,
    element_segments: 100,
    types: 1_000,
    loop_locals: 100_000,
    body_branches: 4_000,
    branches: 50_000,
};

/// Facts read from an admitted module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Functions defined.
    pub functions: u32,
    /// Bytes of all bodies.
    pub code_bytes: u64,
    /// Largest body, in bytes.
    pub largest_body: u32,
    /// Most locals in one function (parameters included).
    pub most_locals: u64,
    /// Deepest nesting in one body.
    pub deepest: u32,
    /// Locals carried around loops, summed over the module
    /// ([`ShapeLimits::loop_locals`]).
    pub loop_locals: u64,
    /// Branch points, summed over the module ([`ShapeLimits::branches`]).
    pub branches: u64,
    /// Most branch points in one body.
    pub most_branches: u64,
}

fn refuse(why: String) -> JobError {
    JobError::InvalidModule(why)
}

fn over(what: &str, n: u64, limit: u32) -> Result<(), JobError> {
    if n > u64::from(limit) {
        return Err(refuse(format!(
            "the module has {what} {n}, more than the limit of {limit} (runtime/ABI.md, \"Module limits\")"
        )));
    }
    Ok(())
}

/// Reads `bytes` once and checks it against `limits`. Never compiles and
/// never panics on malformed input (a malformed module is refused with the
/// parser's message).
pub fn check(bytes: &[u8], limits: &ShapeLimits) -> Result<Shape, JobError> {
    let bad = |e: wasmparser::BinaryReaderError| {
        refuse(format!(
            "the module does not parse at byte {}: {}",
            e.offset(),
            e.message()
        ))
    };
    let mut shape = Shape::default();
    // Parameter counts of each function type, and the type of each defined
    // function, to count a function's parameters among its locals.
    let mut params: Vec<u32> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new();
    let mut body_index = 0usize;
    let (mut has_run, mut has_memory) = (false, false);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(bad)? {
            Payload::TypeSection(r) => {
                over("function types:", u64::from(r.count()), limits.types)?;
                for t in r.into_iter_err_on_gc_types() {
                    let n = t.map_err(bad)?.params().len();
                    params.push(u32::try_from(n).unwrap_or(u32::MAX));
                }
            }
            Payload::ImportSection(r) => {
                over("imports:", u64::from(r.count()), limits.imports)?;
                for i in r.into_imports() {
                    let i = i.map_err(bad)?;
                    if i.module != ABI_MODULE || !matches!(i.ty, TypeRef::Func(_)) {
                        return Err(refuse(format!(
                            "import `{}.{}` is not part of the host ABI `{ABI_MODULE}`; jobs have no filesystem, network, clock or other imports",
                            i.module.escape_debug(),
                            i.name.escape_debug()
                        )));
                    }
                }
            }
            Payload::FunctionSection(r) => {
                over("functions:", u64::from(r.count()), limits.functions)?;
                shape.functions = r.count();
                for t in r {
                    func_types.push(t.map_err(bad)?);
                }
            }
            Payload::GlobalSection(r) => over("globals:", u64::from(r.count()), limits.globals)?,
            Payload::ExportSection(r) => {
                over("exports:", u64::from(r.count()), limits.exports)?;
                for e in r {
                    let e = e.map_err(bad)?;
                    match (e.name, e.kind) {
                        ("run", ExternalKind::Func) => has_run = true,
                        ("memory", ExternalKind::Memory) => has_memory = true,
                        _ => {}
                    }
                }
            }
            Payload::StartSection { .. } => {
                return Err(refuse(
                    "the module has a start function; a job's code runs only through its `run` export, \
                     under the job's fuel and deadline (move the start function's work into `run`)"
                        .into(),
                ))
            }
            Payload::ElementSection(r) => {
                over("element segments:", u64::from(r.count()), limits.element_segments)?
            }
            Payload::DataSection(r) => over("data segments:", u64::from(r.count()), limits.data_segments)?,
            Payload::CodeSectionStart { size, .. } => {
                over("code section bytes:", u64::from(size), limits.code_bytes)?;
                shape.code_bytes = u64::from(size);
            }
            Payload::CodeSectionEntry(body) => {
                let index = body_index;
                body_index += 1;
                let size = u32::try_from(body.range().len()).unwrap_or(u32::MAX);
                if size > limits.body_bytes {
                    return Err(refuse(format!(
                        "function {index} has a body of {size} bytes, more than the limit of {} \
                         (runtime/ABI.md, \"Module limits\")",
                        limits.body_bytes
                    )));
                }
                shape.largest_body = shape.largest_body.max(size);
                let own = func_types
                    .get(index)
                    .and_then(|t| params.get(usize::try_from(*t).ok()?))
                    .copied()
                    .unwrap_or(0);
                let mut locals = u64::from(own);
                for l in body.get_locals_reader().map_err(bad)? {
                    let (n, _) = l.map_err(bad)?;
                    locals = locals.saturating_add(u64::from(n));
                }
                if locals > u64::from(limits.locals) {
                    return Err(refuse(format!(
                        "function {index} has {locals} locals, more than the limit of {} \
                         (runtime/ABI.md, \"Module limits\")",
                        limits.locals
                    )));
                }
                shape.most_locals = shape.most_locals.max(locals);
                let (depth, carried, branches) =
                    nesting(&body, limits.nesting, locals, &params).map_err(|e| match e {
                        Nesting::Parse(e) => bad(e),
                        Nesting::Deep => refuse(format!(
                        "function {index} nests blocks more than {} deep (runtime/ABI.md, \"Module limits\")",
                        limits.nesting
                    )),
                    })?;
                shape.deepest = shape.deepest.max(depth);
                if branches > u64::from(limits.body_branches) {
                    return Err(refuse(format!(
                        "function {index} has {branches} branch points (br_if, br_table, if, block, loop; \
                         indirect calls and table accesses count 3), more than the limit of {} per function \
                         (runtime/ABI.md, \"Module limits\"); split it into smaller functions",
                        limits.body_branches
                    )));
                }
                shape.most_branches = shape.most_branches.max(branches);
                shape.branches = shape.branches.saturating_add(branches);
                if shape.branches > u64::from(limits.branches) {
                    return Err(refuse(format!(
                        "the module has more than {} branch points (br_if, br_table, if, block, loop; \
                         indirect calls and table accesses count 3) (runtime/ABI.md, \"Module limits\")",
                        limits.branches
                    )));
                }
                shape.loop_locals = shape.loop_locals.saturating_add(carried);
                if shape.loop_locals > u64::from(limits.loop_locals) {
                    return Err(refuse(format!(
                        "the module carries more than {} locals around loops (each loop counts the distinct \
                         locals used inside it; at function {index}), more than the compiler is allowed to \
                         work on (runtime/ABI.md, \"Module limits\"); use fewer locals inside deeply nested loops",
                        limits.loop_locals
                    )));
                }
            }
            _ => {}
        }
    }
    if !has_run {
        return Err(refuse("the module does not export `run`".into()));
    }
    if !has_memory {
        return Err(refuse("the module does not export its `memory`".into()));
    }
    Ok(shape)
}

enum Nesting {
    Parse(wasmparser::BinaryReaderError),
    Deep,
}

/// The deepest nesting of structured control in one body, stopping as soon
/// as it passes `limit`, and the locals carried around its loops: for each
/// `loop`, the distinct locals (of `locals`) used inside it, nested blocks
/// included, plus the loop's own parameters (`params` of each type).
fn nesting(
    body: &wasmparser::FunctionBody<'_>,
    limit: u32,
    locals: u64,
    params: &[u32],
) -> Result<(u32, u64, u64), Nesting> {
    let mut ops = body.get_operators_reader().map_err(Nesting::Parse)?;
    let (mut depth, mut deepest) = (0u32, 0u32);
    // One bit per local for each open loop; whether each open block is a loop.
    let words = usize::try_from(locals.div_ceil(64)).unwrap_or(0);
    let mut loops: Vec<Vec<u64>> = Vec::new();
    let mut spare: Vec<Vec<u64>> = Vec::new();
    let mut kinds: Vec<bool> = Vec::new();
    let (mut carried, mut branches): (u64, u64) = (0, 0);
    while !ops.eof() {
        let op = ops.read().map_err(Nesting::Parse)?;
        branches += match &op {
            Operator::BrIf { .. }
            | Operator::BrTable { .. }
            | Operator::If { .. }
            | Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. } => 1,
            Operator::CallIndirect { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::TableGet { .. }
            | Operator::TableSet { .. } => 3,
            _ => 0,
        };
        let local = match &op {
            Operator::LocalGet { local_index }
            | Operator::LocalSet { local_index }
            | Operator::LocalTee { local_index } => Some(*local_index),
            _ => None,
        };
        if let (Some(i), Some(set)) = (local, loops.last_mut()) {
            let i = usize::try_from(i).unwrap_or(usize::MAX);
            if let Some(w) = set.get_mut(i / 64) {
                *w |= 1u64 << (i % 64);
            }
        }
        match op {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::TryTable { .. }
            | Operator::Try { .. } => {
                depth += 1;
                if depth > limit {
                    return Err(Nesting::Deep);
                }
                deepest = deepest.max(depth);
                if let Operator::Loop { blockty } = op {
                    if let wasmparser::BlockType::FuncType(t) = blockty {
                        let n = usize::try_from(t).ok().and_then(|t| params.get(t)).copied();
                        carried = carried.saturating_add(u64::from(n.unwrap_or(0)));
                    }
                    let mut set = spare.pop().unwrap_or_default();
                    set.clear();
                    set.resize(words, 0);
                    loops.push(set);
                }
                kinds.push(matches!(op, Operator::Loop { .. }));
            }
            Operator::End | Operator::Delegate { .. } => {
                depth = depth.saturating_sub(1);
                if kinds.pop() == Some(true) {
                    if let Some(set) = loops.pop() {
                        carried = carried.saturating_add(set.iter().map(|w| u64::from(w.count_ones())).sum());
                        if let Some(outer) = loops.last_mut() {
                            for (o, w) in outer.iter_mut().zip(&set) {
                                *o |= w;
                            }
                        }
                        spare.push(set);
                    }
                }
            }
            _ => {}
        }
    }
    Ok((deepest, carried, branches))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(body: &str) -> Vec<u8> {
        wat::parse_str(format!(r#"(module (memory (export "memory") 1) {body})"#)).unwrap_or_default()
    }

    fn run_fn(extra: &str) -> Vec<u8> {
        module(&format!(
            r#"(func (export "run") (result i32) i32.const 0) {extra}"#
        ))
    }

    fn refused(bytes: &[u8], limits: &ShapeLimits) -> String {
        match check(bytes, limits) {
            Err(JobError::InvalidModule(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_ordinary_module_is_admitted_with_its_shape() {
        let bytes = run_fn(r#"(func (param i32) (local i64 i64) (block (loop (br 1))))"#);
        let s = check(&bytes, &SHAPE_LIMITS).unwrap_or_default();
        assert_eq!(s.functions, 2);
        assert_eq!(s.most_locals, 3);
        assert_eq!(s.deepest, 2);
    }

    #[test]
    fn too_many_functions_are_refused_before_compiling() {
        let many = "(func)".repeat(11);
        let limits = ShapeLimits {
            functions: 10,
            ..SHAPE_LIMITS
        };
        assert!(refused(&run_fn(&many), &limits).contains("functions: 12"));
        assert!(check(&run_fn(&"(func)".repeat(9)), &limits).is_ok());
    }

    #[test]
    fn a_large_body_many_locals_and_deep_nesting_are_refused() {
        let limits = ShapeLimits {
            body_bytes: 64,
            locals: 4,
            nesting: 3,
            ..SHAPE_LIMITS
        };
        let big = format!("(func {})", "i32.const 1 drop ".repeat(40));
        assert!(refused(&run_fn(&big), &limits).contains("body of"));
        let locals = "(func (param i32 i32) (local i32 i32 i32))";
        assert!(refused(&run_fn(locals), &limits).contains("5 locals"));
        let deep = "(func (block (block (block (block)))))";
        assert!(refused(&run_fn(deep), &limits).contains("nests blocks more than 3"));
        assert!(check(&run_fn("(func (block (block (block))))"), &limits).is_ok());
    }

    #[test]
    fn locals_carried_around_nested_loops_are_counted_and_limited() {
        // Two locals used inside two nested loops, and one more in the
        // outer loop only: the inner loop carries 2, the outer 3.
        let f = "(func (local i32 i32 i32) (loop (local.set 2 (i32.const 1)) (loop (local.set 0 (local.get 1)))))";
        let s = check(&run_fn(f), &SHAPE_LIMITS).unwrap_or_default();
        assert_eq!(s.loop_locals, 5);
        // Blocks and ifs carry nothing of their own, but pass their locals to
        // the enclosing loop; a loop's parameters count too.
        let f = "(type $p (func (param i32 i32))) (func (local i32) (i32.const 0) (i32.const 0) \
                 (loop (type $p) (param i32 i32) drop drop (block (local.set 0 (i32.const 1)))))";
        let s = check(&run_fn(f), &SHAPE_LIMITS).unwrap_or_default();
        assert_eq!(s.loop_locals, 3);
        let limits = ShapeLimits {
            loop_locals: 4,
            ..SHAPE_LIMITS
        };
        let f = "(func (local i32 i32 i32) (loop (local.set 2 (i32.const 1)) (loop (local.set 0 (local.get 1)))))";
        assert!(refused(&run_fn(f), &limits).contains("locals around loops"));
    }

    /// The module that compiled for over 20 s within every other limit:
    /// 1,990 locals updated inside loops nested 120 deep, three times.
    #[test]
    fn many_locals_inside_deep_loops_are_refused_before_compiling() {
        let locals = 1990;
        let mut body = String::new();
        for rep in 0..3 {
            body.push_str(&"(loop ".repeat(120));
            for l in 0..locals {
                body.push_str(&format!(
                    "(local.set {l} (i64.add (local.get {l}) (i64.const {rep}))) "
                ));
            }
            body.push_str(&")".repeat(120));
        }
        let f = format!("(func (local {}) {body})", "i64 ".repeat(locals));
        assert!(refused(&run_fn(&f), &SHAPE_LIMITS).contains("locals around loops"));
    }

    #[test]
    fn the_example_jobs_are_far_inside_the_loop_limit() {
        for job in ["bank_credit", "insurer_risk", "city_planner"] {
            let path = format!("{}/jobs/{job}/job.wasm", env!("CARGO_MANIFEST_DIR"));
            let bytes = std::fs::read(&path).unwrap_or_default();
            let s = check(&bytes, &SHAPE_LIMITS).unwrap_or_default();
            assert!(s.functions > 0, "{job}");
            assert!(
                s.loop_locals * 10 < u64::from(SHAPE_LIMITS.loop_locals),
                "{job}: {}",
                s.loop_locals
            );
        }
    }

    #[test]
    fn branchy_bodies_and_modules_are_refused_before_compiling() {
        // 24,000 `br_if`s in one body compiled for 5.7 s.
        let f = format!(
            "(func (local i32) (block {}))",
            "(br_if 0 (local.get 0)) ".repeat(4_500)
        );
        assert!(refused(&run_fn(&f), &SHAPE_LIMITS).contains("branch points"));
        let f = "(type $t (func)) (table 1 funcref) (func (call_indirect (type $t) (i32.const 0)) (br_if 0 (i32.const 1)))";
        let s = check(&run_fn(f), &SHAPE_LIMITS).unwrap_or_default();
        assert_eq!((s.branches, s.most_branches), (4, 4));
        let limits = ShapeLimits {
            branches: 7,
            ..SHAPE_LIMITS
        };
        let two = "(func (br_if 0 (i32.const 1)) (br_if 0 (i32.const 1)))".repeat(4);
        assert!(refused(&run_fn(&two), &limits).contains("module has more than 7 branch points"));
    }

    #[test]
    fn a_start_function_is_refused() {
        let m = run_fn(r#"(func $s (loop (br 0))) (start $s)"#);
        assert!(refused(&m, &SHAPE_LIMITS).contains("start function"));
    }

    #[test]
    fn imports_outside_the_abi_and_missing_exports_are_refused() {
        let wasi = wat::parse_str(
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
               (memory (export "memory") 1) (func (export "run") (result i32) i32.const 0))"#,
        )
        .unwrap_or_default();
        assert!(refused(&wasi, &SHAPE_LIMITS).contains("not part of the host ABI"));
        let global = wat::parse_str(
            r#"(module (import "invis_v1" "g" (global i32)) (memory (export "memory") 1)
               (func (export "run") (result i32) i32.const 0))"#,
        )
        .unwrap_or_default();
        assert!(refused(&global, &SHAPE_LIMITS).contains("not part of the host ABI"));
        assert!(refused(&module("(func)"), &SHAPE_LIMITS).contains("`run`"));
        let no_mem =
            wat::parse_str(r#"(module (func (export "run") (result i32) i32.const 0))"#).unwrap_or_default();
        assert!(refused(&no_mem, &SHAPE_LIMITS).contains("memory"));
    }

    /// Random mutations of a module that uses every construct the pass
    /// counts: refused or admitted, never a panic.
    #[test]
    fn random_mutations_never_panic() {
        let good = run_fn(
            r#"(type $t (func (param i64) (result i64))) (table 2 funcref) (global (mut i32) (i32.const 0))
               (data (i32.const 8) "abc")
               (func (param i64) (result i64) (local i32 i64)
                 (loop (param i64) (result i64) (block (br_if 1 (local.get 1)) (local.set 2 (i64.const 1)))
                   (br_table 0 0 (local.get 1)))
                 (if (local.get 1) (then (drop (call_indirect (type $t) (i64.const 1) (i32.const 0))))))"#,
        );
        assert!(check(&good, &SHAPE_LIMITS).is_ok());
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..30_000 {
            let mut m = good.clone();
            for _ in 0..1 + next() % 4 {
                let len = m.len().max(1) as u64;
                let at = usize::try_from(next() % len).unwrap_or(0);
                match next() % 4 {
                    0 => {
                        if let Some(b) = m.get_mut(at) {
                            *b = (next() & 0xff) as u8;
                        }
                    }
                    1 => m.truncate(at),
                    2 => m.insert(at.min(m.len()), (next() & 0xff) as u8),
                    _ => {
                        if at < m.len() {
                            m.remove(at);
                        }
                    }
                }
            }
            let _ = check(&m, &SHAPE_LIMITS);
        }
    }

    #[test]
    fn malformed_bytes_are_refused_without_panicking() {
        let good = run_fn("(func (block))");
        for cut in 0..good.len() {
            let _ = check(good.get(..cut).unwrap_or_default(), &SHAPE_LIMITS);
        }
        let mut flipped = good.clone();
        for i in 8..flipped.len() {
            if let Some(b) = flipped.get_mut(i) {
                *b ^= 0xff;
            }
            let _ = check(&flipped, &SHAPE_LIMITS);
            if let Some(b) = flipped.get_mut(i) {
                *b ^= 0xff;
            }
        }
    }
}
