//! `invis demo`: the whole path of a job through the product, in one
//! process with no other service. It generates a synthetic municipal data
//! set, starts the real HTTP server on 127.0.0.1 with the embedded store,
//! and drives every role over HTTP, printing what each one does.

pub mod data;
#[cfg(test)]
mod nothing_personal;

use crate::client::{Client, Reply};
use crate::server::{bind, bootstrap, serve};
use crate::state::{AppState, Config};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The example job of the demo: a bank's credit indicators (Rust guest,
/// source in `runtime/jobs/bank_credit/lib.rs`).
pub const BANK_CREDIT_WASM: &[u8] = include_bytes!("../../runtime/jobs/bank_credit/job.wasm");

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to put data and store; a temporary directory when `None`.
    pub data_dir: Option<PathBuf>,
    /// Enterprises to generate.
    pub enterprises: usize,
}

/// The regulator's witness (issue 16): a key of the regulator's own
/// cosigns the published checkpoint once it has checked that it extends
/// the last one it cosigned; the developer's receipt then verifies with
/// the witness required; and a checkpoint the operator signed over a
/// different history (what a restored backup grown differently would
/// show) is refused. Returns the witness's verifier key.
fn witness_step(
    regulator: &Client,
    developer: &Client,
    key: &[u8],
    root: &Path,
    (job_id, output): &(String, Vec<u8>),
) -> Result<scenarios::ledger::VerifierKey> {
    use crate::witness::{Outcome, Witness};
    let mut witness = Witness::create(&root.join("witness"), "witness.regulator.invis", key)?;
    let vkey = witness.verifier_key().clone();
    // Wait for the server's next publication to cover the ledger as it
    // stands (once a second in the demo).
    let target = expect_ok(regulator.get("/v1/ledger/checkpoint")?, "checkpoint")?["checkpoint"]["size"]
        .as_u64()
        .unwrap_or(0);
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while expect_ok(developer.get("/v1/ledger/checkpoint")?, "checkpoint")?["checkpoint"]["size"]
        .as_u64()
        .unwrap_or(0)
        < target
    {
        if Instant::now() > deadline {
            bail!("no checkpoint was published");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let size = match witness.run_once(regulator)? {
        Outcome::Cosigned(size) | Outcome::Unchanged(size) => size,
    };
    say(
        "regulator",
        format!(
            "witness {} (the regulator's own Ed25519 key): checked the operator's signatures and cosigned the \
             published checkpoint of {size} entries (C2SP cosignature/v1)",
            vkey.name
        ),
    );
    let receipt: scenarios::ledger::Receipt = serde_json::from_value(expect_ok(
        developer.get(&format!("/v1/developer/jobs/{job_id}/receipt"))?,
        "receipt",
    )?)?;
    let proven = scenarios::ledger::verify_receipt_witnessed(
        &receipt,
        Some(key),
        Some(output),
        std::slice::from_ref(&vkey),
    )?;
    say(
        "developer",
        format!(
            "the receipt now rests on the cosigned checkpoint of {} entries: invis verify-receipt --witness-key: OK",
            proven.checkpoint_size
        ),
    );
    // A fork: the operator's key signs a tree over a different history (a restored backup grown differently would serve
    // one). The witness has cosigned the honest tree, so it refuses.
    let keys = crate::keys::Keys::load_or_create(&root.join("store"), None)?;
    // As large as the ledger now is (the cosignature's own entry made it
    // grow), so the operator can serve a consistency proof to that size.
    let fork_size = expect_ok(regulator.get("/v1/ledger/checkpoint")?, "checkpoint")?["checkpoint"]["size"]
        .as_u64()
        .unwrap_or(0);
    let checkpoint = scenarios::ledger::Checkpoint {
        size: fork_size,
        root: hex::encode(scenarios::ledger::sha256(b"a different history")),
        time: chrono::Utc::now(),
    };
    let forged = crate::ledger::sign_checkpoint(&keys, checkpoint);
    let proof = expect_ok(
        regulator.get(&format!(
            "/v1/ledger/proof/consistency?first={size}&second={fork_size}"
        ))?,
        "consistency proof",
    )?;
    let proof: Vec<String> = serde_json::from_value(proof["proof"].clone())?;
    match witness.check(&forged, &proof) {
        Ok(()) => bail!("the witness accepted a forked checkpoint"),
        Err(refusal) => say(
            "regulator",
            format!(
                "a checkpoint of {fork_size} entries signed by the operator over another history: the witness \
                 REFUSED to cosign: {refusal}"
            ),
        ),
    }
    Ok(vkey)
}

/// A job module that runs one SQL query and, when it is refused, logs the
/// host's error message and fails. Written as WAT, like a hostile job would
/// be written by hand.
pub fn probe_job(sql: &str) -> Result<Vec<u8>> {
    let mut escaped = String::new();
    for b in sql.bytes() {
        match b {
            b'"' | b'\\' => escaped.push_str(&format!("\\{:02x}", b)),
            0x20..=0x7e => escaped.push(b as char),
            _ => escaped.push_str(&format!("\\{:02x}", b)),
        }
    }
    let wat = format!(
        r#"(module
  (import "invis_v1" "query" (func $query (param i32 i32) (result i64)))
  (import "invis_v1" "error_read" (func $error_read (param i32 i32) (result i32)))
  (import "invis_v1" "log" (func $log (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{escaped}")
  (func (export "run") (result i32)
    (local $n i32)
    (if (i64.lt_s (call $query (i32.const 0) (i32.const {len})) (i64.const 0))
      (then
        (local.set $n (call $error_read (i32.const 32768) (i32.const 1024)))
        (drop (call $log (i32.const 32768) (select (local.get $n) (i32.const 1024) (i32.lt_s (local.get $n) (i32.const 1024)))))
        (return (i32.const 2))))
    (i32.const 0)))"#,
        len = sql.len()
    );
    Ok(wat::parse_str(&wat)?)
}

fn say(role: &str, msg: impl AsRef<str>) {
    println!("[{role:>9}] {}", msg.as_ref());
}

fn expect_ok(r: Reply, what: &str) -> Result<Value> {
    if !(200..300).contains(&r.status) {
        bail!(
            "{what} failed: HTTP {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    Ok(r.json())
}

fn print_table(header: &[String], rows: &[Vec<String>], indent: &str) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{indent}{}", parts.join("  ").trim_end());
    };
    line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&rule);
    for r in rows {
        line(r);
    }
}

fn print_csv(csv: &str, indent: &str, max_rows: usize) {
    let mut lines = csv.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::to_string)
        .collect();
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let shown = rows.len().min(max_rows);
    print_table(&header, rows.get(..shown).unwrap_or(&[]), indent);
    if rows.len() > shown {
        println!("{indent}... {} more rows", rows.len() - shown);
    }
}

/// The bank's scenario: what the operator proposes.
pub fn bank_scenario() -> Value {
    json!({
        "name": "Small-business credit indicators",
        "class": "credit-risk-assessment",
        "purpose": "assess the creditworthiness of small businesses per industry and district to price inclusive-finance loans",
        "tables": [
            {"dataset": "enterprise_register", "columns": [
                {"name": "enterprise_id", "ops": ["join"]},
                {"name": "industry", "ops": ["group", "filter"]},
                {"name": "district", "ops": ["group", "filter"]},
                {"name": "founded_year", "ops": ["group", "filter"]},
                {"name": "employees", "ops": ["aggregate", "filter"], "bounds": [0, 200]}
            ]},
            {"dataset": "social_insurance", "columns": [
                {"name": "enterprise_id", "ops": ["join"]},
                {"name": "month", "ops": ["filter"]},
                {"name": "insured_count", "ops": ["aggregate"], "bounds": [0, 150]},
                {"name": "amount_paid", "ops": ["aggregate"], "bounds": [0, 100000]},
                {"name": "arrears", "ops": ["aggregate"], "bounds": [0, 1]}
            ]},
            {"dataset": "tax_credit", "columns": [
                {"name": "enterprise_id", "ops": ["join"]},
                {"name": "grade", "ops": ["group", "filter"]},
                {"name": "year", "ops": ["filter"]}
            ]}
        ],
        "aggregates": ["count", "sum", "avg"],
        "release": {
            "epsilon_total": 5.0,
            "epsilon_per_query": 1.0,
            // Delta well below 1/N for the 90 000 enterprise records of
            // the three tables (docs/privacy-model.md, "Defaults and caps").
            "delta_per_query": 1e-8,
            "delta_total": 1e-6,
            "min_group_size": 10,
            "max_rows_per_unit": 12
        }
    })
}

/// The three datasets as their providers register them: the provider,
/// the spec (its `path` is the file's name in the provider's storage
/// location, where the demo uploads it) and the local file.
pub fn dataset_specs(files: &data::DemoFiles) -> Vec<(&'static str, Value, PathBuf)> {
    let path = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    vec![
        (
            "Market Supervision Bureau",
            json!({
                "name": "enterprise_register",
                "description": "registered enterprises of the city with industry, district and size",
                "path": path(&files.register),
                "privacy_unit": "enterprise_id",
                "unit_kind": "enterprise",
                "one_row_per_unit": true,
                "columns": [
                    {"name": "enterprise_id", "rule": "tokenize", "not_null": true, "description": "unified social credit code"},
                    {"name": "name", "rule": {"mask": {"keep_prefix": 6}}},
                    {"name": "industry", "rule": "keep", "domain": {"categories": data::INDUSTRIES}},
                    {"name": "district", "rule": "keep", "domain": {"categories": data::DISTRICTS}},
                    {"name": "founded_year", "rule": {"generalize": {"bucket": {"width": 5.0}}}, "domain": {"range": {"min": 1990.0, "max": 2025.0}}},
                    {"name": "registered_capital", "rule": {"generalize": {"edges": {"edges": [0.0, 100.0, 500.0, 1000.0, 5000.0]}}}},
                    {"name": "employees", "rule": "keep", "domain": {"range": {"min": 1.0, "max": 3000.0}}},
                    {"name": "legal_rep_phone", "rule": "drop"}
                ]
            }),
            files.register.clone(),
        ),
        (
            "Human Resources and Social Security Bureau",
            json!({
                "name": "social_insurance",
                "description": "monthly social-insurance contributions per enterprise",
                "path": path(&files.insurance),
                "privacy_unit": "enterprise_id",
                "unit_kind": "enterprise",
                "columns": [
                    {"name": "enterprise_id", "rule": "tokenize", "not_null": true},
                    {"name": "month", "rule": "keep"},
                    {"name": "insured_count", "rule": "keep", "domain": {"range": {"min": 0.0, "max": 3000.0}}},
                    {"name": "amount_paid", "rule": "keep", "domain": {"range": {"min": 0.0, "max": 5000000.0}}},
                    {"name": "arrears", "rule": "keep", "domain": {"range": {"min": 0.0, "max": 1.0}}}
                ]
            }),
            files.insurance.clone(),
        ),
        (
            "Municipal Tax Service",
            json!({
                "name": "tax_credit",
                "description": "annual tax-credit grade per enterprise (A best, D worst)",
                "path": path(&files.tax),
                "privacy_unit": "enterprise_id",
                "unit_kind": "enterprise",
                "columns": [
                    {"name": "enterprise_id", "rule": "tokenize", "not_null": true},
                    {"name": "year", "rule": "keep"},
                    {"name": "grade", "rule": "keep", "domain": {"categories": data::GRADES}}
                ]
            }),
            files.tax.clone(),
        ),
    ]
}

/// Application materials, as a developer files them.
pub fn materials() -> Value {
    json!({
        "qualifications": "licensed commercial bank (financial licence B0000H235020001); ISO 27001 certified",
        "data_needs": "enterprise counts and sizes, social-insurance contributions and tax-credit grades per industry and district",
        "development_method": "a WASM job computing per-cell indicators from protected aggregates; no row-level access",
        "security_measures": "results stored in the bank's risk data mart with role-based access; staff trained annually",
        "security_officer": "Chen Jing, head of information security"
    })
}

/// Runs the demo. Returns an error if any step does not behave as the
/// product promises.
pub async fn run(opts: DemoOptions) -> Result<()> {
    let started = Instant::now();
    let tmp;
    let root = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("invis-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!("Invis demo: a bank's small-business credit scenario on public data that stays invisible\n");
    let t = Instant::now();
    let files = data::generate(&root.join("data"), opts.enterprises)?;
    say(
        "setup",
        format!(
            "generated synthetic municipal data in {} ms: {} enterprises, {} monthly social-insurance rows, {} tax grades",
            t.elapsed().as_millis(),
            files.enterprises,
            files.enterprises * 12,
            files.enterprises
        ),
    );
    let config = Config {
        sample_rows: 5,
        // Published once a second, so the witness step need not wait long.
        checkpoint_every: std::time::Duration::from_secs(1),
        ..Config::new(root.join("store"))
    };
    let state = AppState::open(config)?;
    let boot = bootstrap(
        &state.store,
        "Xiamen Big Data Operation Co.",
        "Municipal Big Data Bureau",
    )?;
    let (listener, addr) = bind("127.0.0.1:0".parse()?).await?;
    let server = tokio::spawn(serve(state, listener));
    say(
        "setup",
        format!(
            "server on http://{addr}, store {} (SQLite), no other service",
            root.join("store").display()
        ),
    );
    let base = format!("http://{addr}");
    let result = tokio::task::spawn_blocking(move || script(&base, &boot, &files, &root)).await?;
    server.abort();
    result?;
    println!("\ndemo finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn script(
    base: &str,
    boot: &[crate::server::Bootstrapped],
    files: &data::DemoFiles,
    root: &Path,
) -> Result<()> {
    let anon = Client::new(base);
    let token = |role: scenarios::party::Role| -> Result<String> {
        boot.iter()
            .find(|b| b.role == role)
            .map(|b| b.token.clone())
            .context("bootstrap party missing")
    };
    let operator = anon.with_token(&token(scenarios::party::Role::Operator)?);
    let regulator = anon.with_token(&token(scenarios::party::Role::Regulator)?);
    say(
        "operator",
        "bootstrapped the operator and the regulator (tokens stored only as hashes)",
    );

    // Parties.
    let mut providers = Vec::new();
    for (name, spec, local) in dataset_specs(files) {
        let p = expect_ok(
            operator.post("/v1/operator/parties", &json!({"name": name, "role": "provider"}))?,
            "create provider",
        )?;
        providers.push((
            anon.with_token(p["token"].as_str().unwrap_or("")),
            name,
            spec,
            local,
        ));
    }
    let dev = expect_ok(
        operator.post(
            "/v1/operator/parties",
            &json!({"name": "Example Commercial Bank", "role": "developer"}),
        )?,
        "create developer",
    )?;
    let developer = anon.with_token(dev["token"].as_str().unwrap_or(""));
    say(
        "operator",
        "created 3 data providers and 1 developer (Example Commercial Bank)",
    );

    // 1. Providers upload their files into their own storage location
    // (I17: never a server path) and register datasets on them.
    println!();
    for (client, name, spec, local) in &providers {
        let file = spec["path"].as_str().unwrap_or("");
        let up = expect_ok(
            client.put_file(&format!("/v1/provider/files/{file}"), local)?,
            "upload file",
        )?;
        say(
            "provider",
            format!(
                "{name} uploaded `{file}`: {} bytes, SHA-256 {}...",
                up["size"],
                up["sha256"].as_str().unwrap_or("").get(..12).unwrap_or("")
            ),
        );
        let d = expect_ok(client.post("/v1/provider/datasets", spec)?, "register dataset")?;
        let rules: Vec<String> = d["columns"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        let rule = match &c["rule"] {
                            Value::String(s) => s.clone(),
                            Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
                            _ => String::new(),
                        };
                        format!("{}:{}", c["name"].as_str().unwrap_or(""), rule)
                    })
                    .collect()
            })
            .unwrap_or_default();
        say(
            "provider",
            format!(
                "{name} registered `{}` v{}: {} rows, version {}..., rules {}",
                d["name"].as_str().unwrap_or(""),
                d["version"],
                d["rows"],
                d["version_hash"].as_str().unwrap_or("").get(..12).unwrap_or(""),
                rules.join(" ")
            ),
        );
        let id = d["id"].as_str().unwrap_or("");
        expect_ok(
            operator.post(
                &format!("/v1/operator/datasets/{id}/review"),
                &json!({"approve": true}),
            )?,
            "review rules",
        )?;
    }
    say(
        "operator",
        "reviewed and approved every column's desensitization rule (R2)",
    );

    // 2. The catalog with synthetic desensitized sample rows.
    let cat = expect_ok(developer.get("/v1/catalog/enterprise_register")?, "catalog")?;
    say(
        "catalog",
        "enterprise_register sample (synthetic rows through the desensitization rules; no real value):",
    );
    let header: Vec<String> = cat["sample"]["columns"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = cat["sample"]["rows"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    r.as_array()
                        .map(|c| {
                            c.iter()
                                .map(|v| v.as_str().unwrap_or("NULL").to_string())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(&header, &rows, "            ");

    // 3. Scenario proposed by the operator, approved by the regulator.
    println!();
    let sc = expect_ok(
        operator.post("/v1/operator/scenarios", &bank_scenario())?,
        "propose scenario",
    )?;
    let sc_id = sc["id"].as_str().unwrap_or("").to_string();
    say("operator", format!("proposed scenario {sc_id} \"{}\": epsilon 5.0 in total, 1.0 per query, groups of at least 10 enterprises", sc["spec"]["name"].as_str().unwrap_or("")));
    let visible = expect_ok(developer.get("/v1/developer/scenarios")?, "list scenarios")?;
    say(
        "developer",
        format!(
            "scenario catalog before approval: {} scenarios visible",
            visible["scenarios"].as_array().map_or(0, Vec::len)
        ),
    );
    expect_ok(
        regulator.post(
            &format!("/v1/regulator/scenarios/{sc_id}/decision"),
            &json!({"approve": true, "reason": "purpose and release rules reviewed"}),
        )?,
        "approve scenario",
    )?;
    say(
        "regulator",
        format!("approved the scenario class credit-risk-assessment ({sc_id})"),
    );
    // The enterprise population's budget is the regulator's: every
    // scenario, agreement and account over enterprises draws on it.
    let pop = expect_ok(
        regulator.post(
            "/v1/regulator/populations/enterprise/caps",
            &json!({"caps": {"population": {"epsilon": 15.0}, "organization": {"epsilon": 5.0}},
                    "reason": "first period of the enterprise population: three organizations' worth"}),
        )?,
        "population cap",
    )?;
    say(
        "regulator",
        format!(
            "capped the enterprise population ({} units in the catalog) at epsilon {} for this period, {} per organization; caps can only be lowered until a recorded renewal",
            pop["units"], pop["caps"]["population"]["epsilon"], pop["caps"]["organization"]["epsilon"]
        ),
    );
    let visible = expect_ok(developer.get("/v1/developer/scenarios")?, "list scenarios")?;
    say(
        "developer",
        format!(
            "scenario catalog after approval: {} scenario visible",
            visible["scenarios"].as_array().map_or(0, Vec::len)
        ),
    );

    // 4. Application, review, agreement.
    let app = expect_ok(
        developer.post(
            "/v1/developer/applications",
            &json!({"scenario_id": sc_id, "materials": materials()}),
        )?,
        "apply",
    )?;
    let app_id = app["id"].as_str().unwrap_or("").to_string();
    say(
        "developer",
        format!(
            "applied ({app_id}); decision due by {}",
            app["due_on"].as_str().unwrap_or("")
        ),
    );
    let dec = expect_ok(
        operator.post(&format!("/v1/operator/applications/{app_id}/decision"), &json!({"approve": true, "reason": "materials complete; security officer named", "valid_days": 180}))?,
        "approve application",
    )?;
    let ag_id = dec["agreement"]["id"].as_str().unwrap_or("").to_string();
    say(
        "operator",
        format!(
            "approved the application and issued agreement {ag_id}, valid until {}",
            dec["agreement"]["valid_until"].as_str().unwrap_or("")
        ),
    );
    let jobs_path = format!("/v1/developer/agreements/{ag_id}/jobs?wait=true");
    let early = developer.post_bytes(&jobs_path, BANK_CREDIT_WASM, "application/wasm")?;
    if early.status != 403 {
        bail!("a job before signing must be refused, got HTTP {}", early.status);
    }
    say(
        "developer",
        format!(
            "submitting a job before signing -> HTTP {}: {}",
            early.status,
            early.error_message()
        ),
    );
    expect_ok(
        developer.post(&format!("/v1/developer/agreements/{ag_id}/sign"), &json!({}))?,
        "sign",
    )?;
    say("developer", "signed the agreement: access is open");

    // 5. The job.
    println!();
    let t = Instant::now();
    let job = expect_ok(
        developer.post_bytes(&jobs_path, BANK_CREDIT_WASM, "application/wasm")?,
        "run job",
    )?;
    if job["status"] != "succeeded" {
        bail!("the bank job failed: {}", job["error"]);
    }
    let usage = &job["usage"];
    say(
        "runtime",
        format!(
            "job {} (module {}..., {} bytes, compiled in {} ms) succeeded in {} ms: {} queries, {} fuel, peak memory {} KiB",
            job["id"].as_str().unwrap_or(""),
            job["module_hash"].as_str().unwrap_or("").get(..12).unwrap_or(""),
            job["module_size"],
            job["compile_ms"],
            t.elapsed().as_millis(),
            usage["queries"],
            usage["fuel"],
            usage["peak_memory_bytes"].as_u64().unwrap_or(0) / 1024
        ),
    );
    for q in job["queries"].as_array().cloned().unwrap_or_default() {
        say(
            "sandbox",
            format!(
                "  released {} groups at epsilon {}: {}",
                q["released_groups"],
                q["epsilon"],
                q["sql"]
                    .as_str()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        );
    }
    let out = developer
        .get(&format!(
            "/v1/developer/jobs/{}/output",
            job["id"].as_str().unwrap_or("")
        ))?
        .ok()?;
    let csv = String::from_utf8_lossy(&out.body).to_string();
    say(
        "developer",
        "released result (noisy, contribution-bounded, small groups suppressed):",
    );
    print_csv(&csv, "            ", 60);
    let receipt = expect_ok(
        developer.get(&format!(
            "/v1/developer/jobs/{}/receipt",
            job["id"].as_str().unwrap_or("")
        ))?,
        "receipt",
    )?;
    let receipt: scenarios::ledger::Receipt = serde_json::from_value(receipt)?;
    let key = expect_ok(developer.get("/v1/ledger/public-key")?, "public key")?;
    let key = hex::decode(key["first_public_key"].as_str().unwrap_or(""))?;
    let proven = scenarios::ledger::verify_receipt(&receipt, Some(&key), Some(&out.body))?;
    let released = (job["id"].as_str().unwrap_or("").to_string(), out.body.clone());
    say(
        "developer",
        format!(
            "receipt verified offline: the output's hash is ledger entry {} ({}), proven in the signed tree of {} entries",
            proven.seq, proven.action, proven.checkpoint_size
        ),
    );
    let ag = expect_ok(
        developer.get(&format!("/v1/developer/agreements/{ag_id}"))?,
        "agreement",
    )?;
    say(
        "developer",
        format!(
            "privacy budget: spent epsilon {} of {}, {} left",
            ag["budget"]["spent"]["epsilon"],
            ag["budget"]["limit"]["epsilon"],
            ag["budget"]["remaining"]["epsilon"]
        ),
    );

    let view = expect_ok(
        regulator.get("/v1/regulator/populations/enterprise")?,
        "population view",
    )?;
    say(
        "regulator",
        format!(
            "enterprise population, period {}: guarantee so far epsilon {} (delta {:e})",
            view["period"],
            view["guarantee"]["epsilon"],
            view["guarantee"]["delta"].as_f64().unwrap_or(0.0)
        ),
    );
    for l in view["levels"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let allocated = match &l["allocated"]["epsilon"] {
            Value::Null => String::new(),
            a => format!(", {a} allocated"),
        };
        say(
            "regulator",
            format!(
                "  {:<12} {:<56} spent epsilon {} of {}{allocated}, {} left",
                l["level"].as_str().unwrap_or(""),
                l["holder"].as_str().unwrap_or(""),
                l["spent"]["epsilon"],
                l["cap"]["epsilon"],
                l["remaining"]["epsilon"]
            ),
        );
    }

    // 6. Refused attempts.
    println!();
    let probe_sql = "SELECT * FROM enterprise_register WHERE enterprise_id = '91350200MA00000000'";
    let probe = expect_ok(
        developer.post_bytes(&jobs_path, &probe_job(probe_sql)?, "application/wasm")?,
        "probe job",
    )?;
    say(
        "developer",
        format!("attack: a job asking for one enterprise's row: {probe_sql}"),
    );
    say(
        "sandbox",
        format!(
            "  -> job {}: {}",
            probe["status"].as_str().unwrap_or(""),
            probe["logs"].get(0).and_then(Value::as_str).unwrap_or("")
        ),
    );
    if probe["status"] != "failed" || probe["queries"].as_array().map_or(1, Vec::len) != 0 {
        bail!("the row-level probe must be refused");
    }
    let ag2 = expect_ok(
        developer.get(&format!("/v1/developer/agreements/{ag_id}"))?,
        "agreement",
    )?;
    say(
        "developer",
        format!(
            "  budget unchanged: spent epsilon {}",
            ag2["budget"]["spent"]["epsilon"]
        ),
    );
    let again = expect_ok(
        developer.post_bytes(&jobs_path, BANK_CREDIT_WASM, "application/wasm")?,
        "rerun job",
    )?;
    say(
        "developer",
        "attack: run the same job again to average the noise away",
    );
    if again["status"] != "failed" {
        bail!("the job past its budget must fail");
    }
    let ag3 = expect_ok(
        developer.get(&format!("/v1/developer/agreements/{ag_id}"))?,
        "agreement",
    )?;
    say(
        "sandbox",
        format!(
            "  -> job {}: budget spent epsilon {} of {}, the query past it refused",
            again["status"].as_str().unwrap_or(""),
            ag3["budget"]["spent"]["epsilon"],
            ag3["budget"]["limit"]["epsilon"]
        ),
    );
    if again.get("details_withheld").is_some() {
        // It received protected results and released nothing: its logs and
        // error are the regulator's, not the developer's (I14).
        say(
            "developer",
            "  the job's logs, error and queries are withheld: it received protected results and released nothing",
        );
        let jobs = expect_ok(regulator.get("/v1/regulator/jobs")?, "regulator jobs")?;
        let full = jobs["jobs"]
            .as_array()
            .and_then(|a| a.iter().find(|j| j["id"] == again["id"]))
            .cloned()
            .unwrap_or(Value::Null);
        say(
            "regulator",
            format!(
                "  sees the whole record: {} after {} queries; log: {}",
                full["error"]["kind"].as_str().unwrap_or(""),
                full["queries"].as_array().map_or(0, Vec::len),
                full["logs"].get(0).and_then(Value::as_str).unwrap_or("")
            ),
        );
    }
    let bad = developer.post_bytes(&jobs_path, b"this is not wasm", "application/wasm")?;
    say(
        "developer",
        format!(
            "a malformed module -> HTTP {}: {}",
            bad.status,
            bad.error_message()
        ),
    );
    // Issue 19: a module built to be expensive to compile (100,000 empty
    // functions compiled for 11 s before) is refused by its shape first.
    let costly = wat::parse_str(format!(
        r#"(module (memory (export "memory") 1) (func (export "run") (result i32) (i32.const 0)) {})"#,
        "(func)".repeat(100_000)
    ))?;
    let started = std::time::Instant::now();
    let bad = developer.post_bytes(&jobs_path, &costly, "application/wasm")?;
    say(
        "developer",
        format!(
            "a module of 100,000 empty functions ({} KB) -> HTTP {} after {} ms, nothing compiled: {}",
            costly.len() / 1000,
            bad.status,
            started.elapsed().as_millis(),
            bad.error_message()
        ),
    );

    // 7. The regulator's view and the ledger.
    println!();
    let rel = expect_ok(regulator.get("/v1/regulator/releases")?, "releases")?;
    for r in rel["releases"].as_array().cloned().unwrap_or_default() {
        let actions: Vec<String> = r["lineage"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|e| format!("#{} {}", e["seq"], e["entry"]["action"].as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        say(
            "regulator",
            format!(
                "release of job {} to {}: output {}...; lineage {}",
                r["job"]["id"].as_str().unwrap_or(""),
                r["job"]["developer_id"].as_str().unwrap_or(""),
                r["job"]["output_hash"]
                    .as_str()
                    .unwrap_or("")
                    .get(..12)
                    .unwrap_or(""),
                actions.join(", ")
            ),
        );
    }
    let key = expect_ok(regulator.get("/v1/regulator/ledger/public-key")?, "public key")?;
    let key = hex::decode(key["first_public_key"].as_str().unwrap_or(""))?;
    let witness = witness_step(&regulator, &developer, &key, root, &released)?;
    let export = regulator.get("/v1/regulator/ledger")?.ok()?;
    let path = root.join("ledger-export.ndjson");
    std::fs::write(&path, &export.body)?;
    let text = String::from_utf8(export.body.clone())?;
    match scenarios::ledger::verify_export_witnessed(
        text.lines(),
        Some(&key),
        &[],
        std::slice::from_ref(&witness),
    ) {
        Ok(r) => say(
            "regulator",
            format!(
                "exported the ledger ({} entries) to {}; invis verify-ledger --witness-key: OK, root {}..., \
                 {} checkpoint notes (C2SP), the witness vouches for the first {} entries",
                r.entries,
                path.display(),
                r.root.get(..16).unwrap_or(""),
                r.notes,
                r.witnessed.first().map_or(0, |w| w.size)
            ),
        ),
        Err(f) => bail!("the ledger does not verify: {}", f.reason),
    }
    // Tamper with one entry of a copy: the verifier names it.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let target = lines
        .iter()
        .position(|l| l.contains("query.release"))
        .context("no release entry")?;
    if let Some(l) = lines.get_mut(target) {
        *l = l.replacen("released_groups", "released_groupz", 1);
    }
    let victim: Value = serde_json::from_str(lines.get(target).map_or("", String::as_str))?;
    let victim: Value = serde_json::from_str(victim["body"].as_str().unwrap_or(""))?;
    match scenarios::ledger::verify_export(lines.iter(), Some(&key), &[]) {
        Ok(_) => bail!("a tampered ledger verified"),
        Err(f) => say(
            "regulator",
            format!(
                "a copy with one edited byte in entry {}: verify-ledger FAILED: {}",
                victim["seq"], f.reason
            ),
        ),
    }
    Ok(())
}
