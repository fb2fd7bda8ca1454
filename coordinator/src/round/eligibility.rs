//! Which facilities a round may select, given what their agents report about their own
//! policy and privacy budget; and the facility-level ε of a federation.
//!
//! The agent is the authority on its budget: it refuses a task that would exceed it. The
//! coordinator applies the same rule ([`harambee_privacy::policy::admit`]) to the policy and
//! the RDP curve the agent reports in its heartbeats, so that it does not select a facility
//! that would refuse, which would only slow the round down to the deadline.

use std::collections::HashSet;

use harambee_privacy::accountant::RdpAccountant;
use harambee_privacy::ledger::{LedgerEvent, LedgerLine};
use harambee_privacy::policy::{self, DpSteps, TaskDemand};
use harambee_proto::pb;

use crate::federation::{FederationSpec, Mechanism};

/// `Ok` when the facility's policy, as its agent reports it, allows this federation's task
/// and one more round fits its budget ([`policy::admit`], the agent's own rule); otherwise
/// why not.
pub fn admits(spec: &FederationSpec, status: &pb::PrivacyStatus) -> Result<(), String> {
    // The spending only matters against a budget (and a facility without one may not report it).
    let accountant = match status.max_epsilon {
        Some(_) => RdpAccountant::from_rdp(status.rdp.clone())
            .map_err(|e| format!("its reported accountant is unusable: {e}"))?,
        None => RdpAccountant::new(),
    };
    let policy = policy::Policy {
        allowed_federations: status.allowed_federations.clone(),
        allowed_model_kinds: status.allowed_model_kinds.clone(),
        // Rules the agent does not report (labels, upload mode, rows) are its alone: it
        // declines a task they forbid.
        allowed_labels: vec!["*".into()],
        require_secure_aggregation: false,
        min_samples: 0,
        max_epsilon: status.max_epsilon,
        delta: status.delta,
    };
    let task = TaskDemand {
        federation: &spec.name,
        model_kind: spec.model.kind.as_str(),
        label: None,
        secure: None,
        n_rows: None,
        dp: spec.privacy.dp_sgd.as_ref().map(|dp| DpSteps {
            noise_multiplier: dp.noise_multiplier,
            sampling_rate: dp.sampling_rate,
            steps: harambee_models::dp::dp_steps(spec.train.epochs as usize, dp.sampling_rate),
        }),
    };
    policy::admit(&policy, &accountant, &task)
        .map(|_| ())
        .map_err(|refusal| refusal.to_string())
}

