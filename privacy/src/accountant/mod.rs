//! Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism.
//!
//! One *step* samples each record (a patient in DP-SGD, a facility in DP-FedAvg) independently
//! with probability `sampling_rate`, clips each sampled record's contribution to L2 norm `C`,
//! sums, and adds Gaussian noise of standard deviation `noise_multiplier · C`. The accountant
//! tracks the RDP of every order on a grid ([`default_orders`]), adds it up over steps (RDP
//! composes additively), and converts to (ε, δ) by minimising over orders with the conversion
//! of Balle et al. 2020 (Prop. 12 of arXiv:2004.00010; also Canonne, Kamath, Steinke 2020):
//!
//! `ε = rdp(α) + ln(1 - 1/α) - (ln δ + ln α) / (α - 1)`,
//!
//! or `ε = 0` when `δ ≥ √(1 - e^{-rdp(α)})` (the KL bound), as Google's `dp-accounting` does.
//! RDP per order: [`rdp_subsampled_gaussian`] (Mironov, Talwar, Zhang 2019), exact at integer
//! orders and by the convergent two-sided series at fractional ones.
//!
//! Agreement with `dp-accounting` 0.6.0 is a test (`tests/accountant_reference.rs`, fixture made
//! by `tests/fixtures/generate_reference.py`): never more than 1% above its RDP ε, never below
//! its PLD ε. The default grid contains every order of `dp-accounting`'s default grid, so the
//! result is never above its RDP result except by rounding.
//!
//! Neighbouring datasets differ by adding or removing one record. Nothing here reads a clock or
//! draws random numbers.

mod logmath;
mod rdp;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Bad input to the accountant; each names the value that was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AccountantError {
    #[error("noise multiplier must be positive and finite, got {0}")]
    NoiseMultiplier(f64),
    #[error("sampling rate must be in [0, 1], got {0}")]
    SamplingRate(f64),
    #[error("delta must be in (0, 1), got {0}")]
    Delta(f64),
    #[error("maximum epsilon must be non-negative and finite, got {0}")]
    MaxEpsilon(f64),
    #[error("RDP orders must be finite and above 1, got {0}")]
    Order(f64),
    #[error("accountant state has {orders} orders but {rdp} RDP values")]
    LengthMismatch { orders: usize, rdp: usize },
    #[error("accountant state holds a negative or NaN RDP value {0}")]
    Rdp(f64),
    #[error("no RDP order gives a finite epsilon")]
    Unbounded,
}

/// An (ε, δ) guarantee and the RDP order that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpsilonReport {
    pub epsilon: f64,
    pub delta: f64,
    /// The order α at which the conversion was tightest.
    pub order: f64,
}

/// A facility's budget: the most ε it accepts, measured at `delta`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BudgetFields")]
pub struct Budget {
    max_epsilon: f64,
    delta: f64,
}

#[derive(Deserialize)]
struct BudgetFields {
    max_epsilon: f64,
    delta: f64,
}

impl TryFrom<BudgetFields> for Budget {
    type Error = AccountantError;
    fn try_from(fields: BudgetFields) -> Result<Budget, AccountantError> {
        Budget::new(fields.max_epsilon, fields.delta)
    }
}

impl Budget {
    pub fn new(max_epsilon: f64, delta: f64) -> Result<Budget, AccountantError> {
        if !(max_epsilon.is_finite() && max_epsilon >= 0.0) {
            return Err(AccountantError::MaxEpsilon(max_epsilon));
        }
        check_delta(delta)?;
        Ok(Budget { max_epsilon, delta })
    }

    pub fn max_epsilon(&self) -> f64 {
        self.max_epsilon
    }

    pub fn delta(&self) -> f64 {
        self.delta
    }
}

/// The outcome of [`RdpAccountant::check`]: ε now, ε if the planned work were done, and the cap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetCheck {
    pub spent: EpsilonReport,
    pub after: EpsilonReport,
    pub max_epsilon: f64,
}

impl BudgetCheck {
    /// Whether the planned work keeps ε within the budget.
    pub fn fits(&self) -> bool {
        self.after.epsilon <= self.max_epsilon
    }
}

