//! The layer rule inside the gateway (issue 17), checked on the sources:
//! records (`records`), stores and services (`store`, `jobs`, `ledger`,
//! `datasets`, `metering`, `local`, ...) sit below the HTTP layer (`api`)
//! and never import from it. Only `api` itself and the composition roots
//! may name it: `lib.rs` (declares the modules and re-exports the router),
//! `main.rs` (the binary: `invis routes` prints the route table) and
//! `server.rs` (builds the router for `invis serve`). Below the API no
//! module uses axum either: services return `ServiceError`, which only
//! `api::error` maps to HTTP. Handlers leave the store work (units of
//! work, writes, ledger entries) to the services; only `store` knows the
//! database; and no modules import each other in a circle.

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
/// `store::StoreOps` and the store's operations, so a second backend
/// replaces `store` alone. Unit tests may open the database file themselves (the
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

/// Handlers translate HTTP and call a service: no file of the API reaches
/// the store (`AppState::store`), writes to it, appends to the ledger or
/// opens a unit of work itself (those are the services' below it, which
/// keep a state change and its ledger entry in one transaction).
#[test]
fn handlers_leave_records_to_the_services() {
    let store_work = [
        ".store",
        "NewEntry",
        "append(",
        ".write(",
        ".tx(",
        ".read(",
        "read_consistent(",
        "put(tx",
        "put_in(",
        "get_in(",
        "list_in(",
        "party_in(",
        "parties_in(",
        "organization_of(",
        "StoreOps",
    ];
    let offences = offences(
        |file| !(file == "api.rs" || file.starts_with("api/")),
        |text| text.split("\n#[cfg(test)]\nmod tests").next().unwrap_or(""),
        |code| store_work.iter().any(|w| code.contains(w)),
    );
    assert!(
        offences.is_empty(),
        "handlers do store work themselves (move it into the service below `api` that owns it):\n{}",
        offences.join("\n")
    );
}

/// The top-level modules of the crate (`store` for `store.rs` and
/// `store/*`) each source file's code, tests left out, names with
/// `crate::` paths, grouped imports included.
fn module_imports() -> Vec<(String, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let module = relative
            .split('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let text = text.split("\n#[cfg(test)]\nmod tests").next().unwrap_or("");
        let mut names = Vec::new();
        for (_, code) in code_lines(text) {
            names.extend(crate_paths(&code));
        }
        names.retain(|n| *n != module);
        match out.iter_mut().find(|(m, _)| *m == module) {
            Some((_, all)) => all.extend(names),
            None => out.push((module, names)),
        }
    }
    for (_, names) in &mut out {
        names.sort();
        names.dedup();
    }
    out
}

/// The first segment of every `crate::` path in a line of code, and of
/// every item of a grouped `crate::{...}` import.
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let prefix = concat!("crate", "::");
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            let mut i = 0;
            let bytes: Vec<char> = group.chars().collect();
            while i < bytes.len() {
                let c = bytes[i];
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 0 => {
                        let tail: String = bytes[i..].iter().collect();
                        let name = ident(&tail);
                        if !name.is_empty() {
                            out.push(name);
                        }
                        item_start = false;
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// No circle of imports between the crate's modules (issue 17): the
/// layers only look down. The composition roots (`lib.rs`, `main.rs`)
/// and this file are left out; `crate::router`, re-exported by `lib.rs`,
/// counts as the API.
#[test]
fn no_import_circle_between_modules() {
    let mut graph = module_imports();
    graph.retain(|(m, _)| !matches!(m.as_str(), "lib" | "main" | "layers"));
    let known: Vec<String> = graph.iter().map(|(m, _)| m.clone()).collect();
    for (_, names) in &mut graph {
        for n in names.iter_mut() {
            if n == "router" {
                *n = "api".into();
            }
        }
        names.retain(|n| known.contains(n));
    }
    assert!(
        graph
            .iter()
            .any(|(m, ns)| m == "api" && ns.iter().any(|n| n == "store")),
        "{graph:?}"
    );
    // Depth-first search for a back edge, keeping the path for the message.
    fn visit<'a>(
        graph: &'a [(String, Vec<String>)],
        m: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Option<String> {
        if let Some(at) = path.iter().position(|p| *p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m);
            return Some(circle.join(" -> "));
        }
        if done.contains(&m) {
            return None;
        }
        path.push(m);
        let names = graph
            .iter()
            .find(|(n, _)| n == m)
            .map(|(_, ns)| ns.as_slice())
            .unwrap_or(&[]);
        for n in names {
            if let Some(circle) = visit(graph, n, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.push(m);
        None
    }
    let mut done = Vec::new();
    for (m, _) in &graph {
        if let Some(circle) = visit(&graph, m, &mut Vec::new(), &mut done) {
            panic!("modules import each other in a circle: {circle}");
        }
    }
}

#[test]
fn the_import_walk_sees_grouped_and_nested_paths() {
    let p = |code: &str| crate_paths(&code.replace('#', "::"));
    assert_eq!(p("use crate#store#{append, Table};"), ["store"]);
    assert_eq!(
        p("use crate#{api#{A, B}, store, records#X};"),
        ["api", "store", "records"]
    );
    assert_eq!(
        p("let x = crate#jobs#f(crate#keys#new_id(\"j\"));"),
        ["jobs", "keys"]
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
