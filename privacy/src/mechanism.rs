//! The central Gaussian mechanism: noise the coordinator adds to the sum of clipped updates
//! before it takes the mean (`privacy.mechanism = "central"`, which trusts the coordinator;
//! the distributed mechanism's noise is drawn by the agents, in `harambee-secagg`).

use rand_core::CryptoRng;

/// `n` independent draws of N(0, σ²), from `rng` (the driver seeds it from the operating
/// system; tests seed it to reproduce a draw).
pub fn gaussian_noise<R: CryptoRng + ?Sized>(rng: &mut R, n: usize, sigma: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // Box–Muller on two uniforms, u1 in (0, 1] so that its logarithm is finite.
            let u1 = 1.0 - unit(rng);
            let u2 = unit(rng);
            (sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// A uniform draw from [0, 1) with 53 random bits.
fn unit<R: CryptoRng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn draws_have_the_calibrated_mean_and_variance() {
        let sigma = 2.5;
        let n = 200_000;
        let draws = gaussian_noise(&mut ChaCha20Rng::from_seed([7; 32]), n, sigma);
        let mean = draws.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = draws
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / (n - 1) as f64;
        // Standard errors: σ/√n ≈ 0.0056 for the mean, σ²·√(2/n) ≈ 0.02 for the variance.
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - sigma * sigma).abs() < 0.1, "variance {var}");
        let same = gaussian_noise(&mut ChaCha20Rng::from_seed([7; 32]), 5, sigma);
        assert_eq!(same[..], draws[..5], "a seeded draw reproduces");
    }
}
