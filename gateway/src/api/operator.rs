//! The operator: creates parties, proposes scenarios for the regulator's
//! approval (R8), and reviews applications within 5 working days, issuing an
//! agreement on approval (R12, R13).

use super::auth::{Auth, Body};
use super::{blocking, current_datasets};
use super::{ApiError, ApiResult};
use super::{JobRecord, JobStatus};
use crate::keys::{new_id, new_token};
use crate::state::AppState;
use crate::store::Tx;
use crate::store::{append, get_in, list_in, party_in, put, NewEntry, Organization, Party, Store, Table};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{Duration, Utc};
use scenarios::party::{Actor, Role};
use scenarios::policy::ScenarioSpec;
use scenarios::workflow::{Agreement, Application, Scenario, ScenarioStatus, Terms};
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
    let name = req.name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::BadRequest("name must be 1-200 characters".into()));
    }
    // Separation of duties (I16): who may create which role, and
    // in which organization, is the domain's rule.
    let placed = scenarios::party::may_create(&actor, req.role, req.organization.as_deref())?;
    let (token, hash) = new_token();
    let now = Utc::now().to_rfc3339();
    let party = st
        .store
        .write(move |tx| {
            // A party without an organization gets its own, recorded in the
            // same ledger entry as the party.
            let (org, new_org) = match placed {
                Some(id) => (
                    get_in::<Organization>(tx, Table::Organizations, &id)?.ok_or_else(|| {
                        ApiError::NotFound(format!("no organization {}", id.escape_debug()))
                    })?,
                    false,
                ),
                None => {
                    let org = Organization {
                        id: new_id("org"),
                        name: name.clone(),
                        registration: None,
                        created_at: now.clone(),
                        standing: Vec::new(),
                    };
                    put(tx, &org)?;
                    (org, true)
                }
            };
            let p = Party {
                id: new_id("pt"),
                name,
                role: req.role,
                created_at: now,
                organization: org.id,
                created_by: Some(actor.id.clone()),
            };
            Store::insert_party(tx, &p, &hash)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "party.create",
                    &p.id,
                    json!({"name": p.name, "role": p.role, "organization": p.organization,
                        "new_organization": new_org, "created_by": p.created_by}),
                ),
                Utc::now(),
            )?;
            Ok(p)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": party.id, "name": party.name, "role": party.role, "organization": party.organization,
            "token": token, "note": "the token is shown only once; the platform stores its hash"}),
        ),
    ))
}

/// The party that decided a record, as an actor with the chain of
/// accounts that created it; `None` when unknown.
fn decider_in(tx: &Tx<'_>, id: Option<&str>) -> ApiResult<Option<scenarios::party::Actor>> {
    let Some(p) = id.map(|id| party_in(tx, id)).transpose()?.flatten() else {
        return Ok(None);
    };
    let creators = crate::store::creators_in(tx, &p)?;
    Ok(Some(scenarios::party::Actor {
        id: p.id,
        role: p.role,
        name: p.name,
        org: p.organization,
        creators,
    }))
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
    let name = req.name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::BadRequest("name must be 1-200 characters".into()));
    }
    let org = Organization {
        id: new_id("org"),
        name,
        registration: req.registration,
        created_at: Utc::now().to_rfc3339(),
        standing: Vec::new(),
    };
    let o = org.clone();
    st.store
        .write(move |tx| {
            put(tx, &o)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "organization.create",
                    &o.id,
                    json!({"name": o.name, "registration": o.registration}),
                ),
                Utc::now(),
            )
        })
        .await?;
    Ok((StatusCode::CREATED, Json(org)))
}

/// Records a standing fact about an organization (R10).
pub(crate) async fn record_standing(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(rec): Body<scenarios::party::Standing>,
) -> ApiResult<Json<Organization>> {
    if rec.source.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "the source of the record is required".into(),
        ));
    }
    if rec.until.is_some_and(|u| u < rec.date) {
        return Err(ApiError::BadRequest("`until` is before `date`".into()));
    }
    let org = st
        .store
        .write(move |tx| {
            let mut org: Organization = get_in(tx, Table::Organizations, &id)?
                .ok_or_else(|| ApiError::NotFound(format!("no organization {}", id.escape_debug())))?;
            org.standing.push(rec.clone());
            put(tx, &org)?;
            append(
                tx,
                NewEntry::by(&actor, "organization.standing", &org.id, json!({"record": rec})),
                Utc::now(),
            )?;
            Ok(org)
        })
        .await?;
    Ok(Json(org))
}

