//! Model cards: what a model was trained on, how it does at each facility, and under what
//! privacy guarantee, bound to the privacy ledger so that anyone can check the card.
//!
//! The coordinator writes a [`ModelCard`] with every `model export`: canonical JSON (the
//! encoding ledger leaves use, RFC 8785), and a Markdown rendering ([`ModelCard::to_markdown`])
//! for people. The card's SHA-256 ([`ModelCard::sha256`], over the canonical JSON) goes into
//! the export's `ModelExported` ledger entry, so the card is as tamper-evident as the ledger.
//!
//! [`verify_card`] checks a card against a ledger export and a ledger key pinned out of band:
//! - the card's signed tree head verifies with the key, and its inclusion proof shows the
//!   `RoundCommitted` entry that produced the model, with the same federation, round, version
//!   and SHA-256 as the card;
//! - every figure the ledger also holds is equal in both: the federation's privacy parameters,
//!   rounds committed and failed up to the commit, the facilities that contributed to the
//!   round, how many rounds each contributed, and the ε and δ their signed receipts state;
//! - a `ModelExported` entry records the card's SHA-256, which covers the figures the ledger
//!   does not hold (rows per facility, evaluation metrics, the schema): changing any one of
//!   them breaks that link.
//!
//! Each failure names the figure and both values. What is not verifiable from the ledger
//! alone is said in [`ModelCard::to_markdown`]'s output too: metrics are as the facilities
//! reported them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::ledger::merkle::verify_inclusion;
use crate::ledger::{
    Contribution, LedgerError, LedgerEvent, LedgerLine, Sha256Digest, SignedTreeHead, canonical,
};

/// The `format` of the cards this version writes and reads.
pub const CARD_FORMAT: &str = "harambee-model-card/1";

/// What the card says where a person must fill a field in.
pub const TO_COMPLETE: &str = "TO COMPLETE";

