//! Stop-and-report (R20) and early termination (R13): halting an
//! agreement or a whole scenario with a risk report, ending an agreement,
//! and stopping the running jobs they cover (a stopped job releases
//! nothing). Each decision is one transaction with its ledger entries; the
//! jobs it stopped are recorded on the report afterwards.

use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::records::JobRecord;
use crate::state::AppState;
use crate::store::{append, blocking, get_in, list_in, put, NewEntry, StoreOps, Table};
use chrono::Utc;
use scenarios::oversight::{HaltScope, RiskReport};
use scenarios::party::{Actor, Role};
use scenarios::workflow::{Agreement, AgreementStatus, Scenario, ScenarioStatus};
use serde_json::json;
use std::sync::Arc;

/// Sets the stop flag of every running job `pick` selects; returns their
/// ids. A stopped job releases nothing.
pub fn stop_running(st: &AppState, pick: impl Fn(&JobRecord) -> bool) -> ServiceResult<Vec<String>> {
    let running: Vec<(String, Arc<std::sync::atomic::AtomicBool>)> = st
        .running
        .lock()
        .map_err(|_| ServiceError::Internal("job table poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut stopped = Vec::new();
    for (id, flag) in running {
        if let Some(j) = st.store.get::<JobRecord>(Table::Jobs, &id)? {
            if !j.status.is_final() && pick(&j) {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                stopped.push(id);
            }
        }
    }
    Ok(stopped)
}

/// Halts agreements in one transaction with the report and its ledger
/// entries; returns the report.
fn halt_in(
    tx: &dyn StoreOps,
    actor: &Actor,
    scope: HaltScope,
    (risk, measures): (String, String),
    agreements: Vec<Agreement>,
) -> ServiceResult<RiskReport> {
    let now = Utc::now();
    let report = RiskReport::file(new_id("rr"), scope, risk, measures, actor, now)?;
    let mut halted = Vec::new();
    for mut ag in agreements {
        if matches!(ag.status, AgreementStatus::Issued | AgreementStatus::Active) {
            ag.halt(&report.id)?;
            put(tx, &ag)?;
            halted.push(ag.id);
        }
    }
    put(tx, &report)?;
    append(
        tx,
        NewEntry::by(
            actor,
            "risk.report",
            &report.id,
            json!({"scope": report.scope, "risk": report.risk, "measures": report.measures,
                "halted_agreements": halted}),
        ),
        now,
    )?;
    Ok(report)
}

/// Records which jobs a halt stopped.
async fn with_stopped(
    st: &AppState,
    mut report: RiskReport,
    pick: impl Fn(&JobRecord) -> bool + Send + 'static,
) -> ServiceResult<RiskReport> {
    let s = st.clone();
    let stopped = blocking(move || stop_running(&s, pick)).await?;
    report.stopped_jobs = stopped;
    let r = report.clone();
    st.store.write(move |tx| put(tx, &r)).await?;
    Ok(report)
}

/// Agreement `id`, if `actor` may halt or end it: the operator, or the
/// developer holding it (anyone else is told it does not exist).
fn agreement_of(tx: &dyn StoreOps, actor: &Actor, id: &str) -> ServiceResult<Agreement> {
    get_in(tx, Table::Agreements, id)?
        .filter(|a: &Agreement| actor.role == Role::Operator || a.developer_id == actor.id)
        .ok_or_else(|| ServiceError::not_found("agreement", id))
}

/// Halts agreement `id` (the operator, or the developer holding it) with
/// a risk report of `risk` and `measures`, and stops its running jobs.
pub async fn halt_agreement(
    st: &AppState,
    actor: Actor,
    id: String,
    risk: String,
    measures: String,
) -> ServiceResult<RiskReport> {
    let agreement = id.clone();
    let report = st
        .store
        .write(move |tx| {
            let ag = agreement_of(tx, &actor, &id)?;
            if !matches!(ag.status, AgreementStatus::Issued | AgreementStatus::Active) {
                return Err(ServiceError::Conflict(format!(
                    "agreement {} is already closed",
                    ag.id
                )));
            }
            halt_in(
                tx,
                &actor,
                HaltScope::Agreement(ag.id.clone()),
                (risk, measures),
                vec![ag],
            )
        })
        .await?;
    with_stopped(st, report, move |j| j.agreement_id == agreement).await
}

/// Ends agreement `id` early for `reason` (R13); returns it and the jobs
/// stopped.
pub async fn terminate_agreement(
    st: &AppState,
    actor: Actor,
    id: String,
    reason: String,
) -> ServiceResult<(Agreement, Vec<String>)> {
    let agreement = id.clone();
    let ag = st
        .store
        .write(move |tx| {
            let mut ag = agreement_of(tx, &actor, &id)?;
            let now = Utc::now();
            ag.terminate(reason, &actor, now)?;
            put(tx, &ag)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "agreement.terminate",
                    &ag.id,
                    json!({"termination": ag.termination}),
                ),
                now,
            )?;
            Ok(ag)
        })
        .await?;
    let s = st.clone();
    let stopped = blocking(move || stop_running(&s, |j| j.agreement_id == agreement)).await?;
    Ok((ag, stopped))
}

/// Halts scenario `id` and every agreement under it with a risk report,
/// and stops their running jobs.
pub async fn halt_scenario(
    st: &AppState,
    actor: Actor,
    id: String,
    risk: String,
    measures: String,
) -> ServiceResult<RiskReport> {
    let scenario = id.clone();
    let report = st
        .store
        .write(move |tx| {
            let mut sc: Scenario =
                get_in(tx, Table::Scenarios, &id)?.ok_or_else(|| ServiceError::not_found("scenario", &id))?;
            if sc.status == ScenarioStatus::Halted {
                return Err(ServiceError::Conflict(format!(
                    "scenario {} is already halted",
                    sc.id
                )));
            }
            sc.status = ScenarioStatus::Halted;
            put(tx, &sc)?;
            let agreements: Vec<Agreement> = list_in(tx, Table::Agreements, Some(("scenario_id", &sc.id)))?;
            halt_in(
                tx,
                &actor,
                HaltScope::Scenario(sc.id.clone()),
                (risk, measures),
                agreements,
            )
        })
        .await?;
    with_stopped(st, report, move |j| j.scenario_id == scenario).await
}

/// The risk reports `actor` sees: a developer those it filed, everyone
/// else all. Blocking.
pub fn reports_visible_to(st: &AppState, actor: &Actor) -> ServiceResult<Vec<RiskReport>> {
    match actor.role {
        Role::Developer => st.store.list(Table::RiskReports, Some(("filed_by", &actor.id))),
        _ => st.store.list(Table::RiskReports, None),
    }
}
