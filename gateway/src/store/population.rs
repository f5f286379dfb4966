//! The population budgets in the store: each population's record (its
//! period, caps and unit count) and what every level has spent in the
//! period. A query's charge reads and writes every level of every
//! population it touches inside the caller's transaction, so it is all
//! or nothing and lands with its ledger entry. The rules themselves are
//! `scenarios::population`; the model is `docs/privacy-model.md`.
//!
//! Nothing here deletes spending: a renewal opens a new period and leaves
//! the old period's rows as they were, for the regulator and the auditors.

use super::{append, from_json, to_json, NewEntry};
use super::{sql_int, StoreOps, Tx};
use crate::error::{ServiceError, ServiceResult};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use scenarios::budget::{Budget, Delta, Epsilon, Rho};
use scenarios::party::Actor;
use scenarios::population::{check, Caps, Level, LevelState, Spend};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Tables of population accounting, created by the store's schema.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS populations (kind TEXT PRIMARY KEY, period INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budget_levels (
    kind TEXT NOT NULL, period INTEGER NOT NULL, level TEXT NOT NULL, holder TEXT NOT NULL,
    epsilon INTEGER NOT NULL, delta INTEGER NOT NULL, rho INTEGER NOT NULL,
    epsilon_squares INTEGER NOT NULL, epsilon_drift INTEGER NOT NULL,
    cap_epsilon INTEGER, cap_delta INTEGER, cap_rho INTEGER,
    PRIMARY KEY (kind, period, level, holder));
"#;

/// A population and its current period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PopulationRecord {
    /// The unit kind (or `scenarios::population::UNSPECIFIED`).
    pub kind: String,
    /// The current period, from 1; a renewal adds one.
    pub period: u64,
    /// When the period opened.
    pub opened_at: DateTime<Utc>,
    /// Who opened it: a regulator's party id, or `system` for the first.
    pub opened_by: String,
    /// Distinct units the catalog counted when the caps were last set; the
    /// delta caps are scaled to it.
    pub units: u64,
    /// The period's caps.
    pub caps: Caps,
}

/// A population's record, if it was ever charged or set.
pub(in crate::store) fn population_sql(c: &Tx<'_>, kind: &str) -> ServiceResult<Option<PopulationRecord>> {
    let c = c.sql();
    let body: Option<String> = c
        .query_row("SELECT body FROM populations WHERE kind = ?1", [kind], |r| {
            r.get(0)
        })
        .optional()?;
    body.map(|b| from_json(&b)).transpose()
}

/// Every population's record, by kind.
pub(in crate::store) fn populations_sql(c: &Tx<'_>) -> ServiceResult<Vec<PopulationRecord>> {
    let c = c.sql();
    let mut stmt = c.prepare("SELECT body FROM populations ORDER BY kind")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for b in rows {
        out.push(from_json(&b?)?);
    }
    Ok(out)
}

fn put_population(tx: &Connection, p: &PopulationRecord) -> ServiceResult<()> {
    tx.execute(
        "INSERT INTO populations (kind, period, body) VALUES (?1, ?2, ?3)
         ON CONFLICT (kind) DO UPDATE SET period = ?2, body = ?3",
        params![p.kind, p.period as i64, to_json(p)?],
    )?;
    Ok(())
}

/// The population `kind`, opened with the default caps for `units` units
/// (and a ledger entry saying so) when it has no record yet.
pub(in crate::store) fn open_population_sql(
    tx: &Tx<'_>,
    kind: &str,
    units: u64,
    now: DateTime<Utc>,
) -> ServiceResult<PopulationRecord> {
    let tx = tx.sql();
    if let Some(p) = population_in(&Tx(tx), kind)? {
        return Ok(p);
    }
    let p = PopulationRecord {
        kind: kind.to_string(),
        period: 1,
        opened_at: now,
        opened_by: "system".into(),
        units,
        caps: Caps::default_for(units),
    };
    put_population(tx, &p)?;
    append(
        &Tx(tx),
        NewEntry::system(
            "population.open",
            &subject(kind),
            json!({"population": kind, "period": 1, "units": units, "caps": p.caps,
                   "policy": "default caps until the regulator sets its own (docs/privacy-model.md)"}),
        ),
        now,
    )?;
    Ok(p)
}

/// The ledger subject of a population.
pub fn subject(kind: &str) -> String {
    format!("population:{kind}")
}

fn u(x: i64) -> u64 {
    x.max(0) as u64
}

/// The budget in three columns (epsilon, delta, rho) from `first` on.
fn budget_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Budget> {
    Ok(Budget {
        epsilon: Epsilon(u(r.get(first)?)),
        delta: Delta(u(r.get(first + 1)?)),
        rho: Rho(u(r.get(first + 2)?)),
    })
}

