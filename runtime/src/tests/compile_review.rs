//! Issue 19 review: modules inside the shape limits that are hard for the
//! compiler. The measurements run by hand:
//! `cargo test -p runtime compile_review -- --ignored --nocapture`.

use crate::shape::{check, SHAPE_LIMITS};
use std::fmt::Write;
use std::time::Instant;

fn module(funcs: &str) -> Vec<u8> {
    let text = format!(
        r#"(module (memory (export "memory") 1) (table 10 funcref) (type $t (func (param i64) (result i64)))
           (func (export "run") (result i32) i32.const 0) {funcs})"#
    );
    wat::parse_str(text).unwrap()
}

/// `n` functions of `body` with `locals` i64 locals.
fn funcs(n: usize, locals: usize, body: &str) -> String {
    let mut s = String::new();
    for _ in 0..n {
        let _ = write!(s, "(func (local {}) {body})", "i64 ".repeat(locals));
    }
    s
}

fn measure(name: &str, bytes: &[u8]) {
    let t = Instant::now();
    let shape = check(bytes, &SHAPE_LIMITS);
    println!(
        "{name}: {} bytes, shape {:?} in {:?}",
        bytes.len(),
        shape,
        t.elapsed()
    );
    if shape.is_err() {
        return;
    }
    let rt = crate::Runtime::new().unwrap();
    let t = Instant::now();
    let r = rt.load(bytes).map(|(i, _)| i.compile_ms);
    println!("{name}: compile {:?} -> {r:?}", t.elapsed());
}

/// Loops nested deep, the innermost reading every local: block parameters
/// for every local at every loop header.
#[test]
#[ignore]
fn loops_times_locals() {
    let locals = 1990;
    let depth = 120;
    let mut body = String::new();
    for rep in 0..3 {
        for _ in 0..depth {
            body.push_str("(loop ");
        }
        for l in 0..locals {
            let _ = write!(
                body,
                "(local.set {l} (i64.add (local.get {l}) (i64.const {rep}))) "
            );
        }
        for _ in 0..depth {
            body.push(')');
        }
    }
    let per_body = module(&funcs(1, locals, &body)).len();
    let n = ((120 << 10) / per_body).max(1);
    println!("one body ~{per_body} bytes, {n} bodies");
    measure("loops x locals, 1 body", &module(&funcs(1, locals, &body)));
    measure("loops x locals, many", &module(&funcs(n.min(16), locals, &body)));
}

/// Many `call_indirect`s (and memory operations): much native code per
/// byte of module.
#[test]
#[ignore]
fn indirect_calls_and_memory() {
    let bodies: usize = std::env::var("BODIES")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    let mut body = String::new();
    let calls: usize = std::env::var("CALLS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(12_000);
    for i in 0..calls {
        let _ = write!(
            body,
            "(drop (call_indirect (type $t) (i64.const {i}) (i32.const {})))",
            i % 10
        );
    }
    let bytes = module(&funcs(bodies, 1, &body));
    println!("call_indirect: shape {:?}", check(&bytes, &SHAPE_LIMITS));
    raw_compile(&format!("call_indirect x {bodies}"), &bytes);
    let mut body = String::new();
    for i in 0..9_000 {
        let _ = write!(body, "(i64.store (i32.const {}) (i64.load (local.get 1)))", i * 8);
    }
    let funcs: String = (0..bodies)
        .map(|_| format!("(func (local i64 i32) {body})"))
        .collect();
    let bytes = module(&funcs);
    println!("loads/stores: shape {:?}", check(&bytes, &SHAPE_LIMITS));
    raw_compile(&format!("loads/stores x {bodies}"), &bytes);
}

/// Many `select`s and `br_table`s in nested blocks.
#[test]
#[ignore]
fn selects_and_br_tables() {
    let mut body = String::new();
    for _ in 0..100 {
        body.push_str("(block ");
    }
    for i in 0..3000 {
        let targets: String = (0..100).map(|t| format!("{} ", (t + i) % 100)).collect();
        let _ = write!(body, "(br_table {targets} 0 (i32.wrap_i64 (local.get 0)))");
    }
    for _ in 0..100 {
        body.push(')');
    }
    measure("br_table", &module(&funcs(1, 1, &body)));
}

fn raw_compile(name: &str, bytes: &[u8]) {
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true);
    config.epoch_interruption(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let t = Instant::now();
    let r = wasmtime::Module::from_binary(&engine, bytes).map(|_| ());
    println!(
        "{name}: {} bytes, raw compile {:?} {r:?}",
        bytes.len(),
        t.elapsed()
    );
}

fn nested(locals: usize, depth: usize, reps: usize) -> Vec<u8> {
    let mut body = String::new();
    for rep in 0..reps {
        for _ in 0..depth {
            body.push_str("(loop ");
        }
        for l in 0..locals {
            let _ = write!(
                body,
                "(local.set {l} (i64.add (local.get {l}) (i64.const {rep}))) "
            );
        }
        for _ in 0..depth {
            body.push(')');
        }
    }
    module(&funcs(1, locals, &body))
}

#[test]
#[ignore]
fn loops_times_locals_scaling() {
    let which = std::env::var("CASE").unwrap_or_default();
    for (name, l, d, r) in [
        ("a", 1990, 120, 1),
        ("b", 200, 120, 10),
        ("c", 1990, 12, 3),
        ("d", 1990, 1, 3),
        ("e", 500, 60, 1),
        ("f", 1000, 120, 1),
        ("g", 1990, 50, 1),
        ("h", 830, 120, 1),
        ("i", 300, 120, 2),
    ] {
        if which.is_empty() || which.contains(name) {
            let bytes = nested(l, d, r);
            println!("{name}: shape {:?}", check(&bytes, &SHAPE_LIMITS));
            raw_compile(&format!("{name}: locals {l} depth {d} reps {r}"), &bytes);
        }
    }
}

/// 12,000 of one instruction in one body, compiled.
#[test]
#[ignore]
fn one_instruction_many_times() {
    let ops = [
        ("call", "(drop (call 0))"),
        (
            "memory.fill",
            "(memory.fill (i32.const 0) (i32.const 0) (i32.const 8))",
        ),
        ("memory.grow", "(drop (memory.grow (i32.const 0)))"),
        ("table.get", "(drop (table.get (i32.const 1)))"),
        ("i64.div_s", "(drop (i64.div_s (local.get 0) (local.get 0)))"),
        (
            "select",
            "(local.set 0 (select (local.get 0) (i64.const 1) (i32.wrap_i64 (local.get 0))))",
        ),
        ("br_if", "(br_if 0 (i32.wrap_i64 (local.get 0)))"),
        ("global", "(global.set 0 (i64.add (global.get 0) (local.get 0)))"),
        (
            "f64.nearest",
            "(drop (f64.nearest (f64.convert_i64_s (local.get 0))))",
        ),
        (
            "i64.trunc",
            "(drop (i64.trunc_f64_s (f64.convert_i64_s (local.get 0))))",
        ),
    ];
    let which = std::env::var("OP").unwrap_or_default();
    for (name, op) in ops {
        if !which.is_empty() && !which.split(',').any(|w| w == name) {
            continue;
        }
        let body = format!("(block {})", op.repeat(12_000));
        let text = format!(
            r#"(module (memory (export "memory") 1) (table 10 funcref) (global (mut i64) (i64.const 0))
               (func (export "run") (result i32) i32.const 0) (func (local i64) {body}))"#
        );
        let bytes = wat::parse_str(text).unwrap();
        println!(
            "{name}: shape {:?}",
            check(&bytes, &SHAPE_LIMITS).map(|s| s.largest_body)
        );
        raw_compile(name, &bytes);
    }
}

