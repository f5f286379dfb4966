//! The operator: creates parties, proposes scenarios for the regulator's
//! approval (R8), and reviews applications within 5 working days, issuing an
//! agreement on approval (R12, R13).

use super::auth::{Auth, Body};
use super::blocking;
use super::JobRecord;
use super::{ApiError, ApiResult};
use crate::applications;
use crate::rotation::{self, RotatedKey};
use crate::state::AppState;
use crate::store::Organization;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use scenarios::party::Role;
use scenarios::policy::ScenarioSpec;
use scenarios::workflow::{Scenario, Terms};
use serde::Deserialize;
use serde_json::{json, Value};

/// Request to create a party.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewParty {
    name: String,
    role: Role,
    /// The organization it joins (`org_...`); a new organization of the
    /// same name when absent.
    #[serde(default)]
    organization: Option<String>,
}

pub(crate) async fn create_party(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(req): Body<NewParty>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (party, token) = crate::parties::create(&st, actor, req.name, req.role, req.organization).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": party.id, "name": party.name, "role": party.role, "organization": party.organization,
            "token": token, "note": "the token is shown only once; the platform stores its hash"}),
        ),
    ))
}

/// Issues a new token for a party (the old one stops working), shown once.
pub(crate) async fn reissue_token(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let token = crate::parties::reissue_token(&st, actor, id.clone()).await?;
    Ok(Json(json!({"id": id, "token": token,
        "note": "the token is shown only once; the previous token no longer works"})))
}

/// Revokes a party's token: every request with it is refused from now on.
pub(crate) async fn revoke_token(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    crate::parties::revoke_token(&st, actor, id.clone()).await?;
    Ok(Json(json!({"id": id, "revoked": true})))
}

/// A new organization.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewOrganization {
    name: String,
    #[serde(default)]
    registration: Option<String>,
}

pub(crate) async fn create_organization(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(req): Body<NewOrganization>,
) -> ApiResult<(StatusCode, Json<Organization>)> {
    let org = crate::organizations::create(&st, actor, req.name, req.registration).await?;
    Ok((StatusCode::CREATED, Json(org)))
}

/// Records a standing fact about an organization (R10).
pub(crate) async fn record_standing(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(rec): Body<scenarios::party::Standing>,
) -> ApiResult<Json<Organization>> {
    let org = crate::organizations::record_standing(&st, actor, id, rec).await?;
    Ok(Json(org))
}

/// Organizations with their members (operator and regulator).
pub(crate) async fn list_organizations(
    State(st): State<AppState>,
    Auth(_actor): Auth,
) -> ApiResult<Json<Value>> {
    let s = st.clone();
    let orgs = blocking(move || crate::organizations::with_members(&s)).await?;
    let out: Vec<Value> = orgs
        .iter()
        .map(|(o, parties)| {
            let members: Vec<Value> = parties
                .iter()
                .map(|p| json!({"id": p.id, "name": p.name, "role": p.role}))
                .collect();
            json!({"id": o.id, "name": o.name, "registration": o.registration, "members": members,
                "standing": o.standing})
        })
        .collect();
    Ok(Json(json!({"organizations": out})))
}

pub(crate) async fn list_parties(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    // Reachable under both /v1/operator and /v1/regulator.
    if actor.role != Role::Operator && actor.role != Role::Regulator {
        return Err(ApiError::Forbidden(
            "only the operator and the regulator list parties".into(),
        ));
    }
    let s = st.clone();
    let parties = blocking(move || crate::parties::all(&s)).await?;
    Ok(Json(json!({"parties": parties})))
}

pub(crate) async fn propose_scenario(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(spec): Body<ScenarioSpec>,
) -> ApiResult<(StatusCode, Json<Scenario>)> {
    actor.require(Role::Operator)?;
    let s = st.clone();
    let scenario = blocking(move || crate::proposals::propose(&s, actor, spec)).await?;
    Ok((StatusCode::CREATED, Json(scenario)))
}

pub(crate) async fn list_scenarios(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Operator)?;
    let s = st.clone();
    let all = blocking(move || crate::proposals::all(&s)).await?;
    Ok(Json(json!({"scenarios": all})))
}

