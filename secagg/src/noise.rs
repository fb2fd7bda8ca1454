//! Exact sampling from the discrete Gaussian N_Z(0, σ²), the distribution on the integers
//! with P[X = x] ∝ exp(-x² / 2σ²) (Canonne, Kamath, Steinke 2020, "The Discrete Gaussian
//! for Differential Privacy", Algorithms 1–3).
//!
//! The sampler uses only uniform integers from the injected [`CryptoRng`] and exact
//! integer arithmetic, never floating point, so its output distribution is exactly the
//! discrete Gaussian with the variance parameter it represents:
//!
//! - Bernoulli(exp(-γ)) for a rational γ (Algorithm 1): for γ ≤ 1, count K until
//!   Bernoulli(γ/K) fails and return whether K is odd; for γ > 1, ⌊γ⌋ draws of
//!   Bernoulli(exp(-1)) and one of Bernoulli(exp(-(γ - ⌊γ⌋))).
//! - The discrete Laplace with integer scale t (Algorithm 2), by rejection from a uniform
//!   remainder and a geometric quotient.
//! - The discrete Gaussian (Algorithm 3): draw Y from the discrete Laplace with
//!   t = ⌊σ⌋ + 1 and accept it with probability exp(-(|Y| - σ²/t)² / 2σ²).
//!
//! **The variance as a rational.** σ is given as an `f64`. The sampler represents the
//! variance exactly as σ̃² = t·m / 2^s (t the Laplace scale above, m an integer, 2^s with
//! s = min(64, 58 - ⌊log₂ σ⌋)), with m = ⌈σ² 2^s / t⌉ computed exactly from σ's binary
//! value. So σ̃² ≥ σ² always (never less noise than asked for), and the excess is below
//! t / 2^s: relative to σ² that is at most 2^-57 for σ ≥ 1, at most 2^-57/σ for
//! 2^-6 ≤ σ < 1, and for smaller σ the variance is rounded up to a multiple of 2^-64
//! (such noise is zero with overwhelming probability anyway). Every quantity then fits
//! `u128`: the acceptance exponent is (|Y|·2^s - m)² / (2·2^s·t·m), whose denominator is
//! below 2^120; its numerator needs 256 bits only when |Y| > 32σ (probability about
//! e^-32), and that path is exact too.
//!
//! **The one truncation.** Outputs are `i64`: a discrete Laplace draw whose magnitude
//! would exceed 2^62 is rejected and redrawn. With σ ≤ [`MAX_NOISE_STDDEV`] = 2^40 that
//! needs more than 2^21 consecutive successes of a Bernoulli(1/e), probability below
//! e^-(2^21); no finite-precision sampler can do better.

use rand_core::CryptoRng;

use crate::error::ParamsError;
use crate::params::Params;

/// The largest standard deviation [`DiscreteGaussian::new`] accepts (2^40), far beyond
/// any useful noise in quantization levels (which the modulus bounds by 2^63 / 10n).
pub const MAX_NOISE_STDDEV: f64 = (1u64 << 40) as f64;

/// The discrete Gaussian N_Z(0, σ²), ready to sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscreteGaussian {
    /// The Laplace scale t = ⌊σ⌋ + 1; 0 when σ = 0.
    t: u64,
    /// log₂ of the variance's denominator.
    s: u32,
    /// σ̃² = t·m / 2^s.
    m: u128,
    /// 2·2^s·t·m, the denominator of the acceptance exponent (below 2^120).
    den: u128,
}

impl DiscreteGaussian {
    /// The discrete Gaussian with standard deviation parameter `sigma` (finite, between
    /// 0 and [`MAX_NOISE_STDDEV`]); see the module docs for how σ² becomes exact.
    pub fn new(sigma: f64) -> Result<DiscreteGaussian, ParamsError> {
        if !(sigma.is_finite() && (0.0..=MAX_NOISE_STDDEV).contains(&sigma)) {
            return Err(ParamsError::NoiseStddev(sigma));
        }
        if sigma == 0.0 {
            return Ok(DiscreteGaussian {
                t: 0,
                s: 0,
                m: 0,
                den: 0,
            });
        }
        // sigma = mantissa * 2^exp exactly.
        let bits = sigma.to_bits();
        let biased = ((bits >> 52) & 0x7ff) as i32;
        let frac = bits & ((1u64 << 52) - 1);
        let (mantissa, exp) = if biased == 0 {
            (frac, -1074)
        } else {
            (frac | (1u64 << 52), biased - 1075)
        };
        // floor(log2 sigma) for normal sigma; subnormals get the largest s anyway.
        let log2 = if biased == 0 { -1023 } else { biased - 1023 };
        let s = (58 - log2).clamp(0, 64) as u32;
        let t = sigma.floor() as u64 + 1;
        // m = ceil(mantissa^2 * 2^(2 exp + s) / t), exactly.
        let square = u128::from(mantissa) * u128::from(mantissa);
        let shift = 2 * exp + s as i32;
        let m = if shift >= 0 {
            let num = square
                .checked_shl(shift as u32)
                .filter(|n| n >> shift == square)
                .ok_or(ParamsError::NoiseStddev(sigma))?;
            num.div_ceil(u128::from(t))
        } else {
            let neg = (-shift) as u32;
            let den = u128::from(t)
                .checked_shl(neg)
                .filter(|d| neg < 128 && d >> neg == u128::from(t));
            // A denominator beyond u128 means a positive quotient below 1: ceil is 1.
            den.map_or(1, |d| square.div_ceil(d))
        };
        let den = (m << 1)
            .checked_mul(u128::from(t))
            .and_then(|x| x.checked_mul(1u128 << s))
            .ok_or(ParamsError::NoiseStddev(sigma))?;
        Ok(DiscreteGaussian { t, s, m, den })
    }

