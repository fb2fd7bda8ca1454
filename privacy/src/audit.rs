//! The offline audit of a privacy-ledger export: what `harambee-agent audit verify` prints
//! and the web console's offline ledger page shows, from the files' contents (the callers
//! read the files; nothing here does IO).
//!
//! Inputs: the export's entries and its head file, the coordinator's ledger key pinned out of
//! band (without it, or the key pinned in the facility's privacy log, the result is
//! [`Outcome::Unverified`], never verified), optionally the facility's privacy log, whose own
//! key is the only one its receipts are checked with, and a model card. It checks the whole
//! tree and every signature, that the ledger extends the last head the facility saw (no fork,
//! no rollback), that every receipt the coordinator accepted from the facility is in the
//! ledger exactly as signed, and that the ledger claims no contribution of the facility that
//! its log does not hold. It trusts nothing the coordinator computed: leaf hashes, indices and
//! roots are recomputed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ed25519_dalek::VerifyingKey;

use crate::card::{self, ModelCard};
use crate::ledger::export::{HeadFile, KeyPin};
use crate::ledger::{self, LedgerEvent, LedgerLine, key_fingerprint};
use crate::log::{self as privacy, Record};

/// A file's contents and the name to call it by in the report.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

/// What one audit looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The export's entries, parsed (`ledger::parse_jsonl`).
    pub entries: &'a [LedgerLine],
    pub head: &'a HeadFile,
    /// The coordinator's ledger key, obtained independently of the export.
    pub ledger_key: Option<&'a KeyPin>,
    /// The facility's privacy log (`privacy-log.jsonl`).
    pub receipts: Option<Named<'a>>,
    /// A model card (`<model>.card.json`).
    pub model_card: Option<Named<'a>>,
}

/// How the audit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Verified,
    /// Everything checked out against the key the export states about itself: anyone can
    /// re-sign a rewritten ledger with a key of their own.
    Unverified,
    Failed,
}

/// The audit's report.
#[derive(Debug, Clone)]
pub struct Report {
    /// The whole report, one check per line, ending with the outcome.
    pub text: String,
    pub outcome: Outcome,
    /// Each problem found, naming the entry where there is one.
    pub failures: Vec<String>,
    /// The facility whose privacy log was given, as the log names it.
    pub facility: Option<String>,
    /// Receipts of that facility found in the ledger exactly as its log holds them.
    pub receipts_matched: u64,
    /// Where the ledger and that facility's own log disagree: receipts missing, differing
    /// or extra, keys the facility never held (a subset of `failures`).
    pub facility_failures: Vec<String>,
}

impl Report {
    pub fn is_verified(&self) -> bool {
        self.outcome == Outcome::Verified
    }
}

/// A head file stating something that is not an Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the head file's ledger_key: {0}")]
pub struct BadHeadKey(String);

/// The report text and failures, written together.
#[derive(Default)]
struct Out {
    text: String,
    failures: Vec<String>,
    facility_failures: Vec<String>,
}

impl Out {
    fn line(&mut self, line: impl AsRef<str>) {
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }

    /// `  FAILED: what`, recorded as a failure.
    fn fail(&mut self, what: String) {
        let _ = writeln!(self.text, "  FAILED: {what}");
        self.failures.push(what);
    }

    fn done(mut self, outcome: Outcome, facility: Option<String>, matched: u64) -> Report {
        self.line(match outcome {
            Outcome::Verified => "VERIFIED",
            Outcome::Failed => "VERIFICATION FAILED",
            Outcome::Unverified => {
                "UNVERIFIED: no ledger key pinned out of band; the checks above used the key the export states about itself, and anyone can re-sign a rewritten ledger with a key of their own. Give --ledger-key (the coordinator's public key or its sha256: fingerprint, obtained independently) or --receipts (the facility's privacy log, which pins the key of the heads it countersigned)"
            }
        });
        Report {
            text: self.text,
            outcome,
            failures: self.failures,
            facility,
            receipts_matched: matched,
            facility_failures: self.facility_failures,
        }
    }

