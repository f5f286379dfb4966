//! Population budgets (issue 15): privacy loss belongs to the population of
//! a unit kind. Each test tries one way to get a fresh budget (a new
//! scenario, a second account of the same organization, a new dataset
//! version, a raised cap, an exhausted population) and fails, over HTTP
//! and `invis call`.

use crate::fixture::{open_agreement, register, scenario, world, world_with, World};
use invis_tests::{probe, run_invis, run_invis_as, Api};
use serde_json::{json, Value};

const COUNT: &str = "SELECT district, COUNT(*) AS n FROM enterprise_register GROUP BY district";

/// Runs the one-query probe under `agreement` as `developer`.
fn run_under(developer: &Api, agreement: &str) -> Value {
    developer
        .post_raw(
            &format!("/v1/developer/agreements/{agreement}/jobs?wait=true"),
            &probe(COUNT),
            "application/wasm",
        )
        .ok()
}

/// Asserts the job was refused for budget at `level`.
fn refused_at(job: &Value, level: &str) {
    assert_eq!(job["status"], "failed", "{job}");
    let log = job["logs"][0].as_str().unwrap_or("");
    assert!(
        log.contains("budget exhausted") && log.contains(&format!("the {level} level")),
        "expected a refusal at the {level} level: {job}"
    );
}

fn succeeded(job: &Value) {
    assert_eq!(job["status"], "succeeded", "{job}");
}

/// The organization of the party named `name`.
fn org_of(w: &World, name: &str) -> String {
    let parties = w.server.operator.get("/v1/operator/parties").ok();
    parties["parties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["organization"].as_str())
        .expect("party's organization")
        .to_string()
}

fn level<'a>(view: &'a Value, level: &str, holder: &str) -> &'a Value {
    view["levels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["level"] == level && l["holder"] == holder)
        .unwrap_or_else(|| panic!("no {level} level of {holder} in {view}"))
}

const ENTERPRISE: &str = "/v1/regulator/populations/enterprise";

