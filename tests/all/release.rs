//! The release path over HTTP (issue 5): the output review airlock, and
//! scenarios with Gaussian noise and public key domains.

use crate::fixture::{scenario, world_with, BANK_JOB};
use invis_tests::probe;
use serde_json::json;

#[test]
fn the_airlock_holds_outputs_until_the_operator_decides() {
    let mut sc = scenario(10.0);
    sc["release"]["review_required"] = json!(true);
    let w = world_with(1500, sc, &[]);
    let op = &w.server.operator;

    let job = w.run(BANK_JOB);
    assert_eq!(job["status"], "awaiting_review", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let out = w.developer.get(&format!("/v1/developer/jobs/{id}/output"));
    assert_eq!(out.status, 409, "nothing is released before review");
    assert_eq!(w.developer.get("/v1/operator/reviews").status, 403);

    let reviews = op.get("/v1/operator/reviews").ok();
    let r = &reviews["reviews"][0];
    assert_eq!(r["job"]["id"], id);
    let checks: Vec<&str> = r["job"]["review"]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "protected_inputs",
            "small_groups_suppressed",
            "output_size",
            "output_readable",
            "datasets"
        ]
    );
    assert!(r["job"]["review"]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["pass"] == true));
    assert!(r["output_preview"]
        .as_str()
        .unwrap()
        .starts_with("industry,district"));

    // Withholding needs a reason; deciding twice is refused.
    let no_reason = op.post(
        &format!("/v1/operator/reviews/{id}/decision"),
        &json!({"approve": false}),
    );
    assert_eq!(no_reason.status, 400);
    let ok = op
        .post(
            &format!("/v1/operator/reviews/{id}/decision"),
            &json!({"approve": true}),
        )
        .ok();
    assert_eq!(ok["status"], "succeeded");
    assert_eq!(
        op.post(
            &format!("/v1/operator/reviews/{id}/decision"),
            &json!({"approve": true})
        )
        .status,
        409
    );
    assert_eq!(
        w.developer.get(&format!("/v1/developer/jobs/{id}/output")).status,
        200
    );

    // A second output is withheld, with the reason kept.
    let second = w.run(BANK_JOB);
    let id2 = second["id"].as_str().unwrap();
    let withheld = op
        .post(
            &format!("/v1/operator/reviews/{id2}/decision"),
            &json!({"approve": false, "reason": "the purpose does not cover district-level staffing"}),
        )
        .ok();
    assert_eq!(withheld["status"], "withheld");
    assert_eq!(
        withheld["review"]["decision"]["reason"],
        "the purpose does not cover district-level staffing"
    );
    assert_eq!(
        w.developer
            .get(&format!("/v1/developer/jobs/{id2}/output"))
            .status,
        409
    );

    // The regulator sees the reviewed release and the decision in its lineage.
    let rel = w.server.regulator.get("/v1/regulator/releases").ok();
    let releases = rel["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 1);
    let actions: Vec<&str> = releases[0]["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entry"]["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.ends_with(&["job.finish", "review.approve", "result.release"]),
        "{actions:?}"
    );
}

#[test]
fn gaussian_scenarios_charge_rho_over_http() {
    let mut sc = scenario(0.0);
    sc["release"] = json!({"noise": "gaussian", "rho_total": 0.5, "rho_per_query": 0.25, "min_group_size": 10, "max_rows_per_unit": 12});
    let w = world_with(1500, sc, &[]);
    let job = w.run(&probe(
        "SELECT district, COUNT(*) AS n FROM enterprise_register GROUP BY district",
    ));
    assert_eq!(job["status"], "succeeded", "{job}");
    let ag = w
        .developer
        .get(&format!("/v1/developer/agreements/{}", w.agreement))
        .ok();
    assert_eq!(ag["budget"]["spent"]["rho"], 0.25);
    assert_eq!(ag["budget"]["spent"]["epsilon"], 0.0);
    assert_eq!(ag["budget"]["noise"], "gaussian");
    assert!(ag["budget"]["guarantee"]["epsilon"].as_f64().unwrap() > 0.5);
    w.run(&probe("SELECT COUNT(*) AS n FROM enterprise_register"));
    let third = w.run(&probe("SELECT COUNT(*) AS n FROM enterprise_register"));
    assert!(third["logs"][0].as_str().unwrap().contains("rho"), "{third}");
}
