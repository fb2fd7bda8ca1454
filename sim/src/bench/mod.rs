//! `harambee-sim bench …`: benchmarks that print figures (never timed tests).

pub mod bound;
pub mod console;
pub mod idle;
pub mod quality;
pub mod secagg;
pub mod train;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use harambee_coordinator::pki;
use harambee_link::identity::Role;

/// A coordinator run as its own process (`serve`) on a fresh PKI, SQLite database and
/// blob directory under a benchmark's directory, so that its CPU time and memory are
/// measured apart from the clients'.
pub(crate) struct Coordinator {
    pub process: tokio::process::Child,
    pub pid: u32,
    pub endpoint: String,
    pub pki_dir: PathBuf,
}

impl Coordinator {
    /// Starts it with `extra` lines appended to its serve file, and waits until it listens.
    pub async fn start(dir: &Path, extra: &str) -> anyhow::Result<Coordinator> {
        let pki_dir = dir.join("pki");
        pki::init(&pki_dir, &["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        pki::issue(&pki_dir, Role::Operator, "admin", 1)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndatabase_url = {:?}\nblob_dir = {:?}\npki = {:?}\nledger_key = {:?}\n{extra}",
                format!("sqlite://{}?mode=rwc", dir.join("coordinator.db").display()),
                dir.join("blobs").display().to_string(),
                pki_dir.display().to_string(),
                dir.join("ledger.key").display().to_string(),
            ),
        )?;
        let log = std::fs::File::create(dir.join("coordinator.log"))?;
        let process = tokio::process::Command::new(std::env::current_exe()?)
            .args(["coordinator", "serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting the coordinator")?;
        let pid = process.id().context("coordinator pid")?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Coordinator {
            process,
            pid,
            endpoint: format!("https://127.0.0.1:{port}"),
            pki_dir,
        })
    }
}

/// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`: given there in kB).
pub(crate) fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field}"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("malformed {field}"))?;
    Ok(kb * 1024)
}

/// User + system CPU seconds of a process so far (Linux `/proc`, 100 ticks per second).
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context("reading the coordinator's /proc stat")?;
    let after_name = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}
