//! Objections (R7): filing one suspends a subject's rows, or a whole
//! dataset, from every query at once and stops the running jobs that read
//! the dataset; the operator resolves it. Each step is one transaction
//! with its ledger entry, and no view or entry carries the subject's unit
//! value (only its SHA-256).

use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::state::AppState;
use crate::store::{append, get_in, put, NewEntry, Table};
use chrono::Utc;
use scenarios::oversight::{Claim, Objection, ObjectionTarget};
use scenarios::party::{Actor, Role};
use scenarios::workflow::Scenario;
use serde_json::{json, Value};
use std::collections::HashSet;

/// An objection as shown: the subject's unit value is replaced by its
/// SHA-256, so nobody reads a protected value back from the platform.
pub fn view(o: &Objection) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let (ObjectionTarget::Subject { unit }, Some(t)) = (&o.target, v.get_mut("target")) {
        *t = json!({"kind": "subject", "unit_sha256": hex::encode(scenarios::ledger::sha256(unit.as_bytes()))});
    }
    v
}

/// Files an objection to `dataset` (one subject's unit, or the whole
/// dataset when `subject` is absent) by `actor` (the operator, or the
/// provider of that dataset); returns it and the jobs it stopped.
pub fn file(
    st: &AppState,
    actor: Actor,
    dataset: String,
    subject: Option<String>,
    objector: String,
    grounds: String,
) -> ServiceResult<(Objection, Vec<String>)> {
    let d = crate::datasets::current_datasets(st)?
        .into_iter()
        .find(|d| d.name == dataset)
        .ok_or_else(|| ServiceError::not_found("dataset", &dataset))?;
    if actor.role == Role::Provider && d.owner != actor.id {
        return Err(ServiceError::Forbidden(format!(
            "dataset `{}` is provided by another party",
            d.name
        )));
    }
    let target = match subject {
        Some(unit) => ObjectionTarget::Subject { unit },
        None => ObjectionTarget::Dataset,
    };
    let now = Utc::now();
    let claim = Claim {
        dataset: d.name.clone(),
        dataset_version: d.version,
        target,
        objector,
        grounds,
    };
    let o = Objection::file(new_id("ob"), claim, &actor, now)?;
    let shown = view(&o);
    let o = st.store.tx(move |tx| {
        put(tx, &o)?;
        let details = json!({"dataset": o.dataset, "dataset_version": o.dataset_version,
            "target": shown["target"], "grounds": o.grounds});
        append(tx, NewEntry::by(&actor, "objection.file", &o.id, details), now)?;
        Ok(o)
    })?;
    // Suspension reaches running jobs too: any job whose scenario reads
    // the dataset stops and releases nothing.
    let scenarios: Vec<Scenario> = st.store.list(Table::Scenarios, None)?;
    let reading: HashSet<String> = scenarios
        .iter()
        .filter(|sc| sc.spec.tables.iter().any(|t| t.dataset == o.dataset))
        .map(|sc| sc.id.clone())
        .collect();
    let stopped = crate::halts::stop_running(st, |j| reading.contains(&j.scenario_id))?;
    Ok((o, stopped))
}

/// The objections `actor` may see: all of them, or a provider's to its own
/// datasets.
pub fn visible_to(st: &AppState, actor: &Actor) -> ServiceResult<Vec<Objection>> {
    let all: Vec<Objection> = st.store.list(Table::Objections, None)?;
    if actor.role != Role::Provider {
        return Ok(all);
    }
    let mine: HashSet<String> = crate::datasets::current_datasets(st)?
        .into_iter()
        .filter(|d| d.owner == actor.id)
        .map(|d| d.name)
        .collect();
    Ok(all.into_iter().filter(|o| mine.contains(&o.dataset)).collect())
}

/// The operator's resolution of objection `id`, upheld or not, with why.
pub async fn resolve(
    st: &AppState,
    actor: Actor,
    id: String,
    upheld: bool,
    reason: String,
) -> ServiceResult<Objection> {
    st.store
        .write(move |tx| {
            let mut o: Objection = get_in(tx, Table::Objections, &id)?
                .ok_or_else(|| ServiceError::not_found("objection", &id))?;
            let now = Utc::now();
            o.resolve(upheld, reason, &actor, now)?;
            put(tx, &o)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "objection.resolve",
                    &o.id,
                    json!({"dataset": o.dataset, "status": o.status, "reason": o.resolution}),
                ),
                now,
            )?;
            Ok(o)
        })
        .await
}
