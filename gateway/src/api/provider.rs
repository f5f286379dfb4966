//! Data providers register datasets (R1, R2). A new registration of an
//! existing name by its owner is a new version; another provider cannot
//! register the same name (one source per data item, 一数一源).

use super::{blocking, DatasetRecord};
use crate::auth::{Auth, Body};
use crate::error::{ApiError, ApiResult};
use crate::keys::new_id;
use crate::state::AppState;
use crate::store::{append, list_in, put, NewEntry, Table};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use scenarios::catalog::DatasetSpec;
use scenarios::party::Role;
use serde_json::{json, Value};

pub(crate) async fn register(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(spec): Body<DatasetSpec>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    actor.require(Role::Provider)?;
    spec.validate()?;
    let profile = sandbox::profile::profile(&spec).await?;
    let store = st.store.clone();
    let record = store.write(move |tx| {
            let existing: Vec<DatasetRecord> = list_in(tx, Table::Datasets, Some(("name", &spec.name)))?;
            if let Some(other) = existing.iter().find(|d| d.owner != actor.id) {
                return Err(ApiError::Conflict(format!(
                    "dataset `{}` is provided by {}; each data item has one source",
                    spec.name, other.owner_name
                )));
            }
            let version = existing.iter().map(|d| d.version).max().unwrap_or(0) + 1;
            let record = DatasetRecord {
                id: new_id("ds"),
                name: spec.name.clone(),
                version,
                owner: actor.id.clone(),
                owner_name: actor.name.clone(),
                spec: spec.clone(),
                profile: profile.clone(),
                created_at: Utc::now(),
            };
            put(tx, &record)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "dataset.register",
                    &record.id,
                    json!({
                        "name": record.name,
                        "version": version,
                        "version_hash": profile.version,
                        "rows": profile.rows,
                        "units": profile.units,
                        "unit_unique": profile.unit_unique,
                        "privacy_unit": spec.privacy_unit,
                        "rules": spec.columns.iter().map(|c| json!({"column": c.name, "rule": c.rule})).collect::<Vec<_>>(),
                    }),
                ),
                record.created_at,
            )?;
            Ok(record)
        })
    .await?;
    Ok((StatusCode::CREATED, Json(super::catalog::view(&record))))
}

pub(crate) async fn list(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Provider)?;
    let store = st.store.clone();
    let id = actor.id.clone();
    let mine: Vec<DatasetRecord> =
        blocking(move || store.list(Table::Datasets, Some(("owner", &id)))).await?;
    Ok(Json(
        json!({"datasets": mine.iter().map(super::catalog::view).collect::<Vec<_>>()}),
    ))
}
