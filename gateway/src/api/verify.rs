//! Cross-verification (R18) over HTTP: a developer checks its own records
//! (for example an enterprise id and a claimed number of employees)
//! against the public data and learns, per record, a randomized match or
//! no match. Columns must be granted with the `verify` operation. This
//! module reads and checks the request; the charge, the counters, the
//! ledger entry and the answers are `crate::verification`'s.

use super::auth::{Auth, Body};
use super::{ApiError, ApiResult};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use sandbox::verify::{truth_probability, Claim, Claimed, MAX_CLAIMS};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

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
    let verified = crate::verification::verify_batch(&st, actor, id, req.dataset, claims).await?;
    let results: Vec<&str> = verified
        .answers
        .iter()
        .map(|a| if *a { "match" } else { "no_match" })
        .collect();
    Ok(Json(json!({
        "results": results,
        "mechanism": {"name": "randomized_response", "epsilon": verified.epsilon,
            "truth_probability": truth_probability(verified.epsilon)},
        "charged": verified.cost,
    })))
}
