//! The job lifecycle on the server: accept a module under an open
//! agreement, run it in the WASM runtime with a policy-scoped data door,
//! charge every query to the budgets of the populations it reads in the
//! same transaction as its ledger entry, and release the output only if the
//! job succeeded and the agreement is still open.
//!
//! Budgets belong to populations of units (`store::population`,
//! `docs/privacy-model.md`), charged at the population, the scenario's
//! allocation to the developer's organization, the organization and the
//! developer account: a new agreement, scenario, dataset version or
//! account of the same organization starts no fresh budget.
//!
//! Time seen from outside is coarse (I14): a job's final state (its status,
//! `finished_at`, its `job.finish` entry) is written no earlier than
//! `started_at + k·quantum` for the smallest `k ≥ 1` covering its actual
//! end ([`visible_end`]), and a running job's charges show in the
//! developer's budget only once it has ended (`settled_spent`).

use crate::datasets::{current_datasets, gate, private_tables};
use crate::error::{ServiceError, ServiceResult};
use crate::keys::new_id;
use crate::records::{Allowance, DatasetRecord, JobRecord, JobStatus, QueryRecord};
use crate::state::AppState;
use crate::store::population::{self, Charge};
use crate::store::{append, blocking, get_in, list_in, put, set_job_output, NewEntry, Store, Table};
use chrono::{DateTime, Utc};
use runtime::{JobError, JobInput, JobLimits, JobOutcome};
use sandbox::desensitize::TokenKey;
use sandbox::{Accountant, QueryLineage, ScopeConfig, TableVersion};
use scenarios::budget::Budget;
use scenarios::catalog::published_rows;
use scenarios::party::Actor;
use scenarios::workflow::{Agreement, Scenario, ScenarioStatus};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Charges budgets and records releases in the store.
struct StoreAccountant {
    store: Arc<Store>,
    developer: Actor,
    agreement_id: String,
    scenario_id: String,
    /// The scenario's allocation to an organization (its approved total,
    /// within today's caps).
    allocation: Budget,
    /// The population of every table in the scope, with its unit count:
    /// table name to (unit kind, units).
    populations: BTreeMap<String, (String, u64)>,
    job_id: String,
    /// Ledger sequence numbers of the releases, in order.
    released: Mutex<Vec<u64>>,
}

fn to_sandbox(e: ServiceError) -> sandbox::Error {
    match e {
        ServiceError::BudgetExhausted(m) => sandbox::Error::BudgetExhausted(m),
        ServiceError::Forbidden(m) => sandbox::Error::AccessClosed(m),
        other => sandbox::Error::Internal(other.to_string()),
    }
}

impl Accountant for StoreAccountant {
    fn charge(&self, cost: &Budget, lineage: &QueryLineage) -> sandbox::Result<()> {
        // Completed inside the transaction with every level's figures.
        let mut details = json!({
                "agreement": self.agreement_id,
                "scenario": self.scenario_id,
                "purpose": lineage.purpose,
                "sql": lineage.sql,
                "plan_hash": lineage.plan_hash,
                "tables": lineage.tables,
                "mechanism": lineage.mechanism,
                "cost": cost,
                "privacy_model": "docs/privacy-model.md",
        });
        // The populations the query reads; all of the scope's when a table
        // is not known by name (never fewer than the query touches).
        let mut populations: Vec<(String, u64)> = Vec::new();
        for t in &lineage.tables {
            match self.populations.get(&t.dataset) {
                Some(p) => populations.push(p.clone()),
                None => {
                    populations = self.populations.values().cloned().collect();
                    break;
                }
            }
        }
        if populations.is_empty() {
            populations = self.populations.values().cloned().collect();
        }
        populations.sort();
        populations.dedup_by(|a, b| a.0 == b.0);
        let charge = Charge {
            populations,
            scenario: self.scenario_id.clone(),
            organization: org_of(&self.developer),
            developer: self.developer.id.clone(),
            allocation: self.allocation,
            cost: *cost,
        };
        let (actor, job) = (self.developer.clone(), self.job_id.clone());
        let agreement = self.agreement_id.clone();
        let cost = *cost;
        self.store
            .tx(move |tx| {
                let ag: Agreement = get_in(tx, Table::Agreements, &agreement)?
                    .ok_or_else(|| ServiceError::Internal("agreement vanished".into()))?;
                let now = Utc::now();
                ag.check_open(now)?;
                let levels = population::charge_in(tx, &charge, now)?;
                if let serde_json::Value::Object(d) = &mut details {
                    d.insert("levels".into(), json!(levels));
                }
                // Counted on the job in the same transaction: the job has
                // now seen protected data (its details are withheld unless
                // released), and the charge stays out of the developer's
                // view of the budget until the job ends.
                let mut j: JobRecord = get_in(tx, Table::Jobs, &job)?
                    .ok_or_else(|| ServiceError::Internal("job vanished".into()))?;
                j.charged_queries = j.charged_queries.saturating_add(1);
                j.charged = j.charged.plus(&cost);
                put(tx, &j)?;
                append(tx, NewEntry::by(&actor, "query.charge", &job, details), now)?;
                Ok(())
            })
            .map_err(to_sandbox)
    }

