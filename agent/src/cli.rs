//! The `harambee-agent` command line.

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::AgentConfig;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Connect to the coordinator and carry out its tasks until stopped (Ctrl-C or SIGTERM).
    Run {
        /// The agent's configuration file.
        #[arg(long, default_value = "agent.toml")]
        config: PathBuf,
    },
    /// Enrol this facility with a one-time token from the federation's operator: generates
    /// the key here, obtains the certificate, writes agent.toml.
    Enroll(crate::enroll::EnrollArgs),
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            let config = AgentConfig::load(&config)?;
            crate::runtime::run(config, shutdown_signal()).await
        }
        Command::Enroll(args) => crate::enroll::run(args).await,
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
