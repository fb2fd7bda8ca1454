//! `harambee-sim`: the demo and the benchmarks; see `--help`.
//!
//! `harambee-sim coordinator ARGS…` and `harambee-sim agent ARGS…` are exactly
//! `harambee-coordinator ARGS…` and `harambee-agent ARGS…` (same code, same exit codes): the
//! demo, the benchmarks and the tests start their processes this way, from one binary.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "harambee-sim",
    version,
    about = "Harambee's development harness: a whole federation on one machine, and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A whole local federation on the bundled data: coordinator, PKI and one agent process
    /// per facility.
    Demo(harambee_sim::demo::DemoArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Model quality per facility for each strategy, on the bundled multi-site data, in one
    /// process.
    Quality(harambee_sim::bench::quality::QualityArgs),
    /// The web console's render time and page weight with many facilities and rounds.
    Console(harambee_sim::bench::console::ConsoleArgs),
    /// Cost of one round's aggregation, secure or plain: coordinator process plus N
    /// in-process agents over gRPC.
    Secagg(harambee_sim::bench::secagg::SecaggArgs),
    /// What connected, idle agents cost the coordinator: coordinator process plus N
    /// lightweight mTLS clients.
    Idle(harambee_sim::bench::idle::IdleArgs),
    /// Local training speed, non-DP and DP-SGD, against PyTorch and Opacus on the same rows
    /// (installs them into a virtual environment under the target directory when missing).
    Train(harambee_sim::bench::train::TrainArgs),
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let rest = argv.iter().skip(2).cloned();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("coordinator") => {
            let argv = std::iter::once(OsString::from("harambee-coordinator")).chain(rest);
            harambee_coordinator::cli::main(harambee_coordinator::cli::parse_from(argv))
        }
        Some("agent") => {
            let argv = std::iter::once(OsString::from("harambee-agent")).chain(rest);
            harambee_agent::cli::main(harambee_agent::cli::Cli::parse_from(argv))
        }
        _ => {
            let cli = Cli::parse_from(argv);
            harambee_link::process::run_main(async move {
                match cli.command {
                    Command::Demo(args) => harambee_sim::demo::run(args).await,
                    Command::Bench(BenchCommand::Console(args)) => {
                        harambee_sim::bench::console::run(args)
                    }
                    Command::Bench(BenchCommand::Quality(args)) => {
                        harambee_sim::bench::quality::run(args).await
                    }
                    Command::Bench(BenchCommand::Secagg(args)) => {
                        harambee_sim::bench::secagg::run(args).await
                    }
                    Command::Bench(BenchCommand::Idle(args)) => {
                        harambee_sim::bench::idle::run(args).await
                    }
                    Command::Bench(BenchCommand::Train(args)) => {
                        harambee_sim::bench::train::run(args).await
                    }
                }
            })
        }
    }
}
