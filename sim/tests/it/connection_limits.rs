//! Connections without identity are few and short-lived: an enrolment connection is closed
//! when idle and at the end of its lifetime, enrolment connections are capped apart from
//! everyone else's, and a flood of garbage costs a few log lines. Real coordinator, real TLS
//! on loopback.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harambee_coordinator::pki::PkiPaths;
use harambee_coordinator::server::tls::{ConnectionLimits, MAX_ENROLMENT_CONNECTIONS};
use harambee_proto::pb;
use harambee_sim::harness::{Harness, create_federation, spec, wait_connected};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tracing_subscriber::util::SubscriberInitExt;

/// Short deadlines, so that the tests take seconds; the defaults are ten times longer.
fn short_limits() -> ConnectionLimits {
    ConnectionLimits {
        enrolment_idle: Duration::from_secs(1),
        enrolment_lifetime: Duration::from_secs(3),
        drop_log_interval: Duration::from_secs(1),
        ..ConnectionLimits::default()
    }
}

async fn start(limits: ConnectionLimits) -> Harness {
    let mut h = Harness::prepare(None);
    h.settings.connections = limits;
    h.start_coordinator().await;
    h
}

/// A raw TLS connection as an agent without a certificate opens it: the enrolment ALPN
/// protocol next to `h2`, no client certificate.
async fn enrolment_connection(h: &Harness) -> io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(PkiPaths::new(&h.pki).ca_cert()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![harambee_link::token::ENROL_ALPN.to_vec(), b"h2".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", h.port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Reads until the server closes the connection (EOF or an error such as a missing
/// close_notify); returns when that happened.
async fn closed_at<R: tokio::io::AsyncRead + Unpin>(mut reader: R) -> Instant {
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_idle_enrolment_connection_is_closed() {
    let limits = short_limits();
    let h = start(limits.clone()).await;
    let stream = enrolment_connection(&h).await.unwrap();
    let opened = Instant::now();
    let closed = tokio::time::timeout(limits.enrolment_lifetime, closed_at(stream))
        .await
        .expect("an idle enrolment connection stayed open");
    let open_for = closed - opened;
    // Timers fire at or after their deadline; the server's clock started before ours.
    assert!(
        open_for + Duration::from_millis(100) >= limits.enrolment_idle,
        "closed after {open_for:?}"
    );
    assert!(
        open_for < limits.enrolment_idle * 2,
        "closed after {open_for:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_busy_enrolment_connection_is_closed_at_its_lifetime() {
    let limits = short_limits();
    let h = start(limits.clone()).await;
    let stream = enrolment_connection(&h).await.unwrap();
    let opened = Instant::now();
    let (reader, mut writer) = tokio::io::split(stream);
    let closed = tokio::spawn(closed_at(reader));
    // HTTP/2 preface and empty SETTINGS, then a PING every quarter of the idle time: the
    // server answers each, so the connection is never idle.
    writer
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let ping = b"\0\0\x08\x06\0\0\0\0\0harambee";
    while !closed.is_finished() {
        if writer.write_all(ping).await.is_err() {
            break;
        }
        tokio::time::sleep(limits.enrolment_idle / 4).await;
        assert!(
            opened.elapsed() < limits.enrolment_lifetime * 2,
            "a busy enrolment connection outlived its lifetime"
        );
    }
    let open_for = closed.await.unwrap() - opened;
    assert!(
        open_for + Duration::from_millis(100) >= limits.enrolment_lifetime,
        "closed after {open_for:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_agents_and_operators_connect_while_enrolment_is_full() {
    // Idle connections last long enough for the test; the cap is the default one.
    let h = &mut start(ConnectionLimits {
        enrolment_idle: Duration::from_secs(60),
        ..ConnectionLimits::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..MAX_ENROLMENT_CONNECTIONS {
        held.push(enrolment_connection(h).await.unwrap());
    }
    // One more is closed after its ClientHello: the client never completes its handshake.
    assert!(enrolment_connection(h).await.is_err());

    // A facility with its certificate connects, and the operator sees it.
    let facilities = h.facilities(Some(1));
    h.spawn_agent(&facilities[0]);
    let mut admin = h.admin().await;
    create_federation(&mut admin, &spec(&facilities, 1, 1)).await;
    wait_connected(&mut admin, &[facilities[0].name.as_str()]).await;
    let agents = admin
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1, "{agents:?}");

    // A closed enrolment connection frees its slot.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while enrolment_connection(h).await.is_err() {
        assert!(Instant::now() < deadline, "the slot was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop_agents().await;
}

/// INFO lines of the coordinator's listener, as an operator's log would show them.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The connections the lines say were dropped, summed.
    fn n_dropped(&self) -> u64 {
        self.lines()
            .iter()
            .filter_map(|line| {
                let count = line.split("dropped ").nth(1)?.split(' ').next()?;
                count.parse::<u64>().ok()
            })
            .sum()
    }
}

// Single-threaded, so that the subscriber set for this thread sees the server's events.
#[tokio::test]
async fn connection_limits_a_flood_of_garbage_costs_a_few_log_lines() {
    const N_GARBAGE: u64 = 500;
    let h = Harness::prepare(None);
    let lines = Lines::default();
    let writer = lines.clone();
    let _subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "harambee_coordinator::server::tls=info",
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .set_default();
    let limits = short_limits();
    let mut h = h;
    h.settings.connections = limits.clone();
    h.start_coordinator().await;

    let started = Instant::now();
    for i in 0..N_GARBAGE {
        let mut tcp = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
        let junk = format!("GET /{i} HTTP/1.1\r\nHost: coordinator\r\n\r\n");
        // The server may already have closed: fine, it is garbage.
        let _ = tcp.write_all(junk.as_bytes()).await;
        closed_at(tcp).await;
    }
    let flood = started.elapsed();
    // Every drop is counted in some line once the last summary is due.
    let deadline = Instant::now() + limits.drop_log_interval * 3;
    while lines.n_dropped() < N_GARBAGE {
        assert!(
            Instant::now() < deadline,
            "{} of {N_GARBAGE} drops logged: {:#?}",
            lines.n_dropped(),
            lines.lines()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n_lines = lines.lines().len() as u64;
    let at_most = 2 + flood.as_secs() / limits.drop_log_interval.as_secs();
    assert!(
        n_lines <= at_most,
        "{n_lines} lines for {N_GARBAGE} connections in {flood:?}: {:#?}",
        lines.lines()
    );
    assert_eq!(lines.n_dropped(), N_GARBAGE, "{:#?}", lines.lines());
    assert!(
        lines.lines()[0].contains("tls handshake refused"),
        "{:#?}",
        lines.lines()
    );
}