/// A model card. Floats that may be undefined (an AUC with one class present) are `None`
/// rather than NaN, which JSON cannot hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub format: String,
    pub federation: String,
    /// The federation's `intended_use`, or [`TO_COMPLETE`] and what to say.
    pub intended_use: String,
    pub model: CardModel,
    pub training: CardTraining,
    /// The facilities whose updates made the round that produced this version.
    pub facilities: Vec<CardFacility>,
    pub quality: CardQuality,
    pub privacy: CardPrivacy,
    pub ledger: CardLedger,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardModel {
    pub kind: String,
    pub hidden: Vec<u32>,
    pub n_params: u64,
    pub version: u64,
    /// The round that produced the version; 0 for the initial model.
    pub round_id: u64,
    /// SHA-256 of the parameters (`n_params` little-endian f32 values).
    pub sha256: Sha256Digest,
    pub label: String,
    /// The input columns, in order.
    pub inputs: Vec<String>,
    /// The federation's whole feature schema, as the coordinator stores it.
    pub schema: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardTraining {
    /// Rounds of the federation committed up to and including the one behind this version.
    pub rounds_committed: u64,
    /// Rounds of the federation that failed before that commit.
    pub rounds_failed: u64,
    /// The server strategy (`[strategy]`), FedAvg when empty.
    pub strategy: serde_json::Value,
    /// Local training: epochs, batch size, optimizer, learning rate, …
    pub train: serde_json::Value,
    pub secure_aggregation: bool,
    pub min_agents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardFacility {
    pub facility: String,
    /// Training rows behind its update in the round (its FedAvg weight).
    pub rows: u64,
    /// Rounds of this federation it contributed to, up to the commit.
    pub rounds_contributed: u64,
    /// Its evaluation of this version on its held-out rows, when it reported one.
    pub metrics: Option<CardMetrics>,
    /// Patient-level ε after its contribution to the round, as its signed receipt states.
    pub epsilon_spent: Option<f64>,
    pub delta: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardMetrics {
    pub n_samples: u64,
    pub auc: Option<f64>,
    pub accuracy: Option<f64>,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    /// Expected calibration error, 10 equal-width bins.
    pub ece: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardQuality {
    /// Sample-weighted over every facility's held-out rows (AUC as an approximation).
    pub pooled: Option<CardMetrics>,
    pub worst_facility: Option<String>,
    pub worst_auc: Option<f64>,
    pub best_auc: Option<f64>,
    /// Best minus worst facility AUC.
    pub auc_gap: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardPrivacy {
    /// The federation's privacy parameters exactly as its `FederationCreated` entry holds them.
    pub federation: serde_json::Value,
    /// Facility-level ε after this round (distributed or central mechanism), if any.
    pub facility_epsilon: Option<f64>,
    pub facility_delta: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardLedger {
    /// Index of the `RoundCommitted` entry behind this version (`None` for version 0).
    pub commit_index: Option<u64>,
    /// A head covering that entry, signed with the ledger key.
    pub signed_tree_head: SignedTreeHead,
    /// The ledger key as the coordinator states it (hex); check it against a pinned one.
    pub ledger_key: String,
    /// Inclusion proof of the commit entry under `signed_tree_head`.
    pub inclusion_proof: Vec<Sha256Digest>,
}

impl ModelCard {
    /// The canonical JSON (no trailing newline): what [`ModelCard::sha256`] covers.
    pub fn to_canonical_json(&self) -> Result<String, LedgerError> {
        let bytes = canonical::to_vec(self)?;
        String::from_utf8(bytes).map_err(|e| LedgerError::Encode(e.to_string()))
    }

    /// SHA-256 of the canonical JSON, the value the `ModelExported` entry records.
    pub fn sha256(&self) -> Result<Sha256Digest, LedgerError> {
        Ok(Sha256Digest::of(self.to_canonical_json()?.as_bytes()))
    }

    /// Parses a card (any JSON layout; the hash is over its canonical form).
    pub fn parse(text: &str) -> Result<ModelCard, String> {
        let card: ModelCard =
            serde_json::from_str(text).map_err(|e| format!("not a model card: {e}"))?;
        if card.format != CARD_FORMAT {
            return Err(format!(
                "model card format {:?}, this build reads {CARD_FORMAT:?}",
                card.format
            ));
        }
        Ok(card)
    }

    /// The card for people: the same figures, in Markdown.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        self.write_markdown(&mut out)
            .expect("writing to a String cannot fail");
        out
    }

    fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        let m = &self.model;
        let t = &self.training;
        writeln!(
            out,
            "# Model card: {} version {}",
            escape_markdown(&self.federation),
            m.version
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "Written by the coordinator at export. Check it against the privacy ledger with \
             `harambee-agent audit verify --ledger ledger.jsonl --ledger-key KEY --model-card \
             THIS.card.json`."
        )?;
        writeln!(out)?;
        writeln!(out, "## Intended use")?;
        writeln!(out)?;
        writeln!(out, "{}", escape_markdown(&self.intended_use))?;
        writeln!(out)?;
        writeln!(out, "## Model")?;
        writeln!(out)?;
        writeln!(out, "| | |")?;
        writeln!(out, "|---|---|")?;
        let hidden = if m.hidden.is_empty() {
            String::from("none")
        } else {
            join(m.hidden.iter())
        };
        writeln!(
            out,
            "| kind | {} (hidden layers: {hidden}) |",
            escape_markdown(&m.kind)
        )?;
        writeln!(out, "| parameters | {} |", m.n_params)?;
        writeln!(out, "| version | {} (round {}) |", m.version, m.round_id)?;
        writeln!(out, "| SHA-256 | `{}` |", m.sha256.to_hex())?;
        writeln!(out, "| label | {} |", escape_markdown(&m.label))?;
        writeln!(
            out,
            "| inputs | {} |",
            m.inputs
                .iter()
                .map(|i| escape_markdown(i))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "The schema (centres, scales, missing-value tokens) is fixed by the federation and \
             is in the JSON card under `model.schema`."
        )?;
        writeln!(out)?;
        writeln!(out, "## Training")?;
        writeln!(out)?;
        writeln!(
            out,
            "{} round(s) committed and {} failed up to this version; strategy {}; local \
             training {}; secure aggregation {}; at least {} facilities per round.",
            t.rounds_committed,
            t.rounds_failed,
            compact(&t.strategy),
            compact(&t.train),
            if t.secure_aggregation { "on" } else { "off" },
            t.min_agents
        )?;
        writeln!(out)?;
        writeln!(out, "## Facilities and quality")?;
        writeln!(out)?;
        writeln!(
            out,
            "Each facility scored this version on its own held-out rows and reported the \
             figures; the ledger does not hold them, the card's SHA-256 in the ledger does."
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "| facility | training rows | rounds | held-out rows | AUC | sensitivity | specificity | ECE | ε spent (δ) |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for f in &self.facilities {
            let metrics = f.metrics.as_ref();
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                escape_markdown(&f.facility),
                f.rows,
                f.rounds_contributed,
                metrics.map_or("-".into(), |x| x.n_samples.to_string()),
                figure(metrics.and_then(|x| x.auc)),
                figure(metrics.and_then(|x| x.sensitivity)),
                figure(metrics.and_then(|x| x.specificity)),
                figure(metrics.and_then(|x| x.ece)),
                match (f.epsilon_spent, f.delta) {
                    (Some(e), Some(d)) => format!("{e:.3} ({d:e})"),
                    (Some(e), None) => format!("{e:.3}"),
                    _ => "not reported".into(),
                }
            )?;
        }
        if let Some(p) = &self.quality.pooled {
            writeln!(
                out,
                "| **all facilities (sample-weighted)** | | | {} | {} | {} | {} | {} | |",
                p.n_samples,
                figure(p.auc),
                figure(p.sensitivity),
                figure(p.specificity),
                figure(p.ece)
            )?;
        }
        writeln!(out)?;
        if let (Some(worst), Some(w), Some(gap)) = (
            &self.quality.worst_facility,
            self.quality.worst_auc,
            self.quality.auc_gap,
        ) {
            writeln!(
                out,
                "Worst facility: **{}** (AUC {w:.3}); best minus worst AUC: {gap:.3}.",
                escape_markdown(worst)
            )?;
            writeln!(out)?;
        }
        writeln!(out, "## Privacy")?;
        writeln!(out)?;
        writeln!(
            out,
            "Federation privacy parameters (as the ledger records them): {}.",
            compact(&self.privacy.federation)
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "Patient-level (ε, δ): per facility above, each facility's own accountant over all \
             its rounds, from its signed receipts."
        )?;
        match (self.privacy.facility_epsilon, self.privacy.facility_delta) {
            (Some(e), Some(d)) => writeln!(
                out,
                "Facility-level (ε, δ) after this round: ({e:.3}, {d:e})."
            )?,
            _ => writeln!(out, "Facility-level noise: none.")?,
        }
        writeln!(out)?;
        writeln!(out, "## Ledger")?;
        writeln!(out)?;
        let head = &self.ledger.signed_tree_head.head;
        match self.ledger.commit_index {
            Some(i) => writeln!(
                out,
                "The commit of this version is ledger entry {i}, included in the tree head of \
                 size {} with root `{}` (signed at {} ms, ledger key `{}`).",
                head.tree_size,
                head.root_hash.to_hex(),
                head.timestamp_ms,
                self.ledger.ledger_key
            )?,
            None => writeln!(
                out,
                "Version 0 is the initial model; the ledger head at export had size {} and root `{}`.",
                head.tree_size,
                head.root_hash.to_hex()
            )?,
        }
        Ok(())
    }
}

/// Text from the configuration or the ledger, safe inside Markdown (and the HTML rendered from
/// it): Markdown punctuation is backslash-escaped, `<`, `>` and `&` become entities, line
/// breaks and other control characters become spaces. Not for inside code spans.
pub fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '!' | '(' | ')' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "default".into(),
        v => escape_markdown(&v.to_string()),
    }
}

fn figure(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.3}"))
}

