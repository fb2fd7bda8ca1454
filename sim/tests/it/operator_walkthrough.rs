//! The README's path from a fresh machine to a federation, as processes and with the files a
//! new user takes it from: the coordinator on PostgreSQL from `deploy/systemd/
//! coordinator.toml`, the federation from the README's `federation.toml`, three facilities
//! enrolled with tokens into separate state directories and run from `deploy/systemd/
//! agent.toml` (one of them behind a real HTTP proxy), the operator's commands reaching the
//! coordinator through an operator profile, `round start --wait`, and the round counter on
//! the ops port.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use harambee_sim::harness::tinyproxy::{Tinyproxy, TinyproxyConfig};
use harambee_sim::harness::{PgDatabase, path_str};
use tokio::process::{Child, Command};

const FEDERATION: &str = "heart-disease";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(root.join(path)).unwrap()
}

/// The README's `federation.toml`: the first TOML block after "A federation".
fn readme_federation() -> String {
    let readme = repo_file("README.md");
    let from = readme
        .find("A federation (`federation.toml`)")
        .expect("the README shows a federation.toml");
    let block = &readme[from..];
    let start = block.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + block[start..].find("```").unwrap();
    block[start..end].to_owned()
}

/// `harambee-sim` runs both command lines: `agent …` as `harambee-agent`, anything else as
/// `harambee-coordinator`. Operator commands find the coordinator through `profile`.
fn command(dir: &Path, profile: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_harambee-sim"));
    if args.first() != Some(&"agent") {
        command.arg("coordinator");
    }
    command
        .args(args)
        .current_dir(dir)
        .env("HARAMBEE_PROFILE", profile)
        .stdin(Stdio::null());
    command
}

async fn run(dir: &Path, profile: &Path, args: &[&str]) -> Output {
    command(dir, profile, args).output().await.unwrap()
}

