//! Server-side optimizers: how the coordinator turns the round's mean update into the next
//! global model.
//!
//! Every strategy here consumes only the **sample-weighted mean delta** of the round,
//! `Δ = Σ n_i (x_i − x) / Σ n_i` (each agent's update is its local parameters minus the base
//! `x`), which is exactly what secure aggregation reveals (the sum and the total weight). None
//! needs an individual update. Their state (moments) lives in [`ServerOptimizer`], which is
//! serde-serializable so the coordinator can persist it with each model version and resume
//! after a restart.
//!
//! - FedAvg (McMahan et al. 2017): `x ← x + Δ`.
//! - FedAvgM (Hsu et al. 2019): `v ← β v + Δ`, `x ← x + η v`.
//! - FedProx (Li et al. 2020): the server step of FedAvg; the difference is the proximal term
//!   `μ/2 ||w − x||²` in local training ([`StrategyConfig::proximal_mu`]).
//! - FedAdagrad, FedYogi, FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization",
//!   Algorithm 2), with `m_{-1} = 0` and `v_{-1} = τ²`:
//!   `m ← β1 m + (1 − β1) Δ`, then
//!   FedAdagrad `v ← v + Δ²`, FedYogi `v ← v − (1 − β2) Δ² sign(v − Δ²)`, FedAdam
//!   `v ← β2 v + (1 − β2) Δ²`, and `x ← x + η m / (√v + τ)`, all per coordinate and, as in the
//!   paper, without bias correction.
//!
//! For a personalized model (FedPer) the coordinator steps the federated prefix only.

use serde::{Deserialize, Serialize};