/// `BODIES` bodies of `N` `br_if`s (or `table.get`s with `OP=table.get`).
#[test]
#[ignore]
fn branches_per_body() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(4000);
    let bodies: usize = std::env::var("BODIES")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    let op = match std::env::var("OP").as_deref() {
        Ok("table.get") => "(drop (table.get (i32.const 1)))",
        _ => "(br_if 0 (i32.wrap_i64 (local.get 0)))",
    };
    let f = format!("(func (local i64) (block {}))", op.repeat(n));
    let text = format!(
        r#"(module (memory (export "memory") 1) (table 10 funcref)
           (func (export "run") (result i32) i32.const 0) {})"#,
        f.repeat(bodies)
    );
    let bytes = wat::parse_str(text).unwrap();
    println!("shape {:?}", check(&bytes, &SHAPE_LIMITS));
    raw_compile(&format!("{n} x {bodies}"), &bytes);
}

#[test]
#[ignore]
fn example_jobs_compile() {
    for job in ["bank_credit", "insurer_risk"] {
        let path = format!("{}/jobs/{job}/job.wasm", env!("CARGO_MANIFEST_DIR"));
        raw_compile(job, &std::fs::read(path).unwrap());
    }
}

/// A tiny module whose data segments lie far apart: how much the compiled
/// image (and the memory image made for copy-on-write) holds.
#[test]
#[ignore]
fn sparse_data_segments() {
    let off: u32 = std::env::var("OFF")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(15 << 20);
    let text = format!(
        r#"(module (memory (export "memory") 256) (func (export "run") (result i32) i32.const 0)
           (data (i32.const 0) "a") (data (i32.const {off}) "b"))"#
    );
    let bytes = wat::parse_str(text).unwrap();
    let rt = crate::Runtime::new().unwrap();
    let (info, m) = rt.load(&bytes).unwrap();
    let r = m.image_range();
    println!(
        "{} bytes -> image {} bytes; cache holds {} bytes; compile {} ms",
        bytes.len(),
        r.end as usize - r.start as usize,
        rt.cached_bytes(),
        info.compile_ms
    );
}

/// A module of a few bytes takes little of the cache, however far apart
/// its data segments lie.
#[test]
fn sparse_data_segments_take_little_of_the_cache() {
    let text = format!(
        r#"(module (memory (export "memory") 256) (func (export "run") (result i32) i32.const 0)
           (data (i32.const 0) "a") (data (i32.const {}) "b"))"#,
        15 << 20
    );
    let bytes = wat::parse_str(text).unwrap();
    let rt = crate::Runtime::new().unwrap();
    rt.load(&bytes).unwrap();
    assert!(rt.cached_bytes() < 2 << 20, "{} bytes", rt.cached_bytes());
}
