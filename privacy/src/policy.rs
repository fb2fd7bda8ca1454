//! A facility's admission policy: which tasks it takes, decided by one function for both
//! ends of the wire. The agent applies [`admit`] to the task in hand, with everything it
//! knows; the coordinator applies the same function to what each agent reports in its
//! heartbeats, so that it selects only facilities that would accept (the agent remains the
//! authority: it decides again, and declines what it must).
//!
//! The policy is default-deny: nothing is allowed until named (`"*"` names everything).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::accountant::RdpAccountant;

/// What a facility accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Federations it trains for; `"*"`: any.
    pub allowed_federations: Vec<String>,
    /// Model kinds it trains; `"*"`: any.
    pub allowed_model_kinds: Vec<String>,
    /// Label columns it trains and evaluates on; `"*"`: any. A model's metrics and updates
    /// say something about its label, so a coordinator must not pick one the facility has
    /// not agreed to.
    pub allowed_labels: Vec<String>,
    /// Updates leave only through secure aggregation: a task asking for a plain upload is
    /// refused.
    pub require_secure_aggregation: bool,
    /// It does not train on fewer rows than this.
    pub min_samples: u64,
    /// Patient-level budget: the most ε at `delta` all its updates may spend together. With
    /// a budget, only DP-SGD tasks are admitted.
    pub max_epsilon: Option<f64>,
    pub delta: f64,
}

/// Patient-level DP-SGD steps behind one update, for the accountant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpSteps {
    pub noise_multiplier: f64,
    pub sampling_rate: f64,
    pub steps: u64,
}

/// What a training task asks of the facility.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDemand<'a> {
    pub federation: &'a str,
    pub model_kind: &'a str,
    /// The model's label column, when the one deciding knows it.
    pub label: Option<&'a str>,
    /// Whether the update would leave through secure aggregation, when known.
    pub secure: Option<bool>,
    /// Rows the facility would train on, when the one deciding knows them (the agent does;
    /// the coordinator does not).
    pub n_rows: Option<u64>,
    /// The DP-SGD steps one update takes, if the federation trains with DP-SGD.
    pub dp: Option<DpSteps>,
}

