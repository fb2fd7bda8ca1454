//! The commands people type, as processes: `pki init --ca-out`, `serve`, `facility add`,
//! `agent enrol`, `agent run`,
//! `facility list`, `audit actions` with an auditor's certificate, `facility revoke`,
//! `certificate revoke`.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// `harambee-sim` runs both command lines: `agent …` as `harambee-agent`, anything else as
/// `harambee-coordinator`.
fn command<S: AsRef<str>>(args: &[S]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_harambee-sim"));
    if args.first().map(AsRef::as_ref) != Some("agent") {
        command.arg("coordinator");
    }
    command.args(args.iter().map(AsRef::as_ref));
    command
}

async fn run<S: AsRef<str>>(dir: &Path, args: &[S]) -> Output {
    command(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

async fn ok<S: AsRef<str> + std::fmt::Debug>(dir: &Path, args: &[S]) -> String {
    let out = run(dir, args).await;
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn spawn(dir: &Path, args: &[&str], log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    command(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Runs `args` until its output contains `want`, for at most 30 s.
async fn until_output<S: AsRef<str> + std::fmt::Debug>(
    dir: &Path,
    args: &[S],
    want: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(dir, args).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if text.contains(want) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{args:?} never printed {want:?}; last:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_commands_enrol_list_audit_and_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("https://127.0.0.1:{port}");

    let init = ok(
        dir,
        &["pki", "init", "--dir", "pki", "--ca-out", "ca-offline"],
    )
    .await;
    assert!(init.contains("move this directory offline"), "{init}");
    ok(
        dir,
        &[
            "pki",
            "issue",
            "--dir",
            "pki",
            "--role",
            "auditor",
            "--name",
            "moh-audit",
        ],
    )
    .await;
    std::fs::write(
        dir.join("coordinator.toml"),
        format!("listen = \"127.0.0.1:{port}\"\ndatabase_url = \"sqlite://data/c.db?mode=rwc\"\nblob_dir = \"data/blobs\"\nledger_key = \"data/ledger.key\"\npki = \"pki\"\nheartbeat_interval_s = 1\nliveness_timeout_s = 3\n"),
    )
    .unwrap();
    let _server = spawn(
        dir,
        &["serve", "--config", "coordinator.toml"],
        "coordinator.log",
    );
    // An admin command: `parts`, then how to reach the coordinator as operator `admin`.
    let admin = |parts: &[&str]| -> Vec<String> {
        parts
            .iter()
            .copied()
            .chain(["--coordinator", endpoint.as_str(), "--pki", "pki"])
            .map(str::to_owned)
            .collect()
    };

    // The operator adds the facility; the token is on a line of its own.
    let out = until_output(
        dir,
        &admin(&["facility", "add", "nakuru-level5", "--expires", "2h"]),
        "hbe1.",
    )
    .await;
    let token = out
        .lines()
        .find(|l| l.starts_with("hbe1."))
        .unwrap()
        .to_owned();

    // Facility IT enrols into the directory that holds its data, and runs the agent.
    let sites = harambee_sim::demo::write_facilities(&dir.join("sites"), Some(1)).unwrap();
    let site = sites[0].dir.to_str().unwrap().to_owned();
    let enrolled = ok(dir, &["agent", "enrol", "--token", &token, "--dir", &site]).await;
    assert!(
        enrolled.contains("enrolled facility nakuru-level5"),
        "{enrolled}"
    );
    let config = Path::new(&site).join("agent.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[network]\nconnect_timeout_s = 5\nmax_backoff_s = 2\n");
    std::fs::write(&config, text).unwrap();
    let _agent = spawn(
        dir,
        &["agent", "run", "--config", config.to_str().unwrap()],
        "agent.log",
    );

    // The auditor sees it enrolled and connected, and who added it.
    let list = admin(&["facility", "list", "--auditor", "moh-audit"]);
    until_output(dir, &list, "nakuru-level5\tenrolled\tconnected").await;
    // `agents`: last seen is the last heartbeat (every second here), not when it connected.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let json = ok(dir, &admin(&["agents", "--output", "json"])).await;
    let agent: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(agent["facility"], "nakuru-level5", "{json}");
    assert_eq!(agent["connected"], true, "{json}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let quiet = now_ms - agent["last_seen_unix_ms"].as_i64().unwrap();
    assert!(
        (0..2_500).contains(&quiet),
        "last seen {quiet} ms ago: {json}"
    );
    let table = ok(dir, &admin(&["agents"])).await;
    assert!(table.contains("nakuru-level5\tconnected\t20"), "{table}");
    assert!(table.contains(" s ago)"), "{table}");
    let audit = ok(dir, &admin(&["audit", "actions", "--auditor", "moh-audit"])).await;
    assert!(
        audit.contains("harambee://operator/admin\tfacility_added\tnakuru-level5"),
        "{audit}"
    );

    // An auditor changes nothing (here, with its certificate where an operator's goes).
    std::fs::copy(
        dir.join("pki/issued/auditor-moh-audit.pem"),
        dir.join("pki/issued/operator-moh-audit.pem"),
    )
    .unwrap();
    std::fs::copy(
        dir.join("pki/issued/auditor-moh-audit.key"),
        dir.join("pki/issued/operator-moh-audit.key"),
    )
    .unwrap();
    let out = run(
        dir,
        &admin(&[
            "facility",
            "revoke",
            "nakuru-level5",
            "--operator",
            "moh-audit",
        ]),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("access denied: harambee://auditor/moh-audit may not call"),
        "{stderr}"
    );

    // Revoked: the agent is cut off and stays off.
    let revoked = ok(
        dir,
        &admin(&[
            "facility",
            "revoke",
            "nakuru-level5",
            "--reason",
            "decommissioned",
        ]),
    )
    .await;
    assert!(
        revoked.contains("facility nakuru-level5 revoked"),
        "{revoked}"
    );
    until_output(dir, &list, "nakuru-level5\trevoked\toffline").await;
    let again = run(
        dir,
        &["agent", "enrol", "--token", &token, "--dir", "elsewhere"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("error: the coordinator refused the enrolment"),
        "{stderr}"
    );

    // The auditor leaves: its certificate is revoked by file, and refused from then on.
    let out = ok(
        dir,
        &admin(&[
            "certificate",
            "revoke",
            "--cert",
            "pki/issued/auditor-moh-audit.pem",
            "--reason",
            "left",
        ]),
    )
    .await;
    assert!(
        out.contains("of harambee://auditor/moh-audit revoked at")
            && out.contains("every certificate for its key"),
        "{out}"
    );
    let out = run(dir, &list).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("has been revoked"),
        "{stderr}"
    );
}