/// The federation's choice of server strategy, as written in its configuration
/// (`[strategy]` with `kind = "fedadam"`, `eta = 0.05`, ...). Omitted fields take the defaults
/// documented on each field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Federated averaging: the new model is the base plus the mean delta. The default.
    #[default]
    #[serde(rename = "fedavg")]
    FedAvg,
    /// FedAvg with server momentum.
    #[serde(rename = "fedavgm")]
    FedAvgM {
        /// Server learning rate `η`; default 0.1.
        #[serde(default = "default_fedavgm_lr")]
        eta: f64,
        /// Momentum `β`; default 0.9. The effective step in a steady state is `η / (1 − β)`
        /// times the mean delta (1 with the defaults, Hsu et al.'s recommendation).
        #[serde(default = "default_momentum")]
        momentum: f64,
    },
    /// FedAvg on the server, with the proximal term `μ/2 ||w − w_global||²` in local training.
    #[serde(rename = "fedprox")]
    FedProx {
        /// `μ`; default 0.01.
        #[serde(default = "default_mu")]
        mu: f64,
    },
    /// Adaptive server optimizer with Adam's second moment.
    #[serde(rename = "fedadam")]
    FedAdam {
        /// Server learning rate `η`; default 0.01.
        #[serde(default = "default_eta")]
        eta: f64,
        /// First-moment decay `β1`; default 0.9.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay `β2`; default 0.99.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Adaptivity `τ` (added to `√v`, and `v` starts at `τ²`); default 1e-3.
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// Adaptive server optimizer with Yogi's additive second moment.
    #[serde(rename = "fedyogi")]
    FedYogi {
        /// Server learning rate `η`; default 0.01.
        #[serde(default = "default_eta")]
        eta: f64,
        /// First-moment decay `β1`; default 0.9.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment rate `β2`; default 0.99.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Adaptivity `τ`; default 1e-3.
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// Adaptive server optimizer with Adagrad's accumulated second moment.
    #[serde(rename = "fedadagrad")]
    FedAdagrad {
        /// Server learning rate `η`; default 0.01.
        #[serde(default = "default_eta")]
        eta: f64,
        /// First-moment decay `β1`; default 0.9.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Adaptivity `τ`; default 1e-3.
        #[serde(default = "default_tau")]
        tau: f64,
    },
}

fn default_fedavgm_lr() -> f64 {
    0.1
}
fn default_momentum() -> f64 {
    0.9
}
fn default_mu() -> f64 {
    0.01
}
fn default_eta() -> f64 {
    0.01
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.99
}
fn default_tau() -> f64 {
    1e-3
}

/// A strategy configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid strategy {strategy}: {reason}")]
pub struct InvalidStrategy {
    pub strategy: &'static str,
    pub reason: String,
}

impl StrategyConfig {
    /// The strategy's name in configuration files (`fedavg`, `fedavgm`, `fedprox`, `fedadam`,
    /// `fedyogi`, `fedadagrad`).
    pub fn name(&self) -> &'static str {
        match self {
            StrategyConfig::FedAvg => "fedavg",
            StrategyConfig::FedAvgM { .. } => "fedavgm",
            StrategyConfig::FedProx { .. } => "fedprox",
            StrategyConfig::FedAdam { .. } => "fedadam",
            StrategyConfig::FedYogi { .. } => "fedyogi",
            StrategyConfig::FedAdagrad { .. } => "fedadagrad",
        }
    }

    /// The proximal weight `μ` agents add to local training: FedProx's `mu`, 0 otherwise.
    pub fn proximal_mu(&self) -> f64 {
        match self {
            StrategyConfig::FedProx { mu } => *mu,
            _ => 0.0,
        }
    }

    /// Checks the hyper-parameters: rates positive and finite, decays in `[0, 1)`, `τ` positive,
    /// `μ` non-negative.
    pub fn validate(&self) -> Result<(), InvalidStrategy> {
        let fail = |reason: String| {
            Err(InvalidStrategy {
                strategy: self.name(),
                reason,
            })
        };
        let positive = |name: &str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be positive and finite, not {value}"))
            }
        };
        let decay = |name: &str, value: f64| {
            if (0.0..1.0).contains(&value) {
                Ok(())
            } else {
                Err(format!("{name} must be in [0, 1), not {value}"))
            }
        };
        let checks = match *self {
            StrategyConfig::FedAvg => Ok(()),
            StrategyConfig::FedAvgM { eta, momentum } => {
                positive("eta", eta).and(decay("momentum", momentum))
            }
            StrategyConfig::FedProx { mu } => {
                if mu.is_finite() && mu >= 0.0 {
                    Ok(())
                } else {
                    Err(format!("mu must be non-negative and finite, not {mu}"))
                }
            }
            StrategyConfig::FedAdam {
                eta,
                beta1,
                beta2,
                tau,
            }
            | StrategyConfig::FedYogi {
                eta,
                beta1,
                beta2,
                tau,
            } => positive("eta", eta)
                .and(decay("beta1", beta1))
                .and(decay("beta2", beta2))
                .and(positive("tau", tau)),
            StrategyConfig::FedAdagrad { eta, beta1, tau } => positive("eta", eta)
                .and(decay("beta1", beta1))
                .and(positive("tau", tau)),
        };
        checks.or_else(fail)
    }
}

/// A server optimizer and its state across rounds. Serialize it with each model version and
/// deserialize it to resume.
///
/// Call order: [`ServerOptimizer::new`] once per federation, then [`ServerOptimizer::step`] once
/// per committed round, in round order, with that round's base model and mean delta.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerOptimizer {
    config: StrategyConfig,
    /// Rounds stepped so far.
    rounds: u64,
    /// First moment (FedAvgM's velocity, the adaptive methods' `m`); empty before the first step
    /// and for stateless strategies.
    m: Vec<f32>,
    /// Second moment `v` of the adaptive methods; empty otherwise.
    v: Vec<f32>,
}

impl ServerOptimizer {
    /// A fresh optimizer (no rounds yet) for a valid configuration.
    pub fn new(config: StrategyConfig) -> Result<ServerOptimizer, InvalidStrategy> {
        config.validate()?;
        Ok(ServerOptimizer {
            config,
            rounds: 0,
            m: Vec::new(),
            v: Vec::new(),
        })
    }

    pub fn config(&self) -> &StrategyConfig {
        &self.config
    }