/// One level's row: what it spent and, for an allocation, its own cap.
fn level_in(
    c: &Connection,
    kind: &str,
    period: u64,
    level: Level,
    holder: &str,
) -> ServiceResult<Option<(Spend, Option<Budget>)>> {
    Ok(c.query_row(
        "SELECT epsilon, delta, rho, epsilon_squares, epsilon_drift, cap_epsilon, cap_delta, cap_rho
         FROM budget_levels WHERE kind = ?1 AND period = ?2 AND level = ?3 AND holder = ?4",
        params![kind, period as i64, level.as_str(), holder],
        |r| {
            let spent = Spend {
                budget: budget_at(r, 0)?,
                epsilon_squares: u(r.get(3)?),
                epsilon_drift: u(r.get(4)?),
            };
            let cap = match (
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<i64>>(7)?,
            ) {
                (Some(e), Some(d), Some(rho)) => Some(Budget {
                    epsilon: Epsilon(u(e)),
                    delta: Delta(u(d)),
                    rho: Rho(u(rho)),
                }),
                _ => None,
            };
            Ok((spent, cap))
        },
    )
    .optional()?)
}

fn put_level(
    tx: &Connection,
    kind: &str,
    period: u64,
    l: &LevelState,
    own_cap: Option<&Budget>,
) -> ServiceResult<()> {
    let s = &l.spent;
    tx.execute(
        "INSERT INTO budget_levels (kind, period, level, holder, epsilon, delta, rho, epsilon_squares,
             epsilon_drift, cap_epsilon, cap_delta, cap_rho)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (kind, period, level, holder) DO UPDATE SET epsilon = ?5, delta = ?6, rho = ?7,
             epsilon_squares = ?8, epsilon_drift = ?9",
        params![
            kind,
            period as i64,
            l.level.as_str(),
            l.holder,
            sql_int(s.budget.epsilon.0),
            sql_int(s.budget.delta.0),
            sql_int(s.budget.rho.0),
            sql_int(s.epsilon_squares),
            sql_int(s.epsilon_drift),
            own_cap.map(|c| sql_int(c.epsilon.0)),
            own_cap.map(|c| sql_int(c.delta.0)),
            own_cap.map(|c| sql_int(c.rho.0)),
        ],
    )?;
    Ok(())
}

/// The part-by-part minimum of two budgets.
fn smaller(a: &Budget, b: &Budget) -> Budget {
    Budget {
        epsilon: a.epsilon.min(b.epsilon),
        delta: a.delta.min(b.delta),
        rho: a.rho.min(b.rho),
    }
}

