//! Moving models and updates: chunked, checksummed, and for downloads resumable and cached
//! by content digest in the agent's state directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use harambee_proto::pb::{
    self, agent_service_client::AgentServiceClient, upload_update_request::Part,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

/// Fetches a model blob: from the cache if present and intact, else from the coordinator,
/// resuming a partial download left by an interrupted attempt.
pub async fn download_model(
    client: &mut AgentServiceClient<Channel>,
    model: &pb::ModelRef,
    cache_dir: &Path,
) -> anyhow::Result<Vec<f32>> {
    if model.digest.len() != 64 || !model.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("coordinator sent a malformed model digest");
    }
    tokio::fs::create_dir_all(cache_dir)
        .await
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let done = cache_dir.join(format!("{}.f32", model.digest));
    if let Ok(bytes) = tokio::fs::read(&done).await
        && hex::encode(Sha256::digest(&bytes)) == model.digest
    {
        return Ok(harambee_core::params::from_le_bytes(&bytes)?);
    }
    let partial: PathBuf = cache_dir.join(format!("{}.part", model.digest));
    let mut have = tokio::fs::metadata(&partial)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if have > model.size_bytes {
        tokio::fs::remove_file(&partial).await.ok();
        have = 0;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .await?;
    let request = pb::DownloadModelRequest {
        digest: model.digest.clone(),
        offset: have,
    };
    let mut stream = client.download_model(request).await?.into_inner();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if chunk.offset != have {
            bail!(
                "model chunk at offset {} where {have} was expected",
                chunk.offset
            );
        }
        file.write_all(&chunk.data).await?;
        have += chunk.data.len() as u64;
    }
    file.flush().await?;
    file.sync_all().await?;
    drop(file);
    let bytes = tokio::fs::read(&partial).await?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != model.digest {
        tokio::fs::remove_file(&partial).await.ok();
        bail!(
            "downloaded model's sha256 {digest} differs from the announced {}",
            model.digest
        );
    }
    tokio::fs::rename(&partial, &done).await?;
    Ok(harambee_core::params::from_le_bytes(&bytes)?)
}

/// Streams one update: header, then chunks of at most [`harambee_proto::CHUNK_BYTES`].
pub async fn upload_update(
    client: &mut AgentServiceClient<Channel>,
    header: pb::UpdateHeader,
    payload: std::sync::Arc<Vec<u8>>,
) -> Result<(), tonic::Status> {
    let first = pb::UploadUpdateRequest {
        part: Some(Part::Header(header)),
    };
    let n_chunks = payload.len().div_ceil(harambee_proto::CHUNK_BYTES);
    let chunks = (0..n_chunks).map(move |i| {
        let start = i * harambee_proto::CHUNK_BYTES;
        let end = (start + harambee_proto::CHUNK_BYTES).min(payload.len());
        pb::UploadUpdateRequest {
            part: Some(Part::Data(payload[start..end].to_vec())),
        }
    });
    let stream = futures::stream::iter(std::iter::once(first).chain(chunks));
    client.upload_update(stream).await?;
    Ok(())
}
