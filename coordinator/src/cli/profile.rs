//! The operator profile: how this person reaches the coordinator, so that commands need no
//! `--coordinator`, `--server-name`, `--pki` or `--operator` each time.
//!
//! A TOML file at `$HARAMBEE_PROFILE`, or else `$XDG_CONFIG_HOME/harambee/operator.toml`
//! (`~/.config/harambee/operator.toml`):
//!
//! ```toml
//! coordinator = "https://coordinator.health.example:443"
//! server_name = "coordinator.health.example"
//! pki = "/home/amina/harambee-pki"     # relative paths are relative to this file
//! operator = "amina"
//! auditor = "moh-audit"                # for audit export and audit privacy
//! ```
//!
//! Its values replace the built-in defaults; environment variables (`HARAMBEE_COORDINATOR`,
//! `HARAMBEE_SERVER_NAME`, `HARAMBEE_PKI`, `HARAMBEE_OPERATOR`) and flags still win, in that
//! order. `--help` shows the defaults in force.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub coordinator: Option<String>,
    pub server_name: Option<String>,
    pub pki: Option<PathBuf>,
    pub operator: Option<String>,
    pub auditor: Option<String>,
}

impl Profile {
    /// The profile in force: `$HARAMBEE_PROFILE` (which must exist), or the one in the
    /// user's configuration directory if there is one, or none.
    pub fn load() -> anyhow::Result<Option<(PathBuf, Profile)>> {
        let (path, required) = match std::env::var_os("HARAMBEE_PROFILE") {
            Some(path) => (PathBuf::from(path), true),
            None => match default_path() {
                Some(path) => (path, false),
                None => return Ok(None),
            },
        };
        if !required && !path.exists() {
            return Ok(None);
        }
        let profile = Profile::read(&path)
            .with_context(|| format!("reading the operator profile {}", path.display()))?;
        Ok(Some((path, profile)))
    }

    /// Reads `path`; a relative `pki` is taken from the file's directory.
    pub fn read(path: &Path) -> anyhow::Result<Profile> {
        let text = std::fs::read_to_string(path)?;
        let mut profile: Profile = toml::from_str(&text)?;
        if let Some(pki) = &profile.pki
            && pki.is_relative()
        {
            let dir = path.parent().unwrap_or(Path::new("."));
            profile.pki = Some(dir.join(pki));
        }
        Ok(profile)
    }

    /// The value for a command-line argument with this id, if the profile sets one.
    fn value_for(&self, id: &str) -> Option<String> {
        match id {
            "coordinator" => self.coordinator.clone(),
            "server_name" => self.server_name.clone(),
            "pki" => self.pki.as_ref().map(|p| p.display().to_string()),
            "operator" => self.operator.clone(),
            "auditor" => self.auditor.clone(),
            _ => None,
        }
    }

    /// `command` and its subcommands with the profile's values as the defaults of the
    /// arguments it names. Only arguments that have a default are changed: `serve --pki`,
    /// which has none, stays required.
    pub fn apply(&self, mut command: clap::Command) -> clap::Command {
        let ids: Vec<String> = command
            .get_arguments()
            .filter(|a| !a.get_default_values().is_empty())
            .map(|a| a.get_id().to_string())
            .collect();
        for id in ids {
            if let Some(value) = self.value_for(&id) {
                // clap keeps defaults for the life of the process, which is this command's.
                let value: &'static str = Box::leak(value.into_boxed_str());
                command = command.mut_arg(id, |a| a.default_value(value));
            }
        }
        let names: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in names {
            command = command.mut_subcommand(name, |s| self.apply(s));
        }
        command
    }
}

fn default_path() -> Option<PathBuf> {
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(config.join("harambee").join("operator.toml"))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::{Cli, Command, RoundCommand};

    fn parse(profile: &Profile, args: &[&str]) -> Cli {
        let command = profile.apply(Cli::command());
        let matches = command
            .try_get_matches_from(
                std::iter::once("harambee-coordinator").chain(args.iter().copied()),
            )
            .unwrap();
        Cli::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn a_profile_replaces_defaults_and_flags_still_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.toml");
        std::fs::write(
            &path,
            "coordinator = \"https://c.example:443\"\nserver_name = \"c.example\"\npki = \"keys\"\noperator = \"amina\"\n",
        )
        .unwrap();
        let profile = Profile::read(&path).unwrap();
        assert_eq!(profile.pki, Some(dir.path().join("keys")));

        let Command::Round(RoundCommand::Status { admin, .. }) =
            parse(&profile, &["round", "status", "--round", "1"]).command
        else {
            panic!("round status")
        };
        assert_eq!(admin.coordinator, "https://c.example:443");
        assert_eq!(admin.server_name, "c.example");
        assert_eq!(admin.pki, dir.path().join("keys"));
        assert_eq!(admin.operator, "amina");

        let Command::Round(RoundCommand::Status { admin, .. }) = parse(
            &profile,
            &["round", "status", "--round", "1", "--operator", "baraka"],
        )
        .command
        else {
            panic!("round status")
        };
        assert_eq!(admin.operator, "baraka");
        assert_eq!(admin.server_name, "c.example");

        // serve's --pki has no default, and the profile does not give it one.
        let command = profile.apply(Cli::command());
        let serve = command.find_subcommand("serve").unwrap();
        let pki = serve.get_arguments().find(|a| a.get_id() == "pki").unwrap();
        assert!(pki.get_default_values().is_empty());
    }

    /// The README's example profile is one this code reads.
    #[test]
    fn the_readme_profile_reads() {
        let readme = include_str!("../../../README.md");
        let block = readme
            .split("```toml\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .find(|b| b.contains("operator = "))
            .expect("the README shows a profile");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.toml");
        std::fs::write(&path, block).unwrap();
        let profile = Profile::read(&path).unwrap();
        assert_eq!(
            profile.server_name.as_deref(),
            Some("coordinator.health.example")
        );
        assert_eq!(profile.auditor.as_deref(), Some("moh-audit"));
    }

    #[test]
    fn a_misspelt_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.toml");
        std::fs::write(&path, "coordinater = \"https://c.example\"\n").unwrap();
        let err = Profile::read(&path).unwrap_err().to_string();
        assert!(err.contains("coordinater"), "{err}");
    }
}
