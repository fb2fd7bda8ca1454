//! `harambee-agent doctor`: a healthy agent's report passes; a broken certificate (corrupt
//! PEM, a key of another facility), a wrong CA and a missing data file are each named by
//! the check they break, with a fix, and the command exits non-zero.

use harambee_sim::harness as common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use harambee_agent::doctor::{Report, Status, diagnose};
use harambee_coordinator::pki::{self, PkiPaths};
use harambee_link::identity::Role;
use harambee_proto::pb;

/// A federation of three agents that has committed one round, so the agents have recorded
/// their last contact and the federation's schema: each agent's configuration file.
async fn healthy_federation(h: &mut Harness) -> Vec<PathBuf> {
    let facilities = h.facilities(Some(3));
    for f in &facilities {
        h.spawn_agent(f);
    }
    let mut admin = h.admin().await;
    let spec = plain(spec(&facilities, 3, 60));
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;
    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    facilities
        .iter()
        .map(|f| f.dir.join("agent.toml"))
        .collect()
}

/// A copy of the configuration at `path`, beside it (same state directory and data file),
/// with `from` replaced by `to` in its text.
fn variant(path: &Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from} not in {text}");
        text = text.replace(from, to);
    }
    let out = path.with_file_name(format!("{name}.toml"));
    std::fs::write(&out, text).unwrap();
    out
}

async fn doctor(path: &Path) -> Report {
    diagnose(path, &|_| None).await
}

fn check<'a>(report: &'a Report, name: &str) -> &'a harambee_agent::doctor::Check {
    report
        .check(name)
        .unwrap_or_else(|| panic!("no {name} check in\n{}", report.text()))
}

/// The binary, as a facility's IT runs it: exit code and standard output.
fn doctor_command(path: &Path, json: bool) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_harambee-sim"));
    command.args(["agent", "doctor", "--config"]).arg(path);
    if json {
        command.args(["--output", "json"]);
    }
    // The proxy variables of whoever runs the tests must not change the report.
    for name in ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        command.env_remove(name);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Every check of a running, healthy agent passes: data matching the federation's schema
/// (counts only), mutual TLS, the clock, the budget, the last contact; the binary exits 0
/// and its JSON says the same. Nothing of the data file's rows or of the key is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_agent_passes_every_check() {
    let mut h = Harness::start(None).await;
    let configs = healthy_federation(&mut h).await;
    let report = doctor(&configs[0]).await;
    let text = report.text();
    assert!(report.passed(), "{text}");
    // The harness's certificates last one day: the expiry warning, not a failure.
    let certificate = check(&report, "certificate");
    assert_eq!(certificate.status, Status::Warn, "{text}");
    assert!(certificate.detail.contains("expires in 0 days"), "{text}");
    for name in [
        "config",
        "state dir",
        "key",
        "ca",
        "data",
        "dns",
        "proxy",
        "tcp",
        "tls",
        "clock",
        "policy",
        "budget",
        "last contact",
    ] {
        assert_eq!(check(&report, name).status, Status::Ok, "{name}:\n{text}");
    }
    let data = check(&report, "data");
    assert!(data.detail.contains("matches federation"), "{text}");
    assert!(data.detail.contains("usable"), "{text}");
    assert!(
        check(&report, "tls").detail.contains("mutual TLS 1.3"),
        "{text}"
    );
    assert!(
        check(&report, "clock").detail.contains("the coordinator's"),
        "{text}"
    );
    // No patient row: the data file's first data line appears nowhere in the report.
    let csv = std::fs::read_to_string(configs[0].with_file_name("data.csv")).unwrap();
    let first_row = csv.lines().nth(1).unwrap();
    assert!(!text.contains(first_row), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    let (code, stdout) = doctor_command(&configs[0], false);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("ok    tls")),
        "{stdout}"
    );
    let (code, stdout) = doctor_command(&configs[0], true);
    assert_eq!(code, 0, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["passed"], true, "{stdout}");
    assert!(json["checks"].as_array().unwrap().len() >= 14, "{stdout}");
    h.stop_agents().await;
}

