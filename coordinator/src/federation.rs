//! A federation as the operator declares it (`federation create --config fed.toml`) and as
//! the coordinator stores it (JSON in the `federations` table).

use std::time::Duration;

use harambee_models::data::Schema;
use harambee_models::model::{ModelKind, ModelSpec};
use harambee_models::text::TextTask;
use harambee_models::train::{Optimizer, TrainConfig};
use serde::{Deserialize, Serialize};

/// Everything that defines a federation. Fixed once created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSpec {
    pub name: String,
    pub model: ModelSection,
    /// Feature encoding shared by every facility (standardisation fixed by the federation).
    /// Absent (empty) for a text model, whose columns are in `[model.text]`.
    #[serde(default, skip_serializing_if = "schema_is_empty")]
    pub schema: Schema,
    pub train: TrainSpec,
    /// A round fails unless at least this many facilities contribute.
    #[serde(default = "default_min_agents")]
    pub min_agents: u32,
    /// Facilities that may be selected; empty means every facility.
    #[serde(default)]
    pub facilities: Vec<String>,
    #[serde(default)]
    pub deadlines: Deadlines,
    /// Seed of the initial parameters (model version 0).
    #[serde(default)]
    pub init_seed: u64,
    /// On unless the operator turns it off explicitly.
    #[serde(default)]
    pub secure_aggregation: SecureAggregationSpec,
    /// `[strategy]`: `kind = "fedavg"` (default), `"fedprox"` (with `mu`), `"fedadam"`,
    /// `"fedyogi"`, `"fedadagrad"` (with `eta`, `beta1`, `beta2`, `tau`), `"fedavgm"`.
    #[serde(default)]
    pub strategy: harambee_core::strategy::StrategyConfig,
    /// `[privacy]`: differential privacy (none unless configured).
    #[serde(default, skip_serializing_if = "PrivacySpec::is_off")]
    pub privacy: PrivacySpec,
    /// A round interrupted by a coordinator restart (always failed, its accepted uploads
    /// recorded) is started again as a new round when the coordinator comes back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_interrupted: bool,
    /// What the model is for and for whom (the model card's "intended use").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub intended_use: String,
}

/// `[privacy]`: two optional layers of differential privacy.
///
/// - `[privacy.dp_sgd]`: patient-level DP-SGD inside each facility's local training
///   (per-example clipping to `clip_norm`, Gaussian noise `noise_multiplier × clip_norm`,
///   Poisson sampling at `sampling_rate`). Each facility's agent accounts its own ε for its
///   own patients and refuses work beyond its budget.
/// - `mechanism`: facility-level noise on the sum of the updates, each update clipped to L2
///   norm `clip_norm` and weighted equally. `"distributed"`: each agent adds its share of
///   discrete Gaussian noise to its quantized update before secure aggregation, so that no
///   party ever sees a noiseless sum (needs secure aggregation). `"central"`: the
///   coordinator adds Gaussian noise to the sum; this trusts the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_sgd: Option<DpSgdSpec>,
    #[serde(default)]
    pub mechanism: Mechanism,
    /// Facility-level: L2 norm each facility's update is clipped to.
    #[serde(default)]
    pub clip_norm: f64,
    /// Facility-level: noise standard deviation on the sum = `noise_multiplier × clip_norm`.
    #[serde(default)]
    pub noise_multiplier: f64,
    /// δ of the facility-level guarantee.
    #[serde(default = "default_delta")]
    pub delta: f64,
}

fn default_delta() -> f64 {
    1e-5
}

impl Default for PrivacySpec {
    fn default() -> Self {
        PrivacySpec {
            dp_sgd: None,
            mechanism: Mechanism::None,
            clip_norm: 0.0,
            noise_multiplier: 0.0,
            delta: default_delta(),
        }
    }
}

impl PrivacySpec {
    pub fn default_delta() -> f64 {
        default_delta()
    }

    pub fn is_off(&self) -> bool {
        self.dp_sgd.is_none() && self.mechanism == Mechanism::None
    }

