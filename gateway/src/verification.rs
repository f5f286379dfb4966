//! Cross-verification (R18), the service behind
//! `POST /v1/developer/agreements/{id}/verify`: a developer checks its own
//! records against the public data and learns, per record, a randomized
//! match or no match (see `api::verify` for the wire format).
//!
//! The answers are inside the privacy guarantee: each is randomized
//! response at the scenario's per-query epsilon (`sandbox::verify`), a
//! batch names each subject at most once and is charged as one query to
//! the developer's budget under the scenario, in one transaction with its
//! ledger entry and the check counters. A subject that cannot be verified
//! (no consent to the scenario, suspended, absent, or checked
//! [`MAX_CHECKS_PER_SUBJECT`] times already) is answered exactly like a
//! consenting subject whose claim does not match: same fields, same
//! status, same work, the same distribution of answers. The counters are
//! kept for every named subject, consenting or not, so the writes do not
//! depend on consent either.

use crate::error::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::store::{append, blocking, NewEntry};
use chrono::Utc;
use sandbox::verify::{mechanism, Claim};
use scenarios::party::Actor;
use scenarios::policy::ColumnOp;
use serde_json::json;

/// Checks of one subject per developer and scenario, over all time.
pub const MAX_CHECKS_PER_SUBJECT: u32 = 3;

/// A verified batch: one randomized answer per claim, in order.
#[derive(Debug)]
pub struct Verified {
    /// True for "match".
    pub answers: Vec<bool>,
    /// The randomized response's epsilon.
    pub epsilon: scenarios::budget::Epsilon,
    /// What the batch was charged.
    pub cost: scenarios::budget::Budget,
}

/// Checks `claims` (each subject once) of `dataset` under the open
/// agreement `id` of `actor`: charges the batch, counts the checks, writes
/// the ledger entry, then answers.
pub async fn verify_batch(
    st: &AppState,
    actor: Actor,
    id: String,
    dataset: String,
    claims: Vec<Claim>,
) -> ServiceResult<Verified> {
    let columns: Vec<String> = {
        let mut c: Vec<String> = claims.iter().flat_map(|c| c.values.keys().cloned()).collect();
        c.sort();
        c.dedup();
        c
    };
    {
        let mut seen = std::collections::HashSet::with_capacity(claims.len());
        if !claims.iter().all(|c| seen.insert(c.unit.as_str())) {
            return Err(ServiceError::BadRequest(
                "a batch may name each subject only once (each record is answered under the budget of one query)".into(),
            ));
        }
    }
    let s = st.clone();
    let dataset_name = dataset.clone();
    let cols = columns.clone();
    let (ag, actor, table, rules, population) = blocking(move || {
        let (ag, sc) = crate::agreements::open_agreement_of(&s, &actor.id, &id)?;
        let grant = sc.spec.table(&dataset).ok_or_else(|| {
            ServiceError::Forbidden(format!(
                "dataset `{}` is not in the scenario",
                dataset.escape_debug()
            ))
        })?;
        for col in &cols {
            if !grant
                .column(col)
                .is_some_and(|g| g.ops.contains(&ColumnOp::Verify))
            {
                return Err(ServiceError::PolicyViolation(format!(
                    "column `{}.{}` is not granted for verification (the `verify` operation)",
                    dataset,
                    col.escape_debug()
                )));
            }
        }
        let mut table = crate::jobs::scenario_tables(&s, &sc)?
            .into_iter()
            .find(|t| t.spec.name == dataset)
            .ok_or_else(|| ServiceError::Internal("table missing from its scenario".into()))?;
        // Only subjects that consented to this scenario can match (R18),
        // whether or not its jobs need consent.
        table.units.only = Some(std::sync::Arc::new(s.store.consenting_units(&sc.id)?));
        // Charged like a query against the population of the dataset's
        // units, at every level (docs/privacy-model.md), under the
        // scenario's rules within today's caps for that population.
        let kind = scenarios::population::population_of(table.spec.unit_kind.as_deref()).to_string();
        let units = crate::jobs::population_units(&crate::datasets::current_datasets(&s)?)
            .get(&kind)
            .copied()
            .unwrap_or(0);
        let rules = sc.spec.release.within_caps(units);
        Ok((ag, actor, table, rules, (kind, units)))
    })
    .await?;

    let (epsilon, cost) = mechanism(&rules);
    let limit = rules.total_budget();
    let n = claims.len();
    let subjects: Vec<String> = claims.iter().map(|c| c.unit.clone()).collect();
    let digest = {
        let text: Vec<String> = claims
            .iter()
            .map(|c| format!("{}\u{1f}{:?}", c.unit, c.values))
            .collect();
        hex::encode(scenarios::ledger::sha256(text.join("\u{1e}").as_bytes()))
    };
    let charge = crate::store::population::Charge {
        populations: vec![population],
        scenario: ag.scenario_id.clone(),
        organization: crate::jobs::org_of(&actor),
        developer: actor.id.clone(),
        allocation: limit,
        cost,
    };
    let (dev, scenario, agreement, ds) = (
        actor.id.clone(),
        ag.scenario_id.clone(),
        ag.id.clone(),
        dataset_name,
    );
    // The charge, the counters and the entry commit together, before
    // anything is compared; a batch the budget does not cover changes
    // nothing.
    let eligible: Vec<bool> = st
        .store
        .write(move |tx| {
            let levels = crate::store::population::charge_in(tx, &charge, Utc::now())?;
            crate::store::population::add_verification_spent(tx, &dev, &scenario, &cost)?;
            let eligible: Vec<bool> = crate::store::count_verifications(tx, &dev, &scenario, &subjects)?
                .into_iter()
                .map(|done| done < MAX_CHECKS_PER_SUBJECT)
                .collect();
            // Counts of consenting or checked subjects would say who
            // consented: the entry holds what the developer sent and paid.
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "verify.batch",
                    &agreement,
                    json!({"scenario": scenario, "dataset": ds, "columns": columns, "records": n,
                        "mechanism": "randomized_response", "epsilon": epsilon, "cost": cost,
                        "levels": levels, "privacy_model": "docs/privacy-model.md", "request_sha256": digest}),
                ),
                Utc::now(),
            )?;
            Ok(eligible)
        })
        .await?;

    let answers = st
        .plane
        .verify_randomized(&table, &claims, &eligible, epsilon)
        .await?;
    Ok(Verified {
        answers,
        epsilon,
        cost,
    })
}