    fn release(&self, lineage: &QueryLineage) -> sandbox::Result<()> {
        let entry = NewEntry::by(
            &self.developer,
            "query.release",
            &self.job_id,
            json!({
                "agreement": self.agreement_id,
                "sql": lineage.sql,
                "plan_hash": lineage.plan_hash,
                "released_groups": lineage.released_groups,
                "output_hash": lineage.output_hash,
                "output_bytes": lineage.output_bytes,
            }),
        );
        let seq = self
            .store
            .tx(move |tx| append(tx, entry, Utc::now()))
            .map_err(to_sandbox)?;
        if let Ok(mut r) = self.released.lock() {
            r.push(seq);
        }
        Ok(())
    }
}

/// Accepts a job under an agreement of `actor`.
pub async fn submit(
    st: &AppState,
    actor: &Actor,
    agreement_id: &str,
    module: Vec<u8>,
    params: Vec<u8>,
) -> ServiceResult<JobRecord> {
    if params.len() > runtime::MAX_PARAMS_BYTES {
        return Err(ServiceError::TooLarge(format!(
            "job parameters exceed {} bytes",
            runtime::MAX_PARAMS_BYTES
        )));
    }
    if module.is_empty() {
        return Err(ServiceError::BadRequest(
            "the request body must be the job's WASM module".into(),
        ));
    }
    // Counted from here (compiling included) to the job's visible end.
    let tenant_slot = st.tenants.admit(actor, &st.config.tenant_limits)?;
    let (s, a, id) = (st.clone(), actor.clone(), agreement_id.to_string());
    let (ag, sc) = blocking(move || {
        let ag: Agreement = s
            .store
            .get(Table::Agreements, &id)?
            .filter(|x: &Agreement| x.developer_id == a.id)
            .ok_or_else(|| ServiceError::NotFound(format!("no agreement {}", id.escape_debug())))?;
        let sc: Scenario = s
            .store
            .get(Table::Scenarios, &ag.scenario_id)?
            .ok_or_else(|| ServiceError::Internal("no scenario".into()))?;
        // A suspended dataset refuses the job now rather than when it runs.
        scenario_tables(&s, &sc)?;
        Ok((ag, sc))
    })
    .await?;
    ag.check_open(Utc::now())?;
    if sc.status != ScenarioStatus::Approved {
        return Err(ServiceError::Forbidden(format!(
            "scenario {} is not approved",
            sc.id
        )));
    }
    let rt = st.runtime.clone();
    let bytes = module.clone();
    let limit = std::time::Duration::from_millis(st.config.job_limits.timeout_ms);
    // A module not compiled yet takes the developer's one compilation.
    let hash = hex::encode(scenarios::ledger::sha256(&module));
    let _turn = if rt.is_compiled(&hash) {
        None
    } else {
        Some(st.tenants.compile_turn(actor, &st.config.tenant_limits)?)
    };
    let (loaded, compile_ms) = tokio::task::spawn_blocking(move || rt.load_metered(&bytes, limit))
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    let info = match loaded {
        Ok((info, _)) => info,
        Err(e) => {
            // Compiling a module that is then refused (or given up at the
            // deadline) is work too: charged now, as the module's own
            // compile time (review of issue 18), else compiling would be
            // free for every module that fails.
            let units = compile_ms.div_ceil(crate::tenants::COMPILE_MS_PER_UNIT);
            if units > 0 {
                st.tenants.charge(actor, units, &st.config.tenant_limits);
            }
            return Err(match e {
                // Past the compilation deadline: the module is too costly
                // to compile, whatever its byte size.
                JobError::LimitExceeded(m) => ServiceError::TooLarge(m),
                other => other.into(),
            });
        }
    };
    let now = Utc::now();
    let job = JobRecord {
        id: new_id("job"),
        agreement_id: ag.id.clone(),
        developer_id: actor.id.clone(),
        scenario_id: sc.id.clone(),
        module_hash: info.hash.clone(),
        module_size: info.size,
        compile_ms: info.compile_ms,
        params_hash: (!params.is_empty()).then(|| hex::encode(scenarios::ledger::sha256(&params))),
        status: JobStatus::Queued,
        submitted_at: now,
        started_at: None,
        finished_at: None,
        error: None,
        usage: None,
        queries: Vec::new(),
        tables: Vec::new(),
        output_hash: None,
        output_bytes: None,
        logs: Vec::new(),
        review: None,
        charged_queries: 0,
        charged: Budget::default(),
        allowance: None,
    };
    let (store, j, a) = (st.store.clone(), job.clone(), actor.clone());
    store
        .write(move |tx| {
            Store::put_module(tx, &j.module_hash, &module, &now.to_rfc3339())?;
            put(tx, &j)?;
            append(
                tx,
                NewEntry::by(
                    &a,
                    "job.submit",
                    &j.id,
                    json!({"agreement": j.agreement_id, "scenario": j.scenario_id,
                    "module_hash": j.module_hash, "module_size": j.module_size, "compile_ms": j.compile_ms,
                    "params_hash": j.params_hash}),
                ),
                now,
            )?;
            Ok(())
        })
        .await?;
    let cancel = Arc::new(AtomicBool::new(false));
    if let Ok(mut r) = st.running.lock() {
        r.insert(job.id.clone(), cancel.clone());
    }
    let (s, a, jid) = (st.clone(), actor.clone(), job.id.clone());
    let params_for_run = params;
    tokio::spawn(async move {
        let _tenant_slot = tenant_slot;
        let id = jid.clone();
        if let Err(e) = run(&s, &a, &jid, params_for_run, cancel).await {
            tracing::error!(job = %id, error = %e, "job failed before it could run");
            if let Err(e2) = close_job(&s, &id, "internal", &e.to_string(), true).await {
                tracing::error!(job = %id, error = %e2, "recording the job failure failed");
            }
        }
        if let Ok(mut r) = s.running.lock() {
            r.remove(&id);
        }
    });
    Ok(job)
}

