//! The policy vocabulary a scenario approval produces: which tables and
//! columns a job may touch, what it may do with each column, and the release
//! rules every result must pass (R8, R16, R17).
//!
//! The sandbox enforces these on query plans; this module only defines and
//! validates them, including refusing unsafe release parameters.

use crate::budget::{Budget, Delta, Epsilon, Rho};
use crate::catalog::{ColumnRule, DatasetSpec, Domain};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What a query may do with a column (a column control list entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnOp {
    /// Appear in GROUP BY (its values are released as group keys).
    Group,
    /// Appear in WHERE / JOIN filters.
    Filter,
    /// Appear inside COUNT / SUM / AVG.
    Aggregate,
    /// Be an equi-join key. Only privacy-unit columns can be join keys.
    Join,
    /// Be checked against a value a developer claims for one consenting
    /// subject; the answer is match or no match, never the value (R18).
    Verify,
}

/// One column a scenario grants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnGrant {
    /// Column name in the dataset.
    pub name: String,
    /// Allowed operations; anything not listed is refused.
    pub ops: BTreeSet<ColumnOp>,
    /// Clamping bounds `[lo, hi]` for SUM and AVG. Required for `aggregate`
    /// on numeric columns unless the dataset declares a numeric domain.
    #[serde(default)]
    pub bounds: Option<[f64; 2]>,
    /// The column's declared categories are public knowledge (for example
    /// the districts of the city). Grouping only by such columns releases
    /// every category, with small cells' values suppressed, instead of
    /// releasing only keys that pass the noisy threshold; it spends no delta.
    #[serde(default)]
    pub public_domain: bool,
}

/// One dataset a scenario grants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableGrant {
    /// Dataset (table) name in the catalog.
    pub dataset: String,
    /// Granted columns; others are invisible to jobs.
    pub columns: Vec<ColumnGrant>,
}

/// Release rules applied to every query result of the scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRules {
    /// Noise distribution: discrete Laplace (pure epsilon-DP, the default)
    /// or discrete Gaussian (rho-zCDP, better for many groups per unit).
    #[serde(default)]
    pub noise: NoiseKind,
    /// Total epsilon an agreement under this scenario may spend, ever
    /// (Laplace scenarios).
    #[serde(default)]
    pub epsilon_total: Epsilon,
    /// Epsilon each query spends; split evenly over its measurements
    /// (Laplace scenarios).
    #[serde(default)]
    pub epsilon_per_query: Epsilon,
    /// Total rho an agreement may spend (Gaussian scenarios).
    #[serde(default)]
    pub rho_total: Rho,
    /// Rho each query spends; split evenly over its measurements
    /// (Gaussian scenarios).
    #[serde(default)]
    pub rho_per_query: Rho,
    /// Total delta an agreement may spend.
    #[serde(default = "default_delta_total")]
    pub delta_total: Delta,
    /// Delta each query spends (for releasing group keys).
    #[serde(default = "default_delta_per_query")]
    pub delta_per_query: Delta,
    /// Minimum number of distinct privacy units in a released group.
    pub min_group_size: u32,
    /// At most this many rows of one unit count in one group (k).
    #[serde(default = "default_max_rows")]
    pub max_rows_per_unit: u32,
    /// At most this many groups receive contributions from one unit (L0).
    #[serde(default = "default_max_groups")]
    pub max_groups_per_unit: u32,
    /// At most this many queries per job.
    #[serde(default = "default_max_queries")]
    pub max_queries_per_job: u32,
    /// (n, k)-dominance rule for sums: a cell's SUM and AVG are withheld
    /// when its `n` largest contributors hold at least `k` percent of it.
    #[serde(default)]
    pub dominance: Option<Dominance>,
    /// p% rule for sums: a cell's SUM and AVG are withheld when the total
    /// minus its two largest contributions is below `p` percent of the
    /// largest (the second largest could estimate the largest that well).
    #[serde(default)]
    pub p_percent: Option<u32>,
    /// Job outputs wait for the operator's review before release (the
    /// airlock).
    #[serde(default)]
    pub review_required: bool,
}

