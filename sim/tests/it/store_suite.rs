//! Behavioural tests of the coordinator's persistence: one suite of `store`
//! cases run against SQLite (a temporary file) and PostgreSQL, plus the blob
//! store.
//!
//! PostgreSQL comes from `HARAMBEE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test creates and drops its
//! own database `harambee_test_<random>`. An unreachable server fails the
//! tests: CI starts one.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use harambee_coordinator::store::blobs::{BlobError, BlobStore, sha256_hex};
use harambee_coordinator::store::{
    FederationRow, MetricsRow, ModelVersionRow, ParticipantRow, ParticipantStatus, RoundState,
    StageRow, Store, StoreError,
};
use sea_orm::ConnectionTrait;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Declares each case once per backend: `store_sqlite::<case>` and
/// `store_postgres::<case>`.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod store_sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    crate::store_suite::on_sqlite(crate::store_suite::cases::$case).await
                }
            )*
        }
        mod store_postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    crate::store_suite::on_postgres(crate::store_suite::cases::$case).await
                }
            )*
        }
    };
}

suite!(
    federation_create_and_duplicate,
    round_numbering_and_in_progress,
    state_transitions_and_terminal_refusal,
    commit_round_is_atomic,
    fail_round_records_reason_and_participants,
    fail_unfinished_rounds,
    accepted_uploads_reach_the_ledger_however_the_round_ends,
    persists_across_reconnect,
    nan_auc_round_trip,
    participants_upsert_and_validation,
    agents_upsert,
    out_of_range_numbers_refused,
    concurrent_create_round_one_wins,
    concurrent_commit_and_fail_one_wins,
    debug_output_hides_url,
    blobs_in_the_database,
    round_stages_are_recorded_with_each_change_and_old_databases_migrate,
);

async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("store.db").display()
    );
    case(url).await;
}

async fn on_postgres<F, Fut>(case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let base = std::env::var("HARAMBEE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
    let mut options = sea_orm::ConnectOptions::new(base.as_str());
    options
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let admin = sea_orm::Database::connect(options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {base}: {e}\n\
             start it, or point HARAMBEE_TEST_PG_URL at a server whose user may CREATE DATABASE"
            )
        });
    let name = format!("harambee_test_{:016x}", rand::random::<u64>());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));

    let outcome = AssertUnwindSafe(case(with_database(&base, &name)))
        .catch_unwind()
        .await;

    // Drop the database even when the case panicked; FORCE ends connections
    // the case's pool still holds.
    let dropped = admin
        .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await;
    let _ = admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    dropped.unwrap_or_else(|e| panic!("cannot drop test database {name}: {e}"));
}

