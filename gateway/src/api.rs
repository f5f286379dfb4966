//! The HTTP API: one route prefix per role (`/v1/provider`, `/v1/operator`,
//! `/v1/developer`, `/v1/regulator`) plus the shared catalog. Handlers are
//! thin: they authenticate, check the role, read the wire request, call the
//! service below the API that decides and records (its state change and
//! ledger entry in one store transaction), and shape the wire answer.

pub mod auth;
mod catalog;
mod consent;
mod developer;
mod error;
mod feedback;
mod fees;
mod files;
mod ledger;
mod operator;
mod oversight;
mod population;
mod private;
mod products;
mod provider;
mod regulator;
mod report;
mod verify;

use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use scenarios::party::Role;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use error::{ApiError, ApiResult};

// The records and services handlers use, re-exported from below the API
// (the API imports from them, never the other way round).
pub(crate) use crate::datasets::current_datasets;
pub use crate::records::{
    Allowance, DatasetRecord, JobRecord, JobStatus, PrivateDataset, QueryRecord, ReviewStatus, RulesReview,
};
pub(crate) use crate::store::blocking;
pub use developer::{developer_view, WITHHELD_NOTE};

/// A period of whole days, both ends included; open where absent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Period {
    #[serde(default)]
    pub(crate) from: Option<chrono::NaiveDate>,
    #[serde(default)]
    pub(crate) to: Option<chrono::NaiveDate>,
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

async fn no_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Largest request body (a WASM module), in bytes. The upload route has
/// its own limit (`Config::max_upload_bytes`) and reads its body as a
/// stream.
pub const MAX_BODY: usize = runtime::MAX_MODULE_BYTES + 1024;

/// The route through which providers upload files (its body is streamed
/// to disk, not held in memory, and is not capped by [`MAX_BODY`]).
pub const UPLOAD_ROUTE: &str = "/v1/provider/files/{name}";

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "role")]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// Every authenticated party.
    Authenticated,
    /// Parties of one role only; every other role gets 403 before the
    /// request body is read.
    Role(Role),
}

/// One route of the API: the table below is the only place routes are
/// declared, so `invis routes` and the authorization matrix test cover all
/// of them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Route {
    /// `GET`, `POST` or `PUT`.
    pub method: &'static str,
    /// Path with `{param}` placeholders.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    #[serde(skip)]
    handler: fn() -> axum::routing::MethodRouter<AppState>,
}

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    handler: fn() -> axum::routing::MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        access,
        handler,
    }
}

