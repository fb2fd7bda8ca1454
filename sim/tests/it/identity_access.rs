//! Who may call what, over real mTLS: every RPC of the .proto files, called by an agent, an
//! operator, an auditor and a connection without a certificate, is allowed or refused
//! exactly as the "Access matrix" table of docs/access-matrix.md says; expired, foreign and
//! revoked certificates are refused whatever the call; every admin action is recorded with
//! who and when.

use harambee_sim::harness as common;
use harambee_sim::harness::identity as identity_common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use harambee_coordinator::pki::{self, PkiPaths};
use harambee_coordinator::service::error::ACCESS_DENIED;
use harambee_link::identity::Role;
use harambee_link::tls::{ClientTls, FailureKind};
use harambee_proto::pb;
use identity_common::*;
use tonic::Code;

const PROTOS: [&str; 2] = [
    include_str!("../../../proto/proto/harambee/v1/harambee.proto"),
    include_str!("../../../proto/proto/harambee/v1/enrolment.proto"),
];
const ACCESS_DOC: &str = include_str!("../../../docs/access-matrix.md");
/// The standard health service the gRPC port also serves (tonic-health).
const HEALTH_RPCS: [&str; 2] = ["grpc.health.v1.Health.Check", "grpc.health.v1.Health.Watch"];

/// The callers of the matrix, in the table's column order.
const CALLERS: [&str; 4] = ["agent", "operator", "auditor", "no certificate"];

/// `Service.Method` of every rpc in the .proto files, and the health service's.
fn rpcs() -> Vec<String> {
    let mut out: Vec<String> = HEALTH_RPCS.map(String::from).to_vec();
    for proto in PROTOS {
        let mut service = None;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = Some(rest.trim_end_matches('{').trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap().trim();
                out.push(format!(
                    "{}.{method}",
                    service.as_ref().expect("rpc outside a service")
                ));
            }
        }
    }
    out
}

/// The "Access matrix" table: RPC -> allowed, per caller.
fn documented_matrix() -> BTreeMap<String, [bool; 4]> {
    let table = ACCESS_DOC
        .split("## Access matrix")
        .nth(1)
        .expect("docs/access-matrix.md has an \"Access matrix\" section");
    let mut rows = table.lines().skip_while(|l| !l.starts_with('|'));
    let header: Vec<String> = rows
        .next()
        .unwrap()
        .split('|')
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(header[1..], CALLERS.map(String::from), "matrix columns");
    let mut matrix = BTreeMap::new();
    for row in rows.skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let rpc = cells[0].trim_matches('`').to_owned();
        let allowed = std::array::from_fn(|i| match cells[i + 1] {
            "yes" => true,
            "no" => false,
            other => panic!("matrix cell {other:?} for {rpc} is neither yes nor no"),
        });
        assert!(
            matrix.insert(rpc.clone(), allowed).is_none(),
            "{rpc} twice in the matrix"
        );
    }
    matrix
}

fn refused_by_access_layer(result: &Result<(), tonic::Status>) -> bool {
    matches!(result, Err(s) if s.message().starts_with(ACCESS_DENIED))
}

