//! A ready-made world: the demo's synthetic datasets registered by three
//! providers, the bank scenario approved, an application approved and the
//! agreement signed.

use invis_tests::{run_invis, Api, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) const BANK_JOB: &[u8] = include_bytes!("../../runtime/jobs/bank_credit/job.wasm");

pub(crate) struct World {
    pub(crate) server: Server,
    pub(crate) developer: Api,
    pub(crate) scenario: String,
    pub(crate) agreement: String,
    /// The three providers, by name.
    pub(crate) providers: Vec<(String, Api)>,
}

impl World {
    /// A provider's client by name.
    pub(crate) fn provider(&self, name: &str) -> &Api {
        self.providers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .unwrap_or_else(|| panic!("no provider {name}"))
    }
}

impl World {
    pub(crate) fn jobs_path(&self) -> String {
        format!("/v1/developer/agreements/{}/jobs?wait=true", self.agreement)
    }

    /// Runs a job and returns its final record.
    pub(crate) fn run(&self, module: &[u8]) -> Value {
        self.developer
            .post_raw(&self.jobs_path(), module, "application/wasm")
            .ok()
    }

    /// Budget spent so far (epsilon).
    pub(crate) fn spent(&self) -> f64 {
        let a = self
            .developer
            .get(&format!("/v1/developer/agreements/{}", self.agreement))
            .ok();
        a["budget"]["spent"]["epsilon"].as_f64().expect("spent")
    }
}

/// The demo's three datasets with `path` naming the local files in `dir`
/// ([`register`] uploads them).
pub(crate) fn dataset_specs(dir: &str) -> Vec<Value> {
    vec![
        json!({
            "name": "enterprise_register",
            "description": "registered enterprises",
            "path": format!("{dir}/enterprise_register.parquet"),
            "privacy_unit": "enterprise_id",
            "unit_kind": "enterprise",
            "columns": [
                {"name": "enterprise_id", "rule": "tokenize"},
                {"name": "name", "rule": {"mask": {"keep_prefix": 6}}},
                {"name": "industry", "rule": "keep"},
                {"name": "district", "rule": "keep"},
                {"name": "founded_year", "rule": {"generalize": {"bucket": {"width": 5.0}}}},
                {"name": "registered_capital", "rule": {"generalize": {"edges": {"edges": [0.0, 100.0, 1000.0]}}}},
                {"name": "employees", "rule": "keep", "domain": {"range": {"min": 1.0, "max": 3000.0}}},
                {"name": "legal_rep_phone", "rule": "drop"}
            ]
        }),
        json!({
            "name": "social_insurance",
            "path": format!("{dir}/social_insurance.parquet"),
            "privacy_unit": "enterprise_id",
            "unit_kind": "enterprise",
            "columns": [
                {"name": "enterprise_id", "rule": "tokenize"},
                {"name": "month", "rule": "keep"},
                {"name": "insured_count", "rule": "keep"},
                {"name": "amount_paid", "rule": "keep"},
                {"name": "arrears", "rule": "keep"}
            ]
        }),
        json!({
            "name": "tax_credit",
            "path": format!("{dir}/tax_credit.parquet"),
            "privacy_unit": "enterprise_id",
            "unit_kind": "enterprise",
            "columns": [
                {"name": "enterprise_id", "rule": "tokenize"},
                {"name": "year", "rule": "keep"},
                {"name": "grade", "rule": "keep"}
            ]
        }),
    ]
}

