//! Developer-supplied data (R5, 融合开发): a developer brings its own (or a
//! third party's) table into one agreement. It is stored inside the
//! platform, joined with public data only inside jobs of that agreement,
//! under the scenario's release rules; nobody else's jobs see it, and
//! nobody, the developer included, reads its rows back.

use super::auth::{Auth, Body};
use super::ApiResult;
use super::{blocking, PrivateDataset};
use crate::private_data;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use scenarios::catalog::ColumnSpec;
use serde::Deserialize;
use serde_json::{json, Value};

/// What the developer sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upload {
    /// Table name its jobs use.
    name: String,
    #[serde(default)]
    description: String,
    privacy_unit: String,
    #[serde(default)]
    unit_kind: Option<String>,
    /// Every column with its rule.
    columns: Vec<ColumnSpec>,
    /// The operations jobs may apply to each column (as in a scenario).
    grant: Vec<scenarios::policy::ColumnGrant>,
    /// The table itself, as CSV text with a header row.
    csv: String,
}

pub(crate) async fn upload(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(req): Body<Upload>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req = private_data::Upload {
        name: req.name,
        description: req.description,
        privacy_unit: req.privacy_unit,
        unit_kind: req.unit_kind,
        columns: req.columns,
        grant: req.grant,
        csv: req.csv,
    };
    let record = private_data::register(&st, actor, id, req).await?;
    Ok((StatusCode::CREATED, Json(view(&record))))
}

/// Metadata only: never rows, samples or measured ranges.
fn view(p: &PrivateDataset) -> Value {
    json!({"id": p.id, "agreement_id": p.agreement_id, "name": p.spec.name, "rows": p.profile.rows,
        "version_hash": p.profile.version, "columns": p.spec.columns, "grant": p.grant,
        "created_at": p.created_at})
}

pub(crate) async fn list(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let all = blocking(move || private_data::of_agreement(&s, &actor, &id)).await?;
    Ok(Json(
        json!({"datasets": all.iter().map(view).collect::<Vec<_>>()}),
    ))
}
