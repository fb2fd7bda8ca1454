//! The shell of both binaries: a multi-threaded runtime, one future to completion, and the
//! error printed for a person (`{:#}`, or a gRPC status's message and code).

use std::future::Future;
use std::process::ExitCode;

/// Runs `main` on a new multi-threaded tokio runtime (with rustls' ring provider installed)
/// and turns its result into the process's exit code, printing any error to stderr.
pub fn run_main(main: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
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
            ExitCode::FAILURE
        }
    }
}