pub(crate) fn scenario(epsilon_total: f64) -> Value {
    json!({
        "name": "Small-business credit indicators",
        "class": "credit-risk-assessment",
        "purpose": "price inclusive-finance loans",
        "tables": [
            {"dataset": "enterprise_register", "columns": [
                {"name": "enterprise_id", "ops": ["join"]},
                {"name": "industry", "ops": ["group", "filter"]},
                {"name": "district", "ops": ["group", "filter"]},
                {"name": "founded_year", "ops": ["group"]},
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
        "release": {"epsilon_total": epsilon_total, "epsilon_per_query": 1.0, "min_group_size": 10, "max_rows_per_unit": 12}
    })
}

pub(crate) fn materials() -> Value {
    json!({
        "qualifications": "licensed bank",
        "data_needs": "enterprise indicators per industry and district",
        "development_method": "WASM job over protected aggregates",
        "security_measures": "role-based access to results",
        "security_officer": "Chen Jing"
    })
}

/// Builds the world on a fresh server with `enterprises` synthetic firms.
pub(crate) fn world(enterprises: usize, epsilon_total: f64, serve_args: &[&str]) -> World {
    world_with(enterprises, scenario(epsilon_total), serve_args)
}

/// The same, with a scenario of the caller's.
pub(crate) fn world_with(enterprises: usize, scenario_spec: Value, serve_args: &[&str]) -> World {
    let server = Server::start(serve_args).expect("server");
    let data = server.dir.join("data");
    let data_s = data.to_string_lossy().to_string();
    let (code, _, err) = run_invis(&[
        "gen-demo-data",
        "--out",
        &data_s,
        "--enterprises",
        &enterprises.to_string(),
    ])
    .expect("gen");
    assert_eq!(code, 0, "{err}");
    let names = [
        "Market Supervision Bureau",
        "Social Security Bureau",
        "Tax Service",
    ];
    let mut providers = Vec::new();
    for (spec, name) in dataset_specs(&data_s).iter().zip(names) {
        let p = server.party(name, "provider");
        register(&server, &p, spec);
        providers.push((name.to_string(), p));
    }
    let developer = server.party("Example Bank", "developer");
    let (scenario_id, agreement) = open_agreement(&server, &developer, &scenario_spec);
    World {
        server,
        developer,
        scenario: scenario_id,
        agreement,
        providers,
    }
}

/// Uploads a local file into `provider`'s storage location under a fresh
/// name (files are never replaced) and returns that name.
pub(crate) fn upload(provider: &Api, local: &Path) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = local.file_name().expect("file name").to_string_lossy();
    let name = format!("u{}-{base}", NEXT.fetch_add(1, Ordering::Relaxed));
    let bytes = std::fs::read(local).expect("reading the local file");
    let r = provider.put_raw(&format!("/v1/provider/files/{name}"), &bytes);
    assert_eq!(r.status, 201, "{}", r.text());
    name
}

/// `spec` as a provider sends it: a `path` naming a local file (as
/// [`dataset_specs`] and tests write them) is uploaded first and replaced
/// by the file's name in the provider's storage location (invariant I17).
pub(crate) fn brought(provider: &Api, spec: &Value) -> Value {
    let mut spec = spec.clone();
    if let Some(local) = spec["path"]
        .as_str()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        spec["path"] = json!(upload(provider, &local));
    }
    spec
}

/// Registers a dataset version (uploading its file first, see [`brought`])
/// and has the operator approve its rules; returns the catalog view of the
/// version.
pub(crate) fn register(server: &Server, provider: &Api, spec: &Value) -> Value {
    let r = provider.post("/v1/provider/datasets", &brought(provider, spec));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().expect("dataset id").to_string();
    server
        .operator
        .post(
            &format!("/v1/operator/datasets/{id}/review"),
            &json!({"approve": true}),
        )
        .ok()
}

/// Proposes and approves a scenario, and takes `developer` through its
/// application to a signed agreement; returns (scenario id, agreement id).
pub(crate) fn open_agreement(server: &Server, developer: &Api, scenario_spec: &Value) -> (String, String) {
    let sc = server.operator.post("/v1/operator/scenarios", scenario_spec).ok();
    let scenario_id = sc["id"].as_str().expect("scenario id").to_string();
    // A scenario of an already approved class is approved on proposal.
    if sc["status"] == "pending" {
        server
            .regulator
            .post(
                &format!("/v1/regulator/scenarios/{scenario_id}/decision"),
                &json!({"approve": true}),
            )
            .ok();
    }
    let app = developer
        .post(
            "/v1/developer/applications",
            &json!({"scenario_id": scenario_id, "materials": materials()}),
        )
        .ok();
    let app_id = app["id"].as_str().expect("application id");
    let d = server
        .operator
        .post(
            &format!("/v1/operator/applications/{app_id}/decision"),
            &json!({"approve": true, "valid_days": 30}),
        )
        .ok();
    let agreement = d["agreement"]["id"].as_str().expect("agreement id").to_string();
    developer
        .post(&format!("/v1/developer/agreements/{agreement}/sign"), &json!({}))
        .ok();
    (scenario_id, agreement)
}
