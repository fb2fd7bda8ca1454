//! Content-addressed blob store for model parameters, on a local directory or in the
//! database.
//!
//! A blob is named by the lowercase hex SHA-256 of its bytes and stored at
//! `<dir>/<first two hex digits>/<digest>`. Writes go to `<dir>/tmp/`, are
//! fsynced and renamed into place, so a blob is either absent or complete
//! under its digest; `get` re-hashes and reports a corrupt file. Digests are
//! validated before any path is built, so no caller string reaches the file
//! system. Hashing and file I/O run on tokio's blocking pool.
//!
//! Garbage: [`BlobStore::sweep`] removes blobs that nothing keeps (the caller names what
//! does: every model version) once they are older than a retention, e.g. the candidates of
//! failed rounds. A blob's age is its file's modification time, renewed when it is stored
//! again.
//!
//! In the database ([`BlobStore::in_database`], table `blobs`, migration m0008) the same
//! methods keep each blob in one row: for an active/standby pair of coordinators on one
//! PostgreSQL database, which then share no file system. An S3-compatible backend could sit
//! behind the same methods.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};
use sha2::{Digest, Sha256};

/// Temporary files older than this are leftovers of a crash and removed by
/// `open`.
const STALE_TMP_AGE: Duration = Duration::from_secs(60 * 60);

/// How much of a refused digest an error repeats (it comes from the network).
const MAX_SHOWN_INVALID: usize = 80;

/// Distinguishes concurrent temporary files within this process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("blob {0} is corrupt (content does not match its digest)")]
    Corrupt(String),
    /// Holds the refused text, shortened to `MAX_SHOWN_INVALID` characters.
    #[error("invalid blob digest {0:?} (expected 64 lowercase hex characters)")]
    InvalidDigest(String),
    #[error("range starting at {offset} is beyond the end of blob {digest} ({size} bytes)")]
    OutOfRange {
        digest: String,
        offset: u64,
        size: u64,
    },
    #[error("i/o error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("database error on the blob store")]
    Db(#[from] DbErr),
}

/// Content-addressed blobs in a directory or in the database; cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Dir(PathBuf),
    Db(DatabaseConnection),
}

/// Names the place only: the pool's own `Debug` prints connect options, password included.
impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Dir(dir) => f.debug_tuple("BlobStore").field(dir).finish(),
            Backend::Db(_) => f.write_str("BlobStore(database)"),
        }
    }
}

