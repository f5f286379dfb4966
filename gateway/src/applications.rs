//! Applications (R10, R11, R12): a developer applies to an approved
//! scenario with its materials, eligible by its organization's standing;
//! the operator decides within the deadline, issuing an agreement on
//! approval (R13). Each step is one transaction with its ledger entries.

use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::state::AppState;
use crate::store::{append, get_in, organization_of, put, NewEntry, Table};
use chrono::{Duration, Utc};
use scenarios::party::{Actor, Standing};
use scenarios::workflow::{Agreement, Application, Materials, Scenario, ScenarioStatus, Terms};
use serde_json::json;

/// A developer's standing and whether it may apply now (R10).
#[derive(Debug)]
pub struct Eligibility {
    /// Its organization, if any.
    pub organization: Option<String>,
    /// The standing facts recorded about it.
    pub standing: Vec<Standing>,
    /// Why it may not apply now (none: it may).
    pub reasons: Vec<String>,
}

/// `actor`'s standing, and the reasons it may not apply today. Blocking.
pub fn eligibility(st: &AppState, actor: &Actor) -> ServiceResult<Eligibility> {
    let org = st.store.read(|c| organization_of(c, &actor.id))?;
    let standing = org.as_ref().map(|o| o.standing.clone()).unwrap_or_default();
    let reasons = scenarios::party::ineligibility(&standing, Utc::now().date_naive());
    Ok(Eligibility {
        organization: org.map(|o| o.id),
        standing,
        reasons,
    })
}

/// `actor` applies to approved scenario `scenario_id` with `materials`;
/// refused with the reasons when its organization's standing makes it
/// ineligible (R10).
pub async fn apply(
    st: &AppState,
    actor: Actor,
    scenario_id: String,
    materials: Materials,
) -> ServiceResult<Application> {
    let (store, calendar) = (st.store.clone(), st.config.calendar.clone());
    store
        .write(move |tx| {
            let sc: Scenario = get_in(tx, Table::Scenarios, &scenario_id)?
                .filter(|s: &Scenario| s.status == ScenarioStatus::Approved)
                .ok_or_else(|| ServiceError::not_found("approved scenario", &scenario_id))?;
            let now = Utc::now();
            // R10: eligibility is checked at application, with the reasons.
            let standing = organization_of(tx, &actor.id)?
                .map(|o| o.standing)
                .unwrap_or_default();
            let why = scenarios::party::ineligibility(&standing, now.date_naive());
            if !why.is_empty() {
                return Err(ServiceError::Forbidden(format!(
                    "not eligible to apply: {}",
                    why.join("; ")
                )));
            }
            let app = Application::submit(new_id("ap"), &sc, materials, &actor, now, &calendar)?;
            put(tx, &app)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "application.submit",
                    &app.id,
                    json!({"scenario": sc.id, "due_on": app.due_on, "materials": app.materials}),
                ),
                now,
            )?;
            Ok(app)
        })
        .await
}

/// The operator's decision on an application.
#[derive(Debug)]
pub struct Decision {
    /// Approve (issuing an agreement) or reject.
    pub approve: bool,
    /// Why, for the developer and the ledger.
    pub reason: Option<String>,
    /// Validity of the agreement in days (default 90, at most 3 years).
    pub valid_days: Option<u32>,
    /// Terms; defaults to the platform's standard terms.
    pub terms: Option<Terms>,
}

/// Decides application `id`; on approval, issues its agreement (under the
/// tokenization key generation in force now) in the same transaction.
/// Returns the application and the agreement issued, if any.
pub async fn decide(
    st: &AppState,
    actor: Actor,
    id: String,
    d: Decision,
) -> ServiceResult<(Application, Option<Agreement>)> {
    let days = d.valid_days.unwrap_or(90);
    if !(1..=1095).contains(&days) {
        return Err(ServiceError::BadRequest(
            "valid_days must be between 1 and 1095".into(),
        ));
    }
    // Pinned now: a rotation racing this decision leaves the agreement on
    // the generation before it, which stays valid.
    let generation = st.keys.token_generation();
    let store = st.store.clone();
    store
        .write(move |tx| {
            let mut app: Application = get_in(tx, Table::Applications, &id)?
                .ok_or_else(|| ServiceError::NotFound(format!("no application {}", id.escape_debug())))?;
            let sc: Scenario = get_in(tx, Table::Scenarios, &app.scenario_id)?
                .ok_or_else(|| ServiceError::Internal("application without scenario".into()))?;
            let now = Utc::now();
            app.decide(d.approve, d.reason.clone(), &actor, now)?;
            put(tx, &app)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    &format!("application.{}", if d.approve { "approve" } else { "reject" }),
                    &app.id,
                    json!({"scenario": app.scenario_id, "developer": app.developer_id, "reason": app.reason,
                        "due_on": app.due_on, "on_time": now.date_naive() <= app.due_on}),
                ),
                now,
            )?;
            if !d.approve {
                return Ok((app, None));
            }
            if sc.status != ScenarioStatus::Approved {
                return Err(ServiceError::Conflict(format!(
                    "scenario {} is no longer approved",
                    sc.id
                )));
            }
            let mut ag = Agreement::issue(
                new_id("ag"),
                &app,
                d.terms.clone().unwrap_or_default(),
                now,
                now + Duration::days(i64::from(days)),
                &actor,
            )?;
            ag.token_generation = generation;
            put(tx, &ag)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "agreement.issue",
                    &ag.id,
                    json!({"application": app.id, "scenario": ag.scenario_id,
                    "developer": ag.developer_id, "valid_from": ag.valid_from, "valid_until": ag.valid_until,
                    "terms": ag.terms, "budget": sc.spec.release.total_budget(),
                    "token_generation": ag.token_generation}),
                ),
                now,
            )?;
            Ok((app, Some(ag)))
        })
        .await
}

/// Application `id` of `developer` (another developer's answers 404).
/// Blocking.
pub fn own(st: &AppState, developer: &str, id: &str) -> ServiceResult<Application> {
    let app: Option<Application> = st.store.get(Table::Applications, id)?;
    app.filter(|a| a.developer_id == developer)
        .ok_or_else(|| ServiceError::not_found("application", id))
}

/// The applications of `developer`. Blocking.
pub fn of_developer(st: &AppState, developer: &str) -> ServiceResult<Vec<Application>> {
    st.store
        .list(Table::Applications, Some(("developer_id", developer)))
}

/// Every application. Blocking.
pub fn all(st: &AppState) -> ServiceResult<Vec<Application>> {
    st.store.list(Table::Applications, None)
}

/// Every application, each with whether it is overdue today (R12).
/// Blocking.
pub fn all_with_overdue(st: &AppState) -> ServiceResult<Vec<(Application, bool)>> {
    let apps = all(st)?;
    let today = Utc::now().date_naive();
    Ok(apps
        .into_iter()
        .map(|a| {
            let overdue = a.is_overdue(today);
            (a, overdue)
        })
        .collect())
}