/// What the ledger says about a version of `federation` made by `round_id`, counting the
/// entries up to its commit (`commit`, `None` for version 0: nothing is counted): the figures
/// a card restates. The coordinator fills the card from it and [`verify_card`] checks the card
/// against it, so both read the ledger the same way.
#[derive(Debug, Default)]
pub struct LedgerFigures<'a> {
    /// The federation's `FederationCreated` entry: its index and privacy parameters.
    pub created: Option<(u64, &'a serde_json::Value)>,
    pub rounds_committed: u64,
    pub rounds_failed: u64,
    /// Rounds of the federation each facility contributed to.
    pub rounds_contributed: BTreeMap<&'a str, u64>,
    /// Each facility's contribution to `round_id`, with its entry index.
    pub in_round: BTreeMap<&'a str, (u64, &'a Contribution)>,
}

pub fn ledger_figures<'a>(
    entries: &'a [LedgerLine],
    federation: &str,
    round_id: u64,
    commit: Option<u64>,
) -> LedgerFigures<'a> {
    let mut figures = LedgerFigures {
        created: entries.iter().find_map(|l| match &l.event {
            LedgerEvent::FederationCreated { name, privacy } if name == federation => {
                Some((l.index, privacy))
            }
            _ => None,
        }),
        ..LedgerFigures::default()
    };
    let Some(upto) = commit else {
        return figures;
    };
    for line in entries.iter().filter(|l| l.index <= upto) {
        match &line.event {
            LedgerEvent::RoundCommitted { federation: f, .. } if f == federation => {
                figures.rounds_committed += 1;
            }
            LedgerEvent::RoundFailed { federation: f, .. } if f == federation => {
                figures.rounds_failed += 1;
            }
            LedgerEvent::Contribution(c) if c.federation == federation => {
                *figures
                    .rounds_contributed
                    .entry(c.facility.as_str())
                    .or_default() += 1;
                if c.round_id == round_id {
                    figures
                        .in_round
                        .insert(c.facility.as_str(), (line.index, c));
                }
            }
            _ => {}
        }
    }
    figures
}

