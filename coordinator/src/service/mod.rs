//! The gRPC services. Each RPC first authorizes its caller by the role in its certificate
//! (`agent` for [`AgentService`](agent), `operator` for [`AdminService`](admin), auditors
//! too for its reads), then does its work through [`crate::state::Coordinator`].
//! The access layer ([`crate::server::access`]) has already applied the same policy to every call;
//! `EnrolmentService` and `IdentityService` live in [`crate::service::enrol`].

pub mod admin;
pub mod agent;
pub mod audit;
pub mod caller;
pub mod enrol;
pub mod error;

use std::pin::Pin;

use futures::Stream;
use harambee_proto::pb;
use tonic::Status;

use crate::service::error::ServiceError;
use crate::state::Coordinator;

/// A boxed server stream, as the generated traits want it.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Streams `[offset..]` of a blob as chunks of at most [`harambee_proto::CHUNK_BYTES`].
pub(crate) fn blob_chunks(
    coord: Coordinator,
    digest: String,
    offset: u64,
    total: u64,
) -> BoxStream<pb::Chunk> {
    let stream = futures::stream::unfold(Some(offset), move |state| {
        let coord = coord.clone();
        let digest = digest.clone();
        async move {
            let offset = state?;
            if offset >= total {
                return None;
            }
            let len = (total - offset).min(harambee_proto::CHUNK_BYTES as u64) as usize;
            match coord.blobs.read_range(&digest, offset, len).await {
                Ok(data) => {
                    let next = offset + data.len() as u64;
                    Some((
                        Ok(pb::Chunk {
                            offset,
                            total_bytes: total,
                            data,
                        }),
                        Some(next),
                    ))
                }
                Err(e) => Some((Err(ServiceError::from(e).into()), None)),
            }
        }
    });
    Box::pin(stream)
}
