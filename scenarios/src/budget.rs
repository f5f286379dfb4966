//! Privacy-budget quantities in exact integer units.
//!
//! Budgets are accounted in integers so that no sequence of charges can drift
//! through floating-point rounding: epsilon in millionths, delta in units of
//! 1e-12. The wire form is a decimal number.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Differential-privacy epsilon in millionths (1.0 == 1_000_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epsilon(pub u64);

/// Differential-privacy delta in units of 1e-12 (1e-6 == 1_000_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Delta(pub u64);

/// One epsilon unit is this fraction of 1.0.
pub const EPSILON_UNITS: u64 = 1_000_000;
/// One delta unit is this fraction of 1.0.
pub const DELTA_UNITS: u64 = 1_000_000_000_000;

fn units_from_f64(x: f64, per_one: u64, what: &str) -> Result<u64, String> {
    if !x.is_finite() || x < 0.0 {
        return Err(format!("{what} must be a finite number >= 0"));
    }
    let scaled = (x * per_one as f64).round();
    if scaled > u64::MAX as f64 / 2.0 {
        return Err(format!("{what} is too large"));
    }
    Ok(scaled as u64)
}

impl Epsilon {
    /// Converts a decimal epsilon, rounding to the nearest millionth.
    pub fn from_f64(x: f64) -> Result<Self, String> {
        units_from_f64(x, EPSILON_UNITS, "epsilon").map(Epsilon)
    }
    /// The value as a float, for display and noise-scale reports only.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / EPSILON_UNITS as f64
    }
    /// Saturating sum.
    pub fn saturating_add(self, o: Epsilon) -> Epsilon {
        Epsilon(self.0.saturating_add(o.0))
    }
    /// Saturating difference.
    pub fn saturating_sub(self, o: Epsilon) -> Epsilon {
        Epsilon(self.0.saturating_sub(o.0))
    }
}

impl Delta {
    /// Converts a decimal delta, rounding to the nearest 1e-12.
    pub fn from_f64(x: f64) -> Result<Self, String> {
        units_from_f64(x, DELTA_UNITS, "delta").map(Delta)
    }
    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / DELTA_UNITS as f64
    }
    /// Saturating sum.
    pub fn saturating_add(self, o: Delta) -> Delta {
        Delta(self.0.saturating_add(o.0))
    }
    /// Saturating difference.
    pub fn saturating_sub(self, o: Delta) -> Delta {
        Delta(self.0.saturating_sub(o.0))
    }
}

impl fmt::Display for Epsilon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_f64())
    }
}

impl fmt::Display for Delta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:e}", self.as_f64())
    }
}

macro_rules! decimal_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_f64(self.as_f64())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let x = f64::deserialize(d)?;
                <$t>::from_f64(x).map_err(serde::de::Error::custom)
            }
        }
    };
}
decimal_serde!(Epsilon);
decimal_serde!(Delta);

/// A spend or an allowance of privacy budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Budget {
    /// Epsilon part.
    pub epsilon: Epsilon,
    /// Delta part.
    pub delta: Delta,
}

impl Budget {
    /// True when `self + charge` stays within `limit` in both parts.
    pub fn can_afford(&self, charge: &Budget, limit: &Budget) -> bool {
        self.epsilon
            .0
            .checked_add(charge.epsilon.0)
            .is_some_and(|e| e <= limit.epsilon.0)
            && self
                .delta
                .0
                .checked_add(charge.delta.0)
                .is_some_and(|d| d <= limit.delta.0)
    }
    /// Says which part of `limit` a `charge` on top of `self` would exceed.
    pub fn shortfall(&self, charge: &Budget, limit: &Budget) -> String {
        if self.epsilon.0.saturating_add(charge.epsilon.0) > limit.epsilon.0 {
            format!(
                "spent epsilon {} of {}, the query needs {}",
                self.epsilon, limit.epsilon, charge.epsilon
            )
        } else {
            format!(
                "spent delta {} of {}, the query needs {}",
                self.delta, limit.delta, charge.delta
            )
        }
    }
    /// Component-wise saturating sum.
    pub fn plus(&self, o: &Budget) -> Budget {
        Budget {
            epsilon: self.epsilon.saturating_add(o.epsilon),
            delta: self.delta.saturating_add(o.delta),
        }
    }
    /// Component-wise saturating difference.
    pub fn minus(&self, o: &Budget) -> Budget {
        Budget {
            epsilon: self.epsilon.saturating_sub(o.epsilon),
            delta: self.delta.saturating_sub(o.delta),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsilon_units_are_exact() {
        let e = Epsilon::from_f64(0.1).unwrap();
        assert_eq!(e.0, 100_000);
        let mut spent = Epsilon::default();
        for _ in 0..10 {
            spent = spent.saturating_add(e);
        }
        assert_eq!(spent, Epsilon::from_f64(1.0).unwrap());
    }

    #[test]
    fn rejects_negative_and_nan() {
        assert!(Epsilon::from_f64(-0.5).is_err());
        assert!(Epsilon::from_f64(f64::NAN).is_err());
        assert!(Delta::from_f64(f64::INFINITY).is_err());
    }

    #[test]
    fn affordability_is_checked_on_both_parts() {
        let limit = Budget {
            epsilon: Epsilon(1_000_000),
            delta: Delta(10),
        };
        let spent = Budget {
            epsilon: Epsilon(900_000),
            delta: Delta(5),
        };
        assert!(spent.can_afford(
            &Budget {
                epsilon: Epsilon(100_000),
                delta: Delta(5)
            },
            &limit
        ));
        assert!(!spent.can_afford(
            &Budget {
                epsilon: Epsilon(100_001),
                delta: Delta(0)
            },
            &limit
        ));
        assert!(!spent.can_afford(
            &Budget {
                epsilon: Epsilon(0),
                delta: Delta(6)
            },
            &limit
        ));
    }
}
