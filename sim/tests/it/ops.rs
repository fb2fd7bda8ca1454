//! The ops port, scraped by a real Prometheus server (Debian package `prometheus`): during a
//! federation of three secure rounds, Prometheus reads the coordinator's and an agent's
//! `/metrics` and its HTTP API returns the committed rounds, the connected agents, the
//! stage durations and the agent's training; `/readyz` is 200 on the active coordinator
//! and 503 on a standby waiting for the lease; `grpc.health.v1` answers SERVING to an
//! authenticated caller and refuses an enrolment connection.

use harambee_sim::harness as common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use harambee_coordinator::pki::PkiPaths;
use harambee_coordinator::service::error::ACCESS_DENIED;
use harambee_link::identity::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::serve_process::{serve_config, spawn_serve};

const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_federation_and_probes_tell_active_from_standby() {
    let prometheus = prometheus_binary();
    let mut h = Harness::prepare(None);
    let ops = free_addr();
    let config = coordinator_config(&mut h, ops);
    let mut active = spawn_serve(&h, &config, "active.log", &[]);
    let mut admin = admin_when_up(&h, "active.log").await;
    wait_for(ops, "/readyz", 200, "ready").await;
    assert_eq!(http_get(ops, "/healthz").await.unwrap().0, 200);

    // A standby on the same database: alive, not ready, and says why.
    let standby_ops = free_addr();
    let mut standby = spawn_serve(
        &h,
        &config,
        "standby.log",
        &["--standby", "--ops-listen", &standby_ops.to_string()],
    );
    wait_for(standby_ops, "/healthz", 200, "ok").await;
    let (status, reason) = http_get(standby_ops, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{reason}");
    assert!(
        reason.contains("waiting for the database lease"),
        "{reason}"
    );
    assert_eq!(reason.trim_end().lines().count(), 1, "{reason}");

    let facilities = h.facilities(Some(3));
    let agent_ops = free_addr();
    h.spawn_agent_with(
        &facilities[0],
        &format!("\n[ops]\nlisten = \"{agent_ops}\"\n"),
    );
    for f in &facilities[1..] {
        h.spawn_agent(f);
    }
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    let spec = spec(&facilities, 3, 60);
    assert!(spec.secure_aggregation.enabled);
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &names).await;

    let server = Prometheus::start(&prometheus, h.dir.path(), &[ops, agent_ops]).await;
    for _ in 0..ROUNDS {
        let round = run_round(&mut admin, &spec.name).await;
        assert_eq!(
            round.state(),
            harambee_proto::pb::RoundState::Committed,
            "{round:?}"
        );
    }

    // What Prometheus scraped, read back through its HTTP API.
    server
        .wait_for_value(
            "harambee_rounds_total{outcome=\"committed\"}",
            ROUNDS as f64,
        )
        .await;
    server
        .wait_for_value("harambee_agents_connected", 3.0)
        .await;
    for stage in [
        "selecting",
        "training",
        "advertise_keys",
        "unmasking",
        "evaluating",
    ] {
        server
            .wait_for_value(
                &format!("harambee_round_stage_duration_seconds_count{{stage=\"{stage}\"}}"),
                ROUNDS as f64,
            )
            .await;
    }
    server
        .wait_for_value("harambee_secagg_unmasking_seconds_count", ROUNDS as f64)
        .await;
    server
        .wait_for_value("harambee_agent_training_seconds_count", ROUNDS as f64)
        .await;
    let received = server
        .wait_for("harambee_received_bytes_total", |v| v > 0.0)
        .await;
    let sent = server
        .wait_for("harambee_agent_sent_bytes_total", |v| v > 0.0)
        .await;
    server
        .wait_for("harambee_ledger_entries", |v| v >= (ROUNDS * 4) as f64)
        .await;
    server
        .wait_for("harambee_agent_last_contact_age_seconds", |v| v < 10.0)
        .await;
    println!("coordinator received {received} bytes; one agent sent {sent}");

    // grpc.health.v1 on the gRPC port: any certificate, but not an enrolment connection.
    let mut probe = HealthClient::new(h.channel(Role::Auditor, "probe").await);
    let answer = probe
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status(), ServingStatus::Serving);
    let ca = std::fs::read(PkiPaths::new(&h.pki).ca_cert()).unwrap();
    let enrolment = harambee_agent::enrol::connect_without_certificate(
        &h.endpoint(),
        &ca,
        "",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let refused = HealthClient::new(enrolment)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().starts_with(ACCESS_DENIED), "{refused:?}");

    // The standby is still not ready while the active one serves.
    assert_eq!(http_get(standby_ops, "/readyz").await.unwrap().0, 503);
    h.stop_agents().await;
    drop(server);
    standby.kill().await.unwrap();
    active.kill().await.unwrap();
}

/// The Prometheus server, from the Debian package: no silent skip without it.
fn prometheus_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    });
    found.expect(
        "this test runs a real Prometheus server: install the Debian package `prometheus` \
         (apt-get install -y prometheus; .ci/run does)",
    )
}

/// A loopback address nothing listens on now.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The serve configuration file of a coordinator process on the harness's storage, its
/// ops port at `ops` (the `ops_listen` key).
fn coordinator_config(h: &mut Harness, ops: SocketAddr) -> PathBuf {
    serve_config(
        h,
        &format!("ops_listen = \"{ops}\"\nliveness_timeout_s = 5\n"),
    )
}

async fn admin_when_up(
    h: &Harness,
    log: &str,
) -> harambee_proto::pb::admin_service_client::AdminServiceClient<tonic::transport::Channel> {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", h.port))
            .await
            .is_ok()
        {
            return h.admin().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "coordinator did not come up; log:\n{}",
        std::fs::read_to_string(h.dir.path().join(log)).unwrap_or_default()
    );
}

/// Polls `path` on `addr` until it answers `status` with a body containing `body`.
async fn wait_for(addr: SocketAddr, path: &str, status: u16, body: &str) {
    let mut last = None;
    for _ in 0..300 {
        match http_get(addr, path).await {
            Ok((s, b)) if s == status && b.contains(body) => return,
            other => last = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr}{path} did not answer {status} {body:?}; last: {last:?}");
}

/// A plain HTTP/1.1 GET (the response's body de-chunked): the status and the body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))??;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status: {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server scraping `targets` every second, its data in a temporary directory;
/// killed when dropped.
struct Prometheus {
    process: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    async fn start(binary: &Path, dir: &Path, targets: &[SocketAddr]) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: harambee\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let addr = free_addr();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let process = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let server = Prometheus { process, addr, log };
        for _ in 0..300 {
            if let Ok((200, _)) = http_get(addr, "/-/ready").await {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "Prometheus did not become ready; log:\n{}",
            server.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of an instant query returning one series, if it returns one.
    async fn query(&self, query: &str) -> Option<f64> {
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={}", encode(query)))
            .await
            .ok()?;
        assert_eq!(status, 200, "{query}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let result = json["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{query} gives several series: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Polls `query` (for 30 s) until its value satisfies `accept`; returns it.
    async fn wait_for(&self, query: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let mut last = None;
        for _ in 0..150 {
            last = self.query(query).await;
            if let Some(value) = last
                && accept(value)
            {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let targets = http_get(self.addr, "/api/v1/targets").await;
        panic!("Prometheus: {query} is {last:?}; targets: {targets:?}");
    }

    async fn wait_for_value(&self, query: &str, expected: f64) {
        self.wait_for(query, |v| v == expected).await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
    }
}
