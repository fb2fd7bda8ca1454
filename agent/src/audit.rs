//! `harambee-agent audit verify`: the offline, independent check of a privacy-ledger export
//! (the checks are `harambee_privacy::audit`'s; this module reads the files and prints).
//!
//! Inputs: the export (`ledger.jsonl`, one canonical entry per line), its signed tree head
//! (`ledger.head.json`, written next to it by `harambee-coordinator audit export`), the
//! coordinator's ledger key (`--ledger-key`, or the key pinned in the facility's privacy
//! log; without either the result is UNVERIFIED, never VERIFIED), and optionally the
//! facility's privacy log (`--receipts`), whose own key is the only one its receipts are
//! checked with. It checks the whole tree
//! and every signature, that the ledger extends the last head the facility saw (no fork, no
//! rollback), that every receipt the coordinator accepted from the facility is in the ledger
//! exactly as signed, and that the ledger claims no contribution of the facility that its log
//! does not hold. It trusts nothing the coordinator computed: leaf hashes, indices and roots
//! are recomputed.

use std::path::PathBuf;

use anyhow::Context;
use harambee_privacy::audit::{self, Inputs, Named};
use harambee_privacy::ledger;
use harambee_privacy::ledger::export::{HeadFile, KeyPin, head_path_for};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The export: `harambee-coordinator audit export --out ledger.jsonl`.
    #[arg(long)]
    pub ledger: PathBuf,
    /// Its signed tree head (default: `<ledger stem>.head.json` next to it).
    #[arg(long)]
    pub head: Option<PathBuf>,
    /// The coordinator's ledger key (64 hex digits) or its fingerprint (`sha256:` and 64 hex
    /// digits), obtained independently of the export. Default: the key pinned in
    /// `--receipts`. Without either the result is UNVERIFIED: anyone can re-sign a rewritten
    /// export with a key of their own.
    #[arg(long)]
    pub ledger_key: Option<String>,
    /// The facility's privacy log (`state_dir/privacy-log.jsonl`): cross-check its receipts
    /// and check the ledger against the last tree head the facility saw.
    #[arg(long)]
    pub receipts: Option<PathBuf>,
    /// A model card (`<model>.card.json`, written by `model export`): check its figures,
    /// its tree head and its commit against this ledger.
    #[arg(long)]
    pub model_card: Option<PathBuf>,
}

/// Runs the verification, printing the report; `Ok(false)` when anything failed.
pub fn verify(args: &VerifyArgs) -> anyhow::Result<bool> {
    let (report, ok) = verify_report(args)?;
    print!("{report}");
    Ok(ok)
}

/// The report as text, and whether everything verified. The checks are
/// `harambee_privacy::audit::audit`'s, which the web console's offline ledger page shares.
pub fn verify_report(args: &VerifyArgs) -> anyhow::Result<(String, bool)> {
    let text = std::fs::read_to_string(&args.ledger)
        .with_context(|| format!("reading {}", args.ledger.display()))?;
    let entries = match ledger::parse_jsonl(&text) {
        Ok(entries) => entries,
        Err(e) => {
            return Ok((format!("FAILED: {}: {e}\n", args.ledger.display()), false));
        }
    };
    let head_path = args
        .head
        .clone()
        .unwrap_or_else(|| head_path_for(&args.ledger));
    let head_file: HeadFile = serde_json::from_str(
        &std::fs::read_to_string(&head_path)
            .with_context(|| format!("reading the signed tree head {}", head_path.display()))?,
    )
    .with_context(|| format!("parsing {}", head_path.display()))?;
    let pin = args
        .ledger_key
        .as_deref()
        .map(KeyPin::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--ledger-key")?;
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let receipts = args.receipts.as_ref().map(read).transpose()?;
    let card = args.model_card.as_ref().map(read).transpose()?;
    let receipts_name = args.receipts.as_ref().map(|p| p.display().to_string());
    let card_name = args.model_card.as_ref().map(|p| p.display().to_string());
    let report = audit::audit(&Inputs {
        entries: &entries,
        head: &head_file,
        ledger_key: pin.as_ref(),
        receipts: named(receipts_name.as_deref(), receipts.as_deref()),
        model_card: named(card_name.as_deref(), card.as_deref()),
    })?;
    let ok = report.is_verified();
    Ok((report.text, ok))
}

/// A file's name and contents, when both are there.
fn named<'a>(name: Option<&'a str>, text: Option<&'a str>) -> Option<Named<'a>> {
    Some(Named {
        name: name?,
        text: text?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_export_is_a_failure_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        std::fs::write(&path, "{not json}\n").unwrap();
        let args = VerifyArgs {
            ledger: path,
            head: None,
            ledger_key: None,
            receipts: None,
            model_card: None,
        };
        let (report, ok) = verify_report(&args).unwrap();
        assert!(!ok);
        assert!(report.contains("line 1"), "{report}");
    }
}
