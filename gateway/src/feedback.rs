//! Scenario demands and unmet data needs (R9); data-quality flags that the
//! providing department verifies and corrects or rejects (R6). Each change
//! is one transaction with its ledger entry.

use crate::datasets::current_datasets;
use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::records::DatasetRecord;
use crate::state::AppState;
use crate::store::{append, get_in, list_in, put, NewEntry, Table};
use chrono::Utc;
use scenarios::feedback::{Demand, DemandOutcome, FlagStatus, QualityFlag};
use scenarios::party::{Actor, Role};
use scenarios::workflow::Scenario;
use serde_json::json;

/// `actor` raises a demand for a scenario.
pub async fn raise_demand(
    st: &AppState,
    actor: Actor,
    title: String,
    description: String,
    data_needed: Vec<String>,
) -> ServiceResult<Demand> {
    st.store
        .write(move |tx| {
            let now = Utc::now();
            let d = Demand::raise(new_id("dm"), title, description, data_needed, &actor, now)?;
            put(tx, &d)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "demand.raise",
                    &d.id,
                    json!({"title": d.title, "data_needed": d.data_needed}),
                ),
                now,
            )?;
            Ok(d)
        })
        .await
}

/// The demands `actor` sees: a developer its own, everyone else all.
/// Blocking.
pub fn demands_visible_to(st: &AppState, actor: &Actor) -> ServiceResult<Vec<Demand>> {
    match actor.role {
        Role::Developer => st.store.list(Table::Demands, Some(("raised_by", &actor.id))),
        _ => st.store.list(Table::Demands, None),
    }
}

/// The operator's answer to a demand.
#[derive(Debug)]
pub struct Answer {
    /// What became of it.
    pub outcome: DemandOutcome,
    /// The scenario that meets it, if any.
    pub scenario_id: Option<String>,
    /// The data needs no scenario could meet.
    pub unmet_needs: Vec<String>,
    /// The answer's text.
    pub answer: String,
}

/// Answers demand `id`.
pub async fn answer_demand(st: &AppState, actor: Actor, id: String, a: Answer) -> ServiceResult<Demand> {
    st.store
        .write(move |tx| {
            let mut d: Demand =
                get_in(tx, Table::Demands, &id)?.ok_or_else(|| ServiceError::not_found("demand", &id))?;
            if let Some(sc) = &a.scenario_id {
                get_in::<Scenario>(tx, Table::Scenarios, sc)?
                    .ok_or_else(|| ServiceError::not_found("scenario", sc))?;
            }
            let now = Utc::now();
            d.answer(a.outcome, a.scenario_id, a.unmet_needs, a.answer, &actor, now)?;
            put(tx, &d)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "demand.answer",
                    &d.id,
                    json!({"outcome": d.outcome, "scenario": d.scenario_id, "unmet_needs": d.unmet_needs}),
                ),
                now,
            )?;
            Ok(d)
        })
        .await
}

/// The answered demands whose data needs no scenario could meet.
/// Blocking.
pub fn unmet_needs(st: &AppState) -> ServiceResult<Vec<Demand>> {
    let all: Vec<Demand> = st.store.list(Table::Demands, None)?;
    Ok(all
        .into_iter()
        .filter(|d| d.outcome == Some(DemandOutcome::DataUnmet))
        .collect())
}

/// `actor` flags the quality of the current version of `dataset` (a
/// `column` of it, or the whole).
pub async fn raise_flag(
    st: &AppState,
    actor: Actor,
    dataset: String,
    column: Option<String>,
    description: String,
) -> ServiceResult<QualityFlag> {
    let s = st.clone();
    let d: DatasetRecord = crate::store::blocking(move || {
        current_datasets(&s)?
            .into_iter()
            .find(|d| d.name == dataset)
            .ok_or_else(|| ServiceError::not_found("dataset", &dataset))
    })
    .await?;
    if let Some(c) = &column {
        if d.spec.column(c).is_none() {
            return Err(ServiceError::BadRequest(format!(
                "dataset `{}` has no column `{}`",
                d.name,
                c.escape_debug()
            )));
        }
    }
    st.store
        .write(move |tx| {
            let now = Utc::now();
            let f = QualityFlag::raise(new_id("qf"), d.name, d.version, column, description, &actor, now)?;
            put(tx, &f)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "quality.flag",
                    &f.id,
                    json!({"dataset": f.dataset, "version": f.dataset_version, "column": f.column}),
                ),
                now,
            )?;
            Ok(f)
        })
        .await
}

/// The quality flags `actor` sees: a provider those on its datasets, a
/// developer its own, the operator and the regulator all. Blocking.
pub fn flags_visible_to(st: &AppState, actor: &Actor) -> ServiceResult<Vec<QualityFlag>> {
    let all: Vec<QualityFlag> = st.store.list(Table::QualityFlags, None)?;
    Ok(match actor.role {
        Role::Provider => {
            let mine: Vec<String> = current_datasets(st)?
                .into_iter()
                .filter(|d| d.owner == actor.id)
                .map(|d| d.name)
                .collect();
            all.into_iter().filter(|f| mine.contains(&f.dataset)).collect()
        }
        Role::Developer => all.into_iter().filter(|f| f.by == actor.id).collect(),
        Role::Operator | Role::Regulator => all,
    })
}

/// The provider of the flagged dataset resolves flag `id`: corrected by
/// `corrected_version` (registered first), or the data is right.
pub async fn resolve_flag(
    st: &AppState,
    actor: Actor,
    id: String,
    corrected_version: Option<u32>,
    finding: String,
) -> ServiceResult<QualityFlag> {
    st.store
        .write(move |tx| {
            let mut f: QualityFlag = get_in(tx, Table::QualityFlags, &id)?
                .ok_or_else(|| ServiceError::not_found("quality flag", &id))?;
            let versions: Vec<DatasetRecord> = list_in(tx, Table::Datasets, Some(("name", &f.dataset)))?;
            if !versions.iter().any(|d| d.owner == actor.id) {
                return Err(ServiceError::not_found("quality flag", &id));
            }
            if let Some(v) = corrected_version {
                if !versions.iter().any(|d| d.version == v) {
                    return Err(ServiceError::BadRequest(format!(
                        "dataset `{}` has no version {v}; register the correction first",
                        f.dataset
                    )));
                }
            }
            let now = Utc::now();
            f.resolve(corrected_version, finding, &actor, now)?;
            put(tx, &f)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    if f.status == FlagStatus::Corrected {
                        "quality.correct"
                    } else {
                        "quality.reject"
                    },
                    &f.id,
                    json!({"dataset": f.dataset, "corrected_version": f.corrected_version, "finding": f.finding}),
                ),
                now,
            )?;
            Ok(f)
        })
        .await
}