use Access::{Authenticated, Public};
const PROVIDER: Access = Access::Role(Role::Provider);
const OPERATOR: Access = Access::Role(Role::Operator);
const DEVELOPER: Access = Access::Role(Role::Developer);
const REGULATOR: Access = Access::Role(Role::Regulator);

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    route("GET", "/v1/health", Public, || get(health)),
    route("GET", "/v1/ledger/public-key", Public, || get(ledger::public_key)),
    route("GET", "/v1/whoami", Authenticated, || get(catalog::whoami)),
    route("GET", "/v1/tariff", Authenticated, || get(fees::tariff)),
    route("GET", "/v1/catalog", Authenticated, || get(catalog::list)),
    route("GET", "/v1/catalog/{name}", Authenticated, || {
        get(catalog::detail)
    }),
    route("GET", "/v1/ledger/checkpoint", Authenticated, || {
        get(ledger::checkpoint)
    }),
    route("GET", "/v1/ledger/checkpoints", Authenticated, || {
        get(ledger::checkpoints)
    }),
    route("GET", "/v1/ledger/proof/inclusion", Authenticated, || {
        get(ledger::inclusion)
    }),
    route("GET", "/v1/ledger/proof/consistency", Authenticated, || {
        get(ledger::consistency)
    }),
    // The data provider.
    route("POST", "/v1/provider/datasets", PROVIDER, || {
        post(provider::register)
    }),
    route("GET", "/v1/provider/datasets", PROVIDER, || get(provider::list)),
    route("PUT", UPLOAD_ROUTE, PROVIDER, || put(files::upload)),
    route("GET", "/v1/provider/files", PROVIDER, || get(files::list)),
    route("POST", "/v1/provider/consents", PROVIDER, || {
        post(consent::record)
    }),
    route("GET", "/v1/provider/consents", PROVIDER, || get(consent::counts)),
    route("GET", "/v1/operator/consents", OPERATOR, || get(consent::counts)),
    route("GET", "/v1/regulator/consents", REGULATOR, || {
        get(consent::counts)
    }),
    route("GET", "/v1/provider/data-applications", PROVIDER, || {
        get(products::list)
    }),
    route("GET", "/v1/provider/unmet-needs", PROVIDER, || {
        get(feedback::unmet_needs)
    }),
    route("GET", "/v1/provider/quality-flags", PROVIDER, || {
        get(feedback::list_flags)
    }),
    route(
        "POST",
        "/v1/provider/quality-flags/{id}/outcome",
        PROVIDER,
        || post(feedback::resolve_flag),
    ),
    route("POST", "/v1/provider/objections", PROVIDER, || {
        post(oversight::file_objection)
    }),
    route("GET", "/v1/provider/objections", PROVIDER, || {
        get(oversight::list_objections)
    }),
    // The operator.
    route("GET", "/v1/operator/datasets", OPERATOR, || {
        get(provider::all_versions)
    }),
    route("POST", "/v1/operator/datasets/{id}/review", OPERATOR, || {
        post(provider::review_rules)
    }),
    route("POST", "/v1/operator/parties", OPERATOR, || {
        post(operator::create_party)
    }),
    route("PUT", "/v1/operator/parties/{id}/storage", OPERATOR, || {
        put(files::assign_storage)
    }),
    route("POST", "/v1/operator/keys/tokenization/rotate", OPERATOR, || {
        post(operator::rotate_token_key)
    }),
    route("POST", "/v1/operator/keys/ledger/rotate", OPERATOR, || {
        post(operator::rotate_ledger_key)
    }),
    route("GET", "/v1/operator/parties", OPERATOR, || {
        get(operator::list_parties)
    }),
    route("POST", "/v1/operator/parties/{id}/token", OPERATOR, || {
        post(operator::reissue_token)
    }),
    route("POST", "/v1/operator/parties/{id}/revoke", OPERATOR, || {
        post(operator::revoke_token)
    }),
    route("POST", "/v1/operator/organizations", OPERATOR, || {
        post(operator::create_organization)
    }),
    route(
        "POST",
        "/v1/operator/organizations/{id}/standing",
        OPERATOR,
        || post(operator::record_standing),
    ),
    route("GET", "/v1/operator/organizations", OPERATOR, || {
        get(operator::list_organizations)
    }),
    route("POST", "/v1/operator/scenarios", OPERATOR, || {
        post(operator::propose_scenario)
    }),
    route("GET", "/v1/operator/scenarios", OPERATOR, || {
        get(operator::list_scenarios)
    }),
    route("GET", "/v1/operator/applications", OPERATOR, || {
        get(operator::list_applications)
    }),
    route(
        "POST",
        "/v1/operator/applications/{id}/decision",
        OPERATOR,
        || post(operator::decide_application),
    ),
    route("GET", "/v1/operator/reviews", OPERATOR, || {
        get(operator::list_reviews)
    }),
    route("POST", "/v1/operator/reviews/{id}/decision", OPERATOR, || {
        post(operator::decide_review)
    }),
    route("GET", "/v1/operator/agreements", OPERATOR, || {
        get(oversight::list_agreements)
    }),
    route("POST", "/v1/operator/agreements/{id}/filing", OPERATOR, || {
        post(oversight::file_agreement)
    }),
    route("POST", "/v1/operator/agreements/{id}/halt", OPERATOR, || {
        post(oversight::halt_agreement)
    }),
    route("POST", "/v1/operator/scenarios/{id}/halt", OPERATOR, || {
        post(oversight::halt_scenario)
    }),
    route("GET", "/v1/operator/agreements/{id}/statement", OPERATOR, || {
        get(fees::statement)
    }),
    route("GET", "/v1/operator/data-applications", OPERATOR, || {
        get(products::list)
    }),
    route(
        "POST",
        "/v1/operator/data-applications/{id}/decision",
        OPERATOR,
        || post(products::decide),
    ),
    route("GET", "/v1/operator/demands", OPERATOR, || {
        get(feedback::list_demands)
    }),
    route("POST", "/v1/operator/demands/{id}/answer", OPERATOR, || {
        post(feedback::answer_demand)
    }),
    route("POST", "/v1/operator/quality-flags", OPERATOR, || {
        post(feedback::raise_flag)
    }),
    route("GET", "/v1/operator/quality-flags", OPERATOR, || {
        get(feedback::list_flags)
    }),
    route("GET", "/v1/operator/agreements/{id}/datasets", OPERATOR, || {
        get(private::list)
    }),
    route("POST", "/v1/operator/agreements/{id}/terminate", OPERATOR, || {
        post(oversight::terminate_agreement)
    }),
    route("GET", "/v1/operator/risk-reports", OPERATOR, || {
        get(oversight::list_risk_reports)
    }),
    route("POST", "/v1/operator/objections", OPERATOR, || {
        post(oversight::file_objection)
    }),
    route("GET", "/v1/operator/objections", OPERATOR, || {
        get(oversight::list_objections)
    }),
    route(
        "POST",
        "/v1/operator/objections/{id}/resolution",
        OPERATOR,
        || post(oversight::resolve_objection),
    ),
    route("POST", "/v1/operator/incidents", OPERATOR, || {
        post(oversight::report_incident)
    }),
    route("GET", "/v1/operator/incidents", OPERATOR, || {
        get(oversight::list_incidents)
    }),
    route("POST", "/v1/operator/incidents/{id}/state", OPERATOR, || {
        post(oversight::advance_incident)
    }),
    route("GET", "/v1/operator/overdue", OPERATOR, || {
        get(oversight::overdue)
    }),
    // The regulator.
    route("GET", "/v1/regulator/parties", REGULATOR, || {
        get(operator::list_parties)
    }),
    // Regulator accounts, for the regulator's own staff (I16).
    route("POST", "/v1/regulator/parties", REGULATOR, || {
        post(operator::create_party)
    }),
    route("GET", "/v1/regulator/organizations", REGULATOR, || {
        get(operator::list_organizations)
    }),
    route("GET", "/v1/regulator/scenarios", REGULATOR, || {
        get(regulator::list_scenarios)
    }),
    route("POST", "/v1/regulator/scenarios/{id}/decision", REGULATOR, || {
        post(regulator::decide_scenario)
    }),
    route("GET", "/v1/regulator/releases", REGULATOR, || {
        get(regulator::releases)
    }),
    route("GET", "/v1/regulator/applications", REGULATOR, || {
        get(report::list_applications)
    }),
    route("GET", "/v1/regulator/populations", REGULATOR, || {
        get(population::list)
    }),
    route("GET", "/v1/regulator/populations/{kind}", REGULATOR, || {
        get(population::show)
    }),
    route("POST", "/v1/regulator/populations/{kind}/caps", REGULATOR, || {
        post(population::lower_caps)
    }),
    route(
        "POST",
        "/v1/regulator/populations/{kind}/renewal",
        REGULATOR,
        || post(population::renew),
    ),
    route("GET", "/v1/regulator/jobs", REGULATOR, || get(report::list_jobs)),
    route("GET", "/v1/regulator/report", REGULATOR, || get(report::report)),
    route("GET", "/v1/regulator/agreements", REGULATOR, || {
        get(oversight::list_agreements)
    }),
    route(
        "GET",
        "/v1/regulator/agreements/{id}/statement",
        REGULATOR,
        || get(fees::statement),
    ),
    route("GET", "/v1/regulator/data-applications", REGULATOR, || {
        get(products::list)
    }),
    route("GET", "/v1/regulator/demands", REGULATOR, || {
        get(feedback::list_demands)
    }),
    route("GET", "/v1/regulator/quality-flags", REGULATOR, || {
        get(feedback::list_flags)
    }),
    route("GET", "/v1/regulator/agreements/{id}/datasets", REGULATOR, || {
        get(private::list)
    }),
    route("GET", "/v1/regulator/datasets", REGULATOR, || {
        get(provider::all_versions)
    }),
    route("GET", "/v1/regulator/overdue", REGULATOR, || {
        get(oversight::overdue)
    }),
    route("GET", "/v1/regulator/objections", REGULATOR, || {
        get(oversight::list_objections)
    }),
    route("GET", "/v1/regulator/risk-reports", REGULATOR, || {
        get(oversight::list_risk_reports)
    }),
    route("GET", "/v1/regulator/incidents", REGULATOR, || {
        get(oversight::list_incidents)
    }),
    route("GET", "/v1/regulator/ledger", REGULATOR, || get(ledger::feed)),
    route("GET", "/v1/regulator/ledger/feed", REGULATOR, || {
        get(ledger::feed)
    }),
    route("GET", "/v1/regulator/ledger/receipts/{seq}", REGULATOR, || {
        get(ledger::receipt)
    }),
    route("GET", "/v1/regulator/ledger/public-key", REGULATOR, || {
        get(ledger::public_key)
    }),
    route("GET", "/v1/regulator/witness/checkpoint", REGULATOR, || {
        get(ledger::witness_checkpoint)
    }),
    route("POST", "/v1/regulator/witness/cosignatures", REGULATOR, || {
        post(ledger::post_cosignature)
    }),
    // The developer.
    route("GET", "/v1/developer/scenarios", DEVELOPER, || {
        get(developer::list_scenarios)
    }),
    route("GET", "/v1/developer/scenarios/{id}", DEVELOPER, || {
        get(developer::scenario)
    }),
    route("GET", "/v1/developer/scenarios/{id}/bundle", DEVELOPER, || {
        get(developer::scenario_bundle)
    }),
    route("GET", "/v1/developer/eligibility", DEVELOPER, || {
        get(developer::eligibility)
    }),
    route("POST", "/v1/developer/applications", DEVELOPER, || {
        post(developer::apply)
    }),
    route("GET", "/v1/developer/applications", DEVELOPER, || {
        get(developer::list_applications)
    }),
    route("GET", "/v1/developer/applications/{id}", DEVELOPER, || {
        get(developer::application)
    }),
    route("GET", "/v1/developer/agreements", DEVELOPER, || {
        get(developer::list_agreements)
    }),
    route("GET", "/v1/developer/limits", DEVELOPER, || {
        get(developer::limits)
    }),
    route("GET", "/v1/developer/agreements/{id}", DEVELOPER, || {
        get(developer::agreement)
    }),
    route("POST", "/v1/developer/agreements/{id}/sign", DEVELOPER, || {
        post(developer::sign)
    }),
    route("POST", "/v1/developer/agreements/{id}/halt", DEVELOPER, || {
        post(oversight::halt_agreement)
    }),
    route("POST", "/v1/developer/agreements/{id}/verify", DEVELOPER, || {
        post(verify::verify)
    }),
    route(
        "GET",
        "/v1/developer/agreements/{id}/statement",
        DEVELOPER,
        || get(fees::statement),
    ),
    route("POST", "/v1/developer/data-applications", DEVELOPER, || {
        post(products::submit)
    }),
    route("GET", "/v1/developer/data-applications", DEVELOPER, || {
        get(products::list)
    }),
    route("POST", "/v1/developer/demands", DEVELOPER, || {
        post(feedback::raise_demand)
    }),
    route("GET", "/v1/developer/demands", DEVELOPER, || {
        get(feedback::list_demands)
    }),
    route("POST", "/v1/developer/quality-flags", DEVELOPER, || {
        post(feedback::raise_flag)
    }),
    route("GET", "/v1/developer/quality-flags", DEVELOPER, || {
        get(feedback::list_flags)
    }),
    route(
        "POST",
        "/v1/developer/agreements/{id}/datasets",
        DEVELOPER,
        || post(private::upload),
    ),
    route("GET", "/v1/developer/agreements/{id}/datasets", DEVELOPER, || {
        get(private::list)
    }),
    route(
        "POST",
        "/v1/developer/agreements/{id}/terminate",
        DEVELOPER,
        || post(oversight::terminate_agreement),
    ),
    route("GET", "/v1/developer/risk-reports", DEVELOPER, || {
        get(oversight::list_risk_reports)
    }),
    route("POST", "/v1/developer/agreements/{id}/jobs", DEVELOPER, || {
        post(developer::submit_job)
    }),
    route("GET", "/v1/developer/jobs", DEVELOPER, || {
        get(developer::list_jobs)
    }),
    route("GET", "/v1/developer/jobs/{id}", DEVELOPER, || {
        get(developer::job)
    }),
    route("GET", "/v1/developer/jobs/{id}/output", DEVELOPER, || {
        get(developer::job_output)
    }),
    route("GET", "/v1/developer/jobs/{id}/receipt", DEVELOPER, || {
        get(developer::job_receipt)
    }),
];

/// The router of the whole API, built from [`ROUTES`].
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for r in ROUTES {
        let mut handler = (r.handler)();
        if let Access::Role(role) = r.access {
            handler = handler.route_layer(axum::middleware::from_fn_with_state(
                (state.clone(), role),
                auth::require_role,
            ));
        }
        // Every body but an upload's is capped at MAX_BODY, checked
        // before the role (as for unknown routes).
        if r.path != UPLOAD_ROUTE {
            handler = handler
                .layer(DefaultBodyLimit::max(MAX_BODY))
                .layer(axum::middleware::from_fn(reject_oversized));
        }
        router = router.route(r.path, handler);
    }
    router.fallback(no_route).with_state(state)
}
