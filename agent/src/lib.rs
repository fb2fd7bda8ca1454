//! The Harambee facility agent. It connects out to the coordinator (it listens only on its
//! optional ops port, [`ops`]: health and metrics),
//! receives tasks on a long-lived stream, trains on the facility's own data and sends back
//! only parameters (as an update) and aggregate metrics. Patient rows never leave it.
//!
//! Map: [`cli`] and [`config`] are the binary's face; [`core`] makes every decision (policy,
//! de-duplication, held updates, secure-aggregation clients, privacy state) without IO, and
//! [`runtime`] carries them out: the connection loop, training, uploads; [`transfer`] moves models and updates in chunks; [`egress`] is the
//! local log of everything that left the facility; [`privacy`] is its policy, privacy accountant, egress receipts and
//! hash-chained privacy log; [`audit`] verifies a ledger export offline; [`enrol`] and
//! [`renew`] obtain and renew its certificate; [`doctor`] checks all the agent needs,
//! [`data_check`] checks the facility's data against the federations' schemas (locally only), and
//! [`status`] records what it checks offline; `text` holds a `minilm_lora` federation's pinned base model and encoded texts (last contact, federation schemas). What it shares with the coordinator (identity,
//! mTLS client, wire conversions) is in `harambee-link`.

pub mod audit;
pub mod cli;
pub mod config;
pub mod core;
pub mod data_check;
pub mod doctor;
pub mod egress;
pub mod enrol;
pub mod ops;
pub mod privacy;
pub mod renew;
pub mod runtime;
pub mod secure;
pub mod status;
mod text;
pub mod transfer;
