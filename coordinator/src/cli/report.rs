//! `harambee-coordinator audit report`: the records a data-protection officer and a security
//! office ask for, filled from the privacy ledger and the federations' configuration.
//!
//! - `art30-<federation>.md|html`: a GDPR Art. 30(1) record of processing activities per
//!   federation. Each of (a) to (g) is filled from the configuration and the ledger where they
//!   hold the answer; what only a person can answer is marked `TO COMPLETE`.
//! - `audit-controls.md|html`: a HIPAA §164.312(b) audit-control report: who did what and when
//!   (enrolments, revocations, certificates, federations, exports, operator actions, key
//!   rotations), each with its ledger entry.
//! - `privacy-spend.md|html|svg`: each facility's patient-level ε over time, from the ε its
//!   signed receipts state, as a table and a plot.
//!
//! Everything here is formatting of what it is given; the command fetches the ledger export
//! and the federations, checks the export's tree, and writes the files. Text from the ledger
//! (names, operators' free text) is escaped, and the HTML renderer drops raw HTML, so a
//! federation or facility name cannot inject markup into a report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use harambee_privacy::card::{TO_COMPLETE, escape_markdown as md};
use harambee_privacy::ledger::{LedgerEvent, LedgerLine, SignedTreeHead};
use harambee_proto::pb;

use crate::console::html::esc;

/// The documents of one report, by file stem: Markdown, plus the plot as SVG.
pub struct Report {
    pub documents: Vec<(String, String)>,
    pub spend_svg: String,
}

/// What the ledger export says about itself, for the reports' headers.
pub struct LedgerFacts<'a> {
    pub entries: &'a [LedgerLine],
    pub head: &'a SignedTreeHead,
    pub key_fingerprint: &'a str,
    /// Whether the export's tree, leaves and head signature verified (with the key it states).
    pub verified: bool,
}

pub fn report(ledger: &LedgerFacts<'_>, federations: &[pb::Federation], now_ms: i64) -> Report {
    let mut documents = Vec::new();
    for federation in federations {
        let Some(config) = &federation.config else {
            continue;
        };
        documents.push((
            format!("art30-{}", file_stem(&config.name)),
            art30(ledger, config, now_ms),
        ));
    }
    documents.push(("audit-controls".into(), audit_controls(ledger, now_ms)));
    let (spend, spend_svg) = privacy_spend(ledger, now_ms);
    documents.push(("privacy-spend".into(), spend));
    Report {
        documents,
        spend_svg,
    }
}

/// A file name from a federation name: letters, digits, `-` and `_` kept, the rest `_`.
pub fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `2026-12-04 19:58:02 UTC`.
pub fn utc(unix_ms: u64) -> String {
    i64::try_from(unix_ms)
        .ok()
        .and_then(crate::cli::utc_date)
        .map_or_else(|| format!("{unix_ms} ms"), |date| format!("{date} UTC"))
}

fn header(
    out: &mut String,
    title: &str,
    ledger: &LedgerFacts<'_>,
    now_ms: i64,
) -> std::fmt::Result {
    writeln!(out, "# {title}")?;
    writeln!(out)?;
    let head = &ledger.head.head;
    writeln!(
        out,
        "Generated {} from the privacy ledger: {} entries, tree head root `{}` signed {} by the \
         ledger key {}. The export {}. Check it independently with `harambee-agent audit verify \
         --ledger ledger.jsonl --ledger-key KEY`, with the key obtained apart from this report.",
        utc(now_ms.max(0) as u64),
        head.tree_size,
        head.root_hash.to_hex(),
        utc(head.timestamp_ms),
        md(ledger.key_fingerprint),
        if ledger.verified {
            "verifies against that head (tree, leaves and signature)"
        } else {
            "does NOT verify against that head: do not rely on this report"
        }
    )?;
    writeln!(out)
}

fn art30(ledger: &LedgerFacts<'_>, config: &pb::FederationConfig, now_ms: i64) -> String {
    let mut out = String::new();
    write_art30(&mut out, ledger, config, now_ms).expect("writing to a String cannot fail");
    out
}

