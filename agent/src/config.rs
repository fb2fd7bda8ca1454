//! `agent.toml`: how a facility's agent reaches the coordinator and where its data is.
//! Relative paths are relative to the configuration file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `https://HOST:PORT` of the coordinator.
    pub coordinator: String,
    /// Name in the coordinator's certificate (defaults to the host of `coordinator`).
    pub server_name: Option<String>,
    /// HTTP proxy every connection to the coordinator tunnels through (CONNECT):
    /// `http://[user:password@]host:port`; `"none"` ignores `HTTPS_PROXY` and `ALL_PROXY`.
    /// Unset: those environment variables decide.
    pub proxy: Option<ProxyUrl>,
    /// Hosts reached without the proxy, as in `NO_PROXY` (which it replaces when set).
    pub no_proxy: Option<String>,
    /// The proxy resolved from `proxy`, `no_proxy` and the environment at load.
    #[serde(skip)]
    pub proxies: harambee_link::proxy::ProxyConfig,
    /// Where the agent keeps its model cache and egress log.
    pub state_dir: PathBuf,
    pub tls: TlsFiles,
    pub data: DataConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub egress: EgressConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    /// The facility's own rules.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Fine-tune each new global model locally (a few epochs on this facility's training
    /// rows) and keep the result as the facility's personal model; nothing of it leaves.
    #[serde(default)]
    pub fine_tune: Option<harambee_models::train::FineTuneConfig>,
    /// The optional ops port (health and metrics).
    #[serde(default)]
    pub ops: OpsConfig,
    /// Fault injection for tests of dropout recovery; never set it in production.
    #[serde(default)]
    pub testing: TestingConfig,
}

/// `[ops]`: `listen = "127.0.0.1:9465"` serves `/healthz` and `/metrics` (Prometheus) over
/// plain HTTP. Off unless set; keep it on loopback or the facility's internal network.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    pub listen: Option<std::net::SocketAddr>,
}

/// The `proxy` key as written; its `Debug` hides the password.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ProxyUrl(pub String);

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", harambee_link::proxy::redact_url(&self.0))
    }
}

/// `[policy]`: what the facility takes part in and allows to leave. Default deny: a facility
/// trains for no federation until it names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Evaluation metrics are withheld when the held-out cohort has fewer rows than this
    /// (20 by default: metrics of a handful of patients say too much about each).
    #[serde(default = "default_min_cohort")]
    pub min_cohort: u64,
    /// Federations this facility trains for; `"*"` means any. None by default.
    #[serde(default)]
    pub allowed_federations: Vec<String>,
    /// Model kinds it trains (`logistic_regression`, `mlp`, `personalized`, `minilm_lora`);
    /// `"*"`: any.
    #[serde(default)]
    pub allowed_model_kinds: Vec<String>,
    /// Label columns it trains and evaluates models for; `"*"`: any. None by default.
    #[serde(default)]
    pub allowed_labels: Vec<String>,
    /// Updates leave only masked, through secure aggregation (default): a task asking for
    /// a plain upload is declined.
    #[serde(default = "yes")]
    pub require_secure_aggregation: bool,
    /// The fewest facilities whose sum this facility's update may be hidden in: secure
    /// aggregation with fewer participants, or with fewer survivors needed to unmask, is
    /// declined. 3 by default (with 2, each learns the other's update from the sum).
    #[serde(default = "default_min_contributors")]
    pub min_contributors: u64,
    /// Take part only in rounds that run SecAgg+'s consistency check (default): without
    /// it, a coordinator that lies about who dropped out can unmask this facility's update.
    #[serde(default = "yes")]
    pub require_consistency_check: bool,
    /// The smallest Shamir threshold accepted, as a fraction of a client's neighbours:
    /// below one half, a coordinator could reconstruct both secrets of a client from two
    /// disjoint groups of its neighbours.
    #[serde(default = "default_threshold_fraction")]
    pub min_threshold_fraction: f64,
    /// When the federation declares the distributed DP mechanism, the round's parameters
    /// must carry this facility's noise share, calibrated to the survivors needed to unmask.
    #[serde(default = "yes")]
    pub require_distributed_noise: bool,
    /// The weakest secure-aggregation neighbour graph accepted, as the probability that a
    /// round fails or some facility is exposed at 10% dropouts and colluders (10⁻⁶, about
    /// 20 bits, by default). A federation sized for a larger one is declined.
    #[serde(default = "default_graph_failure_probability")]
    pub max_graph_failure_probability: f64,
    /// It does not train on fewer training rows than this.
    #[serde(default)]
    pub min_samples: u64,
    /// Patient-level privacy budget: the most ε (at `delta`) that all updates of all
    /// federations together may spend. When set, only DP-SGD federations are accepted.
    #[serde(default)]
    pub max_epsilon: Option<f64>,
    #[serde(default = "default_delta")]
    pub delta: f64,
}

