//! Exact integer noise samplers (Canonne, Kamath, Steinke 2020, "The
//! Discrete Gaussian for Differential Privacy", algorithms 1 and 2).
//!
//! No floating-point number is involved in sampling: every probability is a
//! ratio of integers and every draw is a uniform integer obtained by
//! rejection from random bytes, so the output distribution is exactly the
//! stated one (no Mironov-2012 style artefacts). Randomness comes from a
//! [`RandomSource`]; production uses `ring`'s system RNG.

use crate::{Error, Result};
use ring::rand::{SecureRandom, SystemRandom};

/// A source of uniformly random bytes.
pub trait RandomSource {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<()>;
}

/// `ring`'s operating-system CSPRNG, read in 4 KiB blocks so a sample does
/// not cost a system call per byte. Buffered bytes are used once.
pub struct SystemRng {
    rng: SystemRandom,
    buf: Box<[u8; 4096]>,
    pos: usize,
}

impl Default for SystemRng {
    fn default() -> Self {
        SystemRng {
            rng: SystemRandom::new(),
            buf: Box::new([0u8; 4096]),
            pos: 4096,
        }
    }
}

impl RandomSource for SystemRng {
    fn fill(&mut self, out: &mut [u8]) -> Result<()> {
        let mut written = 0;
        while written < out.len() {
            if self.pos == self.buf.len() {
                self.rng
                    .fill(&mut self.buf[..])
                    .map_err(|_| Error::Internal("system random number generator failed".into()))?;
                self.pos = 0;
            }
            let n = (out.len() - written).min(self.buf.len() - self.pos);
            out[written..written + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            // Zero what was handed out so no byte is ever used twice.
            self.buf[self.pos..self.pos + n].fill(0);
            self.pos += n;
            written += n;
        }
        Ok(())
    }
}

/// A uniform integer in `[0, n)`, by rejection (exact). `n` must be > 0.
pub fn uniform_below(rng: &mut dyn RandomSource, n: u128) -> Result<u128> {
    if n == 0 {
        return Err(Error::Internal("uniform_below(0)".into()));
    }
    if n == 1 {
        return Ok(0);
    }
    let bits = 128 - (n - 1).leading_zeros();
    let bytes = bits.div_ceil(8) as usize;
    let mask: u128 = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    loop {
        let mut b = [0u8; 16];
        rng.fill(&mut b[..bytes])?;
        let v = u128::from_le_bytes(b) & mask;
        if v < n {
            return Ok(v);
        }
    }
}

/// Bernoulli(num / den), exact. Requires `num <= den`, `den > 0`.
pub fn bernoulli(rng: &mut dyn RandomSource, num: u128, den: u128) -> Result<bool> {
    if den == 0 || num > den {
        return Err(Error::Internal("bernoulli parameter outside [0, 1]".into()));
    }
    Ok(uniform_below(rng, den)? < num)
}

/// Bernoulli(exp(-num/den)), exact (CKS algorithm 1). Requires `den > 0`.
pub fn bernoulli_exp(rng: &mut dyn RandomSource, num: u128, den: u128) -> Result<bool> {
    if den == 0 {
        return Err(Error::Internal("bernoulli_exp with zero denominator".into()));
    }
    if num <= den {
        return bernoulli_exp_le1(rng, num, den);
    }
    let whole = num / den;
    for _ in 0..whole {
        if !bernoulli_exp_le1(rng, 1, 1)? {
            return Ok(false);
        }
    }
    bernoulli_exp_le1(rng, num % den, den)
}

/// Bernoulli(exp(-g)) for g = num/den in [0, 1].
fn bernoulli_exp_le1(rng: &mut dyn RandomSource, num: u128, den: u128) -> Result<bool> {
    let mut k: u128 = 1;
    loop {
        let d = den
            .checked_mul(k)
            .ok_or_else(|| Error::Internal("noise parameter overflow".into()))?;
        if !bernoulli(rng, num, d)? {
            return Ok(k % 2 == 1);
        }
        k += 1;
    }
}

/// A discrete Laplace sample with scale `num/den`: `P[x] ∝ exp(-|x|·den/num)`
/// (CKS algorithm 2). Both parts must be > 0.
pub fn discrete_laplace(rng: &mut dyn RandomSource, num: u128, den: u128) -> Result<i128> {
    if num == 0 || den == 0 {
        return Err(Error::Internal("discrete laplace scale must be > 0".into()));
    }
    // In the paper's notation the scale is t/s.
    let (t, s) = (num, den);
    loop {
        let u = uniform_below(rng, t)?;
        if !bernoulli_exp(rng, u, t)? {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp(rng, 1, 1)? {
            v += 1;
        }
        let x = t
            .checked_mul(v)
            .and_then(|tv| tv.checked_add(u))
            .ok_or_else(|| Error::Internal("noise sample overflow".into()))?;
        let y = x / s;
        let negative = bernoulli(rng, 1, 2)?;
        if negative && y == 0 {
            continue;
        }
        let y = i128::try_from(y).map_err(|_| Error::Internal("noise sample overflow".into()))?;
        return Ok(if negative { -y } else { y });
    }
}

/// Noise scale of a measurement as an exact fraction, with the float for
/// reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Numerator.
    pub num: u128,
    /// Denominator.
    pub den: u128,
}

impl Scale {
    /// `sensitivity · share / epsilon_micros · 10^6`: the Laplace scale of a
    /// measurement with L1 `sensitivity` that receives `1/share` of a query's
    /// epsilon (given in millionths).
    pub fn laplace(sensitivity: u128, share: u128, epsilon_micros: u64) -> Result<Scale> {
        let num = sensitivity
            .checked_mul(share)
            .and_then(|v| v.checked_mul(1_000_000))
            .ok_or_else(|| Error::PolicyViolation("sensitivity too large for the noise sampler".into()))?;
        if epsilon_micros == 0 || num == 0 {
            return Err(Error::PolicyViolation(
                "epsilon and sensitivity must be > 0".into(),
            ));
        }
        Ok(Scale {
            num,
            den: epsilon_micros as u128,
        })
    }

