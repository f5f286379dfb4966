//! Scenario proposals (R8): the operator proposes a scenario for the
//! regulator's approval; its spec is checked against the current catalog
//! (shared datasets only, delta scaled to the largest population it
//! reads), and a class the regulator approved once approves its later
//! scenarios, unless that approval came from an account the proposer's
//! organization created (I16); the regulator decides the others. Each
//! step is one transaction with its ledger entries.

use crate::datasets::current_datasets;
use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::state::AppState;
use crate::store::{append, list_in, party_in, put, NewEntry, StoreOps, Table};
use chrono::Utc;
use scenarios::party::Actor;
use scenarios::policy::ScenarioSpec;
use scenarios::workflow::Scenario;
use serde_json::json;

/// The party that decided a record, as an actor with the chain of
/// accounts that created it; `None` when unknown.
fn decider_in(tx: &dyn StoreOps, id: Option<&str>) -> ServiceResult<Option<Actor>> {
    let Some(p) = id.map(|id| party_in(tx, id)).transpose()?.flatten() else {
        return Ok(None);
    };
    let creators = crate::store::creators_in(tx, &p)?;
    Ok(Some(Actor {
        id: p.id,
        role: p.role,
        name: p.name,
        org: p.organization,
        creators,
    }))
}

/// Proposes a scenario by `actor` with its `scenario.propose` entry, and
/// approves it under its class (with a `scenario.approve` entry) when a
/// prior approval of the class counts. Blocking.
pub fn propose(st: &AppState, actor: Actor, spec: ScenarioSpec) -> ServiceResult<Scenario> {
    let datasets = current_datasets(st)?;
    spec.validate(|name| datasets.iter().find(|d| d.name == name).map(|d| &d.spec))?;
    // Delta scaled to the largest population the scenario reads.
    let units = crate::jobs::population_units(&datasets);
    let largest = spec
        .tables
        .iter()
        .filter_map(|t| datasets.iter().find(|d| d.name == t.dataset))
        .map(|d| {
            let kind = scenarios::population::population_of(d.spec.unit_kind.as_deref());
            units.get(kind).copied().unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    spec.release.validate_for_population(largest)?;
    for t in &spec.tables {
        let shared = datasets
            .iter()
            .find(|d| d.name == t.dataset)
            .is_some_and(|d| d.spec.share_class != scenarios::catalog::ShareClass::NotShared);
        if !shared {
            return Err(ServiceError::BadRequest(format!(
                "dataset `{}` is not shared and cannot be developed",
                t.dataset
            )));
        }
    }
    let now = Utc::now();
    let mut sc = Scenario::propose(new_id("sc"), spec, &actor, now)?;
    st.store.tx(move |tx| {
        append(
            tx,
            NewEntry::by(
                &actor,
                "scenario.propose",
                &sc.id,
                json!({"name": sc.spec.name, "class": sc.spec.class,
                "purpose": sc.spec.purpose, "spec": sc.spec}),
            ),
            now,
        )?;
        // A class the regulator approved once approves its later
        // scenarios (R8).
        // An approval by an account the proposer's organization created
        // approves nothing further (I16): the proposal then waits for
        // the regulator.
        let approved: Vec<Scenario> = list_in(tx, Table::Scenarios, Some(("status", "approved")))?;
        let mut under = None;
        let class = sc.spec.class.clone();
        for prior in approved.iter().filter(|p| p.spec.class == class) {
            let Some(decider) = decider_in(tx, prior.decided_by.as_deref())? else {
                continue;
            };
            if sc.approve_under_class(prior, &decider, now).is_ok() {
                under = Some(prior);
                break;
            }
        }
        if let Some(prior) = under {
            append(
                tx,
                NewEntry::system(
                    "scenario.approve",
                    &sc.id,
                    json!({"class": sc.spec.class, "reason": sc.reason, "class_approved_with": prior.id}),
                ),
                now,
            )?;
        }
        put(tx, &sc)?;
        Ok(sc)
    })
}

/// The regulator's decision on scenario `id` (R8).
pub async fn decide(
    st: &AppState,
    actor: Actor,
    id: String,
    approve: bool,
    reason: Option<String>,
) -> ServiceResult<Scenario> {
    let store = st.store.clone();
    store
        .write(move |tx| {
            let mut sc: Scenario = crate::store::get_in(tx, Table::Scenarios, &id)?
                .ok_or_else(|| ServiceError::NotFound(format!("no scenario {}", id.escape_debug())))?;
            let now = Utc::now();
            sc.decide(approve, reason.clone(), &actor, now)?;
            put(tx, &sc)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    &format!("scenario.{}", if approve { "approve" } else { "reject" }),
                    &sc.id,
                    json!({"class": sc.spec.class, "reason": sc.reason}),
                ),
                now,
            )?;
            Ok(sc)
        })
        .await
}

/// Approved scenario `id`: scenarios that are not approved are invisible
/// to developers. Blocking.
pub fn approved(st: &AppState, id: &str) -> ServiceResult<Scenario> {
    let sc: Option<Scenario> = st.store.get(Table::Scenarios, id)?;
    sc.filter(|s| s.status == scenarios::workflow::ScenarioStatus::Approved)
        .ok_or_else(|| ServiceError::not_found("approved scenario", ""))
}

/// [`approved`] with the current catalog (for the scenario's local-run
/// bundle, `crate::local::bundle`). Blocking.
pub fn approved_with_catalog(
    st: &AppState,
    id: &str,
) -> ServiceResult<(Scenario, Vec<crate::records::DatasetRecord>)> {
    let sc: Option<Scenario> = st.store.get(Table::Scenarios, id)?;
    let datasets = current_datasets(st)?;
    let sc = sc
        .filter(|s| s.status == scenarios::workflow::ScenarioStatus::Approved)
        .ok_or_else(|| ServiceError::not_found("approved scenario", ""))?;
    Ok((sc, datasets))
}

/// Every scenario, by proposal. Blocking.
pub fn all(st: &AppState) -> ServiceResult<Vec<Scenario>> {
    st.store.list(Table::Scenarios, None)
}

/// The approved scenarios (the developers' catalog of scenarios). Blocking.
pub fn all_approved(st: &AppState) -> ServiceResult<Vec<Scenario>> {
    st.store.list(Table::Scenarios, Some(("status", "approved")))
}