    /// What an agent puts in its egress receipt: the patient-level clipping norm and noise
    /// multiplier it trained with (0, 0 without DP-SGD).
    pub fn receipt_clip_and_noise(&self) -> (f64, f64) {
        self.dp_sgd
            .as_ref()
            .map_or((0.0, 0.0), |d| (d.clip_norm, d.noise_multiplier))
    }
}

/// `[privacy.dp_sgd]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSgdSpec {
    pub clip_norm: f64,
    pub noise_multiplier: f64,
    pub sampling_rate: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    #[default]
    None,
    Distributed,
    Central,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::None => "none",
            Mechanism::Distributed => "distributed",
            Mechanism::Central => "central",
        }
    }

    pub fn parse(s: &str) -> Option<Mechanism> {
        match s {
            "" | "none" => Some(Mechanism::None),
            "distributed" => Some(Mechanism::Distributed),
            "central" => Some(Mechanism::Central),
            _ => None,
        }
    }
}

/// `[secure_aggregation]`: SecAgg+ for every round (the coordinator learns only the sum).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecureAggregationSpec {
    pub enabled: bool,
    /// Each coordinate of an update is clipped to `[-clip, clip]` before quantization.
    pub clip: f32,
    /// Sample counts (FedAvg weights) are capped at this.
    pub max_weight: u64,
    /// Deadline of each key-exchange stage, in seconds.
    pub stage_s: u32,
    /// The consistency-check round of the active-adversary variant.
    pub consistency_check: bool,
    /// The neighbour graph is sized so that, at 10% dropouts and 10% colluding
    /// facilities, a round fails or some facility's update is exposed with at most this
    /// probability (10⁻⁶, about 20 bits, by default). Larger values mean fewer
    /// neighbours and less mask expansion; agents refuse a graph weaker than their
    /// policy's `max_graph_failure_probability` (10⁻⁶ unless the facility relaxes it).
    pub failure_probability: f64,
}

impl Default for SecureAggregationSpec {
    fn default() -> Self {
        SecureAggregationSpec {
            enabled: true,
            clip: 1.0,
            max_weight: 1000,
            stage_s: 120,
            // On by default: without it a coordinator that lies about who dropped out can
            // unmask one facility's update (secagg/src/tests/split_unmask.rs).
            consistency_check: true,
            failure_probability: harambee_secagg::DESIGN_FAILURE_PROBABILITY,
        }
    }
}

fn schema_is_empty(schema: &Schema) -> bool {
    *schema == Schema::default()
}

/// `[model]`: `kind = "logistic_regression"`, or `kind = "mlp"` with `hidden = [32, 16]`, or
/// `kind = "minilm_lora"` with a `[model.text]` table (a pretrained text encoder with LoRA
/// adapters: base model pin, columns, classes, adapters; see `harambee_models::text::TextTask`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub kind: KindName,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextTask>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    LogisticRegression,
    Mlp,
    /// FedPer: the hidden layers are federated, each facility keeps its own output layer.
    Personalized,
    /// LoRA adapters and a head on a frozen, pinned all-MiniLM-L6-v2.
    MinilmLora,
}

impl KindName {
    pub fn as_str(self) -> &'static str {
        match self {
            KindName::LogisticRegression => "logistic_regression",
            KindName::Mlp => "mlp",
            KindName::Personalized => "personalized",
            KindName::MinilmLora => "minilm_lora",
        }
    }

    pub fn parse(s: &str) -> Option<KindName> {
        match s {
            "logistic_regression" => Some(KindName::LogisticRegression),
            "mlp" => Some(KindName::Mlp),
            "personalized" => Some(KindName::Personalized),
            "minilm_lora" => Some(KindName::MinilmLora),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerName {
    Adam,
    Sgd,
}

impl OptimizerName {
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerName::Adam => "adam",
            OptimizerName::Sgd => "sgd",
        }
    }

    pub fn parse(s: &str) -> Option<OptimizerName> {
        match s {
            "adam" => Some(OptimizerName::Adam),
            "sgd" => Some(OptimizerName::Sgd),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub optimizer: OptimizerName,
    #[serde(default)]
    pub seed: u64,
    /// Fine-tuning from a checkpoint: the first N layers are not trained.
    #[serde(default)]
    pub frozen_layers: u32,
}

/// Per-stage deadlines, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    pub selecting_s: u32,
    pub training_s: u32,
    pub evaluating_s: u32,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            selecting_s: 300,
            training_s: 3600,
            evaluating_s: 600,
        }
    }
}