impl BlobStore {
    /// Opens (creating if needed) a blob directory and removes stale
    /// temporary files.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<BlobStore, BlobError> {
        let dir = dir.into();
        let tmp = dir.join("tmp");
        blocking(move || {
            fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
            remove_stale_tmp(&tmp);
            Ok(BlobStore {
                backend: Backend::Dir(dir),
            })
        })
        .await
    }

    /// Blobs in the database of `store` (its `blobs` table).
    pub fn in_database(store: &super::Store) -> BlobStore {
        BlobStore {
            backend: Backend::Db(store.connection().clone()),
        }
    }

    /// Where the blobs live, for messages: a directory, or `database`.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Dir(dir) => dir.display().to_string(),
            Backend::Db(_) => "database".to_owned(),
        }
    }

    /// Stores bytes and returns their digest. Idempotent: an intact blob
    /// already present is left alone, a corrupt one is replaced.
    pub async fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let dir = match &self.backend {
            Backend::Db(db) => return db_put(db, bytes).await,
            Backend::Dir(dir) => dir.clone(),
        };
        let bytes = bytes.to_vec();
        blocking(move || put_blocking(&dir, &bytes)).await
    }

    /// Reads a whole blob and checks it against its digest.
    pub async fn get(&self, digest: &str) -> Result<Vec<u8>, BlobError> {
        let path = match &self.backend {
            Backend::Db(db) => return db_get(db, checked(digest)?).await,
            Backend::Dir(dir) => blob_path(dir, digest)?,
        };
        let digest = digest.to_owned();
        blocking(move || {
            let bytes = fs::read(&path).map_err(not_found_or_io(&digest, &path))?;
            if sha256_hex(&bytes) != digest {
                return Err(BlobError::Corrupt(digest));
            }
            Ok(bytes)
        })
        .await
    }

    /// Reads up to `len` bytes from `offset`, fewer at the end of the blob and
    /// none when `offset` equals its size. Not verified: a chunked reader
    /// checks the digest of the whole once assembled.
    pub async fn read_range(
        &self,
        digest: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, BlobError> {
        let path = match &self.backend {
            Backend::Db(db) => return db_read_range(db, checked(digest)?, offset, len).await,
            Backend::Dir(dir) => blob_path(dir, digest)?,
        };
        let digest = digest.to_owned();
        blocking(move || {
            let mut file = File::open(&path).map_err(not_found_or_io(&digest, &path))?;
            let size = file.metadata().map_err(io_err(&path))?.len();
            if offset > size {
                return Err(BlobError::OutOfRange {
                    digest,
                    offset,
                    size,
                });
            }
            // Bounded by the file, not by the caller's `len`.
            let available = usize::try_from(size - offset).unwrap_or(usize::MAX);
            let mut buf = vec![0; len.min(available)];
            file.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
            file.read_exact(&mut buf).map_err(io_err(&path))?;
            Ok(buf)
        })
        .await
    }

    /// The size of a blob in bytes.
    pub async fn size(&self, digest: &str) -> Result<u64, BlobError> {
        let path = match &self.backend {
            Backend::Db(db) => return db_size(db, checked(digest)?).await,
            Backend::Dir(dir) => blob_path(dir, digest)?,
        };
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) => Err(not_found_or_io(digest, &path)(e)),
        }
    }

    /// Whether a blob is present (without verifying it); false for an
    /// invalid digest.
    pub async fn contains(&self, digest: &str) -> bool {
        match &self.backend {
            Backend::Db(db) => match checked(digest) {
                Ok(digest) => db_size(db, digest).await.is_ok(),
                Err(_) => false,
            },
            Backend::Dir(dir) => match blob_path(dir, digest) {
                Ok(path) => tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file()),
                Err(_) => false,
            },
        }
    }

    /// Removes every blob whose digest is not in `keep` and that was stored more than
    /// `older_than` ago. Returns how many blobs and bytes went.
    pub async fn sweep(
        &self,
        keep: HashSet<String>,
        older_than: Duration,
    ) -> Result<Swept, BlobError> {
        let dir = match &self.backend {
            Backend::Db(db) => return db_sweep(db, &keep, older_than).await,
            Backend::Dir(dir) => dir.clone(),
        };
        blocking(move || {
            let cutoff = SystemTime::now()
                .checked_sub(older_than)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut swept = Swept::default();
            for shard in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
                let name = shard.file_name();
                let name = name.to_string_lossy();
                if name.len() != 2 || !shard.path().is_dir() {
                    continue;
                }
                let shard = shard.path();
                for blob in fs::read_dir(&shard).map_err(io_err(&shard))?.flatten() {
                    let digest = blob.file_name().to_string_lossy().into_owned();
                    if !is_valid_digest(&digest) || keep.contains(&digest) {
                        continue;
                    }
                    let Ok(meta) = blob.metadata() else { continue };
                    if meta.modified().is_ok_and(|m| m < cutoff) {
                        let path = blob.path();
                        fs::remove_file(&path).map_err(io_err(&path))?;
                        swept.blobs += 1;
                        swept.bytes += meta.len();
                    }
                }
            }
            Ok(swept)
        })
        .await
    }
}

