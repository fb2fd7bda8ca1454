//! Gaussian noise whose released values carry no trace of the input's low bits: the lattice
//! Gaussian mechanism behind both DP-SGD's noise (`harambee-models`) and the central
//! mechanism (`privacy.mechanism = "central"`, noise the coordinator adds to the sum of the
//! clipped updates; the distributed mechanism's noise is drawn by the agents, in
//! `harambee-secagg`).
//!
//! # Why not `x + N(0, σ²)` in floating point
//!
//! Mironov (2012, "On significance of the least significant bits for differential privacy")
//! showed that a textbook floating-point sample added to `x` breaks differential privacy: the
//! set of floating-point values that `x + noise` can take depends on `x`, so one released value
//! can rule out a neighbouring input, or name it exactly. Sampling from a continuous
//! distribution cannot fix that; the released value must be computed from the input in a way
//! that forgets its low bits before the noise is added.
//!
//! # The mechanism
//!
//! For a statistic `f` with values in `R^d` and L2 sensitivity `Δ` (adding or removing one
//! unit of privacy moves `f` by at most `Δ`) and a noise multiplier `z`:
//!
//! 1. **Grid.** `γ = 2^e`, the largest power of two with `γ·√d ≤ Δ / 4096` (a function of the
//!    public `Δ` and `d` only).
//! 2. **Snap.** `k = round(f / γ)`, coordinate by coordinate, as integers. Dividing by a power
//!    of two and rounding to an integer are exact in binary floating point, so `k` is exactly
//!    the nearest grid point's index (saturated at ±2^62, which only moves a coordinate towards
//!    the grid's range and so never increases a distance).
//! 3. **Noise.** `k + Y` with `Y_i` independent draws of the discrete Gaussian `N_Z(0, s²)`,
//!    `s = σ / γ`, sampled exactly with integer arithmetic
//!    ([`harambee_secagg::DiscreteGaussian`], Canonne, Kamath, Steinke 2020, Algorithm 3; its
//!    variance is rounded up, never down). The sum is taken in integers.
//! 4. **Release.** Only now is `(k + Y)·γ` converted to floating point. That conversion, and
//!    everything done with the value afterwards (dividing by a batch size or a total weight,
//!    an optimiser step, rounding to `f32`), is post-processing of the integer vector `k + Y`,
//!    whose support is all of `Z^d` whatever the input.
//!
//! # Sensitivity of the snapped statistic, and how it is paid for
//!
//! Snapping moves each coordinate by at most `γ/2`, so for neighbouring datasets `D`, `D'`
//! the triangle inequality gives `‖γk(D) − γk(D')‖₂ ≤ Δ + γ√d` (each side moves by up to
//! `γ√d/2`). Where each unit's contribution is snapped before the integer sum, as DP-SGD does
//! per example, the bound is `Δ + γ√d/2`; one rule covers both: the noise is calibrated to
//! `Δ' = Δ + γ√d`, `σ = z·Δ'` ([`LatticeGaussian::noise_stddev`]). The accountant is then fed
//! the same `z` as before, now the ratio of the noise to the snapped statistic's sensitivity,
//! so ε is unchanged; the price is noise at most `1 + 2^-12` times `z·Δ`. The margin also
//! covers the floating-point rounding in computing `f` itself (relative `2^-52` per operation,
//! against `2^-12`). Snapping biases each coordinate by at most `γ/2 ≤ Δ / 8192√d`.
//!
//! # What is proven, with the references
//!
//! - The discrete Gaussian on integers with L2 sensitivity `Δ'/γ` satisfies
//!   `½(Δ'/σ)²`-concentrated DP, that is `(α, αΔ'²/2σ²)`-Rényi DP for every α > 1, the
//!   continuous Gaussian's bound (Canonne, Kamath, Steinke 2020, Theorem 14 and its
//!   multivariate form). So one unsampled release (the central mechanism) has exactly the
//!   guarantee the accountant computes for `z`.
//! - Poisson-subsampled steps (DP-SGD) are accounted with the subsampled Gaussian's RDP
//!   (Mironov, Talwar, Zhang 2019). For the removal direction at integer orders this bound
//!   holds for the discrete Gaussian term by term: the privacy loss for an integer shift `v`
//!   is the continuous formula evaluated on the lattice, and the discrete Gaussian's moment
//!   generating function is at most the continuous one's (Canonne, Kamath, Steinke 2020,
//!   Corollary 9), so `E[(P/Q)^k] ≤ exp((k² − k)‖v‖²/2s²)`, the continuous term. The other
//!   direction and fractional orders follow the continuous analysis by the same closeness
//!   (`s` is above 4096·z·√d here) but are not proven separately in this crate.
//!
//! Nothing here reads a clock or owns randomness: the RNG is injected (the drivers seed a
//! CSPRNG from the operating system; tests seed it to reproduce a draw).

