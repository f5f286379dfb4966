//! Separation of duties through the real server (issue 19, I16):
//! who may create which role, decisions refused to accounts the
//! requester's organization created, tokens of regulators out of the
//! operator's reach, and the route table's access column as the server
//! applies it to requests without a token.

use crate::fixture::{scenario, world};
use invis_tests::{run_invis, Api, Server};
use serde_json::{json, Value};

const ROLES: [&str; 4] = ["provider", "operator", "developer", "regulator"];

/// A party's organization, from the operator's list of parties.
fn organization_of(server: &Server, id: &str) -> String {
    let all = server.operator.get("/v1/operator/parties").ok();
    let list = all["parties"]
        .as_array()
        .or(all.as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .find(|p| p["id"] == id)
        .and_then(|p| p["organization"].as_str())
        .unwrap_or_else(|| panic!("no party {id} in {all}"))
        .to_string()
}

fn whoami(api: &Api) -> String {
    api.get("/v1/whoami").ok()["id"].as_str().expect("id").to_string()
}

/// The attack of issue 19: the operator manufactures a regulator and
/// approves its own pending scenario with it. Refused at creation.
#[test]
fn an_operator_cannot_manufacture_a_regulator_to_approve_its_own_scenario() {
    let w = world(200, 10.0, &[]);
    let server = &w.server;
    let mut spec = scenario(10.0);
    spec["class"] = json!("a-class-never-approved");
    let sc = server.operator.post("/v1/operator/scenarios", &spec).ok();
    assert_eq!(sc["status"], "pending", "{sc}");
    let id = sc["id"].as_str().expect("scenario id").to_string();
    let before = server.ledger_size();

    let r = server.operator.post(
        "/v1/operator/parties",
        &json!({"name": "Friendly Authority", "role": "regulator"}),
    );
    if r.status == 201 {
        // Today's code: the manufactured regulator approves the scenario.
        let fake = server
            .operator
            .as_token(r.json()["token"].as_str().expect("token"));
        let d = fake.post(
            &format!("/v1/regulator/scenarios/{id}/decision"),
            &json!({"approve": true}),
        );
        panic!(
            "an operator created a regulator, whose approval answered {}: {}",
            d.status,
            d.text()
        );
    }
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.code(), "forbidden", "{}", r.text());
    // Nor inside the regulator's own organization.
    let reg_org = organization_of(server, &whoami(&server.regulator));
    let r = server.operator.post(
        "/v1/operator/parties",
        &json!({"name": "Friendly Authority", "role": "regulator", "organization": reg_org}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(server.ledger_size(), before, "refusals changed nothing");
    let list = server.regulator.get("/v1/regulator/scenarios").ok();
    let mine = list
        .as_array()
        .or(list["scenarios"].as_array())
        .and_then(|a| a.iter().find(|s| s["id"] == id.as_str()).cloned())
        .expect("scenario listed");
    assert_eq!(mine["status"], "pending");
}

/// The authorization matrix, creation part: a party of each role as each
/// role. Only an operator creates providers, developers and its own staff;
/// only a regulator creates regulators (its own staff).
#[test]
fn authorization_matrix_create_a_party_of_each_role_as_each_role() {
    let server = Server::start(&[]).expect("server");
    let parties = [
        ("provider", server.party("Tax Service", "provider")),
        ("operator", server.operator.clone()),
        ("developer", server.party("Example Bank", "developer")),
        ("regulator", server.regulator.clone()),
    ];
    let op_org = organization_of(&server, &whoami(&server.operator));
    let reg_org = organization_of(&server, &whoami(&server.regulator));
    let routes = ["/v1/operator/parties", "/v1/regulator/parties"];
    let allowed = |by: &str, role: &str, route: &str| match (by, role) {
        ("operator", "provider" | "developer" | "operator") => route == routes[0],
        ("regulator", "regulator") => route == routes[1],
        _ => false,
    };

    // Refusals first: each answers 403 and changes nothing.
    let before = server.ledger_size();
    let mut refused = 0;
    for (by, api) in &parties {
        for role in ROLES {
            for route in routes {
                if allowed(by, role, route) {
                    continue;
                }
                let r = api.post(
                    route,
                    &json!({"name": format!("{by} makes {role}"), "role": role}),
                );
                assert_eq!(r.status, 403, "{by} creating a {role} at {route}: {}", r.text());
                refused += 1;
            }
        }
    }
    // Staff belong to their creator's organization, and an operator puts
    // providers and developers outside its own.
    for (api, route, role, org) in [
        (&server.operator, routes[0], "operator", reg_org.as_str()),
        (&server.operator, routes[0], "developer", op_org.as_str()),
        (&server.operator, routes[0], "provider", op_org.as_str()),
        (&server.regulator, routes[1], "regulator", op_org.as_str()),
    ] {
        let r = api.post(
            route,
            &json!({"name": "placed", "role": role, "organization": org}),
        );
        assert_eq!(r.status, 403, "a {role} into {org}: {}", r.text());
        refused += 1;
    }
    assert!(refused >= 28, "{refused}");
    assert_eq!(server.ledger_size(), before, "refusals changed nothing");

    // The allowed pairs.
    for (by, api) in &parties {
        for role in ROLES {
            for route in routes {
                if !allowed(by, role, route) {
                    continue;
                }
                let r = api.post(
                    route,
                    &json!({"name": format!("{by} makes {role}"), "role": role}),
                );
                assert_eq!(r.status, 201, "{by} creating a {role}: {}", r.text());
                let made = r.json();
                let org = made["organization"].as_str().expect("organization");
                match (*by, role) {
                    ("operator", "operator") => assert_eq!(org, op_org, "staff join the operator"),
                    ("regulator", _) => assert_eq!(org, reg_org, "staff join the regulator"),
                    _ => assert!(org != op_org && org != reg_org, "{made}"),
                }
                // The new account works, with its role.
                let new = api.as_token(made["token"].as_str().expect("token"));
                assert_eq!(new.get("/v1/whoami").ok()["role"], role);
            }
        }
    }
    // A chain: the operator's staff can create no regulator either, and
    // an operator created by the operator is still the operator's.
    let staff = server
        .operator
        .post(
            "/v1/operator/parties",
            &json!({"name": "staff", "role": "operator"}),
        )
        .ok();
    let staff = server.operator.as_token(staff["token"].as_str().expect("token"));
    let r = staff.post("/v1/operator/parties", &json!({"name": "x", "role": "regulator"}));
    assert_eq!(r.status, 403, "{}", r.text());
    let r = staff
        .post("/v1/operator/parties", &json!({"name": "y", "role": "operator"}))
        .ok();
    assert_eq!(r["organization"], op_org.as_str());
}

/// The authorization matrix, decision part: an account created by the
/// requester's organization decides nothing it asks for, even in a store
/// from before the creation rule (the creator is recovered from the ledger
/// when the store is opened). And the operator cannot take over a
/// regulator's account by reissuing its token.
#[test]
fn authorization_matrix_approve_with_an_account_your_organization_created() {
    let w = world(200, 10.0, &[]);
    let mut spec = scenario(10.0);
    spec["class"] = json!("another-class");
    let sc = w.server.operator.post("/v1/operator/scenarios", &spec).ok();
    let id = sc["id"].as_str().expect("scenario id").to_string();
    assert_eq!(sc["status"], "pending");

    // The operator cannot take over the regulator's token, nor revoke it.
    let reg_id = whoami(&w.server.regulator);
    let before = w.server.ledger_size();
    for what in ["token", "revoke"] {
        let r = w
            .server
            .operator
            .post(&format!("/v1/operator/parties/{reg_id}/{what}"), &json!({}));
        assert_eq!(r.status, 403, "{what}: {}", r.text());
    }
    assert_eq!(w.server.ledger_size(), before);
    assert_eq!(w.server.regulator.get("/v1/whoami").status, 200);

    // A store from before the rule: an account the operator created
    // (made here as a developer) holds the regulator role, and its creator
    // was never recorded on the party.
    let made = w
        .server
        .operator
        .post(
            "/v1/operator/parties",
            &json!({"name": "Friendly Authority", "role": "developer"}),
        )
        .ok();
    let token = made["token"].as_str().expect("token").to_string();
    let fake_id = made["id"].as_str().expect("id").to_string();
    let (op_token, reg_token) = (
        w.server.operator.token().to_string(),
        w.server.regulator.token().to_string(),
    );
    // And an operator account that (in such a store) the developer had
    // created, facing that developer's application.
    let planted = w
        .server
        .operator
        .post(
            "/v1/operator/parties",
            &json!({"name": "Planted", "role": "operator"}),
        )
        .ok();
    let planted_token = planted["token"].as_str().expect("token").to_string();
    let planted_id = planted["id"].as_str().expect("id").to_string();
    let dev_id = whoami(&w.developer);
    let app = w
        .developer
        .post(
            "/v1/developer/applications",
            &json!({"scenario_id": w.scenario, "materials": crate::fixture::materials()}),
        )
        .ok();
    let app_id = app["id"].as_str().expect("application id").to_string();
    // And a class the manufactured regulator "approved" in such a store.
    let mut third = scenario(10.0);
    third["class"] = json!("a-class-approved-by-the-operators-regulator");
    let sc3 = w.server.operator.post("/v1/operator/scenarios", &third).ok();
    let sc3 = sc3["id"].as_str().expect("scenario id").to_string();
    let mut old = w.server;
    old.kill();
    {
        let db = rusqlite::Connection::open(old.dir.join("invis.db")).expect("db");
        let has_creator: bool = db
            .query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('parties') WHERE name = 'created_by'",
                [],
                |r| r.get(0),
            )
            .expect("columns");
        let sql = if has_creator {
            "UPDATE parties SET role = 'regulator', created_by = NULL WHERE id = ?1"
        } else {
            "UPDATE parties SET role = 'regulator' WHERE id = ?1"
        };
        assert_eq!(db.execute(sql, [&fake_id]).expect("update"), 1);
        let n = db
            .execute(
                "UPDATE scenarios SET status = 'approved',
                     body = json_set(body, '$.status', 'approved', '$.decided_by', ?2)
                 WHERE id = ?1",
                [&sc3, &fake_id],
            )
            .expect("update");
        assert_eq!(n, 1);
        if has_creator {
            let n = db
                .execute(
                    "UPDATE parties SET created_by = ?2 WHERE id = ?1",
                    [&planted_id, &dev_id],
                )
                .expect("update");
            assert_eq!(n, 1);
        }
    }
    let server = Server::spawn(&old.dir, &[], &op_token, &reg_token).expect("restart");
    let fake = server.operator.as_token(&token);
    assert_eq!(fake.get("/v1/whoami").ok()["role"], "regulator");
    let before = server.ledger_size();
    let d = fake.post(
        &format!("/v1/regulator/scenarios/{id}/decision"),
        &json!({"approve": true}),
    );
    assert_eq!(d.status, 403, "{}", d.text());
    assert!(d.message().contains("created"), "{}", d.text());
    assert_eq!(server.ledger_size(), before, "the refusal changed nothing");
    // The planted operator decides nothing for the developer whose
    // account created it; another operator does.
    let planted = server.operator.as_token(&planted_token);
    let path = format!("/v1/operator/applications/{app_id}/decision");
    let d = planted.post(&path, &json!({"approve": true}));
    assert_eq!(d.status, 403, "{}", d.text());
    assert!(d.message().contains("created"), "{}", d.text());
    assert_eq!(server.ledger_size(), before, "the refusals changed nothing");
    server.operator.post(&path, &json!({"approve": true})).ok();
    // That class approval approves no later scenario of the class: the
    // next one waits for the regulator.
    let next = server.operator.post("/v1/operator/scenarios", &third).ok();
    assert_eq!(next["status"], "pending", "{next}");
    // The real regulator still decides.
    server
        .regulator
        .post(
            &format!("/v1/regulator/scenarios/{id}/decision"),
            &json!({"approve": true}),
        )
        .ok();
    drop(old);
}

/// `invis routes` says which routes are open: each answers without a
/// token, and each route for a role or for every authenticated party
/// refuses a request without one with 401.
#[test]
fn the_route_table_says_what_answers_without_a_token() {
    let (code, out, err) = run_invis(&["routes", "--json"]).expect("routes");
    assert_eq!(code, 0, "{err}");
    let routes: Vec<Value> = serde_json::from_str(&out).expect("route table");
    let server = Server::start(&[]).expect("server");
    let anonymous = server.operator.anonymous();
    let mut open = 0;
    for r in &routes {
        let (method, path) = (r["method"].as_str().unwrap(), r["path"].as_str().unwrap());
        let path = path
            .replace("{id}", "x_0000")
            .replace("{name}", "no_such_dataset")
            .replace("{seq}", "0");
        let reply = match method {
            "GET" => anonymous.get(&path),
            "PUT" => anonymous.put(&path, &json!({})),
            _ => anonymous.post(&path, &json!({})),
        };
        if r["access"]["kind"] == "public" {
            open += 1;
            assert!(
                ![401, 403, 405].contains(&reply.status) && reply.status < 500,
                "{method} {path} is open but answered {} without a token: {}",
                reply.status,
                reply.text()
            );
        } else {
            assert_eq!(
                reply.status,
                401,
                "{method} {path} without a token: {}",
                reply.text()
            );
        }
    }
    assert!(open >= 2, "health and the ledger's public key are open");
    let key = anonymous.get("/v1/ledger/public-key").ok();
    assert_eq!(key["algorithm"], "ed25519");
}
