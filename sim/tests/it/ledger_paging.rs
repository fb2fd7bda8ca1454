//! Countersignatures are paged: an auditor's export reads thousands of them, more than one
//! gRPC message can carry, page by page.

use harambee_sim::harness as common;

use common::*;
use harambee_link::identity::Role;
use harambee_privacy::ledger::export::{HeadFile, head_path_for};
use harambee_privacy::ledger::{Sha256Digest, TreeHead};
use harambee_proto::pb::{self, audit_service_client::AuditServiceClient};
use sea_orm::ConnectionTrait;

/// More than one 2 MiB message holds (each is about 330 bytes of JSON).
const N_COSIGNATURES: u64 = 8000;

/// Stores `n` countersignatures by facilities `site-0..` directly in the database, in one
/// transaction (as thousands of agents would over months).
async fn store_cosignatures(h: &Harness, n: u64) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let db = sea_orm::Database::connect(h.storage.database_url.as_str())
        .await
        .unwrap();
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let head = TreeHead {
                tree_size: i + 1,
                root_hash: Sha256Digest::of(&i.to_le_bytes()),
                timestamp_ms: 1_700_000_000_000 + i,
            };
            let facility = format!("site-{}", i % 500);
            let cosignature = head.cosign(&facility, &key);
            format!(
                "('{facility}', {}, '{}', {}, '{}', 0)",
                head.tree_size,
                head.root_hash.to_hex(),
                head.timestamp_ms,
                hex::encode(cosignature.signature.to_bytes())
            )
        })
        .collect();
    let mut sql = String::from("BEGIN;");
    for chunk in rows.chunks(500) {
        sql.push_str(
            "INSERT INTO ledger_cosignatures (facility, tree_size, root_hash, head_timestamp_ms, signature, received_ms) VALUES ",
        );
        sql.push_str(&chunk.join(","));
        sql.push(';');
    }
    sql.push_str("COMMIT;");
    db.execute_unprepared(&sql).await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_pages_through_thousands_of_countersignatures() {
    let h = Harness::start(None).await;
    store_cosignatures(&h, N_COSIGNATURES).await;

    let channel = h.channel(Role::Auditor, "auditor").await;
    let mut client = AuditServiceClient::new(channel.clone())
        .max_decoding_message_size(harambee_proto::MAX_MESSAGE_BYTES);
    let first = client
        .list_cosignatures(pb::ListCosignaturesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.cosignatures.len(), 1000);
    assert!(!first.next_page_token.is_empty());
    let small = client
        .list_cosignatures(pb::ListCosignaturesRequest {
            page_size: 10,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(small.cosignatures.len(), 10);
    assert!(small.cosignatures[0].contains("\"tree_size\":1001"));
    let err = client
        .list_cosignatures(pb::ListCosignaturesRequest {
            page_size: 10,
            page_token: "not-a-token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("page_token"), "{}", err.message());

    let out = h.dir.path().join("ledger.jsonl");
    harambee_coordinator::cli::audit::export(channel, &out)
        .await
        .unwrap();
    let head: HeadFile =
        serde_json::from_str(&std::fs::read_to_string(head_path_for(&out)).unwrap()).unwrap();
    assert_eq!(head.cosignatures.len() as u64, N_COSIGNATURES);
    let sizes: Vec<u64> = head.cosignatures.iter().map(|c| c.head.tree_size).collect();
    assert_eq!(
        sizes,
        (1..=N_COSIGNATURES).collect::<Vec<_>>(),
        "every one, once, in order"
    );
}