/// Organizations with their members (operator and regulator).
pub(crate) async fn list_organizations(
    State(st): State<AppState>,
    Auth(_actor): Auth,
) -> ApiResult<Json<Value>> {
    let store = st.store.clone();
    let (orgs, parties) = blocking(move || {
        let orgs: Vec<Organization> = store.list(Table::Organizations, None)?;
        Ok((orgs, store.parties()?))
    })
    .await?;
    let out: Vec<Value> = orgs
        .iter()
        .map(|o| {
            let members: Vec<Value> = parties
                .iter()
                .filter(|p| p.organization == o.id)
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
    let store = st.store.clone();
    let parties = blocking(move || store.parties()).await?;
    Ok(Json(json!({"parties": parties})))
}

pub(crate) async fn propose_scenario(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Body(spec): Body<ScenarioSpec>,
) -> ApiResult<(StatusCode, Json<Scenario>)> {
    actor.require(Role::Operator)?;
    let s = st.clone();
    let scenario = blocking(move || {
        let datasets = current_datasets(&s)?;
        spec.validate(|name| datasets.iter().find(|d| d.name == name).map(|d| &d.spec))?;
        // Delta scaled to the largest population the scenario reads.
        let units = crate::jobs::population_units(&datasets);
        let largest = spec
            .tables
            .iter()
            .filter_map(|t| datasets.iter().find(|d| d.name == t.dataset))
            .map(|d| {
                let kind = scenarios::population::population_of(d.spec.unit_kind.as_deref());
                units.get(kind).copied().unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        spec.release.validate_for_population(largest)?;
        for t in &spec.tables {
            let shared = datasets
                .iter()
                .find(|d| d.name == t.dataset)
                .is_some_and(|d| d.spec.share_class != scenarios::catalog::ShareClass::NotShared);
            if !shared {
                return Err(ApiError::BadRequest(format!(
                    "dataset `{}` is not shared and cannot be developed",
                    t.dataset
                )));
            }
        }
        let now = Utc::now();
        let mut sc = Scenario::propose(new_id("sc"), spec, &actor, now)?;
        s.store.tx(move |tx| {
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "scenario.propose",
                    &sc.id,
                    json!({"name": sc.spec.name, "class": sc.spec.class,
                    "purpose": sc.spec.purpose, "spec": sc.spec}),
                ),
                now,
            )?;
            // A class the regulator approved once approves its later
            // scenarios (R8).
            // An approval by an account the proposer's organization created
            // approves nothing further (I16): the proposal then waits for
            // the regulator.
            let approved: Vec<Scenario> = list_in(tx, Table::Scenarios, Some(("status", "approved")))?;
            let mut under = None;
            let class = sc.spec.class.clone();
            for prior in approved.iter().filter(|p| p.spec.class == class) {
                let Some(decider) = decider_in(tx, prior.decided_by.as_deref())? else {
                    continue;
                };
                if sc.approve_under_class(prior, &decider, now).is_ok() {
                    under = Some(prior);
                    break;
                }
            }
            if let Some(prior) = under {
                append(
                    tx,
                    NewEntry::system(
                        "scenario.approve",
                        &sc.id,
                        json!({"class": sc.spec.class, "reason": sc.reason, "class_approved_with": prior.id}),
                    ),
                    now,
                )?;
            }
            put(tx, &sc)?;
            Ok(sc)
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(scenario)))
}

pub(crate) async fn list_scenarios(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Operator)?;
    let store = st.store.clone();
    let all: Vec<Scenario> = blocking(move || store.list(Table::Scenarios, None)).await?;
    Ok(Json(json!({"scenarios": all})))
}

pub(crate) async fn list_applications(
    State(st): State<AppState>,
    Auth(actor): Auth,
) -> ApiResult<Json<Value>> {
    actor.require(Role::Operator)?;
    let store = st.store.clone();
    let apps: Vec<Application> = blocking(move || store.list(Table::Applications, None)).await?;
    let today = Utc::now().date_naive();
    let out: Vec<Value> = apps
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("overdue".into(), json!(a.is_overdue(today)));
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
    let days = d.valid_days.unwrap_or(90);
    if !(1..=1095).contains(&days) {
        return Err(ApiError::BadRequest(
            "valid_days must be between 1 and 1095".into(),
        ));
    }
    // Pinned now: a rotation racing this decision leaves the agreement on
    // the generation before it, which stays valid.
    let generation = st.keys.token_generation();
    let store = st.store.clone();
    let out = store
        .write(move |tx| {
            let mut app: Application = get_in(tx, Table::Applications, &id)?
                .ok_or_else(|| ApiError::NotFound(format!("no application {}", id.escape_debug())))?;
            let sc: Scenario = get_in(tx, Table::Scenarios, &app.scenario_id)?
                .ok_or_else(|| ApiError::Internal("application without scenario".into()))?;
            let now = Utc::now();
            app.decide(d.approve, d.reason.clone(), &actor, now)?;
            put(tx, &app)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    &format!("application.{}", if d.approve { "approve" } else { "reject" }),
                    &app.id,
                    json!({"scenario": app.scenario_id, "developer": app.developer_id, "reason": app.reason,
                        "due_on": app.due_on, "on_time": now.date_naive() <= app.due_on}),
                ),
                now,
            )?;
            if !d.approve {
                return Ok(json!({"application": app}));
            }
            if sc.status != ScenarioStatus::Approved {
                return Err(ApiError::Conflict(format!(
                    "scenario {} is no longer approved",
                    sc.id
                )));
            }
            let mut ag = Agreement::issue(
                new_id("ag"),
                &app,
                d.terms.clone().unwrap_or_default(),
                now,
                now + Duration::days(i64::from(days)),
                &actor,
            )?;
            ag.token_generation = generation;
            put(tx, &ag)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "agreement.issue",
                    &ag.id,
                    json!({"application": app.id, "scenario": ag.scenario_id,
                    "developer": ag.developer_id, "valid_from": ag.valid_from, "valid_until": ag.valid_until,
                    "terms": ag.terms, "budget": sc.spec.release.total_budget(),
                    "token_generation": ag.token_generation}),
                ),
                now,
            )?;
            Ok(json!({"application": app, "agreement": ag}))
        })
        .await?;
    Ok(Json(out))
}