/// The default grid of RDP orders: 1.1 to 10.9 in steps of 0.1, every integer from 11 to 64,
/// then 80, 96, 128, 192, 256, 384, 512, 768, 1024.
///
/// It contains every order of `dp-accounting`'s `DEFAULT_RDP_ORDERS` (written the same way,
/// `1 + x/10`, so the values are bit-identical), plus a few large ones for very private regimes.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..=64).map(f64::from));
    orders.extend([80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0]);
    orders
}

/// ε at `delta` after `steps` steps of the Poisson-subsampled Gaussian mechanism, on the
/// default grid of orders. What `harambee-coordinator privacy epsilon` prints.
pub fn epsilon(
    noise_multiplier: f64,
    sampling_rate: f64,
    steps: u64,
    delta: f64,
) -> Result<EpsilonReport, AccountantError> {
    let mut accountant = RdpAccountant::new();
    accountant.compose(noise_multiplier, sampling_rate, steps)?;
    accountant.epsilon(delta)
}

/// RDP of one step of the Poisson-subsampled Gaussian mechanism at `order` (> 1).
///
/// `+inf` at a fractional order whose series does not converge in 1000 terms (such an order is
/// then useless, never wrong).
pub fn rdp_subsampled_gaussian(
    noise_multiplier: f64,
    sampling_rate: f64,
    order: f64,
) -> Result<f64, AccountantError> {
    check_mechanism(noise_multiplier, sampling_rate)?;
    check_order(order)?;
    Ok(rdp::subsampled_gaussian(
        sampling_rate,
        noise_multiplier,
        order,
    ))
}

/// The tightest ε at `delta` over the given (order, RDP) pairs (see the module docs for the
/// conversion). Orders at or below 1.01 are skipped, as in `dp-accounting`, because the
/// conversion is numerically unstable there.
pub fn epsilon_from_rdp(
    orders: &[f64],
    rdp: &[f64],
    delta: f64,
) -> Result<EpsilonReport, AccountantError> {
    check_delta(delta)?;
    if orders.len() != rdp.len() {
        return Err(AccountantError::LengthMismatch {
            orders: orders.len(),
            rdp: rdp.len(),
        });
    }
    let mut best: Option<EpsilonReport> = None;
    for (&order, &r) in orders.iter().zip(rdp) {
        check_order(order)?;
        if r.is_nan() || r < 0.0 {
            return Err(AccountantError::Rdp(r));
        }
        let epsilon = if delta * delta + (-r).exp_m1() > 0.0 {
            // δ ≥ √(1 - e^{-KL}) bounds the total variation, and KL ≤ RDP at any order ≥ 1.
            0.0
        } else if order > 1.01 {
            r + (-1.0 / order).ln_1p() - (delta * order).ln() / (order - 1.0)
        } else {
            f64::INFINITY
        };
        // Strictly smaller: the first order wins ties, like numpy's argmin.
        if epsilon.is_finite() && best.is_none_or(|b| epsilon < b.epsilon) {
            best = Some(EpsilonReport {
                epsilon,
                delta,
                order,
            });
        }
    }
    let best = best.ok_or(AccountantError::Unbounded)?;
    Ok(EpsilonReport {
        epsilon: best.epsilon.max(0.0),
        ..best
    })
}

/// A running RDP total over a grid of orders: the privacy spent so far by one facility (on its
/// patients, in its agent) or by one federation's facility sampling (on the coordinator).
///
/// Serializes to JSON as `{"orders": [...], "rdp": [...], "steps": n}` (an unusable order's
/// `+inf` is written as `null`); deserializing checks the state as [`RdpAccountant::with_orders`]
/// does, so a persisted accountant is reloaded as it was saved or refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AccountantState", into = "AccountantState")]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
    steps: u64,
}

impl Default for RdpAccountant {
    fn default() -> RdpAccountant {
        RdpAccountant::new()
    }
}

impl RdpAccountant {
    /// Nothing spent, on the [`default_orders`].
    pub fn new() -> RdpAccountant {
        let orders = default_orders();
        let rdp = vec![0.0; orders.len()];
        RdpAccountant {
            orders,
            rdp,
            steps: 0,
        }
    }

