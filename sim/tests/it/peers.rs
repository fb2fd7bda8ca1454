//! Agents trust a peer's secure-aggregation signing key only when the federation CA
//! certified it for that facility.

use harambee_coordinator::pki::{self, PkiPaths};
use harambee_link::identity::Role;
use harambee_link::identity::{PeerVerifier, signing_key_from_pem};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn der(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

#[test]
fn peer_keys_come_only_from_ca_signed_agent_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    pki::init(&ours, &[]).unwrap();
    pki::init(&theirs, &[]).unwrap();
    let (cert, key) = pki::issue(&ours, Role::Agent, "kisumu", 1).unwrap();
    let (foreign, _) = pki::issue(&theirs, Role::Agent, "kisumu", 1).unwrap();
    let (operator, _) = pki::issue(&ours, Role::Operator, "kisumu", 1).unwrap();

    let verifier =
        PeerVerifier::from_ca_pem(&std::fs::read(PkiPaths::new(&ours).ca_cert()).unwrap()).unwrap();
    let verifying = verifier.verify("kisumu", &der(&cert)).unwrap();
    let signing = signing_key_from_pem(&std::fs::read(&key).unwrap()).unwrap();
    assert_eq!(
        verifying,
        signing.verifying_key(),
        "the certified key is the agent's own signing key"
    );

    let err = verifier
        .verify("nakuru", &der(&cert))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not name harambee://agent/nakuru"),
        "{err}"
    );
    let err = verifier
        .verify("kisumu", &der(&foreign))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not valid for this federation"), "{err}");
    assert!(
        verifier.verify("kisumu", &der(&operator)).is_err(),
        "an operator certificate is not an agent's"
    );
    assert!(verifier.verify("kisumu", b"garbage").is_err());
}

#[test]
fn keys_issued_under_an_issuing_ca_verify_with_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let offline = dir.path().join("offline");
    pki::init_offline(&pki_dir, &offline, &[]).unwrap();
    let (cert, _) = pki::issue(&pki_dir, Role::Agent, "kisumu", 1).unwrap();
    let chain: Vec<Vec<u8>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(|c| c.unwrap().to_vec())
        .collect();
    let root = std::fs::read(PkiPaths::new(&offline).ca_cert()).unwrap();
    let verifier = PeerVerifier::from_ca_pem(&root).unwrap();
    assert!(
        verifier.verify("kisumu", &chain[0]).is_err(),
        "the leaf alone does not reach the root"
    );
    let intermediates = if chain.len() > 1 {
        chain[1..].to_vec()
    } else {
        vec![
            CertificateDer::from_pem_file(PkiPaths::new(&pki_dir).issuing_ca_cert())
                .unwrap()
                .to_vec(),
        ]
    };
    verifier
        .verify_chain("kisumu", &chain[0], &intermediates)
        .unwrap();
}