/// Jobs whose output waits in the airlock, with the automatic checks and a
/// preview of the output (which is already protected).
pub(crate) async fn list_reviews(State(st): State<AppState>, Auth(actor): Auth) -> ApiResult<Json<Value>> {
    actor.require(Role::Operator)?;
    let store = st.store.clone();
    let out = blocking(move || {
        let jobs: Vec<JobRecord> = store.list(Table::Jobs, Some(("status", "awaiting_review")))?;
        let mut out = Vec::with_capacity(jobs.len());
        for j in jobs {
            let output = store.job_output(&j.id)?.unwrap_or_default();
            let preview = String::from_utf8_lossy(output.get(..16 * 1024).unwrap_or(&output)).into_owned();
            out.push(json!({"job": j, "output_preview": preview}));
        }
        Ok(out)
    })
    .await?;
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
    if !d.approve && d.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ApiError::BadRequest(
            "withholding an output needs a reason".into(),
        ));
    }
    let store = st.store.clone();
    let job = store
        .write(move |tx| {
            let mut j: JobRecord = get_in(tx, Table::Jobs, &id)?
                .ok_or_else(|| ApiError::NotFound(format!("no job {}", id.escape_debug())))?;
            if j.status != JobStatus::AwaitingReview {
                return Err(ApiError::Conflict(format!(
                    "job {} is not waiting for review",
                    j.id
                )));
            }
            // The developer's organization, nor an account it created,
            // reviews its output (I16).
            let org = party_in(tx, &j.developer_id)?
                .map(|p| p.organization)
                .unwrap_or_default();
            scenarios::party::check_independent(&actor, &j.developer_id, &org)?;
            let now = Utc::now();
            j.status = if d.approve {
                JobStatus::Succeeded
            } else {
                JobStatus::Withheld
            };
            let decision = json!({"approve": d.approve, "reason": d.reason, "by": actor.id, "at": now});
            if let Some(Value::Object(r)) = j.review.as_mut() {
                r.insert("decision".into(), decision.clone());
            } else {
                j.review = Some(json!({"decision": decision}));
            }
            put(tx, &j)?;
            let action = if d.approve {
                "review.approve"
            } else {
                "review.withhold"
            };
            append(
                tx,
                NewEntry::by(
                    &actor,
                    action,
                    &j.id,
                    json!({"reason": d.reason, "output_hash": j.output_hash}),
                ),
                now,
            )?;
            if d.approve {
                append(tx, crate::jobs::release_entry(&actor, &j, Some(&actor.id)), now)?;
            }
            Ok(j)
        })
        .await?;
    Ok(Json(job))
}

/// Request to rotate a key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rotation {
    /// Why (scheduled rotation, suspected exposure), for the ledger.
    reason: String,
}

impl Rotation {
    /// The reason, trimmed: 1 to 1000 bytes, or 400.
    fn reason(self) -> ApiResult<String> {
        let reason = self.reason.trim().to_string();
        if reason.is_empty() || reason.len() > 1000 {
            return Err(ApiError::BadRequest(
                "a rotation needs a `reason` of 1 to 1000 bytes (it is recorded in the ledger)".into(),
            ));
        }
        Ok(reason)
    }
}

