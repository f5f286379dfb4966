//! `invis bench-compile`: what the largest modules the shape limits admit
//! cost to compile (issue 19, `runtime/ABI.md` "Module limits"). Each case
//! is built to sit at the limits in the way that is hardest for the
//! compiler: many functions, a call chain, bodies of the largest size full
//! of arithmetic, an operand stack of tens of thousands of live values,
//! thousands of locals live at once, blocks nested to the limit, a huge
//! `br_table`. For each: the time of the shape check, the compile time on
//! a fresh runtime, the peak resident memory it added and the bytes the
//! cache charges for it. The attacks that the limits refuse are timed too.

use anyhow::{anyhow, Result};
use runtime::shape::{check, SHAPE_LIMITS};
use runtime::Runtime;
use std::fmt::Write as _;
use std::time::Instant;

const RUN: &str = r#"(memory (export "memory") 1) (func (export "run") (result i32) i32.const 0)"#;

/// A module of `run` and the functions in `funcs`.
fn module(funcs: &str) -> Result<Vec<u8>> {
    Ok(wat::parse_str(format!("(module {RUN} {funcs})"))?)
}

/// `n` functions, `per` each, from `body(i)`.
fn functions(n: u32, body: impl Fn(u32) -> String) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&body(i));
    }
    s
}

/// How many functions of `body_bytes` fit in the code limit (besides `run`).
fn largest_bodies() -> u32 {
    (SHAPE_LIMITS.code_bytes / SHAPE_LIMITS.body_bytes).saturating_sub(1)
}

/// Repeats `unit` (of about `unit_bytes` encoded bytes) to just under the
/// body limit.
fn fill(unit: &str, unit_bytes: u32) -> String {
    let n = (SHAPE_LIMITS.body_bytes - 64) / unit_bytes.max(1);
    unit.repeat(n as usize)
}

type Build = Box<dyn Fn() -> Result<Vec<u8>>>;

