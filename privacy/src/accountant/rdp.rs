//! Rényi DP of one step of the Poisson-subsampled Gaussian mechanism.
//!
//! With sampling rate `q` and noise multiplier `σ` (noise standard deviation over L2
//! sensitivity), one step at order `α` has RDP `ln(A_α) / (α - 1)` where
//! `A_α = E_{z~μ0} [(1 - q + q·μ1(z)/μ0(z))^α]`, `μ0 = N(0, σ²)`, `μ1 = N(1, σ²)` (Mironov,
//! Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
//! arXiv:1908.10530; add-or-remove-one neighbours). The numerics follow Google's
//! `dp-accounting` 0.6.0 (`rdp_privacy_accountant.py`) term for term, so the two agree to
//! rounding on every order both evaluate.

use std::f64::consts::SQRT_2;

use super::logmath::{log_add, log_comb, log_erfc};

/// The fractional-order series is abandoned (the order is then unusable, RDP `+inf`) if it has
/// not converged after this many terms, as in `dp-accounting`.
const MAX_FRAC_TERMS: u32 = 1000;

/// RDP of one step at `order`. Inputs are checked by the caller: `sigma > 0`, `q ∈ [0, 1]`,
/// `order > 1` and finite. May be `+inf` when the fractional series does not converge.
pub(crate) fn subsampled_gaussian(q: f64, sigma: f64, order: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if q == 1.0 {
        return order / (2.0 * sigma * sigma);
    }
    let log_a = if order.fract() == 0.0 {
        log_a_int(q, sigma, order)
    } else {
        log_a_frac(q, sigma, order)
    };
    let rdp = log_a / (order - 1.0);
    // RDP is never negative; rounding can make a vanishing value slightly so. A NaN would only
    // come from overflow: treat that order as unusable rather than as free.
    if rdp.is_nan() {
        f64::INFINITY
    } else {
        rdp.max(0.0)
    }
}

/// `ln A_α` for integer `α`, exactly: the binomial expansion of `(1 - q + q·μ1/μ0)^α` has
/// `α + 1` terms, each a Gaussian moment in closed form (MTZ 2019, Sec. 3.2):
/// `A_α = Σ_i binom(α, i) (1-q)^{α-i} q^i exp((i² - i) / (2σ²))`.
fn log_a_int(q: f64, sigma: f64, order: f64) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let two_var = 2.0 * sigma * sigma;
    let mut log_a = f64::NEG_INFINITY;
    let mut i = 0.0;
    while i <= order {
        let log_coef = log_comb(order, i) + i * log_q + (order - i) * log_1mq;
        log_a = log_add(log_a, log_coef + (i * i - i) / two_var);
        i += 1.0;
    }
    log_a
}

/// `ln A_α` for fractional `α` (MTZ 2019, Sec. 3.3): split the integral at
/// `z0 = σ² ln(1/q - 1) + 1/2`, where `q·μ1/μ0 = 1 - q`, and expand the binomial series on each
/// side in the direction in which it converges; each term is a truncated Gaussian moment, hence
/// the `erfc` factors. As in `dp-accounting` 0.6.0 the terms are added by magnitude, which
/// bounds `A_α` from above (the true series alternates in sign once `i > α`), so the RDP is
/// never understated. Stops when both sides' terms are decreasing and below `e^-30` of the sum.
fn log_a_frac(q: f64, sigma: f64, order: f64) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let two_var = 2.0 * sigma * sigma;
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let log_half = 0.5f64.ln();
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for i in 0..MAX_FRAC_TERMS {
        let i = f64::from(i);
        let j = order - i;
        let log_coef = log_comb(order, i);
        let log_t0 = log_coef + i * log_q + j * log_1mq;
        let log_t1 = log_coef + j * log_q + i * log_1mq;
        let log_e0 = log_half + log_erfc((i - z0) / (SQRT_2 * sigma));
        let log_e1 = log_half + log_erfc((z0 - j) / (SQRT_2 * sigma));
        let log_s0 = log_t0 + (i * i - i) / two_var + log_e0;
        let log_s1 = log_t1 + (j * j - j) / two_var + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by dp-accounting 0.6.0,
    /// `rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(q, z, [order])`.
    #[test]
    fn matches_dp_accounting_on_single_orders() {
        let cases = [
            // (q, z, order, rdp)
            (0.01, 1.1, 2.0, 0.000_128_510_081_605_165_42),
            (0.01, 1.1, 32.0, 8.469_416_433_675_926),
            (0.01, 1.1, 2.5, 0.000_162_152_197_555_063_63),
            (0.1, 0.7, 7.3, 4.780_932_006_561_874),
            (0.001, 3.0, 1.1, 6.508_981_755_034_857e-8),
            (0.5, 2.0, 256.0, 31.304_134_595_202_566),
        ];
        for (q, z, order, want) in cases {
            let got = subsampled_gaussian(q, z, order);
            assert!(
                (got - want).abs() <= 1e-9 * want,
                "q={q} z={z} order={order}: got {got}, want {want}"
            );
        }
    }

    #[test]
    fn vanishing_sampling_rates_give_tiny_non_negative_rdp() {
        // dp-accounting returns -6.6e-315 at q = 1e-300, α = 1.1: rounding, clamped here. (Very
        // high orders are not tiny even then: at α = 1024, σ = 1 the last binomial term wins.)
        for q in [1e-300, 1e-15] {
            for order in [1.1, 1.5, 2.0, 7.5, 64.0] {
                let r = subsampled_gaussian(q, 1.0, order);
                assert!((0.0..1e-6).contains(&r), "q={q} α={order}: {r}");
            }
        }
    }

    #[test]
    fn full_batch_is_the_gaussian_mechanism() {
        assert_eq!(subsampled_gaussian(1.0, 2.0, 3.0), 3.0 / 8.0);
        assert_eq!(subsampled_gaussian(0.0, 2.0, 3.0), 0.0);
    }

    /// The fractional series is continuous in the order: just above an integer it lands on the
    /// exact integer-order value.
    #[test]
    fn fractional_method_meets_integer_method_near_integer_orders() {
        for (q, sigma) in [(0.01, 1.0), (0.1, 2.0), (0.3, 0.8)] {
            for order in [2.0, 3.0, 8.0, 20.0] {
                let exact = subsampled_gaussian(q, sigma, order);
                let series = subsampled_gaussian(q, sigma, order + 1e-9);
                assert!(
                    (exact - series).abs() < 1e-6 * exact,
                    "q={q} σ={sigma} α={order}: {exact} vs {series}"
                );
            }
        }
    }
}
