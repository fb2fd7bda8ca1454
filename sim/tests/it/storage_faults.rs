//! The coordinator's database and blob directory on a small file system (a tmpfs mounted for
//! the test, so the disk really fills) that runs full in the middle of a round: the round
//! fails with the reason once it can be recorded, nothing committed before is damaged, and
//! when space returns the next round starts and commits without a restart.

use harambee_sim::harness as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use harambee_proto::pb;

/// A tmpfs of `size` mounted on a new directory (in a temporary directory it holds), unmounted
/// when dropped. Needs root (as CI runs); says so plainly otherwise.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill it, which needs root: {status}"
        );
        SmallDisk { path, _dir: dir }
    }

    /// Writes a filler file until the file system refuses more; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        // The last partial block too.
        while file.write_all(&block[..512]).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn path_of(disk: &Path, name: &str) -> PathBuf {
    disk.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_mid_round_fails_the_round_and_the_next_one_commits_when_space_returns() {
    let disk = SmallDisk::mount("16m");
    let mut h = Harness::prepare(Some(format!(
        "sqlite://{}?mode=rwc",
        path_of(&disk.path, "coordinator.db").display()
    )));
    h.storage.blob_dir = path_of(&disk.path, "blobs");
    h.start_coordinator().await;
    let facilities = h.facilities(Some(3));
    let configs: Vec<_> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    let mut admin = h.admin().await;
    let spec = spec(&facilities, 3, 60);
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &names).await;
    let first = run_round(&mut admin, &spec.name).await;
    assert_eq!(first.state(), pb::RoundState::Committed, "{first:?}");
    let v1 = export(&mut admin, &spec.name, 1).await;

    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let filler = disk.fill();
    // Nothing can be written: the round cannot end on record, and no second round starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stuck = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(stuck.code(), tonic::Code::FailedPrecondition, "{stuck:?}");

    std::fs::remove_file(filler).unwrap();
    let failed = wait_round(&mut admin, round.id).await;
    assert_eq!(failed.state(), pb::RoundState::Failed, "{failed:?}");
    assert!(
        failed.failure_reason.contains("storage"),
        "{}",
        failed.failure_reason
    );
    // Committed history is intact, and the next round commits without a restart.
    assert_eq!(export(&mut admin, &spec.name, 1).await, v1);
    let next = run_round(&mut admin, &spec.name).await;
    assert_eq!(next.state(), pb::RoundState::Committed, "{next:?}");
    assert_eq!(next.result.unwrap().version, 2);

    // Every facility's audit still agrees with the ledger.
    let ledger = h.export_ledger("ledger.jsonl").await;
    for config in &configs {
        let (report, ok) = audit_facility(&ledger, config);
        assert!(ok, "{report}");
    }
    h.stop_agents().await;
    h.stop_coordinator().await;
}
