//! The periodic operation report (R26): jobs, releases and queries in a
//! period, the timeliness of reviews and filings, budgets spent per
//! agreement, incidents, objections, risk reports, and each provider's
//! contribution. Computed from the records; metadata only, never outputs.

use crate::datasets::current_datasets;
use crate::error::{ServiceError, ServiceResult};
use crate::records::{DatasetRecord, JobRecord, JobStatus};
use crate::state::AppState;
use crate::store::{blocking, Party, Table};
use chrono::{Days, NaiveDate, Utc};
use scenarios::oversight::{Incident, Objection, ObjectionStatus, PlanState, RiskReport};
use scenarios::workflow::{Agreement, Application, ApplicationStatus, Scenario};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

fn count_by<'a>(keys: impl Iterator<Item = &'a str>) -> Value {
    let mut m: BTreeMap<&str, u64> = BTreeMap::new();
    for k in keys {
        *m.entry(k).or_default() += 1;
    }
    json!(m)
}

/// Everything the report is computed from.
struct Facts {
    parties: Vec<Party>,
    datasets: Vec<DatasetRecord>,
    scenarios: Vec<Scenario>,
    applications: Vec<Application>,
    agreements: Vec<Agreement>,
    jobs: Vec<JobRecord>,
    incidents: Vec<Incident>,
    objections: Vec<Objection>,
    risk_reports: Vec<RiskReport>,
    /// Epsilon spent per (developer, scenario), in the platform's units.
    spent: BTreeMap<(String, String), f64>,
}

