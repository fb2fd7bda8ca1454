//! The ledger key: given explicitly (no default path), private to its owner, recorded by
//! fingerprint at first start, never silently replaced, and changed only by a rotation
//! that the ledger records and auditors follow from the key they pinned.

use harambee_sim::harness as common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use harambee_agent::audit::{VerifyArgs, verify_report};
use harambee_coordinator::store::ledger_view;
use harambee_link::identity::Role;
use harambee_privacy::ledger::{LedgerEvent, key_fingerprint, parse_jsonl};

fn fingerprint_of(path: &Path) -> String {
    let key = ledger_view::read_key(path).unwrap().unwrap();
    key_fingerprint(&key.verifying_key())
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Why `serve` refuses to open this storage.
async fn refusal(h: &Harness) -> String {
    let err = harambee_coordinator::server::open(&h.storage, test_settings())
        .await
        .err()
        .expect("the coordinator must refuse to start");
    format!("{err:#}")
}

/// A harness whose ledger holds entries (a federation was created), coordinator stopped.
async fn ledger_with_entries() -> Harness {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(1));
    let mut admin = h.admin().await;
    create_federation(&mut admin, &spec(&facilities, 1, 60)).await;
    h.stop_coordinator().await;
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_ledger_key_that_is_missing_different_or_open_to_others() {
    let h = ledger_with_entries().await;
    let path = h.storage.ledger_key.clone();
    assert_eq!(mode_of(&path), 0o600, "a created key is private");
    let recorded = fingerprint_of(&path);
    let shown = path.display().to_string();

    // Missing: refused, naming the file and the recorded key; no new key is made.
    let backup = h.dir.path().join("ledger.key.backup");
    std::fs::rename(&path, &backup).unwrap();
    let err = refusal(&h).await;
    assert!(
        err.contains(&shown) && err.contains("does not exist"),
        "{err}"
    );
    assert!(err.contains(&recorded), "{err}");
    assert!(
        !path.exists(),
        "a missing key must not be replaced by a new one"
    );

    // Another key: refused, naming both fingerprints.
    let other = ledger_view::create_key(&path).unwrap();
    let other_fingerprint = key_fingerprint(&other.verifying_key());
    let err = refusal(&h).await;
    assert!(
        err.contains(&recorded) && err.contains(&other_fingerprint),
        "{err}"
    );
    assert!(err.contains("rotate-key"), "{err}");

    // The right key, readable by others: refused, naming the file and its mode.
    std::fs::remove_file(&path).unwrap();
    std::fs::rename(&backup, &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refusal(&h).await;
    assert!(err.contains(&shown) && err.contains("0644"), "{err}");

    // Restored and private: it starts.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    harambee_coordinator::server::open(&h.storage, test_settings())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_a_ledger_key_path_refuses_to_start() {
    let h = Harness::prepare(None);
    let work = h.dir.path().join("cwd");
    std::fs::create_dir_all(&work).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_harambee-sim"))
        .args([
            "coordinator",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
        ])
        .arg(&h.storage.database_url)
        .arg("--blob-dir")
        .arg(&h.storage.blob_dir)
        .arg("--pki")
        .arg(&h.pki)
        .env_remove("HARAMBEE_LEDGER_KEY")
        .env_remove("HARAMBEE_CONFIG")
        .current_dir(&work)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no ledger key given"), "{stderr}");
    assert!(
        std::fs::read_dir(&work).unwrap().next().is_none(),
        "nothing was written under the working directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_is_ledgered_and_auditors_follow_it_from_the_old_key() {
    let mut h = ledger_with_entries().await;
    let old_path = h.storage.ledger_key.clone();
    let old_key = ledger_view::read_key(&old_path).unwrap().unwrap();
    let new_path = h.dir.path().join("ledger-2.key");
    let rotated =
        harambee_coordinator::cli::rotate_ledger_key(&h.storage.database_url, &old_path, &new_path)
            .await
            .unwrap();
    assert_eq!(mode_of(&new_path), 0o600);
    assert_eq!(rotated.old_fingerprint, fingerprint_of(&old_path));
    assert_eq!(rotated.new_fingerprint, fingerprint_of(&new_path));
    // Rotating again from the old key is refused: it is no longer the key in force.
    let again = harambee_coordinator::cli::rotate_ledger_key(
        &h.storage.database_url,
        &old_path,
        &h.dir.path().join("ledger-3.key"),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{again:#}").contains(&rotated.new_fingerprint),
        "{again:#}"
    );

    // The old key no longer starts the coordinator; the new one does.
    let err = refusal(&h).await;
    assert!(
        err.contains(&rotated.old_fingerprint) && err.contains(&rotated.new_fingerprint),
        "{err}"
    );
    h.storage.ledger_key = new_path.clone();
    h.start_coordinator().await;
    let facilities = h.facilities(Some(2));
    let mut admin = h.admin().await;
    let mut second = spec(&facilities, 1, 60);
    second.name = "after-rotation".into();
    create_federation(&mut admin, &second).await;

    let out = h.dir.path().join("ledger.jsonl");
    harambee_coordinator::cli::audit::export(h.channel(Role::Auditor, "auditor").await, &out)
        .await
        .unwrap();
    let lines = parse_jsonl(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let rotation = lines
        .iter()
        .find_map(|l| match &l.event {
            LedgerEvent::LedgerKeyRotated {
                old_key: o,
                new_key: n,
                ..
            } => Some((l.index, *o, *n)),
            _ => None,
        })
        .expect("the rotation is in the ledger");
    assert_eq!(rotation.0, rotated.index);
    assert_eq!(rotation.1, old_key.verifying_key());
    assert_eq!(key_fingerprint(&rotation.2), rotated.new_fingerprint);
    assert!(
        lines.len() as u64 > rotated.index + 1,
        "entries after the rotation"
    );

    // An auditor who pinned the old key follows the rotation to the new one.
    for pin in [
        hex::encode(old_key.verifying_key().as_bytes()),
        rotated.old_fingerprint.clone(),
        rotated.new_fingerprint.clone(),
    ] {
        let (report, ok) = verify_report(&VerifyArgs {
            ledger: out.clone(),
            head: None,
            ledger_key: Some(pin.clone()),
            receipts: None,
            model_card: None,
        })
        .unwrap();
        assert!(ok, "pinned {pin}: {report}");
        assert!(report.trim_end().ends_with("VERIFIED"), "{report}");
    }
}

/// The store's record of ledger keys, on both backends: first key, refusal to replace it on a
/// non-empty ledger, and a rotation written with its ledger entry.
async fn keys_are_recorded_and_rotated(url: &str) {
    use harambee_coordinator::store::Store;
    use harambee_privacy::ledger::KeyHistory;
    let store = Store::connect(url).await.unwrap();
    let (a, b, c) = (
        ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
        ed25519_dalek::SigningKey::from_bytes(&[2; 32]),
        ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
    );
    assert_eq!(store.ledger_key().await.unwrap(), None);
    store
        .record_first_ledger_key(&a.verifying_key(), 1)
        .await
        .unwrap();
    // Nothing signed yet: another first key may replace it.
    store
        .record_first_ledger_key(&b.verifying_key(), 2)
        .await
        .unwrap();
    let recorded = store.ledger_key().await.unwrap().unwrap();
    assert_eq!(recorded.fingerprint, key_fingerprint(&b.verifying_key()));
    store
        .append_ledger(
            3,
            vec![LedgerEvent::AdminAction {
                actor: "op".into(),
                action: "test".into(),
                detail: String::new(),
            }],
        )
        .await
        .unwrap();
    assert!(
        store
            .record_first_ledger_key(&a.verifying_key(), 4)
            .await
            .is_err(),
        "a ledger with entries keeps its key"
    );
    let err = store
        .rotate_ledger_key(&a, &c.verifying_key(), 5)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&key_fingerprint(&b.verifying_key())), "{err}");
    let line = store
        .rotate_ledger_key(&b, &c.verifying_key(), 6)
        .await
        .unwrap();
    assert_eq!(line.index, 1);
    let recorded = store.ledger_key().await.unwrap().unwrap();
    assert_eq!(recorded.fingerprint, key_fingerprint(&c.verifying_key()));
    assert_eq!(recorded.rotation_index, Some(1));
    let lines = store.ledger_lines(0, 10).await.unwrap();
    let (history, failures) = KeyHistory::follow(&lines, &b.verifying_key());
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(history.key_at(2), Some(c.verifying_key()));
    store.close().await.unwrap();
}

#[tokio::test]
async fn ledger_keys_are_recorded_and_rotated_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    keys_are_recorded_and_rotated(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("store.db").display()
    ))
    .await;
}

#[tokio::test]
async fn ledger_keys_are_recorded_and_rotated_on_postgres() {
    let pg = PgDatabase::create().await;
    keys_are_recorded_and_rotated(&pg.url).await;
    pg.drop_now().await;
}
