//! The layer rule inside the gateway (issue 17), checked on the sources:
//! records (`records`), stores and services (`store`, `jobs`, `ledger`,
//! `datasets`, `metering`, `local`, ...) sit below the HTTP layer (`api`)
//! and never import from it. Only `api` itself and the composition roots
//! may name it: `lib.rs` (declares the modules and re-exports the router),
//! `main.rs` (the binary: `invis routes` prints the route table) and
//! `server.rs` (builds the router for `invis serve`). Below the API no
//! module uses axum either: services return `ServiceError`, which only
//! `api::error` maps to HTTP.

use std::path::{Path, PathBuf};

/// Files (relative to `src/`, with `/` separators) allowed to name the API.
const COMPOSITION_ROOTS: &[&str] = &["lib.rs", "main.rs", "server.rs"];

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// True when `relative` is the API itself or a composition root.
fn may_name_the_api(relative: &str) -> bool {
    relative == "api.rs" || relative.starts_with("api/") || COMPOSITION_ROOTS.contains(&relative)
}

/// The ways a line of code names the API: its paths (patterns are built
/// with `concat!` so that this file does not match itself), and grouped
/// imports such as `use crate::{api::X, store}`.
fn names_the_api(code: &str) -> bool {
    let paths = [
        concat!("crate", "::api"),
        concat!("super", "::api"),
        concat!("crate", "::router"),
        concat!("gateway", "::api"),
    ];
    let whole = |at: usize, p: &str| {
        !code[at + p.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    };
    if paths
        .iter()
        .any(|p| code.match_indices(p).any(|(at, _)| whole(at, p)))
    {
        return true;
    }
    let group = concat!("crate", "::{");
    code.match_indices(group).any(|(at, _)| {
        let inner = &code[at + group.len()..];
        let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
        inner.split(',').map(str::trim).any(|item| {
            item == "api" || item.starts_with("api::") || item.starts_with("api ") || item == "self::api"
        })
    })
}

/// The code of a source file: comments dropped (doc comments may name the
/// API to explain the layering), `use` statements joined onto one line.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut open_use: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("").trim();
        if code.is_empty() {
            continue;
        }
        if let Some((start, mut acc)) = open_use.take() {
            acc.push_str(code);
            if code.ends_with(';') {
                out.push((start, acc));
            } else {
                open_use = Some((start, acc));
            }
            continue;
        }
        let is_use = code.starts_with("use ") || code.contains(" use ");
        if is_use && !code.ends_with(';') {
            open_use = Some((n + 1, code.to_string()));
        } else {
            out.push((n + 1, code.to_string()));
        }
    }
    out.extend(open_use);
    out
}

/// Every line of code that `offends`, as `src/<file>:<line>: <code>`, in
/// the part of each source file that `checked` picks from its text, over
/// the files (paths relative to `src/`) not `exempt`.
fn offences(
    exempt: impl Fn(&str) -> bool,
    checked: impl Fn(&str) -> &str,
    offends: impl Fn(&str) -> bool,
) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} sources under {}",
        files.len(),
        src.display()
    );
    let mut offences = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        if exempt(&relative) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (line, code) in code_lines(checked(&text)) {
            if offends(&code) {
                offences.push(format!("src/{relative}:{line}: {code}"));
            }
        }
    }
    offences
}

/// Every line of code, outside the API and the composition roots, that
/// `offends`.
fn offences_below_the_api(offends: impl Fn(&str) -> bool) -> Vec<String> {
    offences(may_name_the_api, |text| text, offends)
}

#[test]
fn services_never_import_from_the_api() {
    let offences = offences_below_the_api(names_the_api);
    assert!(
        offences.is_empty(),
        "modules below the HTTP layer import from `api` (move what they need below it, \
         e.g. into `records`, or add a genuine composition root to COMPOSITION_ROOTS):\n{}",
        offences.join("\n")
    );
}

/// Below the API nothing knows HTTP: errors are `ServiceError`s, mapped to
/// statuses and bodies by `api::error` only.
#[test]
fn services_know_no_http() {
    let offences = offences_below_the_api(|code| {
        code.contains(concat!("ax", "um")) || code.contains(concat!("Into", "Response"))
    });
    assert!(
        offences.is_empty(),
        "modules below the HTTP layer use the HTTP framework (HTTP belongs in `api`):\n{}",
        offences.join("\n")
    );
}

/// Only the store knows it is SQLite: everyone else works through
/// `store::Tx` and the store's operations, so a second backend replaces
/// `store` alone. Unit tests may open the database file themselves (the
/// ledger's tamper tests do, as an attacker would).
#[test]
fn only_the_store_knows_its_database() {
    let offences = offences(
        |file| file == "store.rs" || file.starts_with("store/") || file == "layers.rs",
        |text| text.split("\n#[cfg(test)]\nmod tests").next().unwrap_or(""),
        |code| code.contains(concat!("rus", "qlite")),
    );
    assert!(
        offences.is_empty(),
        "modules outside `store` use the database directly (add an operation to `store` instead):\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_check_sees_every_way_of_naming_the_api() {
    let named = |code: &str| names_the_api(&code.replace('#', "::"));
    assert!(named("use crate#api#JobRecord;"));
    assert!(named("use crate#{api#{JobRecord, JobStatus}, store#Table};"));
    assert!(named("use crate#{store, api};"));
    assert!(named("let j = super#super#api#test_job(s, 0);"));
    assert!(named("let app = crate#router(state);"));
    assert!(!named("use crate#records#{JobRecord, JobStatus};"));
    assert!(!named("use crate#{records#JobRecord, store#Table};"));
    assert!(!named("let x = crate#apis#X;"));
    let lines = code_lines("//! see `crate::api`\nuse crate::{\n    store,\n    api::X,\n};\nfn f() {}\n");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(names_the_api(&lines[0].1), "{lines:?}");
    assert!(!names_the_api(&lines[1].1), "{lines:?}");
}