pub(crate) async fn list_applications(
    State(st): State<AppState>,
    Auth(actor): Auth,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Operator)?;
    let s = st.clone();
    let apps = blocking(move || applications::all_with_overdue(&s)).await?;
    let out: Vec<Value> = apps
        .iter()
        .map(|(a, overdue)| {
            let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("overdue".into(), json!(overdue));
            }
            v
        })
        .collect();
    Ok(Json(json!({"applications": out})))
}

/// The operator's decision on an application.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Decision {
    approve: bool,
    #[serde(default)]
    reason: Option<String>,
    /// Validity of the agreement in days (default 90, at most 3 years).
    #[serde(default)]
    valid_days: Option<u32>,
    /// Terms; defaults to the platform's standard terms.
    #[serde(default)]
    terms: Option<Terms>,
}

pub(crate) async fn decide_application(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(d): Body<Decision>,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Operator)?;
    let d = applications::Decision {
        approve: d.approve,
        reason: d.reason,
        valid_days: d.valid_days,
        terms: d.terms,
    };
    let out = match applications::decide(&st, actor, id, d).await? {
        (app, None) => json!({"application": app}),
        (app, Some(ag)) => json!({"application": app, "agreement": ag}),
    };
    Ok(Json(out))
}

/// Jobs whose output waits in the airlock, with the automatic checks and a
/// preview of the output (which is already protected).
pub(crate) async fn list_reviews(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Operator)?;
    let s = st.clone();
    let waiting = blocking(move || crate::airlock::waiting(&s)).await?;
    let out: Vec<Value> = waiting
        .into_iter()
        .map(|(j, preview)| json!({"job": j, "output_preview": preview}))
        .collect();
    Ok(Json(json!({"reviews": out})))
}

/// The operator's decision on a job's output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewDecision {
    approve: bool,
    #[serde(default)]
    reason: Option<String>,
}

pub(crate) async fn decide_review(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(d): Body<ReviewDecision>,
) -> ApiResult<Json<JobRecord>> {
    actor.require(Role::Operator)?;
    let job = crate::airlock::decide(&st, actor, id, d.approve, d.reason).await?;
    Ok(Json(job))
}

/// Request to rotate a key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rotation {
    /// Why (scheduled rotation, suspected exposure), for the ledger.
    reason: String,
}

/// Rotates the tokenization master key (issue 16): a new generation, used
/// by agreements issued from now on. Open agreements keep the generation
/// they were issued under, so the tokens they released stay stable for
/// their life; to move one onto the new key, terminate it and issue a new
/// one (whose tokens link to nothing before). Recorded as `key.rotate`
/// `{key: "tokenization", generation, fingerprint, endorsement, reason}`.
pub(crate) async fn rotate_token_key(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(r): Body<Rotation>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    actor.require(Role::Operator)?;
    let r = rotation::rotate_token_key(&st, actor, r.reason).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "key": RotatedKey::Tokenization.name(),
            "generation": r.generation,
            "fingerprint": r.details.get("fingerprint"),
            "announced_in": r.seq,
            "note": "agreements issued from now on use this generation; open agreements keep theirs (docs/keys.md)"
        })),
    ))
}

/// Rotates the ledger signing key (issue 16): a new Ed25519 key is made and
/// written (sealed when the keys are), announced in a `key.rotate` entry
/// `{key: "ledger", generation, public_key, note_key, endorsement, reason}`,
/// and the tree ending at that entry is signed by the old key; checkpoints
/// of larger trees are signed by the new one. Verifiers holding the first
/// key follow the chain (`scenarios::ledger::KeyChain`, `docs/keys.md`).
pub(crate) async fn rotate_ledger_key(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(r): Body<Rotation>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    actor.require(Role::Operator)?;
    let (r, announced_under) = rotation::rotate_ledger_key(&st, actor, r.reason).await?;
    let seq = r.seq;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "key": RotatedKey::Ledger.name(),
            "generation": r.generation,
            "public_key": r.details.get("public_key"),
            "note_key": r.details.get("note_key"),
            "announced_in": seq,
            "announced_under": announced_under,
            "note": "checkpoints of trees beyond the announcement are signed by the new key; verifiers keep the first key and follow the chain (docs/keys.md)"
        })),
    ))
}
