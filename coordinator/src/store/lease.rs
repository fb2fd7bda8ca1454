//! One writer per database: the lease a coordinator holds while it serves.
//!
//! PostgreSQL: a session advisory lock on a connection of its own, which the server
//! releases the moment that connection ends (the process died, the network broke), so a
//! standby takes over within its polling interval. SQLite: an `flock` on `<database>.lease`
//! beside the file, which the kernel releases when the process dies. An in-memory SQLite
//! database belongs to its process and needs none.
//!
//! A holder checks its lease every [`CHECK`]: a PostgreSQL session can end while the
//! process lives on (a restarted server, a cut network), and a coordinator that no longer
//! holds the lease must stop, since a standby may already be running rounds.

use std::path::PathBuf;
use std::time::Duration;

use harambee_link::files::{DirLock, lock_file};
use sea_orm::sqlx::{self, Connection, PgConnection};

/// The advisory lock's key: "harambee" in ASCII.
const KEY: i64 = 0x6861_7261_6d62_6565;

/// How often a holder checks that its lease still stands, and a standby tries to take it.
pub const CHECK: Duration = Duration::from_secs(1);

/// Why the lease could not be taken or was lost.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another coordinator serves from this database.
    #[error(
        "another coordinator holds the database lease ({0}); stop it first, or start this one with --standby to take over when it stops"
    )]
    Held(String),
    #[error("the database lease: {0}")]
    Io(#[from] std::io::Error),
    #[error("the database lease: {0}")]
    Db(#[from] sqlx::Error),
    #[error("lost the database lease ({0}): another coordinator may be serving now")]
    Lost(String),
}

/// A held lease; dropping it releases it.
pub enum Lease {
    Postgres(PgConnection),
    Sqlite(DirLock),
    Memory,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lease::Postgres(_) => "Lease::Postgres",
            Lease::Sqlite(_) => "Lease::Sqlite",
            Lease::Memory => "Lease::Memory",
        })
    }
}

impl Lease {
    /// Takes the lease on the database at `url` without waiting.
    pub async fn take(url: &str) -> Result<Lease, LeaseError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut conn = PgConnection::connect(url).await?;
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(KEY)
                .fetch_one(&mut conn)
                .await?;
            if !taken {
                let holder: Option<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND ((classid::bigint << 32) | objid::bigint) = $1 LIMIT 1",
                )
                .bind(KEY)
                .fetch_optional(&mut conn)
                .await?
                .flatten();
                let _ = conn.close().await;
                return Err(LeaseError::Held(match holder {
                    Some(pid) => format!("PostgreSQL session {pid}"),
                    None => "a PostgreSQL session".to_owned(),
                }));
            }
            return Ok(Lease::Postgres(conn));
        }
        match sqlite_file(url) {
            Some(path) => {
                let lease = path.with_extension(match path.extension() {
                    Some(ext) => format!("{}.lease", ext.to_string_lossy()),
                    None => "lease".to_owned(),
                });
                match lock_file(&lease, &path.display().to_string()) {
                    Ok(lock) => Ok(Lease::Sqlite(lock)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        Err(LeaseError::Held(e.to_string()))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            None => Ok(Lease::Memory),
        }
    }

    /// Takes the lease, waiting while another coordinator holds it (a standby). `waiting`
    /// is called once, when the wait begins, with the reason.
    pub async fn wait(url: &str, waiting: impl FnOnce(&LeaseError)) -> Result<Lease, LeaseError> {
        let mut waiting = Some(waiting);
        loop {
            match Lease::take(url).await {
                Err(e @ LeaseError::Held(_)) => {
                    if let Some(report) = waiting.take() {
                        report(&e);
                    }
                    tokio::time::sleep(CHECK).await;
                }
                other => return other,
            }
        }
    }

    /// Resolves when the lease is lost (never for a file lock, which only dies with the
    /// process).
    pub async fn lost(&mut self) -> LeaseError {
        match self {
            Lease::Postgres(conn) => loop {
                tokio::time::sleep(CHECK).await;
                let held: Result<bool, sqlx::Error> = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                     AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = $1)",
                )
                .bind(KEY)
                .fetch_one(&mut *conn)
                .await;
                match held {
                    Ok(true) => {}
                    Ok(false) => return LeaseError::Lost("the advisory lock is gone".into()),
                    Err(e) => return LeaseError::Lost(format!("its connection failed: {e}")),
                }
            },
            Lease::Sqlite(_) | Lease::Memory => std::future::pending().await,
        }
    }
}

/// The file of a `sqlite://` URL; `None` for an in-memory database.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory"))
        .then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_coordinator_on_one_sqlite_file_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let first = Lease::take(&url).await.unwrap();
        let err = Lease::take(&url).await.unwrap_err();
        assert!(matches!(err, LeaseError::Held(_)), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        assert!(message.contains("--standby"), "{message}");
        assert!(dir.path().join("c.db.lease").exists());
        drop(first);
        Lease::take(&url).await.unwrap();
        assert!(matches!(
            Lease::take("sqlite::memory:").await,
            Ok(Lease::Memory)
        ));
    }

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_file("sqlite://data/c.db?mode=rwc"),
            Some(PathBuf::from("data/c.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://:memory:"), None);
    }
}
