//! `harambee-agent`: see `--help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    harambee_agent::cli::main(harambee_agent::cli::Cli::parse())
}
