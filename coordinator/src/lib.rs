//! The Harambee coordinator: enrols facilities by certificate, schedules training rounds,
//! aggregates the facilities' updates and persists every step.
//!
//! It is a driver: the protocol logic (the round state machine, aggregation) lives in
//! `harambee-core`, and this crate moves its inputs and outputs between the network
//! (tonic over rustls mTLS), the database (sea-orm) and the blob store.
//!
//! Map: [`server`] runs it; [`service`] holds the gRPC services; [`driver`] runs one round;
//! [`registry`] tracks connected agents; [`store`] and [`blobs`] persist; [`wire`] converts
//! wire types; [`pki`] and [`tls`] own certificates; [`enrol`] enrols facilities and renews
//! their certificates; [`access`] authorizes every call; [`cli`], [`identity_cli`] and
//! [`audit_cli`] are the binary. The demo and the benchmarks live in `harambee-sim`.

pub mod access;
pub mod audit_cli;
pub mod blobs;
pub mod cli;
pub mod driver;
pub mod enrol;
pub mod federation;
pub mod identity_cli;
pub mod ledger;
pub mod pki;
pub mod privacy;
pub mod registry;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod wire;