/// Which key a rotation renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RotatedKey {
    Ledger,
    Tokenization,
}

impl RotatedKey {
    fn name(self) -> &'static str {
        match self {
            RotatedKey::Ledger => "ledger",
            RotatedKey::Tokenization => "tokenization",
        }
    }
}

/// A rotation recorded in the ledger.
struct Rotated {
    generation: u64,
    details: Value,
    seq: u64,
}

/// The shared course of a key rotation (one at a time): the new generation
/// is made and written before anything uses it; its `key.rotate` entry,
/// endorsed by the ledger key in force (`crate::ledger::follow_key_chain`),
/// puts it in force in the same transaction; if the entry does not commit,
/// the generation is withdrawn and its file is replaced by the next
/// rotation.
async fn rotate(st: &AppState, actor: Actor, reason: String, kind: RotatedKey) -> ApiResult<Rotated> {
    let _one_at_a_time = st.key_rotation.lock().await;
    let keys = st.keys.clone();
    let first = st.keys.first_public_key();
    let (generation, details) = blocking(move || {
        let fail = |e: anyhow::Error| ApiError::Internal(e.to_string());
        Ok(match kind {
            RotatedKey::Ledger => {
                let (g, public_key) = keys.prepare_ledger_rotation().map_err(fail)?;
                let note_key = scenarios::ledger::VerifierKey::operator_of(&first, &public_key)
                    .ok_or_else(|| ApiError::Internal("the new ledger key is not an Ed25519 key".into()))?
                    .to_string();
                let id = hex::encode(&public_key);
                let endorsement = keys.endorse("ledger", g, &id);
                (
                    g,
                    json!({"key": "ledger", "generation": g, "public_key": id, "note_key": note_key,
                           "endorsement": endorsement, "reason": reason}),
                )
            }
            RotatedKey::Tokenization => {
                let (g, fingerprint) = keys.prepare_token_rotation().map_err(fail)?;
                let endorsement = keys.endorse("tokenization", g, &fingerprint);
                (
                    g,
                    json!({"key": "tokenization", "generation": g, "fingerprint": fingerprint,
                           "endorsement": endorsement, "reason": reason}),
                )
            }
        })
    })
    .await?;
    let subject = match kind {
        RotatedKey::Ledger => crate::ledger::LEDGER_KEY_SUBJECT,
        RotatedKey::Tokenization => crate::ledger::TOKEN_KEY_SUBJECT,
    };
    let keys = st.keys.clone();
    let now = Utc::now();
    let entry = details.clone();
    let written = st
        .store
        .clone()
        .write(move |tx| {
            let seq = append(
                tx,
                NewEntry::by(&actor, scenarios::ledger::KEY_ROTATE, subject, entry),
                now,
            )?;
            // In force before the entry commits: for the ledger key, no
            // tree beyond the entry can be read, and so signed, before the
            // new key signs it.
            match kind {
                RotatedKey::Ledger => keys.announce_ledger(generation, seq),
                RotatedKey::Tokenization => keys.announce_token(generation),
            }
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(seq)
        })
        .await;
    match written {
        Ok(seq) => Ok(Rotated {
            generation,
            details,
            seq,
        }),
        Err(e) => {
            // Withdrawn only when the entry is not in the ledger (a write
            // that failed after committing keeps it; a restart rebuilds the
            // keys in force from the ledger either way).
            let store = st.store.clone();
            let recorded = blocking(move || {
                Ok(store.ledger_for(subject)?.iter().any(|e| {
                    serde_json::from_str::<scenarios::ledger::EntryBody>(&e.body).is_ok_and(|b| {
                        b.action == scenarios::ledger::KEY_ROTATE
                            && b.details.get("generation").and_then(|g| g.as_u64()) == Some(generation)
                    })
                }))
            })
            .await;
            if matches!(recorded, Ok(false)) {
                match kind {
                    RotatedKey::Ledger => st.keys.withdraw_ledger(generation),
                    RotatedKey::Tokenization => st.keys.withdraw_token(generation),
                }
            }
            Err(e)
        }
    }
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
    let reason = r.reason()?;
    let r = rotate(&st, actor, reason, RotatedKey::Tokenization).await?;
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
    let reason = r.reason()?;
    let r = rotate(&st, actor, reason, RotatedKey::Ledger).await?;
    let seq = r.seq;
    // The tree ending at the announcement, signed by the old key.
    let st2 = st.clone();
    let announced_under = blocking(move || {
        st2.ledger
            .checkpoint_at(&st2.store, &st2.keys, seq.saturating_add(1))
    })
    .await?;
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