/// Parameters of the (n, k)-dominance rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dominance {
    /// Largest contributors considered: 1 or 2.
    pub n: u32,
    /// Share in percent, 1 to 99.
    pub k: u32,
}

/// The noise a scenario adds to every measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseKind {
    /// Discrete Laplace; budget in epsilon.
    #[default]
    Laplace,
    /// Discrete Gaussian; budget in rho (zero-concentrated DP).
    Gaussian,
}

fn default_delta_total() -> Delta {
    Delta(10_000_000) // 1e-5
}
fn default_delta_per_query() -> Delta {
    Delta(100_000) // 1e-7: a hundred queries per 1e-5
}
fn default_max_rows() -> u32 {
    1
}
fn default_max_groups() -> u32 {
    1
}
fn default_max_queries() -> u32 {
    32
}

/// Largest total epsilon the platform accepts for one scenario's
/// allocation (was 20; see `docs/privacy-model.md`, "Defaults and caps").
pub const MAX_EPSILON_TOTAL: Epsilon = Epsilon(10_000_000);
/// Smallest epsilon per query (smaller adds noise without benefit).
pub const MIN_EPSILON_PER_QUERY: Epsilon = Epsilon(10_000);
/// Largest epsilon per query (was 5).
pub const MAX_EPSILON_PER_QUERY: Epsilon = Epsilon(2_000_000);
/// Largest delta per query: 1e-7 (was 1e-5), and less on large
/// populations ([`max_delta_per_query`]).
pub const MAX_DELTA_PER_QUERY: Delta = Delta(100_000);
/// Largest total delta: 1e-5 (was 1e-4), and less on large populations
/// ([`max_delta_total`]).
pub const MAX_DELTA_TOTAL: Delta = Delta(10_000_000);
/// Smallest rho per query.
pub const MIN_RHO_PER_QUERY: Rho = Rho(100);
/// Largest rho per query (was 1).
pub const MAX_RHO_PER_QUERY: Rho = Rho(500_000);
/// Largest total rho for one allocation (about epsilon 12 at delta 1e-5).
pub const MAX_RHO_TOTAL: Rho = Rho(2_000_000);

/// Largest delta one query may spend on a population of `units` distinct
/// units: `1/(1000·units)`, and never above [`MAX_DELTA_PER_QUERY`]. Key
/// thresholding releases a group of one unit with probability at most the
/// query's delta, so a query is expected to release at most 0.001 of them.
pub fn max_delta_per_query(units: u64) -> Delta {
    Delta((crate::budget::DELTA_UNITS / units.max(1).saturating_mul(1000)).min(MAX_DELTA_PER_QUERY.0))
}

/// Largest total delta one scenario's allocation may hold on a population
/// of `units` units: `1/(10·units)`, and never above [`MAX_DELTA_TOTAL`].
pub fn max_delta_total(units: u64) -> Delta {
    crate::population::delta_for_population(units, MAX_DELTA_TOTAL)
}
/// Smallest minimum group size the platform accepts.
pub const MIN_GROUP_SIZE_FLOOR: u32 = 3;