    /// The scale as a float, for thresholds and reports.
    pub fn as_f64(&self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic generator for repeatable statistical tests.
    pub(crate) struct TestRng(pub u64);
    impl RandomSource for TestRng {
        fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
            let mut g = crate::sample::SplitMix64(self.0);
            for b in buf.iter_mut() {
                *b = g.next_u64() as u8;
            }
            self.0 = g.0;
            Ok(())
        }
    }

    #[test]
    fn uniform_is_in_range_and_covers_it() {
        let mut rng = TestRng(1);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            let v = uniform_below(&mut rng, 7).unwrap();
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }

    #[test]
    fn bernoulli_exp_matches_its_mean() {
        let mut rng = TestRng(2);
        let n = 40_000;
        // exp(-1.5) = 0.2231
        let hits = (0..n).filter(|_| bernoulli_exp(&mut rng, 3, 2).unwrap()).count();
        let p = hits as f64 / n as f64;
        assert!((p - (-1.5f64).exp()).abs() < 0.01, "{p}");
    }

    /// Chi-squared goodness of fit of the discrete Laplace against its pmf
    /// `P[x] = (1-q)/(1+q) q^|x|`, q = exp(-1/scale).
    #[test]
    fn discrete_laplace_matches_theory() {
        let mut rng = SystemRng::default();
        let (num, den) = (5u128, 2u128); // scale 2.5
        let n = 50_000usize;
        let mut counts = std::collections::BTreeMap::<i128, usize>::new();
        for _ in 0..n {
            *counts
                .entry(discrete_laplace(&mut rng, num, den).unwrap())
                .or_default() += 1;
        }
        let q = (-(den as f64) / num as f64).exp();
        let pmf = |x: i128| (1.0 - q) / (1.0 + q) * q.powi(x.unsigned_abs() as i32);
        // Bins -8..=8, with both tails pooled.
        let mut chi2 = 0.0;
        let mut tail_obs = 0usize;
        let mut tail_p = 1.0;
        for x in -8i128..=8 {
            let obs = *counts.get(&x).unwrap_or(&0) as f64;
            let exp = pmf(x) * n as f64;
            tail_p -= pmf(x);
            chi2 += (obs - exp).powi(2) / exp;
        }
        for (x, c) in &counts {
            if x.abs() > 8 {
                tail_obs += c;
            }
        }
        let exp_tail = tail_p * n as f64;
        chi2 += (tail_obs as f64 - exp_tail).powi(2) / exp_tail;
        // 18 bins, 17 degrees of freedom: the 99.9% quantile is 40.79.
        assert!(chi2 < 40.79, "chi2 = {chi2}");
    }

    #[test]
    fn scale_is_exact() {
        let s = Scale::laplace(3, 2, 500_000).unwrap();
        assert_eq!((s.num, s.den), (6_000_000, 500_000));
        assert_eq!(s.as_f64(), 12.0);
        assert!(Scale::laplace(1, 1, 0).is_err());
    }
}