    /// Nothing spent, on the given orders (each finite and above 1).
    pub fn with_orders(orders: Vec<f64>) -> Result<RdpAccountant, AccountantError> {
        orders.iter().try_for_each(|&o| check_order(o))?;
        let rdp = vec![0.0; orders.len()];
        Ok(RdpAccountant {
            orders,
            rdp,
            steps: 0,
        })
    }

    /// An accountant on the [`default_orders`] holding `rdp` (as reported by an agent in its
    /// heartbeat, so a coordinator can ask what one more round would cost). Each value must be
    /// non-negative (`+inf` allowed), one per default order.
    pub fn from_rdp(rdp: Vec<f64>) -> Result<RdpAccountant, AccountantError> {
        let orders = default_orders();
        if rdp.len() != orders.len() {
            return Err(AccountantError::LengthMismatch {
                orders: orders.len(),
                rdp: rdp.len(),
            });
        }
        if let Some(&bad) = rdp.iter().find(|x| x.is_nan() || **x < 0.0) {
            return Err(AccountantError::Rdp(bad));
        }
        Ok(RdpAccountant {
            orders,
            rdp,
            steps: 0,
        })
    }

    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The accumulated RDP at each of [`RdpAccountant::orders`].
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// Steps composed so far (all mechanisms together).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Adds `steps` steps of the Poisson-subsampled Gaussian mechanism. On error nothing is added.
    pub fn compose(
        &mut self,
        noise_multiplier: f64,
        sampling_rate: f64,
        steps: u64,
    ) -> Result<(), AccountantError> {
        self.rdp = self.rdp_after(noise_multiplier, sampling_rate, steps)?;
        self.steps = self.steps.saturating_add(steps);
        Ok(())
    }

    /// ε at `delta` spent so far (0 before anything is composed).
    pub fn epsilon(&self, delta: f64) -> Result<EpsilonReport, AccountantError> {
        epsilon_from_rdp(&self.orders, &self.rdp, delta)
    }

    /// ε at `delta` spent so far, as one number for reports: 0 while nothing has been
    /// spent, infinity when it cannot be computed (a `delta` out of range).
    pub fn epsilon_spent(&self, delta: f64) -> f64 {
        if self.rdp.iter().all(|&x| x == 0.0) {
            return 0.0;
        }
        self.epsilon(delta).map_or(f64::INFINITY, |r| r.epsilon)
    }

    /// ε at `delta` as it would be after composing the planned steps, without composing them.
    pub fn spent_if(
        &self,
        noise_multiplier: f64,
        sampling_rate: f64,
        steps: u64,
        delta: f64,
    ) -> Result<EpsilonReport, AccountantError> {
        epsilon_from_rdp(
            &self.orders,
            &self.rdp_after(noise_multiplier, sampling_rate, steps)?,
            delta,
        )
    }

    /// Checks planned work against a budget without composing it: the agent calls this before
    /// accepting a task and [`RdpAccountant::compose`] once the update has left.
    pub fn check(
        &self,
        noise_multiplier: f64,
        sampling_rate: f64,
        steps: u64,
        budget: &Budget,
    ) -> Result<BudgetCheck, AccountantError> {
        Ok(BudgetCheck {
            spent: self.epsilon(budget.delta)?,
            after: self.spent_if(noise_multiplier, sampling_rate, steps, budget.delta)?,
            max_epsilon: budget.max_epsilon,
        })
    }

    fn rdp_after(
        &self,
        noise_multiplier: f64,
        sampling_rate: f64,
        steps: u64,
    ) -> Result<Vec<f64>, AccountantError> {
        check_mechanism(noise_multiplier, sampling_rate)?;
        // u64 → f64 is exact up to 2^53 steps, far beyond any schedule.
        let n = steps as f64;
        Ok(self
            .orders
            .iter()
            .zip(&self.rdp)
            .map(|(&order, &total)| {
                if steps == 0 {
                    total
                } else {
                    total + n * rdp::subsampled_gaussian(sampling_rate, noise_multiplier, order)
                }
            })
            .collect())
    }
}