/// A certificate whose PEM is corrupt, and a key that belongs to another facility: each is
/// named by its check, the TLS check is not tried with them, and the binary exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_is_named() {
    let mut h = Harness::start(None).await;
    let configs = healthy_federation(&mut h).await;
    let paths = PkiPaths::new(&h.pki);
    let facility = configs[0]
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cert = paths.issued_cert(Role::Agent, &facility);
    assert!(cert.exists(), "{}", cert.display());

    // Corrupt PEM: a run of the base64 body overwritten.
    let pem = std::fs::read_to_string(&cert).unwrap();
    let body_start = pem.find('\n').unwrap() + 20;
    let mut corrupt = pem.clone();
    corrupt.replace_range(body_start..body_start + 12, "!!!!!!!!!!!!");
    let corrupt_path = h.dir.path().join("corrupt.pem");
    std::fs::write(&corrupt_path, corrupt).unwrap();
    let cert_line = format!("cert = {:?}", cert.display().to_string());
    let broken = variant(
        &configs[0],
        "broken-cert",
        &[(
            &cert_line,
            &format!("cert = {:?}", corrupt_path.display().to_string()),
        )],
    );
    let report = doctor(&broken).await;
    let text = report.text();
    assert!(!report.passed(), "{text}");
    let c = check(&report, "certificate");
    assert_eq!(c.status, Status::Fail, "{text}");
    assert!(c.detail.contains("cannot read the certificate"), "{text}");
    assert!(c.detail.contains("corrupt.pem"), "{text}");
    assert!(c.fix.as_deref().unwrap().contains("enrol again"), "{text}");
    assert_ne!(check(&report, "tls").status, Status::Ok, "{text}");
    let (code, stdout) = doctor_command(&broken, false);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL  certificate")),
        "{stdout}"
    );
    assert!(stdout.contains("fix: "), "{stdout}");

    // The key of another facility.
    let key = paths.issued_key(Role::Agent, &facility);
    let other = configs[1]
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let other_key = paths.issued_key(Role::Agent, &other);
    let key_line = format!("key = {:?}", key.display().to_string());
    let mismatched = variant(
        &configs[0],
        "mismatched-key",
        &[(
            &key_line,
            &format!("key = {:?}", other_key.display().to_string()),
        )],
    );
    let report = doctor(&mismatched).await;
    let text = report.text();
    assert!(!report.passed(), "{text}");
    assert_ne!(check(&report, "certificate").status, Status::Fail, "{text}");
    let k = check(&report, "key");
    assert_eq!(k.status, Status::Fail, "{text}");
    assert!(
        k.detail.contains("does not belong to the certificate"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    h.stop_agents().await;
}

/// The agent's CA file replaced by another federation's CA: the certificate does not chain
/// to it and the coordinator's certificate is not signed by it, both named "wrong CA".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_named() {
    let mut h = Harness::start(None).await;
    let configs = healthy_federation(&mut h).await;
    let other_pki = h.dir.path().join("other-pki");
    pki::init(&other_pki, &["localhost".to_owned()]).unwrap();
    let ca = PkiPaths::new(&h.pki).ca_cert();
    let other_ca = PkiPaths::new(&other_pki).ca_cert();
    let wrong = variant(
        &configs[0],
        "wrong-ca",
        &[(
            &format!("ca = {:?}", ca.display().to_string()),
            &format!("ca = {:?}", other_ca.display().to_string()),
        )],
    );
    let report = doctor(&wrong).await;
    let text = report.text();
    assert!(!report.passed(), "{text}");
    let c = check(&report, "ca");
    assert_eq!(c.status, Status::Fail, "{text}");
    assert!(c.detail.starts_with("wrong CA"), "{text}");
    let t = check(&report, "tls");
    assert_eq!(t.status, Status::Fail, "{text}");
    assert!(
        t.detail
            .contains("wrong CA: the coordinator's certificate is not signed by the CA"),
        "{text}"
    );
    assert_ne!(check(&report, "certificate").status, Status::Fail, "{text}");
    let (code, stdout) = doctor_command(&wrong, false);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL  tls")),
        "{stdout}"
    );
    h.stop_agents().await;
}

/// The data file moved away: the data check names the file and says where to set it; the
/// network checks still run and pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_data_file_is_named() {
    let mut h = Harness::start(None).await;
    let configs = healthy_federation(&mut h).await;
    let missing = variant(
        &configs[0],
        "missing-data",
        &[("csv = \"data.csv\"", "csv = \"moved-away.csv\"")],
    );
    let report = doctor(&missing).await;
    let text = report.text();
    assert!(!report.passed(), "{text}");
    let d = check(&report, "data");
    assert_eq!(d.status, Status::Fail, "{text}");
    assert!(d.detail.contains("cannot read the data file"), "{text}");
    assert!(d.detail.contains("moved-away.csv"), "{text}");
    assert!(d.fix.as_deref().unwrap().contains("[data] csv"), "{text}");
    assert_eq!(check(&report, "tls").status, Status::Ok, "{text}");
    let failed: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.check)
        .collect();
    assert_eq!(failed, ["data"], "{text}");
    let (code, stdout) = doctor_command(&missing, false);
    assert_eq!(code, 1, "{stdout}");
    h.stop_agents().await;
}
