//! Which agents are connected now: their task streams and their liveness.
//!
//! Liveness comes from heartbeats alone, kept apart from task progress: a facility that
//! trains for an hour keeps heartbeating and stays alive. A closed task stream is not a
//! death either (hospital links drop); the agent reconnects and gets its pending task again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harambee_core::FacilityId;
use harambee_proto::pb;
use tokio::sync::mpsc;
use tonic::Status;

/// Items of an agent's task stream.
pub type TaskItem = Result<pb::Task, Status>;

/// Tasks buffered per agent before a slow stream is considered stuck.
const TASK_BUFFER: usize = 16;

#[derive(Default)]
pub struct Registry {
    agents: Mutex<HashMap<FacilityId, Entry>>,
    next_conn: AtomicU64,
    /// What each facility's last heartbeat said about its policy and privacy budget; kept
    /// across reconnections (the facility's own accountant is the authority).
    privacy: Mutex<HashMap<FacilityId, pb::PrivacyStatus>>,
}

struct Entry {
    conn_id: u64,
    tasks: mpsc::Sender<TaskItem>,
    last_heartbeat: Instant,
    /// The certificate chain the facility connected with (DER, leaf first), forwarded to
    /// its peers in secure aggregation so they can check its signing key against the CA.
    chain: Vec<Vec<u8>>,
}

impl Registry {
    /// Registers a new task stream for `facility`, replacing (and so closing) any previous one.
    pub fn connect(
        &self,
        facility: &str,
        chain: Vec<Vec<u8>>,
        now: Instant,
    ) -> (u64, mpsc::Receiver<TaskItem>) {
        let (tx, rx) = mpsc::channel(TASK_BUFFER);
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            conn_id,
            tasks: tx,
            last_heartbeat: now,
            chain,
        };
        self.agents
            .lock()
            .unwrap()
            .insert(FacilityId::from(facility), entry);
        (conn_id, rx)
    }

    /// Records a heartbeat. `false` if the facility has no open task stream.
    pub fn heartbeat(&self, facility: &str, now: Instant) -> bool {
        match self.agents.lock().unwrap().get_mut(facility) {
            Some(e) => {
                e.last_heartbeat = now;
                true
            }
            None => false,
        }
    }

    /// Records the privacy status a facility's heartbeat carried.
    pub fn set_privacy(&self, facility: &str, status: pb::PrivacyStatus) {
        self.privacy
            .lock()
            .unwrap()
            .insert(FacilityId::from(facility), status);
    }

    /// The privacy status of a facility's last heartbeat, if it sent one.
    pub fn privacy(&self, facility: &str) -> Option<pb::PrivacyStatus> {
        self.privacy.lock().unwrap().get(facility).cloned()
    }

    /// Every facility's last privacy status.
    pub fn privacy_statuses(&self) -> Vec<(FacilityId, pb::PrivacyStatus)> {
        self.privacy
            .lock()
            .unwrap()
            .iter()
            .map(|(f, s)| (f.clone(), s.clone()))
            .collect()
    }

    /// Queues a task on the facility's stream. `false` if it is not connected or its stream
    /// is closed or stuck; the caller treats that like any missed task (deadlines apply).
    pub fn send(&self, facility: &str, task: pb::Task) -> bool {
        let agents = self.agents.lock().unwrap();
        match agents.get(facility) {
            Some(e) => e.tasks.try_send(Ok(task)).is_ok(),
            None => false,
        }
    }

    /// Facilities connected and alive.
    pub fn connected(&self) -> Vec<FacilityId> {
        let mut names: Vec<FacilityId> = self
            .agents
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| !e.tasks.is_closed())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// The certificate chain a connected facility presented (leaf first).
    pub fn certificate_chain(&self, facility: &str) -> Option<Vec<Vec<u8>>> {
        self.agents
            .lock()
            .unwrap()
            .get(facility)
            .map(|e| e.chain.clone())
            .filter(|c| !c.is_empty())
    }

    pub fn is_connected(&self, facility: &str) -> bool {
        self.agents
            .lock()
            .unwrap()
            .get(facility)
            .is_some_and(|e| !e.tasks.is_closed())
    }

    /// Removes the entry of a stream that ended, unless a newer stream replaced it.
    pub fn disconnect(&self, facility: &str, conn_id: u64) {
        let mut agents = self.agents.lock().unwrap();
        if agents.get(facility).is_some_and(|e| e.conn_id == conn_id) {
            agents.remove(facility);
        }
    }

    /// Removes a facility's entry whatever its stream, which closes that stream (revocation).
    pub fn remove(&self, facility: &str) -> bool {
        self.agents.lock().unwrap().remove(facility).is_some()
    }

    /// Removes and returns the facilities whose last heartbeat is older than `timeout`.
    pub fn reap(&self, now: Instant, timeout: Duration) -> Vec<FacilityId> {
        let mut agents = self.agents.lock().unwrap();
        let dead: Vec<FacilityId> = agents
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_heartbeat) > timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &dead {
            agents.remove(name);
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_stream_replaces_the_old_one() {
        let reg = Registry::default();
        let t0 = Instant::now();
        let (c1, mut rx1) = reg.connect("a", Vec::new(), t0);
        let (c2, mut rx2) = reg.connect("a", Vec::new(), t0);
        assert!(reg.send("a", pb::Task::default()));
        assert!(rx1.try_recv().is_err(), "the replaced stream is closed");
        assert!(rx2.try_recv().is_ok());
        reg.disconnect("a", c1);
        assert!(
            reg.is_connected("a"),
            "an old stream ending does not remove the new one"
        );
        reg.disconnect("a", c2);
        assert!(!reg.is_connected("a"));
    }

    #[test]
    fn liveness_is_heartbeats_only() {
        let reg = Registry::default();
        let t0 = Instant::now();
        let (_c, _rx) = reg.connect("a", Vec::new(), t0);
        let (_c, _rx2) = reg.connect("b", Vec::new(), t0);
        assert!(reg.heartbeat("a", t0 + Duration::from_secs(9)));
        let dead = reg.reap(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(dead, vec![FacilityId::from("b")]);
        assert_eq!(reg.connected(), vec![FacilityId::from("a")]);
        assert!(
            !reg.heartbeat("b", t0),
            "a reaped agent must reconnect first"
        );
    }
}