fn write_art30(
    out: &mut String,
    ledger: &LedgerFacts<'_>,
    config: &pb::FederationConfig,
    now_ms: i64,
) -> std::fmt::Result {
    let name = config.name.as_str();
    header(
        out,
        &format!(
            "Record of processing activities (GDPR Art. 30(1)): federation {}",
            md(name)
        ),
        ledger,
        now_ms,
    )?;
    let model = config.model.clone().unwrap_or_default();
    let schema = model.schema.clone().unwrap_or_default();
    let privacy = config.privacy.clone().unwrap_or_default();
    let secure = config.secure_aggregation.unwrap_or_default();

    let mut contributors: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut committed, mut failed) = (0, 0);
    let mut exports = Vec::new();
    let mut created = None;
    for line in ledger.entries {
        match &line.event {
            LedgerEvent::Contribution(c) if c.federation == name => {
                *contributors.entry(c.facility.as_str()).or_default() += 1;
            }
            LedgerEvent::RoundCommitted { federation, .. } if federation == name => committed += 1,
            LedgerEvent::RoundFailed { federation, .. } if federation == name => failed += 1,
            LedgerEvent::ModelExported {
                federation,
                model_version,
                actor,
                ..
            } if federation == name => exports.push((line, *model_version, actor.as_str())),
            LedgerEvent::FederationCreated {
                name: created_name,
                privacy,
            } if created_name == name => created = Some((line, privacy)),
            _ => {}
        }
    }

    writeln!(out, "| Art. 30(1) | Record |")?;
    writeln!(out, "|---|---|")?;
    writeln!(
        out,
        "| (a) controller, joint controllers, representative, DPO | **{TO_COMPLETE}**: the national unit running the coordinator and each participating facility (each facility remains controller of its own patient records) |"
    )?;
    let purpose = if config.intended_use.trim().is_empty() {
        format!("**{TO_COMPLETE}** (the federation states no `intended_use`)")
    } else {
        md(&config.intended_use)
    };
    writeln!(
        out,
        "| (b) purposes | Training the {} model of federation {} by federated learning. Intended use: {purpose} |",
        md(&model.kind),
        md(name)
    )?;
    let mut inputs: Vec<String> = schema.features.iter().map(|f| md(&f.column)).collect();
    if inputs.is_empty() {
        inputs.push("none stated".into());
    }
    writeln!(
        out,
        "| (c) categories of data subjects | Patients whose records are held by the contributing facilities ({}). **{TO_COMPLETE}**: the population each facility's data covers |",
        if contributors.is_empty() {
            "none has contributed yet".to_owned()
        } else {
            contributors
                .keys()
                .map(|f| md(f))
                .collect::<Vec<_>>()
                .join(", ")
        }
    )?;
    writeln!(
        out,
        "| (c) categories of personal data | Health data (GDPR Art. 9): the inputs {} and the label {}. They are read inside each facility; no patient row leaves it |",
        inputs.join(", "),
        md(&schema.label)
    )?;
    writeln!(
        out,
        "| (d) recipients | The coordinator receives {} and each facility's number of training rows and evaluation metrics; {} |",
        if secure.enabled {
            "only the sum of the facilities' model updates (secure aggregation)"
        } else {
            "each facility's model update (secure aggregation is OFF)"
        },
        if exports.is_empty() {
            "no model has been exported".to_owned()
        } else {
            format!(
                "models exported {} time(s), by {}",
                exports.len(),
                exports
                    .iter()
                    .map(|(_, _, a)| md(a))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    )?;
    writeln!(
        out,
        "| (e) transfers to third countries | No patient data is transferred. **{TO_COMPLETE}**: where the coordinator and the recipients of exported models are located |"
    )?;
    writeln!(
        out,
        "| (f) time limits for erasure | **{TO_COMPLETE}**: retention of model versions, uploads (`blob_retention_h`) and the ledger (kept whole: it is append-only) |"
    )?;
    let dp = match &privacy.dp_sgd {
        Some(d) => format!(
            "patient-level DP-SGD (clip {}, noise multiplier {}, sampling rate {}), each facility's ε accounted by its own agent against its own budget",
            d.clip_norm, d.noise_multiplier, d.sampling_rate
        ),
        None => "no patient-level DP-SGD".to_owned(),
    };
    let mechanism = match privacy.mechanism.as_str() {
        "" | "none" => "no facility-level noise".to_owned(),
        m => format!(
            "facility-level {} noise (clip {}, noise multiplier {}, δ {})",
            md(m),
            privacy.clip_norm,
            privacy.noise_multiplier,
            privacy.delta
        ),
    };
    writeln!(
        out,
        "| (g) technical and organisational measures (Art. 32) | Mutual TLS 1.3 with certificates per facility and role; secure aggregation {}; {dp}; {mechanism}; every facility's policy and budget enforced by its own agent; an append-only Merkle privacy ledger with signed tree heads, countersigned by the facilities. **{TO_COMPLETE}**: organisational measures |",
        if secure.enabled { "on" } else { "OFF" }
    )?;
    writeln!(out)?;
    writeln!(out, "## From the ledger")?;
    writeln!(out)?;
    match created {
        Some((line, privacy)) => writeln!(
            out,
            "- Created at entry {} ({}), privacy parameters {}.",
            line.index,
            utc(line.timestamp_ms),
            md(&privacy.to_string())
        )?,
        None => writeln!(out, "- No FederationCreated entry in this export.")?,
    }
    writeln!(out, "- Rounds: {committed} committed, {failed} failed.")?;
    for (facility, n) in &contributors {
        writeln!(out, "- {}: {n} contribution(s).", md(facility))?;
    }
    for (line, version, actor) in &exports {
        writeln!(
            out,
            "- Entry {}: version {version} exported by {} ({}).",
            line.index,
            md(actor),
            utc(line.timestamp_ms)
        )?;
    }
    Ok(())
}

fn audit_controls(ledger: &LedgerFacts<'_>, now_ms: i64) -> String {
    let mut out = String::new();
    write_audit_controls(&mut out, ledger, now_ms).expect("writing to a String cannot fail");
    out
}

fn write_audit_controls(
    out: &mut String,
    ledger: &LedgerFacts<'_>,
    now_ms: i64,
) -> std::fmt::Result {
    header(
        out,
        "Audit controls (HIPAA §164.312(b)): who did what, and when",
        ledger,
        now_ms,
    )?;
    writeln!(
        out,
        "Every enrolment, revocation, certificate change, federation, model export, operator \
         action and ledger-key rotation, in ledger order. Rounds and contributions are counted \
         at the end; each is in the ledger export."
    )?;
    writeln!(out)?;
    writeln!(out, "| entry | time | who | what | subject | detail |")?;
    writeln!(out, "|---:|---|---|---|---|---|")?;
    let (mut rounds, mut contributions) = (0u64, 0u64);
    for line in ledger.entries {
        let row = match &line.event {
            LedgerEvent::FacilityEnrolled { facility, .. } => Some((
                "coordinator",
                "facility enrolled",
                facility.clone(),
                String::new(),
            )),
            LedgerEvent::FacilityRevoked { facility, reason } => Some((
                "coordinator",
                "facility revoked",
                facility.clone(),
                reason.clone(),
            )),
            LedgerEvent::FederationCreated { name, .. } => Some((
                "coordinator",
                "federation created",
                name.clone(),
                String::new(),
            )),
            LedgerEvent::ModelExported {
                federation,
                model_version,
                actor,
                ..
            } => Some((
                actor.as_str(),
                "model exported",
                federation.clone(),
                format!("version {model_version}"),
            )),
            LedgerEvent::AdminAction {
                actor,
                action,
                detail,
            } => Some((
                actor.as_str(),
                action.as_str(),
                String::new(),
                detail.clone(),
            )),
            LedgerEvent::Certificate {
                change,
                identity,
                serial,
                detail,
                ..
            } => Some((
                "coordinator",
                match change {
                    harambee_privacy::ledger::event::CertificateChange::Renewed => {
                        "certificate renewed"
                    }
                    harambee_privacy::ledger::event::CertificateChange::Revoked => {
                        "certificate revoked"
                    }
                },
                identity.clone(),
                format!("serial {serial} {detail}"),
            )),
            LedgerEvent::LedgerKeyRotated { new_key, .. } => Some((
                "coordinator",
                "ledger key rotated",
                String::new(),
                harambee_privacy::ledger::key_fingerprint(new_key),
            )),
            LedgerEvent::RoundCommitted { .. } | LedgerEvent::RoundFailed { .. } => {
                rounds += 1;
                None
            }
            LedgerEvent::Contribution(_) => {
                contributions += 1;
                None
            }
            LedgerEvent::RoundStarted { .. } | LedgerEvent::Dropout { .. } => None,
        };
        if let Some((who, what, subject, detail)) = row {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                line.index,
                utc(line.timestamp_ms),
                md(who),
                md(what),
                md(&subject),
                md(&detail)
            )?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "Rounds ended: {rounds}. Facility contributions (updates that left a facility, each with its signed egress receipt): {contributions}."
    )
}

/// Each facility's ε after each of its contributions: (time, ε, federation, round).
type Spend<'a> = BTreeMap<&'a str, Vec<(u64, f64, &'a str, u64)>>;

fn spend_points<'a>(entries: &'a [LedgerLine]) -> Spend<'a> {
    let mut spend: Spend<'a> = BTreeMap::new();
    for line in entries {
        if let LedgerEvent::Contribution(c) = &line.event {
            spend.entry(c.facility.as_str()).or_default().push((
                line.timestamp_ms,
                c.epsilon_spent,
                c.federation.as_str(),
                c.round_id,
            ));
        }
    }
    spend
}