/// Why a facility's policy refuses a task. The messages name the rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    FederationNotAllowed(String),
    ModelKindNotAllowed(String),
    LabelNotAllowed(String),
    PlainUpload,
    UnsafeFederationName(String),
    TooFewRows {
        n_rows: u64,
        min_samples: u64,
    },
    BudgetNeedsDpSgd {
        max_epsilon: f64,
    },
    Unaccountable(String),
    OverBudget {
        after: f64,
        max_epsilon: f64,
        delta: f64,
        spent: f64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::FederationNotAllowed(name) => write!(
                f,
                "policy.allowed_federations does not name federation {name:?}"
            ),
            Refusal::ModelKindNotAllowed(kind) => write!(
                f,
                "policy.allowed_model_kinds does not name model kind {kind:?}"
            ),
            Refusal::LabelNotAllowed(label) => write!(
                f,
                "policy.allowed_labels does not name label column {label:?}"
            ),
            Refusal::PlainUpload => write!(
                f,
                "the task asks for the update in plain and policy.require_secure_aggregation is set: updates leave only through secure aggregation"
            ),
            Refusal::UnsafeFederationName(name) => write!(
                f,
                "federation name {name:?} is not a plain name (letters, digits, '.', '_', '-'; at most 64; not starting with '.')"
            ),
            Refusal::TooFewRows {
                n_rows,
                min_samples,
            } => write!(
                f,
                "the facility holds {n_rows} training rows, fewer than policy.min_samples = {min_samples}"
            ),
            Refusal::BudgetNeedsDpSgd { max_epsilon } => write!(
                f,
                "the facility has a privacy budget (ε ≤ {max_epsilon}) and the federation trains without DP-SGD"
            ),
            Refusal::Unaccountable(reason) => write!(
                f,
                "the federation's DP-SGD parameters cannot be accounted: {reason}"
            ),
            Refusal::OverBudget {
                after,
                max_epsilon,
                delta,
                spent,
            } => write!(
                f,
                "one more round would bring ε to {after:.3} at δ = {delta}, over the budget of {max_epsilon} (spent so far: {spent:.3})"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// Whether `policy` admits `task`, given what the facility has spent so far (`spent`): the
/// federation and model kind are named, the facility holds enough rows, and, with a budget,
/// the task uses DP-SGD and one more update fits. Returns the task's DP-SGD steps.
pub fn admit(
    policy: &Policy,
    spent: &RdpAccountant,
    task: &TaskDemand<'_>,
) -> Result<Option<DpSteps>, Refusal> {
    let allows = |list: &[String], item: &str| list.iter().any(|x| x == "*" || x == item);
    if !is_plain_name(task.federation) {
        return Err(Refusal::UnsafeFederationName(task.federation.to_owned()));
    }
    if !allows(&policy.allowed_federations, task.federation) {
        return Err(Refusal::FederationNotAllowed(task.federation.to_owned()));
    }
    if !allows(&policy.allowed_model_kinds, task.model_kind) {
        return Err(Refusal::ModelKindNotAllowed(task.model_kind.to_owned()));
    }
    if let Some(label) = task.label
        && !allows(&policy.allowed_labels, label)
    {
        return Err(Refusal::LabelNotAllowed(label.to_owned()));
    }
    if task.secure == Some(false) && policy.require_secure_aggregation {
        return Err(Refusal::PlainUpload);
    }
    if let Some(n_rows) = task.n_rows
        && n_rows < policy.min_samples
    {
        return Err(Refusal::TooFewRows {
            n_rows,
            min_samples: policy.min_samples,
        });
    }
    let Some(max_epsilon) = policy.max_epsilon else {
        return Ok(task.dp);
    };
    let Some(dp) = task.dp else {
        return Err(Refusal::BudgetNeedsDpSgd { max_epsilon });
    };
    let after = spent
        .spent_if(
            dp.noise_multiplier,
            dp.sampling_rate,
            dp.steps,
            policy.delta,
        )
        .map_err(|e| Refusal::Unaccountable(e.to_string()))?;
    if after.epsilon > max_epsilon {
        return Err(Refusal::OverBudget {
            after: after.epsilon,
            max_epsilon,
            delta: policy.delta,
            spent: spent.epsilon_spent(policy.delta),
        });
    }
    Ok(Some(dp))
}

/// Whether a federation name is safe to use as a file name: letters, digits, `.`, `_` and
/// `-`, 1 to 64 of them, not starting with `.` (so never `..` or a hidden file).
pub fn is_plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_epsilon: Option<f64>) -> Policy {
        Policy {
            allowed_federations: vec!["heart".into()],
            allowed_model_kinds: vec!["*".into()],
            allowed_labels: vec!["disease".into()],
            require_secure_aggregation: true,
            min_samples: 20,
            max_epsilon,
            delta: 1e-5,
        }
    }

    fn task(dp: Option<DpSteps>) -> TaskDemand<'static> {
        TaskDemand {
            federation: "heart",
            model_kind: "mlp",
            label: Some("disease"),
            secure: Some(true),
            n_rows: Some(100),
            dp,
        }
    }

    const DP: DpSteps = DpSteps {
        noise_multiplier: 1.0,
        sampling_rate: 0.1,
        steps: 50,
    };

    #[test]
    fn default_deny_names_the_rule() {
        let none = RdpAccountant::new();
        let mut p = policy(None);
        p.allowed_federations.clear();
        let err = admit(&p, &none, &task(None)).unwrap_err();
        assert_eq!(err, Refusal::FederationNotAllowed("heart".into()));
        assert!(
            err.to_string().contains("policy.allowed_federations"),
            "{err}"
        );

        let mut t = task(None);
        t.n_rows = Some(5);
        assert!(matches!(
            admit(&policy(None), &none, &t),
            Err(Refusal::TooFewRows { n_rows: 5, .. })
        ));
        // The coordinator does not know the row count: that rule is the agent's alone.
        t.n_rows = None;
        assert_eq!(admit(&policy(None), &none, &t), Ok(None));
    }

    #[test]
    fn a_coordinator_cannot_pick_the_label_the_upload_mode_or_a_path() {
        let none = RdpAccountant::new();
        let mut t = task(None);
        t.label = Some("hiv_status");
        let err = admit(&policy(None), &none, &t).unwrap_err();
        assert_eq!(err, Refusal::LabelNotAllowed("hiv_status".into()));
        assert!(err.to_string().contains("policy.allowed_labels"), "{err}");

        let mut t = task(None);
        t.secure = Some(false);
        let err = admit(&policy(None), &none, &t).unwrap_err();
        assert_eq!(err, Refusal::PlainUpload);
        assert!(
            err.to_string().contains("require_secure_aggregation"),
            "{err}"
        );
        let mut plain_ok = policy(None);
        plain_ok.require_secure_aggregation = false;
        assert_eq!(admit(&plain_ok, &none, &t), Ok(None));

        let mut p = policy(None);
        p.allowed_federations = vec!["*".into()];
        for name in [
            "../heart",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "",
            &"x".repeat(65),
        ] {
            let mut t = task(None);
            t.federation = name;
            assert_eq!(
                admit(&p, &none, &t),
                Err(Refusal::UnsafeFederationName(name.to_owned())),
                "{name:?}"
            );
        }
        assert!(is_plain_name("heart-v2.1_test"));
    }

    #[test]
    fn a_budget_admits_only_dp_sgd_and_only_while_it_lasts() {
        let mut spent = RdpAccountant::new();
        assert!(matches!(
            admit(&policy(Some(8.0)), &spent, &task(None)),
            Err(Refusal::BudgetNeedsDpSgd { .. })
        ));
        let mut rounds = 0;
        while let Ok(Some(dp)) = admit(&policy(Some(8.0)), &spent, &task(Some(DP))) {
            spent
                .compose(dp.noise_multiplier, dp.sampling_rate, dp.steps)
                .unwrap();
            rounds += 1;
            assert!(spent.epsilon(1e-5).unwrap().epsilon <= 8.0);
        }
        assert!(rounds > 0);
        let err = admit(&policy(Some(8.0)), &spent, &task(Some(DP))).unwrap_err();
        assert!(matches!(err, Refusal::OverBudget { .. }), "{err}");
    }
}