    /// Rounds stepped so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Length of the parameter vector the state was built for; `None` while it holds no
    /// per-parameter state (before the first step, or for FedAvg and FedProx).
    pub fn n_params(&self) -> Option<usize> {
        (!self.m.is_empty()).then_some(self.m.len())
    }

    /// The next global model from the round's `base` model and its sample-weighted mean delta.
    /// Arithmetic is per coordinate in `f64`; the state is kept in `f32`, like the model.
    ///
    /// # Panics
    /// If `base` and `mean_delta` differ in length, or differ from the length of earlier rounds
    /// ([`ServerOptimizer::n_params`]): the coordinator validates update lengths first.
    pub fn step(&mut self, base: &[f32], mean_delta: &[f32]) -> Vec<f32> {
        assert_eq!(
            base.len(),
            mean_delta.len(),
            "base model and mean delta lengths"
        );
        if let Some(n_params) = self.n_params() {
            assert_eq!(n_params, base.len(), "model length changed between rounds");
        }
        self.rounds += 1;
        let n = base.len();
        match self.config {
            StrategyConfig::FedAvg | StrategyConfig::FedProx { .. } => base
                .iter()
                .zip(mean_delta)
                .map(|(&x, &d)| (f64::from(x) + f64::from(d)) as f32)
                .collect(),
            StrategyConfig::FedAvgM { eta, momentum } => {
                self.m.resize(n, 0.0);
                let mut next = Vec::with_capacity(n);
                for ((velocity, &x), &d) in self.m.iter_mut().zip(base).zip(mean_delta) {
                    let v = momentum * f64::from(*velocity) + f64::from(d);
                    *velocity = v as f32;
                    next.push((f64::from(x) + eta * v) as f32);
                }
                next
            }
            StrategyConfig::FedAdam {
                eta,
                beta1,
                beta2,
                tau,
            } => self.adaptive(base, mean_delta, eta, beta1, tau, |v, d2| {
                beta2 * v + (1.0 - beta2) * d2
            }),
            StrategyConfig::FedYogi {
                eta,
                beta1,
                beta2,
                tau,
            } => self.adaptive(base, mean_delta, eta, beta1, tau, |v, d2| {
                v - (1.0 - beta2) * d2 * sign(v - d2)
            }),
            StrategyConfig::FedAdagrad { eta, beta1, tau } => {
                self.adaptive(base, mean_delta, eta, beta1, tau, |v, d2| v + d2)
            }
        }
    }

    /// Reddi et al.'s Algorithm 2 with the given second-moment update `v ← f(v, Δ²)`.
    fn adaptive(
        &mut self,
        base: &[f32],
        mean_delta: &[f32],
        eta: f64,
        beta1: f64,
        tau: f64,
        second_moment: impl Fn(f64, f64) -> f64,
    ) -> Vec<f32> {
        let n = base.len();
        self.m.resize(n, 0.0);
        self.v.resize(n, (tau * tau) as f32);
        let mut next = Vec::with_capacity(n);
        for (((m, v), &x), &d) in self
            .m
            .iter_mut()
            .zip(self.v.iter_mut())
            .zip(base)
            .zip(mean_delta)
        {
            let d = f64::from(d);
            let m_new = beta1 * f64::from(*m) + (1.0 - beta1) * d;
            // Yogi can only shrink v towards Δ², Adam and Adagrad keep it ≥ 0: clamp rounding.
            let v_new = second_moment(f64::from(*v), d * d).max(0.0);
            *m = m_new as f32;
            *v = v_new as f32;
            next.push((f64::from(x) + eta * m_new / (v_new.sqrt() + tau)) as f32);
        }
        next
    }
}