use harambee_secagg::DiscreteGaussian;
use rand_core::CryptoRng;
use thiserror::Error;

/// How much smaller than the sensitivity the snapping's contribution `γ√d` must be: `2^12`.
pub const GRID_FRACTION: f64 = 4096.0;

/// Parameters the lattice Gaussian refuses, each naming the value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MechanismError {
    #[error("sensitivity (clipping norm) must be positive and finite, got {0}")]
    Sensitivity(f64),
    #[error("noise multiplier must be non-negative and finite, got {0}")]
    NoiseMultiplier(f64),
    #[error("the statistic must have at least one coordinate")]
    Dimension,
    #[error(
        "noise standard deviation of {grid_units} grid steps is beyond the exact sampler's range; lower the noise multiplier {noise_multiplier}"
    )]
    TooMuchNoise {
        noise_multiplier: f64,
        grid_units: f64,
    },
}

/// The lattice Gaussian mechanism for one `d`-dimensional statistic of L2 sensitivity `Δ` at
/// noise multiplier `z`: grid `γ`, noise `N_Z(0, (σ/γ)²)` in grid steps, `σ = z (Δ + γ√d)`.
/// See the module docs for the argument.
#[derive(Debug, Clone, PartialEq)]
pub struct LatticeGaussian {
    /// γ = 2^grid_exp.
    grid_exp: i32,
    dim: usize,
    noise_stddev: f64,
    sampler: DiscreteGaussian,
}

impl LatticeGaussian {
    /// The mechanism for a statistic of `dim` coordinates whose L2 sensitivity is
    /// `sensitivity`, with noise standard deviation `noise_multiplier` times the snapped
    /// statistic's sensitivity. A zero multiplier gives no noise (and no privacy) but still
    /// snaps.
    pub fn new(
        sensitivity: f64,
        noise_multiplier: f64,
        dim: usize,
    ) -> Result<LatticeGaussian, MechanismError> {
        if !(sensitivity.is_finite() && sensitivity > 0.0) {
            return Err(MechanismError::Sensitivity(sensitivity));
        }
        if !(noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
            return Err(MechanismError::NoiseMultiplier(noise_multiplier));
        }
        if dim == 0 {
            return Err(MechanismError::Dimension);
        }
        let root_d = (dim as f64).sqrt();
        let target = sensitivity / GRID_FRACTION / root_d;
        // floor(log2(target)) from the float's exponent, then corrected exactly.
        let mut grid_exp = libm::floor(libm::log2(target)) as i32;
        while pow2(grid_exp) > target {
            grid_exp -= 1;
        }
        while pow2(grid_exp + 1) <= target {
            grid_exp += 1;
        }
        let grid = pow2(grid_exp);
        // σ/γ = z (Δ/γ + √d); Δ/γ is exact, the sum and product round by at most a few ulps,
        // which the factor rounds up.
        let grid_units = noise_multiplier * (sensitivity / grid + root_d) * (1.0 + 1e-12);
        let sampler =
            DiscreteGaussian::new(grid_units).map_err(|_| MechanismError::TooMuchNoise {
                noise_multiplier,
                grid_units,
            })?;
        Ok(LatticeGaussian {
            grid_exp,
            dim,
            noise_stddev: grid_units * grid,
            sampler,
        })
    }

    /// The grid spacing γ, a power of two with `γ√d ≤ Δ / 4096`.
    pub fn grid(&self) -> f64 {
        pow2(self.grid_exp)
    }

    /// The noise standard deviation σ in the statistic's units: `z (Δ + γ√d)`, at most
    /// `1 + 2^-12` times `z Δ`.
    pub fn noise_stddev(&self) -> f64 {
        self.noise_stddev
    }

