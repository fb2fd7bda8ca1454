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
/// resuming a partial download left by an interrupted attempt. The cache then keeps the
/// `keep` models used most recently (this one included).
pub async fn download_model(
    client: &mut AgentServiceClient<Channel>,
    model: &pb::ModelRef,
    cache_dir: &Path,
    keep: usize,
) -> anyhow::Result<Vec<f32>> {
    let params = fetch(client, model, cache_dir).await?;
    let dir = cache_dir.to_owned();
    let used = format!("{}.f32", model.digest);
    let pruned = tokio::task::spawn_blocking(move || prune_cache(&dir, keep, &used)).await?;
    if let Err(e) = pruned {
        tracing::warn!("could not prune the model cache: {e:#}");
    }
    Ok(params)
}

/// Removes all but the `keep` most recently used models (`used` counts as the most
/// recent), and partial downloads of other models left for more than a day.
pub fn prune_cache(dir: &Path, keep: usize, used: &str) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    let used_path = dir.join(used);
    if let Ok(file) = std::fs::File::open(&used_path) {
        file.set_modified(now)?;
    }
    let mut models = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(now);
        match path.extension().and_then(|e| e.to_str()) {
            Some("f32") => models.push((modified, path)),
            Some("part")
                if path.file_stem() != used_path.file_stem()
                    && now.duration_since(modified).unwrap_or_default()
                        > std::time::Duration::from_secs(24 * 3600) =>
            {
                std::fs::remove_file(&path)?;
            }
            _ => {}
        }
    }
    models.sort_by_key(|m| std::cmp::Reverse(m.0));
    for (_, path) in models.into_iter().skip(keep.max(1)) {
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

async fn fetch(
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

/// An upload's bytes, shared with the retry logic that may send them again.
struct SharedPayload(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedPayload {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
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
    // Chunks are views of the payload, not copies.
    let payload = bytes::Bytes::from_owner(SharedPayload(payload));
    let n_chunks = payload.len().div_ceil(harambee_proto::CHUNK_BYTES);
    let chunks = (0..n_chunks).map(move |i| {
        let start = i * harambee_proto::CHUNK_BYTES;
        let end = (start + harambee_proto::CHUNK_BYTES).min(payload.len());
        pb::UploadUpdateRequest {
            part: Some(Part::Data(payload.slice(start..end))),
        }
    });
    let stream = futures::stream::iter(std::iter::once(first).chain(chunks));
    client.upload_update(stream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_cache_keeps_the_models_used_last_and_fresh_partial_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let write = |name: &str, age_s: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, name).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(now - Duration::from_secs(age_s)).unwrap();
        };
        write("a.f32", 50);
        write("b.f32", 40);
        write("c.f32", 30);
        write("d.f32", 10);
        write("old.part", 2 * 24 * 3600);
        write("new.part", 60);
        // `a` is used now: it and the newest other (`d`) stay.
        prune_cache(dir.path(), 2, "a.f32").unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["a.f32", "d.f32", "new.part"]);
    }
}