impl ReleaseRules {
    /// Refuses parameters that would make releases unsafe or meaningless.
    pub fn validate(&self) -> Result<()> {
        let unsafe_ = |m: String| Err(Error::UnsafeParameter(m));
        match self.noise {
            NoiseKind::Laplace => {
                if self.epsilon_per_query < MIN_EPSILON_PER_QUERY
                    || self.epsilon_per_query > MAX_EPSILON_PER_QUERY
                {
                    return unsafe_(format!(
                        "epsilon_per_query must be between {MIN_EPSILON_PER_QUERY} and {MAX_EPSILON_PER_QUERY}"
                    ));
                }
                if self.epsilon_total < self.epsilon_per_query || self.epsilon_total > MAX_EPSILON_TOTAL {
                    return unsafe_(format!(
                        "epsilon_total must be at least epsilon_per_query and at most {MAX_EPSILON_TOTAL}"
                    ));
                }
                if self.rho_total.0 != 0 || self.rho_per_query.0 != 0 {
                    return unsafe_(
                        "rho applies to Gaussian noise; a Laplace scenario sets epsilon only".into(),
                    );
                }
            }
            NoiseKind::Gaussian => {
                if self.rho_per_query < MIN_RHO_PER_QUERY || self.rho_per_query > MAX_RHO_PER_QUERY {
                    return unsafe_(format!(
                        "rho_per_query must be between {MIN_RHO_PER_QUERY} and {MAX_RHO_PER_QUERY}"
                    ));
                }
                if self.rho_total < self.rho_per_query || self.rho_total > MAX_RHO_TOTAL {
                    return unsafe_(format!(
                        "rho_total must be at least rho_per_query and at most {MAX_RHO_TOTAL}"
                    ));
                }
                if self.epsilon_total.0 != 0 || self.epsilon_per_query.0 != 0 {
                    return unsafe_("a Gaussian scenario sets rho, not epsilon".into());
                }
            }
        }
        if self.delta_per_query.0 == 0 || self.delta_per_query > MAX_DELTA_PER_QUERY {
            return unsafe_(format!(
                "delta_per_query must be > 0 and at most {MAX_DELTA_PER_QUERY}"
            ));
        }
        if self.delta_total < self.delta_per_query || self.delta_total > MAX_DELTA_TOTAL {
            return unsafe_(format!(
                "delta_total must be at least delta_per_query and at most {MAX_DELTA_TOTAL}"
            ));
        }
        if self.min_group_size < MIN_GROUP_SIZE_FLOOR {
            return unsafe_(format!("min_group_size must be at least {MIN_GROUP_SIZE_FLOOR}"));
        }
        if !(1..=1000).contains(&self.max_rows_per_unit) {
            return unsafe_("max_rows_per_unit must be between 1 and 1000".into());
        }
        if !(1..=1000).contains(&self.max_groups_per_unit) {
            return unsafe_("max_groups_per_unit must be between 1 and 1000".into());
        }
        if !(1..=1000).contains(&self.max_queries_per_job) {
            return unsafe_("max_queries_per_job must be between 1 and 1000".into());
        }
        if let Some(d) = self.dominance {
            if !(1..=2).contains(&d.n) || !(1..=99).contains(&d.k) {
                return unsafe_("dominance needs n of 1 or 2 and k between 1 and 99 percent".into());
            }
        }
        if let Some(p) = self.p_percent {
            if !(1..=100).contains(&p) {
                return unsafe_("p_percent must be between 1 and 100".into());
            }
        }
        Ok(())
    }

    /// Refuses a delta too large for a population of `units` units
    /// (see [`max_delta_per_query`] and [`max_delta_total`]); checked when a
    /// scenario is proposed, with the catalog's unit counts.
    pub fn validate_for_population(&self, units: u64) -> Result<()> {
        let (per_query, total) = (max_delta_per_query(units), max_delta_total(units));
        if self.delta_per_query > per_query || self.delta_total > total {
            return Err(Error::UnsafeParameter(format!(
                "on a population of {units} units delta_per_query must be at most {per_query} and delta_total at most {total}"
            )));
        }
        Ok(())
    }

    /// These rules within today's caps for a population of `units` units:
    /// how a scenario approved under looser caps runs now. Every part only
    /// shrinks, so the guarantee only gets stronger; a smaller delta per
    /// query raises the key threshold.
    pub fn within_caps(&self, units: u64) -> ReleaseRules {
        let mut r = self.clone();
        r.epsilon_per_query = r.epsilon_per_query.min(MAX_EPSILON_PER_QUERY);
        r.epsilon_total = r.epsilon_total.min(MAX_EPSILON_TOTAL);
        r.rho_per_query = r.rho_per_query.min(MAX_RHO_PER_QUERY);
        r.rho_total = r.rho_total.min(MAX_RHO_TOTAL);
        r.delta_per_query = r.delta_per_query.min(max_delta_per_query(units)).max(Delta(1));
        r.delta_total = r.delta_total.min(max_delta_total(units)).max(r.delta_per_query);
        r
    }

    /// The budget one agreement may spend in total.
    pub fn total_budget(&self) -> Budget {
        Budget {
            epsilon: self.epsilon_total,
            delta: self.delta_total,
            rho: self.rho_total,
        }
    }

