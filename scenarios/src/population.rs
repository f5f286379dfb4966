//! Population accounting: privacy loss belongs to the population of a unit
//! kind (every dataset whose privacy unit is, say, an `enterprise`), not to
//! a dataset version, a scenario, an agreement or an account.
//!
//! A query is charged at four levels of every population it reads, in this
//! order: the population's cap for the period (set by the regulator), the
//! allocation of the scenario to the developer's organization, the
//! organization's cap and the developer account's cap. The first level the
//! charge does not fit refuses it ([`check`]). This module holds the rules
//! and the arithmetic; the gateway's store keeps the figures and applies
//! them in one transaction. The model is written up in
//! `docs/privacy-model.md`.
//!
//! Caps limit the sums of each part of the [`Budget`] (basic composition).
//! The guarantee reported for what was spent ([`Spend::guarantee`]) is
//! tighter where a theorem allows it: advanced composition for the Laplace
//! part when it is smaller than the sum, zCDP for the Gaussian part.

use crate::budget::{Budget, Delta, Epsilon, Rho, DELTA_UNITS, EPSILON_UNITS};
use crate::policy::{MAX_DELTA_TOTAL, MAX_EPSILON_TOTAL, MAX_RHO_TOTAL};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The population of datasets that declare no unit kind. They all share
/// one budget: nothing says they are about different units, so they are
/// taken to be about the same ones. The leading `_` keeps it apart from
/// every declared kind (those start with a letter).
pub const UNSPECIFIED: &str = "_unspecified";

/// The population a dataset of unit kind `kind` belongs to.
pub fn population_of(kind: Option<&str>) -> &str {
    match kind {
        Some(k) if !k.is_empty() => k,
        _ => UNSPECIFIED,
    }
}

/// A level a query is charged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// The population's cap for the period, set by the regulator.
    Population,
    /// The share of a scenario granted to one organization; the shares of
    /// a period divide the population's cap.
    Allocation,
    /// Everything one organization's accounts spend on the population.
    Organization,
    /// Everything one developer account spends on the population.
    Developer,
}

impl Level {
    /// Every level, in the order a charge is checked.
    pub const ALL: [Level; 4] = [
        Level::Population,
        Level::Allocation,
        Level::Organization,
        Level::Developer,
    ];

    /// The wire and store name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Population => "population",
            Level::Allocation => "allocation",
            Level::Organization => "organization",
            Level::Developer => "developer",
        }
    }

    /// Parses a store name.
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caps of one population in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    /// Everything the population may lose in the period.
    pub population: Budget,
    /// What each organization may spend on it in the period.
    pub organization: Budget,
    /// What each developer account may spend on it in the period.
    pub developer: Budget,
}

/// Default population cap, in multiples of the largest total one scenario
/// may ask for: two such scenarios exhaust it.
const DEFAULT_SCENARIOS_PER_PERIOD: u64 = 2;

/// The largest delta a population of `units` units may lose in a period:
/// one tenth of `1/units`, so the expected number of single-unit groups
/// ever released by key thresholding is at most 0.1, and never more than
/// `ceiling`.
pub fn delta_for_population(units: u64, ceiling: Delta) -> Delta {
    let scaled = DELTA_UNITS / units.max(1).saturating_mul(10);
    Delta(scaled.min(ceiling.0))
}

impl Caps {
    /// The caps a population of `units` distinct units starts with until the
    /// regulator sets its own: two maximal scenarios' totals for the
    /// population (with delta scaled down to the population), one for each
    /// organization and each account. One organization can therefore spend
    /// at most half of a population by default.
    pub fn default_for(units: u64) -> Caps {
        let one = Budget {
            epsilon: MAX_EPSILON_TOTAL,
            delta: delta_for_population(units, MAX_DELTA_TOTAL),
            rho: MAX_RHO_TOTAL,
        };
        let population = Budget {
            epsilon: Epsilon(one.epsilon.0.saturating_mul(DEFAULT_SCENARIOS_PER_PERIOD)),
            delta: delta_for_population(
                units,
                Delta(MAX_DELTA_TOTAL.0.saturating_mul(DEFAULT_SCENARIOS_PER_PERIOD)),
            ),
            rho: Rho(one.rho.0.saturating_mul(DEFAULT_SCENARIOS_PER_PERIOD)),
        };
        Caps {
            population,
            organization: one,
            developer: one,
        }
    }

