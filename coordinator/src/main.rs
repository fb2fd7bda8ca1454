//! `harambee-coordinator`: see `--help`.

fn main() -> std::process::ExitCode {
    harambee_coordinator::cli::main(harambee_coordinator::cli::parse_from(std::env::args_os()))
}