    /// A failure that ends the audit at once, written as `FAILED: what`.
    fn abort(mut self, what: String) -> Report {
        let _ = writeln!(self.text, "FAILED: {what}");
        self.failures.push(what);
        Report {
            text: self.text,
            outcome: Outcome::Failed,
            failures: self.failures,
            facility: None,
            receipts_matched: 0,
            facility_failures: Vec::new(),
        }
    }
}

/// Audits an export. Fails only when the head file's own key is not a key.
pub fn audit(inputs: &Inputs<'_>) -> Result<Report, BadHeadKey> {
    let Inputs {
        entries,
        head: head_file,
        ..
    } = *inputs;
    let mut out = Out::default();

    let log = match inputs.receipts {
        // The chain of lines, and every change of ledger key proven by a rotation the old
        // key signed (`check_ledger_keys`).
        Some(log) => match privacy::parse_log(log.text)
            .and_then(|lines| privacy::check_ledger_keys(&lines).map(|()| lines))
        {
            Ok(lines) => Some(lines),
            Err(e) => {
                return Ok(out.abort(format!("the privacy log {} is broken: {e:#}", log.name)));
            }
        },
        None => None,
    };
    let pinned = log.as_deref().and_then(privacy::last_head);

    let stated = parse_key(&head_file.ledger_key).map_err(BadHeadKey)?;
    let pin = match (inputs.ledger_key, &pinned) {
        (Some(pin), _) => match pin.resolve(head_file, entries) {
            Some(key) => Some((key, "given on the command line")),
            None => {
                return Ok(out.abort(format!(
                    "no ledger key in the export has the pinned fingerprint {}; the export states key {} (fingerprint {}): it is signed with another key",
                    pin_text(pin),
                    hex::encode(stated.to_bytes()),
                    key_fingerprint(&stated)
                )));
            }
        },
        (None, Some((_, key))) => Some((*key, "pinned in the facility's privacy log")),
        (None, None) => None,
    };
    let mut ok_key = true;
    let ledger_key = match pin {
        Some((key, source)) => {
            out.line(format!(
                "ledger key {} ({}, {source})",
                hex::encode(key.to_bytes()),
                key_fingerprint(&key)
            ));
            // The key the pin leads to (through recorded rotations) must be the one the
            // export says signed it: otherwise the export was re-signed with another key.
            let head_size = head_file.signed_tree_head.head.tree_size;
            let (history, _) = ledger::KeyHistory::follow(entries, &key);
            if history.key_at(head_size) != Some(stated) {
                out.fail(format!(
                    "the export states ledger key {} (fingerprint {}), not the pinned key's: it was signed with another key",
                    hex::encode(stated.to_bytes()),
                    key_fingerprint(&stated)
                ));
                ok_key = false;
            }
            key
        }
        None => {
            out.line(format!(
                "ledger key {} ({}): taken from the export itself, not pinned",
                hex::encode(stated.to_bytes()),
                key_fingerprint(&stated)
            ));
            stated
        }
    };

    // Receipt keys: with the facility's own log, only the facility's key from that log (the
    // ledger's enrolment entries are the coordinator's own claims); without it, the keys
    // the ledger states, signed under the ledger key.
    let mut facility_keys: BTreeMap<String, VerifyingKey> = if log.is_some() {
        BTreeMap::new()
    } else {
        ledger::enrolled_receipt_keys(entries)
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
        if let Some(claimed) = ledger::enrolled_receipt_keys(entries).get(name)
            && *claimed != own
        {
            let what = format!("the ledger states another key for {name} than the facility's own");
            out.facility_failures.push(what.clone());
            out.fail(what);
            ok_key = false;
        }
        // Any enrolment under a key the facility never held: peers accept a key the ledger
        // records, so a coordinator that minted one for this facility had to ledger it.
        let held = privacy::facility_keys(lines, name);
        for (index, key) in ledger::foreign_enrolments(entries, name, &held) {
            let what = format!(
                "entry {index}: the ledger enrols {name} under key {}, which this facility never held (a substituted key: peers may have run secure aggregation with whoever holds it)",
                key_fingerprint(&key)
            );
            out.facility_failures.push(what.clone());
            out.fail(what);
            ok_key = false;
        }
        facility_keys.insert(name.clone(), own);
    }
    let previous = pinned.as_ref().map(|(head, _)| head);
    let report = ledger::verify_ledger(
        entries,
        &head_file.signed_tree_head,
        &ledger_key,
        previous,
        &facility_keys,
    );
    let _ = write!(out.text, "{report}");
    out.failures
        .extend(report.failures.iter().map(ToString::to_string));
    let mut ok = report.is_ok() && ok_key;
    if let Some(previous) = previous {
        out.line(format!(
            "checked against the last head the facility saw: {} entries",
            previous.head.tree_size
        ));
    }

    // Countersignatures: each must verify with its facility's key and be for a head whose
    // tree is a prefix of this one.
    let mut cosigned = 0;
    for c in &head_file.cosignatures {
        let Some(key) = facility_keys.get(&c.cosignature.facility) else {
            continue;
        };
        match ledger::verify_cosignature(entries, &c.head, &c.cosignature, key) {
            Ok(()) => cosigned += 1,
            Err(failure) => {
                out.fail(format!(
                    "{} on the head of size {}: {failure}",
                    c.cosignature.facility, c.head.tree_size
                ));
                ok = false;
            }
        }
    }
    if !head_file.cosignatures.is_empty() {
        out.line(format!(
            "countersigned heads: {cosigned} of {} consistent with this ledger",
            head_file.cosignatures.len()
        ));
    }

    let mut matched = 0;
    if let (Some(lines), Some(facility)) = (&log, &facility) {
        let receipts = privacy::accepted_receipts(lines);
        let unacknowledged = privacy::unacknowledged_receipts(lines);
        let cross = ledger::cross_check(entries, facility, &receipts, &unacknowledged);
        let _ = write!(out.text, "{cross}");
        let differ: Vec<String> = cross.failures.iter().map(ToString::to_string).collect();
        out.failures.extend(differ.iter().cloned());
        out.facility_failures.extend(differ);
        matched = cross.matched;
        ok &= cross.is_ok();
        let spent = entries.iter().rev().find_map(|l| match &l.event {
            LedgerEvent::Contribution(c) if c.facility == *facility => Some(c.epsilon_spent),
            _ => None,
        });
        if let Some(eps) = spent {
            out.line(format!(
                "facility {facility:?}: ε spent per the ledger: {eps:.4}"
            ));
        }
    } else if inputs.receipts.is_some() {
        out.line("the privacy log holds no receipts yet: nothing to cross-check");
    }
    if let Some(named) = inputs.model_card {
        match ModelCard::parse(named.text) {
            Err(e) => {
                out.fail(format!("model card {}: {e}", named.name));
                ok = false;
            }
            Ok(card) => {
                // The key that signed the card's head: the pinned one, followed through the
                // rotations the ledger records.
                let (history, _) = ledger::KeyHistory::follow(entries, &ledger_key);
                let key = history
                    .key_at(card.ledger.signed_tree_head.head.tree_size)
                    .unwrap_or(ledger_key);
                let report = card::verify_card(&card, entries, &key);
                out.line(format!(
                    "model card {} ({} version {}):",
                    named.name, card.federation, card.model.version
                ));
                for passed in &report.passed {
                    out.line(format!("  ok: {passed}"));
                }
                for failure in &report.failures {
                    out.fail(failure.to_string());
                }
                ok &= report.ok();
            }
        }
    }
    let outcome = if !ok {
        Outcome::Failed
    } else if pin.is_none() {
        Outcome::Unverified
    } else {
        Outcome::Verified
    };
    Ok(out.done(outcome, facility, matched))
}

fn pin_text(pin: &KeyPin) -> String {
    match pin {
        KeyPin::Key(key) => hex::encode(key.to_bytes()),
        KeyPin::Fingerprint(f) => f.clone(),
    }
}

fn parse_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .map_err(|_| "not hex".to_owned())?
        .try_into()
        .map_err(|_| "an Ed25519 key is 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_refused() {
        assert!(parse_key("zz").is_err());
        assert!(parse_key("00").is_err());
    }
}
