//! Hospital networks: agents whose every connection goes through a real HTTP CONNECT proxy
//! (Debian's tinyproxy, `harness::tinyproxy`), with basic auth; a proxy that refuses the
//! credentials or the port is named as the proxy, with its status line, not mistaken for
//! the coordinator.

use harambee_sim::harness as common;

use std::time::Duration;

use common::tinyproxy::{Tinyproxy, TinyproxyConfig};
use common::*;
use harambee_agent::config::AgentConfig;
use harambee_coordinator::pki::PkiPaths;
use harambee_link::identity::Role;
use harambee_link::proxy::{Proxy, ProxyConfig};
use harambee_link::tls::{self, ClientTls, FailureKind};
use harambee_proto::pb;
use harambee_sim::demo;

const USER: &str = "ward7";
/// Sent percent-encoded in the proxy URL (`Tinyproxy::url`), so the agent must decode it.
const PASSWORD: &str = "s3cret-ward.7";

/// Writes the agent configuration of `f` with `top` (e.g. a `proxy` key) before its tables.
fn agent_config(h: &Harness, f: &demo::Facility, top: &str) -> AgentConfig {
    let path = demo::write_agent_config(f, &h.endpoint(), &h.pki, OPEN_POLICY).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{top}\n{text}")).unwrap();
    AgentConfig::load(&path).unwrap()
}

fn admin_tls(h: &Harness) -> ClientTls {
    let paths = PkiPaths::new(&h.pki);
    ClientTls::from_files(
        &paths.ca_cert(),
        &paths.issued_cert(Role::Operator, "admin"),
        &paths.issued_key(Role::Operator, "admin"),
        "localhost",
    )
    .unwrap()
}

/// Three facilities reach the coordinator only through tinyproxy with basic auth (the
/// password percent-encoded in `proxy` of agent.toml); a secure round commits with all
/// three. The proxy's log shows each agent's tunnels (task stream and heartbeats), and
/// when the proxy stops, the coordinator loses every agent: nothing went around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_behind_a_real_proxy_contribute_to_a_round() {
    let mut h = Harness::start(None).await;
    let mut proxy = Tinyproxy::start(&TinyproxyConfig {
        connect_port: h.port,
        basic_auth: Some((USER, PASSWORD)),
    });
    let facilities = h.facilities(Some(3));
    let top = format!("proxy = {:?}", proxy.url(Some((USER, PASSWORD))));
    for f in &facilities {
        let config = agent_config(&h, f, &top);
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "the password leaks: {shown}");
        h.spawn_agent_config(config);
    }
    let mut admin = h.admin().await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    let spec = spec(&facilities, 3, 60);
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &names).await;

    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    assert!(round.secure_aggregation);
    for f in &facilities {
        let p = round
            .participants
            .iter()
            .find(|p| p.facility == f.name)
            .unwrap_or_else(|| panic!("{} not in {round:?}", f.name));
        assert_eq!(p.status(), pb::ParticipantStatus::Uploaded, "{p:?}");
    }
    let target = format!("127.0.0.1:{}", h.port);
    let tunnels = proxy.connects_to(&target);
    assert!(
        tunnels >= 2 * facilities.len(),
        "expected a task-stream and a heartbeat tunnel per agent, the proxy logged {tunnels}:\n{}",
        proxy.log()
    );

    // doctor goes through the proxy too, and does not print its password.
    let config = facilities[0].dir.join("agent.toml");
    let report = harambee_agent::doctor::diagnose(&config, &|_| None).await;
    let text = report.text();
    assert!(report.passed(), "{text}");
    assert!(
        report
            .check("proxy")
            .unwrap()
            .detail
            .contains("accepted CONNECT"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");

    proxy.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let agents = admin
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        if agents
            .iter()
            .filter(|a| names.contains(&a.facility.as_str()))
            .all(|a| !a.connected)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents stayed connected without their proxy: {agents:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.stop_agents().await;
}

/// Wrong credentials and none at all: the proxy's refusal (401 or 407) named as the
/// proxy's (its address and status line), never as the coordinator refusing the facility,
/// and without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_refusing_the_credentials_is_named_with_its_status() {
    let h = Harness::start(None).await;
    let proxy = Tinyproxy::start(&TinyproxyConfig {
        connect_port: h.port,
        basic_auth: Some((USER, PASSWORD)),
    });
    let tls = admin_tls(&h);
    let timeout = Duration::from_secs(5);
    // tinyproxy answers wrong credentials with 401, missing ones with 407.
    for (credentials, expected, status) in [
        (
            Some((USER, "wrong-password")),
            "refused the credentials",
            "401 Unauthorized",
        ),
        (
            None,
            "requires authentication",
            "407 Proxy Authentication Required",
        ),
    ] {
        let url = proxy.url(credentials);
        let proxies = ProxyConfig::through(Proxy::parse(&url, "test").unwrap());
        let err = tls::connect_via(&h.endpoint(), &tls, &proxies, timeout)
            .await
            .unwrap_err();
        let message = err.to_string();
        assert_eq!(
            err.failure_kind(),
            Some(FailureKind::ProxyRefused),
            "{message}"
        );
        assert!(message.contains(expected), "{message}");
        assert!(message.contains(status), "{message}");
        assert!(
            message.contains("through the proxy http://")
                && message.contains(&format!("127.0.0.1:{}", proxy.port)),
            "the proxy is not named: {message}"
        );
        assert!(!message.contains("wrong-password"), "{message}");
        assert!(!message.contains("rejected this client"), "{message}");
    }
}

/// A proxy whose policy does not allow CONNECT to the coordinator's port answers 403: the
/// error says the proxy refused the tunnel, with its status line; and a proxy that is not
/// there is named as unreachable, a transient failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_refusing_the_port_is_named_as_the_proxy_not_the_coordinator() {
    let h = Harness::start(None).await;
    let mut proxy = Tinyproxy::start(&TinyproxyConfig {
        connect_port: 443,
        basic_auth: None,
    });
    let tls = admin_tls(&h);
    let timeout = Duration::from_secs(5);
    let proxies = ProxyConfig::through(Proxy::parse(&proxy.url(None), "test").unwrap());
    let err = tls::connect_via(&h.endpoint(), &tls, &proxies, timeout)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert_eq!(
        err.failure_kind(),
        Some(FailureKind::ProxyRefused),
        "{message}"
    );
    assert!(
        message.contains("the proxy refused to open a tunnel"),
        "{message}"
    );
    assert!(message.contains("403 Access violation"), "{message}");
    assert!(
        message.contains(&format!(
            "through the proxy http://127.0.0.1:{}",
            proxy.port
        )),
        "{message}"
    );
    assert!(
        proxy
            .log()
            .contains(&format!("Refused CONNECT method on port {}", h.port))
    );

    proxy.stop();
    let err = tls::connect_via(&h.endpoint(), &tls, &proxies, timeout)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert_eq!(
        err.failure_kind(),
        Some(FailureKind::ProxyUnreachable),
        "{message}"
    );
    assert!(message.contains("cannot reach the proxy"), "{message}");
    assert!(FailureKind::ProxyUnreachable.is_transient());
}
