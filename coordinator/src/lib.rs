//! The Harambee coordinator: enrols facilities by certificate, schedules training rounds,
//! aggregates the facilities' updates and persists every step.
//!
//! It is a driver: the protocol logic (the round state machine, aggregation) lives in
//! `harambee-core`, and this crate moves its inputs and outputs between the network
//! (tonic over rustls mTLS), the database (sea-orm) and the blob store.
//!
//! Map, by layer (each uses only the ones below it, plus [`state`], [`federation`], [`wire`]
//! and [`pki`]):
//! - [`cli`]: the binary's commands (operator, auditor and PKI commands, `serve`);
//! - [`console`]: the web console (`console`), a client of the services like [`cli`];
//! - [`server`]: opens storage, recovers, serves: rustls mTLS, the access layer, telemetry;
//! - [`service`]: the gRPC services, enrolment, and the one error-to-status mapper;
//! - [`identity`]: revoked facilities and certificates, enrolment limits, certificate
//!   issuing (what the access layer and the enrolment service share);
//! - [`round`]: one driver task per running round, the registry of connected agents, and
//!   which facilities a round may select;
//! - [`store`]: sea-orm persistence, the blob store, the ledger's in-memory view;
//! - [`metrics`]: the figures the ops port serves, recorded by the layers above.
//!
//! The demo and the benchmarks live in `harambee-sim`.

pub mod card;
pub mod cli;
pub mod console;
pub mod federation;
pub mod identity;
pub mod metrics;
pub mod pki;
pub mod round;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod wire;
