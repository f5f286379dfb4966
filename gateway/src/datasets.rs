//! The datasets a job reads: the current catalog (latest approved version
//! of every dataset), an agreement's developer-supplied tables (R5), and
//! the objections' gate on a dataset version (R7). Shared by the job
//! lifecycle (`crate::jobs`) and the HTTP handlers (`crate::api`).

use crate::error::{ServiceError, ServiceResult};
use crate::records::{DatasetRecord, PrivateDataset};
use crate::state::AppState;
use crate::store::Table;
use sandbox::desensitize::UnitFilter;
use scenarios::oversight::{Objection, ObjectionStatus};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// The latest version of every dataset whose rules the operator approved:
/// the versions jobs read and scenarios are built on.
pub(crate) fn current_datasets(st: &AppState) -> ServiceResult<Vec<DatasetRecord>> {
    let all: Vec<DatasetRecord> = st.store.list(Table::Datasets, None)?;
    let mut latest: BTreeMap<String, DatasetRecord> = BTreeMap::new();
    for d in all.into_iter().filter(|d| d.review.approved()) {
        let newer = latest.get(&d.name).is_none_or(|cur| d.version > cur.version);
        if newer {
            latest.insert(d.name.clone(), d);
        }
    }
    Ok(latest.into_values().collect())
}

/// The extra tables and grants of an agreement's private data.
pub(crate) fn private_tables(st: &AppState, agreement: &str) -> ServiceResult<Vec<PrivateDataset>> {
    st.store
        .list(Table::PrivateDatasets, Some(("agreement_id", agreement)))
}

/// Checks a dataset version against the objections: refused while
/// suspended; otherwise the units whose rows are withheld.
pub(crate) fn gate(objections: &[Objection], d: &DatasetRecord) -> ServiceResult<UnitFilter> {
    if let Some(o) = objections
        .iter()
        .find(|o| o.dataset == d.name && o.suspends_dataset(d.version))
    {
        return Err(ServiceError::Forbidden(format!(
            "dataset `{}` is suspended by objection {} ({})",
            d.name,
            o.id,
            if o.status == ObjectionStatus::Open {
                "until it is resolved"
            } else {
                "upheld; waiting for a corrected version"
            }
        )));
    }
    let exclude: HashSet<String> = objections
        .iter()
        .filter(|o| o.dataset == d.name)
        .filter_map(|o| o.excluded_unit().map(str::to_string))
        .collect();
    Ok(UnitFilter {
        exclude: Arc::new(exclude),
        only: None,
    })
}
