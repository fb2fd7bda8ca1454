//! The crate stays pure: no async runtime, RPC, file system, sockets or clock in its
//! sources or its dependencies.

use std::path::Path;

const FORBIDDEN: [&str; 8] = [
    "tokio",
    "tonic",
    "std::fs",
    "std::net",
    "SystemTime",
    "Instant",
    "std::env",
    "std::thread::sleep",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn sources_use_no_io_runtime_or_clock() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() >= 5, "found only {files:?}");
    let mut offences = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for word in FORBIDDEN {
                if code.contains(word) {
                    offences.push(format!("{}:{}: {word}", file.display(), i + 1));
                }
            }
        }
    }
    assert!(offences.is_empty(), "{offences:#?}");
}

#[test]
fn manifest_depends_on_no_runtime_or_rpc_crate() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    for line in deps.lines() {
        let name = line.split(['.', '=', ' ']).next().unwrap_or("");
        for word in [
            "tokio",
            "tonic",
            "hyper",
            "reqwest",
            "async-std",
            "mio",
            "getrandom",
        ] {
            assert_ne!(name, word, "secagg must stay pure: {line}");
        }
    }
}
