//! `harambee-sim bench secagg`: the cost of a round's aggregation, secure or plain.
//!
//! The coordinator runs as its own process (`serve`), so its CPU time and peak RSS are
//! measured apart from the agents'; so does one agent (the last), whose CPU time and peak
//! RSS are one facility's. The other N − 1 agents run in this process. All of them talk
//! over real gRPC and mTLS on loopback, with the real agent runtime but no data and no
//! training (each update is random, `testing.synthetic`), and without downloading the base
//! model. A fraction of the agents crash when asked for their masked input
//! (`testing.crash_at`), so the coordinator must recover their pairwise masks; it notices
//! them after a second (`reconnect_grace_s = 1`), where its default forgives a closed
//! connection for 30 s. Figures are printed per round, one JSON object per line with
//! `--json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use harambee_agent::config::AgentConfig;
use harambee_agent::runtime::AgentStats;
use harambee_proto::pb;
use serde_json::json;

use harambee_coordinator::cli::{AdminArgs, admin_client, wait_for_round};
use harambee_coordinator::federation::{
    Deadlines, FederationSpec, KindName, ModelSection, OptimizerName, SecureAggregationSpec,
    TrainSpec,
};
use harambee_coordinator::pki::{self, PkiPaths};
use harambee_coordinator::wire;
use harambee_link::identity::Role;

use super::bound::{Bound, Rates, Shape};