/// What [`verify_card`] found: the checks that passed and those that failed, each in words.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CardReport {
    pub passed: Vec<String>,
    pub failures: Vec<String>,
}

impl CardReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn check(&mut self, ok: bool, passed: impl Into<String>, failed: impl FnOnce() -> String) {
        if ok {
            self.passed.push(passed.into());
        } else {
            self.failures.push(failed());
        }
    }
}

/// Checks `card` against `entries` (a ledger export, verified separately with
/// [`crate::ledger::verify_ledger`]) and the pinned ledger key. See the module docs.
pub fn verify_card(card: &ModelCard, entries: &[LedgerLine], key: &VerifyingKey) -> CardReport {
    let mut report = CardReport::default();
    let head = &card.ledger.signed_tree_head;
    report.check(
        head.verify(key).is_ok(),
        "the card's tree head is signed with the pinned ledger key",
        || {
            format!(
                "the card's tree head (size {}) is not signed with the pinned ledger key",
                head.head.tree_size
            )
        },
    );
    let commit = check_commit(card, entries, &mut report);
    let federation = card.federation.as_str();
    let figures = ledger_figures(entries, federation, card.model.round_id, commit);

    match figures.created {
        Some((index, privacy)) => report.check(
            *privacy == card.privacy.federation,
            "privacy parameters equal the federation's FederationCreated entry",
            || {
                format!(
                    "privacy parameters: the card says {}, the ledger (entry {index}) {}",
                    card.privacy.federation, privacy
                )
            },
        ),
        None => report.failures.push(format!(
            "the ledger has no FederationCreated entry for federation {federation:?}"
        )),
    }

    let (committed, failed) = (figures.rounds_committed, figures.rounds_failed);
    report.check(
        committed == card.training.rounds_committed,
        format!("{committed} round(s) committed, as in the ledger"),
        || {
            format!(
                "rounds committed: the card says {}, the ledger {committed}",
                card.training.rounds_committed
            )
        },
    );
    report.check(
        failed == card.training.rounds_failed,
        format!("{failed} round(s) failed, as in the ledger"),
        || {
            format!(
                "rounds failed: the card says {}, the ledger {failed}",
                card.training.rounds_failed
            )
        },
    );

    let (in_round, rounds) = (&figures.in_round, &figures.rounds_contributed);
    let listed: BTreeSet<&str> = card
        .facilities
        .iter()
        .map(|f| f.facility.as_str())
        .collect();
    let ledger_set: BTreeSet<&str> = in_round.keys().copied().collect();
    report.check(
        listed == ledger_set,
        format!(
            "the {} contributing facilities are those of the ledger",
            listed.len()
        ),
        || {
            format!(
                "facilities: the card lists {}, the ledger's contributions to round {} are from {}",
                join(listed.iter()),
                card.model.round_id,
                join(ledger_set.iter())
            )
        },
    );
    for f in &card.facilities {
        let Some((index, c)) = in_round.get(f.facility.as_str()) else {
            continue;
        };
        let n = rounds.get(f.facility.as_str()).copied().unwrap_or(0);
        report.check(
            n == f.rounds_contributed,
            format!("{}: {n} round(s) contributed", f.facility),
            || {
                format!(
                    "{}: rounds contributed: the card says {}, the ledger {n}",
                    f.facility, f.rounds_contributed
                )
            },
        );
        let receipt = &c.receipt.receipt;
        report.check(
            f.epsilon_spent == Some(c.epsilon_spent) && f.delta == Some(receipt.delta),
            format!("{}: ε and δ as its signed receipt states", f.facility),
            || {
                format!(
                    "{}: ε spent (δ): the card says {:?} ({:?}), the receipt in entry {index} {} ({})",
                    f.facility, f.epsilon_spent, f.delta, c.epsilon_spent, receipt.delta
                )
            },
        );
    }

    // The link that covers every other figure.
    match card.sha256() {
        Ok(digest) => {
            let recorded = entries.iter().find_map(|l| match &l.event {
                LedgerEvent::ModelExported {
                    federation,
                    model_version,
                    model_sha256,
                    model_card_sha256: Some(d),
                    ..
                } if *d == digest => Some((l.index, federation, *model_version, *model_sha256)),
                _ => None,
            });
            match recorded {
                Some((index, federation, model_version, model_sha256)) => report.check(
                    federation == &card.federation
                        && model_version == card.model.version
                        && model_sha256 == card.model.sha256,
                    format!(
                        "the card's SHA-256 {} is recorded by the export in entry {index}",
                        digest.to_hex()
                    ),
                    || {
                        format!(
                            "entry {index} records this card for {federation} version \
                             {model_version} ({}), not for the card's model",
                            model_sha256.to_hex()
                        )
                    },
                ),
                None => report.failures.push(format!(
                    "no ModelExported entry records the card's SHA-256 {}: a figure in the card \
                     was changed after export, or the ledger export predates it",
                    digest.to_hex()
                )),
            }
        }
        Err(e) => report
            .failures
            .push(format!("the card cannot be encoded: {e}")),
    }
    report
}

