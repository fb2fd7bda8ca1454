//! What both ends of the Harambee wire share: the coordinator and the agent depend on this
//! crate, never on each other.
//!
//! - [`identity`]: the `harambee://<role>/<name>` identity scheme, the Ed25519 key of an
//!   agent certificate, and the check of a peer facility's certificate against the CA.
//! - [`token`]: the one-time enrolment token and the enrolment ALPN protocol.
//! - [`tls`]: the mTLS client (TLS 1.3 only, ring), with failures a facility's IT staff can
//!   act on; used by the agent and by the operator and auditor CLIs.
//! - [`proxy`]: HTTP CONNECT proxies (`proxy` in agent.toml, `HTTPS_PROXY`, `NO_PROXY`),
//!   which the mTLS client tunnels through.
//! - [`clock`]: the time both drivers read (follows tokio's clock, so paused time pauses it).
//! - [`files`]: key and certificate files written 0600 / atomically.
//! - [`convert`]: conversions between wire messages and the pure crates' types.
//! - [`process`]: the runtime and error reporting both binaries' `main` share.
//! - [`metrics`]: OpenTelemetry instruments read out in Prometheus text, for both ops ports.
//!
//! It holds no protocol state and no server code.

pub mod clock;
pub mod convert;
pub mod files;
pub mod identity;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod tls;
pub mod token;
