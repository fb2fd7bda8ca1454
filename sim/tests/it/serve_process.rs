//! A coordinator as its own process (`harambee-sim coordinator serve`) on a harness's PKI
//! and storage: for tests that kill it, run two on one database, or probe its ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use harambee_sim::harness::{Harness, path_str};
use tokio::process::{Child, Command};

/// Writes the serve configuration file on the harness's storage with a fresh loopback port
/// (`h.port`), one-second heartbeats and `extra` (more `key = value` lines).
pub fn serve_config(h: &mut Harness, extra: &str) -> PathBuf {
    h.port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = h.dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\ndatabase_url = {:?}\nblob_dir = {:?}\npki = {:?}\nledger_key = {:?}\nheartbeat_interval_s = 1\n{extra}",
            h.port,
            h.storage.database_url,
            path_str(&h.storage.blob_dir),
            path_str(&h.pki),
            path_str(&h.storage.ledger_key)
        ),
    )
    .unwrap();
    config
}

/// `coordinator serve --config CONFIG ARGS`, logging to `log` in the harness's directory.
pub fn spawn_serve(h: &Harness, config: &Path, log: &str, args: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(h.dir.path().join(log))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .args(["coordinator", "serve", "--config"])
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
