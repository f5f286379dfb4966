//! Agreements (R12, R13): a developer's open agreement as handlers and
//! services look it up; signing one; filing it with the regulator; the
//! overdue list of applications and filings; a developer's own agreements
//! with what its jobs were charged. Each change is one transaction with
//! its ledger entry.

use crate::error::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::store::{append, get_in, put, NewEntry, Table};
use chrono::{NaiveDate, Utc};
use scenarios::budget::Budget;
use scenarios::party::Actor;
use scenarios::workflow::{Agreement, Application, Scenario};
use serde_json::json;

/// A developer's own agreement, open now, with its scenario.
pub fn open_agreement_of(st: &AppState, developer: &str, id: &str) -> ServiceResult<(Agreement, Scenario)> {
    let ag: Agreement = st
        .store
        .get(Table::Agreements, id)?
        .filter(|a: &Agreement| a.developer_id == developer)
        .ok_or_else(|| ServiceError::not_found("agreement", id))?;
    ag.check_open(Utc::now())?;
    let sc: Scenario = st
        .store
        .get(Table::Scenarios, &ag.scenario_id)?
        .ok_or_else(|| ServiceError::Internal("agreement without scenario".into()))?;
    Ok((ag, sc))
}

/// `actor` (the developer it was issued to) signs agreement `id`.
pub async fn sign(st: &AppState, actor: Actor, id: String) -> ServiceResult<Agreement> {
    let (store, calendar) = (st.store.clone(), st.config.calendar.clone());
    store
        .write(move |tx| {
            let mut ag: Agreement = get_in(tx, Table::Agreements, &id)?
                .filter(|a: &Agreement| a.developer_id == actor.id)
                .ok_or_else(|| ServiceError::not_found("agreement", &id))?;
            let now = Utc::now();
            ag.sign(&actor, now, &calendar)?;
            put(tx, &ag)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "agreement.sign",
                    &ag.id,
                    json!({"valid_until": ag.valid_until, "filing_due": ag.filing_due}),
                ),
                now,
            )?;
            Ok(ag)
        })
        .await
}

/// Records that agreement `id` was filed with the regulator (R12), and
/// whether on time.
pub async fn file(st: &AppState, actor: Actor, id: String) -> ServiceResult<Agreement> {
    st.store
        .write(move |tx| {
            let mut ag: Agreement =
                get_in(tx, Table::Agreements, &id)?.ok_or_else(|| ServiceError::not_found("agreement", &id))?;
            let now = Utc::now();
            ag.file(&actor, now)?;
            put(tx, &ag)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "agreement.file",
                    &ag.id,
                    json!({"filing_due": ag.filing_due, "on_time": ag.filing_due.is_none_or(|d| now.date_naive() <= d)}),
                ),
                now,
            )?;
            Ok(ag)
        })
        .await
}

/// The applications not decided by their due day and the agreements not
/// filed by theirs, as of `today` (R12). Blocking.
pub fn overdue(st: &AppState, today: NaiveDate) -> ServiceResult<(Vec<Application>, Vec<Agreement>)> {
    let apps: Vec<Application> = st.store.list(Table::Applications, None)?;
    let ags: Vec<Agreement> = st.store.list(Table::Agreements, None)?;
    Ok((
        apps.into_iter().filter(|a| a.is_overdue(today)).collect(),
        ags.into_iter().filter(|a| a.filing_overdue(today)).collect(),
    ))
}

/// Agreement `id` of `developer` (open or not), with its scenario.
fn own(st: &AppState, developer: &str, id: &str) -> ServiceResult<(Agreement, Scenario)> {
    let ag: Agreement = st
        .store
        .get(Table::Agreements, id)?
        .filter(|a: &Agreement| a.developer_id == developer)
        .ok_or_else(|| ServiceError::not_found("agreement", id))?;
    let sc: Scenario = st
        .store
        .get(Table::Scenarios, &ag.scenario_id)?
        .ok_or_else(|| ServiceError::Internal("agreement without scenario".into()))?;
    Ok((ag, sc))
}

/// Agreement `id` of `developer`, with its scenario and what the
/// developer's ended jobs were charged under it
/// (`crate::jobs::settled_spent`). Blocking.
pub fn one_with_spent(
    st: &AppState,
    developer: &str,
    id: &str,
) -> ServiceResult<(Agreement, Scenario, Budget)> {
    let (ag, sc) = own(st, developer, id)?;
    let spent = crate::jobs::settled_spent(&st.store, developer, &sc.id)?;
    Ok((ag, sc, spent))
}

/// Every agreement of `developer`, as [`one_with_spent`]. Blocking.
pub fn own_with_spent(st: &AppState, developer: &str) -> ServiceResult<Vec<(Agreement, Scenario, Budget)>> {
    let ags: Vec<Agreement> = st
        .store
        .list(Table::Agreements, Some(("developer_id", developer)))?;
    let mut out = Vec::new();
    for ag in ags {
        out.push(one_with_spent(st, developer, &ag.id)?);
    }
    Ok(out)
}

/// Every agreement, each with whether its filing is overdue today (R12).
/// Blocking.
pub fn all_with_filing_overdue(st: &AppState) -> ServiceResult<Vec<(Agreement, bool)>> {
    let all: Vec<Agreement> = st.store.list(Table::Agreements, None)?;
    let today = Utc::now().date_naive();
    Ok(all
        .into_iter()
        .map(|a| {
            let overdue = a.filing_overdue(today);
            (a, overdue)
        })
        .collect())
}
