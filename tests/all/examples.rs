//! The example jobs (a bank, an insurer, a city planner; Rust and C) run
//! through the server on their scenarios and through `invis run-local` on
//! the scenarios' synthetic sample data, with the bundle committed next to
//! each job (checked against what the server serves) and fetched by id.

use crate::fixture::world_with;
use invis_tests::{invis, run_invis, workspace};
use serde_json::Value;
use std::process::Command;

const EXAMPLES: [&str; 3] = ["bank_credit", "insurer_risk", "city_planner"];

fn job_dir(name: &str) -> std::path::PathBuf {
    workspace().join("runtime/jobs").join(name)
}

fn committed_bundle(name: &str) -> Value {
    let text = std::fs::read_to_string(job_dir(name).join("bundle.json")).expect("bundle.json");
    serde_json::from_str(&text).expect("bundle json")
}

fn run_local(args: &[&str], token: Option<&str>) -> (i32, Value) {
    let mut cmd = Command::new(invis());
    cmd.arg("run-local")
        .args(args)
        .arg("--json")
        .env("RUST_BACKTRACE", "0");
    if let Some(t) = token {
        cmd.env("INVIS_TOKEN", t);
    }
    let out = cmd.output().expect("run-local");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "run-local printed no JSON: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn example_jobs_run_through_the_server_and_locally() {
    for name in EXAMPLES {
        let dir = job_dir(name);
        let module = std::fs::read(dir.join("job.wasm")).expect("job.wasm");
        let bundle = committed_bundle(name);
        let w = world_with(1500, bundle["scenario"].clone(), &[]);

        // Through the server, on the (synthetic) registered data.
        let job = w.run(&module);
        assert_eq!(job["status"], "succeeded", "{name}: {job}");
        let out = w.developer.get(&format!(
            "/v1/developer/jobs/{}/output",
            job["id"].as_str().unwrap()
        ));
        assert_eq!(out.status, 200);
        assert!(!out.body.is_empty(), "{name}: empty output");

        // The committed bundle is what the server serves for the scenario
        // (INVIS_BLESS=1 rewrites it, as expect-test's UPDATE_EXPECT does).
        let mut served = w
            .developer
            .get(&format!("/v1/developer/scenarios/{}/bundle", w.scenario))
            .ok();
        served["scenario_id"] = Value::String(String::new());
        if std::env::var_os("INVIS_BLESS").is_some() {
            let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
            std::fs::write(dir.join("bundle.json"), text).unwrap();
            continue;
        }
        assert_eq!(
            served["datasets"],
            bundle["datasets"],
            "{name}: runtime/jobs/{name}/bundle.json is stale; the server serves:\n{}",
            serde_json::to_string_pretty(&served).unwrap()
        );
        assert_eq!(served["scenario"]["name"], bundle["scenario"]["name"]);

        // Locally, from the committed bundle file: no server involved.
        let wasm = dir.join("job.wasm").to_string_lossy().to_string();
        let file = dir.join("bundle.json").to_string_lossy().to_string();
        let (code, local) = run_local(&[&wasm, "--scenario", &file, "--rows", "3000"], None);
        assert_eq!(code, 0, "{name}: {local}");
        assert_eq!(local["status"], "succeeded");
        assert!(local["output"].as_str().is_some_and(|o| !o.is_empty()), "{local}");
        assert!(local["queries"].as_array().is_some_and(|q| !q.is_empty()));

        // Locally, fetching the bundle by scenario id with a developer token.
        let base = w.server.base.clone();
        let (code, by_id) = run_local(
            &[
                &wasm,
                "--scenario",
                &w.scenario,
                "--server",
                &base,
                "--rows",
                "500",
            ],
            Some(w.developer.token()),
        );
        assert_eq!(code, 0, "{name}: {by_id}");
        assert_eq!(by_id["scenario"], bundle["scenario"]["name"]);
    }
}

#[test]
fn run_local_fails_clearly() {
    let bank = job_dir("bank_credit");
    let wasm = bank.join("job.wasm").to_string_lossy().to_string();
    // Not a file and no token: says how to fetch.
    let (code, _, err) = run_invis(&["run-local", &wasm, "--scenario", "sc_nope"]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("INVIS_TOKEN"), "{err}");
    // A file that is not a bundle.
    let (code, _, err) = run_invis(&["run-local", &wasm, "--scenario", &wasm]).unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("not a scenario bundle"), "{err}");
    // A hostile module fails with its error class and exit code 1.
    let spin = invis_tests::wat(
        r#"(module (memory (export "memory") 1) (func (export "run") (result i32) (loop $l (br $l)) (i32.const 0)))"#,
    );
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("spin.wasm");
    std::fs::write(&p, spin).unwrap();
    let file = bank.join("bundle.json").to_string_lossy().to_string();
    let (code, v) = run_local(&[p.to_str().unwrap(), "--scenario", &file], None);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["kind"], "out_of_fuel", "{v}");
}