/// The report for the days `from` to `to` (both included; `to` defaults
/// to today, `from` to 29 days before `to`).
pub async fn operation_report(
    st: &AppState,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> ServiceResult<Value> {
    let to = to.unwrap_or_else(|| Utc::now().date_naive());
    let from = from.unwrap_or_else(|| to.checked_sub_days(Days::new(29)).unwrap_or(to));
    if from > to {
        return Err(ServiceError::BadRequest("`from` is after `to`".into()));
    }
    let s = st.clone();
    let facts = blocking(move || {
        let store = &s.store;
        let agreements: Vec<Agreement> = store.list(Table::Agreements, None)?;
        let mut spent = BTreeMap::new();
        for a in &agreements {
            let b = crate::jobs::settled_spent(store, &a.developer_id, &a.scenario_id)?;
            spent.insert(
                (a.developer_id.clone(), a.scenario_id.clone()),
                b.epsilon.as_f64(),
            );
        }
        Ok(Facts {
            parties: store.parties()?,
            datasets: current_datasets(&s)?,
            scenarios: store.list(Table::Scenarios, None)?,
            applications: store.list(Table::Applications, None)?,
            agreements,
            jobs: store.list(Table::Jobs, None)?,
            incidents: store.list(Table::Incidents, None)?,
            objections: store.list(Table::Objections, None)?,
            risk_reports: store.list(Table::RiskReports, None)?,
            spent,
        })
    })
    .await?;
    Ok(compute(&facts, from, to))
}

fn compute(f: &Facts, from: NaiveDate, to: NaiveDate) -> Value {
    let within = |d: NaiveDate| d >= from && d <= to;
    let jobs: Vec<&JobRecord> = f
        .jobs
        .iter()
        .filter(|j| within(j.submitted_at.date_naive()))
        .collect();
    let released: Vec<&&JobRecord> = jobs.iter().filter(|j| j.status == JobStatus::Succeeded).collect();
    let queries: usize = jobs.iter().map(|j| j.queries.len()).sum();
    let fuel: u64 = jobs.iter().filter_map(|j| j.usage.as_ref()).map(|u| u.fuel).sum();

    let decided: Vec<&Application> = f
        .applications
        .iter()
        .filter(|a| a.decided_at.is_some_and(|d| within(d.date_naive())))
        .collect();
    let late = decided
        .iter()
        .filter(|a| a.decided_at.is_some_and(|d| d.date_naive() > a.due_on))
        .count();
    let overdue_now = f.applications.iter().filter(|a| a.is_overdue(to)).count();
    let submitted = f
        .applications
        .iter()
        .filter(|a| within(a.submitted_at.date_naive()))
        .count();
    let filings_overdue = f.agreements.iter().filter(|a| a.filing_overdue(to)).count();
    let approved = f
        .applications
        .iter()
        .filter(|a| a.status == ApplicationStatus::Approved)
        .count();

    let budgets: Vec<Value> = f
        .agreements
        .iter()
        .map(|a| {
            let limit = f
                .scenarios
                .iter()
                .find(|s| s.id == a.scenario_id)
                .map(|s| s.spec.release.total_budget().epsilon.as_f64());
            let spent = f
                .spent
                .get(&(a.developer_id.clone(), a.scenario_id.clone()))
                .copied()
                .unwrap_or(0.0);
            json!({"agreement": a.id, "developer": a.developer_id, "scenario": a.scenario_id,
                "status": a.status, "epsilon_spent": spent, "epsilon_limit": limit})
        })
        .collect();

    let incidents_new: Vec<&Incident> = f
        .incidents
        .iter()
        .filter(|i| i.history.first().is_some_and(|h| within(h.at.date_naive())))
        .collect();
    let incidents_open = f.incidents.iter().filter(|i| i.state < PlanState::Closed).count();

    // Per-provider contribution: its datasets and the jobs, released
    // results and queries that read them in the period.
    let providers: Vec<Value> = f
        .parties
        .iter()
        .filter(|p| p.role == scenarios::party::Role::Provider)
        .map(|p| {
            let names: Vec<&str> = f
                .datasets
                .iter()
                .filter(|d| d.owner == p.id)
                .map(|d| d.name.as_str())
                .collect();
            let reads = |j: &JobRecord| j.tables.iter().any(|t| names.contains(&t.dataset.as_str()));
            let their_jobs: Vec<&&JobRecord> = jobs.iter().filter(|j| reads(j)).collect();
            let rows: u64 = f
                .datasets
                .iter()
                .filter(|d| d.owner == p.id)
                .map(|d| d.profile.rows)
                .sum();
            json!({
                "provider": p.id, "name": p.name, "datasets": names, "rows_shared": rows,
                "jobs_reading": their_jobs.len(),
                "releases_reading": their_jobs.iter().filter(|j| j.status == JobStatus::Succeeded).count(),
                "queries_reading": their_jobs.iter().map(|j| j.queries.len()).sum::<usize>(),
            })
        })
        .collect();

    let mut out = Map::new();
    out.insert("period".into(), json!({"from": from, "to": to}));
    out.insert(
        "jobs".into(),
        json!({"submitted": jobs.len(), "by_status": count_by(jobs.iter().map(|j| j.status.as_str())),
            "released_results": released.len(), "queries_released": queries, "fuel": fuel}),
    );
    out.insert(
        "reviews".into(),
        json!({"applications_submitted": submitted, "decided": decided.len(), "decided_late": late,
            "overdue_at_end": overdue_now, "approved_total": approved,
            "agreement_filings_overdue_at_end": filings_overdue}),
    );
    out.insert("budgets".into(), json!(budgets));
    out.insert(
        "incidents".into(),
        json!({"reported": incidents_new.len(), "open_at_end": incidents_open,
            "by_severity": count_by(incidents_new.iter().map(|i| severity(i.severity)))}),
    );
    out.insert(
        "objections".into(),
        json!({"filed": f.objections.iter().filter(|o| within(o.filed_at.date_naive())).count(),
            "open": f.objections.iter().filter(|o| o.status == ObjectionStatus::Open).count()}),
    );
    out.insert(
        "risk_reports".into(),
        json!({"filed": f.risk_reports.iter().filter(|r| within(r.filed_at.date_naive())).count()}),
    );
    out.insert("providers".into(), json!(providers));
    Value::Object(out)
}

fn severity(s: scenarios::oversight::Severity) -> &'static str {
    use scenarios::oversight::Severity::*;
    match s {
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
}
