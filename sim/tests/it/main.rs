//! All integration tests of the coordinator and agent in one binary: each links the whole
//! stack (burn, tonic, sea-orm), so one binary instead of nineteen saves gigabytes of disk
//! and minutes of linking.

mod adversary;
mod agent_state;
mod bad_input;
mod bench_quality;
mod connection_limits;
mod console;
mod data_check;
mod demo;
mod doctor;
mod evidence;
mod facility_proxy;
mod failed_round_epsilon;
mod fault_schedules;
mod federation;
mod identity_access;
mod identity_certificates;
mod identity_commands;
mod identity_enrolment;
mod identity_enrolment_limits;
mod identity_pki;
mod identity_renewal;
mod identity_revocation;
mod identity_store;
mod large_model;
mod ledger_key;
mod ledger_paging;
mod ledger_rotation_agent;
mod network_faults;
mod operator_walkthrough;
mod ops;
mod peers;
mod personalization;
mod privacy_ledger;
mod restart;
mod round_cancel;
mod secure_dropout;
mod serve_process;
mod storage_faults;
mod store_suite;
mod text_federation;
mod tls_handshake;
mod upload_retry;
