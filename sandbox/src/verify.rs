//! Cross-verification (R18): a developer's claimed values for named
//! subjects are compared with the raw data inside the sandbox, and only a
//! randomized match or no match comes out, never a value and never the
//! exact comparison. The gateway decides which subjects may be checked at
//! all (consent, objections, limits) and charges the budget; this module
//! compares and randomizes.
//!
//! **Mechanism.** Each record's true answer is "match" only when its
//! subject is verifiable (consenting, not suspended, within its check
//! limit, present) and some row of the subject agrees with every claimed
//! value; every other record's true answer is "no match", so a subject that
//! is absent, does not consent or is over its limit is answered exactly
//! like a consenting one whose claim does not match. The true answer is
//! then reported by randomized response: kept with probability
//! e^ε / (1 + e^ε), flipped otherwise, which is ε-differentially private
//! for the subject (adding or removing the subject's rows or its consent
//! changes the probability of each answer by at most e^ε). A record depends
//! only on its own subject's rows and a batch names each subject at most
//! once, so a batch is ε-DP by parallel composition; the gateway charges ε
//! per batch (or ρ = ε²/2 in a zCDP scenario). See
//! `docs/privacy-model.md`.

use crate::noise::{bernoulli, bernoulli_exp, RandomSource, SystemRng};
use crate::scope::{df_error, DataPlane, TableVersion};
use crate::{Error, Result};
use datafusion::arrow::array::{Array, ArrayRef, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{cast as cast_expr, col, lit};
use datafusion::prelude::SessionContext;
use scenarios::budget::{Budget, Epsilon, EPSILON_UNITS};
use scenarios::policy::{NoiseKind, ReleaseRules};
use std::collections::{BTreeMap, HashMap};

/// A claimed value: numbers compare numerically, text exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Claimed {
    /// A number.
    Number(f64),
    /// Text (also dates, as `YYYY-MM-DD`).
    Text(String),
}

/// What a developer claims about one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The subject's privacy unit value.
    pub unit: String,
    /// Claimed values by column.
    pub values: BTreeMap<String, Claimed>,
}

/// One raw cell, as compared.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Number(f64),
    Text(String),
    Null,
}

fn cells(a: &ArrayRef) -> Result<Vec<Cell>> {
    let numeric = a.data_type().is_numeric();
    if numeric {
        let f = cast(a, &DataType::Float64)?;
        let f = f
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| Error::Internal("cast to f64".into()))?;
        return Ok((0..f.len())
            .map(|i| {
                if f.is_null(i) {
                    Cell::Null
                } else {
                    Cell::Number(f.value(i))
                }
            })
            .collect());
    }
    let s = cast(a, &DataType::Utf8)?;
    let s = s
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::Internal("cast to text".into()))?;
    Ok((0..s.len())
        .map(|i| {
            if s.is_null(i) {
                Cell::Null
            } else {
                Cell::Text(s.value(i).to_string())
            }
        })
        .collect())
}

fn agrees(cell: &Cell, claim: &Claimed) -> bool {
    match (cell, claim) {
        (Cell::Number(v), Claimed::Number(c)) => v == c,
        (Cell::Number(v), Claimed::Text(c)) => c.trim().parse::<f64>().is_ok_and(|c| c == *v),
        (Cell::Text(v), Claimed::Text(c)) => v == c,
        (Cell::Text(v), Claimed::Number(c)) => v.trim().parse::<f64>().is_ok_and(|v| v == *c),
        (Cell::Null, _) => false,
    }
}

/// Whether randomized response at `epsilon` flips an answer: true with
/// probability exactly 1 / (1 + e^ε). Each round returns "keep" with
/// probability 1/2 and "flip" with probability e^-ε / 2, so
/// P(flip) = e^-ε / (1 + e^-ε); no floating point is involved.
pub(crate) fn flips(rng: &mut dyn RandomSource, epsilon: Epsilon) -> Result<bool> {
    loop {
        if !bernoulli(rng, 1, 2)? {
            return Ok(false);
        }
        if bernoulli_exp(rng, u128::from(epsilon.0), u128::from(EPSILON_UNITS))? {
            return Ok(true);
        }
    }
}

/// The probability that randomized response at `epsilon` reports the true
/// answer, for display: e^ε / (1 + e^ε).
pub fn truth_probability(epsilon: Epsilon) -> f64 {
    1.0 / (1.0 + (-epsilon.as_f64()).exp())
}

/// The epsilon of one verification batch's randomized response and what
/// the batch is charged: one query of the scenario. A Laplace (pure DP)
/// scenario answers at its `epsilon_per_query` and is charged that; a
/// Gaussian (zCDP) scenario is charged its `rho_per_query` and answers at
/// the largest epsilon (in whole units) with ε²/2 <= ρ, since ε-DP implies
/// (ε²/2)-zCDP (Bun-Steinke 2016, proposition 1.4).
pub fn mechanism(rules: &ReleaseRules) -> (Epsilon, Budget) {
    match rules.noise {
        NoiseKind::Laplace => (
            rules.epsilon_per_query,
            Budget {
                epsilon: rules.epsilon_per_query,
                ..Budget::default()
            },
        ),
        NoiseKind::Gaussian => {
            // ε = sqrt(2ρ); in units, sqrt(2 · ρ_units · 10^6), rounded down.
            let square = 2u128 * u128::from(rules.rho_per_query.0) * u128::from(EPSILON_UNITS);
            let eps = u64::try_from(isqrt(square)).unwrap_or(u64::MAX);
            (
                Epsilon(eps),
                Budget {
                    rho: rules.rho_per_query,
                    ..Budget::default()
                },
            )
        }
    }
}