    /// The budget one query spends.
    pub fn query_cost(&self) -> Budget {
        Budget {
            epsilon: self.epsilon_per_query,
            delta: self.delta_per_query,
            rho: self.rho_per_query,
        }
    }
}

/// What the operator proposes and the regulator approves (R8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Short title.
    pub name: String,
    /// Scenario class; the regulator approves a class once (一类场景一审定).
    pub class: String,
    /// Purpose of use, recorded in every release's lineage (R21).
    pub purpose: String,
    /// Granted tables.
    pub tables: Vec<TableGrant>,
    /// Aggregate functions queries may use; all of them when absent.
    #[serde(default = "all_aggregates")]
    pub aggregates: BTreeSet<AggregateFn>,
    /// Release rules.
    pub release: ReleaseRules,
    /// The scenario uses source data about people or enterprises that must
    /// consent: only the rows of subjects with a consent record for this
    /// scenario reach its jobs (R14).
    #[serde(default)]
    pub needs_consent: bool,
}

/// Aggregate functions a scenario can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFn {
    /// `COUNT(*)`, `COUNT(x)`.
    Count,
    /// `COUNT(DISTINCT privacy_unit)`.
    CountDistinctUnits,
    /// `SUM(x)` (needs bounds).
    Sum,
    /// `AVG(x)` (needs bounds).
    Avg,
}

impl AggregateFn {
    /// SQL spelling, for messages.
    pub fn sql(self) -> &'static str {
        match self {
            AggregateFn::Count => "COUNT",
            AggregateFn::CountDistinctUnits => "COUNT(DISTINCT unit)",
            AggregateFn::Sum => "SUM",
            AggregateFn::Avg => "AVG",
        }
    }
}

fn all_aggregates() -> BTreeSet<AggregateFn> {
    [
        AggregateFn::Count,
        AggregateFn::CountDistinctUnits,
        AggregateFn::Sum,
        AggregateFn::Avg,
    ]
    .into_iter()
    .collect()
}