#[derive(Args, Debug)]
pub struct SecaggArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Model parameters (approximately: an MLP [h, h] on 17 inputs is sized to it).
    #[arg(long, default_value_t = 1_000_000)]
    pub params: usize,
    /// Fraction of agents that crash at the masked-input stage.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Plain aggregation (the coordinator sees each update) instead of secure.
    #[arg(long)]
    pub plain: bool,
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Cap on the FedAvg weights (each synthetic agent claims 100 samples); it sets the
    /// headroom the masked sum needs, and so whether 32-bit words suffice.
    #[arg(long, default_value_t = 100)]
    pub max_weight: u64,
    /// The neighbour graph's failure probability (the federation's
    /// `secure_aggregation.failure_probability`; the agents' policies allow it).
    #[arg(long, default_value_t = harambee_secagg::DESIGN_FAILURE_PROBABILITY)]
    pub failure_probability: f64,
    /// A line added to the coordinator's serve file, such as `receive_window_kib = 1024`
    /// or `upload_buffer_mb = 64` (repeatable).
    #[arg(long = "serve-option", value_name = "LINE")]
    pub serve_options: Vec<String>,
    /// One JSON object per round on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: SecaggArgs) -> anyhow::Result<()> {
    let _telemetry =
        harambee_coordinator::server::telemetry::init("harambee-bench", None, "error")?;
    if args.agents < 2 || !(0.0..0.5).contains(&args.dropout) || args.params < 10 {
        bail!("need --agents >= 2, --dropout in [0, 0.5), --params >= 10");
    }
    let dir = std::env::temp_dir().join(format!("harambee-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(args: &SecaggArgs, dir: &Path) -> anyhow::Result<()> {
    // Short heartbeats find a crashed agent fast; with many agents sharing the two cores
    // they go unanswered for two intervals and healthy agents drop out, so they lengthen
    // (1 s up to 250 agents, 4 s at 1,000; the default is 5 s).
    let heartbeat_s = (args.agents / 250).max(1);
    let super::Coordinator {
        process: mut coordinator,
        pid,
        endpoint,
        pki_dir,
    } = super::Coordinator::start(
        dir,
        &format!(
            "heartbeat_interval_s = {heartbeat_s}\nliveness_timeout_s = {}\nreconnect_grace_s = 1\n{}",
            10 * heartbeat_s,
            args.serve_options
                .iter()
                .map(|line| format!("{line}\n"))
                .collect::<String>()
        ),
    )
    .await?;

    let n_crash = (args.agents as f64 * args.dropout).round() as usize;
    let mut agents = Vec::new();
    let mut own_agent = None;
    for i in 0..args.agents {
        let name = format!("bench-{i:04}");
        let (cert, key) = pki::issue(&pki_dir, Role::Agent, &name, 1)?;
        let crash = if i < n_crash {
            "crash_at = \"masked-input\"\n"
        } else {
            ""
        };
        let text = format!(
            "coordinator = {endpoint:?}\nserver_name = \"localhost\"\nstate_dir = {:?}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n[data]\ncsv = \"unused.csv\"\n[network]\nconnect_timeout_s = 10\nmax_backoff_s = 2\n[policy]\nallowed_federations = [\"*\"]\nallowed_model_kinds = [\"*\"]\nallowed_labels = [\"*\"]\nrequire_consistency_check = false\nrequire_secure_aggregation = {}\nmax_graph_failure_probability = {}\n[testing]\n{crash}synthetic = {{ n_samples = 100, seed = {i} }}\n",
            dir.join("agents").join(&name).display().to_string(),
            PkiPaths::new(&pki_dir).ca_cert().display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            // The facilities' default policy declines plain rounds; a plain bench allows them.
            !args.plain,
            args.failure_probability,
        );
        let path: PathBuf = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        if i + 1 == args.agents {
            // The last agent (never one that crashes) runs as its own process, so that one
            // agent's CPU and peak RSS are measured apart.
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            let process = tokio::process::Command::new(std::env::current_exe()?)
                .args(["agent", "run", "--config"])
                .arg(&path)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting the measured agent")?;
            own_agent = Some(process);
            continue;
        }
        let config = AgentConfig::load(&path)?;
        let stats = Arc::new(AgentStats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(harambee_agent::runtime::run_with_stats(
            config,
            async {
                let _ = stopped.await;
            },
            stats.clone(),
        ));
        agents.push((stats, stop, task));
    }

    let admin = AdminArgs {
        coordinator: endpoint,
        server_name: "localhost".into(),
        pki: pki_dir.clone(),
        operator: "admin".into(),
    };
    let mut client = admin_client(&admin).await?;
    let h = ((100.0 + args.params as f64 - 1.0).sqrt() - 10.0)
        .round()
        .max(1.0) as usize;
    let spec = FederationSpec {
        name: "bench".into(),
        model: ModelSection {
            kind: KindName::Mlp,
            hidden: vec![h, h],
            text: None,
        },
        schema: harambee_models::presets::heart_disease(),
        train: TrainSpec {
            epochs: 1,
            batch_size: 16,
            learning_rate: 0.01,
            optimizer: OptimizerName::Adam,
            seed: 1,
            frozen_layers: 0,
        },
        min_agents: (args.agents - n_crash) as u32,
        facilities: Vec::new(),
        deadlines: Deadlines {
            selecting_s: 120,
            training_s: 600,
            evaluating_s: 600,
        },
        init_seed: 1,
        secure_aggregation: SecureAggregationSpec {
            enabled: !args.plain,
            stage_s: 600,
            max_weight: args.max_weight,
            // The semi-honest variant, as the reference Python framework runs it.
            consistency_check: false,
            failure_probability: args.failure_probability,
            ..Default::default()
        },
        strategy: Default::default(),
        privacy: Default::default(),
        retry_interrupted: false,
        intended_use: String::new(),
    };
    let fed = client
        .create_federation(pb::CreateFederationRequest {
            config: Some(wire::federation_config(&spec, 0)),
            init_from: None,
        })
        .await?
        .into_inner();
    let n_params = fed.config.and_then(|c| c.model).map_or(0, |m| m.n_params);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let connected = client
            .list_agents(pb::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents
            .iter()
            .filter(|a| a.connected)
            .count();
        if connected >= args.agents {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {connected} of {} agents connected", args.agents);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The rates the lower bounds are made of, on this machine, measured now; each round's
    // bound follows from its own shape (agents selected, dropouts).
    let rates = Rates::measure();
    let shape_of = |agents: usize, dropouts: usize| -> anyhow::Result<Shape> {
        Ok(if args.plain {
            Shape::plain(agents, n_params as usize)
        } else {
            Shape::secure(
                agents,
                dropouts,
                n_params as usize,
                args.max_weight,
                args.failure_probability,
            )?
        })
    };
    let shape = shape_of(args.agents, n_crash)?;
    let bound = Bound::of(&shape, &rates);
    if !args.json {
        println!(
            "{} aggregation, {} agents, {n_params} parameters, {} crash at masked input",
            if args.plain { "plain" } else { "secure" },
            args.agents,
            n_crash
        );
        println!(
            "this machine, one core: mask keystream {:.2} GB/s, add {:.2} GB/s (words) {:.2} GB/s (f32 into f64), SHA-256 {:.2} GB/s, AES-256-GCM open {:.2} GB/s, seal {:.2} GB/s",
            rates.keystream / 1e9,
            rates.add_words / 1e9,
            rates.add_f32 / 1e9,
            rates.sha256 / 1e9,
            rates.tls_decrypt / 1e9,
            rates.tls_encrypt / 1e9
        );
        println!(
            "bound of a round with {} dropouts: coordinator {:.3} s ({:.0} MB received, {:.0} MB of mask keystream), one agent {:.4} s (k = {})",
            n_crash,
            bound.coordinator_s,
            bound.received_bytes / 1e6,
            bound.keystream_bytes / 1e6,
            bound.agent_s,
            shape.degree
        );
        println!(
            "{:>5} {:>8} {:>17} {:>8} {:>9} {:>12} {:>9} {:>16} {:>13} {:>15} {:>8}",
            "round",
            "wall_s",
            "coordinator_cpu_s",
            "bound_s",
            "cpu/bound",
            "agent_cpu_s",
            "agent/bnd",
            "bytes_per_agent",
            "peak_rss_MiB",
            "agent_rss_MiB",
            "dropouts"
        );
    }
    let agent_pid = own_agent
        .as_ref()
        .and_then(|p| p.id())
        .context("the measured agent's pid")?;
    for number in 1..=args.rounds {
        let cpu_before = super::cpu_seconds(pid)?;
        let agent_cpu_before = super::cpu_seconds(agent_pid)?;
        let sent_before: u64 = agents
            .iter()
            .map(|(s, _, _)| s.bytes_sent.load(Ordering::Relaxed))
            .sum();
        let started = Instant::now();
        let round = client
            .start_round(pb::StartRoundRequest {
                federation: spec.name.clone(),
            })
            .await?
            .into_inner();
        let round = wait_for_round(&mut client, round.id, |_| {}).await?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = super::cpu_seconds(pid)? - cpu_before;
        let agent_cpu = super::cpu_seconds(agent_pid)? - agent_cpu_before;
        if round.state() != pb::RoundState::Committed {
            bail!("round {number} failed: {}", round.failure_reason);
        }
        let sent: u64 = agents
            .iter()
            .map(|(s, _, _)| s.bytes_sent.load(Ordering::Relaxed))
            .sum::<u64>()
            - sent_before;
        let dropouts = round
            .participants
            .iter()
            .filter(|p| p.status() == pb::ParticipantStatus::Dropped)
            .count();
        let active = round.participants.len().max(1);
        // Agents that crashed in an earlier round are not selected again.
        let shape = shape_of(round.participants.len(), dropouts)?;
        let bound = Bound::of(&shape, &rates);
        let rss = peak_rss_bytes(pid)?;
        let agent_rss = peak_rss_bytes(agent_pid)?;
        // The measured agent's bytes are not counted here (it is another process).
        let per_agent = sent / (active as u64 - 1).max(1);
        if args.json {
            let line = json!({
                "round": number, "wall_s": wall, "coordinator_cpu_s": cpu, "bytes_per_agent": per_agent,
                "peak_rss_bytes": rss, "agents": args.agents, "params": n_params, "dropouts": dropouts, "secure": !args.plain,
                "coordinator_bound_s": bound.coordinator_s, "agent_bound_s": bound.agent_s, "agent_cpu_s": agent_cpu,
                "neighbours": shape.degree, "rates_bytes_per_s": rates, "agent_peak_rss_bytes": agent_rss,
            });
            println!("{line}");
        } else {
            println!(
                "{number:>5} {wall:>8.2} {cpu:>17.2} {:>8.3} {:>9.2} {agent_cpu:>12.4} {:>9.2} {per_agent:>16} {:>13.1} {:>15.1} {dropouts:>8}",
                bound.coordinator_s,
                cpu / bound.coordinator_s,
                agent_cpu / bound.agent_s,
                rss as f64 / 1048576.0,
                agent_rss as f64 / 1048576.0
            );
        }
    }
    for (_, stop, task) in agents {
        let _ = stop.send(());
        let _ = task.await;
    }
    coordinator.kill().await.ok();
    Ok(())
}

/// Peak resident set size of a process (`VmHWM`).
fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    super::status_bytes(pid, "VmHWM:")
}
