//! The architecture invariants of ARCHITECTURE.md, checked on the source tree (in the manner
//! of rust-analyzer's `xtask/src/tidy.rs`). Each check returns its offences, one line each,
//! naming the file (and line) that breaks the rule.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The protocol crates: no IO, no async runtime, no RPC, no database, no clock, no global RNG.
pub const PURE_CRATES: [&str; 3] = ["secagg", "core", "privacy"];

/// What a pure crate's sources may not name (outside comments).
const PURE_FORBIDDEN_CODE: [&str; 14] = [
    "tokio",
    "tonic",
    "sea_orm",
    "harambee_proto",
    "std::fs",
    "std::net",
    "std::env",
    "std::thread::sleep",
    "Instant::now",
    "SystemTime",
    "thread_rng",
    "rand::rng",
    "rand::random",
    "OsRng",
];

/// What a pure crate may not depend on.
const PURE_FORBIDDEN_DEPS: [&str; 9] = [
    "tokio",
    "tonic",
    "sea-orm",
    "harambee-proto",
    "hyper",
    "mio",
    "getrandom",
    "rand",
    "burn",
];

/// The one module of the coordinator that builds gRPC statuses.
const STATUS_MAPPER: &str = "coordinator/src/service/error.rs";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Every check's offences.
pub fn all(root: &Path) -> Vec<String> {
    let mut offences = pure_crates_stay_pure(root);
    offences.extend(drivers_do_not_depend_on_each_other(root));
    offences.extend(statuses_are_made_in_one_place(root));
    offences.extend(layers_look_only_down(root));
    offences.extend(no_private_key_is_tracked(root));
    offences.extend(the_root_runs_the_demo(root));
    offences
}

/// The README's first command, `cargo run --release -- demo`, runs at the repository root:
/// cargo picks a binary to run only when exactly one default member has binaries (then
/// its `default-run`), so `harambee-sim` must be that one.
pub fn the_root_runs_the_demo(root: &Path) -> Vec<String> {
    let manifest: toml::Table = match read(&root.join("Cargo.toml")).parse() {
        Ok(t) => t,
        Err(e) => return vec![format!("Cargo.toml: {e}")],
    };
    let members: Vec<String> = manifest
        .get("workspace")
        .and_then(|w| w.get("default-members"))
        .and_then(|m| m.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let with_binaries: Vec<&String> = members
        .iter()
        .filter(|m| {
            let dir = root.join(m);
            dir.join("src/main.rs").exists() || read(&dir.join("Cargo.toml")).contains("[[bin]]")
        })
        .collect();
    if with_binaries.len() == 1 && with_binaries[0] == "sim" {
        Vec::new()
    } else {
        vec![format!(
            "Cargo.toml: default-members with binaries are {with_binaries:?}; `cargo run --release -- demo` needs exactly [\"sim\"]"
        )]
    }
}

/// The pure crates name no runtime, RPC, database, wire type, clock or global RNG, in their
/// sources or their dependencies. Their unit tests (`tests.rs`, `#[cfg(test)]` modules) may
/// read the clock to make a starting instant.
pub fn pure_crates_stay_pure(root: &Path) -> Vec<String> {
    let mut offences = Vec::new();
    for krate in PURE_CRATES {
        for file in rust_files(&root.join(krate).join("src")) {
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = read(&file);
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let code = line.trim_start();
                let next = lines.get(i + 1).map_or("", |l| l.trim_start());
                if code.starts_with("#[cfg(test)]") && next.starts_with("mod ") {
                    break;
                }
                if code.starts_with("//") {
                    continue;
                }
                for word in PURE_FORBIDDEN_CODE {
                    if code.contains(word) {
                        offences.push(format!(
                            "{}:{}: a pure crate names `{word}`",
                            relative(root, &file),
                            i + 1
                        ));
                    }
                }
            }
        }
        for dep in dependencies(&root.join(krate).join("Cargo.toml"), "dependencies") {
            if PURE_FORBIDDEN_DEPS.contains(&dep.as_str()) {
                offences.push(format!(
                    "{krate}/Cargo.toml: a pure crate depends on `{dep}`"
                ));
            }
        }
    }
    offences
}