/// Waits until a job is no longer queued or running, or until it has run
/// longer than any job of its scenario can ([`longest_run`]; only a job
/// that waited for a runtime slot gets there): then the job is returned
/// still running.
pub async fn wait(st: &AppState, job_id: &str) -> ServiceResult<JobRecord> {
    let started = std::time::Instant::now();
    let (s, id) = (st.clone(), job_id.to_string());
    let max_queries = blocking(move || {
        let job: JobRecord = s
            .store
            .get(Table::Jobs, &id)?
            .ok_or_else(|| ServiceError::NotFound(format!("no job {}", id.escape_debug())))?;
        let sc: Option<Scenario> = s.store.get(Table::Scenarios, &job.scenario_id)?;
        Ok(sc.map_or(1, |sc| sc.spec.release.max_queries_per_job))
    })
    .await?;
    let limit = longest_run(&st.config.job_limits, max_queries, st.config.time_quantum);
    let mut pause = Duration::from_millis(10);
    loop {
        let (store, id) = (st.store.clone(), job_id.to_string());
        let job: JobRecord = blocking(move || store.get(Table::Jobs, &id))
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no job {}", job_id.escape_debug())))?;
        if job.status.is_final() || started.elapsed() > limit {
            return Ok(job);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The longest a job can run once it has a runtime slot: its own running
/// time (which excludes time inside host calls), every query it may make
/// at its own time limit, the rounding up to a time quantum, and two
/// minutes for loading, planning and the store.
pub fn longest_run(limits: &JobLimits, max_queries: u32, quantum: Duration) -> Duration {
    Duration::from_millis(limits.timeout_ms)
        .saturating_add(Duration::from_millis(limits.query_timeout_ms).saturating_mul(max_queries))
        .saturating_add(quantum)
        .saturating_add(Duration::from_secs(120))
}

/// When a job that started at `started` and whose run ended at `now` is
/// seen to end: `started + k·quantum` for the smallest `k ≥ 1` that is not
/// before `now` (I14). What anyone outside can time of a job is then a
/// whole number of quanta, whatever the data made it take.
pub fn visible_end(started: DateTime<Utc>, now: DateTime<Utc>, quantum: Duration) -> DateTime<Utc> {
    let q = i64::try_from(quantum.as_micros()).unwrap_or(i64::MAX).max(1);
    let ran = (now - started).num_microseconds().unwrap_or(i64::MAX).max(0);
    let k = ran.div_euclid(q) + i64::from(ran.rem_euclid(q) != 0);
    let k = k.max(1);
    started
        .checked_add_signed(chrono::Duration::microseconds(k.saturating_mul(q)))
        .unwrap_or(now)
}

/// Sleeps until `at` (not at all when it has passed).
async fn hold_until(at: DateTime<Utc>) {
    if let Ok(left) = (at - Utc::now()).to_std() {
        tokio::time::sleep(left).await;
    }
}

/// The budget a developer has spent under a scenario as the developer is
/// shown it: what the developer's ended jobs under the scenario were
/// charged (each job counts its charges in the same transaction as the
/// charge), plus its cross-verification batches (answered at once). A
/// running job's charges appear when its end becomes visible, not at each
/// query. The limits themselves are the population levels.
pub(crate) fn settled_spent(store: &Store, developer: &str, scenario: &str) -> ServiceResult<Budget> {
    store.read_consistent(|c| {
        let jobs: Vec<JobRecord> = list_in(c, Table::Jobs, Some(("developer_id", developer)))?;
        let verified = crate::store::population::verification_spent_in(c, developer, scenario)?;
        Ok(jobs
            .iter()
            .filter(|j| j.scenario_id == scenario && j.status.is_final())
            .fold(verified, |b, j| b.plus(&j.charged)))
    })
}

/// The organization whose caps a party's charges count against; a party
/// recorded without one is its own.
pub(crate) fn org_of(actor: &Actor) -> String {
    if actor.org.is_empty() {
        actor.id.clone()
    } else {
        actor.org.clone()
    }
}

/// Distinct units of every population in the catalog's current versions
/// (`N` of the delta caps): the sum over its datasets of each one's units
/// rounded up to the catalog's public granularity (`published_rows`), an
/// upper bound on the units it holds, so the caps scaled to it err on the
/// safe side. Rounded because the delta caps (`1/(1000 N)` per query) show
/// in every charge a developer sees: an exact `N` would tell it when a new
/// version adds or removes a single unit, which the rounded catalog count
/// hides.
pub(crate) fn population_units(datasets: &[DatasetRecord]) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for d in datasets {
        let kind = scenarios::population::population_of(d.spec.unit_kind.as_deref()).to_string();
        let n = out.entry(kind).or_default();
        *n = n.saturating_add(published_rows(d.profile.units));
    }
    out
}

/// The ledger entry that releases a job's output to its developer (R21:
/// to whom, by what medium, which output, from which query releases). The
/// query releases are named by their output hashes (the entries are the
/// job's `query.release` entries, by subject), not by their positions: the
/// developer holds this entry in its receipt, and the gaps between the
/// positions would count everyone's entries during each query, a clock.
pub fn release_entry(actor: &Actor, j: &JobRecord, reviewed_by: Option<&str>) -> NewEntry {
    NewEntry::by(
        actor,
        "result.release",
        &j.id,
        json!({
            "agreement": j.agreement_id,
            "to": j.developer_id,
            "medium": "https api download",
            "output_hash": j.output_hash,
            "output_bytes": j.output_bytes,
            "reviewed_by": reviewed_by,
            "query_releases": j.queries.iter().map(|q| q.output_hash.as_deref()).collect::<Vec<_>>(),
        }),
    )
}

/// The airlock's automatic checks on a finished job, shown to the reviewing
/// operator beside the output.
fn verdicts(j: &JobRecord, releases: &[QueryLineage], output: &[u8], limit: u64) -> serde_json::Value {
    let epsilon: f64 = releases.iter().map(|l| l.cost.epsilon.as_f64()).sum();
    let rho: f64 = releases.iter().map(|l| l.cost.rho.as_f64()).sum();
    let min_threshold = releases.iter().map(|l| l.mechanism.threshold).min();
    let mechanisms: std::collections::BTreeSet<&str> =
        releases.iter().map(|l| l.mechanism.noise.as_str()).collect();
    let text = std::str::from_utf8(output).is_ok();
    json!([
        {"check": "protected_inputs", "pass": releases.iter().all(|l| l.output_hash.is_some()),
         "detail": format!("{} queries, every one through the release mechanism ({}); epsilon {epsilon}, rho {rho}",
            releases.len(), mechanisms.into_iter().collect::<Vec<_>>().join(", "))},
        {"check": "small_groups_suppressed", "pass": true,
         "detail": match min_threshold {
             Some(t) => format!("every released group had a noisy count of at least {t} units"),
             None => "no query results were used".to_string(),
         }},
        {"check": "output_size", "pass": (output.len() as u64) <= limit,
         "detail": format!("{} bytes (limit {limit})", output.len())},
        {"check": "output_readable", "pass": text,
         "detail": if text { "UTF-8 text: review it below" } else { "binary output: review the job's source before approving" }},
        {"check": "datasets", "pass": true,
         "detail": j.tables.iter().map(|t| format!("{}@{}", t.dataset, t.version.get(..12).unwrap_or(""))).collect::<Vec<_>>().join(", ")},
    ])
}

/// Marks a job that cannot finish normally as failed, with its ledger entry.
/// Does nothing to a job that already finished. With `quantized`, a job
/// that started is closed at its [`visible_end`], like any other.
pub async fn close_job(
    st: &AppState,
    job_id: &str,
    kind: &str,
    message: &str,
    quantized: bool,
) -> ServiceResult<()> {
    let mut ended = Utc::now();
    if quantized {
        let (store, id) = (st.store.clone(), job_id.to_string());
        let job: Option<JobRecord> = blocking(move || store.get(Table::Jobs, &id)).await?;
        if let Some(started) = job.and_then(|j| j.started_at) {
            ended = visible_end(started, Utc::now(), st.config.time_quantum);
            hold_until(ended).await;
        }
    }
    let (store, id, kind, message) = (
        st.store.clone(),
        job_id.to_string(),
        kind.to_string(),
        message.to_string(),
    );
    store
        .write(move |tx| {
            let Some(mut j) = get_in::<JobRecord>(tx, Table::Jobs, &id)? else {
                return Ok(());
            };
            if j.status.is_final() {
                return Ok(());
            }
            j.status = JobStatus::Failed;
            j.error = Some(failure(&kind, &message));
            j.finished_at = Some(ended);
            put(tx, &j)?;
            append(
                tx,
                NewEntry::system(
                    "job.finish",
                    &j.id,
                    json!({"agreement": j.agreement_id, "status": "failed", "error": j.error}),
                ),
                Utc::now(),
            )?;
            Ok(())
        })
        .await
}

/// Closes jobs left queued or running by a previous process (a crash or a
/// kill): nothing of theirs was released, and their charged queries stay
/// charged.
pub async fn recover_interrupted(st: &AppState) -> ServiceResult<usize> {
    let store = st.store.clone();
    let open: Vec<JobRecord> = blocking(move || {
        let mut v: Vec<JobRecord> = store.list(Table::Jobs, Some(("status", "running")))?;
        v.extend(store.list::<JobRecord>(Table::Jobs, Some(("status", "queued")))?);
        Ok(v)
    })
    .await?;
    for j in &open {
        close_job(
            st,
            &j.id,
            "interrupted",
            "the server stopped while the job was running; nothing was released",
            false,
        )
        .await?;
    }
    Ok(open.len())
}

/// The current versions of a scenario's datasets, with the rows of
/// objecting subjects withheld (R7) and, when the scenario needs consent,
/// only consenting subjects kept (R14); refused while a dataset is
/// suspended.
pub(crate) fn scenario_tables(st: &AppState, sc: &Scenario) -> ServiceResult<Vec<TableVersion>> {
    let datasets = current_datasets(st)?;
    let objections: Vec<scenarios::oversight::Objection> = st.store.list(Table::Objections, None)?;
    let consenting = if sc.spec.needs_consent {
        Some(Arc::new(st.store.consenting_units(&sc.id)?))
    } else {
        None
    };
    let mut tables = Vec::new();
    for t in &sc.spec.tables {
        let d = datasets.iter().find(|d| d.name == t.dataset).ok_or_else(|| {
            ServiceError::Forbidden(format!("dataset `{}` is no longer in the catalog", t.dataset))
        })?;
        let mut tv = TableVersion::from_profile(d.spec.clone(), &d.profile);
        tv.units = gate(&objections, d)?;
        tv.units.only = consenting.clone();
        tables.push(tv);
    }
    Ok(tables)
}

fn failure(kind: &str, message: &str) -> serde_json::Value {
    json!({"kind": kind, "message": message})
}

async fn run(
    st: &AppState,
    actor: &Actor,
    job_id: &str,
    params: Vec<u8>,
    cancel: Arc<AtomicBool>,
) -> ServiceResult<()> {
    let (s, id) = (st.clone(), job_id.to_string());
    let (mut job, ag, sc, spec, bytes, tables, started, populations) = blocking(move || {
        let mut job: JobRecord = s
            .store
            .get(Table::Jobs, &id)?
            .ok_or_else(|| ServiceError::Internal("job vanished".into()))?;
        let ag: Agreement = s
            .store
            .get(Table::Agreements, &job.agreement_id)?
            .ok_or_else(|| ServiceError::Internal("no agreement".into()))?;
        let sc: Scenario = s
            .store
            .get(Table::Scenarios, &job.scenario_id)?
            .ok_or_else(|| ServiceError::Internal("no scenario".into()))?;
        let bytes = s
            .store
            .module(&job.module_hash)?
            .ok_or_else(|| ServiceError::Internal("no module".into()))?;
        let mut tables = scenario_tables(&s, &sc)?;
        // Rows of every table in scope, metered per query while the job's
        // details are withheld (they are catalog counts, public, rounded
        // to the public granularity like the catalog's).
        let mut rows_per_query: u64 = current_datasets(&s)?
            .iter()
            .filter(|d| sc.spec.tables.iter().any(|t| t.dataset == d.name))
            .fold(0u64, |n, d| n.saturating_add(published_rows(d.profile.rows)));
        // The agreement's own tables (R5) join the scope with their grants.
        let mut spec = sc.spec.clone();
        let mut units = population_units(&current_datasets(&s)?);
        for p in private_tables(&s, &ag.id)? {
            rows_per_query = rows_per_query.saturating_add(p.profile.rows);
            let kind = scenarios::population::population_of(p.spec.unit_kind.as_deref()).to_string();
            let n = units.entry(kind).or_default();
            *n = n.saturating_add(p.profile.units);
            let mut own = TableVersion::from_profile(p.spec.clone(), &p.profile);
            // Tokenized under a key of its own, never the public tables' key.
            own.developer_supplied = true;
            tables.push(own);
            spec.tables.push(p.grant);
        }
        // Every table's population; the scenario's rules within today's
        // caps for the largest of them (a scenario approved under looser
        // caps runs under the new ones: docs/privacy-model.md).
        let populations: BTreeMap<String, (String, u64)> = tables
            .iter()
            .map(|t| {
                let kind = scenarios::population::population_of(t.spec.unit_kind.as_deref()).to_string();
                let n = units.get(&kind).copied().unwrap_or(0);
                (t.spec.name.clone(), (kind, n))
            })
            .collect();
        let largest = populations.values().map(|p| p.1).max().unwrap_or(0);
        spec.release = spec.release.within_caps(largest);
        job.allowance = Some(Allowance {
            fuel: s.config.job_limits.fuel,
            rows_per_query,
        });
        job.status = JobStatus::Running;
        job.started_at = Some(Utc::now());
        // The same moment on the clock that sleeps (see `SlotHold`).
        let started = std::time::Instant::now();
        let job = s.store.tx(move |tx| put(tx, &job).map(|()| job))?;
        Ok((job, ag, sc, spec, bytes, tables, started, populations))
    })
    .await?;

    let accountant = Arc::new(StoreAccountant {
        store: st.store.clone(),
        developer: actor.clone(),
        agreement_id: ag.id.clone(),
        scenario_id: sc.id.clone(),
        allocation: spec.release.total_budget(),
        populations,
        job_id: job.id.clone(),
        released: Mutex::new(Vec::new()),
    });
    let limits = st.config.job_limits;
    let cfg = ScopeConfig {
        agreement_id: ag.id.clone(),
        scenario: spec,
        tables,
        token_key: TokenKey::new(
            &st.keys
                .token_key(&ag.id, ag.token_generation)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
        ),
        memory_limit: usize::try_from(limits.query_memory_bytes).unwrap_or(usize::MAX),
        query_timeout: std::time::Duration::from_millis(limits.query_timeout_ms),
    };
    let outcome = match st.plane.open(cfg, accountant.clone()).await {
        Ok(scope) => {
            let rt = st.runtime.clone();
            let handle = tokio::runtime::Handle::current();
            let input = JobInput {
                scope: Some(Arc::new(scope)),
                params,
                limits,
                handle,
                cancel: cancel.clone(),
                module_hash: Some(job.module_hash.clone()),
                // The slot is kept until the job's visible end, so the
                // start of a job waiting for it says nothing finer.
                hold_slot: Some(runtime::SlotHold {
                    started,
                    quantum: st.config.time_quantum,
                }),
                compile_ms: job.compile_ms,
                tenant: runtime::fair::Tenant {
                    organization: actor.org.clone(),
                    developer: actor.id.clone(),
                },
            };
            tokio::task::spawn_blocking(move || rt.run(&bytes, input))
                .await
                .map_err(|e| ServiceError::Internal(e.to_string()))?
        }
        Err(e) => JobOutcome {
            result: Err(JobError::PermissionDenied(e.to_string())),
            usage: Default::default(),
            logs: Vec::new(),
            releases: Vec::new(),
            ended: std::time::Instant::now(),
        },
    };
    // The end is made visible only at a whole number of quanta after the
    // start, computed from when the run really ended (the runtime held the
    // slot until then).
    let started_at = job.started_at.unwrap_or_else(Utc::now);
    let ran = chrono::Duration::from_std(outcome.ended.saturating_duration_since(started))
        .unwrap_or_else(|_| chrono::Duration::zero());
    let ended = visible_end(started_at, started_at + ran, st.config.time_quantum);
    finish(
        st,
        actor,
        &mut job,
        &accountant,
        outcome,
        Finish {
            review_required: sc.spec.release.review_required,
            ended,
            cancel,
        },
    )
    .await
}

/// How a job's run is closed.
struct Finish {
    review_required: bool,
    /// When the end becomes visible ([`visible_end`]).
    ended: DateTime<Utc>,
    /// The job's stop flag: a stop that comes before the end is visible
    /// still stops the job.
    cancel: Arc<AtomicBool>,
}

async fn finish(
    st: &AppState,
    actor: &Actor,
    job: &mut JobRecord,
    accountant: &StoreAccountant,
    outcome: JobOutcome,
    how: Finish,
) -> ServiceResult<()> {
    let review_required = how.review_required;
    let output_limit = st.config.job_limits.output_bytes;
    let seqs = accountant.released.lock().map(|v| v.clone()).unwrap_or_default();
    // Row counts of every registered version, by version hash, as the
    // catalog publishes them (rounded).
    let store = st.store.clone();
    let rows: std::collections::HashMap<String, u64> = blocking(move || {
        let all: Vec<DatasetRecord> = store.list(Table::Datasets, None)?;
        Ok(all
            .into_iter()
            .map(|d| (d.profile.version, published_rows(d.profile.rows)))
            .collect())
    })
    .await?;
    job.queries = outcome
        .releases
        .iter()
        .enumerate()
        .map(|(i, l)| QueryRecord {
            ledger_seq: seqs.get(i).copied(),
            sql: l.sql.clone(),
            epsilon: l.cost.epsilon.as_f64(),
            released_groups: l.released_groups,
            output_hash: l.output_hash.clone(),
            rows_metered: l
                .tables
                .iter()
                .map(|t| t.version.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|v| rows.get(v).copied().unwrap_or(0))
                .sum(),
        })
        .collect();
    let mut tables: Vec<sandbox::TableRef> = outcome.releases.iter().flat_map(|l| l.tables.clone()).collect();
    tables.sort_by(|a, b| (&a.dataset, &a.version).cmp(&(&b.dataset, &b.version)));
    tables.dedup();
    job.tables = tables;
    job.usage = Some(outcome.usage.clone());
    job.logs = outcome.logs.clone();
    job.finished_at = Some(how.ended);

    hold_until(how.ended).await;
    let result = outcome.result;
    let cancel = how.cancel;
    let (tenants, tenant_limits, fuel_limit) = (
        st.tenants.clone(),
        st.config.tenant_limits,
        st.config.job_limits.fuel,
    );
    let (store, actor, mut j) = (st.store.clone(), actor.clone(), job.clone());
    let releases = outcome.releases;
    let done = store
        .write(move |tx| {
            let now = Utc::now();
            // A stop that came while the end was not yet visible (the job
            // was still listed as running) stops it.
            let result = match result {
                Ok(_) if cancel.load(Ordering::SeqCst) => {
                    Err(JobError::Cancelled("the job was stopped".into()))
                }
                r => r,
            };
            let ag: Agreement = get_in(tx, Table::Agreements, &j.agreement_id)?
                .ok_or_else(|| ServiceError::Internal("agreement vanished".into()))?;
            // The charges were counted on the stored record as they came.
            if let Some(stored) = get_in::<JobRecord>(tx, Table::Jobs, &j.id)? {
                j.charged_queries = stored.charged_queries;
                j.charged = stored.charged;
            }
            // Access closes for running jobs too: nothing is released after
            // the agreement ended.
            let result = match (result, ag.check_open(now)) {
                (Ok(_), Err(e)) => Err(JobError::PermissionDenied(e.to_string())),
                (r, _) => r,
            };
            match &result {
                Ok(output) => {
                    j.status = if review_required {
                        JobStatus::AwaitingReview
                    } else {
                        JobStatus::Succeeded
                    };
                    j.output_hash = Some(hex::encode(scenarios::ledger::sha256(output)));
                    j.output_bytes = Some(output.len() as u64);
                    if review_required {
                        j.review = Some(json!({"verdicts": verdicts(&j, &releases, output, output_limit)}));
                    }
                    set_job_output(tx, &j.id, output)?;
                }
                Err(e) => {
                    j.status = JobStatus::Failed;
                    j.error = Some(failure(e.kind(), &e.to_string()));
                }
            }
            put(tx, &j)?;
            append(
                tx,
                NewEntry::by(
                    &actor,
                    "job.finish",
                    &j.id,
                    json!({
                        "agreement": j.agreement_id,
                        "module_hash": j.module_hash,
                        "status": j.status,
                        "error": j.error,
                        "usage": j.usage,
                        "queries": j.queries.len(),
                        "tables": j.tables,
                    }),
                ),
                now,
            )?;
            if j.status == JobStatus::Succeeded {
                append(tx, release_entry(&actor, &j, None), now)?;
            }
            // Work is charged as the job is metered (data-independent; see
            // `crate::tenants`), before its end can be seen.
            let metered = crate::metering::metered(std::slice::from_ref(&j), None, None, fuel_limit);
            tenants.charge(&actor, crate::tenants::work_units(&metered), &tenant_limits);
            Ok(j)
        })
        .await?;
    *job = done;
    Ok(())
}

/// Job `id` of `developer` (another developer's answers 404). Blocking.
pub fn own_job(st: &AppState, developer: &str, id: &str) -> ServiceResult<JobRecord> {
    st.store
        .get(Table::Jobs, id)?
        .filter(|j: &JobRecord| j.developer_id == developer)
        .ok_or_else(|| ServiceError::not_found("job", id))
}

/// The released output of job `id` of `developer`; a job that did not
/// succeed has none. Blocking.
pub fn released_output(st: &AppState, developer: &str, id: &str) -> ServiceResult<Vec<u8>> {
    let j = own_job(st, developer, id)?;
    if j.status != JobStatus::Succeeded {
        return Err(ServiceError::Conflict(format!(
            "job {} has no released output (status {})",
            j.id,
            j.status.as_str()
        )));
    }
    st.store
        .job_output(&j.id)?
        .ok_or_else(|| ServiceError::Internal("released job without output".into()))
}

/// The jobs of `developer`. Blocking.
pub fn of_developer(st: &AppState, developer: &str) -> ServiceResult<Vec<JobRecord>> {
    st.store.list(Table::Jobs, Some(("developer_id", developer)))
}

/// Every job. Blocking.
pub fn all(st: &AppState) -> ServiceResult<Vec<JobRecord>> {
    st.store.list(Table::Jobs, None)
}
#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms).single().unwrap()
    }

    #[test]
    fn a_job_is_seen_to_end_at_a_whole_number_of_quanta_after_it_started() {
        let q = Duration::from_millis(1000);
        let start = at(0);
        for (ran, seen) in [
            (0, 1000),
            (1, 1000),
            (999, 1000),
            (1000, 1000),
            (1001, 2000),
            (5500, 6000),
            (-30, 1000),
        ] {
            assert_eq!(visible_end(start, at(ran), q), at(seen), "ran {ran} ms");
        }
        // Nothing overflows, whatever the clock says.
        let far = DateTime::<Utc>::MAX_UTC;
        assert_eq!(visible_end(start, far, q), far);
        // Any quantum, microsecond exact.
        let q = Duration::from_micros(333);
        let end = visible_end(start, at(10), q);
        assert_eq!((end - start).num_microseconds(), Some(333 * 31));
    }

    #[test]
    fn the_longest_run_covers_every_query_at_its_own_limit() {
        let limits = JobLimits {
            timeout_ms: 1_000,
            query_timeout_ms: 2_000,
            ..JobLimits::default()
        };
        assert_eq!(
            longest_run(&limits, 10, Duration::from_secs(1)),
            Duration::from_secs(1 + 20 + 1 + 120)
        );
    }

    #[test]
    fn the_budget_shown_leaves_out_running_jobs_until_they_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cost = Budget {
            epsilon: scenarios::budget::Epsilon(1_000_000),
            ..Budget::default()
        };
        let job = |id: &str, status: JobStatus, charged: Budget| {
            let mut j = crate::records::test_job(status, u32::from(charged != Budget::default()));
            j.id = id.into();
            j.agreement_id = "ag".into();
            j.developer_id = "dev".into();
            j.scenario_id = "sc".into();
            j.charged = charged;
            j
        };
        let (ended, running) = (
            job("job_a", JobStatus::Failed, cost),
            job("job_b", JobStatus::Running, cost.plus(&cost)),
        );
        store
            .tx(move |tx| {
                put(tx, &ended)?;
                put(tx, &running)
            })
            .unwrap();
        assert_eq!(settled_spent(&store, "dev", "sc").unwrap(), cost);
        // Another developer's or scenario's running jobs do not count.
        assert_eq!(settled_spent(&store, "dev", "other").unwrap(), Budget::default());
    }
}
