//! Rounds: [`driver`] runs one task per running round around `harambee_core::Round`;
//! [`registry`] tracks connected agents and their liveness; [`eligibility`] decides which
//! facilities a round may select, and the federation's facility-level ε.

pub mod driver;
pub mod eligibility;
pub mod registry;
