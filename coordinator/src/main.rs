//! `harambee-coordinator`: see `--help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    harambee_coordinator::cli::main(harambee_coordinator::cli::Cli::parse())
}
