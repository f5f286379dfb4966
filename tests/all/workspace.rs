//! Workspace-wide rules, checked on the manifests and sources: `unsafe` is
//! forbidden in every crate through the workspace lints, except `kernels`
//! (the host's numeric kernels, ARCHITECTURE.md) and the guest SDK
//! (`runtime/sdk`, whose ABI calls are FFI inside the sandboxed guest).

use std::path::{Path, PathBuf};

/// Crates that may use `unsafe`, relative to the workspace root.
const MAY_USE_UNSAFE: &[&str] = &["kernels", "runtime/sdk"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The workspace's members, from the root manifest's `members = [...]`.
fn members(manifest: &str) -> Vec<String> {
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("a members line");
    line.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_kernels_and_the_guest_sdk_may_use_unsafe() {
    let root = root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("root manifest");
    assert!(
        manifest.contains("unsafe_code = \"forbid\""),
        "the workspace lints forbid unsafe code"
    );
    let members = members(&manifest);
    assert!(members.len() >= 6, "{members:?}");
    for m in &members {
        if MAY_USE_UNSAFE.contains(&m.as_str()) {
            continue;
        }
        let crate_manifest =
            std::fs::read_to_string(root.join(m).join("Cargo.toml")).expect("member manifest");
        assert!(
            crate_manifest.contains("[lints]\nworkspace = true"),
            "{m} must take the workspace lints (which forbid unsafe)"
        );
        let mut sources = Vec::new();
        for dir in ["src", "all", "benches", "examples"] {
            let d = root.join(m).join(dir);
            if d.is_dir() {
                rust_sources(&d, &mut sources);
            }
        }
        for s in sources {
            let text = std::fs::read_to_string(&s).expect("source");
            // Spelled in two parts so that this file does not match itself.
            let allow = format!("{}(unsafe_code", "allow");
            assert!(
                !text.contains(&allow),
                "{} allows unsafe code outside {MAY_USE_UNSAFE:?}",
                s.display()
            );
        }
    }
}