/// Neither driver depends on the other: what both ends of the wire share is in `link`. (The
/// coordinator's tests may use the agent, as a dev-dependency.)
pub fn drivers_do_not_depend_on_each_other(root: &Path) -> Vec<String> {
    let mut offences = Vec::new();
    for (krate, other) in [
        ("coordinator", "harambee-agent"),
        ("agent", "harambee-coordinator"),
    ] {
        let manifest = root.join(krate).join("Cargo.toml");
        for table in ["dependencies", "build-dependencies"] {
            if dependencies(&manifest, table).iter().any(|d| d == other) {
                offences.push(format!("{krate}/Cargo.toml: [{table}] names {other}"));
            }
        }
    }
    offences
}

/// gRPC statuses are built only in the coordinator's error mapper.
pub fn statuses_are_made_in_one_place(root: &Path) -> Vec<String> {
    let mut offences = Vec::new();
    for file in rust_files(&root.join("coordinator").join("src")) {
        let name = relative(root, &file);
        if name == STATUS_MAPPER {
            continue;
        }
        for (i, line) in read(&file).lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if makes_status(code) {
                offences.push(format!(
                    "{name}:{}: builds a gRPC status outside {STATUS_MAPPER}",
                    i + 1
                ));
            }
        }
    }
    offences
}

/// The coordinator's lower layers do not reach up: `round/`, `wire.rs`, `store/`, `identity/` and `metrics.rs` name
/// none of `state`, `service`, `server` or `cli` (a round driver gets a `RoundContext`, not
/// the whole `Coordinator`), and `state.rs`, which every service and driver holds, names
/// none of `service`, `server` or `cli`: no import cycles between the layers.
pub fn layers_look_only_down(root: &Path) -> Vec<String> {
    const LOWER: &[&str] = &[
        "crate::state",
        "crate::service",
        "crate::server",
        "crate::cli",
    ];
    let src = root.join("coordinator").join("src");
    let layers: [(&str, PathBuf, &[&str]); 6] = [
        ("round", src.join("round"), LOWER),
        ("wire", src.join("wire.rs"), LOWER),
        ("store", src.join("store"), LOWER),
        ("identity", src.join("identity"), LOWER),
        ("metrics", src.join("metrics.rs"), LOWER),
        ("state", src.join("state.rs"), &LOWER[1..]),
    ];
    let mut offences = Vec::new();
    for (layer, path, uppers) in layers {
        let files = if path.is_file() {
            vec![path]
        } else {
            rust_files(&path)
        };
        for file in files {
            let name = relative(root, &file);
            for (i, line) in read(&file).lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for upper in uppers {
                    if code.contains(upper) {
                        offences.push(format!(
                            "{name}:{}: the {layer} layer names {upper}, a layer above it",
                            i + 1
                        ));
                    }
                }
            }
        }
    }
    offences
}

/// `Status::new(..)`, `Status::invalid_argument(..)`, `Status::from(..)` and the like (but
/// not `ParticipantStatus::Dropped`).
fn makes_status(code: &str) -> bool {
    code.match_indices("Status::").any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let qualified = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let after = &code[at + "Status::".len()..];
        qualified && after.starts_with(|c: char| c.is_ascii_lowercase())
    })
}

/// No tracked file holds a private key (PEM or PKCS#8 armour).
pub fn no_private_key_is_tracked(root: &Path) -> Vec<String> {
    let mut offences = Vec::new();
    for file in tracked_files(root) {
        let Ok(bytes) = std::fs::read(root.join(&file)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        if text.lines().any(is_private_key_armour) {
            offences.push(format!("{file}: holds a private key"));
        }
    }
    offences
}

fn is_private_key_armour(line: &str) -> bool {
    let Some(rest) = line.trim().strip_prefix("-----BEGIN ") else {
        return false;
    };
    rest.ends_with("PRIVATE KEY-----")
}

/// The files git tracks; without git (an exported tree), every file outside `target/` and
/// `.git/`.
fn tracked_files(root: &Path) -> Vec<String> {
    let listed = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output();
    match listed {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => all_files(root, root),
    }
}

fn all_files(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        if path.is_dir() {
            out.extend(all_files(root, &path));
        } else {
            out.push(relative(root, &path));
        }
    }
    out
}

