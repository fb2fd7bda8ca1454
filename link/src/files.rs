//! Writing key and certificate files safely: private files are created with mode 0600 from
//! the start (never widened, then narrowed), and replacements go through a temporary file and
//! a rename, so a reader sees the old file or the new one, never part of one. Logs of one
//! line per record are appended whole or not at all ([`append_line`],
//! [`repair_torn_tail`]), and a state directory has one owner ([`lock_dir`]).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of private keys and other secrets.
pub const PRIVATE: u32 = 0o600;
/// Mode of certificates and other public files.
pub const PUBLIC: u32 = 0o644;

/// Creates `path`, which must not exist (`AlreadyExists` otherwise), with `mode`, writes
/// `bytes` and syncs them to disk.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes `bytes` with `mode` to a fresh temporary file next to `path`, then renames it over
/// `path`.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    // A leftover from a crashed run would make create_new fail; it holds nothing of value.
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, bytes, mode)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Appends `line` (which ends with a newline) to `path` and syncs it to disk. If the write
/// fails part-way (a full disk), the file is cut back to its length before, so that no torn
/// line stays behind for the next append to continue.
pub fn append_line(path: &Path, line: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let before = file.metadata()?.len();
    file.write_all(line)
        .and_then(|()| file.sync_data())
        .inspect_err(|_| {
            let _ = file.set_len(before);
            let _ = file.sync_data();
        })
}

/// A log whose last line has no newline was cut by a crash or a full disk while that line
/// was written, before it was synced, so whatever it records had not happened yet. Such a
/// line is completed with its newline if `is_whole` accepts it, and removed otherwise.
/// Returns the bytes removed (0 when the log ends whole).
pub fn repair_torn_tail(path: &Path, is_whole: impl Fn(&str) -> bool) -> io::Result<u64> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(0);
    }
    let cut = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let tail = &bytes[cut..];
    let file = fs::OpenOptions::new().append(true).open(path)?;
    if std::str::from_utf8(tail).is_ok_and(is_whole) {
        (&file).write_all(b"\n")?;
        file.sync_data()?;
        Ok(0)
    } else {
        file.set_len(cut as u64)?;
        file.sync_data()?;
        Ok(tail.len() as u64)
    }
}

/// An exclusive lock on a directory (`dir/LOCK_FILE`) or a file, held until dropped:
/// `flock`, which the kernel releases when the process dies, however it dies.
pub struct DirLock {
    _file: fs::File,
}

/// The lock file in a locked directory; it holds the owner's process id.
pub const LOCK_FILE: &str = "lock";

/// Takes the exclusive lock on `dir` without waiting. `WouldBlock` when another process
/// (or another handle in this one) holds it, with the holder's process id in the message.
pub fn lock_dir(dir: &Path) -> io::Result<DirLock> {
    lock_file(&dir.join(LOCK_FILE), &dir.display().to_string())
}

/// Takes the exclusive lock on the file at `path` (created 0600 if missing) without
/// waiting, writing this process's id into it. `WouldBlock` when another process holds
/// it: the message says that `what` is locked, and by which process.
pub fn lock_file(path: &Path, what: &str) -> io::Result<DirLock> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(path).unwrap_or_default();
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{what} is locked by process {} ({})",
                    holder.trim(),
                    path.display()
                ),
            ));
        }
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    file.set_len(0)?;
    file.write_all(std::process::id().to_string().as_bytes())?;
    file.sync_data()?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new(&path, b"one", PRIVATE).unwrap();
        let err = write_new(&path, b"two", PRIVATE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        replace(&path, b"three", PRIVATE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_torn_last_line_is_completed_if_whole_and_removed_if_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        assert_eq!(repair_torn_tail(&path, |_| true).unwrap(), 0, "no file");
        fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\"").unwrap();
        let whole = |l: &str| serde_json::from_str::<serde_json::Value>(l).is_ok();
        assert_eq!(repair_torn_tail(&path, whole).unwrap(), 4);
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(repair_torn_tail(&path, whole).unwrap(), 0);
        fs::write(&path, "{\"a\":1}\n{\"a\":2}").unwrap();
        assert_eq!(repair_torn_tail(&path, whole).unwrap(), 0);
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
        append_line(&path, b"{\"a\":3}\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 3);
    }

    #[test]
    fn a_locked_directory_refuses_a_second_owner_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        let err = lock_dir(dir.path()).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(
            err.to_string()
                .contains(&format!("locked by process {}", std::process::id())),
            "{err}"
        );
        drop(first);
        lock_dir(dir.path()).unwrap();
    }
}
