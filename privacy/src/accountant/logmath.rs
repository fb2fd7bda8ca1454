//! Arithmetic in log space and the two special functions the accountant needs.

use std::f64::consts::PI;

/// `ln(e^x + e^y)` without overflow; `-inf` is the log of zero.
pub(crate) fn log_add(x: f64, y: f64) -> f64 {
    let (small, big) = if x < y { (x, y) } else { (y, x) };
    if small == f64::NEG_INFINITY {
        return big;
    }
    (small - big).exp().ln_1p() + big
}

/// `ln |binom(n, k)|` for real `n` and `k`, through `ln |Γ|` (defined for negative non-integer
/// arguments, which the fractional-order series reaches once `k > n + 1`).
pub(crate) fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `ln erfc(x)`, accurate where `erfc(x)` itself would underflow.
///
/// Up to `x = 25` (`erfc(25) ≈ 8e-274`, still a normal double) it is the log of libm's `erfc`,
/// which is accurate to about an ulp over its whole range. Beyond, the asymptotic expansion
/// `erfc(x) = e^{-x²} / (x √π) · Σ_k (-1)^k (2k-1)!! / (2x²)^k`, whose truncation error after
/// eight terms at `x > 25` is below 1e-25.
pub(crate) fn log_erfc(x: f64) -> f64 {
    if x <= 25.0 {
        return libm::erfc(x).ln();
    }
    let x2 = x * x;
    let inv = 1.0 / (2.0 * x2);
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..=8 {
        term *= -f64::from(2 * k - 1) * inv;
        sum += term;
    }
    -x2 - x.ln() - 0.5 * PI.ln() + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_add_matches_direct_sum() {
        let (x, y) = (-1.5_f64, 0.25_f64);
        let direct = (x.exp() + y.exp()).ln();
        assert!((log_add(x, y) - direct).abs() < 1e-15);
        assert_eq!(log_add(f64::NEG_INFINITY, y), y);
        assert_eq!(log_add(x, f64::NEG_INFINITY), x);
        assert_eq!(
            log_add(f64::NEG_INFINITY, f64::NEG_INFINITY),
            f64::NEG_INFINITY
        );
    }

    #[test]
    fn log_comb_matches_integer_binomials_and_real_ones() {
        // binom(10, 3) = 120.
        assert!((log_comb(10.0, 3.0) - 120f64.ln()).abs() < 1e-12);
        // binom(2.5, 4) = 2.5·1.5·0.5·(-0.5)/24 = -0.0390625.
        assert!((log_comb(2.5, 4.0) - 0.0390625f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn log_erfc_is_continuous_across_the_switch_and_right_in_the_tail() {
        let below = log_erfc(25.0);
        let above = log_erfc(25.0 + 1e-9);
        assert!((below - above).abs() < 1e-6, "{below} vs {above}");
        // ln erfc(30) = -903.974117 (mpmath: -903.97411711064...).
        assert!(
            (log_erfc(30.0) - -903.974_117_110_64).abs() < 1e-9,
            "{}",
            log_erfc(30.0)
        );
        // Negative arguments: erfc(-3) = 1.999977909503...
        assert!((log_erfc(-3.0) - 1.999_977_909_503_001_4f64.ln()).abs() < 1e-14);
    }
}
