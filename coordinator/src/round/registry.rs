//! Which agents are connected now: their task streams and their liveness.
//!
//! Liveness comes from heartbeats alone, kept apart from task progress: a facility that
//! trains for an hour keeps heartbeating and stays alive. A closed task stream is not a
//! death either (hospital links drop); the agent reconnects and gets its pending task again.
//!
//! One process per identity: each agent process names itself with a random instance id. A
//! stream from another instance while the holder still heartbeats is refused (a cloned
//! machine, a service plus a manual run), and the holder is told at its next heartbeat,
//! instead of the two replacing each other's stream forever. The same instance reconnecting
//! replaces its old stream, which may be half-open.

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
    /// The agent process's instance id ("" from clients that send none: never in conflict).
    instance: String,
    /// Said to the holder at its next heartbeat: another process tried its identity.
    notice: Option<String>,
    tasks: mpsc::Sender<TaskItem>,
    last_heartbeat: Instant,
    /// The certificate chain the facility connected with (DER, leaf first), forwarded to
    /// its peers in secure aggregation so they can check its signing key against the CA.
    chain: Vec<Vec<u8>>,
    /// The build identifier the agent gave when it opened the stream.
    version: String,
}

/// A second process with a facility's identity, refused while the holder is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The instance id of the process that holds the stream.
    pub holder: String,
    /// Since its last heartbeat.
    pub quiet: Duration,
}

/// Why a heartbeat was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatRefusal {
    /// No open task stream: open one first.
    NoStream,
    /// Another process of this facility holds the stream.
    OtherInstance(String),
}

