//! Exact integer noise samplers (Canonne, Kamath, Steinke 2020, "The
//! Discrete Gaussian for Differential Privacy", algorithms 1 and 2).
//!
//! No floating-point number is involved in sampling: every probability is a
//! ratio of integers and every draw is a uniform integer obtained by
//! rejection from random bytes, so the output distribution is exactly the
//! stated one (no Mironov-2012 style artefacts). Randomness comes from a
//! [`RandomSource`]; production uses `ring`'s system RNG.

use crate::{Error, Result};
use num_bigint::{BigInt, BigUint};
use num_traits::{One, ToPrimitive, Zero};
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

/// A uniform big integer in `[0, n)`, by rejection (exact).
pub fn uniform_below_big(rng: &mut dyn RandomSource, n: &BigUint) -> Result<BigUint> {
    if n.is_zero() {
        return Err(Error::Internal("uniform_below_big(0)".into()));
    }
    let top = n - 1u32;
    let bits = top.bits();
    if bits == 0 {
        return Ok(BigUint::zero());
    }
    let bytes = bits.div_ceil(8) as usize;
    let spare = (bytes as u64) * 8 - bits;
    let mut buf = vec![0u8; bytes];
    loop {
        rng.fill(&mut buf)?;
        if let Some(last) = buf.last_mut() {
            *last &= 0xFF >> spare;
        }
        let v = BigUint::from_bytes_le(&buf);
        if &v < n {
            return Ok(v);
        }
    }
}

/// Bernoulli(exp(-num/den)) on big integers, exact (CKS algorithm 1).
pub fn bernoulli_exp_big(rng: &mut dyn RandomSource, num: &BigUint, den: &BigUint) -> Result<bool> {
    if den.is_zero() {
        return Err(Error::Internal("bernoulli_exp with zero denominator".into()));
    }
    let whole = num / den;
    // Each whole unit needs a Bernoulli(exp(-1)) success; a count beyond
    // u64 would need more successes than can ever happen in a row.
    let Some(whole) = whole.to_u64() else {
        return Ok(false);
    };
    for _ in 0..whole {
        if !bernoulli_exp(rng, 1, 1)? {
            return Ok(false);
        }
    }
    let rem = num % den;
    let mut k = BigUint::one();
    loop {
        let d = den * &k;
        if uniform_below_big(rng, &d)? >= rem {
            return Ok(k.bit(0));
        }
        k += 1u32;
    }
}