    /// The cap of `level`; `allocation` is the allocation's own limit.
    pub fn of(&self, level: Level, allocation: &Budget) -> Budget {
        match level {
            Level::Population => self.population,
            Level::Allocation => *allocation,
            Level::Organization => self.organization,
            Level::Developer => self.developer,
        }
    }

    /// Checks that `new` only lowers these caps: within a period the
    /// regulator can tighten a population's caps but not loosen them (a
    /// higher cap needs a recorded renewal, which starts a new period).
    pub fn check_lowering(&self, new: &Caps) -> Result<()> {
        for (what, old, new) in [
            ("population", self.population, new.population),
            ("organization", self.organization, new.organization),
            ("developer", self.developer, new.developer),
        ] {
            if let Some(part) = raised_part(&old, &new) {
                return Err(Error::IllegalState(format!(
                    "the {what} cap's {part} can only be lowered within a period; a higher cap needs a renewal"
                )));
            }
        }
        Ok(())
    }

    /// These caps with the organization cap lowered, part by part, to the
    /// population's and the developer cap to the organization's: no level
    /// may hold more than the level above it.
    pub fn clamped(&self) -> Caps {
        let min = |a: Budget, p: Budget| Budget {
            epsilon: a.epsilon.min(p.epsilon),
            delta: a.delta.min(p.delta),
            rho: a.rho.min(p.rho),
        };
        let organization = min(self.organization, self.population);
        Caps {
            population: self.population,
            organization,
            developer: min(self.developer, organization),
        }
    }

    /// Refuses caps no regulator can set for a population of `units`
    /// units: a delta cap at or above `1/(10·units)` (see
    /// [`delta_for_population`]), or an organization or developer cap above
    /// the population's.
    pub fn validate(&self, units: u64) -> Result<()> {
        let most = delta_for_population(units, Delta(u64::MAX));
        if self.population.delta > most {
            return Err(Error::UnsafeParameter(format!(
                "a population of {units} units may lose at most delta {most} in a period"
            )));
        }
        for (what, b) in [("organization", self.organization), ("developer", self.developer)] {
            if let Some(part) = raised_part(&self.population, &b) {
                return Err(Error::InvalidRequest(format!(
                    "the {what} cap's {part} is above the population's"
                )));
            }
        }
        Ok(())
    }
}

/// The first part of `new` that is larger than in `old`.
fn raised_part(old: &Budget, new: &Budget) -> Option<&'static str> {
    if new.epsilon > old.epsilon {
        Some("epsilon")
    } else if new.delta > old.delta {
        Some("delta")
    } else if new.rho > old.rho {
        Some("rho")
    } else {
        None
    }
}

/// What one level has spent in a period: the sums the caps limit, plus the
/// two sums over Laplace charges that advanced composition needs, in units
/// of 1e-12: the exact sum of squared epsilons, and the sum of
/// `epsilon (e^epsilon - 1)` with each term rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Spend {
    /// Sums of each part.
    pub budget: Budget,
    /// Sum of `epsilon_i^2` over Laplace charges, in 1e-12 units.
    pub epsilon_squares: u64,
    /// Sum of `epsilon_i (e^epsilon_i - 1)`, in 1e-12 units, rounded up.
    pub epsilon_drift: u64,
}

/// Units of [`Spend::epsilon_squares`] and [`Spend::epsilon_drift`] per 1.0.
pub const SQUARE_UNITS: u64 = EPSILON_UNITS * EPSILON_UNITS;

