//! What a client can check on its own before it takes part: the coordinator chooses a
//! round's [`Params`], and a client that accepted them blindly would let a dishonest
//! coordinator pick threshold 1 (every Shamir share *is* the secret), drop the distributed
//! noise, raise the weight cap or unmask a sum of two.
//!
//! [`Expectation::check`] recomputes the parameters with [`Params::for_round`] (the
//! function the coordinator uses) from what the client knows itself (its round id and
//! vector length, the clip, weight cap, noise target and minimum survivors of the task it
//! admitted) and the offered participant list, and refuses any difference; then it applies
//! the facility's [`ParamsPolicy`]. Only two offered fields are not recomputed: the
//! consistency check (the coordinator's choice, bounded by
//! [`ParamsPolicy::require_consistency_check`]) and the mask PRG (both keystreams are
//! 256-bit-seeded PRGs; the choice does not change what anyone learns).
//!
//! What the client cannot check here: that the participants are real, distinct
//! facilities (that is the identity layer's job) and what the other clients were told
//! (the [`Params::digest`] in every signature makes a split view fail the round instead of
//! leaking; see the crate docs).

use thiserror::Error;

use crate::error::ParamsError;
use crate::params::{DESIGN_FAILURE_PROBABILITY, GraphTargets, Params};

/// The facility's own rules for the parameters it accepts, on top of the recomputation.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamsPolicy {
    /// The threshold must be at least this fraction of each client's neighbours (0..=1).
    /// Whatever the value, [`Expectation::check`] also requires a strict majority
    /// (2t > degree), without which one neighbour set can reveal both of a client's
    /// secrets.
    pub min_threshold_fraction: f64,
    /// Refuse rounds without the consistency check. Without it an *active* server can show
    /// different clients different survivor sets (see "Active server" in the crate docs).
    pub require_consistency_check: bool,
    /// Refuse rounds without distributed noise (where the federation declares the
    /// distributed mechanism).
    pub require_distributed_noise: bool,
    /// The fewest contributors the facility will hide its update among: both the number
    /// of participants and n_min must reach it.
    pub min_contributors: usize,
    /// The weakest neighbour graph accepted: a round sized for a larger failure probability
    /// (fewer neighbours, so a likelier failure or exposure; see [`GraphTargets`]) is refused.
    pub max_failure_probability: f64,
}

impl Default for ParamsPolicy {
    /// Strict majority, no consistency check or noise required, at least 2 contributors,
    /// the default graph ([`DESIGN_FAILURE_PROBABILITY`]) or a stronger one.
    fn default() -> ParamsPolicy {
        ParamsPolicy {
            min_threshold_fraction: 0.5,
            require_consistency_check: false,
            require_distributed_noise: false,
            min_contributors: 2,
            max_failure_probability: DESIGN_FAILURE_PROBABILITY,
        }
    }
}

/// What a client expects of a round's parameters, from what it knows without the
/// coordinator's word for it at this stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// The round of the task the client admitted.
    pub round_id: u64,
    /// The length of its update.
    pub vector_len: usize,
    /// c and W of the task it admitted.
    pub clip: f32,
    pub max_weight: u64,
    /// The standard deviation the sum must carry, in value units (0: no distributed
    /// noise), e.g. noise multiplier × L2 clip of the federation's distributed mechanism.
    pub noise_stddev: f64,
    /// The fewest survivors the noise was calibrated to (the round's minimum number of
    /// contributors); n_min is expected to be max(this, t).
    pub min_survivors: usize,
    /// The failure probability the task says the neighbour graph is sized for (the
    /// federation's; [`GraphTargets::with_failure_probability`]), bounded by the policy.
    pub failure_probability: f64,
    pub policy: ParamsPolicy,
}

/// A field of [`Params`] that [`Expectation::check`] recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamsField {
    RoundId,
    VectorLen,
    Neighbours,
    Threshold,
    Word,
    QuantBits,
    MaxWeight,
    Clip,
    NoiseStddev,
    MinSurvivors,
}

