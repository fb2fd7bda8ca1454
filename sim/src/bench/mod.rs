//! `harambee-sim bench …`: benchmarks that print figures (never timed tests).

pub mod quality;
pub mod secagg;