/// A discrete Gaussian sample with variance parameter `sigma2 = num/den`:
/// `P[x] ∝ exp(-x² / (2 sigma2))` (CKS algorithm 3, by rejection from a
/// discrete Laplace of scale `floor(sigma) + 1`).
pub fn discrete_gaussian(rng: &mut dyn RandomSource, num: &BigUint, den: &BigUint) -> Result<i128> {
    if num.is_zero() || den.is_zero() {
        return Err(Error::Internal("discrete gaussian variance must be > 0".into()));
    }
    // floor(sqrt(num/den)) = floor(sqrt(floor(num/den))).
    let t: BigUint = (num / den).sqrt() + 1u32;
    let t_small = t
        .to_u128()
        .ok_or_else(|| Error::PolicyViolation("noise scale too large".into()))?;
    // gamma = (|y| den t - num)^2 / (2 num den t^2)
    let gamma_den: BigUint = BigUint::from(2u32) * num * den * &t * &t;
    let n_int = BigInt::from(num.clone());
    loop {
        let y = discrete_laplace(rng, t_small, 1)?;
        let a = BigInt::from(BigUint::from(y.unsigned_abs()) * den * &t) - &n_int;
        let gamma_num = (&a * &a).to_biguint().unwrap_or_default();
        if bernoulli_exp_big(rng, &gamma_num, &gamma_den)? {
            return Ok(y);
        }
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
        // A fixed byte stream: the test checks the algorithm, deterministically.
        let mut rng = TestRng(42);
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

    /// Chi-squared goodness of fit of the discrete Gaussian against its pmf
    /// `P[x] ∝ exp(-x² / (2 sigma2))`, normalised numerically.
    #[test]
    fn discrete_gaussian_matches_theory() {
        let mut rng = TestRng(43);
        let (num, den) = (BigUint::from(5u32), BigUint::from(2u32)); // sigma2 = 2.5
        let n = 50_000usize;
        let mut counts = std::collections::BTreeMap::<i128, usize>::new();
        for _ in 0..n {
            *counts
                .entry(discrete_gaussian(&mut rng, &num, &den).unwrap())
                .or_default() += 1;
        }
        let w = |x: i128| (-(x * x) as f64 / 5.0).exp();
        let z: f64 = (-60i128..=60).map(w).sum();
        let pmf = |x: i128| w(x) / z;
        let mut chi2 = 0.0;
        let mut tail_obs = 0usize;
        let mut tail_p = 1.0;
        for x in -5i128..=5 {
            let obs = *counts.get(&x).unwrap_or(&0) as f64;
            let exp = pmf(x) * n as f64;
            tail_p -= pmf(x);
            chi2 += (obs - exp).powi(2) / exp;
        }
        for (x, c) in &counts {
            if x.abs() > 5 {
                tail_obs += c;
            }
        }
        let exp_tail = tail_p * n as f64;
        chi2 += (tail_obs as f64 - exp_tail).powi(2) / exp_tail;
        // 12 bins, 11 degrees of freedom: the 99.9% quantile is 31.26.
        assert!(chi2 < 31.26, "chi2 = {chi2}");
        // Mean zero, variance slightly below sigma2 (CKS: at most sigma2).
        let mean = counts.iter().map(|(x, c)| *x as f64 * *c as f64).sum::<f64>() / n as f64;
        let var = counts
            .iter()
            .map(|(x, c)| (*x as f64 - mean).powi(2) * *c as f64)
            .sum::<f64>()
            / n as f64;
        assert!(
            mean.abs() < 0.05 && (var - 2.5).abs() < 0.1,
            "mean {mean} var {var}"
        );
    }

    #[test]
    fn the_system_rng_drives_the_samplers() {
        // The real source: mean and spread of 20,000 draws at scale 4 and
        // sigma2 16, with bounds far outside any plausible run.
        let mut rng = SystemRng::default();
        let n = 20_000;
        let lap: Vec<f64> = (0..n)
            .map(|_| discrete_laplace(&mut rng, 4, 1).unwrap() as f64)
            .collect();
        let gau: Vec<f64> = (0..n)
            .map(|_| discrete_gaussian(&mut rng, &BigUint::from(16u32), &BigUint::one()).unwrap() as f64)
            .collect();
        for (v, var) in [
            (lap, 2.0 * (-0.25f64).exp() / (1.0 - (-0.25f64).exp()).powi(2)),
            (gau, 16.0),
        ] {
            let mean = v.iter().sum::<f64>() / n as f64;
            let s2 = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            assert!(mean.abs() < 0.3, "mean {mean}");
            assert!((s2 / var - 1.0).abs() < 0.15, "variance {s2} vs {var}");
        }
    }

    #[test]
    fn huge_gaussian_parameters_do_not_overflow() {
        // sigma about 2e7: the rejection test needs more than 128 bits.
        let mut rng = SystemRng::default();
        let num = BigUint::from(4u64) * BigUint::from(10u64).pow(20);
        let den = BigUint::from(1_000_000u32);
        for _ in 0..20 {
            let x = discrete_gaussian(&mut rng, &num, &den).unwrap();
            assert!(x.abs() < 400_000_000, "{x}");
        }
    }

    #[test]
    fn uniform_big_covers_its_range() {
        let mut rng = TestRng(5);
        let n = BigUint::from(5u32);
        let mut seen = [0u32; 5];
        for _ in 0..5000 {
            seen[uniform_below_big(&mut rng, &n).unwrap().to_usize().unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| (850..1150).contains(&c)), "{seen:?}");
    }

    #[test]
    fn scale_is_exact() {
        let s = Scale::laplace(3, 2, 500_000).unwrap();
        assert_eq!((s.num, s.den), (6_000_000, 500_000));
        assert_eq!(s.as_f64(), 12.0);
        assert!(Scale::laplace(1, 1, 0).is_err());
    }
}