    /// The exact variance parameter σ̃² = numerator / denominator that samples follow
    /// (`(0, 1)` for σ = 0). σ̃² ≥ σ², see the module docs.
    pub fn variance(&self) -> (u128, u128) {
        if self.t == 0 {
            return (0, 1);
        }
        (u128::from(self.t) * self.m, 1u128 << self.s)
    }

    /// One sample.
    pub fn sample<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> i64 {
        if self.t == 0 {
            return 0;
        }
        let q = 1u128 << self.s;
        loop {
            let y = discrete_laplace(self.t, rng);
            // |y| < 2^62 and q <= 2^64, so the product fits.
            let x = (u128::from(y.unsigned_abs()) * q).abs_diff(self.m);
            if bernoulli_exp_square(x, self.den, rng) {
                return y;
            }
        }
    }
}

/// One sample of N_Z(0, σ²), σ in [0, [`MAX_NOISE_STDDEV`]] (0 gives 0). Prefer
/// [`DiscreteGaussian::new`] once and [`DiscreteGaussian::sample`] for many samples.
///
/// # Panics
///
/// If `sigma` is negative, not finite or above [`MAX_NOISE_STDDEV`].
pub fn sample_discrete_gaussian<R: CryptoRng + ?Sized>(sigma: f64, rng: &mut R) -> i64 {
    match DiscreteGaussian::new(sigma) {
        Ok(g) => g.sample(rng),
        Err(e) => panic!("{e}"),
    }
}

/// The noise share σ_q (in levels, for [`Params::noise_stddev`]) that gives the sum a
/// total noise standard deviation of `total_stddev_value_units` (in the units of the
/// values, as in [`crate::Aggregate::sum`]) when at least `min_survivors` clients' inputs
/// are in it: σ_q = S · scale / sqrt(n_min), scale = L / c.
///
/// n survivors each adding N_Z(0, σ_q²) give the sum noise of variance n·σ_q² levels²,
/// i.e. standard deviation sqrt(n)·σ_q / scale in value units. That is at least S as long
/// as n ≥ n_min; with fewer survivors it is less (dropouts take their noise with them), so
/// pass the smallest number of survivors the round accepts. `min_survivors` 0 counts as 1.
///
/// If [`Params::with_noise`] then has to lower the quantization, it rescales the share so
/// that this value-unit target still holds.
pub fn noise_share_levels(
    total_stddev_value_units: f64,
    min_survivors: usize,
    params: &Params,
) -> f64 {
    total_stddev_value_units * params.scale() / (min_survivors.max(1) as f64).sqrt()
}

/// The discrete Laplace with scale t >= 1: P[Y = y] ∝ exp(-|y| / t) (Algorithm 2 with
/// s = 1), redrawing the (practically impossible) magnitudes of 2^62 and more.
fn discrete_laplace<R: CryptoRng + ?Sized>(t: u64, rng: &mut R) -> i64 {
    loop {
        let u = uniform_below(u128::from(t), rng) as u64;
        if !bernoulli_exp_unit(u128::from(u), u128::from(t), rng) {
            continue;
        }
        let mut v = 0u64;
        while bernoulli_exp_unit(1, 1, rng) {
            v += 1;
        }
        let Some(x) = v
            .checked_mul(t)
            .and_then(|x| x.checked_add(u))
            .filter(|&x| x < 1 << 62)
        else {
            continue;
        };
        let negative = rng.next_u32() & 1 == 1;
        if negative && x == 0 {
            continue;
        }
        let x = x as i64;
        return if negative { -x } else { x };
    }
}

