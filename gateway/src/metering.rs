//! Fee metering of jobs (R15): what a job is metered at, from which the
//! agreement's statement (`api::fees`) and the tenant's work units
//! (`crate::tenants`) are computed (see `scenarios::fees` for what is
//! metered and why rows are whole tables). A job whose details the
//! developer may not see ([`JobRecord::disclosed`]) is metered at its
//! allowance, not at what it used, so the bill carries nothing of them
//! either (I14).

use crate::records::{Allowance, JobRecord};
use chrono::NaiveDate;
use scenarios::fees::Metered;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{JobStatus, QueryRecord};

    fn job(status: JobStatus, queries: u64) -> JobRecord {
        let mut j = crate::records::test_job(status, queries as u32);
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