/// The serialized form of [`RdpAccountant`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountantState {
    orders: Vec<f64>,
    /// `None` stands for `+inf` (JSON has no infinity).
    rdp: Vec<Option<f64>>,
    steps: u64,
}

impl From<RdpAccountant> for AccountantState {
    fn from(a: RdpAccountant) -> AccountantState {
        let rdp = a.rdp.iter().map(|&r| r.is_finite().then_some(r)).collect();
        AccountantState {
            orders: a.orders,
            rdp,
            steps: a.steps,
        }
    }
}

impl TryFrom<AccountantState> for RdpAccountant {
    type Error = AccountantError;
    fn try_from(s: AccountantState) -> Result<RdpAccountant, AccountantError> {
        if s.orders.len() != s.rdp.len() {
            return Err(AccountantError::LengthMismatch {
                orders: s.orders.len(),
                rdp: s.rdp.len(),
            });
        }
        s.orders.iter().try_for_each(|&o| check_order(o))?;
        let rdp: Vec<f64> = s
            .rdp
            .into_iter()
            .map(|r| r.unwrap_or(f64::INFINITY))
            .collect();
        if let Some(&bad) = rdp.iter().find(|r| r.is_nan() || **r < 0.0) {
            return Err(AccountantError::Rdp(bad));
        }
        Ok(RdpAccountant {
            orders: s.orders,
            rdp,
            steps: s.steps,
        })
    }
}

fn check_mechanism(noise_multiplier: f64, sampling_rate: f64) -> Result<(), AccountantError> {
    if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
        return Err(AccountantError::NoiseMultiplier(noise_multiplier));
    }
    if !(0.0..=1.0).contains(&sampling_rate) {
        return Err(AccountantError::SamplingRate(sampling_rate));
    }
    Ok(())
}

fn check_delta(delta: f64) -> Result<(), AccountantError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(AccountantError::Delta(delta));
    }
    Ok(())
}

