//! Certificate renewal by the agent itself: with certificates of 20 seconds, a running agent
//! enrolled by one coordinator process renews its certificate with the next one (after a
//! restart), keeps its key, and is back with the renewed certificate once the old one has
//! expired; renewal is for one's own name only.

use harambee_sim::harness::identity as identity_common;

use std::time::Duration;

use harambee_agent::renew;
use harambee_coordinator::pki::PkiPaths;
use harambee_link::identity::PeerVerifier;
use harambee_link::identity::Role;
use harambee_proto::pb::{self, enrolment_service_client::EnrolmentServiceClient};
use identity_common::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::Code;

fn public_key(cert_path: &std::path::Path) -> Vec<u8> {
    let der = CertificateDer::from_pem_file(cert_path).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.public_key().subject_public_key.data.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_renewal_works_across_a_coordinator_restart() {
    let mut c = Coord::start(Duration::from_secs(20)).await;
    let config = c.enrol_agent("renewing").await;
    let first = renew::read_certificate(&config.tls.cert).unwrap();
    let key_before = std::fs::read(&config.tls.key).unwrap();
    let lifetime = first.not_after.duration_since(first.not_before).unwrap();
    assert!(
        lifetime <= Duration::from_secs(23),
        "20 s, back-dated by a tenth: {lifetime:?}"
    );
    c.spawn_agent(&config);

    // A new coordinator process, long before renewal is due: nothing of the enrolment is in
    // its memory. The agent finds it by itself.
    c.restart().await;
    eventually(
        Duration::from_secs(60),
        "the agent connects to the new coordinator",
        || async {
            agents(&c)
                .await
                .iter()
                .any(|a| a.facility == "renewing" && a.connected)
        },
    )
    .await;

    // Two thirds into the certificate's life the agent renews it, with the new process.
    eventually(
        Duration::from_secs(60),
        "the agent renews its certificate",
        || async {
            renew::read_certificate(&config.tls.cert).is_ok_and(|now| now.sha256 != first.sha256)
        },
    )
    .await;
    let renewed = renew::read_certificate(&config.tls.cert).unwrap();
    assert_eq!(renewed.facility, "renewing");
    assert!(renewed.not_after > first.not_after);
    assert_eq!(
        std::fs::read(&config.tls.key).unwrap(),
        key_before,
        "the key stays"
    );
    assert_eq!(public_key(&config.tls.cert), {
        let key =
            rcgen::KeyPair::from_pem(&String::from_utf8(key_before.clone()).unwrap()).unwrap();
        key.public_key_raw().to_vec()
    });
    let ca = std::fs::read(PkiPaths::new(&c.h.pki).ca_cert()).unwrap();
    PeerVerifier::from_ca_pem(&ca)
        .unwrap()
        .verify(
            "renewing",
            &CertificateDer::from_pem_file(&config.tls.cert).unwrap(),
        )
        .unwrap();
    let facilities = c
        .operator()
        .await
        .list_facilities(pb::ListFacilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .facilities;
    let not_after_ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    };
    assert!(
        facilities[0].cert_not_after_unix_ms >= not_after_ms(renewed.not_after),
        "the new process recorded it"
    );

    // Once the first certificate expires, its connection is refused and the agent comes back
    // with a renewed one, by itself.
    eventually(
        Duration::from_secs(60),
        "the agent reconnects with a renewed certificate",
        || async {
            agents(&c)
                .await
                .iter()
                .any(|a| a.facility == "renewing" && a.connected && a.cert_sha256 != first.sha256)
        },
    )
    .await;
    c.stop_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_renewal_is_for_ones_own_name_and_serves_certificates_from_pki_issue() {
    let c = Coord::start(NINETY_DAYS).await;
    let facilities = c.h.facilities(Some(1));
    let name = facilities[0].name.clone();
    let path = harambee_sim::demo::write_agent_config(
        &facilities[0],
        &c.endpoint(),
        &c.h.pki,
        harambee_sim::harness::OPEN_POLICY,
    )
    .unwrap();
    let config = harambee_agent::config::AgentConfig::load(&path).unwrap();
    let before = renew::read_certificate(&config.tls.cert).unwrap();

    // A certificate from `pki issue` (1 day) is renewed like an enrolled one (90 days here).
    let renewed = renew::renew(&config).await.unwrap();
    assert_eq!(renewed.facility, name);
    assert!(renewed.not_after > before.not_after + Duration::from_secs(80 * 86_400));
    renew::current_tls(&config).unwrap();

    // Asking for another facility's certificate is refused.
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&config.tls.key).unwrap()).unwrap();
    let csr_der = harambee_agent::enrol::certificate_request(&key, "someone-else").unwrap();
    let mut client = EnrolmentServiceClient::new(c.h.channel(Role::Agent, &name).await);
    let err = client
        .renew_certificate(pb::RenewCertificateRequest { csr_der })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.message(),
        format!("the certificate request names \"someone-else\" but it may only be for {name:?}")
    );
}
