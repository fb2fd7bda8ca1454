//! Rounds: [`driver`] runs one task per running round around `harambee_core::Round`, with
//! only the handles of a [`context::RoundContext`];
//! [`registry`] tracks connected agents and their liveness; [`eligibility`] decides which
//! facilities a round may select, and the federation's facility-level ε; [`start`] starts one.

pub mod context;
pub mod driver;
pub mod eligibility;
pub mod registry;
pub mod start;