fn cases() -> Vec<(&'static str, Build)> {
    let most = SHAPE_LIMITS.functions - 1;
    let mut out: Vec<(&'static str, Build)> = Vec::new();
    out.push((
        "most functions, small bodies",
        Box::new(move || {
            module(&functions(most, |_| {
                "(func (param i32) (result i32) local.get 0 i32.const 1 i32.add)".into()
            }))
        }),
    ));
    out.push((
        "most functions, a call chain",
        Box::new(move || {
            module(&functions(most, |i| {
                if i + 1 < most {
                    format!("(func $f{i} (result i32) call $f{})", i + 1)
                } else {
                    format!("(func $f{i} (result i32) i32.const 1)")
                }
            }))
        }),
    ));
    // Bodies spread over the most functions the code limit allows.
    let per = (SHAPE_LIMITS.code_bytes / most).saturating_sub(16);
    let arith_units = per / 9;
    out.push((
        "most functions, code limit spread over them",
        Box::new(move || {
            module(&functions(most, |_| {
                format!(
                    "(func (param i32) (result i32) {} local.get 0)",
                    "local.get 0 i32.const 7 i32.mul local.set 0 ".repeat(arith_units as usize)
                )
            }))
        }),
    ));
    let big = largest_bodies();
    out.push((
        "largest bodies, arithmetic",
        Box::new(move || {
            module(&functions(big, |_| {
                format!(
                    "(func (param i32) (result i32) {} local.get 0)",
                    fill("local.get 0 i32.const 7 i32.mul local.set 0 ", 8)
                )
            }))
        }),
    ));
    out.push((
        "largest bodies, operand stack all live",
        Box::new(move || {
            module(&functions(big, |_| {
                let n = (SHAPE_LIMITS.body_bytes - 64) / 3;
                format!(
                    "(func (result i32) {} {} )",
                    "i32.const 1 ".repeat(n as usize),
                    "i32.add ".repeat(n.saturating_sub(1) as usize)
                )
            }))
        }),
    ));
    let locals = SHAPE_LIMITS.locals;
    out.push((
        "largest bodies, most locals live at once",
        Box::new(move || {
            module(&functions(big, |f| {
                let mut body = String::new();
                let mut x = 12_345u32.wrapping_add(f);
                let mut step = || {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (x >> 8) % locals
                };
                // local.get a, local.get b, i64.add, local.set c: at most 10
                // bytes; the final sum takes 4 bytes per local.
                let units = (SHAPE_LIMITS.body_bytes - 64 - 4 * locals) / 10;
                for _ in 0..units {
                    let _ = write!(
                        body,
                        "local.get {} local.get {} i64.add local.set {} ",
                        step(),
                        step(),
                        step()
                    );
                }
                // Every local is read at the end, so none of it is dead code.
                let sum = "local.get 0 ".to_string()
                    + &(1..locals)
                        .map(|l| format!("local.get {l} i64.add "))
                        .collect::<String>();
                format!(
                    "(func (result i64) (local {}) {body} {sum})",
                    "i64 ".repeat(locals as usize)
                )
            }))
        }),
    ));
    let depth = SHAPE_LIMITS.nesting;
    out.push((
        "blocks nested to the limit, at the branch limits",
        Box::new(move || {
            // One nest: `depth` blocks and a br_table to every level (depth
            // + 1 branch points), as many per body and bodies as the
            // branch limits allow.
            let per_body = (SHAPE_LIMITS.body_branches / (depth + 1)).max(1);
            let bodies = (SHAPE_LIMITS.branches / (per_body * (depth + 1))).max(1);
            module(&functions(bodies, |_| {
                let targets: String = (0..depth).map(|d| format!("{d} ")).collect();
                let nest = format!(
                    "{} local.get 0 br_table {targets} 0 {}",
                    "block ".repeat(depth as usize),
                    "end ".repeat(depth as usize)
                );
                format!("(func (param i32) {})", nest.repeat(per_body as usize))
            }))
        }),
    ));
    out.push((
        "br_ifs at the branch limits",
        Box::new(move || {
            let per_body = SHAPE_LIMITS.body_branches - 10;
            let bodies = SHAPE_LIMITS.branches / (per_body + 1);
            module(&functions(bodies, |_| {
                format!(
                    "(func (param i32) (block {}))",
                    "local.get 0 br_if 0 ".repeat(per_body as usize)
                )
            }))
        }),
    ));
    out.push((
        "largest bodies, one huge br_table",
        Box::new(move || {
            module(&functions(big, |_| {
                let blocks = depth - 1;
                let n = SHAPE_LIMITS.body_bytes - 72 - 3 * blocks;
                let targets: String = (0..n).map(|i| format!("{} ", i % blocks)).collect();
                format!(
                    "(func (param i32) {} local.get 0 br_table {targets} 0 {})",
                    "block ".repeat(blocks as usize),
                    "end ".repeat(blocks as usize)
                )
            }))
        }),
    ));
    let carried = SHAPE_LIMITS.loop_locals;
    out.push((
        "locals updated inside nested loops, at the loop limit",
        Box::new(move || {
            // The most locals, in loops as deep as the loop limit allows.
            let locals = SHAPE_LIMITS.locals.saturating_sub(10);
            let loops = (carried / locals.max(1)).clamp(1, depth);
            let sets: String = (0..locals)
                .map(|l| format!("(local.set {l} (i64.add (local.get {l}) (i64.const 1))) "))
                .collect();
            module(&format!(
                "(func (local {}) {}{sets}{})",
                "i64 ".repeat(locals as usize),
                "(loop ".repeat(loops as usize),
                ")".repeat(loops as usize)
            ))
        }),
    ));
    out
}

/// The attacks of issue 19, which the limits refuse.
fn refused() -> Result<Vec<(&'static str, Vec<u8>)>> {
    Ok(vec![
        ("100,000 empty functions", module(&"(func)".repeat(100_000))?),
        (
            "100,000 functions, a call chain",
            module(&functions(100_000, |i| {
                format!("(func $f{i} call $f{})", (i + 1) % 100_000)
            }))?,
        ),
        (
            "a start function that loops",
            module("(func $s (loop (br 0))) (start $s)")?,
        ),
        (
            "1,990 locals updated inside loops nested 120 deep",
            module(&format!(
                "(func (local {}) {}{}{})",
                "i64 ".repeat(1990),
                "(loop ".repeat(120),
                (0..1990)
                    .map(|l| format!("(local.set {l} (i64.add (local.get {l}) (i64.const 1))) "))
                    .collect::<String>(),
                ")".repeat(120)
            ))?,
        ),
    ])
}

/// Resident and peak resident memory of this process, in bytes (0 where
/// unknown).
pub(crate) fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak resident memory to the current one (Linux).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20))
}

