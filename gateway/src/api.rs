//! The HTTP API: one route prefix per role (`/v1/provider`, `/v1/operator`,
//! `/v1/developer`, `/v1/regulator`) plus the shared catalog. Handlers are
//! thin: they authenticate, check the role, run the domain transition from
//! `scenarios` and write it with its ledger entry in one store transaction.

mod catalog;
mod developer;
mod operator;
mod provider;
mod regulator;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sandbox::profile::DatasetProfile;
use scenarios::catalog::DatasetSpec;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use developer::{JobRecord, JobStatus, QueryRecord};

/// One registered version of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// `ds_...`
    pub id: String,
    /// Table name.
    pub name: String,
    /// Version number, from 1.
    pub version: u32,
    /// Providing party.
    pub owner: String,
    /// Providing party's name.
    pub owner_name: String,
    /// Registration.
    pub spec: DatasetSpec,
    /// What profiling found.
    pub profile: DatasetProfile,
    /// Registration time (the dataset's update time).
    pub created_at: DateTime<Utc>,
}

/// Runs store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(e.to_string()))?
}

/// The latest version of every dataset.
pub(crate) fn current_datasets(st: &AppState) -> ApiResult<Vec<DatasetRecord>> {
    let all: Vec<DatasetRecord> = st.store.list(crate::store::Table::Datasets, None)?;
    let mut latest: std::collections::BTreeMap<String, DatasetRecord> = std::collections::BTreeMap::new();
    for d in all {
        let newer = latest.get(&d.name).is_none_or(|cur| d.version > cur.version);
        if newer {
            latest.insert(d.name.clone(), d);
        }
    }
    Ok(latest.into_values().collect())
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "service": "invis", "version": env!("CARGO_PKG_VERSION")}))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Largest request body (a WASM module), in bytes.
pub const MAX_BODY: usize = runtime::MAX_MODULE_BYTES + 1024;

/// The router of the whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/whoami", get(catalog::whoami))
        .route("/v1/catalog", get(catalog::list))
        .route("/v1/catalog/{name}", get(catalog::detail))
        .route("/v1/provider/datasets", post(provider::register).get(provider::list))
        .route("/v1/operator/parties", post(operator::create_party).get(operator::list_parties))
        .route("/v1/operator/scenarios", post(operator::propose_scenario).get(operator::list_scenarios))
        .route("/v1/operator/applications", get(operator::list_applications))
        .route("/v1/operator/applications/{id}/decision", post(operator::decide_application))
        .route("/v1/regulator/scenarios", get(regulator::list_scenarios))
        .route("/v1/regulator/scenarios/{id}/decision", post(regulator::decide_scenario))
        .route("/v1/regulator/releases", get(regulator::releases))
        .route("/v1/regulator/ledger", get(regulator::export_ledger))
        .route("/v1/regulator/ledger/public-key", get(regulator::public_key))
        .route("/v1/developer/scenarios", get(developer::list_scenarios))
        .route("/v1/developer/scenarios/{id}", get(developer::scenario))
        .route("/v1/developer/applications", post(developer::apply).get(developer::list_applications))
        .route("/v1/developer/applications/{id}", get(developer::application))
        .route("/v1/developer/agreements", get(developer::list_agreements))
        .route("/v1/developer/agreements/{id}", get(developer::agreement))
        .route("/v1/developer/agreements/{id}/sign", post(developer::sign))
        .route("/v1/developer/agreements/{id}/jobs", post(developer::submit_job))
        .route("/v1/developer/jobs", get(developer::list_jobs))
        .route("/v1/developer/jobs/{id}", get(developer::job))
        .route("/v1/developer/jobs/{id}/output", get(developer::job_output))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
