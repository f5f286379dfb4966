//! `runtime/ABI.md` is the contract with guests: its tables are read here
//! and checked against the host, so the document and the code cannot drift
//! apart (issue 19). Every function taking a length refuses a negative one
//! with `-1`, and `udf_register` returns only the codes its row lists.

use super::udf::{input as scoped_input, scope};
use super::{input, rt};
use crate::host::{abi_functions, code};
use crate::JobLimits;
use wasmtime::ValType;

const ABI: &str = include_str!("../../ABI.md");

/// Cells of the Markdown table rows of ABI.md whose first cell starts with
/// `prefix`.
fn rows(prefix: &str) -> Vec<Vec<String>> {
    ABI.lines()
        .filter_map(|l| l.trim().strip_prefix('|'))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>())
        .filter(|cells| cells.first().is_some_and(|c| c.starts_with(prefix)))
        .collect()
}

fn ty(v: &ValType) -> &'static str {
    match v {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        ValType::F32 => "f32",
        ValType::F64 => "f64",
        _ => "?",
    }
}

/// The documented functions: name, signature and the "does" cell.
fn documented() -> Vec<(String, String, String)> {
    rows("`")
        .into_iter()
        // Host functions are written with their parameters, `name(a, b)`;
        // the exports table's `run` is not one.
        .filter(|c| c.first().is_some_and(|s| s.contains('(')) && c.get(1).is_some_and(|s| s.contains("->")))
        .filter_map(|c| {
            let name = c.first()?.trim_matches('`').split('(').next()?.to_string();
            let sig = c.get(1)?.trim_matches('`').to_string();
            Some((name, sig, c.get(2)?.clone()))
        })
        .collect()
}

#[test]
fn the_function_table_is_the_host_abi() {
    let mut doc: Vec<(String, String)> = documented().into_iter().map(|(n, s, _)| (n, s)).collect();
    let mut host: Vec<(String, String)> = abi_functions()
        .iter()
        .map(|(n, params, results)| {
            let p: Vec<&str> = params.iter().map(ty).collect();
            let r: Vec<&str> = results.iter().map(ty).collect();
            (n.to_string(), format!("({}) -> {}", p.join(", "), r.join(", ")))
        })
        .collect();
    doc.sort();
    host.sort();
    assert_eq!(
        doc, host,
        "runtime/ABI.md's function table and host::abi_functions differ"
    );
}

#[test]
fn the_error_code_table_is_the_sdk_codes() {
    let doc: Vec<(i32, String)> = rows("-")
        .into_iter()
        .filter_map(|c| Some((c.first()?.parse().ok()?, c.get(1)?.trim_matches('`').to_string())))
        .collect();
    let host = vec![
        (code::INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (code::POLICY_VIOLATION, "POLICY_VIOLATION"),
        (code::BUDGET_EXHAUSTED, "BUDGET_EXHAUSTED"),
        (code::ACCESS_CLOSED, "ACCESS_CLOSED"),
        (code::INVALID_QUERY, "INVALID_QUERY"),
        (code::LIMIT_EXCEEDED, "LIMIT_EXCEEDED"),
        (code::NO_RESULT, "NO_RESULT"),
        (code::BUFFER_TOO_SMALL, "BUFFER_TOO_SMALL"),
        (code::INTERNAL, "INTERNAL"),
    ];
    let host: Vec<(i32, String)> = host.into_iter().map(|(c, n)| (c, n.to_string())).collect();
    assert_eq!(doc, host);
}

/// The codes the row of `name` lists after "Returns" (or every `-N` in it).
fn listed_codes(name: &str) -> Vec<i32> {
    let does = documented()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, d)| d)
        .unwrap_or_default();
    does.split('`')
        .filter_map(|s| s.strip_prefix('-').and_then(|n| n.parse::<i32>().ok()))
        .map(|n| -n)
        .collect()
}