/// Sign with `sign(0) = 0`, as in the Yogi paper.
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: &[f32], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!(
                (f64::from(*a) - e).abs() <= 1e-5 * e.abs().max(1.0),
                "{actual:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn fedavg_and_fedprox_add_the_mean_delta() {
        for config in [StrategyConfig::FedAvg, StrategyConfig::FedProx { mu: 0.1 }] {
            let mut opt = ServerOptimizer::new(config).unwrap();
            let x1 = opt.step(&[1.0, -2.0], &[0.5, 0.25]);
            assert_eq!(x1, vec![1.5, -1.75]);
            assert_eq!(opt.step(&x1, &[-0.5, 0.75]), vec![1.0, -1.0]);
            assert_eq!(opt.rounds(), 2);
            assert_eq!(opt.n_params(), None);
        }
        assert_eq!(StrategyConfig::FedProx { mu: 0.1 }.proximal_mu(), 0.1);
        assert_eq!(StrategyConfig::FedAvg.proximal_mu(), 0.0);
    }

    #[test]
    fn fedavgm_by_hand() {
        let mut opt = ServerOptimizer::new(StrategyConfig::FedAvgM {
            eta: 0.5,
            momentum: 0.9,
        })
        .unwrap();
        // Round 1: v = Δ = [1, -2]; x = [0, 0] + 0.5 v = [0.5, -1].
        let x1 = opt.step(&[0.0, 0.0], &[1.0, -2.0]);
        close(&x1, &[0.5, -1.0]);
        // Round 2: v = 0.9 [1, -2] + [1, 1] = [1.9, -0.8]; x = [0.5, -1] + 0.5 v = [1.45, -1.4].
        close(&opt.step(&x1, &[1.0, 1.0]), &[1.45, -1.4]);
    }

    /// η = 0.1, β1 = 0.9, β2 = 0.99, τ = 0.1 (so v starts at 0.01), base x0 = [1, 2, 3],
    /// deltas Δ1 = [0.2, -0.4, 0] and Δ2 = [0.2, 0.1, 0.5].
    const ETA: f64 = 0.1;
    const TAU: f64 = 0.1;
    const X0: [f32; 3] = [1.0, 2.0, 3.0];
    const D1: [f32; 3] = [0.2, -0.4, 0.0];
    const D2: [f32; 3] = [0.2, 0.1, 0.5];

    /// x + η m / (√v + τ), coordinate-wise, on hand-computed m and v.
    fn expected(x: &[f64], m: &[f64], v: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(m)
            .zip(v)
            .map(|((x, m), v)| x + ETA * m / (v.sqrt() + TAU))
            .collect()
    }

    fn two_steps(config: StrategyConfig) -> (Vec<f32>, Vec<f32>) {
        let mut opt = ServerOptimizer::new(config).unwrap();
        let x1 = opt.step(&X0, &D1);
        let x2 = opt.step(&x1, &D2);
        assert_eq!(opt.rounds(), 2);
        assert_eq!(opt.n_params(), Some(3));
        (x1, x2)
    }

    // First moments, shared by the three adaptive methods (β1 = 0.9):
    // m1 = 0.1 Δ1 = [0.02, -0.04, 0]; m2 = 0.9 m1 + 0.1 Δ2 = [0.038, -0.026, 0.05].
    const M1: [f64; 3] = [0.02, -0.04, 0.0];
    const M2: [f64; 3] = [0.038, -0.026, 0.05];

    #[test]
    fn fedadam_by_hand() {
        let (x1, x2) = two_steps(StrategyConfig::FedAdam {
            eta: ETA,
            beta1: 0.9,
            beta2: 0.99,
            tau: TAU,
        });
        // v1 = 0.99 · 0.01 + 0.01 Δ1² = [0.0099 + 0.0004, 0.0099 + 0.0016, 0.0099].
        let v1 = [0.0103, 0.0115, 0.0099];
        let x1_expected = expected(&[1.0, 2.0, 3.0], &M1, &v1);
        close(&x1, &x1_expected);
        // v2 = 0.99 v1 + 0.01 Δ2² = [0.010197 + 0.0004, 0.011385 + 0.0001, 0.009801 + 0.0025].
        let v2 = [0.010597, 0.011485, 0.012301];
        let x1_f64: Vec<f64> = x1.iter().map(|&x| f64::from(x)).collect();
        close(&x2, &expected(&x1_f64, &M2, &v2));
        // Spot check the first coordinate in plain numbers: 1 + 0.1 · 0.02 / (√0.0103 + 0.1).
        assert!((f64::from(x1[0]) - 1.009_926_1).abs() < 1e-6, "{}", x1[0]);
    }

    #[test]
    fn fedyogi_by_hand() {
        let (x1, x2) = two_steps(StrategyConfig::FedYogi {
            eta: ETA,
            beta1: 0.9,
            beta2: 0.99,
            tau: TAU,
        });
        // v1 = v0 − 0.01 Δ1² sign(v0 − Δ1²), v0 = 0.01, Δ1² = [0.04, 0.16, 0]:
        // signs [−1, −1, +1 (0.01 > 0)] → [0.01 + 0.0004, 0.01 + 0.0016, 0.01 − 0].
        let v1 = [0.0104, 0.0116, 0.01];
        close(&x1, &expected(&[1.0, 2.0, 3.0], &M1, &v1));
        // Δ2² = [0.04, 0.01, 0.25]; signs of v1 − Δ2²: [−1, +1, −1]
        // → [0.0104 + 0.0004, 0.0116 − 0.0001, 0.01 + 0.0025].
        let v2 = [0.0108, 0.0115, 0.0125];
        let x1_f64: Vec<f64> = x1.iter().map(|&x| f64::from(x)).collect();
        close(&x2, &expected(&x1_f64, &M2, &v2));
    }

    #[test]
    fn fedadagrad_by_hand() {
        let (x1, x2) = two_steps(StrategyConfig::FedAdagrad {
            eta: ETA,
            beta1: 0.9,
            tau: TAU,
        });
        // v1 = 0.01 + Δ1² = [0.05, 0.17, 0.01]; v2 = v1 + Δ2² = [0.09, 0.18, 0.26].
        let v1 = [0.05, 0.17, 0.01];
        let v2 = [0.09, 0.18, 0.26];
        close(&x1, &expected(&[1.0, 2.0, 3.0], &M1, &v1));
        let x1_f64: Vec<f64> = x1.iter().map(|&x| f64::from(x)).collect();
        close(&x2, &expected(&x1_f64, &M2, &v2));
        // First coordinate after two rounds, in plain numbers:
        // x1 = 1 + 0.1 · 0.02 / (√0.05 + 0.1) = 1.006_180_34;
        // x2 = x1 + 0.1 · 0.038 / (0.3 + 0.1) = x1 + 0.0095.
        assert!((f64::from(x2[0]) - 1.015_680_34).abs() < 1e-6, "{}", x2[0]);
    }

    #[test]
    fn a_resumed_optimizer_continues_where_it_stopped() {
        let config = StrategyConfig::FedAdam {
            eta: ETA,
            beta1: 0.9,
            beta2: 0.99,
            tau: TAU,
        };
        let mut straight = ServerOptimizer::new(config.clone()).unwrap();
        let x1 = straight.step(&X0, &D1);
        let mut resumed = straight.clone();
        assert_eq!(resumed.step(&x1, &D2), straight.step(&x1, &D2));
        assert_eq!(resumed, straight);
    }

    #[test]
    fn invalid_hyper_parameters_are_refused() {
        let bad = [
            StrategyConfig::FedAvgM {
                eta: 0.0,
                momentum: 0.9,
            },
            StrategyConfig::FedAvgM {
                eta: 1.0,
                momentum: 1.0,
            },
            StrategyConfig::FedProx { mu: -1.0 },
            StrategyConfig::FedProx { mu: f64::NAN },
            StrategyConfig::FedAdam {
                eta: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                tau: 0.0,
            },
            StrategyConfig::FedYogi {
                eta: f64::INFINITY,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3,
            },
            StrategyConfig::FedAdagrad {
                eta: 0.1,
                beta1: -0.1,
                tau: 1e-3,
            },
        ];
        for config in bad {
            assert!(ServerOptimizer::new(config.clone()).is_err(), "{config:?}");
        }
        let err = StrategyConfig::FedAdam {
            eta: 0.1,
            beta1: 0.9,
            beta2: 1.5,
            tau: 1e-3,
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid strategy fedadam: beta2 must be in [0, 1), not 1.5"
        );
    }
}