/// Checks the commit entry and its inclusion proof; returns its index when they hold.
fn check_commit(card: &ModelCard, entries: &[LedgerLine], report: &mut CardReport) -> Option<u64> {
    let head = &card.ledger.signed_tree_head.head;
    let Some(index) = card.ledger.commit_index else {
        report.check(
            card.model.version == 0 && card.model.round_id == 0,
            "version 0 (the initial model) has no commit entry",
            || {
                format!(
                    "the card names no commit entry for version {}",
                    card.model.version
                )
            },
        );
        return None;
    };
    let Some(line) = usize::try_from(index)
        .ok()
        .and_then(|i| entries.get(i))
        .filter(|l| l.index == index)
    else {
        report.failures.push(format!(
            "the card's commit entry {index} is not in the ledger export ({} entries)",
            entries.len()
        ));
        return None;
    };
    let included = line.computed_leaf_hash().and_then(|leaf| {
        verify_inclusion(
            &leaf,
            index,
            head.tree_size,
            &card.ledger.inclusion_proof,
            &head.root_hash,
        )
    });
    report.check(
        included.is_ok(),
        format!(
            "entry {index} is included in the card's tree head of size {}",
            head.tree_size
        ),
        || {
            format!(
                "entry {index} is not shown included in the card's tree head: {}",
                included
                    .as_ref()
                    .err()
                    .map_or(String::new(), ToString::to_string)
            )
        },
    );
    match &line.event {
        LedgerEvent::RoundCommitted {
            federation,
            round_id,
            model_version,
            model_sha256,
        } => {
            let m = &card.model;
            let mut differ = Vec::new();
            if *federation != card.federation {
                differ.push(format!(
                    "federation: the card says {:?}, the ledger {federation:?}",
                    card.federation
                ));
            }
            if *round_id != m.round_id {
                differ.push(format!(
                    "round: the card says {}, the ledger {round_id}",
                    m.round_id
                ));
            }
            if *model_version != m.version {
                differ.push(format!(
                    "version: the card says {}, the ledger {model_version}",
                    m.version
                ));
            }
            if *model_sha256 != m.sha256 {
                differ.push(format!(
                    "model SHA-256: the card says {}, the ledger {}",
                    m.sha256.to_hex(),
                    model_sha256.to_hex()
                ));
            }
            let ok = differ.is_empty();
            report.check(
                ok,
                format!(
                    "entry {index} commits version {} of {} with SHA-256 {}",
                    m.version,
                    card.federation,
                    m.sha256.to_hex()
                ),
                || format!("commit entry {index}: {}", differ.join("; ")),
            );
            ok.then_some(index)
        }
        other => {
            report.failures.push(format!(
                "the card's commit entry {index} is not a round commit but {}",
                event_kind(other)
            ));
            None
        }
    }
}

fn event_kind(event: &LedgerEvent) -> String {
    serde_json::to_value(event)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "an unknown entry".into())
}
