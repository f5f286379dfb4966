//! Adversarial review of issue 15 (non-reversibility II): attacks by a
//! hostile developer that the merged work did not stop, kept as regression
//! tests of their fixes.

use crate::fixture::{open_agreement, register, scenario, world};
use invis_tests::{probe, run_invis, Api};
use serde_json::{json, Value};

const COUNT: &str = "SELECT district, COUNT(*) AS n FROM enterprise_register GROUP BY district";

fn run_under(developer: &Api, agreement: &str) -> Value {
    developer
        .post_raw(
            &format!("/v1/developer/agreements/{agreement}/jobs?wait=true"),
            &probe(COUNT),
            "application/wasm",
        )
        .ok()
}

/// Registers a new version of `enterprise_register` with `enterprises`
/// firms, generated into `dir` under the server's directory.
fn new_register_version(w: &crate::fixture::World, dir: &str, enterprises: usize) {
    let data = w.server.dir.join(dir);
    let (code, _, err) = run_invis(&[
        "gen-demo-data",
        "--out",
        &data.to_string_lossy(),
        "--enterprises",
        &enterprises.to_string(),
    ])
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let spec = crate::fixture::dataset_specs(&data.to_string_lossy())
        .into_iter()
        .next()
        .unwrap();
    register(&w.server, w.provider("Market Supervision Bureau"), &spec);
}

/// The catalog rounds row counts to 1,000 so that a new version's single
/// added unit does not show. The delta a query is charged was scaled to
/// the population's exact unit count (`1/(1000 N)` once `N` passes
/// 10,000), and the developer sees what each job was charged: one firm
/// more in a new version changed the charge, so the count was exact to the
/// unit. The count used for the delta caps is now the sum of each dataset's
/// units rounded up to the catalog's granularity.
#[test]
fn the_delta_charged_does_not_count_the_population_exactly() {
    // A scenario approved on a small population (delta 1e-7 per query),
    // still running after the data grew.
    let w = world(500, 10.0, &[]);
    let charged = |w: &crate::fixture::World| {
        let job = run_under(&w.developer, &w.agreement);
        assert_eq!(job["status"], "succeeded", "{job}");
        job["charged"]["delta"].as_f64().expect("charged delta")
    };
    new_register_version(&w, "data-a", 12_500);
    let a = charged(&w);
    new_register_version(&w, "data-b", 12_501);
    let b = charged(&w);
    assert!(
        a < 1e-7,
        "the per-query delta is scaled to the grown population: {a}"
    );
    assert_eq!(a, b, "one more enterprise must not change the charge");
}

/// A refusal at the population level named the population's spent figure:
/// everything every organization had spent on it, so a developer learned
/// other tenants' spending (and, probing, when they query). It now names
/// the level and the population only.
#[test]
fn a_population_refusal_does_not_show_what_others_spent() {
    let w = world(500, 10.0, &[]);
    // Another organization spends epsilon 1, the developer epsilon 1; then
    // the regulator lowers the population's cap to what is spent.
    let other = w.server.party("Other Bank", "developer");
    let (_, other_ag) = open_agreement(&w.server, &other, &scenario(10.0));
    let j = run_under(&other, &other_ag);
    assert_eq!(j["status"], "succeeded", "{j}");
    let j = run_under(&w.developer, &w.agreement);
    assert_eq!(j["status"], "succeeded", "{j}");
    let r = w.server.regulator.post(
        "/v1/regulator/populations/enterprise/caps",
        &json!({"caps": {"population": {"epsilon": 2.0}}, "reason": "pilot"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let job = run_under(&w.developer, &w.agreement);
    assert_eq!(job["status"], "failed", "{job}");
    let log = job["logs"].to_string();
    assert!(log.contains("the population level"), "{job}");
    assert!(
        !log.contains("spent") && !log.contains("of 2"),
        "the population's spending is not the developer's to see: {log}"
    );
    // The developer's own figures are still stated at its own levels.
    let own = w
        .developer
        .get(&format!("/v1/developer/agreements/{}", w.agreement))
        .ok();
    assert_eq!(own["budget"]["spent"]["epsilon"], 1.0, "{own}");
}

/// A provider's new version of a dataset under another unit kind moved the
/// same enterprises into a fresh population, with nothing spent at any
/// level: a scenario over that dataset started again. A new version now
/// keeps its unit kind.
#[test]
fn a_new_version_cannot_move_its_units_to_a_fresh_population() {
    let w = world(500, 10.0, &[]);
    assert_eq!(run_under(&w.developer, &w.agreement)["status"], "succeeded");
    let data = w.server.dir.join("data");
    let mut spec = crate::fixture::dataset_specs(&data.to_string_lossy())
        .into_iter()
        .next()
        .unwrap();
    let spec_file = crate::fixture::brought(w.provider("Market Supervision Bureau"), &spec);
    spec = spec_file;
    for kind in [json!("firm"), Value::Null] {
        spec["unit_kind"] = kind.clone();
        let r = w
            .provider("Market Supervision Bureau")
            .post("/v1/provider/datasets", &spec);
        assert_eq!(r.status, 409, "unit kind {kind}: {}", r.text());
        assert!(r.message().contains("unit kind"), "{}", r.text());
    }
    // The same kind is a new version as before.
    spec["unit_kind"] = json!("enterprise");
    register(&w.server, w.provider("Market Supervision Bureau"), &spec);
}