#[test]
fn identity_matrix_documents_every_rpc() {
    let documented: Vec<String> = documented_matrix().into_keys().collect();
    let mut rpcs = rpcs();
    rpcs.sort();
    assert_eq!(
        documented, rpcs,
        "docs/access-matrix.md must list exactly the RPCs of the .proto files"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_every_rpc_by_every_role_is_allowed_or_refused_as_documented() {
    let c = Coord::start(NINETY_DAYS).await;
    let channels = [
        c.h.channel(Role::Agent, "matrix-clinic").await,
        c.h.channel(Role::Operator, "admin").await,
        c.h.channel(Role::Auditor, "matrix-auditor").await,
        {
            let ca = std::fs::read(PkiPaths::new(&c.h.pki).ca_cert()).unwrap();
            harambee_agent::enrol::connect_without_certificate(
                &c.endpoint(),
                &ca,
                "",
                Duration::from_secs(5),
            )
            .await
            .unwrap()
        },
    ];
    let mut mismatches = Vec::new();
    for (rpc, allowed) in documented_matrix() {
        for (i, caller) in CALLERS.iter().enumerate() {
            let result = raw_call(channels[i].clone(), &rpc).await;
            let was_allowed = !refused_by_access_layer(&result);
            if was_allowed != allowed[i] {
                mismatches.push(format!(
                    "{rpc} by {caller}: documented {}, got {result:?}",
                    allowed[i]
                ));
            }
            if let Err(status) = &result
                && refused_by_access_layer(&result)
            {
                let expected = if i == 3 {
                    Code::Unauthenticated
                } else {
                    Code::PermissionDenied
                };
                assert_eq!(status.code(), expected, "{rpc} by {caller}: {status:?}");
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "calls that do not match docs/access-matrix.md:\n{}",
        mismatches.join("\n")
    );
}

/// Writes a certificate for `harambee://agent/<name>` signed by the CA in `pki` that expired
/// an hour ago, and returns the client files for it.
fn expired_agent(pki: &std::path::Path, name: &str) -> ClientTls {
    let paths = PkiPaths::new(pki);
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(paths.ca_key()).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(paths.ca_cert()).unwrap(), ca_key)
            .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("harambee://agent/{name}")
            .as_str()
            .try_into()
            .unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(2);
    params.not_after = now - time::Duration::hours(1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    ClientTls {
        ca_pem: std::fs::read(paths.ca_cert()).unwrap(),
        cert_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
        server_name: "localhost".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_expired_foreign_and_revoked_certificates_are_refused_for_every_rpc() {
    let c = Coord::start(NINETY_DAYS).await;
    let timeout = Duration::from_secs(5);

    // Expired: refused at the handshake, so no RPC at all.
    let expired = expired_agent(&c.h.pki, "old-clinic");
    let err = harambee_link::tls::connect(&c.endpoint(), &expired, timeout)
        .await
        .unwrap_err();
    assert_eq!(
        err.failure_kind(),
        Some(FailureKind::ClientRejected),
        "{err}"
    );
    assert!(err.to_string().contains("expired"), "{err}");

    // Issued by another federation's CA: refused at the handshake.
    let other = tempfile::tempdir().unwrap();
    pki::init(other.path(), &[]).unwrap();
    let (cert, key) = pki::issue(other.path(), Role::Agent, "impostor", 1).unwrap();
    let foreign =
        ClientTls::from_files(&PkiPaths::new(&c.h.pki).ca_cert(), &cert, &key, "localhost")
            .unwrap();
    let err = harambee_link::tls::connect(&c.endpoint(), &foreign, timeout)
        .await
        .unwrap_err();
    assert_eq!(
        err.failure_kind(),
        Some(FailureKind::ClientRejected),
        "{err}"
    );
    assert!(
        err.to_string().contains("not signed by the federation CA"),
        "{err}"
    );

    // Revoked: the handshake succeeds (the certificate is genuine) but every call, on a
    // connection opened before the revocation or after, is refused.
    let before = c.h.channel(Role::Agent, "gone-clinic").await;
    raw_call(before.clone(), "AgentService.OpenTaskStream")
        .await
        .unwrap();
    c.revoke("gone-clinic").await;
    let after = c.h.channel(Role::Agent, "gone-clinic").await;
    for rpc in rpcs() {
        for channel in [&before, &after] {
            let status = raw_call(channel.clone(), &rpc).await.unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
            assert_eq!(
                status.message(),
                format!("{ACCESS_DENIED}facility \"gone-clinic\" has been revoked"),
                "{rpc}"
            );
        }
    }
    // Others are unaffected.
    raw_call(
        c.h.channel(Role::Agent, "still-here").await,
        "AgentService.OpenTaskStream",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_admin_actions_are_recorded_with_who_and_when() {
    let started = harambee_coordinator::state::now_ms();
    let c = Coord::start(NINETY_DAYS).await;
    let facilities = c.h.facilities(Some(1));
    let mut admin = c.h.admin().await;
    let spec = spec(&facilities, 1, 10);
    create_federation(&mut admin, &spec).await;
    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    export(&mut admin, &spec.name, 0).await;
    c.add_facility("nyeri", 3600).await;
    raw_call(
        c.h.channel(Role::Agent, "embu").await,
        "AgentService.OpenTaskStream",
    )
    .await
    .ok();
    c.revoke("embu").await;

    // The auditor reads everything, changes nothing.
    let mut auditor = c.identity(Role::Auditor, "moh-audit").await;
    let actions = auditor
        .list_admin_actions(pb::ListAdminActionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .actions;
    let summary: Vec<(&str, &str)> = actions
        .iter()
        .map(|a| (a.action.as_str(), a.subject.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("federation_created", spec.name.as_str()),
            ("round_started", spec.name.as_str()),
            ("model_exported", spec.name.as_str()),
            ("facility_added", "nyeri"),
            ("facility_revoked", "embu"),
        ]
    );
    let admin_cert = PkiPaths::new(&c.h.pki).issued_cert(Role::Operator, "admin");
    let admin_sha = pki::pem_fingerprint(&std::fs::read(admin_cert).unwrap()).unwrap();
    let now = harambee_coordinator::state::now_ms();
    for a in &actions {
        assert_eq!(a.actor, "harambee://operator/admin");
        assert_eq!(a.actor_cert_sha256, admin_sha);
        assert!(a.at_unix_ms >= started && a.at_unix_ms <= now, "{a:?}");
    }
    assert_eq!(actions[1].detail, format!("round {}", round.id));
    assert_eq!(actions[2].detail, "version 0");
    let later = auditor
        .list_admin_actions(pb::ListAdminActionsRequest {
            after_id: actions[2].id,
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.actions.len(), 1);
    assert_eq!(later.actions[0].subject, "nyeri");

    let facilities = auditor
        .list_facilities(pb::ListFacilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .facilities;
    let statuses: Vec<(&str, &str)> = facilities
        .iter()
        .map(|f| (f.name.as_str(), f.status.as_str()))
        .collect();
    assert_eq!(statuses, [("embu", "revoked"), ("nyeri", "pending")]);
    let err = auditor
        .add_facility(pb::AddFacilityRequest {
            name: "x".into(),
            coordinator: c.endpoint(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut auditor_admin = pb::admin_service_client::AdminServiceClient::new(
        c.h.channel(Role::Auditor, "moh-audit").await,
    );
    let seen = auditor_admin
        .get_round(pb::GetRoundRequest { round_id: round.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.id, round.id);
    let err = auditor_admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        auditor
            .list_admin_actions(pb::ListAdminActionsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .actions
            .len(),
        5
    );
}