fn default_min_agents() -> u32 {
    2
}

/// A federation definition that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid federation {name:?}: {reason}")]
pub struct InvalidFederation {
    pub name: String,
    pub reason: String,
}

impl FederationSpec {
    pub fn from_toml(text: &str) -> Result<FederationSpec, toml::de::Error> {
        toml::from_str(text)
    }

    fn validate_privacy(&self) -> Result<(), String> {
        let p = &self.privacy;
        if let Some(d) = &p.dp_sgd {
            if !(d.clip_norm.is_finite() && d.clip_norm > 0.0) {
                return Err(format!(
                    "privacy.dp_sgd.clip_norm must be positive, not {}",
                    d.clip_norm
                ));
            }
            if !(d.noise_multiplier.is_finite() && d.noise_multiplier > 0.0) {
                return Err(format!(
                    "privacy.dp_sgd.noise_multiplier must be positive, not {}",
                    d.noise_multiplier
                ));
            }
            if !(d.sampling_rate > 0.0 && d.sampling_rate <= 1.0) {
                return Err(format!(
                    "privacy.dp_sgd.sampling_rate must be in (0, 1], not {}",
                    d.sampling_rate
                ));
            }
        }
        if !(p.delta > 0.0 && p.delta < 1.0) {
            return Err(format!("privacy.delta must be in (0, 1), not {}", p.delta));
        }
        if p.mechanism != Mechanism::None {
            if !(p.clip_norm.is_finite() && p.clip_norm > 0.0) {
                return Err(format!(
                    "privacy.clip_norm must be positive with mechanism {:?}, not {}",
                    p.mechanism.as_str(),
                    p.clip_norm
                ));
            }
            if !(p.noise_multiplier.is_finite() && p.noise_multiplier > 0.0) {
                return Err(format!(
                    "privacy.noise_multiplier must be positive with mechanism {:?}, not {}",
                    p.mechanism.as_str(),
                    p.noise_multiplier
                ));
            }
            if p.mechanism == Mechanism::Distributed && !self.secure_aggregation.enabled {
                return Err("privacy.mechanism = \"distributed\" needs secure aggregation (agents add noise shares that only the sum carries in full)".into());
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), InvalidFederation> {
        let fail = |reason: String| {
            Err(InvalidFederation {
                name: self.name.clone(),
                reason,
            })
        };
        if !valid_name(&self.name) {
            return fail(
                "a federation name is 1-64 characters of letters, digits, '.', '_' or '-'".into(),
            );
        }
        match (&self.model.text, self.model.kind) {
            (Some(text), KindName::MinilmLora) => {
                if let Err(e) = text.check() {
                    return fail(format!("model.text: {e}"));
                }
                if !schema_is_empty(&self.schema) {
                    return fail(
                        "a minilm_lora model takes its columns from [model.text], not [schema]"
                            .into(),
                    );
                }
                if self.train.frozen_layers != 0 {
                    return fail(
                        "train.frozen_layers does not apply to minilm_lora (the encoder is frozen; model.text.lora.top_layers says which layers get adapters)".into(),
                    );
                }
            }
            (None, KindName::MinilmLora) => {
                return fail("kind = \"minilm_lora\" needs a [model.text] table".into());
            }
            (Some(_), _) => return fail("[model.text] is only for kind = \"minilm_lora\"".into()),
            (None, _) => {
                if let Err(e) = self.schema.validate() {
                    return fail(e.to_string());
                }
            }
        }
        match self.model.kind {
            KindName::Mlp | KindName::Personalized => {
                let hidden = &self.model.hidden;
                if hidden.is_empty()
                    || hidden.len() > 8
                    || hidden.iter().any(|&h| h == 0 || h > 4096)
                {
                    return fail("an mlp needs 1 to 8 hidden layers of 1 to 4096 units".into());
                }
            }
            KindName::LogisticRegression if !self.model.hidden.is_empty() => {
                return fail("logistic_regression takes no hidden layers".into());
            }
            KindName::LogisticRegression => {}
            KindName::MinilmLora if !self.model.hidden.is_empty() => {
                return fail("minilm_lora takes no hidden layers".into());
            }
            KindName::MinilmLora => {}
        }
        let t = &self.train;
        if t.epochs == 0 || t.epochs > 1000 {
            return fail(format!("train.epochs must be 1..=1000, not {}", t.epochs));
        }
        if self.model.kind != KindName::MinilmLora
            && t.frozen_layers as usize >= self.model_spec().n_layers()
        {
            return fail(format!(
                "train.frozen_layers ({}) must leave at least one of the model's {} layers to train",
                t.frozen_layers,
                self.model_spec().n_layers()
            ));
        }
        if t.batch_size == 0 {
            return fail("train.batch_size must be at least 1".into());
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return fail(format!(
                "train.learning_rate must be positive, not {}",
                t.learning_rate
            ));
        }
        if self.min_agents == 0 {
            return fail("min_agents must be at least 1".into());
        }
        if let Err(e) = self.strategy.validate() {
            return fail(e.to_string());
        }
        if let Err(reason) = self.validate_privacy() {
            return fail(reason);
        }
        let sa = &self.secure_aggregation;
        if sa.enabled {
            if !(sa.clip.is_finite() && sa.clip > 0.0) {
                return fail(format!(
                    "secure_aggregation.clip must be positive, not {}",
                    sa.clip
                ));
            }
            if sa.max_weight == 0 || sa.stage_s == 0 {
                return fail("secure_aggregation.max_weight and stage_s must be at least 1".into());
            }
            if !(sa.failure_probability > 0.0 && sa.failure_probability <= 1e-2) {
                return fail(format!(
                    "secure_aggregation.failure_probability must be in (0, 0.01], not {}",
                    sa.failure_probability
                ));
            }
        }
        let d = &self.deadlines;
        if d.selecting_s == 0 || d.training_s == 0 || d.evaluating_s == 0 {
            return fail("every deadline must be at least 1 second".into());
        }
        if let Some(f) = self.facilities.iter().find(|f| !valid_name(f)) {
            return fail(format!("facility name {f:?} is not valid"));
        }
        Ok(())
    }

    /// The column the model predicts: the schema's label, or a text model's label column.
    pub fn label(&self) -> &str {
        match &self.model.text {
            Some(text) => &text.label_column,
            None => &self.schema.label,
        }
    }

    pub fn model_spec(&self) -> ModelSpec {
        let kind = match self.model.kind {
            KindName::LogisticRegression => ModelKind::LogisticRegression,
            KindName::Mlp => ModelKind::Mlp {
                hidden: self.model.hidden.clone(),
            },
            KindName::Personalized => ModelKind::Personalized {
                hidden: self.model.hidden.clone(),
            },
            KindName::MinilmLora => ModelKind::MinilmLora {
                // Validation makes sure the table is there; a stored federation always is.
                text: Box::new(self.model.text.clone().unwrap_or_else(|| TextTask {
                    base_sha256: String::new(),
                    text_column: String::new(),
                    label_column: String::new(),
                    classes: Vec::new(),
                    max_tokens: 0,
                    lora: Default::default(),
                    local_head: false,
                })),
            },
        };
        ModelSpec {
            kind,
            n_inputs: self.schema.n_inputs(),
        }
    }

    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.train.epochs as usize,
            batch_size: self.train.batch_size as usize,
            learning_rate: self.train.learning_rate,
            optimizer: match self.train.optimizer {
                OptimizerName::Adam => Optimizer::Adam,
                OptimizerName::Sgd => Optimizer::Sgd,
            },
            seed: self.train.seed,
            proximal_mu: self.strategy.proximal_mu(),
            frozen_layers: self.train.frozen_layers as usize,
        }
    }

