//! The identity tables on SQLite and PostgreSQL: tokens are single-use even under a race,
//! withdrawn by a newer token or a revocation, revocation is permanent, and the admin-action
//! log reads back in order.

use harambee_sim::harness as common;

use harambee_coordinator::store::{
    AdminActionKind, AdminActionRow, CertificateRow, FacilityStatus, RevokedCertificateRow, Store,
    StoreError, TokenRefusal, TokenRow,
};

fn token(id: &str, facility: &str, expires_ms: i64) -> TokenRow {
    TokenRow {
        id: id.to_owned(),
        facility: facility.to_owned(),
        secret_sha256: "00".repeat(32),
        created_ms: 1_000,
        expires_ms,
        used_ms: None,
        withdrawn_ms: None,
    }
}

fn action(kind: AdminActionKind, subject: &str, at_ms: i64) -> AdminActionRow {
    AdminActionRow {
        id: 0,
        at_ms,
        actor: "harambee://operator/admin".to_owned(),
        actor_cert_sha256: "ab".repeat(32),
        action: kind,
        subject: subject.to_owned(),
        detail: String::new(),
    }
}

fn cert(serial: &str, name: &str, not_after_ms: i64) -> CertificateRow {
    CertificateRow {
        serial: serial.to_owned(),
        sha256: format!("{serial:0>64}"),
        role: "agent".to_owned(),
        name: name.to_owned(),
        not_before_ms: 0,
        not_after_ms,
        issued_ms: 2_000,
        via: "enrol".to_owned(),
        key_sha256: Some("ee".repeat(32)),
    }
}

