//! `harambee-sim bench idle`: what connected, idle agents cost the coordinator.
//!
//! The coordinator runs as its own process with its default heartbeat interval (5 s); N
//! lightweight clients in this process each hold what an idle agent holds: one mTLS
//! connection with its own certificate, an open task stream, and a heartbeat every
//! interval. Printed: the time to connect them all, the coordinator's resident memory
//! before and with them (and per agent), its CPU use while they idle, and heartbeats that
//! failed. Raise the descriptor limit (`ulimit -n`) above N for large N.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use harambee_coordinator::pki::{self, PkiPaths};
use harambee_link::identity::Role;
use harambee_link::tls::ClientTls;
use harambee_proto::pb::{self, agent_service_client::AgentServiceClient};
use serde_json::json;

#[derive(Args, Debug)]
pub struct IdleArgs {
    /// Number of connected agents.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Seconds the agents stay connected and idle before the figures are read.
    #[arg(long, default_value_t = 15)]
    pub hold_s: u64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let _telemetry =
        harambee_coordinator::server::telemetry::init("harambee-bench", None, "error")?;
    if args.agents == 0 || args.concurrency == 0 {
        bail!("need --agents >= 1 and --concurrency >= 1");
    }
    let dir = std::env::temp_dir().join(format!("harambee-bench-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(args: &IdleArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let super::Coordinator {
        process: mut coordinator,
        pid,
        endpoint,
        pki_dir,
    } = super::Coordinator::start(dir, "").await?;

    // Certificates first, off the clock.
    let paths = PkiPaths::new(&pki_dir);
    let ca = paths.ca_cert();
    let mut identities = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let (cert, key) = pki::issue(&pki_dir, Role::Agent, &format!("idle-{i:05}"), 1)?;
        identities.push(ClientTls::from_files(&ca, &cert, &key, "localhost")?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = super::status_bytes(pid, "VmRSS:")?;

    let failed_beats = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let connected: Vec<tokio::task::JoinHandle<()>> =
        futures::stream::iter(identities.into_iter().enumerate())
            .map(|(i, tls)| {
                let endpoint = endpoint.clone();
                let failed = failed_beats.clone();
                async move { idle_agent(&endpoint, &tls, i, failed).await }
            })
            .buffer_unordered(args.concurrency)
            .collect::<Vec<anyhow::Result<_>>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    let connect_s = started.elapsed().as_secs_f64();

    let cpu_start = super::cpu_seconds(pid)?;
    tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
    let cpu_idle = (super::cpu_seconds(pid)? - cpu_start) / args.hold_s as f64;
    let rss_with = super::status_bytes(pid, "VmRSS:")?;
    let peak = super::status_bytes(pid, "VmHWM:")?;
    let per_agent = rss_with.saturating_sub(rss_before) as f64 / args.agents as f64;
    let failed = failed_beats.load(Ordering::Relaxed);
    for task in connected {
        task.abort();
    }
    coordinator.kill().await.ok();

    if args.json {
        println!(
            "{}",
            json!({
                "agents": args.agents, "connect_s": connect_s, "rss_before_bytes": rss_before,
                "rss_with_bytes": rss_with, "peak_rss_bytes": peak, "bytes_per_agent": per_agent,
                "idle_cpu_cores": cpu_idle, "failed_heartbeats": failed,
            })
        );
    } else {
        println!(
            "{} idle agents: connected in {connect_s:.1} s; coordinator RSS {:.1} MiB before, {:.1} MiB with them (peak {:.1} MiB), {:.1} kB per agent; {:.3} cores while idle; {failed} heartbeats failed",
            args.agents,
            rss_before as f64 / 1048576.0,
            rss_with as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            per_agent / 1024.0,
            cpu_idle,
        );
    }
    Ok(())
}

/// Connects as one agent, opens its task stream, and heartbeats in the background at the
/// interval the coordinator asks for, holding the stream, until the task is aborted.
async fn idle_agent(
    endpoint: &str,
    tls: &ClientTls,
    i: usize,
    failed: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let channel = harambee_link::tls::connect(endpoint, tls, Duration::from_secs(30))
        .await
        .with_context(|| format!("agent {i} connecting"))?;
    let mut client = AgentServiceClient::new(channel);
    let instance = format!("idle-{i}");
    let stream = client
        .open_task_stream(pb::OpenTaskStreamRequest {
            agent_version: "bench-idle".into(),
            instance: instance.clone(),
        })
        .await
        .with_context(|| format!("agent {i} opening its task stream"))?
        .into_inner();
    Ok(tokio::spawn(async move {
        let _stream = stream;
        loop {
            let beat = client
                .heartbeat(pb::HeartbeatRequest {
                    busy_round_id: 0,
                    privacy: None,
                    instance: instance.clone(),
                })
                .await;
            let interval = match beat {
                Ok(reply) => Duration::from_millis(reply.into_inner().interval_ms.into()),
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    Duration::from_secs(5)
                }
            };
            tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
        }
    }))
}