impl std::fmt::Display for ParamsField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParamsField::RoundId => "round id",
            ParamsField::VectorLen => "vector length",
            ParamsField::Neighbours => "neighbours (degree)",
            ParamsField::Threshold => "threshold",
            ParamsField::Word => "word bits",
            ParamsField::QuantBits => "quantization bits",
            ParamsField::MaxWeight => "weight cap",
            ParamsField::Clip => "clip",
            ParamsField::NoiseStddev => "noise share (levels)",
            ParamsField::MinSurvivors => "minimum survivors n_min",
        })
    }
}

/// Why a client refuses the offered parameters. Each names what differs.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ParamsMismatch {
    #[error("the offered parameters are invalid: {0}")]
    Invalid(ParamsError),
    #[error("the expected parameters cannot be derived for the offered participants: {0}")]
    Underivable(ParamsError),
    #[error("{field}: offered {offered}, expected {expected}")]
    Field {
        field: ParamsField,
        offered: String,
        expected: String,
    },
    #[error(
        "threshold {threshold} is not a strict majority of {degree} neighbours: the server could collect both secrets of a client"
    )]
    ThresholdNotMajority { threshold: usize, degree: usize },
    #[error(
        "threshold {threshold} of {degree} neighbours is below the policy's minimum fraction {min_fraction}"
    )]
    ThresholdBelowPolicy {
        threshold: usize,
        degree: usize,
        min_fraction: f64,
    },
    #[error("the policy requires the consistency check and the offered round has none")]
    ConsistencyCheckRequired,
    #[error(
        "the policy requires distributed noise and the {} adds none",
        if *offered_none { "offered round" } else { "task" }
    )]
    NoiseRequired { offered_none: bool },
    #[error("{n} participants, the policy requires at least {min_contributors}")]
    TooFewParticipants { n: usize, min_contributors: usize },
    #[error(
        "the round would unmask a sum of as few as {n_min} inputs, the policy requires at least {min_contributors}"
    )]
    MinSurvivorsBelowPolicy {
        n_min: usize,
        min_contributors: usize,
    },
    #[error("the policy's minimum threshold fraction must be in 0..=1, got {0}")]
    BadPolicy(f64),
    #[error(
        "the round's neighbour graph is sized for a failure probability of {offered:e} ({:.1} bits), the policy accepts at most {allowed:e} ({:.1} bits)",
        -offered.log2(),
        -allowed.log2()
    )]
    WeakGraph { offered: f64, allowed: f64 },
}

