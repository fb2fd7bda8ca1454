//! `backup` and `restore`: a consistent copy of the coordinator's database with the model
//! blobs its versions use, taken while the coordinator serves, and put back with the
//! coordinator stopped.
//!
//! SQLite is copied with `VACUUM INTO` (a snapshot of one read transaction); PostgreSQL
//! with `pg_dump --format=custom` and restored with `pg_restore`, which must be on `PATH`.
//! The ledger key is not copied: it is key material, kept apart (deploy/PKI.md). A restored
//! ledger is shorter than the one facilities last saw; their audits name the rollback.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

use crate::store::Store;
use crate::store::blobs::BlobStore;
use crate::store::lease::Lease;

/// The database file inside a backup of a SQLite database.
pub const SQLITE_FILE: &str = "coordinator.db";
/// The dump inside a backup of a PostgreSQL database.
pub const PG_DUMP_FILE: &str = "coordinator.pgdump";
/// The blobs inside a backup.
pub const BLOBS_DIR: &str = "blobs";

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB` (the coordinator's database).
    #[arg(long, env = "HARAMBEE_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The coordinator's blob directory.
    #[arg(
        long,
        env = "HARAMBEE_BLOB_DIR",
        required_unless_present = "blobs_in_database"
    )]
    pub blob_dir: Option<PathBuf>,
    /// The coordinator keeps its model blobs in the database (`serve --blobs-in-database`):
    /// the database's copy carries them, and each is checked there.
    #[arg(long, env = "HARAMBEE_BLOBS_IN_DATABASE", conflicts_with = "blob_dir")]
    pub blobs_in_database: bool,
    /// A new directory for the backup (`backup --out`) or the backup to restore
    /// (`restore --from`).
    #[arg(long, visible_alias = "from")]
    pub out: PathBuf,
}

/// What a backup holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Copied {
    pub database: PathBuf,
    pub blobs: usize,
}

/// Copies the database (online) and every blob a model version in the copy names.
pub async fn backup(args: &BackupArgs) -> anyhow::Result<Copied> {
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!("{} exists and is not empty", args.out.display());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let database = match sqlite_path(&args.database_url) {
        Some(_) => {
            let copy = args.out.join(SQLITE_FILE);
            let live = Store::connect(&args.database_url).await?;
            live.vacuum_into(&copy)
                .await
                .context("copying the database")?;
            live.close().await?;
            copy
        }
        None => {
            let dump = args.out.join(PG_DUMP_FILE);
            run(Command::new("pg_dump")
                .args(["--format=custom", "--no-owner", "--file"])
                .arg(&dump)
                .arg(&args.database_url))?;
            dump
        }
    };
    // The blobs of the versions in the copy (for PostgreSQL, of those live after the dump:
    // a superset).
    let source = match sqlite_path(&args.database_url) {
        Some(_) => Store::connect(&format!("sqlite://{}", database.display())).await?,
        None => Store::connect(&args.database_url).await?,
    };
    let digests = source.model_digests().await?;
    let blobs = match &args.blob_dir {
        Some(dir) => copy_blobs(dir, &args.out.join(BLOBS_DIR), &digests).await,
        // In the copy already (for PostgreSQL, checked in the live database after the dump).
        None => check_blobs(&source, &digests).await,
    };
    source.close().await?;
    Ok(Copied {
        database,
        blobs: blobs?,
    })
}

/// Puts a backup back: refuses while a coordinator holds the database's lease.
pub async fn restore(args: &BackupArgs) -> anyhow::Result<Copied> {
    let _lease = Lease::take(&args.database_url).await?;
    let from = &args.out;
    let database = match sqlite_path(&args.database_url) {
        Some(path) => {
            let copy = from.join(SQLITE_FILE);
            if !copy.is_file() {
                bail!("{} holds no {SQLITE_FILE}", from.display());
            }
            let tmp = path.with_extension("restoring");
            std::fs::copy(&copy, &tmp)
                .with_context(|| format!("copying {} to {}", copy.display(), tmp.display()))?;
            // The old journal belongs to the old file.
            for stale in ["-journal", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{stale}", path.display()));
            }
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("replacing {}", path.display()))?;
            path
        }
        None => {
            let dump = from.join(PG_DUMP_FILE);
            if !dump.is_file() {
                bail!("{} holds no {PG_DUMP_FILE}", from.display());
            }
            run(Command::new("pg_restore")
                .args([
                    "--clean",
                    "--if-exists",
                    "--no-owner",
                    "--single-transaction",
                ])
                .arg("--dbname")
                .arg(&args.database_url)
                .arg(&dump))?;
            dump
        }
    };
    let store = Store::connect(&args.database_url).await?;
    let digests = store.model_digests().await?;
    let blobs = match &args.blob_dir {
        Some(dir) => copy_blobs(&from.join(BLOBS_DIR), dir, &digests).await,
        None => check_blobs(&store, &digests).await,
    };
    store.close().await?;
    Ok(Copied {
        database,
        blobs: blobs?,
    })
}

/// Checks that the database holds every named blob, intact.
async fn check_blobs(store: &Store, digests: &HashSet<String>) -> anyhow::Result<usize> {
    let blobs = BlobStore::in_database(store);
    for digest in digests {
        blobs
            .get(digest)
            .await
            .with_context(|| format!("model blob {digest} in the database"))?;
    }
    Ok(digests.len())
}

/// Copies the named blobs from one blob directory to another, each checked against its
/// digest on the way.
async fn copy_blobs(from: &Path, to: &Path, digests: &HashSet<String>) -> anyhow::Result<usize> {
    let from = BlobStore::open(from).await?;
    let to = BlobStore::open(to).await?;
    for digest in digests {
        let bytes = from
            .get(digest)
            .await
            .with_context(|| format!("model blob {digest}"))?;
        to.put(&bytes).await?;
    }
    Ok(digests.len())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let status = command
        .status()
        .with_context(|| format!("running {program} (is it installed and on PATH?)"))?;
    if !status.success() {
        bail!("{program} failed: {status}");
    }
    Ok(())
}

/// The file of a `sqlite://` URL.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://")?;
    Some(PathBuf::from(rest.split('?').next().unwrap_or(rest)))
}
