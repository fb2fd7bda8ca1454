//! `harambee-agent audit verify`: the offline, independent check of a privacy-ledger export.
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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use harambee_privacy::card::{self, ModelCard};
use harambee_privacy::ledger::export::{HeadFile, KeyPin, head_path_for};
use harambee_privacy::ledger::{self, LedgerEvent, key_fingerprint};
use harambee_privacy::log::{self as privacy, Record};

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

/// The report as text, and whether everything verified.
pub fn verify_report(args: &VerifyArgs) -> anyhow::Result<(String, bool)> {
    let mut out = String::new();
    let text = std::fs::read_to_string(&args.ledger)
        .with_context(|| format!("reading {}", args.ledger.display()))?;
    let entries = match ledger::parse_jsonl(&text) {
        Ok(entries) => entries,
        Err(e) => {
            writeln!(out, "FAILED: {}: {e}", args.ledger.display())?;
            return Ok((out, false));
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

    let log = match &args.receipts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            // The chain of lines, and every change of ledger key proven by a rotation the
            // old key signed (`check_ledger_keys`).
            match privacy::parse_log(&text)
                .and_then(|lines| privacy::check_ledger_keys(&lines).map(|()| lines))
            {
                Ok(lines) => Some(lines),
                Err(e) => {
                    writeln!(
                        out,
                        "FAILED: the privacy log {} is broken: {e:#}",
                        path.display()
                    )?;
                    return Ok((out, false));
                }
            }
        }
        None => None,
    };
    let pinned = log.as_deref().and_then(privacy::last_head);

    let mut ok_key = true;
    let stated = parse_key(&head_file.ledger_key).context("the head file's ledger_key")?;
    let pin = match (&args.ledger_key, &pinned) {
        (Some(text), _) => {
            let pin = KeyPin::parse(text)
                .map_err(anyhow::Error::msg)
                .context("--ledger-key")?;
            match pin.resolve(&head_file, &entries) {
                Some(key) => Some((key, "given on the command line")),
                None => {
                    writeln!(
                        out,
                        "FAILED: no ledger key in the export has the pinned fingerprint {text}; the export states key {} (fingerprint {}): it is signed with another key",
                        hex::encode(stated.to_bytes()),
                        key_fingerprint(&stated)
                    )?;
                    return Ok((out, false));
                }
            }
        }
        (None, Some((_, key))) => Some((*key, "pinned in the facility's privacy log")),
        (None, None) => None,
    };
    let ledger_key = match pin {
        Some((key, source)) => {
            writeln!(
                out,
                "ledger key {} ({}, {source})",
                hex::encode(key.to_bytes()),
                key_fingerprint(&key)
            )?;
            // The key the pin leads to (through recorded rotations) must be the one the
            // export says signed it: otherwise the export was re-signed with another key.
            let head_size = head_file.signed_tree_head.head.tree_size;
            let (history, _) = ledger::KeyHistory::follow(&entries, &key);
            if history.key_at(head_size) != Some(stated) {
                writeln!(
                    out,
                    "  FAILED: the export states ledger key {} (fingerprint {}), not the pinned key's: it was signed with another key",
                    hex::encode(stated.to_bytes()),
                    key_fingerprint(&stated)
                )?;
                ok_key = false;
            }
            key
        }
        None => {
            writeln!(
                out,
                "ledger key {} ({}): taken from the export itself, not pinned",
                hex::encode(stated.to_bytes()),
                key_fingerprint(&stated)
            )?;
            stated
        }
    };

    // Receipt keys: with the facility's own log, only the facility's key from that log (the
    // ledger's enrolment entries are the coordinator's own claims); without it, the keys
    // the ledger states, signed under the ledger key.
    let mut facility_keys: BTreeMap<String, VerifyingKey> = if log.is_some() {
        BTreeMap::new()
    } else {
        ledger::enrolled_receipt_keys(&entries)
    };
    let mut facility = None;
    if let Some(lines) = &log {
        for line in lines {
            if let Record::Identity { facility: f, .. } = &line.record {
                facility = Some(f.clone());
            }
        }
    }
    // The facility's own key, from its own log, is the authority for its receipts.
    if let (Some(lines), Some(name)) = (&log, &facility)
        && let Some(own) = privacy::facility_key(lines, name).and_then(|k| parse_key(&k).ok())
    {
        if let Some(claimed) = ledger::enrolled_receipt_keys(&entries).get(name)
            && *claimed != own
        {
            writeln!(
                out,
                "  FAILED: the ledger states another key for {name} than the facility's own"
            )?;
            ok_key = false;
        }
        // Any enrolment under a key the facility never held: peers accept a key the ledger
        // records, so a coordinator that minted one for this facility had to ledger it.
        let held = privacy::facility_keys(lines, name);
        for (index, key) in ledger::foreign_enrolments(&entries, name, &held) {
            writeln!(
                out,
                "  FAILED: entry {index}: the ledger enrols {name} under key {}, which this facility never held (a substituted key: peers may have run secure aggregation with whoever holds it)",
                key_fingerprint(&key)
            )?;
            ok_key = false;
        }
        facility_keys.insert(name.clone(), own);
    }
    let previous = pinned.as_ref().map(|(head, _)| head);
    let report = ledger::verify_ledger(
        &entries,
        &head_file.signed_tree_head,
        &ledger_key,
        previous,
        &facility_keys,
    );
    write!(out, "{report}")?;
    let mut ok = report.is_ok() && ok_key;
    if let Some(previous) = previous {
        writeln!(
            out,
            "checked against the last head the facility saw: {} entries",
            previous.head.tree_size
        )?;
    }

    // Countersignatures: each must verify with its facility's key and be for a head whose
    // tree is a prefix of this one.
    let mut cosigned = 0;
    for c in &head_file.cosignatures {
        let Some(key) = facility_keys.get(&c.cosignature.facility) else {
            continue;
        };
        match ledger::verify_cosignature(&entries, &c.head, &c.cosignature, key) {
            Ok(()) => cosigned += 1,
            Err(failure) => {
                writeln!(
                    out,
                    "  FAILED: {} on the head of size {}: {failure}",
                    c.cosignature.facility, c.head.tree_size
                )?;
                ok = false;
            }
        }
    }
    if !head_file.cosignatures.is_empty() {
        writeln!(
            out,
            "countersigned heads: {cosigned} of {} consistent with this ledger",
            head_file.cosignatures.len()
        )?;
    }

    if let (Some(lines), Some(facility)) = (&log, &facility) {
        let receipts = privacy::accepted_receipts(lines);
        let unacknowledged = privacy::unacknowledged_receipts(lines);
        let cross = ledger::cross_check(&entries, facility, &receipts, &unacknowledged);
        write!(out, "{cross}")?;
        ok &= cross.is_ok();
        let spent = entries.iter().rev().find_map(|l| match &l.event {
            LedgerEvent::Contribution(c) if c.facility == *facility => Some(c.epsilon_spent),
            _ => None,
        });
        if let Some(eps) = spent {
            writeln!(
                out,
                "facility {facility:?}: ε spent per the ledger: {eps:.4}"
            )?;
        }
    } else if args.receipts.is_some() {
        writeln!(
            out,
            "the privacy log holds no receipts yet: nothing to cross-check"
        )?;
    }
    if let Some(path) = &args.model_card {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        match ModelCard::parse(&text) {
            Err(e) => {
                writeln!(out, "  FAILED: model card {}: {e}", path.display())?;
                ok = false;
            }
            Ok(card) => {
                // The key that signed the card's head: the pinned one, followed through the
                // rotations the ledger records.
                let (history, _) = ledger::KeyHistory::follow(&entries, &ledger_key);
                let key = history
                    .key_at(card.ledger.signed_tree_head.head.tree_size)
                    .unwrap_or(ledger_key);
                let report = card::verify_card(&card, &entries, &key);
                writeln!(
                    out,
                    "model card {} ({} version {}):",
                    path.display(),
                    card.federation,
                    card.model.version
                )?;
                for passed in &report.passed {
                    writeln!(out, "  ok: {passed}")?;
                }
                for failure in &report.failures {
                    writeln!(out, "  FAILED: {failure}")?;
                }
                ok &= report.ok();
            }
        }
    }
    if !ok {
        writeln!(out, "VERIFICATION FAILED")?;
    } else if pin.is_none() {
        writeln!(
            out,
            "UNVERIFIED: no ledger key pinned out of band; the checks above used the key the export states about itself, and anyone can re-sign a rewritten ledger with a key of their own. Give --ledger-key (the coordinator's public key or its sha256: fingerprint, obtained independently) or --receipts (the facility's privacy log, which pins the key of the heads it countersigned)"
        )?;
        ok = false;
    } else {
        writeln!(out, "VERIFIED")?;
    }
    Ok((out, ok))
}

fn parse_key(hex_key: &str) -> anyhow::Result<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .context("not hex")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("an Ed25519 key is 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes).context("not an Ed25519 public key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_refused() {
        assert!(parse_key("zz").is_err());
        assert!(parse_key("00").is_err());
    }

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