async fn ok(dir: &Path, profile: &Path, args: &[&str]) -> String {
    let out = run(dir, profile, args).await;
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn spawn(dir: &Path, profile: &Path, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    command(dir, profile, args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `deploy/systemd/<file>` with its absolute paths and addresses replaced.
fn from_deploy(file: &str, replacements: &[(&str, String)]) -> String {
    let mut text = repo_file(&format!("deploy/systemd/{file}"));
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "deploy/systemd/{file} no longer has {from:?}"
        );
        text = text.replace(from, to);
    }
    text
}

/// Each JSON line of `text`.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_operator_runs_a_federation_from_the_readme_and_deploy_files() {
    let db = PgDatabase::create().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (port, ops_port) = (free_port(), free_port());
    let endpoint = format!("https://127.0.0.1:{port}");
    let profile = dir.join("operator.toml");

    // The operator's profile: no --coordinator or --pki on any command.
    std::fs::write(
        &profile,
        format!("coordinator = {endpoint:?}\nserver_name = \"localhost\"\npki = \"pki\"\n"),
    )
    .unwrap();

    // The national unit: a PKI, then the coordinator from the systemd sample configuration.
    ok(dir, &profile, &["pki", "init", "--dir", "pki"]).await;
    let state = dir.join("coordinator-state");
    std::fs::create_dir_all(&state).unwrap();
    let config = from_deploy(
        "coordinator.toml",
        &[
            ("0.0.0.0:7443", format!("127.0.0.1:{port}")),
            ("postgres://harambee@db.internal/harambee", db.url.clone()),
            ("/var/lib/harambee", path_str(&state)),
            ("/etc/harambee/pki", path_str(&dir.join("pki"))),
            ("127.0.0.1:9464", format!("127.0.0.1:{ops_port}")),
            (
                "heartbeat_interval_s = 5",
                "heartbeat_interval_s = 1".into(),
            ),
        ],
    );
    std::fs::write(dir.join("coordinator.toml"), config).unwrap();
    let _coordinator = spawn(
        dir,
        &profile,
        &["serve", "--config", "coordinator.toml"],
        &dir.join("coordinator.log"),
    );

    std::fs::write(dir.join("federation.toml"), readme_federation()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let created = loop {
        let out = run(
            dir,
            &profile,
            &["federation", "create", "--config", "federation.toml"],
        )
        .await;
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "federation create: {}\ncoordinator log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        created.contains("created federation heart-disease"),
        "{created}"
    );
    assert!(created.contains("ε ≤ 10: "), "{created}");

    // Three facilities, each enrolled with its token into its own state directory, and run
    // from the systemd sample agent.toml; the third reaches the coordinator only through
    // a real HTTP proxy.
    let proxy = Tinyproxy::start(&TinyproxyConfig {
        connect_port: port,
        basic_auth: None,
    });
    let sites = harambee_sim::demo::write_facilities(&dir.join("data"), Some(3)).unwrap();
    let mut agents = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        let out = ok(
            dir,
            &profile,
            &["facility", "add", &site.name, "--expires", "1h"],
        )
        .await;
        let token = out.lines().find(|l| l.starts_with("hbe1.")).unwrap();
        let home: PathBuf = dir.join(format!("agent-{i}"));
        let tls = home.join("tls");
        let enrolled = ok(
            dir,
            &profile,
            &["agent", "enrol", "--token", token, "--dir", &path_str(&tls)],
        )
        .await;
        // The coordinator named the federation at enrolment; enrol's agent.toml allows it.
        assert!(
            enrolled.contains("federation heart-disease (logistic_regression, label target, open to every facility)"),
            "{enrolled}"
        );
        let skeleton = std::fs::read_to_string(tls.join("agent.toml")).unwrap();
        assert!(
            skeleton.contains("allowed_federations = [\"heart-disease\"]"),
            "{skeleton}"
        );
        std::fs::create_dir_all(home.join("data")).unwrap();
        std::fs::copy(site.dir.join("data.csv"), home.join("data/heart.csv")).unwrap();
        let proxy_line = if i == 2 {
            format!("proxy = {:?}", proxy.url(None))
        } else {
            "# no proxy".to_owned()
        };
        let agent_toml = from_deploy(
            "agent.toml",
            &[
                ("https://coordinator.health.example:7443", endpoint.clone()),
                ("/var/lib/harambee-agent", path_str(&home)),
                (
                    "# proxy = \"http://user:password@proxy.hospital.example:3128\"",
                    proxy_line,
                ),
                ("max_backoff_s = 10", "max_backoff_s = 2".into()),
            ],
        );
        let config = home.join("agent.toml");
        std::fs::write(&config, agent_toml).unwrap();
        agents.push(spawn(
            dir,
            &profile,
            &["agent", "run", "--config", &path_str(&config)],
            &home.join("agent.log"),
        ));
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let listed = json_lines(&ok(dir, &profile, &["agents", "--output", "json"]).await);
        let connected = listed.iter().filter(|a| a["connected"] == true).count();
        if connected == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{connected} of 3 agents connected: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // One secure round with DP-SGD, followed to its end.
    let waited = ok(
        dir,
        &profile,
        &["round", "start", "--federation", FEDERATION, "--wait"],
    )
    .await;
    assert!(waited.contains("started round"), "{waited}");
    assert!(waited.contains(": committed"), "{waited}");
    // A progress line each time the stage or a facility's state changed (polled, so a
    // short stage may pass unseen), the last one at the end.
    let progress: Vec<&str> = waited
        .lines()
        .filter(|l| l.contains(" s  round "))
        .collect();
    assert!(progress.len() >= 2, "progress lines: {waited}");
    assert!(
        progress
            .last()
            .unwrap()
            .contains("committed; 3 selected: 3 uploaded"),
        "{waited}"
    );

    let rounds = json_lines(
        &ok(
            dir,
            &profile,
            &[
                "round",
                "status",
                "--federation",
                FEDERATION,
                "--output",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(rounds.len(), 1, "{rounds:?}");
    assert_eq!(rounds[0]["state"], "committed");
    assert_eq!(rounds[0]["secure_aggregation"], true);
    let participants = rounds[0]["participants"].as_array().unwrap();
    assert_eq!(participants.len(), 3, "{rounds:?}");
    assert!(
        participants.iter().all(|p| p["status"] == "uploaded"),
        "{rounds:?}"
    );
    let federations =
        json_lines(&ok(dir, &profile, &["federation", "list", "--output", "json"]).await);
    assert_eq!(federations[0]["name"], FEDERATION);
    assert_eq!(federations[0]["latest"]["version"], 1);

    // The proxied facility went through the proxy, and nothing else did.
    assert!(
        proxy.connects_to(&format!("127.0.0.1:{port}")) >= 1,
        "{}",
        proxy.log()
    );

    // The ops port counts the committed round.
    let metrics = http_get(ops_port, "/metrics").await;
    let committed = metrics
        .lines()
        .find(|l| l.starts_with("harambee_rounds_total") && l.contains("outcome=\"committed\""))
        .unwrap_or_else(|| panic!("no committed-round counter in:\n{metrics}"));
    assert!(committed.ends_with(" 1"), "{committed}");

    drop(agents);
    db.drop_now().await;
}

/// A plain HTTP/1.1 GET on loopback (the ops port), without an HTTP client crate.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}
