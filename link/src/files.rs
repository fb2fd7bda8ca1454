//! Writing key and certificate files safely: private files are created with mode 0600 from
//! the start (never widened, then narrowed), and replacements go through a temporary file and
//! a rename, so a reader sees the old file or the new one, never part of one.

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
}
