//! A hand-driven agent for tests that play the agent's side of the protocol themselves: it
//! holds a facility's real certificate, opens its task stream, heartbeats in the background
//! (open policy), and does nothing else unless the test says so. Uploads carry a receipt
//! signed with the facility's key, as the real agent's do.

use std::sync::Arc;
use std::time::Duration;

use harambee_proto::pb::{self, agent_service_client::AgentServiceClient, task::Kind};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::{Harness, open_heartbeat, receipt_for};

pub struct ScriptedAgent {
    pub name: String,
    pki: std::path::PathBuf,
    pub client: AgentServiceClient<Channel>,
    pub tasks: tonic::Streaming<pb::Task>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl ScriptedAgent {
    /// Connects as facility `name` (its certificate issued if needed).
    pub async fn connect(h: &Harness, name: &str) -> ScriptedAgent {
        let mut client = h.raw_agent(name).await;
        let tasks = client
            .open_task_stream(pb::OpenTaskStreamRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut hb = client.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                let _ = hb.heartbeat(open_heartbeat()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ScriptedAgent {
            name: name.to_owned(),
            pki: h.pki.clone(),
            client,
            tasks,
            heartbeat,
        }
    }

    /// The next task on the stream.
    pub async fn next_task(&mut self) -> Kind {
        self.tasks
            .message()
            .await
            .unwrap()
            .expect("the task stream ended")
            .kind
            .expect("a task with a kind")
    }

    /// The next train task, skipping anything else.
    pub async fn next_train(&mut self) -> pb::TrainTask {
        loop {
            if let Kind::Train(t) = self.next_task().await {
                return t;
            }
        }
    }

    /// The upload header of `bytes` for `round_id` of `federation`, with its receipt.
    pub fn header(
        &self,
        federation: &str,
        round_id: u64,
        n_samples: u64,
        bytes: &[u8],
    ) -> pb::UpdateHeader {
        pb::UpdateHeader {
            round_id,
            n_params: (bytes.len() / 4) as u64,
            n_samples,
            sha256: hex::encode(Sha256::digest(bytes)),
            train_loss: 0.5,
            masked: false,
            receipt: receipt_for(&self.pki, &self.name, federation, round_id, bytes),
        }
    }

    /// Uploads `values` as this facility's plain update to `round_id` of `federation`.
    pub async fn upload(
        &mut self,
        federation: &str,
        round_id: u64,
        n_samples: u64,
        values: &[f32],
    ) -> Result<(), tonic::Status> {
        let bytes = harambee_core::params::to_le_bytes(values);
        let header = self.header(federation, round_id, n_samples, &bytes);
        harambee_agent::transfer::upload_update(&mut self.client, header, Arc::new(bytes)).await
    }

    /// Stops heartbeating and closes the task stream (as dropping it does): the facility
    /// goes away.
    pub fn disconnect(self) {}
}

impl Drop for ScriptedAgent {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}
