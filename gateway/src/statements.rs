//! Fee statements (R15): an agreement's jobs metered over a period and
//! priced by the published tariff. A job whose details the developer may
//! not see is metered at its allowance (`crate::metering`).

use crate::error::{ServiceError, ServiceResult};
use crate::records::JobRecord;
use crate::state::AppState;
use crate::store::{blocking, Table};
use chrono::NaiveDate;
use scenarios::party::{Actor, Role};
use scenarios::workflow::Agreement;

/// The statement of agreement `id` (a developer's own only) for the days
/// `from` to `to` (open where absent), with the agreement.
pub async fn statement(
    st: &AppState,
    actor: Actor,
    id: String,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> ServiceResult<(Agreement, scenarios::fees::Statement)> {
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(ServiceError::BadRequest("`from` is after `to`".into()));
        }
    }
    let store = st.store.clone();
    let (ag, jobs) = blocking(move || {
        let ag: Agreement = store
            .get(Table::Agreements, &id)?
            .filter(|a: &Agreement| actor.role != Role::Developer || a.developer_id == actor.id)
            .ok_or_else(|| ServiceError::NotFound(format!("no agreement {}", id.escape_debug())))?;
        let jobs: Vec<JobRecord> = store.list(Table::Jobs, Some(("agreement_id", &ag.id)))?;
        Ok((ag, jobs))
    })
    .await?;
    let fuel_limit = st.config.job_limits.fuel;
    let statement = st
        .config
        .tariff
        .statement(crate::metering::metered(&jobs, from, to, fuel_limit));
    Ok((ag, statement))
}
