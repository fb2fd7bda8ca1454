//! `cargo xtask tidy`: checks the architecture invariants and prints every offence. The same
//! checks run as tests (`cargo test -p xtask`), so CI enforces them.

mod tidy;

use std::process::ExitCode;

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some("tidy") => {
            let offences = tidy::all(&tidy::workspace_root());
            for offence in &offences {
                eprintln!("{offence}");
            }
            if offences.is_empty() {
                println!("tidy: every invariant holds");
                ExitCode::SUCCESS
            } else {
                eprintln!("tidy: {} offences", offences.len());
                ExitCode::FAILURE
            }
        }
        _ => {
            eprintln!("usage: cargo xtask tidy");
            ExitCode::from(2)
        }
    }
}