/// Facility-level ε of a federation with the distributed or central mechanism (`None`
/// without one, or before any round revealed anything), at its δ, over its rounds up to and
/// including `up_to_round` that revealed something computed from the updates: committed
/// rounds, and failed rounds whose `RoundFailed` entry says an unmasked sum or a candidate
/// model may have been seen. Read from the ledger: each such round composes one subsampled
/// Gaussian step with sampling rate `selected / eligible` from its `RoundStarted` entry (the
/// usual Poisson approximation of a fixed-size cohort), and noise standard deviation
/// `noise_multiplier × clip_norm` on a sum of updates of L2 norm at most `clip_norm` (for the
/// distributed mechanism this needs at least `min_agents` shares, which a round guarantees).
pub fn facility_epsilon(
    spec: &FederationSpec,
    ledger: &[LedgerLine],
    up_to_round: u64,
) -> Option<f64> {
    let p = &spec.privacy;
    if p.mechanism == Mechanism::None {
        return None;
    }
    let committed: HashSet<u64> = ledger
        .iter()
        .filter_map(|l| match &l.event {
            LedgerEvent::RoundCommitted {
                federation,
                round_id,
                ..
            }
            | LedgerEvent::RoundFailed {
                federation,
                round_id,
                revealed: true,
                ..
            } if *federation == spec.name => Some(*round_id),
            _ => None,
        })
        .collect();
    let mut spent = RdpAccountant::new();
    for line in ledger {
        if let LedgerEvent::RoundStarted {
            federation,
            round_id,
            selected,
            eligible,
        } = &line.event
            && *federation == spec.name
            && *round_id <= up_to_round
            && committed.contains(round_id)
        {
            let q = if *eligible == 0 {
                1.0
            } else {
                (selected.len() as f64 / *eligible as f64).min(1.0)
            };
            spent.compose(p.noise_multiplier, q, 1).ok()?;
        }
    }
    if spent.steps() == 0 {
        return None;
    }
    spent.epsilon(p.delta).ok().map(|r| r.epsilon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::DpSgdSpec;
    use harambee_privacy::accountant;

    fn spec() -> FederationSpec {
        let mut spec = FederationSpec::from_toml(
            r#"
            name = "heart-disease"
            [model]
            kind = "logistic_regression"
            [schema]
            label = "num"
            features = [{ column = "age", center = 54.0, scale = 9.0 }]
            [train]
            epochs = 2
            batch_size = 16
            learning_rate = 0.01
            optimizer = "adam"
            "#,
        )
        .unwrap();
        spec.privacy.dp_sgd = Some(DpSgdSpec {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            sampling_rate: 0.1,
        });
        spec
    }

    fn status(max_epsilon: Option<f64>) -> pb::PrivacyStatus {
        pb::PrivacyStatus {
            epsilon_spent: 0.0,
            max_epsilon,
            delta: 1e-5,
            rdp: RdpAccountant::new().rdp().to_vec(),
            allowed_federations: vec!["*".into()],
            allowed_model_kinds: vec!["*".into()],
        }
    }

    #[test]
    fn selection_follows_the_facilitys_policy_and_budget() {
        let spec = spec();
        assert_eq!(admits(&spec, &status(None)), Ok(()));
        // A facility without a budget need not report its spending.
        let mut silent = status(None);
        silent.rdp.clear();
        assert_eq!(admits(&spec, &silent), Ok(()));
        let mut other = status(None);
        other.allowed_federations = vec!["another".into()];
        assert!(admits(&spec, &other).unwrap_err().contains("federation"));
        let mut other = status(None);
        other.allowed_model_kinds.clear();
        assert!(admits(&spec, &other).unwrap_err().contains("model kind"));

        let steps = harambee_models::dp::dp_steps(spec.train.epochs as usize, 0.1);
        let one = accountant::epsilon(1.0, 0.1, steps, 1e-5).unwrap().epsilon;
        assert_eq!(admits(&spec, &status(Some(one * 1.01))), Ok(()));
        assert!(
            admits(&spec, &status(Some(one * 0.99)))
                .unwrap_err()
                .contains("one more round")
        );
        // After one round spent, the same budget no longer fits.
        let mut spent = RdpAccountant::new();
        spent.compose(1.0, 0.1, steps).unwrap();
        let mut after = status(Some(one * 1.01));
        after.rdp = spent.rdp().to_vec();
        assert!(admits(&spec, &after).is_err());
        // A budget excludes federations without DP-SGD.
        let mut no_dp = spec.clone();
        no_dp.privacy.dp_sgd = None;
        assert!(
            admits(&no_dp, &status(Some(100.0)))
                .unwrap_err()
                .contains("without DP-SGD")
        );
    }

    #[test]
    fn failed_rounds_that_revealed_a_sum_count_in_the_facility_level_epsilon() {
        use harambee_privacy::ledger::Ledger;
        let mut spec = spec();
        spec.privacy.mechanism = Mechanism::Central;
        spec.privacy.noise_multiplier = 1.0;
        let mut ledger = Ledger::new();
        let round = |ledger: &mut Ledger, round_id: u64, revealed: Option<bool>| {
            ledger
                .append(
                    round_id,
                    LedgerEvent::RoundStarted {
                        federation: spec.name.clone(),
                        round_id,
                        selected: vec!["a".into(), "b".into()],
                        eligible: 2,
                    },
                )
                .unwrap();
            let end = match revealed {
                Some(revealed) => LedgerEvent::RoundFailed {
                    federation: spec.name.clone(),
                    round_id,
                    reason: "evaluation deadline".into(),
                    revealed,
                },
                None => LedgerEvent::RoundCommitted {
                    federation: spec.name.clone(),
                    round_id,
                    model_version: round_id,
                    model_sha256: harambee_privacy::ledger::Sha256Digest([0; 32]),
                },
            };
            ledger.append(round_id, end).unwrap();
        };
        // A round that failed before anything left its secrecy does not count.
        round(&mut ledger, 1, Some(false));
        assert_eq!(facility_epsilon(&spec, ledger.lines(), 1), None);
        // One that failed after its candidate was sent to evaluators does.
        round(&mut ledger, 2, Some(true));
        let one = accountant::epsilon(1.0, 1.0, 1, spec.privacy.delta)
            .unwrap()
            .epsilon;
        let eps = facility_epsilon(&spec, ledger.lines(), 2).unwrap();
        assert!((eps - one).abs() < 1e-9, "{eps} vs {one}");
        round(&mut ledger, 3, None);
        let two = accountant::epsilon(1.0, 1.0, 2, spec.privacy.delta)
            .unwrap()
            .epsilon;
        let eps = facility_epsilon(&spec, ledger.lines(), 3).unwrap();
        assert!((eps - two).abs() < 1e-9, "{eps} vs {two}");
    }
}