/// The sum of the allocations granted on a population in a period.
fn allocated_in(c: &Connection, kind: &str, period: u64) -> ServiceResult<Budget> {
    let (e, d, r): (i64, i64, i64) = c.query_row(
        "SELECT COALESCE(SUM(cap_epsilon), 0), COALESCE(SUM(cap_delta), 0), COALESCE(SUM(cap_rho), 0)
         FROM budget_levels WHERE kind = ?1 AND period = ?2 AND level = 'allocation'",
        params![kind, period as i64],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(Budget {
        epsilon: Epsilon(u(e)),
        delta: Delta(u(d)),
        rho: Rho(u(r)),
    })
}

/// The holder of a scenario's allocation to an organization.
pub fn allocation_holder(scenario: &str, organization: &str) -> String {
    format!("{scenario}/{organization}")
}

/// Who a query is charged to, and how much.
#[derive(Debug, Clone)]
pub struct Charge {
    /// The populations the query reads, each with its unit count (used
    /// only to open a population that has no record yet).
    pub populations: Vec<(String, u64)>,
    /// The scenario the query runs under.
    pub scenario: String,
    /// The developer's organization.
    pub organization: String,
    /// The developer account.
    pub developer: String,
    /// The allocation the scenario grants an organization (its approved
    /// total), fixed when the allocation is first drawn on in a period, and
    /// never more than the population's cap not yet allocated.
    pub allocation: Budget,
    /// The query's cost.
    pub cost: Budget,
}

/// Charges a query at every level of every population it reads, inside
/// `tx`: all levels are checked before any is written, so a refusal
/// (`BudgetExhausted`, naming the first exhausted level) changes nothing.
/// Returns each level's figures after the charge, for the ledger entry.
pub(in crate::store) fn charge_sql(
    tx: &Tx<'_>,
    ch: &Charge,
    now: DateTime<Utc>,
) -> ServiceResult<Vec<Value>> {
    let tx = tx.sql();
    let mut states: Vec<(u64, LevelState, Option<Budget>)> = Vec::new();
    let mut new_allocations = Vec::new();
    for (kind, units) in &ch.populations {
        let p = open_population_in(&Tx(tx), kind, *units, now)?;
        // The delta caps hold for the population's size now, not only the
        // size it had when they were set: a population opened small (by a
        // developer's own table, or before its datasets arrived) kept
        // delta caps of several times 1/N once it had grown.
        let caps = {
            let most = scenarios::population::delta_for_population((*units).max(p.units), Delta(u64::MAX));
            let mut c = p.caps;
            c.population.delta = c.population.delta.min(most);
            c.clamped()
        };
        for level in Level::ALL {
            let holder = match level {
                Level::Population => kind.clone(),
                Level::Allocation => allocation_holder(&ch.scenario, &ch.organization),
                Level::Organization => ch.organization.clone(),
                Level::Developer => ch.developer.clone(),
            };
            let (spent, own) = level_in(tx, kind, p.period, level, &holder)?.unwrap_or_default();
            let own = match (level, own) {
                (Level::Allocation, Some(own)) => Some(own),
                (Level::Allocation, None) => {
                    // A new allocation is the scenario's total, or what is
                    // left unallocated of the population's cap if that is
                    // less: the allocations of a period divide its cap.
                    let free = caps.population.minus(&allocated_in(tx, kind, p.period)?);
                    let grant = smaller(&ch.allocation, &free);
                    if !Budget::default().can_afford(&ch.cost, &grant) {
                        return Err(ServiceError::BudgetExhausted(format!(
                            "the population level ({kind}) of population `{kind}` is exhausted: its cap is \
                             fully allocated to other scenarios and organizations (period {}); it grants no \
                             new allocation until the regulator renews it",
                            p.period
                        )));
                    }
                    new_allocations.push((kind.clone(), p.period, holder.clone(), grant));
                    Some(grant)
                }
                _ => None,
            };
            let cap = caps.of(level, &own.unwrap_or_default());
            states.push((
                p.period,
                LevelState {
                    population: kind.clone(),
                    level,
                    holder,
                    spent,
                    cap,
                },
                own,
            ));
        }
    }
    let levels: Vec<LevelState> = states.iter().map(|s| s.1.clone()).collect();
    if let Err(r) = check(&levels, &ch.cost) {
        let period = states
            .iter()
            .find(|s| s.1.population == r.population)
            .map_or(0, |s| s.0);
        // The population level sums every organization's spending: the
        // refusal names it but states no figure, which would tell one
        // tenant what the others spent (and, probed, when). The figures
        // of the developer's own levels are its own (or its organization's).
        if r.level == Level::Population {
            return Err(ServiceError::BudgetExhausted(format!(
                "the {} level ({}) of population `{}` is exhausted: what is left of its cap does not cover \
                 the query (period {period}); it answers no more queries until the regulator renews it",
                r.level, r.holder, r.population
            )));
        }
        return Err(ServiceError::BudgetExhausted(format!("{r} (period {period})")));
    }
    let mut out = Vec::new();
    for (period, mut l, own) in states {
        l.spent = l.spent.plus(&ch.cost);
        put_level(tx, &l.population, period, &l, own.as_ref())?;
        out.push(json!({
            "population": l.population, "period": period, "level": l.level, "holder": l.holder,
            "spent_after": l.spent.budget, "cap": l.cap,
        }));
    }
    for (kind, period, holder, cap) in new_allocations {
        append(
            &Tx(tx),
            NewEntry::system(
                "budget.allocate",
                &subject(&kind),
                json!({"population": kind, "period": period, "allocation": holder, "cap": cap,
                       "scenario": ch.scenario, "organization": ch.organization}),
            ),
            now,
        )?;
    }
    Ok(out)
}

/// Lowers a population's caps within its period (a regulator's decision,
/// recorded); refused when any part would rise or the caps are unsafe.
pub(in crate::store) fn lower_caps_sql(
    tx: &Tx<'_>,
    actor: &Actor,
    kind: &str,
    units: u64,
    caps: Caps,
    reason: &str,
    now: DateTime<Utc>,
) -> ServiceResult<PopulationRecord> {
    let tx = tx.sql();
    let mut p = open_population_in(&Tx(tx), kind, units, now)?;
    let caps = caps.clamped();
    p.caps.check_lowering(&caps)?;
    caps.validate(p.units.max(units))?;
    let before = p.caps;
    p.caps = caps;
    put_population(tx, &p)?;
    append(
        &Tx(tx),
        NewEntry::by(
            actor,
            "population.cap",
            &subject(kind),
            json!({"population": kind, "period": p.period, "before": before, "caps": caps, "reason": reason}),
        ),
        now,
    )?;
    Ok(p)
}

/// Opens a population's next period with `caps` (the current ones when
/// `None`): the regulator's recorded renewal decision. Every level starts
/// the new period with nothing spent; the closed period's figures stay.
pub(in crate::store) fn renew_sql(
    tx: &Tx<'_>,
    actor: &Actor,
    kind: &str,
    units: u64,
    caps: Option<Caps>,
    reason: &str,
    now: DateTime<Utc>,
) -> ServiceResult<PopulationRecord> {
    let tx = tx.sql();
    let mut p = open_population_in(&Tx(tx), kind, units, now)?;
    let caps = caps.unwrap_or(p.caps).clamped();
    caps.validate(units)?;
    let closed = p.period;
    let spent = level_in(tx, kind, closed, Level::Population, kind)?
        .unwrap_or_default()
        .0;
    p.period = closed.saturating_add(1);
    p.opened_at = now;
    p.opened_by = actor.id.clone();
    p.units = units;
    p.caps = caps;
    put_population(tx, &p)?;
    append(
        &Tx(tx),
        NewEntry::by(
            actor,
            "population.renew",
            &subject(kind),
            json!({"population": kind, "closed_period": closed, "closed_spent": spent.budget,
                   "period": p.period, "units": units, "caps": caps, "reason": reason}),
        ),
        now,
    )?;
    Ok(p)
}

/// One level of a period as the regulator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct LevelView {
    /// The level.
    pub level: Level,
    /// Its holder.
    pub holder: String,
    /// Spent in the period.
    pub spent: Budget,
    /// The cap.
    pub cap: Budget,
    /// Allocations granted under it (population and organization levels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Budget>,
    /// Cap less spent.
    pub remaining: Budget,
}

