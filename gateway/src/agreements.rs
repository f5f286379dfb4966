//! Agreements as services use them: a developer's open agreement.

use crate::error::{ServiceError, ServiceResult};
use crate::state::AppState;
use chrono::Utc;

/// A developer's own agreement, open now, with its scenario.
pub fn open_agreement_of(
    st: &AppState,
    developer: &str,
    id: &str,
) -> ServiceResult<(scenarios::workflow::Agreement, scenarios::workflow::Scenario)> {
    use scenarios::workflow::{Agreement, Scenario};
    let ag: Agreement = st
        .store
        .get(crate::store::Table::Agreements, id)?
        .filter(|a: &Agreement| a.developer_id == developer)
        .ok_or_else(|| ServiceError::not_found("agreement", id))?;
    ag.check_open(Utc::now())?;
    let sc: Scenario = st
        .store
        .get(crate::store::Table::Scenarios, &ag.scenario_id)?
        .ok_or_else(|| ServiceError::Internal("agreement without scenario".into()))?;
    Ok((ag, sc))
}
