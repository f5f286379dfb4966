//! Data applications (R19): products a developer builds on released
//! results pass the operator's security and compliance review; approved
//! ones are reported to the regulator and to the providers whose data the
//! results came from. Each change is one transaction with its ledger entry.

use crate::datasets::current_datasets;
use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::records::{JobRecord, JobStatus};
use crate::state::AppState;
use crate::store::{append, get_in, put, NewEntry, Table};
use chrono::Utc;
use scenarios::party::{Actor, Role};
use scenarios::workflow::{Agreement, ApplicationStatus, DataApplication};
use serde_json::json;
use std::collections::HashSet;

/// A submission.
#[derive(Debug)]
pub struct Submission {
    /// The developer's agreement the results were released under.
    pub agreement_id: String,
    /// The product's name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The released jobs it is built on (at most 1000).
    pub jobs: Vec<String>,
    /// The developer's security and compliance assessment.
    pub assessment: String,
}

/// `actor` submits a data application built on released jobs of its own
/// agreement.
pub async fn submit(st: &AppState, actor: Actor, req: Submission) -> ServiceResult<DataApplication> {
    if req.jobs.len() > 1000 {
        return Err(ServiceError::BadRequest(
            "at most 1000 jobs per data application".into(),
        ));
    }
    st.store
        .write(move |tx| {
            let ag: Agreement = get_in(tx, Table::Agreements, &req.agreement_id)?
                .filter(|a: &Agreement| a.developer_id == actor.id)
                .ok_or_else(|| {
                    ServiceError::NotFound(format!("no agreement {}", req.agreement_id.escape_debug()))
                })?;
            for id in &req.jobs {
                let released = get_in::<JobRecord>(tx, Table::Jobs, id)?
                    .is_some_and(|j| j.agreement_id == ag.id && j.status == JobStatus::Succeeded);
                if !released {
                    return Err(ServiceError::BadRequest(format!(
                        "job {} is not a released job of agreement {}",
                        id.escape_debug(),
                        ag.id
                    )));
                }
            }
            let now = Utc::now();
            let da = DataApplication::submit(
                new_id("da"),
                ag.id.clone(),
                req.name,
                req.description,
                req.jobs,
                req.assessment,
                &actor,
                now,
            )?;
            put(tx, &da)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "data_application.submit",
                    &da.id,
                    json!({"agreement": da.agreement_id, "name": da.name, "jobs": da.jobs}),
                ),
                now,
            )?;
            Ok(da)
        })
        .await
}

/// The operator's decision on data application `id`.
pub async fn decide(
    st: &AppState,
    actor: Actor,
    id: String,
    approve: bool,
    reason: Option<String>,
) -> ServiceResult<DataApplication> {
    st.store
        .write(move |tx| {
            let mut da: DataApplication = get_in(tx, Table::DataApplications, &id)?.ok_or_else(|| {
                ServiceError::NotFound(format!("no data application {}", id.escape_debug()))
            })?;
            let now = Utc::now();
            da.decide(approve, reason, &actor, now)?;
            put(tx, &da)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    if approve {
                        "data_application.approve"
                    } else {
                        "data_application.reject"
                    },
                    &da.id,
                    json!({"developer": da.developer_id, "name": da.name, "reason": da.reason,
                        "reported_to": if approve { json!(["regulator", "providers"]) } else { json!([]) }}),
                ),
                now,
            )?;
            Ok(da)
        })
        .await
}

/// The data applications `actor` sees: a developer its own, a provider
/// the approved ones built on its data, the operator and the regulator
/// all. Blocking.
pub fn visible_to(st: &AppState, actor: &Actor) -> ServiceResult<Vec<DataApplication>> {
    let all: Vec<DataApplication> = st.store.list(Table::DataApplications, None)?;
    Ok(match actor.role {
        Role::Developer => all.into_iter().filter(|d| d.developer_id == actor.id).collect(),
        Role::Provider => {
            let mine: HashSet<String> = current_datasets(st)?
                .into_iter()
                .filter(|d| d.owner == actor.id)
                .map(|d| d.name)
                .collect();
            let mut out = Vec::new();
            for d in all
                .into_iter()
                .filter(|d| d.status == ApplicationStatus::Approved)
            {
                let mut uses = false;
                for j in &d.jobs {
                    let job: Option<JobRecord> = st.store.get(Table::Jobs, j)?;
                    uses |= job.is_some_and(|j| j.tables.iter().any(|t| mine.contains(&t.dataset)));
                }
                if uses {
                    out.push(d);
                }
            }
            out
        }
        Role::Operator | Role::Regulator => all,
    })
}
