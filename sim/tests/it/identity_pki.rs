//! The CA key kept offline (`pki init --ca-out`): the serving host signs with an issuing CA,
//! peers trust only the root, enrolment and mTLS work through the two-level chain, and a new
//! issuing CA certified later by the offline root leaves existing certificates valid.

use harambee_sim::harness as common;
use harambee_sim::harness::identity as identity_common;

use common::*;
use harambee_coordinator::pki::{self, PkiError, PkiPaths};
use harambee_link::identity::Role;
use identity_common::*;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn issuer_cn(cert_path: &std::path::Path) -> String {
    let der = CertificateDer::from_pem_file(cert_path).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.issuer()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_the_ca_key_can_stay_offline() {
    let mut h = Harness::prepare(None);
    let offline = h.dir.path().join("offline-ca");
    h.pki = h.dir.path().join("pki-online");
    pki::init_offline(
        &h.pki,
        &offline,
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )
    .unwrap();
    let paths = PkiPaths::new(&h.pki);
    assert!(
        !paths.ca_key().exists(),
        "the root key is not on the serving host"
    );
    assert!(PkiPaths::new(&offline).ca_key().exists());
    assert_eq!(
        std::fs::read(paths.ca_cert()).unwrap(),
        std::fs::read(PkiPaths::new(&offline).ca_cert()).unwrap()
    );
    let server_chain = CertificateDer::pem_file_iter(paths.server_cert())
        .unwrap()
        .count();
    assert_eq!(
        server_chain, 2,
        "the coordinator sends its certificate and the issuing CA's"
    );
    pki::issue(&h.pki, Role::Operator, "admin", 1).unwrap();

    let mut c = Coord::start_on(h, NINETY_DAYS).await;
    let config = c.enrol_agent("remote-site").await;
    assert_eq!(
        CertificateDer::pem_file_iter(&config.tls.cert)
            .unwrap()
            .count(),
        2
    );
    let first_issuer = issuer_cn(&config.tls.cert);
    assert!(
        first_issuer.starts_with("Harambee issuing CA "),
        "{first_issuer}"
    );
    c.spawn_agent(&config);
    let mut admin = c.h.admin().await;
    wait_connected(&mut admin, &["remote-site"]).await;

    // The yearly ceremony: the offline root certifies a new issuing CA for the host.
    pki::issue_issuing_ca(&offline, &c.h.pki, 30).unwrap();
    assert_ne!(
        issuer_cn(&PkiPaths::new(&c.h.pki).server_cert()),
        first_issuer,
        "the server certificate moved too"
    );
    c.restart().await;
    let second = c.enrol_agent("second-site").await;
    assert_ne!(issuer_cn(&second.tls.cert), first_issuer);
    c.spawn_agent(&second);
    let mut admin = c.h.admin().await;
    wait_connected(&mut admin, &["remote-site", "second-site"]).await;
    c.stop_agents().await;

    // Without any CA key, the host refuses to sign and says what to do.
    let bare = c.h.dir.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    std::fs::copy(
        PkiPaths::new(&c.h.pki).ca_cert(),
        PkiPaths::new(&bare).ca_cert(),
    )
    .unwrap();
    let err = pki::issue(&bare, Role::Agent, "x", 1).unwrap_err();
    assert!(matches!(err, PkiError::NoSigningKey(_)), "{err}");
    assert!(err.to_string().contains("pki issuing-ca"), "{err}");
    assert!(pki::Signer::load(&PkiPaths::new(&bare)).unwrap().is_none());
}

/// `harambee-coordinator pki renew-server`, as a process, in the offline layout: the issuing
/// CA signs; the key stays unless `--new-key`; a key that does not belong to the certificate
/// is refused with a message saying so.
#[test]
fn identity_pki_renew_server_keeps_or_replaces_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
            .arg("coordinator")
            .args(args)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = run(&["pki", "init", "--dir", "pki", "--ca-out", "offline"]);
    assert!(ok, "{text}");
    let paths = PkiPaths::new(tmp.path().join("pki"));
    let first = pki::CertFacts::of_pem_file(&paths.server_cert()).unwrap();
    let key = std::fs::read(paths.server_key()).unwrap();

    let (ok, text) = run(&["pki", "renew-server", "--dir", "pki"]);
    assert!(ok, "{text}");
    let same = pki::CertFacts::of_pem_file(&paths.server_cert()).unwrap();
    assert!(
        text.contains(&format!(
            "renewed: serial {} (was {})",
            same.serial, first.serial
        )) && text.contains("same key"),
        "{text}"
    );
    assert_eq!(std::fs::read(paths.server_key()).unwrap(), key);
    assert_eq!(same.key_sha256, first.key_sha256);
    assert!(issuer_cn(&paths.server_cert()).starts_with("Harambee issuing CA"));

    let (ok, text) = run(&["pki", "renew-server", "--dir", "pki", "--new-key"]);
    assert!(ok, "{text}");
    let renewed = pki::CertFacts::of_pem_file(&paths.server_cert()).unwrap();
    assert_ne!(renewed.key_sha256, first.key_sha256);
    assert!(
        text.contains(&format!(
            "certificate revoke --serial {} --reason",
            same.serial
        )),
        "{text}"
    );

    // A key file that is not the certificate's is not certified by mistake.
    std::fs::write(paths.server_key(), &key).unwrap();
    let (ok, text) = run(&["pki", "renew-server", "--dir", "pki"]);
    assert!(!ok);
    assert!(
        text.contains("this key does not belong to") && text.contains("renew with a new key"),
        "{text}"
    );
}