impl Expectation {
    /// Accepts `offered` only if it is exactly what [`Params::for_round`] derives for its
    /// participants from this expectation (apart from the consistency check and the PRG,
    /// see the module docs) and it satisfies the policy. Pure and cheap (O(n)).
    pub fn check(&self, offered: &Params) -> Result<(), ParamsMismatch> {
        let policy = &self.policy;
        let fraction = policy.min_threshold_fraction;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(ParamsMismatch::BadPolicy(fraction));
        }
        offered.validate().map_err(ParamsMismatch::Invalid)?;
        let field = |field, offered: &dyn ToString, expected: &dyn ToString| {
            Err(ParamsMismatch::Field {
                field,
                offered: offered.to_string(),
                expected: expected.to_string(),
            })
        };
        if offered.round_id != self.round_id {
            return field(ParamsField::RoundId, &offered.round_id, &self.round_id);
        }
        if offered.vector_len != self.vector_len {
            return field(
                ParamsField::VectorLen,
                &offered.vector_len,
                &self.vector_len,
            );
        }
        // The policy, first: its refusals say what the facility objects to, not only that
        // a number differs.
        let (t, degree) = (offered.threshold, offered.degree());
        if 2 * t <= degree {
            return Err(ParamsMismatch::ThresholdNotMajority {
                threshold: t,
                degree,
            });
        }
        if (t as f64) < fraction * degree as f64 {
            return Err(ParamsMismatch::ThresholdBelowPolicy {
                threshold: t,
                degree,
                min_fraction: fraction,
            });
        }
        if policy.require_consistency_check && !offered.consistency_check {
            return Err(ParamsMismatch::ConsistencyCheckRequired);
        }
        if policy.require_distributed_noise
            && (offered.noise_stddev == 0.0 || self.noise_stddev == 0.0)
        {
            return Err(ParamsMismatch::NoiseRequired {
                offered_none: offered.noise_stddev == 0.0,
            });
        }
        let p = self.failure_probability;
        if !(p > 0.0 && p <= policy.max_failure_probability) {
            return Err(ParamsMismatch::WeakGraph {
                offered: p,
                allowed: policy.max_failure_probability,
            });
        }
        if offered.n() < policy.min_contributors {
            return Err(ParamsMismatch::TooFewParticipants {
                n: offered.n(),
                min_contributors: policy.min_contributors,
            });
        }
        if offered.n_min < policy.min_contributors {
            return Err(ParamsMismatch::MinSurvivorsBelowPolicy {
                n_min: offered.n_min,
                min_contributors: policy.min_contributors,
            });
        }
        let expected = Params::for_round_with(
            self.round_id,
            &offered.participants,
            self.vector_len,
            self.clip,
            self.max_weight,
            self.noise_stddev,
            self.min_survivors,
            GraphTargets::with_failure_probability(p),
        )
        .map_err(ParamsMismatch::Underivable)?;
        let (o, e) = (offered, &expected);
        if o.neighbours != e.neighbours {
            return field(ParamsField::Neighbours, &o.neighbours, &e.neighbours);
        }
        if o.threshold != e.threshold {
            return field(ParamsField::Threshold, &o.threshold, &e.threshold);
        }
        if o.word != e.word {
            return field(ParamsField::Word, &o.word.bits(), &e.word.bits());
        }
        if o.quant_bits != e.quant_bits {
            return field(ParamsField::QuantBits, &o.quant_bits, &e.quant_bits);
        }
        if o.max_weight != e.max_weight {
            return field(ParamsField::MaxWeight, &o.max_weight, &e.max_weight);
        }
        if o.clip.to_bits() != e.clip.to_bits() {
            return field(ParamsField::Clip, &o.clip, &e.clip);
        }
        // Bit for bit: both sides run the same IEEE arithmetic on the same inputs.
        if o.noise_stddev.to_bits() != e.noise_stddev.to_bits() {
            return field(ParamsField::NoiseStddev, &o.noise_stddev, &e.noise_stddev);
        }
        if o.n_min != e.n_min {
            return field(ParamsField::MinSurvivors, &o.n_min, &e.n_min);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{MaskPrg, Word};

    const ROUND: u64 = 42;
    const D: usize = 100;

    fn ids(n: u32) -> Vec<u32> {
        (1..=n).collect()
    }

    /// A distributed-DP task: c = 1, W = 1, S = 0.3, at least 5 survivors.
    fn expectation() -> Expectation {
        Expectation {
            round_id: ROUND,
            vector_len: D,
            clip: 1.0,
            max_weight: 1,
            noise_stddev: 0.3,
            min_survivors: 5,
            failure_probability: DESIGN_FAILURE_PROBABILITY,
            policy: ParamsPolicy {
                require_distributed_noise: true,
                ..ParamsPolicy::default()
            },
        }
    }

    /// What an honest coordinator offers for `n` participants.
    fn honest(n: u32) -> Params {
        let mut p = Params::for_round(ROUND, &ids(n), D, 1.0, 1, 0.3, 5).unwrap();
        p.consistency_check = true;
        p
    }

    fn refused(offered: &Params) -> ParamsMismatch {
        expectation().check(offered).unwrap_err()
    }

    fn field_of(e: &ParamsMismatch) -> Option<ParamsField> {
        match e {
            ParamsMismatch::Field { field, .. } => Some(*field),
            _ => None,
        }
    }

    #[test]
    fn honest_parameters_are_accepted_at_every_size() {
        for n in [5, 6, 10, 30, 100] {
            expectation().check(&honest(n)).unwrap();
            // Without the consistency check too (the default policy does not require it),
            // and with the other keystream.
            let mut p = honest(n);
            p.consistency_check = false;
            p.prg = MaskPrg::ChaCha20;
            expectation().check(&p).unwrap();
        }
        // Without noise, when the task declares none.
        let plain = Expectation {
            noise_stddev: 0.0,
            policy: ParamsPolicy::default(),
            ..expectation()
        };
        plain
            .check(&Params::for_round(ROUND, &ids(8), D, 1.0, 1, 0.0, 5).unwrap())
            .unwrap();
    }

    #[test]
    fn threshold_one_is_refused_with_the_reason() {
        let mut p = honest(10);
        p.threshold = 1;
        let e = refused(&p);
        assert_eq!(
            e,
            ParamsMismatch::ThresholdNotMajority {
                threshold: 1,
                degree: 9
            }
        );
        assert!(e.to_string().contains("both secrets"), "{e}");
    }

    #[test]
    fn half_the_neighbours_is_not_a_majority() {
        let mut p = honest(100);
        assert_eq!((p.degree(), p.threshold), (34, 18));
        p.threshold = 17;
        assert!(matches!(
            refused(&p),
            ParamsMismatch::ThresholdNotMajority {
                threshold: 17,
                degree: 34
            }
        ));
    }

    #[test]
    fn a_majority_threshold_that_is_not_the_recommended_one_is_refused() {
        let mut p = honest(100);
        p.threshold = 20;
        p.n_min = 20;
        let e = refused(&p);
        assert_eq!(
            e,
            ParamsMismatch::Field {
                field: ParamsField::Threshold,
                offered: "20".into(),
                expected: "18".into()
            }
        );
        assert_eq!(e.to_string(), "threshold: offered 20, expected 18");
    }

    #[test]
    fn threshold_below_the_policy_fraction_is_refused() {
        let strict = Expectation {
            policy: ParamsPolicy {
                min_threshold_fraction: 0.6,
                ..expectation().policy
            },
            ..expectation()
        };
        // 18 of 34 is a majority, but below 0.6 · 34 = 20.4.
        assert!(matches!(
            strict.check(&honest(100)),
            Err(ParamsMismatch::ThresholdBelowPolicy {
                threshold: 18,
                degree: 34,
                ..
            })
        ));
        let silly = Expectation {
            policy: ParamsPolicy {
                min_threshold_fraction: 1.5,
                ..expectation().policy
            },
            ..expectation()
        };
        assert_eq!(
            silly.check(&honest(100)),
            Err(ParamsMismatch::BadPolicy(1.5))
        );
    }

    #[test]
    fn a_smaller_graph_is_refused() {
        let mut p = honest(100);
        p.neighbours = 20;
        p.threshold = 11;
        assert_eq!(field_of(&refused(&p)), Some(ParamsField::Neighbours));
    }

    #[test]
    fn word_quantization_weight_cap_and_clip_must_match() {
        let mut p = honest(10);
        p.word = Word::U64;
        assert_eq!(field_of(&refused(&p)), Some(ParamsField::Word));
        let mut p = honest(10);
        p.quant_bits -= 1;
        assert_eq!(field_of(&refused(&p)), Some(ParamsField::QuantBits));
        // A higher weight cap: one facility's weight could dominate the sum.
        let mut p = honest(10);
        p.max_weight = 2;
        assert_eq!(
            refused(&p),
            ParamsMismatch::Field {
                field: ParamsField::MaxWeight,
                offered: "2".into(),
                expected: "1".into()
            }
        );
        let mut p = honest(10);
        p.clip = 2.0;
        assert_eq!(field_of(&refused(&p)), Some(ParamsField::Clip));
    }

    #[test]
    fn stripped_or_reduced_noise_is_refused() {
        let mut p = honest(10);
        p.noise_stddev = 0.0;
        assert_eq!(
            refused(&p),
            ParamsMismatch::NoiseRequired { offered_none: true }
        );
        // Without the policy rule, the recomputation still refuses it.
        let lax = Expectation {
            policy: ParamsPolicy::default(),
            ..expectation()
        };
        assert_eq!(
            lax.check(&p).map_err(|e| field_of(&e)),
            Err(Some(ParamsField::NoiseStddev))
        );
        let mut p = honest(10);
        p.noise_stddev /= 2.0;
        assert_eq!(field_of(&refused(&p)), Some(ParamsField::NoiseStddev));
        // A task without noise when the policy requires it.
        let none = Expectation {
            noise_stddev: 0.0,
            ..expectation()
        };
        assert_eq!(
            none.check(&honest(10)),
            Err(ParamsMismatch::NoiseRequired {
                offered_none: false
            })
        );
    }

    #[test]
    fn noise_calibrated_to_fewer_survivors_is_refused() {
        // The coordinator calibrates to n_min = 6 instead of 8: each share is larger,
        // but a sum of 6 would carry less than the target.
        let want = Expectation {
            min_survivors: 8,
            ..expectation()
        };
        let p = Params::for_round(ROUND, &ids(10), D, 1.0, 1, 0.3, 6).unwrap();
        assert_eq!(
            want.check(&p).map_err(|e| field_of(&e)),
            Err(Some(ParamsField::NoiseStddev))
        );
        // Same noise, lower n_min: refused on n_min itself.
        let mut p = Params::for_round(ROUND, &ids(10), D, 1.0, 1, 0.3, 8).unwrap();
        p.n_min = 6;
        assert_eq!(
            want.check(&p),
            Err(ParamsMismatch::Field {
                field: ParamsField::MinSurvivors,
                offered: "6".into(),
                expected: "8".into()
            })
        );
    }

    #[test]
    fn consistency_check_is_refused_off_when_required() {
        let strict = Expectation {
            policy: ParamsPolicy {
                require_consistency_check: true,
                ..expectation().policy
            },
            ..expectation()
        };
        strict.check(&honest(10)).unwrap();
        let mut p = honest(10);
        p.consistency_check = false;
        assert_eq!(
            strict.check(&p),
            Err(ParamsMismatch::ConsistencyCheckRequired)
        );
    }

    #[test]
    fn too_few_contributors_are_refused() {
        let plain = Expectation {
            noise_stddev: 0.0,
            min_survivors: 1,
            policy: ParamsPolicy {
                min_contributors: 3,
                ..ParamsPolicy::default()
            },
            ..expectation()
        };
        // Two participants: t = 1 (one neighbour), a sum of two.
        let two = Params::for_round(ROUND, &ids(2), D, 1.0, 1, 0.0, 1).unwrap();
        assert_eq!(
            plain.check(&two),
            Err(ParamsMismatch::TooFewParticipants {
                n: 2,
                min_contributors: 3
            })
        );
        // Enough participants, but the round would unmask a sum of only t = 2 of 3.
        let three = Params::for_round(ROUND, &ids(3), D, 1.0, 1, 0.0, 1).unwrap();
        assert_eq!(three.n_min, 2);
        assert_eq!(
            plain.check(&three),
            Err(ParamsMismatch::MinSurvivorsBelowPolicy {
                n_min: 2,
                min_contributors: 3
            })
        );
    }

    #[test]
    fn another_round_or_vector_length_is_refused() {
        let mut p = honest(10);
        p.round_id += 1;
        assert_eq!(field_of(&refused(&p)), Some(ParamsField::RoundId));
        let mut p = honest(10);
        p.vector_len += 1;
        assert_eq!(field_of(&refused(&p)), Some(ParamsField::VectorLen));
        let mut p = honest(10);
        p.n_min = 11;
        assert!(matches!(refused(&p), ParamsMismatch::Invalid(_)));
    }

    #[test]
    fn a_graph_sized_for_a_larger_failure_probability_needs_the_policy_to_allow_it() {
        let ids = ids(100);
        let weak = |p| {
            Params::for_round_with(
                ROUND,
                &ids,
                D,
                1.0,
                1,
                0.3,
                5,
                GraphTargets::with_failure_probability(p),
            )
            .map(|mut o| {
                o.consistency_check = true;
                o
            })
            .unwrap()
        };
        let (default, lax) = (weak(DESIGN_FAILURE_PROBABILITY), weak(1e-3));
        assert_eq!((default.neighbours, lax.neighbours), (34, 20));
        // A task that declares the default graph: the weaker offer differs in k.
        let e = expectation().check(&lax).unwrap_err();
        assert_eq!(field_of(&e), Some(ParamsField::Neighbours), "{e}");
        // A task that declares the weaker graph: the default policy refuses it.
        let declared = Expectation {
            failure_probability: 1e-3,
            ..expectation()
        };
        assert_eq!(
            declared.check(&lax),
            Err(ParamsMismatch::WeakGraph {
                offered: 1e-3,
                allowed: DESIGN_FAILURE_PROBABILITY
            })
        );
        // A facility that relaxed its policy takes part; a stronger graph is fine too.
        let relaxed = Expectation {
            policy: ParamsPolicy {
                max_failure_probability: 1e-3,
                ..declared.policy.clone()
            },
            ..declared
        };
        relaxed.check(&lax).unwrap();
        let strict = Expectation {
            failure_probability: 1e-12,
            ..expectation()
        };
        strict.check(&weak(1e-12)).unwrap();
    }
}