/// Bernoulli(exp(-x² / den)), den >= 1.
fn bernoulli_exp_square<R: CryptoRng + ?Sized>(x: u128, den: u128, rng: &mut R) -> bool {
    if let Ok(x) = u64::try_from(x) {
        let x = u128::from(x);
        return bernoulli_exp(x * x, den, rng);
    }
    // x² needs 256 bits: take away den (one Bernoulli(exp(-1)) each) until it fits.
    let mut num = U256::square(x);
    loop {
        if num.hi == 0 {
            return bernoulli_exp(num.lo, den, rng);
        }
        if !bernoulli_exp_unit(1, 1, rng) {
            return false;
        }
        num = num.minus(den);
    }
}

/// Bernoulli(exp(-num / den)), den >= 1: ⌊num/den⌋ Bernoulli(exp(-1)), then the rest.
fn bernoulli_exp<R: CryptoRng + ?Sized>(mut num: u128, den: u128, rng: &mut R) -> bool {
    while num > den {
        if !bernoulli_exp_unit(1, 1, rng) {
            return false;
        }
        num -= den;
    }
    bernoulli_exp_unit(num, den, rng)
}

/// Bernoulli(exp(-γ)) for γ = num / den in [0, 1] (Algorithm 1): the number K of the
/// first failing Bernoulli(γ / K) is odd with probability exp(-γ).
fn bernoulli_exp_unit<R: CryptoRng + ?Sized>(num: u128, den: u128, rng: &mut R) -> bool {
    let mut k: u128 = 1;
    loop {
        // Bernoulli(γ / K) as one draw below den·K, or two independent ones if that
        // overflows (P = (num/den)·(1/K) either way).
        let success = match den.checked_mul(k) {
            Some(dk) => uniform_below(dk, rng) < num,
            None => uniform_below(k, rng) == 0 && uniform_below(den, rng) < num,
        };
        if !success {
            return k % 2 == 1;
        }
        k += 1;
    }
}

/// A uniform integer in [0, n), n >= 1, by rejection (fewer than two draws on average).
fn uniform_below<R: CryptoRng + ?Sized>(n: u128, rng: &mut R) -> u128 {
    let max = n - 1;
    if max == 0 {
        return 0;
    }
    let bits = 128 - max.leading_zeros();
    loop {
        let r = if bits <= 64 {
            u128::from(rng.next_u64() >> (64 - bits))
        } else {
            let hi = u128::from(rng.next_u64() >> (128 - bits));
            (hi << 64) | u128::from(rng.next_u64())
        };
        if r <= max {
            return r;
        }
    }
}

/// Just enough of a 256-bit unsigned integer for the rare wide acceptance exponent.
#[derive(Debug, Clone, Copy)]
struct U256 {
    hi: u128,
    lo: u128,
}

impl U256 {
    fn square(x: u128) -> U256 {
        let (a, b) = (x >> 64, x & u128::from(u64::MAX));
        // x² = a²·2^128 + 2ab·2^64 + b², with 2ab < 2^129 split into halves.
        let ab = a * b;
        let (lo, carry1) = (b * b).overflowing_add(ab << 65);
        let hi = a * a + (ab >> 63) + u128::from(carry1);
        U256 { hi, lo }
    }

    fn minus(self, x: u128) -> U256 {
        let (lo, borrow) = self.lo.overflowing_sub(x);
        U256 {
            hi: self.hi - u128::from(borrow),
            lo,
        }
    }
}

#[cfg(test)]
mod tests {
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn moments(sigma: f64, n: usize, seed: u64) -> (f64, f64) {
        let g = DiscreteGaussian::new(sigma).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (mut sum, mut sq) = (0f64, 0f64);
        for _ in 0..n {
            let x = g.sample(&mut rng) as f64;
            sum += x;
            sq += x * x;
        }
        (sum / n as f64, sq / n as f64)
    }

    /// Var[N_Z(0, σ²)] = Σ x² e^(-x²/2σ²) / Σ e^(-x²/2σ²), slightly below σ² for small σ.
    fn exact_variance(sigma: f64) -> f64 {
        let w = |x: f64| (-x * x / (2.0 * sigma * sigma)).exp();
        let r = (20.0 * sigma).ceil() as i64 + 5;
        let (mut z, mut s) = (0.0, 0.0);
        for x in -r..=r {
            let x = x as f64;
            z += w(x);
            s += x * x * w(x);
        }
        s / z
    }