/// The `(epsilon, delta)` guarantee of a [`Spend`], and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Guarantee {
    /// Epsilon of the guarantee.
    pub epsilon: f64,
    /// Delta of the guarantee: the delta spent on key release plus the
    /// conversion delta of each bound that needs one.
    pub delta: f64,
    /// `basic` when the Laplace part is the plain sum, `advanced` when
    /// advanced composition gave less, `none` without Laplace charges.
    pub laplace: &'static str,
}

impl Spend {
    /// The spend after one more charge of `cost`.
    pub fn plus(&self, cost: &Budget) -> Spend {
        let e = cost.epsilon.0;
        let eps = cost.epsilon.as_f64();
        let drift = (eps * eps.exp_m1() * SQUARE_UNITS as f64).ceil();
        let drift = if drift.is_finite() && drift < u64::MAX as f64 / 2.0 {
            drift as u64
        } else {
            u64::MAX / 2
        };
        Spend {
            budget: self.budget.plus(cost),
            epsilon_squares: self.epsilon_squares.saturating_add(e.saturating_mul(e)),
            epsilon_drift: self.epsilon_drift.saturating_add(drift),
        }
    }

    /// The guarantee of everything spent, with `conversion` the delta each
    /// of the Laplace and Gaussian bounds may use when it needs one (split
    /// in halves when both do):
    ///
    /// - Laplace: the smaller of basic composition (the sum of epsilons)
    ///   and advanced composition for unequal epsilons (Dwork-Rothblum-
    ///   Vadhan 2010; the proof of Dwork-Roth 2014, Thm 3.20, per step):
    ///   `sqrt(2 ln(1/d) sum e_i^2) + sum e_i (e^e_i - 1)` at delta `d`.
    /// - Gaussian: rho-zCDP composes by addition, and rho-zCDP implies
    ///   `(rho + 2 sqrt(rho ln(1/d)), d)`-DP (Bun-Steinke 2016, Prop 1.3).
    /// - Key release: the deltas add up (basic composition).
    ///
    /// Epsilons add across the parts and so do deltas.
    pub fn guarantee(&self, conversion: f64) -> Guarantee {
        let keys = self.budget.delta.as_f64();
        let basic = self.budget.epsilon.as_f64();
        let rho = self.budget.rho.as_f64();
        let has_gauss = rho > 0.0;
        let conversion = if conversion.is_finite() && conversion > 0.0 {
            conversion
        } else {
            0.0
        };
        // Advanced composition is used only when it beats the sum; it
        // needs a conversion delta, halved when the Gaussian part takes
        // the other half.
        let laplace_share = if has_gauss { conversion / 2.0 } else { conversion };
        let advanced = (laplace_share > 0.0 && self.budget.epsilon.0 > 0).then(|| {
            let squares = self.epsilon_squares as f64 / SQUARE_UNITS as f64;
            let drift = self.epsilon_drift as f64 / SQUARE_UNITS as f64;
            (2.0 * (1.0 / laplace_share).ln() * squares).sqrt() + drift
        });
        let (laplace_eps, laplace_delta, laplace) = match advanced {
            Some(a) if a < basic => (a, laplace_share, "advanced"),
            _ if self.budget.epsilon.0 > 0 => (basic, 0.0, "basic"),
            _ => (0.0, 0.0, "none"),
        };
        let gauss_share = if laplace == "advanced" {
            conversion / 2.0
        } else {
            conversion
        };
        let (gauss_eps, gauss_delta) = if has_gauss && gauss_share > 0.0 {
            (rho + 2.0 * (rho * (1.0 / gauss_share).ln()).sqrt(), gauss_share)
        } else if has_gauss {
            // No conversion delta: zCDP gives no finite pure epsilon.
            (f64::INFINITY, 0.0)
        } else {
            (0.0, 0.0)
        };
        Guarantee {
            epsilon: laplace_eps + gauss_eps,
            delta: keys + laplace_delta + gauss_delta,
            laplace,
        }
    }
}

/// One level as a charge sees it: what it has spent and its cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelState {
    /// The population.
    pub population: String,
    /// The level.
    pub level: Level,
    /// Who holds it: the population's kind, `scenario/organization`, the
    /// organization or the developer account.
    pub holder: String,
    /// Spent so far in the period.
    pub spent: Spend,
    /// The cap.
    pub cap: Budget,
}

