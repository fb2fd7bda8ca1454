//! The pure privacy pieces of Harambee.
//!
//! - [`accountant`]: a Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism, with
//!   the tight conversion to (ε, δ), incremental and serializable so an agent can persist it.
//! - [`ledger`]: the privacy ledger: an append-only Merkle tree in the style of RFC 9162 with
//!   inclusion and consistency proofs, Ed25519-signed tree heads, the ledger's events and their
//!   canonical encoding, agent-signed egress receipts, the JSON-lines export, and an offline
//!   verifier that recomputes everything and names what broke.
//! - [`policy`]: the facility's admission policy, one [`policy::admit`] for the agent (the
//!   authority) and for the coordinator's selection.
//! - [`card`]: model cards bound to the ledger (`ModelExported` records their SHA-256), and
//!   their offline check against a ledger export.
//! - [`log`]: the format of a facility's hash-chained privacy log.
//! - [`audit`]: the offline audit of an export, with a facility's privacy log and a model
//!   card (`harambee-agent audit verify` and the web console's offline page both run it).
//! - [`mechanism`]: the lattice Gaussian mechanism (snap to a power-of-two grid, add exact
//!   discrete Gaussian draws in integers) behind DP-SGD's and the central mechanism's noise,
//!   so released floats leak no low bits (Mironov 2012); randomness from an injected RNG.
//!
//! What it does not do: no IO of any kind (no files, sockets, clock or async runtime) and no
//! randomness of its own (an RNG is passed in). Time comes in as `timestamp_ms` arguments; keys come in as `ed25519_dalek`
//! values that the drivers generate and store. Persisting the ledger (in the same SQL
//! transaction as the state it describes), serving it and printing reports belong to the
//! coordinator and the agent.

#![deny(clippy::unwrap_used)]

pub mod accountant;
pub mod audit;
pub mod card;
pub mod ledger;
pub mod log;
pub mod mechanism;
pub mod policy;
