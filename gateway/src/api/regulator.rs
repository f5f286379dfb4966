//! The regulator: approves scenario classes (R8), lists every release with
//! its lineage (R21), and exports the signed ledger for offline
//! verification (R22, R23). The regulator reads everything and changes no
//! data other than its own decisions.

use super::{blocking, JobRecord};
use crate::auth::{Auth, Body};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{append, get_in, put, NewEntry, Table};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use chrono::Utc;
use scenarios::party::Role;
use scenarios::workflow::Scenario;
use serde::Deserialize;
use serde_json::{json, Value};

pub(crate) async fn list_scenarios(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let store = st.store.clone();
    let all: Vec<Scenario> = blocking(move || store.list(Table::Scenarios, None)).await?;
    Ok(Json(json!({"scenarios": all})))
}

/// The regulator's decision on a scenario.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Decision {
    approve: bool,
    #[serde(default)]
    reason: Option<String>,
}

pub(crate) async fn decide_scenario(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(d): Body<Decision>,
) -> ApiResult<Json<Scenario>> {
    actor.require(Role::Regulator)?;
    let store = st.store.clone();
    let sc = blocking(move || {
        store.tx(|tx| {
            let mut sc: Scenario = get_in(tx, Table::Scenarios, &id)?
                .ok_or_else(|| ApiError::NotFound(format!("no scenario {}", id.escape_debug())))?;
            let now = Utc::now();
            sc.decide(d.approve, d.reason.clone(), &actor, now)?;
            put(tx, &sc)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    &format!("scenario.{}", if d.approve { "approve" } else { "reject" }),
                    &sc.id,
                    json!({"class": sc.spec.class, "reason": sc.reason}),
                ),
                now,
            )?;
            Ok(sc)
        })
    })
    .await?;
    Ok(Json(sc))
}

pub(crate) async fn releases(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Regulator)?;
    let store = st.store.clone();
    let out = blocking(move || {
        let jobs: Vec<JobRecord> = store.list(Table::Jobs, None)?;
        let mut releases = Vec::new();
        for j in jobs
            .iter()
            .filter(|j| j.status == super::developer::JobStatus::Succeeded)
        {
            let lineage: Vec<Value> = store
                .ledger_for(&j.id)?
                .iter()
                .map(|e| {
                    let body: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
                    json!({"seq": e.seq, "hash": e.hash, "entry": body})
                })
                .collect();
            releases.push(json!({"job": j, "lineage": lineage}));
        }
        Ok(releases)
    })
    .await?;
    Ok(Json(json!({"releases": out})))
}

pub(crate) async fn export_ledger(
    State(st): State<AppState>,
    Auth(actor): Auth,
) -> ApiResult<impl IntoResponse> {
    actor.require(Role::Regulator)?;
    let (store, keys) = (st.store.clone(), st.keys.clone());
    let bytes = blocking(move || {
        let mut buf = Vec::new();
        crate::ledger::export(&store, &keys, &mut buf)?;
        Ok(buf)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], bytes))
}

pub(crate) async fn public_key(State(st): State<AppState>, Auth(_actor): Auth) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({"algorithm": "ed25519", "public_key": st.keys.public_key_hex()}),
    ))
}
