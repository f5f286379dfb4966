//! Privacy-budget quantities in exact integer units.
//!
//! Budgets are accounted in integers so that no sequence of charges can drift
//! through floating-point rounding: epsilon and rho in millionths, delta in
//! units of 1e-12. The wire form is a decimal number.
//!
//! A budget has three parts. Pure differential privacy (discrete Laplace
//! noise) spends epsilon; zero-concentrated DP (discrete Gaussian noise)
//! spends rho; releasing data-dependent group keys spends delta. Each part
//! composes by addition and is limited separately; [`Budget::guarantee`]
//! states the combined (epsilon, delta) guarantee.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Differential-privacy epsilon in millionths (1.0 == 1_000_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epsilon(pub u64);

/// Differential-privacy delta in units of 1e-12 (1e-6 == 1_000_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Delta(pub u64);

/// Zero-concentrated DP rho in millionths (0.5 == 500_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rho(pub u64);

/// One epsilon unit is this fraction of 1.0.
pub const EPSILON_UNITS: u64 = 1_000_000;
/// One delta unit is this fraction of 1.0.
pub const DELTA_UNITS: u64 = 1_000_000_000_000;
/// One rho unit is this fraction of 1.0.
pub const RHO_UNITS: u64 = 1_000_000;

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

macro_rules! quantity {
    ($t:ident, $units:expr, $what:literal, $fmt:literal) => {
        impl $t {
            /// Converts a decimal value, rounding to the nearest unit.
            pub fn from_f64(x: f64) -> Result<Self, String> {
                units_from_f64(x, $units, $what).map($t)
            }
            /// The value as a float, for display and reports only.
            pub fn as_f64(self) -> f64 {
                self.0 as f64 / $units as f64
            }
            /// Saturating sum.
            pub fn saturating_add(self, o: $t) -> $t {
                $t(self.0.saturating_add(o.0))
            }
            /// Saturating difference.
            pub fn saturating_sub(self, o: $t) -> $t {
                $t(self.0.saturating_sub(o.0))
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.as_f64())
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_f64(self.as_f64())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let x = f64::deserialize(d)?;
                $t::from_f64(x).map_err(serde::de::Error::custom)
            }
        }
    };
}
quantity!(Epsilon, EPSILON_UNITS, "epsilon", "{}");
quantity!(Delta, DELTA_UNITS, "delta", "{:e}");
quantity!(Rho, RHO_UNITS, "rho", "{}");

/// A spend or an allowance of privacy budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Budget {
    /// Pure-DP part.
    pub epsilon: Epsilon,
    /// Delta part.
    pub delta: Delta,
    /// zCDP part.
    #[serde(default)]
    pub rho: Rho,
}

impl Budget {
    /// True when `self + charge` stays within `limit` in every part.
    pub fn can_afford(&self, charge: &Budget, limit: &Budget) -> bool {
        let fits = |a: u64, b: u64, l: u64| a.checked_add(b).is_some_and(|s| s <= l);
        fits(self.epsilon.0, charge.epsilon.0, limit.epsilon.0)
            && fits(self.delta.0, charge.delta.0, limit.delta.0)
            && fits(self.rho.0, charge.rho.0, limit.rho.0)
    }

