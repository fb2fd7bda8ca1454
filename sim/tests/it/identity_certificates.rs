//! Certificates one by one, over real mTLS: revocation by serial for every role (operators,
//! auditors, agents and the coordinator's own server certificate), refused on every call and
//! recorded in the privacy ledger; renewal only for the same key and never for a revoked
//! certificate or key; `pki renew-server` for the same key or a new one.

use harambee_sim::harness as common;
use harambee_sim::harness::identity as identity_common;

use std::path::Path;
use std::time::Duration;

use harambee_agent::renew;
use harambee_coordinator::pki::{self, CertFacts, PkiPaths, ServerKey};
use harambee_coordinator::service::error::ACCESS_DENIED;
use harambee_link::identity::Role;
use harambee_privacy::ledger::event::CertificateChange;
use harambee_privacy::ledger::{LedgerEvent, LedgerLine};
use harambee_proto::pb::{
    self, audit_service_client::AuditServiceClient,
    enrolment_service_client::EnrolmentServiceClient,
};
use identity_common::*;
use tonic::Code;

fn facts(cert: &Path) -> CertFacts {
    CertFacts::of_pem_file(cert).unwrap()
}

async fn revoke(c: &Coord, serial: &str, certificate_pem: &str) -> pb::RevokedCertificate {
    c.operator()
        .await
        .revoke_certificate(pb::RevokeCertificateRequest {
            serial: serial.to_owned(),
            reason: "test".to_owned(),
            certificate_pem: certificate_pem.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The `certificate` entries of the privacy ledger: (change, identity, serial, key).
async fn ledgered_certificates(c: &Coord) -> Vec<(CertificateChange, String, String, String)> {
    let mut audit = AuditServiceClient::new(c.h.channel(Role::Auditor, "ledger-reader").await);
    let entries = audit
        .get_entries(pb::GetEntriesRequest {
            start: 0,
            end: 1_000_000,
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    entries
        .iter()
        .enumerate()
        .filter_map(
            |(i, text)| match LedgerLine::parse(i + 1, text).unwrap().event {
                LedgerEvent::Certificate {
                    change,
                    identity,
                    serial,
                    key_sha256,
                    ..
                } => Some((change, identity, serial, key_sha256)),
                _ => None,
            },
        )
        .collect()
}

fn renewal_request(key_path: &Path, facility: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(key_path).unwrap()).unwrap();
    harambee_agent::enrol::certificate_request(&key, facility).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_a_revoked_operator_or_auditor_certificate_is_refused() {
    let mut c = Coord::start(NINETY_DAYS).await;
    let paths = PkiPaths::new(&c.h.pki);
    // Bob, a second operator, with a connection opened before the revocation.
    let mut bob = c.identity(Role::Operator, "bob").await;
    bob.list_facilities(pb::ListFacilitiesRequest {})
        .await
        .unwrap();
    let bob_cert = facts(&paths.issued_cert(Role::Operator, "bob"));

    // By serial alone, typed as openssl prints it: the coordinator did not issue it.
    let typed = bob_cert
        .serial
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    let revoked = revoke(&c, &typed, "").await;
    assert_eq!(revoked.serial, bob_cert.serial);
    assert_eq!(revoked.revoked_by, "harambee://operator/admin");
    let refused = format!(
        "{ACCESS_DENIED}the client certificate (serial {}) has been revoked",
        bob_cert.serial
    );
    // Refused on the open connection and on a new one, whatever the call.
    let err = bob
        .list_facilities(pb::ListFacilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::PermissionDenied, refused.as_str())
    );
    let other =
        c.h.admin()
            .await
            .list_agents(pb::ListAgentsRequest {})
            .await;
    assert!(other.is_ok(), "the other operator is untouched: {other:?}");
    let mut again = c.identity(Role::Operator, "bob").await;
    let err = again
        .add_facility(pb::AddFacilityRequest {
            name: "by-bob".to_owned(),
            coordinator: c.endpoint(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::PermissionDenied, refused.as_str())
    );

    // An auditor, revoked with the certificate itself: its identity and key are recorded.
    let mut carol = c.identity(Role::Auditor, "carol").await;
    carol
        .list_admin_actions(pb::ListAdminActionsRequest::default())
        .await
        .unwrap();
    let carol_pem = std::fs::read_to_string(paths.issued_cert(Role::Auditor, "carol")).unwrap();
    let carol_cert = facts(&paths.issued_cert(Role::Auditor, "carol"));
    let revoked = revoke(&c, "", &carol_pem).await;
    assert_eq!(
        (revoked.identity.as_str(), revoked.key_sha256.as_str()),
        ("harambee://auditor/carol", carol_cert.key_sha256.as_str())
    );
    let err = carol
        .list_admin_actions(pb::ListAdminActionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A serial that does not match the certificate given is refused as such.
    let err = c
        .operator()
        .await
        .revoke_certificate(pb::RevokeCertificateRequest {
            serial: "0abc".to_owned(),
            reason: String::new(),
            certificate_pem: carol_pem.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("serial 0abc is not the serial"),
        "{err:?}"
    );

    // Recorded in the ledger and the admin-action log.
    assert_eq!(
        ledgered_certificates(&c).await,
        [
            (
                CertificateChange::Revoked,
                String::new(),
                bob_cert.serial.clone(),
                String::new()
            ),
            (
                CertificateChange::Revoked,
                "harambee://auditor/carol".to_owned(),
                carol_cert.serial.clone(),
                carol_cert.key_sha256.clone()
            ),
        ]
    );
    let actions = c
        .operator()
        .await
        .list_admin_actions(pb::ListAdminActionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .actions;
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.action == "certificate_revoked")
            .count(),
        2
    );

    // Durable: refused after a restart. A new certificate for Bob (new key) works.
    c.restart().await;
    let err = c
        .identity(Role::Operator, "bob")
        .await
        .list_facilities(pb::ListFacilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::PermissionDenied, refused.as_str())
    );
    pki::issue(&c.h.pki, Role::Operator, "bob", 1).unwrap();
    c.identity(Role::Operator, "bob")
        .await
        .list_facilities(pb::ListFacilitiesRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_renewal_with_a_new_key_is_refused() {
    let c = Coord::start(NINETY_DAYS).await;
    let config = c.enrol_agent("new-key").await;
    let channel = harambee_link::tls::connect(
        &c.endpoint(),
        &renew::current_tls(&config).unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut client = EnrolmentServiceClient::new(channel);

    // A stolen certificate (and key) cannot move to the thief's own key.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr_der = harambee_agent::enrol::certificate_request(&other, "new-key").unwrap();
    let err = client
        .renew_certificate(pb::RenewCertificateRequest { csr_der })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.message(),
        "a renewal must keep the key: the certificate request's key differs from the key of the certificate it renews (a new key means enrolling again)"
    );

    // The same key renews, and the renewal is in the ledger.
    let before = facts(&config.tls.cert);
    renew::renew(&config).await.unwrap();
    let after = facts(&config.tls.cert);
    assert_ne!(after.serial, before.serial);
    assert_eq!(after.key_sha256, before.key_sha256);
    assert_eq!(
        ledgered_certificates(&c).await,
        [(
            CertificateChange::Renewed,
            "harambee://agent/new-key".to_owned(),
            after.serial,
            after.key_sha256
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_a_revoked_certificate_cannot_be_renewed_nor_its_renewals_used() {
    let mut c = Coord::start(NINETY_DAYS).await;
    let config = c.enrol_agent("stolen").await;
    // The thief's copy of the enrolled certificate, and a renewal made with it before the
    // revocation (renewal keeps the key).
    let stolen = c.h.dir.path().join("stolen.pem");
    std::fs::copy(&config.tls.cert, &stolen).unwrap();
    let stolen_facts = facts(&stolen);
    renew::renew(&config).await.unwrap();
    let renewed = facts(&config.tls.cert);
    c.spawn_agent(&config);
    let mut admin = c.h.admin().await;
    common::wait_connected(&mut admin, &["stolen"]).await;

    // The operator revokes the enrolled certificate by its serial: the coordinator issued
    // it, so it knows its key, and the renewal dies with it.
    let revoked = revoke(&c, &stolen_facts.serial, "").await;
    assert_eq!(
        (revoked.identity.as_str(), revoked.key_sha256.as_str()),
        ("harambee://agent/stolen", stolen_facts.key_sha256.as_str())
    );
    eventually(
        Duration::from_secs(10),
        "the agent connected with the renewal is disconnected",
        || async {
            agents(&c)
                .await
                .iter()
                .any(|a| a.facility == "stolen" && !a.connected)
        },
    )
    .await;

    let renew_with = |cert: std::path::PathBuf| {
        let c = &c;
        let config = &config;
        async move {
            let tls = harambee_link::tls::ClientTls::from_files(
                &config.tls.ca,
                &cert,
                &config.tls.key,
                &config.server_name(),
            )
            .unwrap();
            let channel = harambee_link::tls::connect(&c.endpoint(), &tls, Duration::from_secs(5))
                .await
                .unwrap();
            EnrolmentServiceClient::new(channel)
                .renew_certificate(pb::RenewCertificateRequest {
                    csr_der: renewal_request(&config.tls.key, "stolen"),
                })
                .await
                .unwrap_err()
        }
    };
    let err = renew_with(stolen.clone()).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        format!(
            "{ACCESS_DENIED}the client certificate (serial {}) has been revoked",
            stolen_facts.serial
        )
    );
    let err = renew_with(config.tls.cert.clone()).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        format!(
            "{ACCESS_DENIED}the client certificate's key has been revoked (with the certificate of serial {}); enrol again with a new key",
            stolen_facts.serial
        )
    );
    assert_ne!(renewed.serial, stolen_facts.serial);
    for _ in 0..20 {
        assert!(
            agents(&c)
                .await
                .iter()
                .any(|a| a.facility == "stolen" && !a.connected),
            "the agent stays out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Re-enrolling the facility with the same (revoked) key is refused too.
    let token = {
        let request = pb::AddFacilityRequest {
            name: "stolen".to_owned(),
            expires_s: 3600,
            reenrol: true,
            coordinator: c.endpoint(),
            server_name: String::new(),
        };
        c.operator()
            .await
            .add_facility(request)
            .await
            .unwrap()
            .into_inner()
            .token
    };
    let dir = c.h.dir.path().join("re-enrol");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&config.tls.key, dir.join("agent.key")).unwrap();
    let err = harambee_agent::enrol::enrol(&token, &dir, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("this key has been revoked"),
        "{err:#}"
    );
    c.stop_agents().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_a_revoked_server_certificate_is_not_served_and_renew_server_replaces_it() {
    let mut c = Coord::start(NINETY_DAYS).await;
    let paths = PkiPaths::new(&c.h.pki);
    let key_before = std::fs::read(paths.server_key()).unwrap();
    let first = facts(&paths.server_cert());
    assert_eq!(first.identity, "server");

    // Routine renewal: same key, same names, a new serial; clients connect after a restart.
    let (old, same_key) = pki::renew_server(&c.h.pki, &[], ServerKey::Keep, 90).unwrap();
    assert_eq!(old, first);
    assert_ne!(same_key.serial, first.serial);
    assert_eq!(same_key.key_sha256, first.key_sha256);
    assert_eq!(std::fs::read(paths.server_key()).unwrap(), key_before);
    c.restart().await;
    c.operator()
        .await
        .list_facilities(pb::ListFacilitiesRequest {})
        .await
        .unwrap();

    // The key leaked: the operator revokes the server certificate (and with it the key).
    let pem = std::fs::read_to_string(paths.server_cert()).unwrap();
    let revoked = revoke(&c, "", &pem).await;
    assert_eq!(revoked.identity, "server");
    c.stop().await;
    let coord = harambee_coordinator::server::open(&c.h.storage, common::test_settings())
        .await
        .unwrap();
    let err = harambee_coordinator::service::enrol::enable_from_pki(&coord, &paths)
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("(serial {}) has been revoked", same_key.serial))
            && text.contains("pki renew-server --new-key"),
        "{text}"
    );
    // Renewing for the same key does not help; a new key does.
    pki::renew_server(&c.h.pki, &[], ServerKey::Keep, 90).unwrap();
    let err = coord.check_server_certificate(&paths).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("revoked with its key"),
        "{err:#}"
    );
    let (_, new_key) = pki::renew_server(&c.h.pki, &[], ServerKey::New, 90).unwrap();
    assert_ne!(new_key.key_sha256, first.key_sha256);
    assert_ne!(std::fs::read(paths.server_key()).unwrap(), key_before);
    harambee_coordinator::service::enrol::enable_from_pki(&coord, &paths)
        .await
        .unwrap();
    drop(coord);
    c.restart().await;
    c.operator()
        .await
        .list_facilities(pb::ListFacilitiesRequest {})
        .await
        .unwrap();
}
