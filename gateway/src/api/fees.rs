//! Fees (R15): the published tariff and per-agreement statements metered
//! from the agreement's jobs (see `scenarios::fees` for what is metered and
//! why rows are whole tables). A job whose details the developer may not
//! see ([`JobRecord::disclosed`]) is metered at its allowance, not at what
//! it used, so the bill carries nothing of them either (I14).

use super::{blocking, Allowance, JobRecord, Period};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::Table;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::NaiveDate;
use scenarios::fees::Metered;
use scenarios::party::Role;
use scenarios::workflow::Agreement;
use serde_json::{json, Value};

pub(crate) async fn tariff(State(st): State<AppState>, Auth(_a): Auth) -> Json<Value> {
    Json(json!({"currency": "CNY", "unit": "fen", "tariff": st.config.tariff}))
}

/// What an agreement's jobs used in a period: jobs that started, released
/// queries, the rows they were metered for, fuel. A running job counts as
/// a job only; an ended job whose details are withheld is metered at its
/// allowance (its fuel limit, and for each query it received every table
/// in its scope); any other ended job at what it used. `fuel_limit` stands
/// in for the allowance of jobs recorded before allowances existed.
pub(crate) fn metered(
    jobs: &[JobRecord],
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    fuel_limit: u64,
) -> Metered {
    let mut m = Metered::default();
    for j in jobs {
        let Some(started) = j.started_at else { continue };
        let day = started.date_naive();
        if from.is_some_and(|f| day < f) || to.is_some_and(|t| day > t) {
            continue;
        }
        m.jobs += 1;
        if !j.status.is_final() {
            continue;
        }
        let queries = j.queries.len() as u64;
        m.queries += queries;
        // Compiling depends on the module alone: charged as measured,
        // before the run (at submission) and, when the module had left the
        // cache, at the start of the run.
        let compile = match (&j.usage, j.disclosed()) {
            (Some(u), true) => u.compile_ms,
            _ => j.compile_ms,
        };
        m.compile_ms = m.compile_ms.saturating_add(compile);
        let (rows, fuel) = if j.disclosed() {
            (
                j.queries.iter().map(|q| q.rows_metered).sum(),
                j.usage.as_ref().map_or(0, |u| u.fuel),
            )
        } else {
            let a = j.allowance.unwrap_or(Allowance {
                fuel: fuel_limit,
                rows_per_query: j.queries.iter().map(|q| q.rows_metered).max().unwrap_or(0),
            });
            (queries.saturating_mul(a.rows_per_query), a.fuel)
        };
        m.rows = m.rows.saturating_add(rows);
        m.fuel = m.fuel.saturating_add(fuel);
    }
    m
}

pub(crate) async fn statement(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Query(p): Query<Period>,
) -> ApiResult<Json<Value>> {
    if let (Some(f), Some(t)) = (p.from, p.to) {
        if f > t {
            return Err(ApiError::BadRequest("`from` is after `to`".into()));
        }
    }
    let store = st.store.clone();
    let (ag, jobs) = blocking(move || {
        let ag: Agreement = store
            .get(Table::Agreements, &id)?
            .filter(|a: &Agreement| actor.role != Role::Developer || a.developer_id == actor.id)
            .ok_or_else(|| ApiError::NotFound(format!("no agreement {}", id.escape_debug())))?;
        let jobs: Vec<JobRecord> = store.list(Table::Jobs, Some(("agreement_id", &ag.id)))?;
        Ok((ag, jobs))
    })
    .await?;
    let fuel_limit = st.config.job_limits.fuel;
    let statement = st
        .config
        .tariff
        .statement(metered(&jobs, p.from, p.to, fuel_limit));
    Ok(Json(json!({
        "agreement": ag.id, "developer": ag.developer_id, "scenario": ag.scenario_id,
        "period": {"from": p.from, "to": p.to}, "currency": "CNY", "unit": "fen",
        "tariff": st.config.tariff, "statement": statement,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{JobStatus, QueryRecord};

    fn job(status: JobStatus, queries: u64) -> JobRecord {
        let mut j = crate::api::developer::test_job(status, queries as u32);
        j.finished_at = None;
        j.usage = Some(runtime::Usage {
            fuel: 1_234,
            ..Default::default()
        });
        j.queries = (0..queries)
            .map(|_| QueryRecord {
                ledger_seq: None,
                sql: "SELECT 1".into(),
                epsilon: 1.0,
                released_groups: Some(1),
                output_hash: None,
                rows_metered: 7,
            })
            .collect();
        j.allowance = Some(Allowance {
            fuel: 1_000_000,
            rows_per_query: 100,
        });
        j
    }

    #[test]
    fn undisclosed_jobs_are_metered_at_their_allowance() {
        let m = |j: JobRecord| {
            let m = metered(&[j], None, None, 5);
            (m.jobs, m.queries, m.rows, m.fuel)
        };
        assert_eq!(m(job(JobStatus::Succeeded, 2)), (1, 2, 14, 1_234));
        assert_eq!(m(job(JobStatus::Failed, 0)), (1, 0, 0, 1_234));
        assert_eq!(m(job(JobStatus::Failed, 2)), (1, 2, 200, 1_000_000));
        assert_eq!(m(job(JobStatus::AwaitingReview, 1)), (1, 1, 100, 1_000_000));
        assert_eq!(m(job(JobStatus::Withheld, 3)), (1, 3, 300, 1_000_000));
        // A running job counts as a job and nothing more until it ends.
        assert_eq!(m(job(JobStatus::Running, 2)), (1, 0, 0, 0));
    }
}
