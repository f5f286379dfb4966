//! Cross-verification (R18): a developer checks its own records (for
//! example an enterprise id and a claimed number of employees) against the
//! public data and learns only match or no match per record, and only for
//! subjects that consented to the scenario. Columns must be granted with
//! the `verify` operation. Each subject can be checked at most
//! [`MAX_CHECKS_PER_SUBJECT`] times per developer and scenario, so a value
//! cannot be found by trying candidates one after another.

use super::blocking;
use crate::auth::{Auth, Body};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{append, NewEntry};
use axum::extract::{Path, State};
use axum::Json;
use chrono::Utc;
use rusqlite::{params, OptionalExtension};
use sandbox::verify::{Claim, Claimed, MAX_CLAIMS};
use scenarios::policy::ColumnOp;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Checks of one subject per developer and scenario, over all time.
const MAX_CHECKS_PER_SUBJECT: u32 = 3;

/// One record to check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    /// The subject's privacy unit value.
    subject: String,
    /// Claimed values by column (numbers or text).
    claims: BTreeMap<String, Value>,
}

/// A batch of records against one dataset.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    dataset: String,
    records: Vec<Record>,
}

fn claimed(column: &str, v: &Value) -> ApiResult<Claimed> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .map(Claimed::Number)
            .ok_or_else(|| ApiError::BadRequest(format!("claim `{column}` is not a usable number"))),
        Value::String(s) => Ok(Claimed::Text(s.clone())),
        _ => Err(ApiError::BadRequest(format!(
            "claim `{column}` must be a number or text"
        ))),
    }
}

pub(crate) async fn verify(
    State(st): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Body(req): Body<Request>,
) -> ApiResult<Json<Value>> {
    if req.records.is_empty() || req.records.len() > MAX_CLAIMS {
        return Err(ApiError::BadRequest(format!(
            "give between 1 and {MAX_CLAIMS} records"
        )));
    }
    let mut claims = Vec::with_capacity(req.records.len());
    for r in &req.records {
        if r.claims.is_empty() {
            return Err(ApiError::BadRequest(
                "every record needs at least one claim".into(),
            ));
        }
        if r.subject.is_empty() || r.subject.len() > 200 {
            return Err(ApiError::BadRequest("each subject must be 1-200 bytes".into()));
        }
        let values = r
            .claims
            .iter()
            .map(|(k, v)| Ok((k.clone(), claimed(k, v)?)))
            .collect::<ApiResult<BTreeMap<_, _>>>()?;
        claims.push(Claim {
            unit: r.subject.clone(),
            values,
        });
    }
    let columns: Vec<String> = {
        let mut c: Vec<String> = claims.iter().flat_map(|c| c.values.keys().cloned()).collect();
        c.sort();
        c.dedup();
        c
    };
    let s = st.clone();
    let dataset = req.dataset.clone();
    let cols = columns.clone();
    let (ag, table, consenting) = blocking(move || {
        let (ag, sc) = super::open_agreement_of(&s, &actor.id, &id)?;
        let grant = sc.spec.table(&dataset).ok_or_else(|| {
            ApiError::Forbidden(format!(
                "dataset `{}` is not in the scenario",
                dataset.escape_debug()
            ))
        })?;
        for col in &cols {
            if !grant
                .column(col)
                .is_some_and(|g| g.ops.contains(&ColumnOp::Verify))
            {
                return Err(ApiError::PolicyViolation(format!(
                    "column `{}.{}` is not granted for verification (the `verify` operation)",
                    dataset,
                    col.escape_debug()
                )));
            }
        }
        let table = crate::jobs::scenario_tables(&s, &sc)?
            .into_iter()
            .find(|t| t.spec.name == dataset)
            .ok_or_else(|| ApiError::Internal("table missing from its scenario".into()))?;
        let consenting = s.store.consenting_units(&sc.id)?;
        Ok(((ag, actor), table, consenting))
    })
    .await?;
    let (ag, actor) = ag;

    // Who may be checked: consenting subjects within their check limit.
    // The limit is charged before anything is compared, in one transaction
    // with the ledger entry.
    let n = claims.len();
    let subjects: Vec<(usize, String)> = claims
        .iter()
        .enumerate()
        .filter(|(_, c)| consenting.contains(&c.unit))
        .map(|(i, c)| (i, c.unit.clone()))
        .collect();
    let digest = {
        let text: Vec<String> = claims
            .iter()
            .map(|c| format!("{}\u{1f}{:?}", c.unit, c.values))
            .collect();
        hex::encode(scenarios::ledger::sha256(text.join("\u{1e}").as_bytes()))
    };
    let (dev, scenario, agreement, ds) = (
        actor.id.clone(),
        ag.scenario_id.clone(),
        ag.id.clone(),
        req.dataset.clone(),
    );
    let allowed: Vec<usize> = st
        .store
        .write(move |tx| {
            let mut allowed = Vec::new();
            let mut get = tx.prepare_cached(
                "SELECT checks FROM verifications WHERE developer_id = ?1 AND scenario_id = ?2 AND unit = ?3",
            )?;
            let mut put = tx.prepare_cached(
                "INSERT INTO verifications (developer_id, scenario_id, unit, checks) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (developer_id, scenario_id, unit) DO UPDATE SET checks = checks + 1",
            )?;
            for (i, unit) in &subjects {
                let done: u32 = get
                    .query_row(params![dev, scenario, unit], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0);
                if done < MAX_CHECKS_PER_SUBJECT {
                    put.execute(params![dev, scenario, unit])?;
                    allowed.push(*i);
                }
            }
            drop((get, put));
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "verify.batch",
                    &agreement,
                    json!({"scenario": scenario, "dataset": ds, "columns": columns, "records": n,
                        "consenting": subjects.len(), "checked": allowed.len(), "request_sha256": digest}),
                ),
                Utc::now(),
            )?;
            Ok(allowed)
        })
        .await?;

    let checked: Vec<Claim> = allowed.iter().filter_map(|i| claims.get(*i).cloned()).collect();
    let answers = st.plane.verify(&table, &checked).await?;
    let mut results = vec!["unavailable"; n];
    for (i, c) in claims.iter().enumerate() {
        if consenting.contains(&c.unit) {
            results[i] = "limit_reached";
        }
    }
    for (i, a) in allowed.iter().zip(answers) {
        if let Some(r) = results.get_mut(*i) {
            *r = match a {
                Some(true) => "match",
                Some(false) => "no_match",
                None => "unavailable",
            };
        }
    }
    Ok(Json(json!({"results": results})))
}