#[test]
fn no_scenario_account_or_dataset_version_starts_a_fresh_budget() {
    let w = world(500, 10.0, &[]);
    let reg = &w.server.regulator;
    let bank = org_of(&w, "Example Bank");
    // The regulator gives each organization epsilon 2 of the enterprises.
    let r = reg.post(
        &format!("{ENTERPRISE}/caps"),
        &json!({"caps": {"organization": {"epsilon": 2.0}}, "reason": "pilot year"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    succeeded(&run_under(&w.developer, &w.agreement));
    succeeded(&run_under(&w.developer, &w.agreement));
    refused_at(&run_under(&w.developer, &w.agreement), "organization");

    // A fresh scenario over the same tables.
    let (_, fresh) = open_agreement(&w.server, &w.developer, &scenario(10.0));
    refused_at(&run_under(&w.developer, &fresh), "organization");

    // A second account of the same organization, with its own agreement.
    let created = w
        .server
        .operator
        .post(
            "/v1/operator/parties",
            &json!({"name": "Example Bank (second desk)", "role": "developer", "organization": bank}),
        )
        .ok();
    let second = w.server.operator.as_token(created["token"].as_str().unwrap());
    let (_, second_ag) = open_agreement(&w.server, &second, &scenario(10.0));
    refused_at(&run_under(&second, &second_ag), "organization");

    // A new version of a dataset about the same enterprises.
    let data = w.server.dir.join("data-v2");
    let (code, _, err) = run_invis(&[
        "gen-demo-data",
        "--out",
        &data.to_string_lossy(),
        "--enterprises",
        "520",
    ])
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let spec = crate::fixture::dataset_specs(&data.to_string_lossy())
        .into_iter()
        .next()
        .unwrap();
    register(&w.server, w.provider("Market Supervision Bureau"), &spec);
    refused_at(&run_under(&w.developer, &w.agreement), "organization");

    // Another organization still has its own share.
    let other = w.server.party("Other Bank", "developer");
    let (_, other_ag) = open_agreement(&w.server, &other, &scenario(10.0));
    succeeded(&run_under(&other, &other_ag));

    // The regulator sees every level; the bank's is spent.
    let view = reg.get(ENTERPRISE).ok();
    let org = level(&view, "organization", &bank);
    assert_eq!(org["spent"]["epsilon"], 2.0, "{view}");
    assert_eq!(org["remaining"]["epsilon"], 0.0, "{view}");
    assert!(org["allocated"]["epsilon"].as_f64().unwrap() >= 10.0, "{view}");
    let pop = level(&view, "population", "enterprise");
    assert_eq!(pop["spent"]["epsilon"], 3.0, "{view}");
    assert_eq!(view["period"], 1);
    assert_eq!(view["guarantee"]["laplace_composition"], "basic", "{view}");
    assert_eq!(view["guarantee"]["epsilon"], 3.0, "{view}");
    // Each charge is recorded per level in the ledger.
    let releases = reg.get("/v1/regulator/releases").ok();
    let charge = releases["releases"][0]["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entry"]["action"] == "query.charge")
        .expect("a charge")
        .clone();
    let levels = charge["entry"]["details"]["levels"].as_array().unwrap();
    let names: Vec<&str> = levels.iter().map(|l| l["level"].as_str().unwrap()).collect();
    assert_eq!(names, ["population", "allocation", "organization", "developer"]);
    assert_eq!(
        charge["entry"]["details"]["privacy_model"],
        "docs/privacy-model.md"
    );
}

#[test]
fn the_cap_only_goes_down_and_an_exhausted_population_waits_for_renewal() {
    let w = world(500, 10.0, &[]);
    let reg = &w.server.regulator;
    let before = reg.get(ENTERPRISE).ok();
    assert_eq!(before["opened"], false);

    // Bad requests change nothing.
    let raise = reg.post(
        &format!("{ENTERPRISE}/caps"),
        &json!({"caps": {"population": {"epsilon": 50.0}}, "reason": "more"}),
    );
    assert_eq!(
        (raise.status, raise.code().as_str()),
        (409, "conflict"),
        "{}",
        raise.text()
    );
    assert!(raise.message().contains("renewal"), "{}", raise.text());
    let cases = [
        (
            json!({"caps": {"population": {"epsilon": 1.0}}, "reason": " "}),
            400,
        ),
        (
            json!({"caps": {"population": {"epsilon": -1.0}}, "reason": "x"}),
            400,
        ),
        (
            json!({"caps": {"population": {"epsilons": 1.0}}, "reason": "x"}),
            400,
        ),
    ];
    for (body, status) in cases {
        let r = reg.post(&format!("{ENTERPRISE}/caps"), &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
    let unsafe_delta = reg.post(
        &format!("{ENTERPRISE}/renewal"),
        &json!({"caps": {"population": {"delta": 0.01}}, "reason": "x"}),
    );
    assert_eq!(unsafe_delta.status, 422, "{}", unsafe_delta.text());
    assert_eq!(
        reg.post(
            "/v1/regulator/populations/martians/caps",
            &json!({"caps": {}, "reason": "x"})
        )
        .status,
        404
    );
    assert_eq!(w.developer.get(ENTERPRISE).status, 403);
    assert_eq!(reg.get(ENTERPRISE).ok()["caps"], before["caps"]);

    // Lowered from the command line to one query's worth.
    let (code, out, err) = run_invis_as(
        &[
            "call",
            "POST",
            &format!("{ENTERPRISE}/caps"),
            r#"caps={"population": {"epsilon": 1.0, "rho": 0.0}}"#,
            "reason=incident under review",
        ],
        Some(reg),
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("population"), "{out}");
    succeeded(&run_under(&w.developer, &w.agreement));
    let job = run_under(&w.developer, &w.agreement);
    refused_at(&job, "population");
    assert!(
        job["logs"][0]
            .as_str()
            .unwrap()
            .contains("until the regulator renews it"),
        "{job}"
    );
    let other = w.server.party("Other Bank", "developer");
    let (_, other_ag) = open_agreement(&w.server, &other, &scenario(10.0));
    refused_at(&run_under(&other, &other_ag), "population");
    let view = reg.get(ENTERPRISE).ok();
    assert_eq!(view["exhausted"], true, "{view}");

    // The recorded renewal opens period 2 with a new cap.
    let r = reg.post(
        &format!("{ENTERPRISE}/renewal"),
        &json!({"caps": {"population": {"epsilon": 5.0}}, "reason": "annual review: risk accepted"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["period"], 2);
    succeeded(&run_under(&other, &other_ag));
    let now = reg.get(ENTERPRISE).ok();
    assert_eq!(level(&now, "population", "enterprise")["spent"]["epsilon"], 1.0);
    assert_eq!(now["exhausted"], false);
    let past = reg.get(&format!("{ENTERPRISE}?period=1")).ok();
    assert_eq!(level(&past, "population", "enterprise")["spent"]["epsilon"], 1.0);
    assert_eq!(reg.get(&format!("{ENTERPRISE}?period=3")).status, 404);
    let all = reg.get("/v1/regulator/populations").ok();
    assert!(all["populations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["population"] == "enterprise"));
    // The decisions are in the ledger.
    let ledger = reg.get("/v1/regulator/ledger").text();
    for action in [
        "population.open",
        "population.cap",
        "population.renew",
        "budget.allocate",
    ] {
        assert!(ledger.contains(action), "{action} missing from the ledger");
    }
}

#[test]
fn delta_is_scaled_to_the_population_when_a_scenario_is_proposed() {
    // 4000 enterprises in each of three tables: N is counted as their
    // sum, about 12000, so one query may spend at most 1/(1000 N) < 1e-7.
    let mut sc = scenario(5.0);
    sc["release"]["delta_per_query"] = json!(5e-8);
    sc["release"]["delta_total"] = json!(5e-6);
    let w = world_with(4000, sc.clone(), &[]);
    succeeded(&run_under(&w.developer, &w.agreement));
    sc["release"]["delta_per_query"] = json!(1e-7);
    let r = w.server.operator.post("/v1/operator/scenarios", &sc);
    assert_eq!(
        (r.status, r.code().as_str()),
        (422, "policy_violation"),
        "{}",
        r.text()
    );
    assert!(r.message().contains("units"), "{}", r.text());
}