async fn identity_tables(store: Store) {
    use AdminActionKind::*;
    let f = store
        .add_facility(
            "kisumu",
            &token("t1", "kisumu", 10_000),
            false,
            &action(FacilityAdded, "kisumu", 1_000),
        )
        .await
        .unwrap();
    assert_eq!(f.status, FacilityStatus::Pending);
    // A second token withdraws the first.
    store
        .add_facility(
            "kisumu",
            &token("t2", "kisumu", 10_000),
            false,
            &action(FacilityAdded, "kisumu", 1_100),
        )
        .await
        .unwrap();
    assert_eq!(
        store.token("t1").await.unwrap().unwrap().refusal(2_000),
        Some(TokenRefusal::Withdrawn(1_100))
    );
    assert!(matches!(
        store
            .use_token("t1", &cert("01", "kisumu", 9), None, 2_000)
            .await,
        Err(StoreError::TokenUnusable(_))
    ));
    // An expired token cannot be used.
    assert!(matches!(
        store
            .use_token("t2", &cert("02", "kisumu", 9), None, 10_000)
            .await,
        Err(StoreError::TokenUnusable(_))
    ));

    // Two enrolments race with one token: exactly one wins.
    let (c3, c4) = (cert("03", "kisumu", 50_000), cert("04", "kisumu", 60_000));
    let (a, b) = tokio::join!(
        store.use_token("t2", &c3, None, 3_000),
        store.use_token("t2", &c4, None, 3_000)
    );
    assert_eq!(
        usize::from(a.is_ok()) + usize::from(b.is_ok()),
        1,
        "{a:?} {b:?}"
    );
    assert_eq!(
        store.token("t2").await.unwrap().unwrap().refusal(3_001),
        Some(TokenRefusal::Used(3_000))
    );
    assert_eq!(
        store.facility("kisumu").await.unwrap().unwrap().status,
        FacilityStatus::Enrolled
    );
    let err = store
        .add_facility(
            "kisumu",
            &token("t3", "kisumu", 10_000),
            false,
            &action(FacilityAdded, "kisumu", 4_000),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::FacilityEnrolled(_)), "{err}");
    store
        .add_facility(
            "kisumu",
            &token("t3", "kisumu", 10_000),
            true,
            &action(FacilityAdded, "kisumu", 4_000),
        )
        .await
        .unwrap();

    store
        .record_renewal(
            &CertificateRow {
                via: "renew".to_owned(),
                ..cert("05", "kisumu", 90_000)
            },
            "04",
            "harambee://agent/kisumu",
        )
        .await
        .unwrap();
    assert_eq!(
        store.latest_certificate_expiry("agent").await.unwrap()["kisumu"],
        90_000
    );
    assert_eq!(
        store.certificates("agent", "kisumu").await.unwrap().len(),
        2
    );

    // A certificate revoked by serial: its identity and key come from what was issued; a
    // second revocation changes nothing; neither it nor its key can be renewed from then on.
    let revoked_cert = store
        .revoke_certificate(
            &RevokedCertificateRow {
                serial: "05".to_owned(),
                identity: String::new(),
                key_sha256: String::new(),
                revoked_ms: 4_500,
                revoked_by: "harambee://operator/admin".to_owned(),
                reason: "laptop stolen".to_owned(),
            },
            &action(CertificateRevoked, "05", 4_500),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            revoked_cert.identity.as_str(),
            revoked_cert.key_sha256.as_str()
        ),
        ("harambee://agent/kisumu", "ee".repeat(32).as_str())
    );
    let again = store
        .revoke_certificate(
            &RevokedCertificateRow {
                revoked_ms: 4_600,
                ..revoked_cert.clone()
            },
            &action(CertificateRevoked, "05", 4_600),
        )
        .await
        .unwrap();
    assert_eq!(again, revoked_cert);
    assert_eq!(store.revoked_certificates().await.unwrap(), [revoked_cert]);
    let renewal = CertificateRow {
        via: "renew".to_owned(),
        key_sha256: Some("ff".repeat(32)),
        ..cert("06", "kisumu", 99_000)
    };
    assert!(matches!(
        store
            .record_renewal(&renewal, "05", "harambee://agent/kisumu")
            .await,
        Err(StoreError::CertificateRevoked(serial)) if serial == "05"
    ));
    assert!(matches!(
        store
            .record_renewal(
                &CertificateRow {
                    via: "renew".to_owned(),
                    ..cert("07", "kisumu", 99_000)
                },
                "04",
                "harambee://agent/kisumu",
            )
            .await,
        Err(StoreError::KeyRevoked(serial)) if serial == "05"
    ));
    assert_eq!(
        store.certificates("agent", "kisumu").await.unwrap().len(),
        2,
        "refused renewals left nothing behind"
    );

    // Revocation: permanent, withdraws tokens, refuses unknown names.
    let revoked = store
        .revoke_facility(
            "kisumu",
            "stolen laptop",
            &action(FacilityRevoked, "kisumu", 5_000),
        )
        .await
        .unwrap();
    assert_eq!(
        (revoked.status, revoked.revoked_ms),
        (FacilityStatus::Revoked, Some(5_000))
    );
    assert_eq!(
        store.token("t3").await.unwrap().unwrap().refusal(5_001),
        Some(TokenRefusal::Withdrawn(5_000))
    );
    let err = store
        .add_facility(
            "kisumu",
            &token("t4", "kisumu", 10_000),
            true,
            &action(FacilityAdded, "kisumu", 6_000),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::FacilityRevoked(_)), "{err}");
    assert!(matches!(
        store
            .revoke_facility("nobody", "", &action(FacilityRevoked, "nobody", 6_000))
            .await,
        Err(StoreError::UnknownFacility(_))
    ));
    // A facility that only ever connected (certificate from `pki issue`) can be revoked.
    store
        .record_agent_seen("legacy", &"cd".repeat(32), 500)
        .await
        .unwrap();
    let legacy = store
        .revoke_facility("legacy", "", &action(FacilityRevoked, "legacy", 7_000))
        .await
        .unwrap();
    assert_eq!(
        (legacy.status, legacy.created_ms),
        (FacilityStatus::Revoked, 500)
    );
    let mut revoked = store.revoked_facilities().await.unwrap();
    revoked.sort();
    assert_eq!(revoked, ["kisumu", "legacy"]);

    // The log, in order, incrementally; a refused change left no entry.
    let all = store.admin_actions(0, 100).await.unwrap();
    let kinds: Vec<(AdminActionKind, &str)> =
        all.iter().map(|a| (a.action, a.subject.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (FacilityAdded, "kisumu"),
            (FacilityAdded, "kisumu"),
            (FacilityAdded, "kisumu"),
            (CertificateRevoked, "harambee://agent/kisumu serial 05"),
            (FacilityRevoked, "kisumu"),
            (FacilityRevoked, "legacy"),
        ]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let rest = store.admin_actions(all[2].id, 1).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, all[3].id);
    store
        .record_admin_action(&action(ModelExported, "heart", 8_000))
        .await
        .unwrap();
    assert_eq!(
        store.admin_actions(all[5].id, 10).await.unwrap()[0].action,
        ModelExported
    );
}

#[tokio::test]
async fn identity_tables_on_sqlite() {
    common::init();
    identity_tables(Store::connect("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test]
async fn identity_tables_on_postgres() {
    common::init();
    let db = common::PgDatabase::create().await;
    let store = Store::connect(&db.url).await.unwrap();
    identity_tables(store.clone()).await;
    store.close().await.unwrap();
    db.drop_now().await;
}