/// Measures case `i` in this process (a fresh one, so that its peak
/// resident memory is the compilation's) and prints one tab-separated line:
/// size, check seconds, compile seconds, peak RSS added, cache bytes and
/// the module's shape.
pub fn measure(i: usize) -> Result<()> {
    let (name, build) = cases().into_iter().nth(i).ok_or_else(|| anyhow!("no case {i}"))?;
    let bytes = build()?;
    let t = Instant::now();
    let shape = check(&bytes, &SHAPE_LIMITS).map_err(|e| anyhow!("{name}: {e}"))?;
    let checked = t.elapsed().as_secs_f64();
    let rt = Runtime::new()?;
    let (rss, _) = memory();
    reset_peak();
    let t = Instant::now();
    // A module the compiler itself refuses (an implementation limit) is
    // reported with what it cost to find out.
    let refused = rt.load(&bytes).err().map(|e| {
        let m = e.to_string();
        format!(
            "; refused by the compiler: {}",
            m.chars().take(120).collect::<String>()
        )
    });
    let compiled = t.elapsed().as_secs_f64();
    let (_, peak) = memory();
    println!(
        "{}\t{checked}\t{compiled}\t{}\t{}\t{} functions, largest body {} B, {} locals, depth {}{}",
        bytes.len(),
        peak.saturating_sub(rss),
        rt.cached_bytes(),
        shape.functions,
        shape.largest_body,
        shape.most_locals,
        shape.deepest,
        refused.unwrap_or_default()
    );
    Ok(())
}

/// Runs the benchmark and prints its table: each admitted case in a child
/// process of its own (`--case i`), then the refused attacks.
pub fn run() -> Result<()> {
    println!(
        "limits: {} functions, {} KiB per body, {} KiB of code, {} locals, nesting {}",
        SHAPE_LIMITS.functions,
        SHAPE_LIMITS.body_bytes >> 10,
        SHAPE_LIMITS.code_bytes >> 10,
        SHAPE_LIMITS.locals,
        SHAPE_LIMITS.nesting
    );
    println!(
        "{:<46} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "admitted module", "size", "check", "compile", "peak +RSS", "cache"
    );
    let exe = std::env::current_exe()?;
    let (mut worst, mut most) = (0f64, 0u64);
    for (i, (name, _)) in cases().into_iter().enumerate() {
        let out = std::process::Command::new(&exe)
            .args(["bench-compile", "--case", &i.to_string()])
            .output()?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(anyhow!("{name}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let f: Vec<&str> = line.split('\t').collect();
        let num = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        worst = worst.max(num(2));
        most = most.max(num(3) as u64);
        println!(
            "{:<46} {:>9} {:>7.1}ms {:>8.2}s {:>11} {:>11}   ({})",
            name,
            mib(num(0) as u64),
            num(1) * 1e3,
            num(2),
            mib(num(3) as u64),
            mib(num(4) as u64),
            f.get(5).unwrap_or(&"")
        );
    }
    println!("\n{:<46} {:>9} {:>9}  refusal", "refused module", "size", "check");
    for (name, bytes) in refused()? {
        let rt = Runtime::new()?;
        let t = Instant::now();
        let why = match rt.load(&bytes) {
            Ok(_) => return Err(anyhow!("{name} was admitted")),
            Err(e) => e.to_string(),
        };
        println!(
            "{:<46} {:>9} {:>7.1}ms  {}",
            name,
            mib(bytes.len() as u64),
            t.elapsed().as_secs_f64() * 1e3,
            why.chars().take(90).collect::<String>()
        );
    }
    println!(
        "\nslowest admitted compilation: {worst:.2} s (deadline {} s); most memory added: {}",
        runtime::MAX_COMPILE.as_secs(),
        mib(most)
    );
    Ok(())
}