    /// The number of coordinates the mechanism was calibrated for.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The index of the grid point nearest `x` (ties away from zero), saturated at ±2^62;
    /// NaN snaps to 0.
    pub fn snap(&self, x: f64) -> i64 {
        const LIMIT: f64 = (1u64 << 62) as f64;
        // Multiplying by a power of two is exact (barring overflow, which saturates anyway).
        let scaled = x * pow2(-self.grid_exp);
        scaled.round().clamp(-LIMIT, LIMIT) as i64
    }

    /// One noise draw, in grid steps.
    pub fn sample<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> i64 {
        self.sampler.sample(rng)
    }

    /// The released value of grid index `k`: `k γ` as `f64` (post-processing).
    pub fn value(&self, k: i128) -> f64 {
        k as f64 * pow2(self.grid_exp)
    }

    /// One noise draw per coordinate, to add later to a snapped statistic with
    /// [`LatticeNoise::release`].
    pub fn draw<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> LatticeNoise {
        LatticeNoise {
            mechanism: self.clone(),
            draws: (0..self.dim).map(|_| self.sample(rng)).collect(),
        }
    }
}

/// Noise drawn ahead of the statistic it will hide (the coordinator draws it when a round
/// starts): one discrete Gaussian draw per coordinate, on the mechanism's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct LatticeNoise {
    mechanism: LatticeGaussian,
    draws: Vec<i64>,
}

impl LatticeNoise {
    /// The number of coordinates.
    pub fn len(&self) -> usize {
        self.draws.len()
    }

    pub fn is_empty(&self) -> bool {
        self.draws.is_empty()
    }

    /// The mechanism the draws came from.
    pub fn mechanism(&self) -> &LatticeGaussian {
        &self.mechanism
    }

    /// The noisy statistic: each coordinate of `statistic` snapped to the grid, the noise
    /// added in integers, and only then converted, `(round(x/γ) + Y)·γ`. Coordinates beyond
    /// the shorter of the two lengths are not returned; callers check the length first.
    pub fn release(&self, statistic: &[f64]) -> Vec<f64> {
        statistic
            .iter()
            .zip(&self.draws)
            .map(|(&x, &y)| {
                self.mechanism
                    .value(i128::from(self.mechanism.snap(x)) + i128::from(y))
            })
            .collect()
    }
}

/// The central mechanism's noise for a sum of `n_params` coordinates whose L2 sensitivity is
/// `clip_norm`, at `noise_multiplier`: [`LatticeGaussian::new`] then
/// [`LatticeGaussian::draw`].
pub fn central_noise<R: CryptoRng + ?Sized>(
    rng: &mut R,
    n_params: usize,
    clip_norm: f64,
    noise_multiplier: f64,
) -> Result<LatticeNoise, MechanismError> {
    Ok(LatticeGaussian::new(clip_norm, noise_multiplier, n_params)?.draw(rng))
}

/// 2^exp as an `f64` (exact for exponents in the normal and subnormal range).
fn pow2(exp: i32) -> f64 {
    libm::ldexp(1.0, exp)
}

#[cfg(test)]
mod tests {
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn rng(seed: u8) -> ChaCha20Rng {
        ChaCha20Rng::from_seed([seed; 32])
    }

    #[test]
    fn the_grid_is_a_power_of_two_small_against_the_sensitivity() {
        for (clip, dim) in [(1.0, 1), (1.0, 2), (0.05, 31), (3.7, 10_000), (1e-6, 7)] {
            let m = LatticeGaussian::new(clip, 1.1, dim).unwrap();
            let grid = m.grid();
            assert_eq!(grid, pow2(grid.log2().round() as i32), "{clip}, {dim}");
            let snap_norm = grid * (dim as f64).sqrt();
            assert!(
                snap_norm <= clip / GRID_FRACTION,
                "{clip}, {dim}: γ = {grid}"
            );
            assert!(
                2.0 * snap_norm > clip / GRID_FRACTION,
                "{clip}, {dim}: γ = {grid}"
            );
            // σ = z (Δ + γ√d): never below, and within 2^-12 of z Δ.
            assert!(m.noise_stddev() >= 1.1 * (clip + snap_norm));
            assert!(m.noise_stddev() <= 1.1 * clip * (1.0 + 1.0 / GRID_FRACTION) * (1.0 + 1e-9));
        }
        assert_eq!(LatticeGaussian::new(1.0, 1.0, 1).unwrap().grid(), pow2(-12));
    }

