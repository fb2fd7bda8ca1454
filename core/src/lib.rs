//! Pure protocol logic of Harambee: the round state machine, aggregation, update validation
//! and the byte encoding of parameter vectors.
//!
//! Nothing here does IO: no sockets, files, clock or async runtime. Time comes in as an
//! argument (`std::time::Instant`), so the coordinator's driver and the tests decide what
//! "now" is. The drivers (`coordinator`, `agent`) own the network, the database and the
//! model training; they feed inputs into these state machines and act on the events they
//! emit, persisting every durable step before they act on it.

#![deny(clippy::unwrap_used)]

pub mod aggregate;
pub mod params;
pub mod round;
pub mod strategy;

pub use aggregate::FedAvg;
pub use params::{UpdateError, validate_update};
pub use round::{Event, ParticipantStatus, Round, RoundConfig, Stage};

/// A facility, as named by its certificate.
pub type AgentId = String;