fn check_order(order: f64) -> Result<(), AccountantError> {
    if !(order.is_finite() && order > 1.0) {
        return Err(AccountantError::Order(order));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_are_refused_by_name() {
        assert_eq!(
            epsilon(0.0, 0.1, 10, 1e-5),
            Err(AccountantError::NoiseMultiplier(0.0))
        );
        assert_eq!(
            epsilon(-1.0, 0.1, 10, 1e-5),
            Err(AccountantError::NoiseMultiplier(-1.0))
        );
        assert!(matches!(
            epsilon(f64::NAN, 0.1, 10, 1e-5),
            Err(AccountantError::NoiseMultiplier(_))
        ));
        assert_eq!(
            epsilon(1.0, 1.5, 10, 1e-5),
            Err(AccountantError::SamplingRate(1.5))
        );
        assert_eq!(
            epsilon(1.0, -0.1, 10, 1e-5),
            Err(AccountantError::SamplingRate(-0.1))
        );
        assert!(matches!(
            epsilon(1.0, f64::NAN, 10, 1e-5),
            Err(AccountantError::SamplingRate(_))
        ));
        assert_eq!(epsilon(1.0, 0.1, 10, 0.0), Err(AccountantError::Delta(0.0)));
        assert_eq!(epsilon(1.0, 0.1, 10, 1.0), Err(AccountantError::Delta(1.0)));
        assert_eq!(
            RdpAccountant::with_orders(vec![2.0, 1.0]),
            Err(AccountantError::Order(1.0))
        );
        assert_eq!(
            Budget::new(-1.0, 1e-5),
            Err(AccountantError::MaxEpsilon(-1.0))
        );
        assert_eq!(
            epsilon_from_rdp(&[2.0], &[1.0, 2.0], 1e-5),
            Err(AccountantError::LengthMismatch { orders: 1, rdp: 2 })
        );
    }

    #[test]
    fn nothing_spent_is_zero_and_no_sampling_is_free() {
        assert_eq!(RdpAccountant::new().epsilon(1e-5).unwrap().epsilon, 0.0);
        assert_eq!(epsilon(1.0, 0.0, 1000, 1e-5).unwrap().epsilon, 0.0);
        assert_eq!(epsilon(1.0, 0.1, 0, 1e-5).unwrap().epsilon, 0.0);
    }

    #[test]
    fn epsilon_grows_with_steps_and_sampling_and_shrinks_with_noise() {
        let e = |z, q, t| epsilon(z, q, t, 1e-5).unwrap().epsilon;
        assert!(e(1.0, 0.01, 100) < e(1.0, 0.01, 1000));
        assert!(e(1.0, 0.01, 100) < e(1.0, 0.02, 100));
        assert!(e(2.0, 0.01, 100) < e(1.0, 0.01, 100));
    }

    /// Abadi et al. 2016 report (2.55, 1e-5) for q = 0.01, σ = 4, 10,000 steps with the moments
    /// accountant (integer orders only, the loose conversion); the RDP accountant with the tight
    /// conversion must do at least that well, and not absurdly better.
    #[test]
    fn abadi_mnist_setting_is_in_the_expected_range() {
        let report = epsilon(4.0, 0.01, 10_000, 1e-5).unwrap();
        assert!(report.epsilon < 2.55 && report.epsilon > 1.0, "{report:?}");
    }

    #[test]
    fn composing_in_parts_equals_composing_at_once() {
        let mut a = RdpAccountant::new();
        a.compose(1.1, 0.01, 300).unwrap();
        a.compose(1.1, 0.01, 700).unwrap();
        let parts = a.epsilon(1e-5).unwrap();
        let whole = epsilon(1.1, 0.01, 1000, 1e-5).unwrap();
        assert!((parts.epsilon - whole.epsilon).abs() < 1e-9 * whole.epsilon);
        assert_eq!(a.steps(), 1000);
    }

    #[test]
    fn spent_if_and_check_do_not_commit() {
        let mut a = RdpAccountant::new();
        a.compose(1.0, 0.05, 100).unwrap();
        let before = a.clone();
        let planned = a.spent_if(1.0, 0.05, 100, 1e-5).unwrap();
        assert_eq!(a, before);
        a.compose(1.0, 0.05, 100).unwrap();
        assert_eq!(a.epsilon(1e-5).unwrap(), planned);

        let spent = a.epsilon(1e-5).unwrap().epsilon;
        let budget = Budget::new(spent + 1e-6, 1e-5).unwrap();
        let check = a.check(1.0, 0.05, 100, &budget).unwrap();
        assert!(!check.fits());
        assert_eq!(check.spent.epsilon, spent);
        let roomy = Budget::new(100.0, 1e-5).unwrap();
        assert!(a.check(1.0, 0.05, 100, &roomy).unwrap().fits());
        // A failed composition changes nothing.
        let before = a.clone();
        assert!(a.compose(0.0, 0.05, 1).is_err());
        assert_eq!(a, before);
    }

    #[test]
    fn state_round_trips_through_json_and_bad_state_is_refused() {
        let mut a = RdpAccountant::new();
        a.compose(0.8, 0.02, 5000).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        let back: RdpAccountant = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);

        let mut b = RdpAccountant::with_orders(vec![1.5, 2.0]).unwrap();
        b.rdp[0] = f64::INFINITY;
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.contains("null"), "{json}");
        assert_eq!(serde_json::from_str::<RdpAccountant>(&json).unwrap(), b);

        let bad = r#"{"orders":[1.5,2.0],"rdp":[0.1],"steps":1}"#;
        assert!(serde_json::from_str::<RdpAccountant>(bad).is_err());
        let bad = r#"{"orders":[0.5],"rdp":[0.1],"steps":1}"#;
        assert!(serde_json::from_str::<RdpAccountant>(bad).is_err());
        let bad = r#"{"orders":[2.0],"rdp":[-0.1],"steps":1}"#;
        assert!(serde_json::from_str::<RdpAccountant>(bad).is_err());
    }

    #[test]
    fn default_grid_contains_dp_accounting_grid() {
        let ours = default_orders();
        let theirs = (1..100)
            .map(|x| 1.0 + f64::from(x) / 10.0)
            .chain((11..64).map(f64::from))
            .chain([128.0, 256.0, 512.0, 1024.0]);
        for order in theirs {
            assert!(ours.contains(&order), "missing order {order}");
        }
    }
}