fn default_delta() -> f64 {
    1e-5
}

fn default_min_cohort() -> u64 {
    20
}

fn default_min_contributors() -> u64 {
    3
}

fn default_graph_failure_probability() -> f64 {
    harambee_secagg::DESIGN_FAILURE_PROBABILITY
}

fn default_threshold_fraction() -> f64 {
    0.5
}

fn yes() -> bool {
    true
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            min_cohort: default_min_cohort(),
            allowed_federations: Vec::new(),
            allowed_model_kinds: Vec::new(),
            allowed_labels: Vec::new(),
            require_secure_aggregation: true,
            min_contributors: default_min_contributors(),
            require_consistency_check: true,
            min_threshold_fraction: default_threshold_fraction(),
            require_distributed_noise: true,
            max_graph_failure_probability: default_graph_failure_probability(),
            min_samples: 0,
            max_epsilon: None,
            delta: default_delta(),
        }
    }
}

/// Test-only behaviour.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestingConfig {
    /// Stop dead (as a crash would: connection dropped, heartbeats stopped, `run` returns
    /// an error) when a secure-aggregation task of this stage arrives: `advertise-keys`,
    /// `share-keys`, `masked-input`, `unmasking`.
    pub crash_at: Option<String>,
    /// Benchmarks: skip data and training; each update is random, drawn from this seed.
    pub synthetic: Option<SyntheticConfig>,
}

/// A stand-in for training, for benchmarks of the protocol alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Weight each update claims.
    pub n_samples: u64,
    pub seed: u64,
}

/// The local record of what left the facility.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Also keep a copy of every uploaded update under `state_dir/egress/SHA256.f32`,
    /// so the facility can inspect exactly the bytes that left.
    #[serde(default)]
    pub keep_payloads: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The facility's CSV file (header row; columns named by the federation's schema).
    /// Empty when the data is a FHIR export (`fhir`).
    #[serde(default)]
    pub csv: PathBuf,
    /// Instead of `csv`: a directory holding a FHIR R4 Bulk Data export (`*.ndjson`), read
    /// by the FHIR mapping of the federation's schema.
    #[serde(default)]
    pub fhir: Option<PathBuf>,
    /// Share of rows held out for evaluation, never trained on.
    #[serde(default = "default_holdout")]
    pub holdout_fraction: f64,
    #[serde(default)]
    pub split_seed: u64,
    /// The pretrained text model's directory (`model.safetensors`, `tokenizer.json`,
    /// `config.json`) for `minilm_lora` federations; absent: `$HARAMBEE_MINILM_DIR`, else
    /// `~/.cache/harambee/all-MiniLM-L6-v2` (where `models/text/fetch-minilm.sh` puts it).
    #[serde(default)]
    pub base_model_dir: Option<PathBuf>,
}

impl DataConfig {
    /// The CSV file or the FHIR export directory, as messages name it.
    pub fn path(&self) -> &Path {
        self.fhir.as_deref().unwrap_or(&self.csv)
    }

    /// Reads the facility's data by `schema`, with the report of what could not be used.
    pub fn load(
        &self,
        schema: &harambee_models::data::Schema,
    ) -> Result<harambee_models::data::Loaded, harambee_models::data::DataError> {
        match &self.fhir {
            Some(dir) => harambee_models::fhir::load_fhir(dir, schema),
            None => harambee_models::data::load_csv_report(&self.csv, schema),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub connect_timeout_s: u64,
    /// Reconnection backoff doubles from 1 s up to this.
    pub max_backoff_s: u64,
}

/// `[cache]`: models downloaded from the coordinator, kept under `state_dir/models`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// The most recently used models kept (at least 1); older ones are removed.
    pub keep_models: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { keep_models: 4 }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            connect_timeout_s: 10,
            max_backoff_s: 10,
        }
    }
}

