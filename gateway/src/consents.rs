//! Consent records per data subject and scenario (R14). Providers, who
//! hold the relationship with their data subjects, record consent and its
//! withdrawal for the scenarios reading their datasets; a withdrawal stops
//! the scenario's running jobs. Unit values are never shown back: lists
//! give counts, the ledger a digest of each batch.

use crate::datasets::current_datasets;
use crate::error::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::store::{append, blocking, get_in, put_consents, NewEntry, Table};
use chrono::Utc;
use scenarios::party::{Actor, Role};
use scenarios::workflow::Scenario;
use serde_json::json;
use std::collections::HashSet;

/// Most units in one request.
const MAX_UNITS: usize = 100_000;

/// The scenarios reading a dataset of `provider`. Blocking.
fn scenarios_of(st: &AppState, provider: &str) -> ServiceResult<HashSet<String>> {
    let mine: HashSet<String> = current_datasets(st)?
        .into_iter()
        .filter(|d| d.owner == provider)
        .map(|d| d.name)
        .collect();
    let all: Vec<Scenario> = st.store.list(Table::Scenarios, None)?;
    Ok(all
        .into_iter()
        .filter(|s| s.spec.tables.iter().any(|t| mine.contains(&t.dataset)))
        .map(|s| s.id)
        .collect())
}

/// A batch of consent records as recorded.
#[derive(Debug)]
pub struct Recorded {
    /// The scenario.
    pub scenario_id: String,
    /// Consent given (true) or withdrawn (false).
    pub granted: bool,
    /// Distinct units in the batch.
    pub units: usize,
    /// Records that changed.
    pub changed: usize,
    /// The running jobs a withdrawal stopped (`None` when nothing was
    /// withdrawn).
    pub stopped_jobs: Option<Vec<String>>,
}

/// `actor` (a provider) records consent (`granted`) or its withdrawal of
/// `units` for scenario `scenario_id`, with how it was obtained (`basis`).
pub async fn record(
    st: &AppState,
    actor: Actor,
    scenario_id: String,
    units: Vec<String>,
    granted: bool,
    basis: String,
) -> ServiceResult<Recorded> {
    if units.is_empty() || units.len() > MAX_UNITS {
        return Err(ServiceError::BadRequest(format!(
            "give between 1 and {MAX_UNITS} units"
        )));
    }
    if units.iter().any(|u| u.is_empty() || u.len() > 200) {
        return Err(ServiceError::BadRequest("each unit must be 1-200 bytes".into()));
    }
    if basis.trim().is_empty() {
        return Err(ServiceError::BadRequest(
            "the basis of the consent is required".into(),
        ));
    }
    let s = st.clone();
    let scenario = scenario_id.clone();
    let (mut out, withdrawn) = blocking(move || {
        if !scenarios_of(&s, &actor.id)?.contains(&scenario_id) {
            return Err(ServiceError::NotFound(format!(
                "no scenario {} reading your datasets",
                scenario_id.escape_debug()
            )));
        }
        let mut sorted = units.clone();
        sorted.sort();
        sorted.dedup();
        let digest = hex::encode(scenarios::ledger::sha256(sorted.join("\n").as_bytes()));
        let out = s.store.tx(move |tx| {
            let sc: Option<Scenario> = get_in(tx, Table::Scenarios, &scenario_id)?;
            let sc = sc.ok_or_else(|| ServiceError::NotFound("scenario vanished".into()))?;
            let now = Utc::now();
            let changed = put_consents(tx, &sc.id, &sorted, granted, &actor.id, &now.to_rfc3339())?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    if granted {
                        "consent.grant"
                    } else {
                        "consent.withdraw"
                    },
                    &sc.id,
                    json!({"units": sorted.len(), "changed": changed, "units_sha256": digest,
                        "basis": basis}),
                ),
                now,
            )?;
            Ok(Recorded {
                scenario_id: sc.id,
                granted,
                units: sorted.len(),
                changed,
                stopped_jobs: None,
            })
        })?;
        Ok((out, !granted))
    })
    .await?;
    // A withdrawal reaches running jobs too: they stop and release nothing.
    if withdrawn && out.changed > 0 {
        let s = st.clone();
        let stopped = blocking(move || crate::halts::stop_running(&s, |j| j.scenario_id == scenario)).await?;
        out.stopped_jobs = Some(stopped);
    }
    Ok(out)
}

/// Consent counts per scenario as (scenario, granted, withdrawn): a
/// provider's for the scenarios reading its datasets, everyone else's for
/// all. Blocking.
pub fn counts_visible_to(st: &AppState, actor: &Actor) -> ServiceResult<Vec<(String, u64, u64)>> {
    let all = st.store.consent_counts()?;
    if actor.role != Role::Provider {
        return Ok(all);
    }
    let mine = scenarios_of(st, &actor.id)?;
    Ok(all.into_iter().filter(|(sc, _, _)| mine.contains(sc)).collect())
}
