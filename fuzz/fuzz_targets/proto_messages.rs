//! The protobuf messages of `harambee.v1` as tonic hands them to each service method (every
//! request type of every RPC) and as the agent receives them from the coordinator (the
//! task stream, chunks, acknowledgements, proofs, certificates). The first byte picks the
//! message type. Whatever decodes re-encodes to bytes that decode to the same message
//! (compared by its encoding, which prost writes deterministically).

#![no_main]

use harambee_proto::pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check<M: Message + Default>(bytes: &[u8]) {
    let Ok(message) = M::decode(bytes) else {
        return;
    };
    let encoded = message.encode_to_vec();
    assert_eq!(encoded.len(), message.encoded_len());
    let again = M::decode(encoded.as_slice()).expect("a re-encoded message decodes");
    // Compared as bytes: a double field may hold a NaN, which equals nothing.
    assert_eq!(again.encode_to_vec(), encoded, "decode(encode(m)) != m");
}

/// Requests, one per RPC (31), then what the agent receives (11).
const N_TYPES: u8 = 42;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % N_TYPES {
        0 => check::<pb::GetCaCertificateRequest>(bytes),
        1 => check::<pb::EnrolRequest>(bytes),
        2 => check::<pb::RenewCertificateRequest>(bytes),
        3 => check::<pb::AddFacilityRequest>(bytes),
        4 => check::<pb::RevokeFacilityRequest>(bytes),
        5 => check::<pb::RevokeCertificateRequest>(bytes),
        6 => check::<pb::ListFacilitiesRequest>(bytes),
        7 => check::<pb::ListAdminActionsRequest>(bytes),
        8 => check::<pb::OpenTaskStreamRequest>(bytes),
        9 => check::<pb::HeartbeatRequest>(bytes),
        10 => check::<pb::DownloadModelRequest>(bytes),
        11 => check::<pb::UploadUpdateRequest>(bytes),
        12 => check::<pb::ReportMetricsRequest>(bytes),
        13 => check::<pb::SecAggSubmission>(bytes),
        14 => check::<pb::DeclineTaskRequest>(bytes),
        15 => check::<pb::LedgerProofRequest>(bytes),
        16 => check::<pb::CosignTreeHeadRequest>(bytes),
        17 => check::<pb::CreateFederationRequest>(bytes),
        18 => check::<pb::ListFederationsRequest>(bytes),
        19 => check::<pb::StartRoundRequest>(bytes),
        20 => check::<pb::CancelRoundRequest>(bytes),
        21 => check::<pb::GetRoundRequest>(bytes),
        22 => check::<pb::ListRoundsRequest>(bytes),
        23 => check::<pb::ListAgentsRequest>(bytes),
        24 => check::<pb::ExportModelRequest>(bytes),
        25 => check::<pb::GetSignedTreeHeadRequest>(bytes),
        26 => check::<pb::GetEntriesRequest>(bytes),
        27 => check::<pb::GetInclusionProofRequest>(bytes),
        28 => check::<pb::GetConsistencyProofRequest>(bytes),
        29 => check::<pb::ListPrivacySpendRequest>(bytes),
        30 => check::<pb::ListCosignaturesRequest>(bytes),
        31 => check::<pb::Task>(bytes),
        32 => check::<pb::HeartbeatResponse>(bytes),
        33 => check::<pb::Chunk>(bytes),
        34 => check::<pb::UploadUpdateResponse>(bytes),
        35 => check::<pb::ReportMetricsResponse>(bytes),
        36 => check::<pb::SecAggAck>(bytes),
        37 => check::<pb::DeclineTaskResponse>(bytes),
        38 => check::<pb::LedgerProof>(bytes),
        39 => check::<pb::CosignTreeHeadResponse>(bytes),
        40 => check::<pb::CaCertificate>(bytes),
        _ => check::<pb::IssuedCertificate>(bytes),
    }
});