    /// Whether `facility` may be selected for this federation's rounds.
    pub fn admits(&self, facility: &str) -> bool {
        self.facilities.is_empty() || self.facilities.iter().any(|f| f == facility)
    }

    /// Secure aggregation's weight cap: the sample counts, or 1 for every facility when a
    /// facility-level DP mechanism needs each update's weight (and so the sum's
    /// sensitivity) bounded.
    pub fn effective_max_weight(&self) -> u64 {
        if self.privacy.mechanism == Mechanism::None {
            self.secure_aggregation.max_weight
        } else {
            1
        }
    }

    pub fn round_config(&self, round_id: u64, n_params: usize) -> harambee_core::RoundConfig {
        let sa = &self.secure_aggregation;
        harambee_core::RoundConfig {
            round_id,
            n_params,
            secure: sa.enabled.then(|| harambee_core::round::SecureConfig {
                clip: sa.clip,
                max_weight: self.effective_max_weight(),
                stage_timeout: Duration::from_secs(sa.stage_s.into()),
                consistency_check: sa.consistency_check,
                noise_stddev: if self.privacy.mechanism == Mechanism::Distributed {
                    self.privacy.noise_multiplier * self.privacy.clip_norm
                } else {
                    0.0
                },
                failure_probability: sa.failure_probability,
            }),
            min_agents: self.min_agents as usize,
            max_samples: MAX_SAMPLES_PER_UPDATE,
            selecting_timeout: Duration::from_secs(self.deadlines.selecting_s.into()),
            training_timeout: Duration::from_secs(self.deadlines.training_s.into()),
            evaluating_timeout: Duration::from_secs(self.deadlines.evaluating_s.into()),
        }
    }
}