    #[test]
    fn releases_are_grid_multiples_and_forget_the_bits_below_the_grid() {
        let noise = central_noise(&mut rng(3), 4, 1.0, 1.5).unwrap();
        let grid = noise.mechanism().grid();
        let x = [0.123_456_789, -2.5, 1e-9, 37.0];
        // The same statistic perturbed well below half a grid step, in its lowest bits.
        let y: Vec<f64> = x
            .iter()
            .map(|&v: &f64| f64::from_bits(v.to_bits() ^ 0b1011))
            .collect();
        assert_ne!(x[..], y[..]);
        let (rx, ry) = (noise.release(&x), noise.release(&y));
        assert_eq!(rx, ry, "the same noise hides both inputs identically");
        for (&r, &v) in rx.iter().zip(&x) {
            let steps = r / grid;
            assert_eq!(steps, steps.round(), "{r} is not a multiple of {grid}");
            assert!((r - v).abs() < 10.0 * noise.mechanism().noise_stddev());
        }
        // Fresh draws from one seed: two inputs that differ below the grid give the same
        // release, so they are identically distributed.
        let a = central_noise(&mut rng(9), 4, 1.0, 1.5).unwrap().release(&x);
        let b = central_noise(&mut rng(9), 4, 1.0, 1.5).unwrap().release(&y);
        assert_eq!(a, b);
    }

    #[test]
    fn snapping_is_exact_rounding_to_the_nearest_grid_point() {
        let m = LatticeGaussian::new(1.0, 0.0, 1).unwrap();
        let grid = m.grid();
        assert_eq!(m.snap(0.0), 0);
        assert_eq!(m.snap(3.0 * grid), 3);
        assert_eq!(m.snap(3.4 * grid), 3);
        assert_eq!(m.snap(-3.6 * grid), -4);
        assert_eq!(m.snap(f64::NAN), 0);
        assert_eq!(m.snap(f64::INFINITY), 1 << 62);
        // No noise: the release is the snapped input.
        let noise = m.draw(&mut rng(1));
        assert_eq!(noise.release(&[3.4 * grid]), [3.0 * grid]);
    }

    #[test]
    fn draws_have_the_calibrated_mean_and_variance() {
        let (clip, z, dim) = (2.0, 1.25, 200_000);
        let noise = central_noise(&mut rng(7), dim, clip, z).unwrap();
        let sigma = noise.mechanism().noise_stddev();
        assert!((sigma / (z * clip) - 1.0).abs() < 1.0 / GRID_FRACTION);
        let draws = noise.release(&vec![0.0; dim]);
        let n = draws.len() as f64;
        let mean = draws.iter().sum::<f64>() / n;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        // Standard errors: σ/√n ≈ 0.0056 for the mean, σ²·√(2/n) ≈ 0.0078 for the variance.
        assert!(mean.abs() < 5.0 * sigma / n.sqrt(), "mean {mean}");
        assert!(
            (var - sigma * sigma).abs() < 5.0 * sigma * sigma * (2.0 / n).sqrt(),
            "variance {var} vs {}",
            sigma * sigma
        );
        let same = central_noise(&mut rng(7), dim, clip, z).unwrap();
        assert_eq!(same, noise, "a seeded draw reproduces");
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        assert_eq!(
            LatticeGaussian::new(0.0, 1.0, 3),
            Err(MechanismError::Sensitivity(0.0))
        );
        assert!(matches!(
            LatticeGaussian::new(f64::NAN, 1.0, 3),
            Err(MechanismError::Sensitivity(_))
        ));
        assert_eq!(
            LatticeGaussian::new(1.0, -1.0, 3),
            Err(MechanismError::NoiseMultiplier(-1.0))
        );
        assert_eq!(
            LatticeGaussian::new(1.0, 1.0, 0),
            Err(MechanismError::Dimension)
        );
        let err = LatticeGaussian::new(1.0, 1e12, 3).unwrap_err();
        assert!(matches!(err, MechanismError::TooMuchNoise { .. }));
        assert!(err.to_string().contains("noise multiplier"), "{err}");
    }
}