/// The dependency names of one table of a manifest.
fn dependencies(manifest: &Path, table: &str) -> Vec<String> {
    let Ok(value) = read(manifest).parse::<toml::Table>() else {
        return vec![format!("<{} does not parse>", manifest.display())];
    };
    value
        .get(table)
        .and_then(toml::Value::as_table)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_none(offences: Vec<String>) {
        assert!(offences.is_empty(), "\n{}", offences.join("\n"));
    }

    #[test]
    fn pure_crates_name_no_io_runtime_clock_or_global_rng() {
        let root = workspace_root();
        for krate in PURE_CRATES {
            assert!(
                rust_files(&root.join(krate).join("src")).len() >= 3,
                "{krate}: sources not found"
            );
        }
        assert_none(pure_crates_stay_pure(&root));
    }

    /// `cargo run --release -- demo` works here, and the check sees a workspace where it
    /// would not (several default members with binaries).
    #[test]
    fn the_readme_demo_command_can_pick_its_binary() {
        assert_none(the_root_runs_the_demo(&workspace_root()));
        let dir = std::env::temp_dir().join(format!("xtask-demo-{}", std::process::id()));
        for member in ["sim", "agent"] {
            std::fs::create_dir_all(dir.join(member).join("src")).unwrap();
            std::fs::write(dir.join(member).join("src/main.rs"), "fn main() {}").unwrap();
            std::fs::write(dir.join(member).join("Cargo.toml"), "[package]").unwrap();
        }
        std::fs::write(
            dir.join("Cargo.toml"),
            "[workspace]\ndefault-members = [\"sim\", \"agent\"]\n",
        )
        .unwrap();
        let offences = the_root_runs_the_demo(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(offences.len(), 1, "{offences:?}");
    }

    #[test]
    fn neither_driver_depends_on_the_other() {
        assert_none(drivers_do_not_depend_on_each_other(&workspace_root()));
    }

    #[test]
    fn grpc_statuses_are_made_only_in_the_error_mapper() {
        assert_none(statuses_are_made_in_one_place(&workspace_root()));
    }

    #[test]
    fn coordinator_layers_look_only_down() {
        assert_none(layers_look_only_down(&workspace_root()));
    }

    #[test]
    fn no_tracked_file_holds_a_private_key() {
        assert_none(no_private_key_is_tracked(&workspace_root()));
    }

    /// The checks themselves catch what they are for.
    #[test]
    fn the_checks_see_offences() {
        assert!(makes_status("return Err(Status::invalid_argument(\"x\"));"));
        assert!(makes_status("tonic::Status::new(Code::Internal, m)"));
        assert!(!makes_status("ParticipantStatus::Dropped => 1,"));
        assert!(!makes_status("pb::RoundStatus::Committed"));
        assert!(is_private_key_armour("-----BEGIN PRIVATE KEY-----"));
        assert!(is_private_key_armour("  -----BEGIN EC PRIVATE KEY-----"));
        assert!(!is_private_key_armour("-----BEGIN CERTIFICATE-----"));

        let dir = std::env::temp_dir().join(format!("tidy-{}", std::process::id()));
        let src = dir.join("core").join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("lib.rs"),
            "fn f() { let t = std::time::Instant::now(); }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("core").join("Cargo.toml"),
            "[package]\nname = \"x\"\n[dependencies]\ntokio = \"1\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("coordinator")).unwrap();
        std::fs::write(
            dir.join("coordinator").join("Cargo.toml"),
            "[dependencies]\nharambee-agent = { path = \"../agent\" }\n",
        )
        .unwrap();
        std::fs::write(dir.join("id.key"), "-----BEGIN PRIVATE KEY-----\nMC4=\n").unwrap();
        let round = dir.join("coordinator").join("src").join("round");
        std::fs::create_dir_all(&round).unwrap();
        std::fs::write(round.join("driver.rs"), "use crate::state::Coordinator;\n").unwrap();
        std::fs::write(
            round.parent().unwrap().join("state.rs"),
            "pub identity: crate::server::access::Identity,\n",
        )
        .unwrap();
        let layers = layers_look_only_down(&dir);
        let pure = pure_crates_stay_pure(&dir);
        let drivers = drivers_do_not_depend_on_each_other(&dir);
        let keys = all_files(&dir, &dir)
            .into_iter()
            .filter(|f| f.ends_with(".key"))
            .count();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(pure.len(), 2, "{pure:?}");
        assert_eq!(layers.len(), 2, "{layers:?}");
        assert_eq!(drivers.len(), 1, "{drivers:?}");
        assert_eq!(keys, 1);
    }
}
