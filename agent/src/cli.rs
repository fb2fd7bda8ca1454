//! The `harambee-agent` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::AgentConfig;

/// The `harambee-agent` binary's arguments.
#[derive(Parser, Debug)]
#[command(
    name = "harambee-agent",
    version,
    about = "Harambee facility agent: trains locally, sends only parameters and aggregate metrics"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Connect to the coordinator and carry out its tasks until stopped (Ctrl-C or SIGTERM).
    Run {
        /// The agent's configuration file.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
        /// Serve `/healthz` and `/metrics` over plain HTTP on this address (overrides
        /// `[ops] listen`); keep it on loopback or the facility's internal network.
        #[arg(long)]
        ops_listen: Option<std::net::SocketAddr>,
    },
    /// Enrol this facility with a one-time token from the federation's operator: generates
    /// the key here, obtains the certificate, writes agent.toml.
    #[command(alias = "enroll")]
    Enrol(crate::enrol::EnrolArgs),
    /// Check everything this agent needs (configuration, certificate, data file, DNS,
    /// proxy, TLS, clock, policy and budget, last contact) and print one report to send
    /// to the national unit. Exits 1 if a check failed.
    Doctor(crate::doctor::DoctorArgs),
    /// Auditing the privacy ledger.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The facility's data against the federations' schemas.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Check the data file (or FHIR export) against each federation schema this agent
    /// knows, or one given with --schema: rows usable, missing, out-of-range and unreadable
    /// values per feature, unseen categories, label balance, min_samples and min_cohort.
    /// Printed here only. Exits 1 naming the file, line and column of each hard error.
    Check(crate::data_check::CheckArgs),
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify a ledger export offline: the whole Merkle tree, every signature, consistency
    /// with the last head this facility saw, and (with --receipts) that the ledger and the
    /// facility's privacy log agree. Prints a report; exits 1 on any failure.
    Verify(crate::audit::VerifyArgs),
}

/// Runs the command line to completion on its own runtime, logging to stderr, and prints
/// the error, if any: the whole `harambee-agent` binary.
pub fn main(cli: Cli) -> std::process::ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    harambee_link::process::run_main(run(cli.command))
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config, ops_listen } => {
            let mut config = AgentConfig::load_with_env(&config, &process_env)?;
            if ops_listen.is_some() {
                config.ops.listen = ops_listen;
            }
            crate::runtime::run(config, shutdown_signal()).await
        }
        Command::Enrol(args) => crate::enrol::run(args).await,
        Command::Doctor(args) => {
            if crate::doctor::run(&args).await? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Data(DataCommand::Check(args)) => {
            if crate::data_check::run(&args)? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Audit(AuditCommand::Verify(args)) => {
            if crate::audit::verify(&args)? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
    }
}

/// The process's environment, read only here (proxy variables).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