/// The integer square root, rounded down.
fn isqrt(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    let mut x = (n as f64).sqrt() as u128;
    while x.checked_mul(x).is_none_or(|sq| sq > n) {
        x -= 1;
    }
    while (x + 1).checked_mul(x + 1).is_some_and(|sq| sq <= n) {
        x += 1;
    }
    x
}

/// Randomized response over true answers.
pub(crate) fn randomize(truth: &[bool], epsilon: Epsilon, rng: &mut dyn RandomSource) -> Result<Vec<bool>> {
    truth.iter().map(|t| Ok(*t != flips(rng, epsilon)?)).collect()
}

/// Most claims checked in one call.
pub const MAX_CLAIMS: usize = 10_000;

impl DataPlane {
    /// The randomized answers to `claims` (see the module's mechanism):
    /// `true` reports "match". A record whose `eligible` entry is false (its
    /// subject is over its check limit, or not verifiable for any reason
    /// the caller knows) has the true answer "no match" but is compared all
    /// the same, so the work does not depend on which subjects are
    /// verifiable. Subjects withheld by the table's unit filter (objections,
    /// and consent when `only` is set) are not matched. Claims must name
    /// distinct subjects, so the batch is ε-DP by parallel composition.
    pub async fn verify_randomized(
        &self,
        table: &TableVersion,
        claims: &[Claim],
        eligible: &[bool],
        epsilon: Epsilon,
    ) -> Result<Vec<bool>> {
        if eligible.len() != claims.len() {
            return Err(Error::Internal("one eligibility flag per claim".into()));
        }
        let mut seen = std::collections::HashSet::with_capacity(claims.len());
        if !claims.iter().all(|c| seen.insert(c.unit.as_str())) {
            return Err(Error::InvalidQuery(
                "a batch may name each subject only once".into(),
            ));
        }
        let exact = self.verify(table, claims).await?;
        let truth: Vec<bool> = exact
            .iter()
            .zip(eligible)
            .map(|(a, e)| *e && *a == Some(true))
            .collect();
        randomize(&truth, epsilon, &mut SystemRng::default())
    }

    /// Compares each claim with the raw rows of its subject in `table`:
    /// `Some(true)` when some row of the subject agrees with every claimed
    /// value, `Some(false)` when none does, `None` when the subject has no
    /// row (or its rows are withheld by the table's unit filter). Columns
    /// must exist and must not be the privacy unit; which columns may be
    /// checked is the caller's policy.
    ///
    /// Exact: private to the crate, reachable from outside only through
    /// [`DataPlane::verify_randomized`]. Every claimed subject's rows are
    /// read whether or not its rows are withheld, so the work does not
    /// depend on consent or objections.
    pub(crate) async fn verify(&self, table: &TableVersion, claims: &[Claim]) -> Result<Vec<Option<bool>>> {
        if claims.len() > MAX_CLAIMS {
            return Err(Error::InvalidQuery(format!(
                "at most {MAX_CLAIMS} claims per call"
            )));
        }
        let unit = &table.spec.privacy_unit;
        let mut columns: Vec<String> = claims.iter().flat_map(|c| c.values.keys().cloned()).collect();
        columns.sort();
        columns.dedup();
        for c in &columns {
            if c == unit || table.spec.column(c).is_none() {
                return Err(Error::InvalidQuery(format!(
                    "column `{}` cannot be verified in `{}`",
                    c.escape_debug(),
                    table.spec.name
                )));
            }
        }
        // Whether each claim's subject passes the unit filter; the rows of
        // every claimed subject are read and compared all the same.
        let wanted: Vec<bool> = claims
            .iter()
            .map(|c| {
                !table.units.exclude.contains(&c.unit)
                    && table.units.only.as_ref().is_none_or(|o| o.contains(&c.unit))
            })
            .collect();
        if claims.is_empty() || columns.is_empty() {
            return Ok(vec![None; claims.len()]);
        }
        let raw = self.raw_provider(table).await?;
        let ctx = SessionContext::new();
        let unit_text = cast_expr(col(datafusion::common::Column::from_name(unit)), DataType::Utf8);
        let mut select = vec![unit_text.clone().alias("__unit")];
        select.extend(
            columns
                .iter()
                .map(|c| col(datafusion::common::Column::from_name(c))),
        );
        let list = claims.iter().map(|c| lit(c.unit.clone())).collect();
        let batches = ctx
            .read_table(raw)
            .map_err(df_error)?
            .filter(unit_text.in_list(list, false))
            .map_err(df_error)?
            .select(select)
            .map_err(df_error)?
            .collect()
            .await
            .map_err(df_error)?;
        // Each subject's rows, as cells by column.
        let mut rows: HashMap<String, Vec<Vec<Cell>>> = HashMap::new();
        for b in &batches {
            let units = cells(b.column(0))?;
            let cols: Vec<Vec<Cell>> = (1..b.num_columns())
                .map(|i| cells(b.column(i)))
                .collect::<Result<_>>()?;
            for (r, u) in units.into_iter().enumerate() {
                let Cell::Text(u) = u else { continue };
                let row: Vec<Cell> = cols
                    .iter()
                    .map(|c| c.get(r).cloned().unwrap_or(Cell::Null))
                    .collect();
                rows.entry(u).or_default().push(row);
            }
        }
        Ok(claims
            .iter()
            .zip(&wanted)
            .map(|(c, wanted)| {
                let subject = rows.get(&c.unit)?;
                let found = subject.iter().any(|row| {
                    c.values.iter().all(|(name, claimed)| {
                        columns
                            .iter()
                            .position(|x| x == name)
                            .and_then(|i| row.get(i))
                            .is_some_and(|cell| agrees(cell, claimed))
                    })
                });
                wanted.then_some(found)
            })
            .collect())
    }
}
