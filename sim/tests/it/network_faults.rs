//! Facilities' links through a fault-injecting proxy (`harness::proxy`), one per facility:
//! an outage shorter than the liveness timeout mid-round, a 50 kB/s link carrying a masked
//! input that takes longer than the liveness timeout, and half-open connections. Rounds
//! commit and no live facility is declared gone.

use harambee_sim::harness as common;

use std::time::Duration;

use common::proxy::{FaultProxy, Faults};
use common::*;
use harambee_coordinator::federation::KindName;
use harambee_proto::pb;
use harambee_sim::demo::Facility;

/// Three facilities, each behind a proxy of its own, with the harness's settings.
async fn behind_proxies(h: &mut Harness) -> (Vec<Facility>, Vec<FaultProxy>) {
    h.start_coordinator().await;
    let facilities = h.facilities(Some(3));
    let upstream = format!("127.0.0.1:{}", h.port).parse().unwrap();
    let mut proxies = Vec::new();
    for f in &facilities {
        let proxy = FaultProxy::start(upstream).await;
        h.spawn_agent_at(f, &proxy.endpoint(), OPEN_POLICY);
        proxies.push(proxy);
    }
    (facilities, proxies)
}

/// Every facility contributed: none dropped or rejected.
fn assert_all_contributed(round: &pb::Round, facilities: &[Facility]) {
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    for f in facilities {
        let p = round
            .participants
            .iter()
            .find(|p| p.facility == f.name)
            .unwrap_or_else(|| panic!("{} not in {round:?}", f.name));
        assert_eq!(p.status(), pb::ParticipantStatus::Uploaded, "{p:?}");
    }
}

async fn start_round(
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    federation: &str,
) -> u64 {
    admin
        .start_round(pb::StartRoundRequest {
            federation: federation.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn wait_for_stage(
    admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    round_id: u64,
    past: pb::RoundState,
) {
    loop {
        let round = admin
            .get_round(pb::GetRoundRequest { round_id })
            .await
            .unwrap()
            .into_inner();
        if round.state() != past {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every link down for 3 s in the middle of a secure round (connections cut, new ones
/// refused), with an 8 s liveness timeout: the agents reconnect, resend what was cut, and
/// the round commits with all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_outage_of_every_link_mid_round_drops_nobody() {
    let mut h = Harness::prepare(None);
    h.settings.liveness_timeout = Duration::from_secs(8);
    h.settings.reconnect_grace = Duration::from_secs(8);
    let (facilities, proxies) = behind_proxies(&mut h).await;
    let mut admin = h.admin().await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    let spec = spec(&facilities, 3, 60);
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &names).await;

    let round_id = start_round(&mut admin, &spec.name).await;
    wait_for_stage(&mut admin, round_id, pb::RoundState::Selecting).await;
    futures::future::join_all(proxies.iter().map(|p| p.outage(Duration::from_secs(3)))).await;
    let round = wait_round(&mut admin, round_id).await;
    assert_all_contributed(&round, &facilities);
    h.stop_agents().await;
}

/// 50 kB/s per facility link and a model whose masked input takes seconds to cross it,
/// longer than the 2 s liveness timeout: heartbeats on their own connection (and the
/// upload's progress) keep every facility alive, and the round commits with all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_keeps_its_facility_alive_through_a_long_upload() {
    let mut h = Harness::prepare(None);
    let (facilities, proxies) = behind_proxies(&mut h).await;
    for p in &proxies {
        p.set(Faults {
            bytes_per_s: Some(50_000),
            ..Faults::default()
        });
    }
    let mut admin = h.admin().await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    let mut spec = spec(&facilities, 3, 120);
    spec.model.kind = KindName::Mlp;
    spec.model.hidden = vec![512, 64];
    spec.train.epochs = 1;
    let n_params = spec.model_spec().n_params();
    assert!(
        n_params * 4 > 3 * 50_000,
        "{n_params} parameters cross in under 3 s"
    );
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &names).await;
    let round = run_round(&mut admin, &spec.name).await;
    assert_all_contributed(&round, &facilities);
    h.stop_agents().await;
}

/// Every open connection goes half-open (a NAT that lost its state: nothing forwarded,
/// nothing closed). The agents notice from their unanswered heartbeats within seconds,
/// well before HTTP/2 keepalive would (20 s + 20 s), open new connections, and the next
/// round commits with all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_noticed_and_replaced() {
    let mut h = Harness::prepare(None);
    let (facilities, proxies) = behind_proxies(&mut h).await;
    let mut admin = h.admin().await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    let spec = spec(&facilities, 3, 60);
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &names).await;
    // Heartbeats answered, so each agent knows the 200 ms interval its silence is timed by.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stranded = tokio::time::Instant::now();
    for p in &proxies {
        p.strand();
    }
    // The coordinator stops hearing them (2 s liveness) and then hears them again.
    loop {
        let agents = admin
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        if agents.iter().filter(|a| a.connected).count() < names.len() {
            break;
        }
        assert!(stranded.elapsed() < Duration::from_secs(10), "{agents:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_connected(&mut admin, &names).await;
    let back = stranded.elapsed();
    assert!(back < Duration::from_secs(20), "reconnected after {back:?}");
    let round = run_round(&mut admin, &spec.name).await;
    assert_all_contributed(&round, &facilities);
    h.stop_agents().await;
}