/// Why a charge was refused: the first level it did not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The population.
    pub population: String,
    /// The level.
    pub level: Level,
    /// The level's holder.
    pub holder: String,
    /// Which part falls short, and by how much.
    pub detail: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} level ({}) of population `{}` is exhausted: {}",
            self.level, self.holder, self.population, self.detail
        )
    }
}

/// Checks a charge of `cost` against every level, in order; `Err` names
/// the first level it does not fit. Nothing is changed either way.
pub fn check(levels: &[LevelState], cost: &Budget) -> std::result::Result<(), Refusal> {
    for l in levels {
        if !l.spent.budget.can_afford(cost, &l.cap) {
            return Err(Refusal {
                population: l.population.clone(),
                level: l.level,
                holder: l.holder.clone(),
                detail: l.spent.budget.shortfall(cost, &l.cap),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(e: u64, d: u64, r: u64) -> Budget {
        Budget {
            epsilon: Epsilon(e),
            delta: Delta(d),
            rho: Rho(r),
        }
    }

    fn state(level: Level, cap: Budget) -> LevelState {
        LevelState {
            population: "enterprise".into(),
            level,
            holder: level.as_str().into(),
            spent: Spend::default(),
            cap,
        }
    }

    #[test]
    fn the_first_exhausted_level_is_named() {
        let mut levels = vec![
            state(Level::Population, b(10, 10, 10)),
            state(Level::Allocation, b(5, 10, 10)),
            state(Level::Organization, b(3, 10, 10)),
            state(Level::Developer, b(10, 10, 10)),
        ];
        assert!(check(&levels, &b(3, 1, 0)).is_ok());
        let r = check(&levels, &b(4, 1, 0)).unwrap_err();
        assert_eq!(r.level, Level::Organization);
        levels[1].spent = levels[1].spent.plus(&b(5, 0, 0));
        let r = check(&levels, &b(1, 0, 0)).unwrap_err();
        assert_eq!(r.level, Level::Allocation);
        assert!(r.to_string().contains("allocation"), "{r}");
    }

    #[test]
    fn caps_can_only_be_lowered_within_a_period() {
        let c = Caps::default_for(1000);
        let mut lower = c;
        lower.population.epsilon = Epsilon(1_000_000);
        assert!(c.check_lowering(&lower).is_ok());
        let mut higher = c;
        higher.developer.rho = Rho(c.developer.rho.0 + 1);
        let e = c.check_lowering(&higher).unwrap_err();
        assert!(e.to_string().contains("developer"), "{e}");
        // Lowering the population lowers the levels below it.
        let mut small = c;
        small.population.epsilon = Epsilon(1_000_000);
        let small = small.clamped();
        assert_eq!(small.organization.epsilon, Epsilon(1_000_000));
        assert_eq!(small.developer.epsilon, Epsilon(1_000_000));
        assert!(c.check_lowering(&small).is_ok());
    }

    #[test]
    fn delta_is_scaled_to_the_population() {
        // A million units: at most 1e-7 in a period.
        assert_eq!(delta_for_population(1_000_000, Delta(u64::MAX)), Delta(100_000));
        assert_eq!(delta_for_population(10, MAX_DELTA_TOTAL), MAX_DELTA_TOTAL);
        let c = Caps::default_for(1_000_000);
        assert!(c.population.delta <= Delta(100_000));
        assert!(c.validate(1_000_000).is_ok());
        let mut loose = c;
        loose.population.delta = Delta(1_000_000);
        assert!(loose.validate(1_000_000).is_err());
        let mut inverted = c;
        inverted.organization.epsilon = Epsilon(c.population.epsilon.0 + 1);
        assert!(inverted.validate(1_000_000).is_err());
    }

    #[test]
    fn advanced_composition_wins_for_many_small_charges() {
        let mut s = Spend::default();
        for _ in 0..1000 {
            s = s.plus(&b(10_000, 0, 0)); // epsilon 0.01 each, 10 in total
        }
        let g = s.guarantee(1e-6);
        assert_eq!(g.laplace, "advanced");
        // sqrt(2 ln(1e6) * 1000 * 1e-4) + 1000 * 0.01 (e^0.01 - 1) = 1.76.
        assert!((g.epsilon - 1.7626).abs() < 1e-3, "{g:?}");
        assert!((g.delta - 1e-6).abs() < 1e-15);
        // A few large charges: the sum is smaller.
        let big = Spend::default()
            .plus(&b(1_000_000, 0, 0))
            .plus(&b(1_000_000, 0, 0));
        let g = big.guarantee(1e-6);
        assert_eq!((g.laplace, g.epsilon, g.delta), ("basic", 2.0, 0.0));
    }

    fn cost() -> impl Strategy<Value = Budget> {
        (0u64..3_000_000, 0u64..2_000_000, 0u64..600_000).prop_map(|(e, d, r)| b(e, d, r))
    }

    proptest! {
        /// Random sequences of charges against random caps: whatever is
        /// accepted never takes any level over its cap, a refused charge
        /// changes nothing, and the reported guarantee is the composition
        /// theorems' bound computed from the accepted charges directly.
        #[test]
        fn charges_never_exceed_a_cap(
            caps in proptest::collection::vec(cost().prop_map(|c| c.plus(&c).plus(&c)), 4),
            charges in proptest::collection::vec(cost(), 1..60),
            conversion in 1e-9f64..1e-3,
        ) {
            let mut levels: Vec<LevelState> = Level::ALL
                .iter()
                .zip(&caps)
                .map(|(l, c)| state(*l, *c))
                .collect();
            let mut accepted: Vec<Budget> = Vec::new();
            for c in &charges {
                let before = levels.clone();
                match check(&levels, c) {
                    Ok(()) => {
                        for l in &mut levels {
                            l.spent = l.spent.plus(c);
                        }
                        accepted.push(*c);
                    }
                    Err(r) => {
                        prop_assert_eq!(&levels, &before);
                        let l = levels.iter().find(|l| l.level == r.level).unwrap();
                        prop_assert!(!l.spent.budget.can_afford(c, &l.cap));
                    }
                }
                for l in &levels {
                    let s = l.spent.budget;
                    prop_assert!(s.epsilon <= l.cap.epsilon && s.delta <= l.cap.delta && s.rho <= l.cap.rho);
                }
            }
            // The guarantee, recomputed from the accepted charges.
            let eps: Vec<f64> = accepted.iter().map(|c| c.epsilon.as_f64()).collect();
            let rho: f64 = accepted.iter().map(|c| c.rho.as_f64()).sum();
            let keys: f64 = accepted.iter().map(|c| c.delta.as_f64()).sum();
            let basic: f64 = eps.iter().sum();
            let share = if rho > 0.0 { conversion / 2.0 } else { conversion };
            let squares: f64 = eps.iter().map(|e| e * e).sum();
            let drift: f64 = eps.iter().map(|e| e * e.exp_m1()).sum();
            let advanced = (2.0 * (1.0 / share).ln() * squares).sqrt() + drift;
            let use_advanced = basic > 0.0 && advanced < basic;
            let laplace = if use_advanced { advanced } else { basic };
            let gshare = if use_advanced { conversion / 2.0 } else { conversion };
            let gauss = if rho > 0.0 { rho + 2.0 * (rho * (1.0 / gshare).ln()).sqrt() } else { 0.0 };
            let delta = keys + if use_advanced { share } else { 0.0 } + if rho > 0.0 { gshare } else { 0.0 };
            let g = levels[0].spent.guarantee(conversion);
            // Rounding each drift term up to 1e-12 is the only difference.
            prop_assert!((g.epsilon - (laplace + gauss)).abs() < 1e-6, "{} vs {}", g.epsilon, laplace + gauss);
            prop_assert!((g.delta - delta).abs() < 1e-15);
        }
    }
}