fn privacy_spend(ledger: &LedgerFacts<'_>, now_ms: i64) -> (String, String) {
    let spend = spend_points(ledger.entries);
    let mut out = String::new();
    let _ = header(
        &mut out,
        "Patient-level privacy spend per facility",
        ledger,
        now_ms,
    );
    let _ = writeln!(
        out,
        "ε after each contribution, as the facility's signed egress receipt states it (its own \
         accountant, over all its federations), with the receipt's δ.\n\n![ε per facility over \
         time](privacy-spend.svg)\n"
    );
    let _ = writeln!(out, "| facility | time | federation | round | ε spent |");
    let _ = writeln!(out, "|---|---|---|---:|---:|");
    for (facility, points) in &spend {
        for (t, eps, federation, round) in points {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {round} | {eps:.4} |",
                md(facility),
                utc(*t),
                md(federation)
            );
        }
    }
    (out, spend_svg(&spend))
}

/// A line per facility, ε against time; each line is labelled with the facility's name at its
/// end (colour is never the only cue) and dashed differently.
fn spend_svg(spend: &Spend<'_>) -> String {
    const W: f64 = 720.0;
    const H: f64 = 360.0;
    const L: f64 = 60.0;
    const R: f64 = 170.0;
    const T: f64 = 20.0;
    const B: f64 = 40.0;
    let colours = [
        "#1b6ca8", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#2c3e50",
    ];
    let dashes = ["", "6 3", "2 3", "8 3 2 3", "1 2", "10 4"];
    let points: Vec<(u64, f64)> = spend.values().flatten().map(|p| (p.0, p.1)).collect();
    let (t0, t1) = points
        .iter()
        .fold((u64::MAX, 0), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let e1 = points.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9);
    let x = |t: u64| {
        if t1 > t0 {
            L + (t - t0) as f64 / (t1 - t0) as f64 * (W - L - R)
        } else {
            L
        }
    };
    let y = |e: f64| H - B - e / e1 * (H - T - B);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-labelledby="title"><title id="title">Patient-level ε spent per facility over time</title>"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="{W}" height="{H}" fill="#fff"/><line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="#333"/>"##,
        H - B,
        W - R,
        H - B,
        H - B
    );
    let _ = writeln!(
        svg,
        r#"<text x="{L}" y="{}" font-size="12" font-family="sans-serif">{}</text><text x="{}" y="{}" font-size="12" font-family="sans-serif" text-anchor="end">{}</text>"#,
        H - 12.0,
        esc(&utc(if points.is_empty() { 0 } else { t0 })),
        W - R,
        H - 12.0,
        esc(&utc(t1))
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="12" font-family="sans-serif" text-anchor="end">ε {e1:.2}</text><text x="{}" y="{}" font-size="12" font-family="sans-serif" text-anchor="end">0</text>"#,
        L - 6.0,
        T + 4.0,
        L - 6.0,
        H - B
    );
    for (i, (facility, pts)) in spend.iter().enumerate() {
        let (colour, dash) = (colours[i % colours.len()], dashes[i % dashes.len()]);
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}" points="{}"><title>{}</title></polyline>"#,
            path.join(" "),
            esc(facility)
        );
        if let Some(last) = pts.last() {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" font-size="12" font-family="sans-serif" fill="{colour}">{} ({:.2})</text>"#,
                x(last.0) + 6.0,
                y(last.1) + 4.0 + 12.0 * (i as f64 % 3.0) - 12.0,
                esc(facility),
                last.1
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The HTML page of a Markdown document: raw HTML in the Markdown is shown as text, never
/// passed through.
pub fn to_html(title: &str, markdown: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, html};
    let parser = Parser::new_ext(markdown, Options::ENABLE_TABLES).map(|event| match event {
        Event::Html(text) | Event::InlineHtml(text) => Event::Text(text),
        other => other,
    });
    let mut body = String::new();
    html::push_html(&mut body, parser);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width, initial-scale=1\"><title>{}</title><style>body{{font-family:\
         sans-serif;max-width:72rem;margin:1rem auto;padding:0 1rem;line-height:1.4}}table{{border-\
         collapse:collapse}}td,th{{border:1px solid #999;padding:.25rem .5rem;vertical-align:top}}\
         img{{max-width:100%}}</style></head><body>\n{body}</body></html>\n",
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use harambee_privacy::ledger::Ledger;

    fn facts(ledger: &Ledger) -> (Vec<LedgerLine>, SignedTreeHead) {
        let head = ledger.sign_head(1_800_000_000_000, &SigningKey::from_bytes(&[3; 32]));
        (ledger.lines().to_vec(), head)
    }

    #[test]
    fn names_from_the_ledger_cannot_inject_markup() {
        let mut ledger = Ledger::new();
        ledger
            .append(
                1_800_000_000_000,
                LedgerEvent::AdminAction {
                    actor: "harambee://operator/ops".into(),
                    action: "pause".into(),
                    detail: "<script>alert(1)</script> | [x](javascript:alert(1))".into(),
                },
            )
            .unwrap();
        let (entries, head) = facts(&ledger);
        let facts = LedgerFacts {
            entries: &entries,
            head: &head,
            key_fingerprint: "sha256:00",
            verified: true,
        };
        let report = report(&facts, &[], 1_800_000_000_000);
        let (_, controls) = report
            .documents
            .iter()
            .find(|(name, _)| name == "audit-controls")
            .unwrap();
        let html = to_html("audit controls", controls);
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("href=\"javascript"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        // A raw HTML block in Markdown is shown as text, not passed through.
        assert!(!to_html("t", "<b onclick=x>hi</b>\n").contains("<b onclick"));
    }

    #[test]
    fn file_stems_stay_in_the_directory() {
        assert_eq!(file_stem("../../etc/passwd"), "______etc_passwd");
        assert_eq!(file_stem("heart-disease"), "heart-disease");
    }
}