/// `digest` if it is 64 lowercase hex characters; the error repeats a bounded part of it.
fn checked(digest: &str) -> Result<&str, BlobError> {
    if is_valid_digest(digest) {
        Ok(digest)
    } else {
        Err(BlobError::InvalidDigest(
            digest.chars().take(MAX_SHOWN_INVALID).collect(),
        ))
    }
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, BlobError> {
    let digest = checked(digest)?;
    Ok(dir.join(&digest[..2]).join(digest))
}

fn put_blocking(dir: &Path, bytes: &[u8]) -> Result<String, BlobError> {
    let digest = sha256_hex(bytes);
    let path = blob_path(dir, &digest)?;
    if is_intact(&path, &digest) {
        // Stored again: its age starts over (see `sweep`).
        let _ = File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        return Ok(digest);
    }
    let parent = path.parent().expect("blob paths have a parent");
    fs::create_dir_all(parent).map_err(io_err(parent))?;

    let tmp = dir.join("tmp").join(format!(
        "{digest}.{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write_synced(&tmp, bytes).and_then(|()| {
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(parent)
    });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| digest)
}

/// A statement with `$1`-style placeholders, which SQLite reads as `?1`.
fn statement(db: &DatabaseConnection, sql: &str, values: Vec<Value>) -> Statement {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => sql.replace('$', "?"),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn db_put(db: &DatabaseConnection, bytes: &[u8]) -> Result<String, BlobError> {
    let digest = sha256_hex(bytes);
    // The same digest again rewrites the same bytes (so a corrupt row is repaired) and
    // starts the blob's age over.
    let sql = "INSERT INTO blobs (digest, bytes, size, stored_ms) VALUES ($1, $2, $3, $4) \
               ON CONFLICT (digest) DO UPDATE SET bytes = excluded.bytes, size = excluded.size, \
               stored_ms = excluded.stored_ms";
    let values = vec![
        digest.clone().into(),
        bytes.to_vec().into(),
        (bytes.len() as i64).into(),
        unix_ms(SystemTime::now()).into(),
    ];
    db.execute_raw(statement(db, sql, values)).await?;
    Ok(digest)
}

async fn db_get(db: &DatabaseConnection, digest: &str) -> Result<Vec<u8>, BlobError> {
    let sql = "SELECT bytes FROM blobs WHERE digest = $1";
    let row = db
        .query_one_raw(statement(db, sql, vec![digest.into()]))
        .await?
        .ok_or_else(|| BlobError::NotFound(digest.to_owned()))?;
    let bytes: Vec<u8> = row.try_get("", "bytes")?;
    if sha256_hex(&bytes) != digest {
        return Err(BlobError::Corrupt(digest.to_owned()));
    }
    Ok(bytes)
}

async fn db_size(db: &DatabaseConnection, digest: &str) -> Result<u64, BlobError> {
    let sql = "SELECT size FROM blobs WHERE digest = $1";
    let row = db
        .query_one_raw(statement(db, sql, vec![digest.into()]))
        .await?
        .ok_or_else(|| BlobError::NotFound(digest.to_owned()))?;
    let size: i64 = row.try_get("", "size")?;
    Ok(u64::try_from(size).unwrap_or(0))
}

async fn db_read_range(
    db: &DatabaseConnection,
    digest: &str,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, BlobError> {
    // One query for the size and the range (a download reads a blob chunk by chunk).
    // `substr` counts from 1 in both databases, on bytea and on BLOB alike, and gives what
    // there is past the start; positions are clamped to the 32-bit integers both accept.
    let int = |n: u64| {
        i64::try_from(n)
            .unwrap_or(i64::MAX)
            .min(i64::from(i32::MAX))
    };
    let sql = "SELECT size, substr(bytes, CAST($2 AS INTEGER), CAST($3 AS INTEGER)) AS part \
               FROM blobs WHERE digest = $1";
    let values = vec![
        digest.into(),
        int(offset + 1).into(),
        int(len as u64).into(),
    ];
    let row = db
        .query_one_raw(statement(db, sql, values))
        .await?
        .ok_or_else(|| BlobError::NotFound(digest.to_owned()))?;
    let size: i64 = row.try_get("", "size")?;
    let size = u64::try_from(size).unwrap_or(0);
    if offset > size {
        return Err(BlobError::OutOfRange {
            digest: digest.to_owned(),
            offset,
            size,
        });
    }
    Ok(row.try_get("", "part")?)
}

async fn db_sweep(
    db: &DatabaseConnection,
    keep: &HashSet<String>,
    older_than: Duration,
) -> Result<Swept, BlobError> {
    let cutoff = SystemTime::now().checked_sub(older_than).map_or(0, unix_ms);
    let sql = "SELECT digest, size FROM blobs WHERE stored_ms < $1";
    let rows = db
        .query_all_raw(statement(db, sql, vec![cutoff.into()]))
        .await?;
    let mut swept = Swept::default();
    for row in rows {
        let digest: String = row.try_get("", "digest")?;
        if keep.contains(&digest) {
            continue;
        }
        let size: i64 = row.try_get("", "size")?;
        // Stored again since the scan: its age started over, it stays.
        let sql = "DELETE FROM blobs WHERE digest = $1 AND stored_ms < $2";
        let deleted = db
            .execute_raw(statement(db, sql, vec![digest.into(), cutoff.into()]))
            .await?;
        if deleted.rows_affected() > 0 {
            swept.blobs += 1;
            swept.bytes += u64::try_from(size).unwrap_or(0);
        }
    }
    Ok(swept)
}

/// What [`BlobStore::sweep`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub blobs: usize,
    pub bytes: u64,
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `digest` is 64 lowercase hex characters.
pub fn is_valid_digest(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join_err) => match join_err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only on runtime shutdown.
            Err(join_err) => Err(BlobError::Io {
                path: PathBuf::new(),
                source: io::Error::other(join_err),
            }),
        },
    }
}