    /// Says which part of `limit` a `charge` on top of `self` would exceed.
    pub fn shortfall(&self, charge: &Budget, limit: &Budget) -> String {
        if self.epsilon.0.saturating_add(charge.epsilon.0) > limit.epsilon.0 {
            format!(
                "spent epsilon {} of {}, the query needs {}",
                self.epsilon, limit.epsilon, charge.epsilon
            )
        } else if self.rho.0.saturating_add(charge.rho.0) > limit.rho.0 {
            format!(
                "spent rho {} of {}, the query needs {}",
                self.rho, limit.rho, charge.rho
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
            rho: self.rho.saturating_add(o.rho),
        }
    }

    /// Component-wise saturating difference.
    pub fn minus(&self, o: &Budget) -> Budget {
        Budget {
            epsilon: self.epsilon.saturating_sub(o.epsilon),
            delta: self.delta.saturating_sub(o.delta),
            rho: self.rho.saturating_sub(o.rho),
        }
    }

    /// The (epsilon, delta) guarantee of everything this budget covers.
    ///
    /// The delta part is already spent by key release (thresholding), so the
    /// zCDP part cannot be converted at a share of it: it is converted at a
    /// further delta of its own, [`Budget::conversion_delta`] (equal to the
    /// key-release delta, or [`MIN_CONVERSION_DELTA`] when that is zero),
    /// and the stated delta is the sum of both (Bun-Steinke 2016: rho-zCDP
    /// implies (rho + 2 sqrt(rho ln(1/d)), d)-DP for every d > 0; basic
    /// composition adds the pure epsilon and the deltas).
    pub fn guarantee(&self) -> (f64, f64) {
        let delta = self.delta.as_f64();
        let rho = self.rho.as_f64();
        if rho == 0.0 {
            return (self.epsilon.as_f64(), delta);
        }
        let d = self.conversion_delta();
        (
            self.epsilon.as_f64() + rho + 2.0 * (rho * (1.0 / d).ln()).sqrt(),
            delta + d,
        )
    }

    /// The delta at which [`Budget::guarantee`] converts the zCDP part.
    pub fn conversion_delta(&self) -> f64 {
        let delta = self.delta.as_f64();
        if delta > 0.0 {
            delta
        } else {
            MIN_CONVERSION_DELTA
        }
    }
}

/// The delta at which a zCDP part is converted when no key release spent
/// any delta: 1e-10.
pub const MIN_CONVERSION_DELTA: f64 = 1e-10;

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
        assert!(Rho::from_f64(-1.0).is_err());
    }

    #[test]
    fn affordability_is_checked_on_every_part() {
        let limit = Budget {
            epsilon: Epsilon(1_000_000),
            delta: Delta(10),
            rho: Rho(500_000),
        };
        let spent = Budget {
            epsilon: Epsilon(900_000),
            delta: Delta(5),
            rho: Rho(400_000),
        };
        let ok = Budget {
            epsilon: Epsilon(100_000),
            delta: Delta(5),
            rho: Rho(100_000),
        };
        assert!(spent.can_afford(&ok, &limit));
        assert!(!spent.can_afford(
            &Budget {
                epsilon: Epsilon(100_001),
                ..Default::default()
            },
            &limit
        ));
        assert!(!spent.can_afford(
            &Budget {
                delta: Delta(6),
                ..Default::default()
            },
            &limit
        ));
        let too_much_rho = Budget {
            rho: Rho(100_001),
            ..Default::default()
        };
        assert!(!spent.can_afford(&too_much_rho, &limit));
        assert!(spent.shortfall(&too_much_rho, &limit).contains("rho"));
    }

    #[test]
    fn old_records_without_rho_still_parse() {
        let b: Budget = serde_json::from_str(r#"{"epsilon": 1.0, "delta": 1e-6}"#).unwrap();
        assert_eq!(b.rho, Rho(0));
    }

    #[test]
    fn zcdp_converts_to_an_epsilon_delta_guarantee() {
        let b = Budget {
            epsilon: Epsilon(0),
            delta: Delta(1_000_000),
            rho: Rho(100_000),
        };
        let (e, d) = b.guarantee();
        // Key release spent 1e-6; rho 0.1 is converted at a further 1e-6:
        // 0.1 + 2 sqrt(0.1 ln 1e6) = 2.45, and the stated delta is 2e-6.
        assert!((e - 2.4507).abs() < 1e-3, "{e}");
        assert!((d - 2e-6).abs() < 1e-15, "{d}");
    }

    #[test]
    fn the_stated_delta_covers_key_release_and_conversion() {
        // The issue's case: the stated delta must not be the key-release
        // delta alone, nor the conversion use a delta already spent.
        for (delta, rho) in [(10_000_000u64, 500_000u64), (100_000, 1_000_000), (1, 100)] {
            let b = Budget {
                epsilon: Epsilon(250_000),
                delta: Delta(delta),
                rho: Rho(rho),
            };
            let (e, d) = b.guarantee();
            let key_release = Delta(delta).as_f64();
            let conv = b.conversion_delta();
            assert!(
                d >= key_release + conv - 1e-18,
                "delta {d} below {key_release} + {conv}"
            );
            let r = Rho(rho).as_f64();
            let expect = 0.25 + r + 2.0 * (r * (1.0 / conv).ln()).sqrt();
            assert!((e - expect).abs() < 1e-9);
        }
        // Rho with no key release still costs epsilon (it was ignored).
        let b = Budget {
            rho: Rho(100_000),
            ..Default::default()
        };
        let (e, d) = b.guarantee();
        assert!(e > 0.1 && d == MIN_CONVERSION_DELTA, "{e} {d}");
        // Pure epsilon is stated as it is.
        let b = Budget {
            epsilon: Epsilon(1_000_000),
            delta: Delta(5),
            ..Default::default()
        };
        assert_eq!(b.guarantee(), (1.0, Delta(5).as_f64()));
    }
}
