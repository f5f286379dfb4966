//! The HTTP API: one route prefix per role (`/v1/provider`, `/v1/operator`,
//! `/v1/developer`, `/v1/regulator`) plus the shared catalog. Handlers are
//! thin: they authenticate, check the role, run the domain transition from
//! `scenarios` and write it with its ledger entry in one store transaction.

mod catalog;
mod developer;
mod ledger;
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
use scenarios::party::Role;
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

impl crate::store::Record for DatasetRecord {
    const TABLE: crate::store::Table = crate::store::Table::Datasets;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.name.clone(), self.owner.clone()]
    }
}

/// Runs store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
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

/// Refuses a request whose declared body is larger than [`MAX_BODY`] before
/// reading any of it (so a client that sent `Expect: 100-continue` never
/// uploads it). Bodies without a length are still capped while read.
async fn reject_oversized(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return ApiError::TooLarge(format!("the request body is larger than {MAX_BODY} bytes"))
            .into_response();
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Largest request body (a WASM module), in bytes.
pub const MAX_BODY: usize = runtime::MAX_MODULE_BYTES + 1024;

/// Routes of one role, guarded by [`crate::auth::require_role`].
fn role_routes(state: &AppState, role: Role, routes: Router<AppState>) -> Router<AppState> {
    routes.route_layer(axum::middleware::from_fn_with_state(
        (state.clone(), role),
        crate::auth::require_role,
    ))
}

/// The router of the whole API. Every route under `/v1/<role>/` is reachable
/// by that role only; the catalog and `whoami` by every authenticated party.
pub fn router(state: AppState) -> Router {
    let provider = Router::new().route("/datasets", post(provider::register).get(provider::list));
    let operator = Router::new()
        .route(
            "/parties",
            post(operator::create_party).get(operator::list_parties),
        )
        .route(
            "/scenarios",
            post(operator::propose_scenario).get(operator::list_scenarios),
        )
        .route("/applications", get(operator::list_applications))
        .route("/applications/{id}/decision", post(operator::decide_application))
        .route("/reviews", get(operator::list_reviews))
        .route("/reviews/{id}/decision", post(operator::decide_review));
    let regulator = Router::new()
        .route("/parties", get(operator::list_parties))
        .route("/scenarios", get(regulator::list_scenarios))
        .route("/scenarios/{id}/decision", post(regulator::decide_scenario))
        .route("/releases", get(regulator::releases))
        .route("/ledger", get(ledger::feed))
        .route("/ledger/feed", get(ledger::feed))
        .route("/ledger/receipts/{seq}", get(ledger::receipt))
        .route("/ledger/public-key", get(ledger::public_key));
    let developer = Router::new()
        .route("/scenarios", get(developer::list_scenarios))
        .route("/scenarios/{id}", get(developer::scenario))
        .route("/scenarios/{id}/bundle", get(developer::scenario_bundle))
        .route(
            "/applications",
            post(developer::apply).get(developer::list_applications),
        )
        .route("/applications/{id}", get(developer::application))
        .route("/agreements", get(developer::list_agreements))
        .route("/agreements/{id}", get(developer::agreement))
        .route("/agreements/{id}/sign", post(developer::sign))
        .route("/agreements/{id}/jobs", post(developer::submit_job))
        .route("/jobs", get(developer::list_jobs))
        .route("/jobs/{id}", get(developer::job))
        .route("/jobs/{id}/output", get(developer::job_output))
        .route("/jobs/{id}/receipt", get(developer::job_receipt));
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/whoami", get(catalog::whoami))
        .route("/v1/catalog", get(catalog::list))
        .route("/v1/catalog/{name}", get(catalog::detail))
        .route("/v1/ledger/public-key", get(ledger::public_key))
        .route("/v1/ledger/checkpoint", get(ledger::checkpoint))
        .route("/v1/ledger/checkpoints", get(ledger::checkpoints))
        .route("/v1/ledger/proof/inclusion", get(ledger::inclusion))
        .route("/v1/ledger/proof/consistency", get(ledger::consistency))
        .nest("/v1/provider", role_routes(&state, Role::Provider, provider))
        .nest("/v1/operator", role_routes(&state, Role::Operator, operator))
        .nest("/v1/regulator", role_routes(&state, Role::Regulator, regulator))
        .nest("/v1/developer", role_routes(&state, Role::Developer, developer))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(reject_oversized))
        .with_state(state)
}