fn is_intact(path: &Path, digest: &str) -> bool {
    fs::read(path).is_ok_and(|existing| sha256_hex(&existing) == digest)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Makes a rename durable (directories cannot be opened for syncing on
/// Windows, where the rename is already durable enough for our purposes).
fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn remove_stale_tmp(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| now.duration_since(modified).unwrap_or_default() > STALE_TMP_AGE);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_owned(),
        source,
    }
}

fn not_found_or_io<'a>(
    digest: &'a str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> BlobError + 'a {
    move |source| match source.kind() {
        io::ErrorKind::NotFound => BlobError::NotFound(digest.to_owned()),
        _ => BlobError::Io {
            path: path.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sweep_removes_only_old_blobs_nothing_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).await.unwrap();
        let kept = store.put(b"model version").await.unwrap();
        let orphan = store.put(b"failed candidate").await.unwrap();
        let young = store.put(b"running candidate").await.unwrap();
        let day_ago = SystemTime::now() - Duration::from_secs(24 * 3600);
        for digest in [&kept, &orphan] {
            let path = blob_path(dir.path(), digest).unwrap();
            File::open(path).unwrap().set_modified(day_ago).unwrap();
        }
        let keep = HashSet::from([kept.clone()]);
        let swept = store
            .sweep(keep.clone(), Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(
            swept,
            Swept {
                blobs: 1,
                bytes: b"failed candidate".len() as u64
            }
        );
        assert!(store.contains(&kept).await);
        assert!(!store.contains(&orphan).await);
        assert!(store.contains(&young).await);
        // Stored again, an old blob is young again.
        let path = blob_path(dir.path(), &young).unwrap();
        File::open(&path).unwrap().set_modified(day_ago).unwrap();
        store.put(b"running candidate").await.unwrap();
        let swept = store.sweep(keep, Duration::from_secs(3600)).await.unwrap();
        assert_eq!(swept, Swept::default());
        assert!(store.contains(&young).await);
    }

    #[test]
    fn blob_store_digest_validation() {
        let good = sha256_hex(b"abc");
        assert!(is_valid_digest(&good));
        assert!(!is_valid_digest(&good.to_uppercase()));
        assert!(!is_valid_digest(&good[..63]));
        assert!(!is_valid_digest("../../../../etc/passwd"));
        assert!(!is_valid_digest(&format!("{}/x", &good[..62])));
    }
}
