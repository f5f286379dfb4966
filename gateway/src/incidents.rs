//! Security incidents (R25): reporting one and advancing it through the
//! emergency plan's states, each step one transaction with its ledger
//! entry.

use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::state::AppState;
use crate::store::{append, get_in, put, NewEntry, Table};
use chrono::Utc;
use scenarios::oversight::{Incident, PlanState, Severity};
use scenarios::party::Actor;
use serde_json::json;

/// Reports an incident of `severity` with its `summary`.
pub async fn report(
    st: &AppState,
    actor: Actor,
    severity: Severity,
    summary: String,
) -> ServiceResult<Incident> {
    st.store
        .write(move |tx| {
            let now = Utc::now();
            let i = Incident::report(new_id("in"), severity, summary, &actor, now)?;
            put(tx, &i)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "incident.report",
                    &i.id,
                    json!({"severity": i.severity, "summary": i.summary}),
                ),
                now,
            )?;
            Ok(i)
        })
        .await
}

/// Moves incident `id` to `state` of the emergency plan, with a note.
pub async fn advance(
    st: &AppState,
    actor: Actor,
    id: String,
    state: PlanState,
    note: String,
) -> ServiceResult<Incident> {
    st.store
        .write(move |tx| {
            let mut i: Incident =
                get_in(tx, Table::Incidents, &id)?.ok_or_else(|| ServiceError::not_found("incident", &id))?;
            let now = Utc::now();
            i.advance(state, note, &actor, now)?;
            put(tx, &i)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "incident.advance",
                    &i.id,
                    json!({"state": i.state, "note": i.history.last().map(|s| &s.note)}),
                ),
                now,
            )?;
            Ok(i)
        })
        .await
}

/// Every incident. Blocking.
pub fn all(st: &AppState) -> ServiceResult<Vec<Incident>> {
    st.store.list(crate::store::Table::Incidents, None)
}
