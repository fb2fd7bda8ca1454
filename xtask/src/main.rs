//! `cargo xtask tidy`: checks the architecture invariants and prints every offence.
//! `cargo xtask deploy`: checks the deployment files in `deploy/` with kubectl, systemd-analyze
//! and docker-compose (no daemon needed). Both run as tests (`cargo test -p xtask`), so CI
//! enforces them.

mod deploy;
mod tidy;

use std::process::ExitCode;

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let root = tidy::workspace_root();
    match task.as_deref() {
        Some("tidy") => report("tidy", "every invariant holds", tidy::all(&root)),
        Some("deploy") => report(
            "deploy",
            "the manifests render and pass, the units verify, the compose file parses",
            deploy::all(&root),
        ),
        _ => {
            eprintln!("usage: cargo xtask tidy | cargo xtask deploy");
            ExitCode::from(2)
        }
    }
}

fn report(task: &str, success: &str, offences: Vec<String>) -> ExitCode {
    for offence in &offences {
        eprintln!("{offence}");
    }
    if offences.is_empty() {
        println!("{task}: {success}");
        ExitCode::SUCCESS
    } else {
        eprintln!("{task}: {} offences", offences.len());
        ExitCode::FAILURE
    }
}