/// Largest sample count one facility may claim for an update (its FedAvg weight).
pub const MAX_SAMPLES_PER_UPDATE: u64 = 100_000_000;

/// What one round costs in patient-level ε at each facility, under the federation's DP-SGD
/// settings, and how many rounds typical budgets allow.
#[derive(Clone, Debug, PartialEq)]
pub struct PrivacyCost {
    /// Noisy DP-SGD steps one round takes at every facility (`dp_steps` of the epochs and the
    /// sampling rate: the same at every facility, whatever its number of rows).
    pub steps_per_round: u64,
    /// ε after one round, at `delta`.
    pub epsilon_per_round: f64,
    pub delta: f64,
    /// (budget ε, the most rounds whose total stays within it), for [`TYPICAL_BUDGETS`].
    pub rounds_within: Vec<(f64, u64)>,
}

/// Budgets `federation create` reports the number of rounds for.
pub const TYPICAL_BUDGETS: [f64; 4] = [1.0, 3.0, 8.0, 10.0];

/// δ of a facility's budget unless its policy sets another (`[policy] delta`).
pub const FACILITY_DELTA: f64 = 1e-5;

impl FederationSpec {
    /// The patient-level privacy cost of the federation's rounds (`None` without DP-SGD),
    /// from the same RDP accountant each agent keeps: rounds compose by adding their RDP.
    pub fn privacy_cost(&self) -> Option<PrivacyCost> {
        use harambee_privacy::accountant::RdpAccountant;
        let dp = self.privacy.dp_sgd.as_ref()?;
        let steps = harambee_models::dp::dp_steps(self.train.epochs as usize, dp.sampling_rate);
        let after = |rounds: u64| -> f64 {
            let mut accountant = RdpAccountant::new();
            match steps
                .checked_mul(rounds)
                .map(|n| accountant.compose(dp.noise_multiplier, dp.sampling_rate, n))
            {
                Some(Ok(())) => accountant.epsilon_spent(FACILITY_DELTA),
                _ => f64::INFINITY,
            }
        };
        let rounds_within = TYPICAL_BUDGETS
            .iter()
            .map(|&budget| {
                // The largest r with after(r) <= budget: ε grows with r.
                let (mut lo, mut hi) = (0u64, 1u64);
                while hi < 1 << 20 && after(hi) <= budget {
                    lo = hi;
                    hi *= 2;
                }
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if after(mid) <= budget {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                (budget, lo)
            })
            .collect();
        Some(PrivacyCost {
            steps_per_round: steps,
            epsilon_per_round: after(1),
            delta: FACILITY_DELTA,
            rounds_within,
        })
    }
}

/// Names of federations and facilities: 1-64 of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_privacy_cost_is_what_the_accountant_gives_and_the_readme_example_allows_rounds() {
        let spec = FederationSpec::from_toml(&readme_block("name = \"heart-disease\"")).unwrap();
        let cost = spec
            .privacy_cost()
            .expect("the README's federation uses DP-SGD");
        let dp = spec.privacy.dp_sgd.clone().unwrap();
        let steps = harambee_models::dp::dp_steps(spec.train.epochs as usize, dp.sampling_rate);
        assert_eq!(cost.steps_per_round, steps);
        let eps = |rounds: u64| {
            harambee_privacy::accountant::epsilon(
                dp.noise_multiplier,
                dp.sampling_rate,
                steps * rounds,
                FACILITY_DELTA,
            )
            .unwrap()
            .epsilon
        };
        assert!((cost.epsilon_per_round - eps(1)).abs() < 1e-12);
        for &(budget, rounds) in &cost.rounds_within {
            assert!(rounds == 0 || eps(rounds) <= budget, "{budget}: {rounds}");
            assert!(
                eps(rounds + 1) > budget,
                "{budget}: {rounds} + 1 still fits"
            );
        }
        let at_ten = cost
            .rounds_within
            .iter()
            .find(|(b, _)| *b == 10.0)
            .unwrap()
            .1;
        assert!(
            at_ten >= 5,
            "the README's example allows only {at_ten} rounds within ε = 10"
        );
        let mut without = spec.clone();
        without.privacy.dp_sgd = None;
        assert_eq!(without.privacy_cost(), None);
    }

    /// The `toml` block of README.md that starts with `first_line`.
    pub(crate) fn readme_block(first_line: &str) -> String {
        let readme = include_str!("../../README.md");
        readme
            .split("```toml\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .find(|b| b.starts_with(first_line))
            .expect("README block")
            .to_owned()
    }

    #[test]
    fn a_text_federation_is_read_from_its_model_text_table_and_checked() {
        // The README's [model] block for minilm_lora, in a federation.
        let model = readme_block("[model]\nkind = \"minilm_lora\"");
        let text = format!(
            "name = \"notes\"\n{model}\n[train]\nepochs = 1\nbatch_size = 16\nlearning_rate = 0.003\noptimizer = \"adam\"\n"
        );
        let spec = FederationSpec::from_toml(&text).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.label(), "condition");
        let task = spec.model.text.clone().unwrap();
        assert_eq!(task.lora.top_layers, Some(1));
        let model = spec.model_spec();
        assert_eq!(model.n_params(), task.classifier().n_params());
        assert_eq!(model.shared_len(), model.n_params());
        // What a text federation may not have.
        let mut with_schema = spec.clone();
        with_schema.schema.label = "x".into();
        let mut no_table = spec.clone();
        no_table.model.text = None;
        let mut frozen = spec.clone();
        frozen.train.frozen_layers = 1;
        let mut bad_task = spec.clone();
        bad_task.model.text.as_mut().unwrap().classes.truncate(1);
        for (bad, says) in [
            (with_schema, "[schema]"),
            (no_table, "[model.text]"),
            (frozen, "frozen_layers"),
            (bad_task, "classes"),
        ] {
            let error = bad.validate().unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
    }

    #[test]
    fn a_text_federation_takes_dp_sgd_and_local_heads() {
        // The README's [privacy.dp_sgd] and local_head lines for minilm_lora, in a federation.
        let model = readme_block("[model]\nkind = \"minilm_lora\"");
        let extra = readme_block("[privacy.dp_sgd]  # text-level");
        let text = format!(
            "name = \"notes\"\n{model}local_head = true\n\n[train]\nepochs = 2\nbatch_size = 16\nlearning_rate = 0.003\noptimizer = \"adam\"\n\n{extra}"
        );
        let spec = FederationSpec::from_toml(&text).unwrap();
        spec.validate().unwrap();
        let task = spec.model.text.clone().unwrap();
        assert!(task.local_head);
        let model = spec.model_spec();
        assert_eq!(model.shared_len(), task.classifier().adapter_len());
        assert!(model.shared_len() < model.n_params());
        let dp = spec
            .privacy
            .dp_sgd
            .clone()
            .expect("the README's block has DP-SGD");
        let cost = spec.privacy_cost().unwrap();
        assert_eq!(
            cost.steps_per_round,
            harambee_models::dp::dp_steps(2, dp.sampling_rate)
        );
        assert!(cost.epsilon_per_round.is_finite() && cost.epsilon_per_round > 0.0);
        // On the wire and back: the agent reads the same task, local heads included.
        let wire = harambee_link::convert::text_task_to_pb(&task);
        assert!(wire.local_head);
        assert_eq!(harambee_link::convert::text_task(&wire).unwrap(), task);
    }

    #[test]
    fn readme_federation_example_is_valid() {
        let spec = FederationSpec::from_toml(&readme_block("name = \"heart-disease\"")).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.schema.features[0].missing, vec!["0".to_string()]);
        assert_eq!(
            spec.model_spec().n_inputs,
            2,
            "one feature plus its missing indicator"
        );
        assert_eq!(spec.schema.features[0].unit, "mg/dL");
        assert_eq!(spec.schema.features[0].min, Some(50.0));
    }

    #[test]
    fn readme_clinical_schema_is_valid() {
        use harambee_models::data::{Derive, FeatureKind, Schema};
        let block = readme_block("[schema]\nlabel = \"outcome\"");
        let table: toml::Table = toml::from_str(&block).unwrap();
        let schema: Schema = table["schema"].clone().try_into().unwrap();
        schema.validate().unwrap();
        assert_eq!(
            schema.n_inputs(),
            4 + 1 + 1,
            "3 categories and other, a binary, a derived age"
        );
        let kinds: Vec<_> = schema.features.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                FeatureKind::Categorical,
                FeatureKind::Binary,
                FeatureKind::Numeric
            ]
        );
        assert_eq!(
            schema.features[2].derive,
            Some(Derive::AgeAt("2024-06-30".to_owned()))
        );
        assert_eq!(
            schema.features[1].fhir.as_ref().unwrap().map["female"],
            "1_female"
        );
        assert_eq!(schema.label_rule.unwrap().positive, ["1_yes"]);
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let mut spec =
            FederationSpec::from_toml(&readme_block("name = \"heart-disease\"")).unwrap();
        spec.train.learning_rate = f64::NAN;
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("learning_rate")
        );
        spec.train.learning_rate = 0.1;
        spec.model = ModelSection {
            kind: KindName::Mlp,
            hidden: vec![],
            text: None,
        };
        assert!(spec.validate().unwrap_err().to_string().contains("hidden"));
        spec.model = ModelSection {
            kind: KindName::LogisticRegression,
            hidden: vec![],
            text: None,
        };
        spec.name = "../etc".into();
        assert!(spec.validate().is_err());
        let err = FederationSpec::from_toml("name = \"x\"\nunknown = 1\n").unwrap_err();
        assert!(err.to_string().contains("unknown"), "{err}");
    }
}
