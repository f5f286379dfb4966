//! The development data catalog (R1, R3, R4), readable by every
//! authenticated party: datasets with owner, schema, rules, update time and
//! share class, and synthetic desensitized sample rows. No real value is
//! ever shown.

use super::auth::Auth;
use super::{blocking, current_datasets, DatasetRecord};
use super::{ApiError, ApiResult};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use sandbox::sample::{parse_type, sample_rows};
use serde_json::{json, Value};

/// The public view of a dataset version.
pub(crate) fn view(d: &DatasetRecord) -> Value {
    let columns: Vec<Value> = d
        .spec
        .columns
        .iter()
        .map(|c| {
            let ty = d.profile.columns.iter().find(|p| p.name == c.name).map(|p| p.data_type.clone());
            let mut v = json!({"name": c.name, "type": ty, "rule": c.rule, "domain": c.domain, "description": c.description});
            // The decimal places its fractional values are summed with,
            // when the provider declared them (the default is 2).
            if let (Some(scale), Some(o)) = (c.scale, v.as_object_mut()) {
                o.insert("scale".into(), json!(scale));
            }
            v
        })
        .collect();
    json!({
        "id": d.id,
        "name": d.name,
        "version": d.version,
        "version_hash": d.profile.version,
        "description": d.spec.description,
        "owner": d.owner,
        "owner_name": d.owner_name,
        "share_class": d.spec.share_class,
        "open_class": d.spec.open_class,
        "privacy_unit": d.spec.privacy_unit,
        "unit_kind": d.spec.unit_kind,
        // Rounded to the public granularity: exact counts of successive
        // versions would show single rows arriving (issue 15).
        "rows": scenarios::catalog::published_rows(d.profile.rows),
        "updated_at": d.created_at,
        "rules_review": d.review,
        "columns": columns,
        "developable": d.spec.share_class != scenarios::catalog::ShareClass::NotShared,
        "excluded_reason": d.spec.exclusion_reason,
    })
}

pub(crate) async fn whoami(Auth(actor): Auth) -> Json<Value> {
    Json(json!({"id": actor.id, "role": actor.role, "name": actor.name}))
}

pub(crate) async fn list(State(st): State<AppState>, Auth(_actor): Auth) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let datasets = blocking(move || current_datasets(&s)).await?;
    Ok(Json(
        json!({"datasets": datasets.iter().map(view).collect::<Vec<_>>()}),
    ))
}

pub(crate) async fn detail(
    State(st): State<AppState>,
    Auth(_actor): Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let datasets = blocking(move || current_datasets(&s)).await?;
    let d = datasets
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no dataset `{}` in the catalog", name.escape_debug())))?;
    let types = d
        .profile
        .columns
        .iter()
        .map(|c| Ok((c.name.clone(), parse_type(&c.data_type)?)))
        .collect::<Result<Vec<_>, sandbox::Error>>()?;
    let (header, rows) = sample_rows(&d.spec, &types, st.config.sample_rows, d.spec.one_row_per_unit).await?;
    let mut v = view(&d);
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "sample".into(),
            json!({
                "note": "synthetic rows generated from the schema and declared domains, shown through the desensitization rules; no real value",
                "columns": header,
                "rows": rows,
            }),
        );
    }
    Ok(Json(v))
}