impl ScenarioSpec {
    /// Validates the spec against the catalog entries it names. `datasets`
    /// must contain the spec of every granted table.
    pub fn validate<'a>(&self, lookup: impl Fn(&str) -> Option<&'a DatasetSpec>) -> Result<()> {
        if self.name.trim().is_empty() || self.purpose.trim().is_empty() || self.class.trim().is_empty() {
            return Err(Error::InvalidRequest(
                "name, class and purpose must not be empty".into(),
            ));
        }
        if self.tables.is_empty() {
            return Err(Error::InvalidRequest(
                "a scenario must grant at least one table".into(),
            ));
        }
        self.release.validate()?;
        let mut seen = BTreeSet::new();
        for t in &self.tables {
            if !seen.insert(t.dataset.as_str()) {
                return Err(Error::InvalidRequest(format!(
                    "table `{}` is granted twice",
                    t.dataset
                )));
            }
            let ds = lookup(&t.dataset).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "table `{}` is not in the catalog",
                    t.dataset.escape_debug()
                ))
            })?;
            let mut cols = BTreeSet::new();
            for g in &t.columns {
                if !cols.insert(g.name.as_str()) {
                    return Err(Error::InvalidRequest(format!(
                        "column `{}.{}` is granted twice",
                        t.dataset, g.name
                    )));
                }
                let spec = ds.column(&g.name).ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "column `{}.{}` does not exist",
                        t.dataset,
                        g.name.escape_debug()
                    ))
                })?;
                if spec.rule == ColumnRule::Drop {
                    return Err(Error::InvalidRequest(format!(
                        "column `{}.{}` is dropped by its desensitization rule and cannot be granted",
                        t.dataset, g.name
                    )));
                }
                if spec.rule == ColumnRule::Tokenize
                    && g.name != ds.privacy_unit
                    && g.ops.contains(&ColumnOp::Group)
                {
                    return Err(Error::InvalidRequest(format!(
                        "column `{}.{}` is tokenized: tokens are never released, so it cannot be a group key",
                        t.dataset, g.name
                    )));
                }
                if g.ops.contains(&ColumnOp::Join) && g.name != ds.privacy_unit {
                    return Err(Error::InvalidRequest(format!(
                        "column `{}.{}`: only the privacy unit column can be a join key",
                        t.dataset, g.name
                    )));
                }
                if g.name == ds.privacy_unit
                    && g.ops
                        .iter()
                        .any(|o| *o != ColumnOp::Join && *o != ColumnOp::Aggregate)
                {
                    return Err(Error::InvalidRequest(format!(
                        "column `{}.{}` is the privacy unit: it can only be a join key or counted distinct",
                        t.dataset, g.name
                    )));
                }
                if g.public_domain {
                    let categorical = matches!(spec.domain, Some(Domain::Categories(_)));
                    if !categorical || !g.ops.contains(&ColumnOp::Group) {
                        return Err(Error::InvalidRequest(format!(
                            "column `{}.{}`: a public domain needs the group operation and categories declared by the dataset",
                            t.dataset, g.name
                        )));
                    }
                }
                if let Some([lo, hi]) = g.bounds {
                    if !(lo.is_finite() && hi.is_finite() && lo <= hi) || lo.abs() > 1e12 || hi.abs() > 1e12 {
                        return Err(Error::UnsafeParameter(format!(
                            "column `{}.{}`: bounds must be finite, lo <= hi, and within +-1e12",
                            t.dataset, g.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The grant for `table`, if any.
    pub fn table(&self, table: &str) -> Option<&TableGrant> {
        self.tables.iter().find(|t| t.dataset == table)
    }
}

impl TableGrant {
    /// The grant for `column`, if any.
    pub fn column(&self, column: &str) -> Option<&ColumnGrant> {
        self.columns.iter().find(|c| c.name == column)
    }
}

/// Clamping bounds of a granted column: the grant's own, else the dataset's
/// declared numeric domain.
pub fn effective_bounds(grant: &ColumnGrant, spec: Option<&DatasetSpec>) -> Option<[f64; 2]> {
    grant.bounds.or_else(|| {
        spec.and_then(|s| s.column(&grant.name))
            .and_then(|c| match c.domain {
                Some(Domain::Range { min, max }) => Some([min, max]),
                _ => None,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ReleaseRules {
        serde_json::from_value(serde_json::json!({
            "epsilon_total": 3.0, "epsilon_per_query": 0.5, "min_group_size": 10
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_safe() {
        let r = rules();
        r.validate().unwrap();
        assert_eq!(r.max_rows_per_unit, 1);
        assert_eq!(r.delta_per_query, Delta(100_000));
        assert_eq!(r.query_cost().epsilon, Epsilon(500_000));
    }

    #[test]
    fn gaussian_rules_spend_rho_only() {
        let r: ReleaseRules = serde_json::from_value(serde_json::json!({
            "noise": "gaussian", "rho_total": 1.0, "rho_per_query": 0.1, "min_group_size": 10
        }))
        .unwrap();
        r.validate().unwrap();
        assert_eq!(r.query_cost().rho, Rho(100_000));
        assert_eq!(r.query_cost().epsilon, Epsilon(0));
        let mut mixed = r.clone();
        mixed.epsilon_per_query = Epsilon(100_000);
        assert!(matches!(mixed.validate(), Err(Error::UnsafeParameter(_))));
        let mut greedy = r;
        greedy.rho_total = Rho(50_000_000);
        assert!(matches!(greedy.validate(), Err(Error::UnsafeParameter(_))));
    }

    #[test]
    fn unsafe_parameters_are_refused() {
        let mut r = rules();
        r.epsilon_total = Epsilon::from_f64(100.0).unwrap();
        assert!(matches!(r.validate(), Err(Error::UnsafeParameter(_))));
        let mut r = rules();
        r.min_group_size = 1;
        assert!(matches!(r.validate(), Err(Error::UnsafeParameter(_))));
        let mut r = rules();
        r.delta_per_query = Delta(0);
        assert!(r.validate().is_err());
        let mut r = rules();
        r.epsilon_per_query = Epsilon::from_f64(4.0).unwrap();
        assert!(r.validate().is_err(), "per query above total");
    }
}