impl Registry {
    /// Registers a new task stream for `facility` from agent process `instance`, replacing
    /// (and so closing) any previous one, unless another instance holds it and has
    /// heartbeated within `liveness`.
    pub fn connect(
        &self,
        facility: &str,
        instance: &str,
        chain: Vec<Vec<u8>>,
        now: Instant,
        liveness: Duration,
    ) -> Result<(u64, mpsc::Receiver<TaskItem>), Conflict> {
        let mut agents = self.agents.lock().unwrap();
        if let Some(e) = agents.get_mut(facility) {
            let quiet = now.saturating_duration_since(e.last_heartbeat);
            if !e.instance.is_empty()
                && !instance.is_empty()
                && e.instance != instance
                && !e.tasks.is_closed()
                && quiet <= liveness
            {
                e.notice = Some(format!(
                    "another agent process with this facility's identity (instance {instance}) tried to connect and was refused while this one (instance {}) is connected: stop one of them (a cloned machine, or a service and a manual run?)",
                    e.instance
                ));
                return Err(Conflict {
                    holder: e.instance.clone(),
                    quiet,
                });
            }
        }
        let (tx, rx) = mpsc::channel(TASK_BUFFER);
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            conn_id,
            instance: instance.to_owned(),
            notice: None,
            tasks: tx,
            last_heartbeat: now,
            chain,
            version: String::new(),
        };
        agents.insert(FacilityId::from(facility), entry);
        Ok((conn_id, rx))
    }

    /// Records a heartbeat of agent process `instance`; returns a notice for it, if any.
    pub fn heartbeat(
        &self,
        facility: &str,
        instance: &str,
        now: Instant,
    ) -> Result<Option<String>, HeartbeatRefusal> {
        match self.agents.lock().unwrap().get_mut(facility) {
            Some(e) if !e.instance.is_empty() && !instance.is_empty() && e.instance != instance => {
                Err(HeartbeatRefusal::OtherInstance(e.instance.clone()))
            }
            Some(e) => {
                e.last_heartbeat = now;
                Ok(e.notice.take())
            }
            None => Err(HeartbeatRefusal::NoStream),
        }
    }

    /// Counts progress of a transfer from the facility (an upload's chunk) as liveness.
    pub fn progress(&self, facility: &str, now: Instant) {
        if let Some(e) = self.agents.lock().unwrap().get_mut(facility) {
            e.last_heartbeat = e.last_heartbeat.max(now);
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

    /// How many facilities are connected and alive (what [`Registry::connected`] lists).
    pub fn n_connected(&self) -> usize {
        self.agents
            .lock()
            .unwrap()
            .values()
            .filter(|e| !e.tasks.is_closed())
            .count()
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

    /// Records the build identifier the agent of stream `conn_id` gave (at most 64
    /// characters kept).
    pub fn set_version(&self, facility: &str, conn_id: u64, version: &str) {
        if let Some(e) = self.agents.lock().unwrap().get_mut(facility)
            && e.conn_id == conn_id
        {
            e.version = version.chars().take(64).collect();
        }
    }

    /// The build identifier a connected facility's agent gave.
    pub fn version(&self, facility: &str) -> Option<String> {
        self.agents
            .lock()
            .unwrap()
            .get(facility)
            .map(|e| e.version.clone())
    }

    /// When the facility's agent last showed it is alive (a heartbeat, or progress of a
    /// transfer), while it is connected.
    pub fn last_heartbeat(&self, facility: &str) -> Option<Instant> {
        self.agents
            .lock()
            .unwrap()
            .get(facility)
            .map(|e| e.last_heartbeat)
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
        let live = Duration::from_secs(10);
        let (c1, mut rx1) = reg.connect("a", "i1", Vec::new(), t0, live).unwrap();
        let (c2, mut rx2) = reg.connect("a", "i1", Vec::new(), t0, live).unwrap();
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
        let live = Duration::from_secs(10);
        let (_c, _rx) = reg.connect("a", "", Vec::new(), t0, live).unwrap();
        let (_c, _rx2) = reg.connect("b", "", Vec::new(), t0, live).unwrap();
        assert_eq!(
            reg.heartbeat("a", "", t0 + Duration::from_secs(9)),
            Ok(None)
        );
        let dead = reg.reap(t0 + Duration::from_secs(11), live);
        assert_eq!(dead, vec![FacilityId::from("b")]);
        assert_eq!(reg.connected(), vec![FacilityId::from("a")]);
        assert_eq!(
            reg.heartbeat("b", "", t0),
            Err(HeartbeatRefusal::NoStream),
            "a reaped agent must reconnect first"
        );
    }

    #[test]
    fn a_second_process_is_refused_while_the_first_heartbeats_and_takes_over_after() {
        let reg = Registry::default();
        let t0 = Instant::now();
        let live = Duration::from_secs(10);
        let (_c, mut first) = reg.connect("a", "one", Vec::new(), t0, live).unwrap();
        let t1 = t0 + Duration::from_secs(4);
        assert_eq!(
            reg.connect("a", "two", Vec::new(), t1, live).unwrap_err(),
            Conflict {
                holder: "one".into(),
                quiet: Duration::from_secs(4)
            }
        );
        // The holder keeps its stream, hears about the other once, and the other's
        // heartbeats do not keep anything alive.
        assert!(reg.send("a", pb::Task::default()));
        assert!(first.try_recv().is_ok());
        let notice = reg.heartbeat("a", "one", t1).unwrap().expect("a notice");
        assert!(notice.contains("instance two"), "{notice}");
        assert_eq!(reg.heartbeat("a", "one", t1), Ok(None));
        assert_eq!(
            reg.heartbeat("a", "two", t1),
            Err(HeartbeatRefusal::OtherInstance("one".into()))
        );
        // Once the holder falls silent past the liveness timeout, the other takes over.
        let (_c, _second) = reg
            .connect(
                "a",
                "two",
                Vec::new(),
                t1 + live + Duration::from_secs(1),
                live,
            )
            .unwrap();
        assert!(first.try_recv().is_err());
        assert_eq!(reg.heartbeat("a", "two", t1 + live), Ok(None));
        // So does the same process reconnecting, whatever its stream's state.
        assert!(reg.connect("a", "two", Vec::new(), t1 + live, live).is_ok());
    }
}
