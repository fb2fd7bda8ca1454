//! Enrolment over real TLS: one token and one command give a facility a working agent; a
//! reused, expired, withdrawn, forged or damaged token, a token for another facility, a
//! request naming another facility, and a coordinator that is not the pinned one are each
//! refused with a message that says which.

use harambee_sim::harness as common;
use harambee_sim::harness::identity as identity_common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use harambee_agent::enrol;
use harambee_coordinator::pki::{self, PkiPaths};
use harambee_link::identity::Role;
use harambee_link::identity::{PeerVerifier, signing_key_from_pem};
use harambee_link::token::Token;
use harambee_proto::pb;
use identity_common::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn enrol_err(token: &str, dir: &std::path::Path) -> String {
    format!("{:#}", enrol::enrol(token, dir, TIMEOUT).await.unwrap_err())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_one_token_and_one_command_give_a_working_agent() {
    let mut c = Coord::start(NINETY_DAYS).await;
    let text = c.add_facility("kisumu-crh", 3600).await;
    let token = Token::parse(&text).unwrap();
    let ca_path = PkiPaths::new(&c.h.pki).ca_cert();
    assert_eq!(token.coordinator, c.endpoint());
    assert_eq!(token.facility, "kisumu-crh");
    assert_eq!(
        token.ca_sha256,
        pki::pem_fingerprint(&std::fs::read(&ca_path).unwrap()).unwrap()
    );

    let dir = c.site_dir("kisumu-crh");
    let done = enrol::enrol(&text, &dir, TIMEOUT).await.unwrap();
    assert!(done.wrote_config);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&done.key), 0o600);
    assert_eq!(
        std::fs::read(&done.ca).unwrap(),
        std::fs::read(&ca_path).unwrap()
    );

    // An Ed25519 agent certificate for this facility from the federation CA, valid 90 days,
    // whose key is the one the agent signs secure-aggregation advertisements with.
    let der = CertificateDer::from_pem_file(&done.cert).unwrap();
    let identity = harambee_link::identity::identity_from_cert(&der).unwrap();
    assert_eq!(
        (identity.role, identity.name.as_str()),
        (Role::Agent, "kisumu-crh")
    );
    let verifier = PeerVerifier::from_ca_pem(&std::fs::read(&ca_path).unwrap()).unwrap();
    let certified = verifier.verify("kisumu-crh", &der).unwrap();
    let signing = signing_key_from_pem(&std::fs::read(&done.key).unwrap()).unwrap();
    assert_eq!(certified, signing.verifying_key());
    let (_, not_after) = pki::validity(&der).unwrap();
    let left = not_after - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::days(89) && left <= time::Duration::days(90),
        "{left}"
    );

    // The written agent.toml works as it is (the site directory already holds data.csv).
    let config = agent_config(&dir);
    assert_eq!(config.tls.cert, done.cert);
    c.spawn_agent(&config);
    let mut admin = c.h.admin().await;
    common::wait_connected(&mut admin, &["kisumu-crh"]).await;
    let facilities = c
        .operator()
        .await
        .list_facilities(pb::ListFacilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .facilities;
    assert_eq!(facilities.len(), 1);
    assert_eq!(
        (facilities[0].status.as_str(), facilities[0].connected),
        ("enrolled", true)
    );
    assert_eq!(
        facilities[0].cert_not_after_unix_ms,
        not_after.unix_timestamp() * 1000
    );
    assert_eq!(facilities[0].created_by, "harambee://operator/admin");

    // Enrolling the same directory again is refused before anything is sent.
    let err = enrol_err(&c.add_facility("other", 3600).await, &dir).await;
    assert!(err.contains("already enrolled"), "{err}");
    c.stop_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_a_token_works_once() {
    let c = Coord::start(NINETY_DAYS).await;
    let token = c.add_facility("nakuru", 3600).await;
    enrol::enrol(&token, &c.h.dir.path().join("first"), TIMEOUT)
        .await
        .unwrap();
    let err = enrol_err(&token, &c.h.dir.path().join("second")).await;
    assert!(
        err.contains(
            "the coordinator refused the enrolment: this enrolment token was already used (at "
        ),
        "{err}"
    );
    assert!(err.contains("ask the operator for a new one"), "{err}");
    assert!(!c.h.dir.path().join("second").join("agent.pem").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_an_expired_token_is_refused() {
    let c = Coord::start(NINETY_DAYS).await;
    let token = c.add_facility("garissa", 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = enrol_err(&token, &c.h.dir.path().join("site")).await;
    assert!(err.contains("this enrolment token expired at "), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_a_token_for_another_facility_is_refused() {
    let c = Coord::start(NINETY_DAYS).await;
    c.add_facility("nakuru", 3600).await;
    let kisumu = Token::parse(&c.add_facility("kisumu", 3600).await).unwrap();
    // A forger edits the facility and recomputes the checksum.
    let forged = kisumu.with_facility("nakuru");
    let err = enrol_err(&forged.text, &c.h.dir.path().join("site")).await;
    assert!(
        err.contains("this enrolment token was issued for facility \"kisumu\", not \"nakuru\""),
        "{err}"
    );
    // The genuine token still works.
    enrol::enrol(&kisumu.text, &c.h.dir.path().join("kisumu"), TIMEOUT)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_a_tampered_token_is_refused() {
    let c = Coord::start(NINETY_DAYS).await;
    let text = c.add_facility("meru", 3600).await;
    let dir = c.h.dir.path().join("site");

    // Damaged in copying: refused before anything is sent.
    let mut damaged = text.clone().into_bytes();
    let i = harambee_link::token::TOKEN_PREFIX.len() + 20;
    damaged[i] = if damaged[i] == b'x' { b'y' } else { b'x' };
    let err = enrol_err(std::str::from_utf8(&damaged).unwrap(), &dir).await;
    assert!(err.contains("the enrolment token is damaged"), "{err}");
    assert!(
        !dir.join("agent.key").exists(),
        "nothing written for a damaged token"
    );

    // Forged with a valid checksum: the coordinator finds the secret wrong.
    let forged = Token::parse(&text).unwrap().with_secret([7; 32]);
    let err = enrol_err(&forged.text, &dir).await;
    assert!(
        err.contains("this enrolment token is not valid: its secret does not match"),
        "{err}"
    );

    // A token id this coordinator never issued.
    let stranger = Token::generate(
        &c.endpoint(),
        None,
        "meru",
        &Token::parse(&text).unwrap().ca_sha256,
        i64::MAX,
    );
    let err = enrol_err(&stranger.text, &dir).await;
    assert!(
        err.contains("this enrolment token was not issued by this coordinator"),
        "{err}"
    );

    // None of that burnt the real token (the key of the failed attempts is reused).
    let done = enrol::enrol(&text, &dir, TIMEOUT).await.unwrap();
    assert_eq!(done.facility, "meru");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_a_request_naming_another_facility_is_refused() {
    let c = Coord::start(NINETY_DAYS).await;
    let token = c.add_facility("kisumu", 3600).await;
    let mut client = c.enrolment_without_certificate().await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();

    let csr_der = enrol::certificate_request(&key, "nakuru").unwrap();
    let err = client
        .enrol(pb::EnrolRequest {
            token: token.clone(),
            csr_der,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.message(),
        "the certificate request names \"nakuru\" but it may only be for \"kisumu\""
    );

    // An operator certificate request, or a key that cannot sign advertisements, neither.
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "harambee://operator/kisumu".try_into().unwrap(),
    )];
    let csr_der = params.serialize_request(&key).unwrap().der().to_vec();
    let err = client
        .enrol(pb::EnrolRequest {
            token: token.clone(),
            csr_der,
        })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("asks for the operator role but it may only be for the agent role"),
        "{err:?}"
    );
    let p256 = rcgen::KeyPair::generate().unwrap();
    let csr_der = enrol::certificate_request(&p256, "kisumu").unwrap();
    let err = client
        .enrol(pb::EnrolRequest {
            token: token.clone(),
            csr_der,
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("agent keys must be Ed25519"),
        "{err:?}"
    );
    let err = client
        .enrol(pb::EnrolRequest {
            token: token.clone(),
            csr_der: b"garbage".to_vec(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("not a valid signed PKCS#10 request"),
        "{err:?}"
    );

    // The certificate never carries more than the coordinator decides, whatever is asked.
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kisumu");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr_der = params.serialize_request(&key).unwrap().der().to_vec();
    let issued = client
        .enrol(pb::EnrolRequest { token, csr_der })
        .await
        .unwrap()
        .into_inner();
    let der = CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(!cert.is_ca());
    assert_eq!(
        harambee_link::identity::identity_from_cert(&der)
            .unwrap()
            .to_string(),
        "harambee://agent/kisumu"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_reissued_and_revoked_tokens_are_withdrawn() {
    let c = Coord::start(NINETY_DAYS).await;
    let first = c.add_facility("kitui", 3600).await;
    let second = c.add_facility("kitui", 3600).await;
    let err = enrol_err(&first, &c.h.dir.path().join("a")).await;
    assert!(
        err.contains("this enrolment token was withdrawn at "),
        "{err}"
    );
    enrol::enrol(&second, &c.h.dir.path().join("b"), TIMEOUT)
        .await
        .unwrap();

    // Enrolled: a new token needs --reenrol.
    let mut operator = c.operator().await;
    let request = pb::AddFacilityRequest {
        name: "kitui".into(),
        expires_s: 60,
        reenrol: false,
        coordinator: c.endpoint(),
        server_name: String::new(),
    };
    let err = operator.add_facility(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("pass --reenrol"), "{err:?}");
    let third = operator
        .add_facility(pb::AddFacilityRequest {
            reenrol: true,
            ..request.clone()
        })
        .await
        .unwrap()
        .into_inner()
        .token;

    // Revoked: its tokens are withdrawn and it cannot be added again.
    c.revoke("kitui").await;
    let err = enrol_err(&third, &c.h.dir.path().join("c")).await;
    assert!(
        err.contains("withdrawn") || err.contains("revoked"),
        "{err}"
    );
    let err = operator
        .add_facility(pb::AddFacilityRequest {
            reenrol: true,
            ..request
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("revocation is permanent"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_an_agent_sends_nothing_to_a_coordinator_that_is_not_the_pinned_one() {
    let c = Coord::start(NINETY_DAYS).await;
    let genuine = Token::parse(&c.add_facility("lamu", 3600).await).unwrap();
    // A token pinning another CA, as if the address led somewhere else.
    let other = Token::generate(&c.endpoint(), None, "lamu", &"ab".repeat(32), i64::MAX);
    let err = enrol_err(&other.text, &c.h.dir.path().join("site")).await;
    assert!(
        err.contains(&format!(
            "presented a CA certificate with SHA-256 {}, but the token pins {}",
            genuine.ca_sha256,
            "ab".repeat(32)
        )),
        "{err}"
    );
    assert!(err.contains("nothing was sent"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_a_ca_bundle_of_two_certificates_is_refused_and_nothing_is_written() {
    let mut c = Coord::start(NINETY_DAYS).await;
    let text = c.add_facility("bundled", 3600).await;
    let token = Token::parse(&text).unwrap();
    let ca_path = PkiPaths::new(&c.h.pki).ca_cert();
    let genuine = std::fs::read_to_string(&ca_path).unwrap();

    // The coordinator answers with the pinned CA followed by a CA of its own choosing, which
    // would then vouch for any coordinator, and for any peer, at this facility.
    let elsewhere = tempfile::tempdir().unwrap();
    pki::init(elsewhere.path(), &[]).unwrap();
    let extra = std::fs::read_to_string(PkiPaths::new(elsewhere.path()).ca_cert()).unwrap();
    std::fs::write(&ca_path, format!("{genuine}{extra}")).unwrap();
    c.restart().await;
    let dir = c.h.dir.path().join("bundled-site");
    let err = enrol_err(&text, &dir).await;
    assert!(
        err.contains(&format!(
            "the server presented a CA bundle of 2 certificates, but the token pins exactly one CA certificate (SHA-256 {})",
            token.ca_sha256
        )),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
    assert!(!dir.exists(), "nothing is written, not even the key");

    // Text around the one certificate is not copied: ca.pem is written from the DER the
    // token pins. The token was not used by the refused attempt.
    std::fs::write(
        &ca_path,
        format!("Federation CA, see https://example.org/evil\n{genuine}"),
    )
    .unwrap();
    c.restart().await;
    let done = enrol::enrol(&text, &dir, TIMEOUT).await.unwrap();
    assert_eq!(std::fs::read_to_string(&done.ca).unwrap(), genuine);
}