/// A job that calls every function taking a length with a length of -1
/// (and a valid pointer) and emits each return value as 8 bytes.
#[test]
fn every_length_argument_refuses_a_negative_length_with_minus_one() {
    let calls: Vec<(String, String)> = abi_functions()
        .iter()
        .filter(|(_, p, _)| matches!(p.as_slice(), [ValType::I32, ValType::I32, ..]))
        .map(|(n, p, r)| {
            let extra = if p.len() == 4 {
                "(f64.const 0) (f64.const 1)"
            } else {
                ""
            };
            let call = format!("(call ${n} (i32.const 0) (i32.const -1) {extra})");
            let widened = match r.first() {
                Some(ValType::I64) => call,
                _ => format!("(i64.extend_i32_s {call})"),
            };
            (n.to_string(), widened)
        })
        .collect();
    assert!(
        calls.len() >= 6,
        "every (ptr, len) function is covered: {calls:?}"
    );
    let imports: String = abi_functions()
        .iter()
        .map(|(n, p, r)| {
            let p: Vec<&str> = p.iter().map(ty).collect();
            let r: Vec<&str> = r.iter().map(ty).collect();
            format!(
                r#"(import "invis_v1" "{n}" (func ${n} (param {}) (result {})))"#,
                p.join(" "),
                r.join(" ")
            )
        })
        .collect();
    let body: String = calls
        .iter()
        .enumerate()
        .map(|(i, (_, c))| format!("(i64.store (i32.const {}) {c})", 1024 + 8 * i))
        .collect();
    let src = format!(
        r#"(module {imports} (memory (export "memory") 1)
  (func (export "run") (result i32)
    {body}
    (drop (call $emit (i32.const 1024) (i32.const {})))
    (i32.const 0)))"#,
        8 * calls.len()
    );
    let (r, t) = rt();
    let bytes = wat::parse_str(&src).unwrap();
    // With and without a data door: the length is checked first either way.
    let with_scope = {
        let (scope, _acc) = t.block_on(scope());
        r.run(&bytes, scoped_input(&t, scope, JobLimits::default()))
    };
    for out in [r.run(&bytes, input(&t, JobLimits::default())), with_scope] {
        let emitted = out.result.unwrap();
        let got: Vec<i64> = emitted
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        for ((name, _), code) in calls.iter().zip(&got) {
            assert_eq!(*code, -1, "`{name}` with a negative length returned {code}");
        }
    }
}

/// Registers `name` (`name_len` bytes at 0) with bounds `[lo, hi]`
/// `times` times in a row and emits the last return value.
fn register(funcs: &str, name: &str, lo: f64, hi: f64, times: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (import "invis_v1" "udf_register" (func $udf_register (param i32 i32 f64 f64) (result i32)))
  (import "invis_v1" "emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $g (mut f64) (f64.const 0))
  (data (i32.const 0) "{name}")
  {funcs}
  (func (export "run") (result i32)
    (local $i i32) (local $r i32)
    (loop $again
      (local.set $r (call $udf_register (i32.const 0) (i32.const {len}) (f64.const {lo}) (f64.const {hi})))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {times}))))
    (i32.store (i32.const 512) (local.get $r))
    (drop (call $emit (i32.const 512) (i32.const 4)))
    (i32.const 0)))"#,
        len = name.len(),
    ))
    .unwrap()
}

#[test]
fn udf_register_returns_only_the_codes_its_row_lists() {
    let listed = listed_codes("udf_register");
    assert!(
        listed.contains(&0) || listed.len() >= 5,
        "the row lists its codes: {listed:?}"
    );
    let double = r#"(func (export "double") (param f64) (result f64) local.get 0 local.get 0 f64.add)"#;
    let stateful =
        r#"(func (export "bump") (param f64) (result f64) (global.set $g (local.get 0)) local.get 0)"#;
    // (case, module, with a data door, expected code)
    let cases = [
        (
            "an invalid name",
            register(double, "no spaces", 0.0, 1.0, 1),
            true,
            code::INVALID_ARGUMENT,
        ),
        (
            "a name the module does not export",
            register(double, "missing", 0.0, 1.0, 1),
            true,
            code::INVALID_ARGUMENT,
        ),
        (
            "bounds with lo > hi",
            register(double, "double", 2.0, 1.0, 1),
            true,
            code::INVALID_ARGUMENT,
        ),
        (
            "a stateful function",
            register(stateful, "bump", 0.0, 1.0, 1),
            true,
            code::POLICY_VIOLATION,
        ),
        (
            "no data door",
            register(double, "double", 0.0, 1.0, 1),
            false,
            code::ACCESS_CLOSED,
        ),
        (
            "a name taken",
            register(double, "double", 0.0, 1.0, 2),
            true,
            code::INVALID_QUERY,
        ),
        // Issue 19 review: a refused registration must not use up one of
        // the job's row-function instances, or the 17th attempt answers
        // -2 ("not a stateless row function") for a name that is taken.
        (
            "a name taken, twenty times",
            register(double, "double", 0.0, 1.0, 20),
            true,
            code::INVALID_QUERY,
        ),
        (
            "a built-in function's name, twenty times",
            register(&double.replace("\"double\"", "\"abs\""), "abs", 0.0, 1.0, 20),
            true,
            code::INVALID_QUERY,
        ),
        (
            "a good registration",
            register(double, "double", 0.0, 1.0, 1),
            true,
            0,
        ),
    ];
    let (r, t) = rt();
    for (what, bytes, scoped, want) in cases {
        let out = if scoped {
            let (scope, _acc) = t.block_on(scope());
            r.run(&bytes, scoped_input(&t, scope, JobLimits::default()))
        } else {
            r.run(&bytes, input(&t, JobLimits::default()))
        };
        let emitted = out.result.unwrap();
        let got = i32::from_le_bytes(emitted.as_slice().try_into().unwrap());
        assert_eq!(got, want, "{what}");
        assert!(
            got == 0 || listed.contains(&got),
            "{what}: code {got} is not in ABI.md's udf_register row {listed:?}"
        );
    }
}
