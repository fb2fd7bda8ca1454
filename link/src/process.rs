//! The shell of both binaries: a multi-threaded runtime, one future to completion, and the
//! error printed for a person (`{:#}`, or a gRPC status's message and code).
//!
//! Exit codes: 0 success; 1 any failure; [`REFUSED_EXIT`] (3) when the coordinator refuses
//! this identity for good ([`Refused`]: a revoked facility, certificate or key, an expired
//! certificate), which retrying cannot fix: enrol again; [`BROKEN_PIPE_EXIT`] (141, as for a
//! process ended by SIGPIPE) when the reader of its output went away (`… | head`), quietly.

use std::future::Future;
use std::process::ExitCode;

/// The exit code of a process the coordinator refuses for good.
pub const REFUSED_EXIT: u8 = 3;

/// The exit code when standard output or error is a pipe whose reader has gone.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// The coordinator refuses this identity for good; the message says why and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Runs `main` on a new multi-threaded tokio runtime (with rustls' ring provider installed)
/// and turns its result into the process's exit code, printing any error to stderr.
pub fn run_main(main: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    quiet_on_broken_pipe();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => eprintln!("error: {} ({:?})", status.message(), status.code()),
                None => eprintln!("error: {e:#}"),
            }
            if e.chain().any(|c| c.downcast_ref::<Refused>().is_some()) {
                ExitCode::from(REFUSED_EXIT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `println!` panics when its reader has gone (Rust ignores SIGPIPE): end the process the
/// way a Unix tool ends then, without a panic message.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // The OS error's text, as `std::io::Error` shows EPIPE ("Broken pipe (os error 32)").
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info);
    }));
}
