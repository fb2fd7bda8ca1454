//! Integration tests of the models crate, in one binary (each test binary links burn).

mod dp;
mod fhir;
mod personalization;
mod real_data;
mod text;
mod text_dp;