    #[test]
    fn mean_and_variance_match() {
        let n = 200_000;
        for (i, sigma) in [0.5, 3.0, 40.0].into_iter().enumerate() {
            let (mean, second) = moments(sigma, n, i as u64);
            let var = exact_variance(sigma);
            // Standard errors: mean sqrt(var/n); second moment about var * sqrt(2/n).
            let se_mean = (var / n as f64).sqrt();
            assert!(mean.abs() < 5.0 * se_mean, "σ = {sigma}: mean {mean}");
            let se_var = var * (2.0 / n as f64).sqrt();
            assert!(
                (second - var).abs() < 5.0 * se_var,
                "σ = {sigma}: variance {second}, expected {var}"
            );
            if sigma >= 3.0 {
                assert!((var / (sigma * sigma) - 1.0).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn mass_at_zero_and_symmetry_for_small_sigma() {
        let sigma = 0.8;
        let g = DiscreteGaussian::new(sigma).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let n = 200_000;
        let mut counts = std::collections::BTreeMap::<i64, u64>::new();
        for _ in 0..n {
            *counts.entry(g.sample(&mut rng)).or_default() += 1;
        }
        let w = |x: i64| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp();
        let z: f64 = (-20..=20).map(w).sum();
        for x in -3i64..=3 {
            let p = w(x) / z;
            let got = *counts.get(&x).unwrap_or(&0) as f64 / n as f64;
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (got - p).abs() < 5.0 * se,
                "P[X = {x}]: {got}, expected {p}"
            );
        }
        for x in 1i64..=3 {
            let (a, b) = (counts.get(&x), counts.get(&-x));
            let (a, b) = (*a.unwrap_or(&0) as f64, *b.unwrap_or(&0) as f64);
            assert!(
                (a - b).abs() < 5.0 * (a + b).sqrt() + 1.0,
                "±{x}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn zero_sigma_is_zero_and_bad_sigmas_are_rejected() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        assert_eq!(sample_discrete_gaussian(0.0, &mut rng), 0);
        assert_eq!(DiscreteGaussian::new(0.0).unwrap().variance(), (0, 1));
        for bad in [-1.0, f64::NAN, f64::INFINITY, MAX_NOISE_STDDEV * 2.0] {
            assert!(matches!(
                DiscreteGaussian::new(bad),
                Err(ParamsError::NoiseStddev(_))
            ));
        }
    }

    #[test]
    fn variance_is_exact_and_never_below_the_request() {
        // 3^2 = 9 is representable: t = 4, m = 9 * 2^57 / 4 exactly.
        let (num, den) = DiscreteGaussian::new(3.0).unwrap().variance();
        assert_eq!(num, 9 * den);
        for sigma in [
            1e-30,
            1e-3,
            0.1,
            0.5,
            std::f64::consts::PI,
            100.0,
            1234.567,
            1e9,
            MAX_NOISE_STDDEV,
        ] {
            let g = DiscreteGaussian::new(sigma).unwrap();
            let (num, den) = g.variance();
            let ratio = num as f64 / den as f64 / (sigma * sigma);
            assert!(ratio >= 1.0 - 1e-15, "σ = {sigma}: {ratio}");
            if sigma >= 0.01 {
                assert!(ratio < 1.0 + 1e-12, "σ = {sigma}: {ratio}");
            }
            assert!(g.den < 1 << 120, "σ = {sigma}");
            let mut rng = ChaCha20Rng::seed_from_u64(2);
            let x = g.sample(&mut rng);
            assert!((x as f64).abs() < 20.0 * sigma + 1.0);
        }
    }

    #[test]
    fn wide_exponent_arithmetic() {
        let x = u128::MAX;
        let sq = U256::square(x);
        // (2^128 - 1)^2 = 2^256 - 2^129 + 1.
        assert_eq!((sq.hi, sq.lo), (u128::MAX - 1, 1));
        let x = (1u128 << 64) + 3;
        let sq = U256::square(x);
        assert_eq!((sq.hi, sq.lo), (1, (6u128 << 64) + 9));
        let m = U256 { hi: 1, lo: 0 }.minus(1);
        assert_eq!((m.hi, m.lo), (0, u128::MAX));
        // exp(-x²/den) with x² ≥ 2^128 and den = 2^120: γ ≥ 256, accepted with
        // probability below e^-256, i.e. never.
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        assert!((0..1000).all(|_| !bernoulli_exp_square(1 << 64, 1 << 120, &mut rng)));
    }

    #[test]
    fn bernoulli_exp_matches_its_probability() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let n = 200_000;
        for (num, den) in [(0u128, 1u128), (1, 3), (1, 1), (5, 2), (7, 2)] {
            let hits = (0..n).filter(|_| bernoulli_exp(num, den, &mut rng)).count();
            let p = (-(num as f64) / den as f64).exp();
            let got = hits as f64 / n as f64;
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!((got - p).abs() <= 5.0 * se, "{num}/{den}: {got} vs {p}");
        }
    }
}