fn default_holdout() -> f64 {
    0.25
}

impl AgentConfig {
    /// Loads `path`, with no proxy but the one its `proxy` key names (tests, and anything
    /// that must not depend on the environment).
    pub fn load(path: &Path) -> anyhow::Result<AgentConfig> {
        AgentConfig::load_with_env(path, &|_| None)
    }

    /// Loads `path`; the proxy is its `proxy` key, else the one `env` (the process's
    /// environment, in the binary) names in `HTTPS_PROXY` or `ALL_PROXY`.
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<AgentConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: AgentConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.state_dir,
            &mut config.tls.ca,
            &mut config.tls.cert,
            &mut config.tls.key,
            &mut config.data.csv,
        ]
        .into_iter()
        .chain(config.data.fhir.as_mut())
        .chain(config.data.base_model_dir.as_mut())
        {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
        config
            .validate()
            .with_context(|| format!("in {}", path.display()))?;
        config.proxies = harambee_link::proxy::ProxyConfig::resolve(
            config.proxy.as_ref().map(|p| p.0.as_str()),
            config.no_proxy.as_deref(),
            env,
        )
        .with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        match (self.data.csv.as_os_str().is_empty(), &self.data.fhir) {
            (true, None) => anyhow::bail!(
                "[data] names no data: set csv to the facility's CSV file, or fhir to the directory of its FHIR export"
            ),
            (false, Some(_)) => {
                anyhow::bail!("[data] sets both csv and fhir: the agent reads one of them")
            }
            _ => {}
        }
        if !self.coordinator.starts_with("https://") {
            anyhow::bail!("coordinator must be an https:// address (there is no plaintext port)");
        }
        let p = &self.policy;
        if !(p.delta > 0.0 && p.delta < 1.0) {
            anyhow::bail!("policy.delta must be between 0 and 1, not {}", p.delta);
        }
        if !(0.5..=1.0).contains(&p.min_threshold_fraction) {
            anyhow::bail!(
                "policy.min_threshold_fraction must be between 0.5 and 1, not {}",
                p.min_threshold_fraction
            );
        }
        if p.min_contributors < 2 {
            anyhow::bail!(
                "policy.min_contributors must be at least 2, not {}",
                p.min_contributors
            );
        }
        if let Some(max) = p.max_epsilon
            && !(max.is_finite() && max >= 0.0)
        {
            anyhow::bail!("policy.max_epsilon must be a non-negative number, not {max}");
        }
        let h = self.data.holdout_fraction;
        if !(h > 0.0 && h < 1.0) {
            anyhow::bail!("data.holdout_fraction must be between 0 and 1, not {h}");
        }
        Ok(())
    }

    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            let rest = self.coordinator.trim_start_matches("https://");
            let host_port = rest.split('/').next().unwrap_or(rest);
            match host_port.rsplit_once(':') {
                Some((host, _)) => host.trim_matches(['[', ']']).to_owned(),
                None => host_port.to_owned(),
            }
        })
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.network.connect_timeout_s.max(1))
    }

    pub fn max_backoff(&self) -> Duration {
        Duration::from_secs(self.network.max_backoff_s.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_agent_example_loads_with_paths_relative_to_the_file() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("```toml\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .find(|b| b.starts_with("coordinator = ") && b.contains("[tls]"))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, block).unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config.tls.ca, dir.path().join("ca.pem"));
        assert_eq!(config.data.csv, PathBuf::from("/srv/harambee/heart.csv"));
        assert_eq!(config.server_name(), "coordinator.health.example");
    }

    #[test]
    fn plaintext_coordinator_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "coordinator = \"http://x:1\"\nstate_dir = \"s\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[data]\ncsv = \"d.csv\"\n").unwrap();
        let err = format!("{:#}", AgentConfig::load(&path).unwrap_err());
        assert!(err.contains("https://"), "{err}");
    }
}