/// Every level of a population's period, with the population level first
/// (listed even when nothing was spent).
pub(in crate::store) fn levels_sql(
    c: &Tx<'_>,
    p: &PopulationRecord,
    period: u64,
) -> ServiceResult<Vec<LevelView>> {
    let c = c.sql();
    let mut stmt = c.prepare(
        "SELECT level, holder FROM budget_levels WHERE kind = ?1 AND period = ?2 ORDER BY level, holder",
    )?;
    let keys: Vec<(String, String)> = stmt
        .query_map(params![p.kind, period as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut rows: Vec<(Level, String, Spend, Budget)> = Vec::new();
    for (level, holder) in keys {
        let Some(level) = Level::parse(&level) else {
            continue;
        };
        let (spent, own) = level_in(c, &p.kind, period, level, &holder)?.unwrap_or_default();
        rows.push((level, holder, spent, p.caps.of(level, &own.unwrap_or_default())));
    }
    if !rows.iter().any(|r| r.0 == Level::Population) {
        rows.push((
            Level::Population,
            p.kind.clone(),
            Spend::default(),
            p.caps.population,
        ));
    }
    rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let allocations: Vec<(String, Budget)> = rows
        .iter()
        .filter(|r| r.0 == Level::Allocation)
        .map(|r| (r.1.clone(), r.3))
        .collect();
    Ok(rows
        .into_iter()
        .map(|(level, holder, spent, cap)| {
            let allocated = match level {
                Level::Population => Some(allocations.iter().fold(Budget::default(), |a, x| a.plus(&x.1))),
                Level::Organization => Some(
                    allocations
                        .iter()
                        .filter(|x| x.0.rsplit('/').next() == Some(holder.as_str()))
                        .fold(Budget::default(), |a, x| a.plus(&x.1)),
                ),
                _ => None,
            };
            LevelView {
                level,
                holder,
                spent: spent.budget,
                cap,
                allocated,
                remaining: cap.minus(&spent.budget),
            }
        })
        .collect())
}

/// The population level's spend in a period (for its guarantee).
pub(in crate::store) fn population_spend_sql(
    c: &Tx<'_>,
    p: &PopulationRecord,
    period: u64,
) -> ServiceResult<Spend> {
    let c = c.sql();
    Ok(level_in(c, &p.kind, period, Level::Population, &p.kind)?
        .unwrap_or_default()
        .0)
}

/// Moves a store of schema version 5 or older from its per-(developer,
/// scenario) budgets to the population levels, into period 1: each old
/// row counts, in full, at every level of every population its scenario
/// reads (the population of its tables' unit kinds; the unspecified
/// population when the scenario or a dataset is unknown), for the
/// developer's organization. The Laplace sums are filled as if the row
/// had been one charge, which bounds the true ones from above, so the
/// migrated guarantee is never understated. Then drops the old table.
pub(super) fn migrate_budgets(tx: &Connection, now: DateTime<Utc>) -> ServiceResult<usize> {
    let exists: bool = tx.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'budgets'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let mut stmt = tx.prepare(
        "SELECT b.developer_id, b.scenario_id, b.epsilon_spent, b.delta_spent, b.rho_spent,
                COALESCE(p.org_id, b.developer_id)
         FROM budgets b LEFT JOIN parties p ON p.id = b.developer_id",
    )?;
    let rows: Vec<(String, String, i64, i64, i64, String)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })?
        .collect::<Result<_, _>>()?;
    drop(stmt);
    // Unit kinds and unit counts of the datasets, from their records.
    let mut kinds: std::collections::BTreeMap<String, (String, u64)> = Default::default();
    {
        let mut stmt = tx.prepare("SELECT name, body FROM datasets")?;
        let ds: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (name, body) in ds {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let kind = scenarios::population::population_of(v["spec"]["unit_kind"].as_str()).to_string();
            // Rounded like `jobs::population_units`: the delta caps show in charges.
            let units = scenarios::catalog::published_rows(v["profile"]["units"].as_u64().unwrap_or(0));
            let e = kinds.entry(name).or_insert((kind.clone(), 0));
            e.0 = kind;
            e.1 = e.1.max(units);
        }
    }
    let mut units_of: std::collections::BTreeMap<String, u64> = Default::default();
    for (kind, n) in kinds.values() {
        *units_of.entry(kind.clone()).or_default() += n;
    }
    let n = rows.len();
    for (developer, scenario, e, d, r, org) in rows {
        let cost = Budget {
            epsilon: Epsilon(u(e)),
            delta: Delta(u(d)),
            rho: Rho(u(r)),
        };
        let body: Option<String> = tx
            .query_row("SELECT body FROM scenarios WHERE id = ?1", [&scenario], |r| {
                r.get(0)
            })
            .optional()?;
        let sc: Option<scenarios::workflow::Scenario> = body.and_then(|b| serde_json::from_str(&b).ok());
        let mut pops: Vec<String> = sc
            .as_ref()
            .map(|sc| {
                sc.spec
                    .tables
                    .iter()
                    .map(|t| {
                        kinds
                            .get(&t.dataset)
                            .map_or(scenarios::population::UNSPECIFIED.to_string(), |k| k.0.clone())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if pops.is_empty() {
            pops.push(scenarios::population::UNSPECIFIED.to_string());
        }
        pops.sort();
        pops.dedup();
        let allocation = sc.map_or(cost, |sc| sc.spec.release.total_budget());
        for kind in pops {
            let p = open_population_in(&Tx(tx), &kind, units_of.get(&kind).copied().unwrap_or(0), now)?;
            for level in Level::ALL {
                let holder = match level {
                    Level::Population => kind.clone(),
                    Level::Allocation => allocation_holder(&scenario, &org),
                    Level::Organization => org.clone(),
                    Level::Developer => developer.clone(),
                };
                let (spent, own) = level_in(tx, &kind, p.period, level, &holder)?.unwrap_or_default();
                let own = (level == Level::Allocation).then(|| own.unwrap_or(allocation));
                let l = LevelState {
                    population: kind.clone(),
                    level,
                    holder,
                    spent: spent.plus(&cost),
                    cap: Budget::default(),
                };
                put_level(tx, &kind, p.period, &l, own.as_ref())?;
            }
        }
    }
    tx.execute_batch("DROP TABLE budgets;")?;
    Ok(n)
}

/// Adds a verification batch's cost to what a developer has spent under a
/// scenario through cross-verification (shown with the settled spend of
/// its jobs; the limits are the population levels charged with it).
pub(in crate::store) fn add_verification_spent_sql(
    tx: &Tx<'_>,
    developer: &str,
    scenario: &str,
    cost: &Budget,
) -> ServiceResult<()> {
    let tx = tx.sql();
    tx.execute(
        "INSERT INTO verification_spent (developer_id, scenario_id, epsilon, delta, rho) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (developer_id, scenario_id) DO UPDATE SET
           epsilon = MIN(epsilon + excluded.epsilon, 9223372036854775807),
           delta = MIN(delta + excluded.delta, 9223372036854775807),
           rho = MIN(rho + excluded.rho, 9223372036854775807)",
        params![developer, scenario, sql_int(cost.epsilon.0), sql_int(cost.delta.0), sql_int(cost.rho.0)],
    )?;
    Ok(())
}

/// What a developer has spent under a scenario through cross-verification.
pub(in crate::store) fn verification_spent_sql(
    c: &Tx<'_>,
    developer: &str,
    scenario: &str,
) -> ServiceResult<Budget> {
    let c = c.sql();
    Ok(c.query_row(
        "SELECT epsilon, delta, rho FROM verification_spent WHERE developer_id = ?1 AND scenario_id = ?2",
        params![developer, scenario],
        |r| budget_at(r, 0),
    )
    .optional()?
    .unwrap_or_default())
}

// ----- the operations as callers use them (through `StoreOps`) -------------

/// A population's record, if it was ever charged or set.
pub fn population_in(c: &dyn StoreOps, kind: &str) -> ServiceResult<Option<PopulationRecord>> {
    c.population(kind)
}

/// Every population's record, by kind.
pub fn populations_in(c: &dyn StoreOps) -> ServiceResult<Vec<PopulationRecord>> {
    c.populations()
}

/// The population `kind`, opened with the default caps for `units` units
/// (and a ledger entry saying so) when it has no record yet.
pub fn open_population_in(
    tx: &dyn StoreOps,
    kind: &str,
    units: u64,
    now: DateTime<Utc>,
) -> ServiceResult<PopulationRecord> {
    tx.open_population(kind, units, now)
}

/// Charges a query at every level of every population it reads, inside
/// `tx`: all levels are checked before any is written, so a refusal
/// (`BudgetExhausted`, naming the first exhausted level) changes nothing.
/// Returns each level's figures after the charge, for the ledger entry.
pub fn charge_in(tx: &dyn StoreOps, ch: &Charge, now: DateTime<Utc>) -> ServiceResult<Vec<Value>> {
    tx.charge(ch, now)
}

/// Lowers a population's caps within its period (a regulator's decision,
/// recorded); refused when any part would rise or the caps are unsafe.
pub fn lower_caps_in(
    tx: &dyn StoreOps,
    actor: &Actor,
    kind: &str,
    units: u64,
    caps: Caps,
    reason: &str,
    now: DateTime<Utc>,
) -> ServiceResult<PopulationRecord> {
    tx.lower_caps(actor, kind, units, caps, reason, now)
}

/// Opens a population's next period with `caps` (the current ones when
/// `None`): the regulator's recorded renewal decision.
pub fn renew_in(
    tx: &dyn StoreOps,
    actor: &Actor,
    kind: &str,
    units: u64,
    caps: Option<Caps>,
    reason: &str,
    now: DateTime<Utc>,
) -> ServiceResult<PopulationRecord> {
    tx.renew(actor, kind, units, caps, reason, now)
}

/// Every level of a population's period, with the population level first
/// (listed even when nothing was spent).
pub fn levels_in(c: &dyn StoreOps, p: &PopulationRecord, period: u64) -> ServiceResult<Vec<LevelView>> {
    c.levels(p, period)
}

/// The population level's spend in a period (for its guarantee).
pub fn population_spend_in(c: &dyn StoreOps, p: &PopulationRecord, period: u64) -> ServiceResult<Spend> {
    c.population_spend(p, period)
}

/// Adds a verification batch's cost to what a developer has spent under a
/// scenario through cross-verification.
pub fn add_verification_spent(
    tx: &dyn StoreOps,
    developer: &str,
    scenario: &str,
    cost: &Budget,
) -> ServiceResult<()> {
    tx.add_verification_spent(developer, scenario, cost)
}

/// What a developer has spent under a scenario through cross-verification.
pub fn verification_spent_in(c: &dyn StoreOps, developer: &str, scenario: &str) -> ServiceResult<Budget> {
    c.verification_spent(developer, scenario)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use scenarios::party::Role;

    fn eps(e: f64) -> Budget {
        Budget {
            epsilon: Epsilon::from_f64(e).unwrap(),
            delta: Delta(1),
            rho: Rho(0),
        }
    }

    fn charge(scenario: &str, org: &str, developer: &str) -> Charge {
        Charge {
            populations: vec![("enterprise".into(), 1000)],
            scenario: scenario.into(),
            organization: org.into(),
            developer: developer.into(),
            allocation: Budget {
                delta: Delta(1000),
                ..eps(10.0)
            },
            cost: eps(2.0),
        }
    }

    fn regulator() -> Actor {
        Actor {
            id: "pt_reg".into(),
            role: Role::Regulator,
            name: "regulator".into(),
            org: "org_reg".into(),
            creators: Vec::new(),
        }
    }

    fn level(store: &Store, level: Level, holder: &str) -> Budget {
        store
            .read_sql(|c| {
                let p = population_in(c, "enterprise")?.unwrap();
                Ok(level_in(c.sql(), "enterprise", p.period, level, holder)?
                    .unwrap_or_default()
                    .0
                    .budget)
            })
            .unwrap()
    }

    fn refused_at(r: ServiceResult<Vec<Value>>, level: Level) {
        match r {
            Err(ServiceError::BudgetExhausted(m)) => {
                assert!(m.contains(&format!("the {level} level")), "{m}")
            }
            other => panic!("expected a refusal at the {level} level, got {other:?}"),
        }
    }

    /// A population opened when it had one unit (a developer's own table
    /// was its first charge) kept the default delta caps of one unit: once
    /// a million units had arrived, one organization's scenarios could
    /// spend delta 1e-5, a hundred times the `1/(10 N)` the model states.
    #[test]
    fn delta_caps_follow_the_population_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = Utc::now();
        // Allocations of epsilon 0.1, so that epsilon allocates nothing away.
        let small = Charge {
            populations: vec![("person".into(), 1)],
            allocation: Budget {
                delta: Delta(1000),
                ..eps(0.1)
            },
            cost: Budget {
                delta: Delta(1),
                ..eps(0.1)
            },
            ..charge("sc_own", "org_x", "pt_x")
        };
        store.tx(move |tx| charge_in(tx, &small, now)).unwrap();
        let mut spent = 0u64;
        for i in 0..20 {
            let big = Charge {
                populations: vec![("person".into(), 1_000_000)],
                allocation: Budget {
                    delta: Delta(100_000),
                    ..eps(0.1)
                },
                cost: Budget {
                    delta: Delta(100_000),
                    ..eps(0.1)
                },
                ..charge(&format!("sc_{i}"), "org_x", "pt_x")
            };
            if store.tx(move |tx| charge_in(tx, &big, now)).is_ok() {
                spent += 100_000;
            }
        }
        // 1/(10 N) = 1e-7 = 100,000 units of 1e-12.
        assert!(spent <= 100_000, "delta {spent}e-12 spent on a million units");
    }

    #[test]
    fn no_new_scenario_or_account_of_an_organization_starts_a_fresh_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = Utc::now();
        // The organization's default cap is epsilon 10: five queries of 2.
        for _ in 0..5 {
            store
                .tx(move |tx| charge_in(tx, &charge("sc_a", "org_bank", "pt_1"), now))
                .unwrap();
        }
        // A new scenario, and a second account of the same organization.
        refused_at(
            store.tx(move |tx| charge_in(tx, &charge("sc_b", "org_bank", "pt_1"), now)),
            Level::Organization,
        );
        refused_at(
            store.tx(move |tx| charge_in(tx, &charge("sc_b", "org_bank", "pt_2"), now)),
            Level::Organization,
        );
        // The refusals changed nothing.
        assert_eq!(
            level(&store, Level::Organization, "org_bank").epsilon,
            Epsilon(10_000_000)
        );
        assert_eq!(level(&store, Level::Developer, "pt_2").epsilon, Epsilon(0));
        // Another organization may spend the rest of the population (20),
        // and then the population answers no more.
        for _ in 0..5 {
            store
                .tx(move |tx| charge_in(tx, &charge("sc_a", "org_other", "pt_3"), now))
                .unwrap();
        }
        refused_at(
            store.tx(move |tx| charge_in(tx, &charge("sc_c", "org_third", "pt_4"), now)),
            Level::Population,
        );
        assert_eq!(
            level(&store, Level::Population, "enterprise").epsilon,
            Epsilon(20_000_000)
        );
        // The two allocations divide the cap between them.
        let views = store
            .read(|c| {
                let p = population_in(c, "enterprise")?.unwrap();
                levels_in(c, &p, 1)
            })
            .unwrap();
        let pop = views.iter().find(|v| v.level == Level::Population).unwrap();
        assert_eq!(pop.allocated.map(|a| a.epsilon), Some(Epsilon(20_000_000)));
    }

    /// Random charges through the store, from four organizations of two
    /// accounts each under three scenarios, some reading two populations:
    /// no level ever passes its cap, the allocations never add up to more
    /// than the population's cap, and each charge lands on every level.
    #[test]
    fn random_charges_never_take_a_level_over_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..400 {
            let org = next(4);
            let mut populations = vec![("enterprise".to_string(), 1000)];
            if next(4) == 0 {
                populations.push(("person".to_string(), 5000));
            }
            let ch = Charge {
                populations,
                scenario: format!("sc_{}", next(3)),
                organization: format!("org_{org}"),
                developer: format!("pt_{}", org * 2 + next(2)),
                allocation: Budget {
                    epsilon: Epsilon((1 + next(10)) * 1_000_000),
                    delta: Delta((1 + next(5)) * 1_000_000),
                    rho: Rho(next(3) * 500_000),
                },
                cost: Budget {
                    epsilon: Epsilon(next(500_000)),
                    delta: Delta(next(200_000)),
                    rho: Rho(next(300_000)),
                },
            };
            match store.tx(move |tx| charge_in(tx, &ch, Utc::now())) {
                Ok(_) => accepted += 1,
                Err(ServiceError::BudgetExhausted(_)) => refused += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(
            accepted > 20 && refused > 20,
            "{accepted} accepted, {refused} refused"
        );
        let within = |s: &Budget, c: &Budget| s.epsilon <= c.epsilon && s.delta <= c.delta && s.rho <= c.rho;
        for kind in ["enterprise", "person"] {
            let views = store
                .read(|c| {
                    let p = population_in(c, kind)?.unwrap();
                    levels_in(c, &p, 1)
                })
                .unwrap();
            let sum = |level: Level| {
                views
                    .iter()
                    .filter(|v| v.level == level)
                    .fold(Budget::default(), |a, v| a.plus(&v.spent))
            };
            for v in &views {
                assert!(within(&v.spent, &v.cap), "{kind}: {v:?}");
            }
            let pop = views.iter().find(|v| v.level == Level::Population).unwrap();
            assert!(within(&pop.allocated.unwrap(), &pop.cap), "{kind}: {pop:?}");
            for level in [Level::Allocation, Level::Organization, Level::Developer] {
                assert_eq!(sum(level), pop.spent, "{kind}: {level}");
            }
        }
    }

    #[test]
    fn an_allocation_caps_one_scenario_of_an_organization() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut ch = charge("sc_a", "org_bank", "pt_1");
        ch.allocation = Budget {
            delta: Delta(1000),
            ..eps(3.0)
        };
        {
            let c = ch.clone();
            store.tx(move |tx| charge_in(tx, &c, Utc::now()))
        }
        .unwrap();
        // The allocation keeps its cap even when a later charge says more.
        ch.allocation = Budget {
            delta: Delta(1000),
            ..eps(10.0)
        };
        refused_at(
            {
                let c = ch.clone();
                store.tx(move |tx| charge_in(tx, &c, Utc::now()))
            },
            Level::Allocation,
        );
        let views = store
            .read(|c| {
                let p = population_in(c, "enterprise")?.unwrap();
                levels_in(c, &p, 1)
            })
            .unwrap();
        let pop = views.iter().find(|v| v.level == Level::Population).unwrap();
        assert_eq!(pop.allocated.map(|a| a.epsilon), Some(Epsilon(3_000_000)));
        assert_eq!(pop.spent.epsilon, Epsilon(2_000_000));
    }

    #[test]
    fn the_cap_only_goes_down_within_a_period_and_renewal_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = Utc::now();
        store
            .tx(move |tx| charge_in(tx, &charge("sc_a", "org_bank", "pt_1"), now))
            .unwrap();
        let p = store.read(|c| population_in(c, "enterprise")).unwrap().unwrap();
        let mut lower = p.caps;
        lower.population.epsilon = Epsilon(2_000_000);
        store
            .tx(move |tx| lower_caps_in(tx, &regulator(), "enterprise", 1000, lower, "tighter", now))
            .unwrap();
        let mut higher = lower;
        higher.population.epsilon = Epsilon(30_000_000);
        let raised =
            store.tx(move |tx| lower_caps_in(tx, &regulator(), "enterprise", 1000, higher, "looser", now));
        assert!(matches!(raised, Err(ServiceError::Conflict(_))), "{raised:?}");
        // Spent: the population answers nothing more this period.
        refused_at(
            store.tx(move |tx| charge_in(tx, &charge("sc_a", "org_other", "pt_2"), now)),
            Level::Population,
        );
        let p = store
            .tx(move |tx| {
                renew_in(
                    tx,
                    &regulator(),
                    "enterprise",
                    1000,
                    Some(higher),
                    "new year",
                    now,
                )
            })
            .unwrap();
        assert_eq!((p.period, p.caps.population.epsilon), (2, Epsilon(30_000_000)));
        store
            .tx(move |tx| charge_in(tx, &charge("sc_a", "org_other", "pt_2"), now))
            .unwrap();
        assert_eq!(
            level(&store, Level::Population, "enterprise").epsilon,
            Epsilon(2_000_000)
        );
        // Unsafe caps are refused even at renewal.
        let mut loose = higher;
        loose.population.delta = Delta(1_000_000_000);
        let r = store.tx(move |tx| renew_in(tx, &regulator(), "enterprise", 1000, Some(loose), "x", now));
        assert!(matches!(r, Err(ServiceError::PolicyViolation(_))), "{r:?}");
        let actions: Vec<String> = store
            .ledger_for(&subject("enterprise"))
            .unwrap()
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(&e.body).unwrap()["action"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            actions,
            [
                "population.open",
                "budget.allocate",
                "population.cap",
                "population.renew",
                "budget.allocate"
            ]
        );
    }

    #[test]
    fn a_version_5_store_moves_each_budget_to_its_population() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("invis.db")).unwrap();
            c.execute_batch(
                r#"CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('schema', '5');
                 CREATE TABLE parties (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,
                     token_hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, org_id TEXT);
                 INSERT INTO parties VALUES ('pt_a', 'a', 'developer', 'h1', 'now', 'org_bank');
                 INSERT INTO parties VALUES ('pt_b', 'b', 'developer', 'h2', 'now', 'org_bank');
                 CREATE TABLE datasets (id TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL, body TEXT NOT NULL);
                 INSERT INTO datasets VALUES ('ds_1', 'register', 'p',
                     '{"spec": {"unit_kind": "enterprise"}, "profile": {"units": 500}}');
                 CREATE TABLE budgets (developer_id TEXT NOT NULL, scenario_id TEXT NOT NULL,
                     epsilon_spent INTEGER NOT NULL, delta_spent INTEGER NOT NULL,
                     rho_spent INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (developer_id, scenario_id));
                 INSERT INTO budgets VALUES ('pt_a', 'sc_x', 3000000, 200000, 0);
                 INSERT INTO budgets VALUES ('pt_b', 'sc_x', 4000000, 200000, 0);"#,
            )
            .unwrap();
            let sc = serde_json::json!({"id": "sc_x", "status": "approved", "created_by": "pt_op",
                "created_at": "2026-01-01T00:00:00Z", "spec": {"name": "n", "class": "c", "purpose": "p",
                "tables": [{"dataset": "register", "columns": []}],
                "release": {"epsilon_total": 8.0, "epsilon_per_query": 1.0, "min_group_size": 5}}});
            c.execute_batch(
                "CREATE TABLE scenarios (id TEXT PRIMARY KEY, status TEXT NOT NULL, body TEXT NOT NULL);",
            )
            .unwrap();
            c.execute(
                "INSERT INTO scenarios VALUES ('sc_x', 'approved', ?1)",
                [serde_json::to_string(&sc).unwrap()],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        // Both accounts of the bank share its organization level.
        assert_eq!(
            level(&store, Level::Organization, "org_bank").epsilon,
            Epsilon(7_000_000)
        );
        assert_eq!(
            level(&store, Level::Developer, "pt_a").epsilon,
            Epsilon(3_000_000)
        );
        assert_eq!(
            level(&store, Level::Population, "enterprise").epsilon,
            Epsilon(7_000_000)
        );
        let p = store.read(|c| population_in(c, "enterprise")).unwrap().unwrap();
        // 500 units, counted at the catalog's granularity (the delta caps
        // scaled to the count show in charges).
        assert_eq!(p.units, 1000);
        // The old table is gone and the levels go on from there: the bank
        // has 3 left of its organization cap of 10.
        let gone: bool = store
            .read_sql(|c| {
                Ok(c.sql().query_row(
                    "SELECT COUNT(*) = 0 FROM sqlite_master WHERE name = 'budgets'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert!(gone);
        let mut ch = charge("sc_y", "org_bank", "pt_a");
        ch.populations = vec![("enterprise".into(), 500)];
        ch.cost = eps(3.5);
        refused_at(
            {
                let c = ch.clone();
                store.tx(move |tx| charge_in(tx, &c, Utc::now()))
            },
            Level::Organization,
        );
    }
}
