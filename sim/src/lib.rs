//! Harambee's development harness: everything that plays several parts of a federation at
//! once. It depends on both drivers; nothing depends on it but its own tests.
//!
//! - [`demo`]: the whole federation on the bundled data (`cargo run --release -- demo`;
//!   `--dataset preterm-birth` for the second, categorical, data set).
//! - [`bench`](mod@bench): benchmarks that print figures (`bench secagg`, `bench quality`,
//!   `bench idle`, `bench train`).
//! - [`harness`]: a real coordinator (mTLS gRPC on loopback, SQLite or PostgreSQL) and real
//!   agents in one process, for the whole-system tests in `tests/it`. Its helpers panic on
//!   failure: they are for tests.
//!
//! The `harambee-sim` binary also runs the coordinator's and the agent's command lines
//! (`harambee-sim coordinator …`, `harambee-sim agent …`), which is how the demo, the
//! benchmarks and the tests start them as separate OS processes.

pub mod bench;
pub mod demo;
pub mod harness;