/// `postgres://user@host:port/db?params` with `db` replaced.
fn with_database(url: &str, database: &str) -> String {
    let (without_query, query) = match url.split_once('?') {
        Some((head, query)) => (head, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = without_query.find("://").map_or(0, |i| i + 3);
    let server = match without_query[authority_start..].find('/') {
        Some(slash) => &without_query[..authority_start + slash],
        None => without_query,
    };
    format!("{server}/{database}{query}")
}

fn federation(name: &str) -> FederationRow {
    FederationRow {
        name: name.to_owned(),
        config_json: format!(r#"{{"model":"mlp","name":"{name}"}}"#),
        created_ms: 1_000,
    }
}

fn model(federation: &str, version: u32) -> ModelVersionRow {
    ModelVersionRow {
        federation: federation.to_owned(),
        version,
        digest: sha256_hex(format!("{federation}/{version}").as_bytes()),
        size_bytes: 4 * 2_114,
        n_params: 2_114,
        round_id: None,
        created_ms: 1_000 + i64::from(version),
        server_state: (version > 0).then(|| r#"{"kind":"fedadam","m":[0.5]}"#.to_owned()),
    }
}

fn participant(round_id: u64, facility: &str, status: ParticipantStatus) -> ParticipantRow {
    ParticipantRow {
        round_id,
        facility: facility.to_owned(),
        status,
        n_samples: 0,
        update_sha256: None,
        detail: None,
        metrics: None,
    }
}

fn uploaded(round_id: u64, facility: &str, n_samples: u64) -> ParticipantRow {
    ParticipantRow {
        status: ParticipantStatus::Uploaded,
        n_samples,
        update_sha256: Some(sha256_hex(facility.as_bytes())),
        metrics: Some(MetricsRow {
            n_samples: n_samples / 5,
            loss: 0.41,
            accuracy: 0.87,
            auc: 0.9,
            n_positives: n_samples / 10,
            sensitivity: 0.8,
            specificity: 0.91,
            ece: 0.05,
        }),
        ..participant(round_id, facility, ParticipantStatus::Selected)
    }
}

async fn store_with(url: &str, federations: &[&str]) -> Store {
    let store = Store::connect(url).await.expect("connect");
    for name in federations {
        store
            .create_federation(&federation(name), &model(name, 0))
            .await
            .expect("create federation");
    }
    store
}

mod cases {
    pub use super::more_cases::*;
    use super::*;

    pub async fn federation_create_and_duplicate(url: String) {
        let store = store_with(&url, &[]).await;
        assert_eq!(store.federations().await.unwrap(), vec![]);
        assert_eq!(store.federation("malaria").await.unwrap(), None);
        assert_eq!(store.latest_model("malaria").await.unwrap(), None);

        store
            .create_federation(&federation("malaria"), &model("malaria", 0))
            .await
            .unwrap();
        store
            .create_federation(&federation("anaemia"), &model("anaemia", 3))
            .await
            .unwrap();
        assert_eq!(
            store.federation("malaria").await.unwrap(),
            Some(federation("malaria"))
        );
        let names: Vec<String> = store
            .federations()
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["anaemia", "malaria"]);
        assert_eq!(
            store.latest_model("malaria").await.unwrap(),
            Some(model("malaria", 0))
        );
        assert_eq!(
            store.model_version("anaemia", 3).await.unwrap(),
            Some(model("anaemia", 3))
        );
        assert_eq!(store.model_version("anaemia", 0).await.unwrap(), None);

        // A duplicate changes nothing, not even the initial model version.
        let mut other_initial = model("malaria", 0);
        other_initial.digest = sha256_hex(b"other");
        let mut other_fed = federation("malaria");
        other_fed.config_json = "{}".to_owned();
        let err = store
            .create_federation(&other_fed, &other_initial)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::AlreadyExists(name) if name == "malaria"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), r#"federation "malaria" already exists"#);
        assert_eq!(
            store.federation("malaria").await.unwrap(),
            Some(federation("malaria"))
        );
        assert_eq!(
            store.latest_model("malaria").await.unwrap(),
            Some(model("malaria", 0))
        );

        // The initial version must belong to the federation and carry a digest.
        let err = store
            .create_federation(&federation("tb"), &model("hiv", 0))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        let mut bad_digest = model("tb", 0);
        bad_digest.digest = "../../etc/passwd".to_owned();
        let err = store
            .create_federation(&federation("tb"), &bad_digest)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        assert_eq!(store.federation("tb").await.unwrap(), None);
    }

    pub async fn round_numbering_and_in_progress(url: String) {
        let store = store_with(&url, &["malaria", "anaemia"]).await;

        let first = store.create_round("malaria", 0, 10).await.unwrap();
        assert_eq!(
            (first.number, first.state, first.base_version),
            (1, RoundState::Created, 0)
        );
        assert_eq!((first.created_ms, first.updated_ms), (10, 10));
        assert_eq!(store.round(first.id).await.unwrap(), Some(first.clone()));

        let err = store.create_round("malaria", 0, 11).await.unwrap_err();
        assert!(
            matches!(err, StoreError::RoundInProgress(id) if id == first.id),
            "{err:?}"
        );

        // Numbering is per federation.
        let other = store.create_round("anaemia", 0, 12).await.unwrap();
        assert_eq!(other.number, 1);
        assert_ne!(other.id, first.id);

        store
            .fail_round(first.id, "no agents", &[], 13, Vec::new())
            .await
            .unwrap();
        let second = store.create_round("malaria", 0, 14).await.unwrap();
        assert_eq!(second.number, 2);
        store
            .commit_round(second.id, &model("malaria", 1), &[], 15, Vec::new())
            .await
            .unwrap();
        let third = store.create_round("malaria", 1, 16).await.unwrap();
        assert_eq!((third.number, third.base_version), (3, 1));

        let numbers: Vec<u32> = store
            .rounds("malaria")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.number)
            .collect();
        assert_eq!(numbers, [1, 2, 3]);
        assert_eq!(store.rounds("nope").await.unwrap(), vec![]);

        let err = store.create_round("nope", 0, 17).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::UnknownFederation(name) if name == "nope"),
            "{err:?}"
        );
        store
            .fail_round(other.id, "stopped", &[], 18, Vec::new())
            .await
            .unwrap();
        let err = store.create_round("anaemia", 9, 19).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::UnknownModelVersion { federation, version: 9 } if federation == "anaemia"),
            "{err:?}"
        );
    }

    pub async fn state_transitions_and_terminal_refusal(url: String) {
        let store = store_with(&url, &["malaria"]).await;
        let round = store.create_round("malaria", 0, 100).await.unwrap();

        for (state, now) in [
            (RoundState::Selecting, 101),
            (RoundState::Training, 102),
            (RoundState::Evaluating, 103),
        ] {
            store.set_round_state(round.id, state, now).await.unwrap();
            let stored = store.round(round.id).await.unwrap().unwrap();
            assert_eq!(
                (stored.state, stored.updated_ms, stored.created_ms),
                (state, now, 100)
            );
        }

        // Terminal states are reached only through commit_round / fail_round.
        for to in [RoundState::Committed, RoundState::Failed] {
            let err = store.set_round_state(round.id, to, 104).await.unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidTransition { to: t, .. } if t == to),
                "{err:?}"
            );
        }
        assert_eq!(
            store.round(round.id).await.unwrap().unwrap().state,
            RoundState::Evaluating
        );

        store
            .commit_round(round.id, &model("malaria", 1), &[], 105, Vec::new())
            .await
            .unwrap();
        let committed = store.round(round.id).await.unwrap().unwrap();
        assert_eq!(committed.state, RoundState::Committed);
        assert_eq!(committed.result_version, Some(1));
        assert_eq!(committed.updated_ms, 105);
        assert_eq!(committed.failure_reason, None);

        // A terminal round never moves again, by any path.
        let is_finished = |err: &StoreError| matches!(err, StoreError::RoundFinished { round_id, state: RoundState::Committed } if *round_id == round.id);
        let err = store
            .set_round_state(round.id, RoundState::Training, 106)
            .await
            .unwrap_err();
        assert!(is_finished(&err), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("round {} is already committed", round.id)
        );
        let err = store
            .fail_round(round.id, "late", &[], 106, Vec::new())
            .await
            .unwrap_err();
        assert!(is_finished(&err), "{err:?}");
        let err = store
            .commit_round(round.id, &model("malaria", 2), &[], 106, Vec::new())
            .await
            .unwrap_err();
        assert!(is_finished(&err), "{err:?}");
        let err = store
            .save_participants(
                round.id,
                &[participant(round.id, "kisumu", ParticipantStatus::Selected)],
                0,
                Vec::new(),
            )
            .await
            .unwrap_err();
        assert!(is_finished(&err), "{err:?}");
        assert_eq!(store.round(round.id).await.unwrap().unwrap(), committed);
        assert_eq!(store.model_version("malaria", 2).await.unwrap(), None);
        assert_eq!(store.participants(round.id).await.unwrap(), vec![]);

        let missing = round.id + 1_000;
        let err = store
            .set_round_state(missing, RoundState::Training, 107)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownRound(id) if id == missing),
            "{err:?}"
        );
        let err = store
            .fail_round(missing, "x", &[], 107, Vec::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownRound(id) if id == missing),
            "{err:?}"
        );
        assert_eq!(store.round(missing).await.unwrap(), None);
    }

    pub async fn commit_round_is_atomic(url: String) {
        let store = store_with(&url, &["malaria", "anaemia"]).await;
        let round = store.create_round("malaria", 0, 200).await.unwrap();
        store
            .set_round_state(round.id, RoundState::Training, 201)
            .await
            .unwrap();
        let selected = [
            participant(round.id, "kisumu", ParticipantStatus::Selected),
            participant(round.id, "mombasa", ParticipantStatus::Selected),
        ];
        store
            .save_participants(round.id, &selected, 0, Vec::new())
            .await
            .unwrap();
        let before_round = store.round(round.id).await.unwrap().unwrap();
        let final_participants = [
            uploaded(round.id, "kisumu", 500),
            uploaded(round.id, "mombasa", 300),
        ];

        // Version 0 exists already: the whole commit is refused.
        let err = store
            .commit_round(
                round.id,
                &model("malaria", 0),
                &final_participants,
                202,
                Vec::new(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::VersionExists { federation, version: 0 } if federation == "malaria"),
            "{err:?}"
        );
        assert_eq!(store.round(round.id).await.unwrap().unwrap(), before_round);
        assert_eq!(store.participants(round.id).await.unwrap(), selected);
        assert_eq!(
            store.latest_model("malaria").await.unwrap(),
            Some(model("malaria", 0))
        );

        // A version of another federation: refused, nothing written.
        let err = store
            .commit_round(
                round.id,
                &model("anaemia", 1),
                &final_participants,
                202,
                Vec::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        assert_eq!(store.round(round.id).await.unwrap().unwrap(), before_round);
        assert_eq!(store.participants(round.id).await.unwrap(), selected);
        assert_eq!(store.model_version("anaemia", 1).await.unwrap(), None);

        // A participant that cannot be stored is refused before the
        // transaction starts.
        let mut broken = final_participants.to_vec();
        broken.push(uploaded(round.id, "nakuru", 10));
        broken[2].n_samples = u64::MAX;
        let err = store
            .commit_round(round.id, &model("malaria", 1), &broken, 202, Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::OutOfRange { .. }), "{err:?}");
        assert_eq!(store.model_version("malaria", 1).await.unwrap(), None);
        assert_eq!(store.participants(round.id).await.unwrap(), selected);

        store
            .commit_round(
                round.id,
                &model("malaria", 1),
                &final_participants,
                203,
                Vec::new(),
            )
            .await
            .unwrap();
        let after = store.round(round.id).await.unwrap().unwrap();
        assert_eq!(
            (after.state, after.result_version, after.updated_ms),
            (RoundState::Committed, Some(1), 203)
        );
        assert_eq!(
            store.participants(round.id).await.unwrap(),
            final_participants
        );
        let latest = store.latest_model("malaria").await.unwrap().unwrap();
        assert_eq!(
            latest,
            ModelVersionRow {
                round_id: Some(round.id),
                ..model("malaria", 1)
            }
        );
    }

    pub async fn fail_round_records_reason_and_participants(url: String) {
        let store = store_with(&url, &["malaria"]).await;
        let round = store.create_round("malaria", 0, 300).await.unwrap();
        store
            .save_participants(
                round.id,
                &[participant(round.id, "kisumu", ParticipantStatus::Selected)],
                0,
                Vec::new(),
            )
            .await
            .unwrap();

        let dropped = ParticipantRow {
            detail: Some("missed the upload deadline".to_owned()),
            ..participant(round.id, "kisumu", ParticipantStatus::Dropped)
        };
        let rejected = ParticipantRow {
            detail: Some("update norm above clipping bound".to_owned()),
            ..participant(round.id, "eldoret", ParticipantStatus::Rejected)
        };

        // Invalid participants are refused before anything is written.
        let twice = [dropped.clone(), dropped.clone()];
        let err = store
            .fail_round(round.id, "too few uploads", &twice, 301, Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        assert_eq!(
            store.round(round.id).await.unwrap().unwrap().state,
            RoundState::Created
        );

        store
            .fail_round(
                round.id,
                "too few uploads",
                &[dropped.clone(), rejected.clone()],
                302,
                Vec::new(),
            )
            .await
            .unwrap();
        let failed = store.round(round.id).await.unwrap().unwrap();
        assert_eq!(failed.state, RoundState::Failed);
        assert_eq!(failed.failure_reason.as_deref(), Some("too few uploads"));
        assert_eq!((failed.result_version, failed.updated_ms), (None, 302));
        assert_eq!(
            store.participants(round.id).await.unwrap(),
            vec![rejected, dropped]
        );
    }

    pub async fn fail_unfinished_rounds(url: String) {
        let store = store_with(&url, &["a", "b", "c"]).await;
        let a = store.create_round("a", 0, 400).await.unwrap();
        store
            .set_round_state(a.id, RoundState::Training, 401)
            .await
            .unwrap();
        let b = store.create_round("b", 0, 402).await.unwrap();
        store
            .commit_round(b.id, &model("b", 1), &[], 403, Vec::new())
            .await
            .unwrap();
        let c = store.create_round("c", 0, 404).await.unwrap();

        let failed = store
            .fail_unfinished_rounds("coordinator restarted", 500)
            .await
            .unwrap();
        assert_eq!(failed, vec![a.id, c.id]);
        for id in [a.id, c.id] {
            let round = store.round(id).await.unwrap().unwrap();
            assert_eq!(round.state, RoundState::Failed);
            assert_eq!(
                round.failure_reason.as_deref(),
                Some("coordinator restarted")
            );
            assert_eq!(round.updated_ms, 500);
        }
        let b_after = store.round(b.id).await.unwrap().unwrap();
        assert_eq!(
            (b_after.state, b_after.updated_ms),
            (RoundState::Committed, 403)
        );

        assert_eq!(
            store.fail_unfinished_rounds("again", 600).await.unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(store.create_round("a", 0, 601).await.unwrap().number, 2);
    }

    pub async fn round_stages_are_recorded_with_each_change_and_old_databases_migrate(url: String) {
        let stage = |state, started_ms| StageRow { state, started_ms };
        let store = store_with(&url, &["malaria"]).await;
        let round = store.create_round("malaria", 0, 100).await.unwrap();
        for (state, now) in [
            (RoundState::Selecting, 101),
            (RoundState::Training, 103),
            // Entering a stage again keeps its first time.
            (RoundState::Training, 104),
            (RoundState::Evaluating, 110),
        ] {
            store.set_round_state(round.id, state, now).await.unwrap();
        }
        // A refused move records nothing.
        store
            .set_round_state(round.id, RoundState::Committed, 111)
            .await
            .unwrap_err();
        store
            .commit_round(round.id, &model("malaria", 1), &[], 120, Vec::new())
            .await
            .unwrap();
        let stages = store.round_stages(round.id).await.unwrap();
        assert_eq!(
            stages,
            vec![
                stage(RoundState::Created, 100),
                stage(RoundState::Selecting, 101),
                stage(RoundState::Training, 103),
                stage(RoundState::Evaluating, 110),
                stage(RoundState::Committed, 120),
            ]
        );
        // The stages span the round: from its creation to its end.
        let row = store.round(round.id).await.unwrap().unwrap();
        let spans: i64 = stages
            .windows(2)
            .map(|w| w[1].started_ms - w[0].started_ms)
            .sum();
        assert_eq!(spans, row.updated_ms - row.created_ms);

        // A round that fails ends with `failed`; so does one failed at start-up.
        let failed = store.create_round("malaria", 1, 200).await.unwrap();
        store
            .set_round_state(failed.id, RoundState::Selecting, 200)
            .await
            .unwrap();
        store
            .fail_round(failed.id, "too few", &[], 230, Vec::new())
            .await
            .unwrap();
        assert_eq!(
            store.round_stages(failed.id).await.unwrap(),
            vec![
                stage(RoundState::Created, 200),
                stage(RoundState::Selecting, 200),
                stage(RoundState::Failed, 230),
            ]
        );
        let cut = store.create_round("malaria", 1, 300).await.unwrap();
        store.fail_unfinished_rounds("restart", 350).await.unwrap();
        assert_eq!(
            store.round_stages(cut.id).await.unwrap().last(),
            Some(&stage(RoundState::Failed, 350))
        );

        // A database from before stages were recorded: rounds, no `round_stages` table.
        store.close().await.unwrap();
        let db = sea_orm::Database::connect(url.as_str()).await.unwrap();
        db.execute_unprepared("DROP TABLE round_stages")
            .await
            .unwrap();
        db.execute_unprepared("DELETE FROM seaql_migrations WHERE version = 'm0009_round_stages'")
            .await
            .unwrap();
        db.close().await.unwrap();
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(store.round_stages(round.id).await.unwrap(), vec![]);
        assert_eq!(store.round(round.id).await.unwrap().unwrap(), row);
        let next = store.create_round("malaria", 1, 400).await.unwrap();
        assert_eq!(
            store.round_stages(next.id).await.unwrap(),
            vec![stage(RoundState::Created, 400)]
        );
        store.close().await.unwrap();
    }

    pub async fn persists_across_reconnect(url: String) {
        let store = store_with(&url, &["malaria"]).await;
        let round = store.create_round("malaria", 0, 700).await.unwrap();
        let participants = [uploaded(round.id, "kisumu", 120)];
        store
            .commit_round(
                round.id,
                &model("malaria", 1),
                &participants,
                701,
                Vec::new(),
            )
            .await
            .unwrap();
        let open = store.create_round("malaria", 1, 702).await.unwrap();
        store
            .record_agent_seen("kisumu", &sha256_hex(b"cert"), 703)
            .await
            .unwrap();
        let rounds = store.rounds("malaria").await.unwrap();
        let agents = store.agents().await.unwrap();
        store.close().await.unwrap();

        // Reconnecting re-runs the (already applied) migrations.
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(
            store.federations().await.unwrap(),
            vec![federation("malaria")]
        );
        assert_eq!(store.rounds("malaria").await.unwrap(), rounds);
        assert_eq!(store.participants(round.id).await.unwrap(), participants);
        assert_eq!(
            store
                .latest_model("malaria")
                .await
                .unwrap()
                .unwrap()
                .version,
            1
        );
        assert_eq!(store.agents().await.unwrap(), agents);
        assert_eq!(
            store.fail_unfinished_rounds("restart", 800).await.unwrap(),
            vec![open.id]
        );
        store.close().await.unwrap();
    }

    pub async fn nan_auc_round_trip(url: String) {
        let store = store_with(&url, &["malaria"]).await;
        let round = store.create_round("malaria", 0, 900).await.unwrap();
        let single_class = MetricsRow {
            n_samples: 40,
            loss: 0.2,
            accuracy: 1.0,
            auc: f64::NAN,
            n_positives: 40,
            sensitivity: 1.0,
            specificity: f64::NAN,
            ece: 0.02,
        };
        let all_nan = MetricsRow {
            n_samples: 0,
            loss: f64::NAN,
            accuracy: f64::NAN,
            auc: f64::NAN,
            n_positives: 0,
            sensitivity: f64::NAN,
            specificity: f64::NAN,
            ece: f64::NAN,
        };
        let rows = [
            ParticipantRow {
                metrics: Some(single_class),
                ..uploaded(round.id, "a-single-class", 200)
            },
            ParticipantRow {
                metrics: Some(all_nan),
                ..uploaded(round.id, "b-empty-test-set", 10)
            },
            ParticipantRow {
                metrics: None,
                ..uploaded(round.id, "c-no-metrics", 10)
            },
            uploaded(round.id, "d-normal", 10),
        ];
        store
            .save_participants(round.id, &rows, 0, Vec::new())
            .await
            .unwrap();

        let stored = store.participants(round.id).await.unwrap();
        assert_eq!(stored.len(), rows.len());
        for (got, want) in stored.iter().zip(&rows) {
            assert_eq!(got.facility, want.facility);
            match (&got.metrics, &want.metrics) {
                (Some(g), Some(w)) => assert!(g.same_as(w), "{}: {g:?} != {w:?}", got.facility),
                (None, None) => {}
                (g, w) => panic!("{}: metrics {g:?} != {w:?}", got.facility),
            }
        }
        let metrics = stored[0].metrics.unwrap();
        assert!(metrics.auc.is_nan());
        assert_eq!(
            (metrics.loss, metrics.accuracy, metrics.n_samples),
            (0.2, 1.0, 40)
        );
        assert_eq!(stored[3].metrics.unwrap().auc, 0.9);
    }

    pub async fn participants_upsert_and_validation(url: String) {
        let store = store_with(&url, &["malaria"]).await;
        let round = store.create_round("malaria", 0, 1_000).await.unwrap();

        // More rows than one INSERT statement carries.
        let many: Vec<ParticipantRow> = (0..1_234)
            .map(|i| {
                participant(
                    round.id,
                    &format!("facility-{i:05}"),
                    ParticipantStatus::Selected,
                )
            })
            .collect();
        store
            .save_participants(round.id, &many, 0, Vec::new())
            .await
            .unwrap();
        assert_eq!(store.participants(round.id).await.unwrap(), many);

        // Upsert by (round, facility): replaced, not duplicated.
        let update = [
            uploaded(round.id, "facility-00007", 77),
            uploaded(round.id, "zanzibar", 5),
        ];
        store
            .save_participants(round.id, &update, 0, Vec::new())
            .await
            .unwrap();
        let stored = store.participants(round.id).await.unwrap();
        assert_eq!(stored.len(), 1_235);
        assert_eq!(stored[7], update[0]);
        assert_eq!(stored.last(), Some(&update[1]));
        store
            .save_participants(round.id, &[], 0, Vec::new())
            .await
            .unwrap();

        let twice = [update[0].clone(), update[0].clone()];
        let err = store
            .save_participants(round.id, &twice, 0, Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        let elsewhere = [participant(
            round.id + 1,
            "kisumu",
            ParticipantStatus::Selected,
        )];
        let err = store
            .save_participants(round.id, &elsewhere, 0, Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
        let err = store
            .save_participants(round.id + 1, &elsewhere, 0, Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::UnknownRound(_)), "{err:?}");
        assert_eq!(store.participants(round.id).await.unwrap().len(), 1_235);
    }

    pub async fn agents_upsert(url: String) {
        let store = store_with(&url, &[]).await;
        assert_eq!(store.agents().await.unwrap(), vec![]);
        store.record_agent_seen("mombasa", "c1", 10).await.unwrap();
        store.record_agent_seen("kisumu", "c2", 11).await.unwrap();
        store.record_agent_seen("mombasa", "c3", 20).await.unwrap();

        let agents = store.agents().await.unwrap();
        let summary: Vec<(&str, &str, i64, i64)> = agents
            .iter()
            .map(|a| {
                (
                    a.facility.as_str(),
                    a.cert_sha256.as_str(),
                    a.first_seen_ms,
                    a.last_seen_ms,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [("kisumu", "c2", 11, 11), ("mombasa", "c3", 10, 20)]
        );
    }

    pub async fn out_of_range_numbers_refused(url: String) {
        let store = store_with(&url, &["malaria"]).await;
        let huge = u64::MAX;

        let err = store.round(huge).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::OutOfRange {
                    field: "round_id",
                    ..
                }
            ),
            "{err:?}"
        );
        let mut too_big = model("big", 0);
        too_big.size_bytes = huge;
        let err = store
            .create_federation(&federation("big"), &too_big)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::OutOfRange {
                    field: "size_bytes",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(store.federation("big").await.unwrap(), None);

        // The largest values that fit survive a round trip.
        let mut largest = model("largest", u32::MAX);
        largest.size_bytes = i64::MAX as u64;
        largest.n_params = i64::MAX as u64;
        store
            .create_federation(&federation("largest"), &largest)
            .await
            .unwrap();
        assert_eq!(store.latest_model("largest").await.unwrap(), Some(largest));
    }
}

mod more_cases {
    use super::*;
    use harambee_privacy::ledger::{Contribution, EgressReceipt, LedgerEvent, Sha256Digest};

    fn contribution(facility: &str, federation: &str, round_id: u64) -> Contribution {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let receipt = EgressReceipt {
            facility: facility.to_owned(),
            federation: federation.to_owned(),
            round_id,
            update_sha256: Sha256Digest::of(facility.as_bytes()),
            bytes: 40,
            policy_sha256: Sha256Digest::of(b"policy"),
            clipping_norm: 1.0,
            noise_multiplier: 1.1,
            epsilon_spent: 0.5,
            delta: 1e-5,
            aggregation: None,
            secagg_params: None,
            dp_sgd: None,
        }
        .sign(&key)
        .unwrap();
        Contribution {
            facility: facility.to_owned(),
            federation: federation.to_owned(),
            round_id,
            n_params: 10,
            bytes: 40,
            upload_sha256: receipt.receipt.update_sha256,
            clipping_norm: 1.0,
            noise_multiplier: 1.1,
            epsilon_spent: 0.5,
            receipt,
        }
    }

    /// An upload recorded as accepted reaches the ledger with the round's failure at
    /// start-up recovery (before the failure entry); a round that ends normally takes its
    /// rows with it (its driver wrote the contributions itself).
    pub async fn accepted_uploads_reach_the_ledger_however_the_round_ends(url: String) {
        let store = store_with(&url, &["a", "b"]).await;
        let a = store.create_round("a", 0, 100).await.unwrap();
        let a_uploads = [
            contribution("kisumu", "a", a.id),
            contribution("mombasa", "a", a.id),
        ];
        store
            .record_accepted_uploads(&a_uploads, 101)
            .await
            .unwrap();
        // Recording one again (an acknowledgement retried) changes nothing.
        store
            .record_accepted_uploads(&a_uploads[..1], 102)
            .await
            .unwrap();
        assert_eq!(
            store.accepted_uploads(a.id).await.unwrap(),
            a_uploads.to_vec()
        );
        let events: Vec<LedgerEvent> = a_uploads
            .iter()
            .cloned()
            .map(LedgerEvent::Contribution)
            .collect();
        store
            .commit_round(a.id, &model("a", 1), &[], 103, events)
            .await
            .unwrap();
        assert_eq!(store.accepted_uploads(a.id).await.unwrap(), vec![]);
        let committed = store.ledger_size().await.unwrap();

        let b = store.create_round("b", 0, 200).await.unwrap();
        let b_upload = contribution("kisumu", "b", b.id);
        store
            .record_accepted_uploads(std::slice::from_ref(&b_upload), 201)
            .await
            .unwrap();
        assert_eq!(
            store.fail_unfinished_rounds("restart", 300).await.unwrap(),
            vec![b.id]
        );
        assert_eq!(store.accepted_uploads(b.id).await.unwrap(), vec![]);
        let end = store.ledger_size().await.unwrap();
        let added: Vec<LedgerEvent> = store
            .ledger_lines(committed, end)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.event)
            .collect();
        assert_eq!(
            added,
            vec![
                LedgerEvent::Contribution(b_upload),
                LedgerEvent::RoundFailed {
                    federation: "b".into(),
                    round_id: b.id,
                    reason: "restart".into(),
                    revealed: false,
                }
            ]
        );
    }

    pub async fn concurrent_create_round_one_wins(url: String) {
        let store = store_with(&url, &["malaria"]).await;
        // On PostgreSQL these run on separate pooled connections, so several
        // may pass the in-progress check; the partial unique index decides.
        // Open the connections first so that the attempts overlap.
        futures::future::join_all((0..8).map(|_| store.federations())).await;
        let attempts = (0..8).map(|i| store.create_round("malaria", 0, 1_100 + i));
        let results = futures::future::join_all(attempts).await;
        let created: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(created.len(), 1, "{results:?}");
        let winner = created[0].id;
        for result in &results {
            match result {
                Ok(round) => assert_eq!(round.number, 1),
                Err(StoreError::RoundInProgress(id)) => assert_eq!(*id, winner),
                Err(err) => panic!("unexpected error {err:?}"),
            }
        }
        assert_eq!(store.rounds("malaria").await.unwrap().len(), 1);
    }

    pub async fn concurrent_commit_and_fail_one_wins(url: String) {
        let store = store_with(&url, &["malaria"]).await;
        for attempt in 0..5u32 {
            let round = store.create_round("malaria", attempt, 1_200).await.unwrap();
            let version = model("malaria", attempt + 1);
            let participants = [uploaded(round.id, "kisumu", 10)];
            let (committed, failed) = futures::join!(
                store.commit_round(round.id, &version, &participants, 1_201, Vec::new()),
                store.fail_round(round.id, "deadline", &[], 1_202, Vec::new()),
            );
            let stored = store.round(round.id).await.unwrap().unwrap();
            match (committed, failed) {
                (
                    Ok(()),
                    Err(StoreError::RoundFinished {
                        state: RoundState::Committed,
                        ..
                    }),
                ) => {
                    assert_eq!(stored.state, RoundState::Committed);
                    assert!(
                        store
                            .model_version("malaria", attempt + 1)
                            .await
                            .unwrap()
                            .is_some()
                    );
                    assert_eq!(store.participants(round.id).await.unwrap(), participants);
                }
                (
                    Err(StoreError::RoundFinished {
                        state: RoundState::Failed,
                        ..
                    }),
                    Ok(()),
                ) => {
                    assert_eq!(stored.state, RoundState::Failed);
                    assert_eq!(
                        store.model_version("malaria", attempt + 1).await.unwrap(),
                        None
                    );
                    assert_eq!(store.participants(round.id).await.unwrap(), vec![]);
                    // Keep the version sequence going for the next attempt.
                    let retry = store.create_round("malaria", attempt, 1_203).await.unwrap();
                    store
                        .commit_round(retry.id, &version, &[], 1_204, Vec::new())
                        .await
                        .unwrap();
                }
                other => panic!("expected exactly one winner, got {other:?}"),
            }
        }
    }

    pub async fn debug_output_hides_url(url: String) {
        let store = Store::connect(&url).await.unwrap();
        let debug = format!("{store:?}");
        assert!(debug.starts_with("Store {"), "{debug}");
        assert!(
            !debug.contains("127.0.0.1") && !debug.contains(".db"),
            "{debug}"
        );
    }

    /// `serve --blobs-in-database`: the same blob store in the `blobs` table, seen by
    /// another connection (a standby coordinator), with corruption detected, ranges bounded
    /// and unkept old blobs swept.
    pub async fn blobs_in_the_database(url: String) {
        let store = store_with(&url, &[]).await;
        let blobs = BlobStore::in_database(&store);
        let bytes: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let digest = blobs.put(&bytes).await.unwrap();
        assert_eq!(digest, sha256_hex(&bytes));
        assert!(blobs.contains(&digest).await);
        assert_eq!(blobs.size(&digest).await.unwrap(), 40_000);
        assert_eq!(blobs.put(&bytes).await.unwrap(), digest, "idempotent");
        assert_eq!(blobs.read_range(&digest, 4, 8).await.unwrap(), bytes[4..12]);
        assert_eq!(
            blobs.read_range(&digest, 39_990, 1 << 40).await.unwrap(),
            bytes[39_990..]
        );
        assert!(
            blobs
                .read_range(&digest, 40_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            blobs.read_range(&digest, 40_001, 10).await,
            Err(BlobError::OutOfRange { size: 40_000, .. })
        ));
        let empty = blobs.put(&[]).await.unwrap();
        assert_eq!(blobs.get(&empty).await.unwrap(), Vec::<u8>::new());
        let missing = sha256_hex(b"never stored");
        assert!(matches!(
            blobs.get(&missing).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(!blobs.contains(&missing).await);
        assert!(matches!(
            blobs.get("../../etc/passwd").await,
            Err(BlobError::InvalidDigest(_))
        ));

        // Another connection to the same database (a standby) reads what this one wrote.
        let other = Store::connect(&url).await.unwrap();
        assert_eq!(
            BlobStore::in_database(&other).get(&digest).await.unwrap(),
            bytes
        );

        // A row whose bytes changed is refused as corrupt, and storing it again repairs it.
        let raw = sea_orm::Database::connect(url.as_str()).await.unwrap();
        raw.execute_unprepared(&format!(
            "UPDATE blobs SET bytes = {} WHERE digest = '{digest}'",
            if url.starts_with("sqlite") {
                "X'00'"
            } else {
                "'\\x00'::bytea"
            }
        ))
        .await
        .unwrap();
        assert!(matches!(
            blobs.get(&digest).await,
            Err(BlobError::Corrupt(_))
        ));
        blobs.put(&bytes).await.unwrap();
        assert_eq!(blobs.get(&digest).await.unwrap(), bytes);

        // Sweep: old and unkept goes; kept or young stays.
        let old = blobs.put(b"failed candidate").await.unwrap();
        raw.execute_unprepared(&format!(
            "UPDATE blobs SET stored_ms = 0 WHERE digest IN ('{old}', '{digest}')"
        ))
        .await
        .unwrap();
        let swept = blobs
            .sweep(
                std::collections::HashSet::from([digest.clone()]),
                Duration::from_secs(3600),
            )
            .await
            .unwrap();
        assert_eq!(swept.blobs, 1);
        assert_eq!(swept.bytes, b"failed candidate".len() as u64);
        assert!(!blobs.contains(&old).await);
        assert!(blobs.contains(&digest).await);
        assert!(blobs.contains(&empty).await, "young blobs stay");
        raw.close().await.unwrap();
        other.close().await.unwrap();
        store.close().await.unwrap();
    }
}

mod store_sqlite_only {
    use super::*;

    #[tokio::test]
    async fn in_memory_database() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store
            .create_federation(&federation("malaria"), &model("malaria", 0))
            .await
            .unwrap();
        // The single connection is kept, so the data outlives idle periods
        // and clones of the handle.
        let clone = store.clone();
        let round = clone.create_round("malaria", 0, 1).await.unwrap();
        assert_eq!(store.round(round.id).await.unwrap().unwrap().number, 1);
    }

    #[tokio::test]
    async fn unsupported_url_names_only_the_scheme() {
        let err = Store::connect("mysql://user:secret@host/db")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::UnsupportedUrl(scheme) if scheme == "mysql"),
            "{err:?}"
        );
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn postgres_url_rewriting() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }

    #[test]
    fn state_text_round_trips() {
        for state in RoundState::ALL {
            assert_eq!(state.to_string().parse::<RoundState>(), Ok(state));
        }
        for status in ParticipantStatus::ALL {
            assert_eq!(status.to_string().parse::<ParticipantStatus>(), Ok(status));
        }
        let terminal: Vec<RoundState> = RoundState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal, [RoundState::Committed, RoundState::Failed]);
        let err = "Committed".parse::<RoundState>().unwrap_err();
        assert_eq!(err.to_string(), r#"unknown round state "Committed""#);
    }
}

mod blob_store {
    use super::*;

    fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if let Some(found) = find_file(&path, name) {
                    return Some(found);
                }
            } else if path.file_name().is_some_and(|n| n == name) {
                return Some(path);
            }
        }
        None
    }

    fn count_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    count_files(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }

    #[tokio::test]
    async fn put_get_read_range() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).await.unwrap();
        let bytes: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();

        let digest = blobs.put(&bytes).await.unwrap();
        assert_eq!(digest, sha256_hex(&bytes));
        assert_eq!(digest.len(), 64);
        assert!(blobs.contains(&digest).await);
        assert_eq!(blobs.get(&digest).await.unwrap(), bytes);
        assert_eq!(blobs.size(&digest).await.unwrap(), 40_000);

        // Idempotent: same digest, still one file, no temporary left behind.
        assert_eq!(blobs.put(&bytes).await.unwrap(), digest);
        assert_eq!(count_files(dir.path()), 1);

        assert_eq!(blobs.read_range(&digest, 4, 8).await.unwrap(), bytes[4..12]);
        assert_eq!(
            blobs.read_range(&digest, 39_990, 1 << 40).await.unwrap(),
            bytes[39_990..]
        );
        assert_eq!(
            blobs.read_range(&digest, 40_000, 10).await.unwrap(),
            Vec::<u8>::new()
        );
        let err = blobs.read_range(&digest, 40_001, 10).await.unwrap_err();
        assert!(
            matches!(
                err,
                BlobError::OutOfRange {
                    offset: 40_001,
                    size: 40_000,
                    ..
                }
            ),
            "{err:?}"
        );

        let empty = blobs.put(&[]).await.unwrap();
        assert_eq!(blobs.get(&empty).await.unwrap(), Vec::<u8>::new());

        // Reopening the directory finds the blobs.
        let reopened = BlobStore::open(dir.path().join("blobs")).await.unwrap();
        assert_eq!(reopened.get(&digest).await.unwrap(), bytes);
    }

    #[tokio::test]
    async fn corrupt_blob_detected_and_repaired_by_put() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).await.unwrap();
        let bytes = b"model parameters, version 7".to_vec();
        let digest = blobs.put(&bytes).await.unwrap();

        let path = find_file(dir.path(), &digest).expect("blob file named by its digest");
        let mut on_disk = std::fs::read(&path).unwrap();
        on_disk[3] ^= 0x01;
        std::fs::write(&path, &on_disk).unwrap();

        let err = blobs.get(&digest).await.unwrap_err();
        assert!(
            matches!(&err, BlobError::Corrupt(d) if *d == digest),
            "{err:?}"
        );
        assert!(err.to_string().contains(&digest), "{err}");

        assert_eq!(blobs.put(&bytes).await.unwrap(), digest);
        assert_eq!(blobs.get(&digest).await.unwrap(), bytes);
    }

    #[tokio::test]
    async fn invalid_and_missing_digests() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).await.unwrap();
        let valid = sha256_hex(b"x");
        let invalid = [
            "../../../etc/passwd".to_owned(),
            valid.to_uppercase(),
            valid[..63].to_owned(),
            format!("{valid}0"),
            format!("../{}", &valid[3..]),
            String::new(),
        ];
        for digest in &invalid {
            assert!(
                matches!(blobs.get(digest).await, Err(BlobError::InvalidDigest(_))),
                "{digest}"
            );
            assert!(
                matches!(blobs.size(digest).await, Err(BlobError::InvalidDigest(_))),
                "{digest}"
            );
            assert!(
                matches!(
                    blobs.read_range(digest, 0, 1).await,
                    Err(BlobError::InvalidDigest(_))
                ),
                "{digest}"
            );
            assert!(!blobs.contains(digest).await, "{digest}");
        }

        let err = blobs.get(&valid).await.unwrap_err();
        assert!(
            matches!(&err, BlobError::NotFound(d) if *d == valid),
            "{err:?}"
        );
        assert!(matches!(
            blobs.size(&valid).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(matches!(
            blobs.read_range(&valid, 0, 1).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(!blobs.contains(&valid).await);
    }
}
