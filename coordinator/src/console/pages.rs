//! The pages, rendered from what the coordinator (or an export) says: pure functions of
//! their inputs, so that tests and the benchmark render them without a server.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use harambee_privacy::audit;
use harambee_proto::pb;

use super::html::{self, Frame, NavItem, Series, Tone, esc, status, url_part};
use super::ledger::{self, Checked, Verdict};
use crate::cli::{date_and_age, progress_line};

/// Whose certificate the console acts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sees everything an operator may read, and revokes and exports.
    Operator,
    /// Reads, and browses the privacy ledger.
    Auditor,
    /// An exported ledger from files, no coordinator.
    Offline,
}

/// What every page needs besides its data.
pub struct Ctx<'a> {
    pub role: Role,
    /// `operator admin`, `auditor moh-audit`, `offline ledger ledger.jsonl`.
    pub acting_as: &'a str,
    pub csrf: &'a str,
    pub now_ms: i64,
}

const OPERATOR_NAV: &[NavItem] = &[
    NavItem {
        path: "/",
        label: "Overview",
    },
    NavItem {
        path: "/facilities",
        label: "Facilities",
    },
    NavItem {
        path: "/downloads",
        label: "Downloads",
    },
];
const AUDITOR_NAV: &[NavItem] = &[
    NavItem {
        path: "/",
        label: "Overview",
    },
    NavItem {
        path: "/facilities",
        label: "Facilities",
    },
    NavItem {
        path: "/ledger",
        label: "Privacy ledger",
    },
    NavItem {
        path: "/downloads",
        label: "Downloads",
    },
];
const OFFLINE_NAV: &[NavItem] = &[
    NavItem {
        path: "/ledger",
        label: "Privacy ledger",
    },
    NavItem {
        path: "/downloads",
        label: "Downloads",
    },
];

impl Ctx<'_> {
    /// The page frame around `body`.
    pub fn page(&self, title: &str, current: &str, refresh_s: Option<u32>, body: &str) -> String {
        let nav = match self.role {
            Role::Operator => OPERATOR_NAV,
            Role::Auditor => AUDITOR_NAV,
            Role::Offline => OFFLINE_NAV,
        };
        Frame {
            title,
            current,
            nav,
            acting_as: self.acting_as,
            refresh_s,
        }
        .render(body)
    }

    fn csrf_field(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(self.csrf)
        )
    }
}

/// `selecting`, `masked input`, ...
pub fn state_word(round: &pb::Round) -> String {
    round
        .state()
        .as_str_name()
        .trim_start_matches("ROUND_STATE_")
        .to_lowercase()
        .replace('_', " ")
}

fn state_status(round: &pb::Round) -> String {
    let tone = match round.state() {
        pb::RoundState::Committed => Tone::Good,
        pb::RoundState::Failed => Tone::Bad,
        _ => Tone::Warn,
    };
    status(&state_word(round), tone)
}

fn is_running(round: &pb::Round) -> bool {
    !matches!(
        round.state(),
        pb::RoundState::Committed | pb::RoundState::Failed
    )
}

fn participant_word(p: &pb::Participant) -> &'static str {
    match p.status() {
        pb::ParticipantStatus::Uploaded => "uploaded",
        pb::ParticipantStatus::Rejected => "rejected",
        pb::ParticipantStatus::Dropped => "dropped",
        pb::ParticipantStatus::Selected => "selected",
        pb::ParticipantStatus::Unspecified => "unknown",
    }
}

fn table(head: &[&str], rows: &str) -> String {
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    for h in head {
        let class = if h.starts_with('#') {
            " class=\"num\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<th scope=\"col\"{class}>{}</th>",
            h.trim_start_matches('#')
        );
    }
    out.push_str("</tr></thead><tbody>");
    out.push_str(rows);
    out.push_str("</tbody></table></div>");
    out
}

/// Days from `now_ms` until `until_ms`, as a status word.
fn expiry(until_ms: i64, now_ms: i64) -> String {
    if until_ms <= 0 {
        return status("unknown", Tone::Neutral);
    }
    let days = (until_ms - now_ms).div_euclid(86_400_000);
    match days {
        d if d < 0 => status("expired", Tone::Bad),
        d if d < 14 => status(&format!("{d} days left"), Tone::Warn),
        d => status(&format!("{d} days left"), Tone::Good),
    }
}

/// One row per facility: whatever the identity service and the agent registry say of it.
#[derive(Default)]
pub struct FacilityRow<'a> {
    pub name: &'a str,
    pub facility: Option<&'a pb::Facility>,
    pub agent: Option<&'a pb::Agent>,
    pub spend: Option<&'a pb::PrivacySpend>,
}

/// Joins facilities (enrolled here), agents (ever connected) and privacy spend by name.
pub fn facility_rows<'a>(
    facilities: &'a [pb::Facility],
    agents: &'a [pb::Agent],
    spend: &'a [pb::PrivacySpend],
) -> Vec<FacilityRow<'a>> {
    let mut rows: BTreeMap<&str, FacilityRow<'a>> = BTreeMap::new();
    for f in facilities {
        rows.entry(&f.name).or_default().facility = Some(f);
    }
    for a in agents {
        rows.entry(&a.facility).or_default().agent = Some(a);
    }
    for s in spend {
        rows.entry(&s.facility).or_default().spend = Some(s);
    }
    rows.into_iter()
        .map(|(name, mut row)| {
            row.name = name;
            row
        })
        .collect()
}

/// The certificate a connected agent presented, else the latest this coordinator issued.
fn cert_not_after(row: &FacilityRow<'_>) -> i64 {
    row.agent
        .map(|a| a.cert_not_after_unix_ms)
        .filter(|&t| t > 0)
        .or(row.facility.map(|f| f.cert_not_after_unix_ms))
        .unwrap_or(0)
}

fn liveness(row: &FacilityRow<'_>) -> String {
    if row.facility.is_some_and(|f| f.status == "revoked") {
        return status("revoked", Tone::Bad);
    }
    match row.agent {
        Some(a) if a.connected => status("connected", Tone::Good),
        Some(_) => status("offline", Tone::Bad),
        None => status("never connected", Tone::Neutral),
    }
}

/// The overview: federations, running rounds, agents, recent failures.
pub fn overview(
    ctx: &Ctx<'_>,
    federations: &[pb::Federation],
    rounds: &BTreeMap<String, Vec<pb::Round>>,
    agents: &[pb::Agent],
    facilities: &[pb::Facility],
) -> String {
    let mut body = String::new();
    let running: Vec<&pb::Round> = rounds
        .values()
        .flatten()
        .filter(|r| is_running(r))
        .collect();
    body.push_str("<h2>Federations</h2>");
    if federations.is_empty() {
        body.push_str("<p>No federation yet.</p>");
    } else {
        let mut rows = String::new();
        for fed in federations {
            let config = fed.config.clone().unwrap_or_default();
            let latest = fed.latest.clone().unwrap_or_default();
            let list = rounds.get(&config.name).map(Vec::as_slice).unwrap_or(&[]);
            let last = list.iter().max_by_key(|r| r.id);
            let last = last.map_or_else(
                || "no round yet".to_owned(),
                |r| format!("#{} {}", r.number, state_status(r)),
            );
            let _ = write!(
                rows,
                "<tr><td><a href=\"/federation/{}\">{}</a></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{last}</td><td><code>{}</code></td></tr>",
                url_part(&config.name),
                esc(&config.name),
                esc(&config.model.unwrap_or_default().kind),
                latest.version,
                list.len(),
                esc(&latest.digest.chars().take(16).collect::<String>())
            );
        }
        body.push_str(&table(
            &[
                "Federation",
                "Model",
                "#Version",
                "#Rounds",
                "Last round",
                "Latest SHA-256",
            ],
            &rows,
        ));
    }
    body.push_str("<h2>Running rounds</h2>");
    if running.is_empty() {
        body.push_str("<p>No round is running.</p>");
    } else {
        body.push_str("<div class=\"cards\">");
        for r in &running {
            let _ = write!(
                body,
                "<div class=\"card\"><strong>{}</strong> round #{}: {}<br><span>{}</span></div>",
                esc(&r.federation),
                r.number,
                state_status(r),
                esc(&progress_line(r))
            );
        }
        body.push_str("</div>");
    }
    body.push_str("<h2>Agents</h2>");
    let rows_data = facility_rows(facilities, agents, &[]);
    if rows_data.is_empty() {
        body.push_str("<p>No facility has connected yet.</p>");
    } else {
        let mut rows = String::new();
        for row in &rows_data {
            let last = row.agent.map_or_else(
                || "never".to_owned(),
                |a| date_and_age(a.last_seen_unix_ms, ctx.now_ms),
            );
            let cert = expiry(cert_not_after(row), ctx.now_ms);
            let version = row
                .agent
                .map(|a| a.agent_version.as_str())
                .filter(|v| !v.is_empty())
                .unwrap_or("-");
            let _ = write!(
                rows,
                "<tr data-facility=\"{}\"><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{cert}</td><td>{}</td></tr>",
                esc(row.name),
                esc(row.name),
                liveness(row),
                esc(&last),
                esc(version)
            );
        }
        body.push_str(&table(
            &[
                "Facility",
                "Liveness",
                "Last heartbeat (UTC)",
                "Certificate",
                "Agent version",
            ],
            &rows,
        ));
    }
    body.push_str("<h2>Recent failures</h2>");
    let mut failed: Vec<&pb::Round> = rounds
        .values()
        .flatten()
        .filter(|r| r.state() == pb::RoundState::Failed)
        .collect();
    failed.sort_by_key(|r| std::cmp::Reverse(r.updated_unix_ms));
    if failed.is_empty() {
        body.push_str("<p>No round has failed.</p>");
    } else {
        let mut rows = String::new();
        for r in failed.iter().take(10) {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.federation),
                r.number,
                esc(&date_and_age(r.updated_unix_ms, ctx.now_ms)),
                esc(&r.failure_reason)
            );
        }
        body.push_str(&table(
            &["Federation", "#Round", "When (UTC)", "Reason"],
            &rows,
        ));
    }
    let refresh = (!running.is_empty()).then_some(5);
    ctx.page("Overview", "/", refresh, &body)
}

/// One metric of a facility's report.
type Metric = fn(&pb::Metrics) -> f64;

/// Values of one metric per facility across committed and failed rounds, by round number.
fn metric_series<'a>(rounds: &'a [pb::Round], metric: fn(&pb::Metrics) -> f64) -> Vec<Series<'a>> {
    let mut by_facility: BTreeMap<&str, Vec<(u32, f64)>> = BTreeMap::new();
    for r in rounds {
        for p in &r.participants {
            if let Some(m) = &p.metrics {
                let v = metric(m);
                if v.is_finite() {
                    by_facility
                        .entry(p.facility.as_str())
                        .or_default()
                        .push((r.number, v));
                }
            }
        }
    }
    by_facility
        .into_iter()
        .map(|(name, mut points)| {
            points.sort_by_key(|p| p.0);
            Series { name, points }
        })
        .collect()
}

/// `advertise keys`, ... for a stored state number.
fn stage_word(state: i32) -> String {
    pb::RoundState::try_from(state)
        .unwrap_or(pb::RoundState::Unspecified)
        .as_str_name()
        .trim_start_matches("ROUND_STATE_")
        .to_lowercase()
        .replace('_', " ")
}

/// The stage a dropped facility was lost in: secure aggregation names it in the detail
/// (`dropped at masked input: ...`); every other dropout happens while training.
fn dropped_in(p: &pb::Participant) -> String {
    p.detail
        .strip_prefix("dropped at ")
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(|| "training".to_owned(), |(stage, _)| stage.to_owned())
}

/// How long a round spent in each stage, and the facilities dropped in it: a stage lasts
/// until the next one starts (a running round's current one, until now).
fn stage_durations(r: &pb::Round, now_ms: i64) -> String {
    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    for p in &r.participants {
        if p.status() == pb::ParticipantStatus::Dropped {
            *dropped.entry(dropped_in(p)).or_default() += 1;
        }
    }
    if r.stages.is_empty() {
        return "not recorded".to_owned();
    }
    let mut out = String::from("<ul class=\"stages\">");
    for (idx, stage) in r.stages.iter().enumerate() {
        let end = match r.stages.get(idx + 1) {
            Some(next) => next.started_unix_ms,
            None if is_running(r) => now_ms,
            // The terminal state: the round's end, not a stage.
            None => break,
        };
        let word = stage_word(stage.state);
        let seconds = (end - stage.started_unix_ms).max(0) as f64 / 1000.0;
        let lost = match dropped.remove(&word) {
            Some(n) => format!(", {n} dropped"),
            None => String::new(),
        };
        let so_far = if idx + 1 == r.stages.len() {
            " so far"
        } else {
            ""
        };
        // Hundredths below ten seconds, where a fast stage would otherwise read 0.0.
        let seconds = if seconds < 10.0 {
            format!("{seconds:.2}")
        } else {
            format!("{seconds:.1}")
        };
        let _ = write!(out, "<li>{} {seconds} s{so_far}{lost}</li>", esc(&word));
    }
    // Dropouts in a stage that left no row (a consistency check within unmasking).
    for (word, n) in dropped {
        let _ = write!(out, "<li>{} dropped in {}</li>", n, esc(&word));
    }
    out.push_str("</ul>");
    out
}

/// A federation: rounds, metric plots, worst facility and gap, model versions.
pub fn federation(ctx: &Ctx<'_>, fed: &pb::Federation, rounds: &[pb::Round]) -> String {
    let config = fed.config.clone().unwrap_or_default();
    let name = config.name.clone();
    let mut rounds: Vec<&pb::Round> = rounds.iter().collect();
    rounds.sort_by_key(|r| r.number);
    // The plots show the latest rounds, within a budget of points per plot.
    let n_facilities = rounds
        .iter()
        .map(|r| r.participants.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_rounds = (PLOT_POINTS / n_facilities).max(10);
    let plotted = &rounds[rounds.len().saturating_sub(plot_rounds)..];
    let owned: Vec<pb::Round> = plotted.iter().map(|r| (*r).clone()).collect();
    let mut body = String::new();
    let _ = write!(
        body,
        "<p>Model {}, at least {} facilities per round, secure aggregation {}.</p>",
        esc(&config.model.clone().unwrap_or_default().kind),
        config.min_agents,
        if config.secure_aggregation.is_some_and(|s| s.enabled) {
            "on"
        } else {
            "off"
        }
    );
    body.push_str("<h2>Quality per facility</h2>");
    if plotted.len() < rounds.len() {
        let _ = write!(
            body,
            "<p>The latest {} of {} rounds; <a href=\"/download/metrics.csv\">metrics.csv</a> has them all.</p>",
            plotted.len(),
            rounds.len()
        );
    }
    body.push_str("<div class=\"plots\">");
    let metrics: [(&str, &str, Metric); 4] = [
        ("plot-auc", "AUC", |m| m.auc),
        ("plot-sensitivity", "Sensitivity", |m| m.sensitivity),
        ("plot-specificity", "Specificity", |m| m.specificity),
        ("plot-ece", "Calibration error (ECE)", |m| m.ece),
    ];
    for (id, title, metric) in metrics {
        body.push_str(&html::line_plot(id, title, &metric_series(&owned, metric)));
    }
    body.push_str("</div>");

    body.push_str("<h2>Rounds</h2>");
    let mut rows = String::new();
    if rounds.len() > TABLE_ROUNDS {
        let _ = write!(
            body,
            "<p>The latest {TABLE_ROUNDS} of {} rounds.</p>",
            rounds.len()
        );
    }
    for r in rounds.iter().rev().take(TABLE_ROUNDS) {
        let dropped: Vec<String> = r
            .participants
            .iter()
            .filter(|p| {
                matches!(
                    p.status(),
                    pb::ParticipantStatus::Dropped | pb::ParticipantStatus::Rejected
                )
            })
            .map(|p| {
                let detail = if p.detail.is_empty() {
                    participant_word(p).to_owned()
                } else {
                    p.detail.clone()
                };
                format!("{} ({})", esc(&p.facility), esc(&detail))
            })
            .collect();
        let aucs: Vec<(&str, f64)> = r
            .participants
            .iter()
            .filter_map(|p| p.metrics.map(|m| (p.facility.as_str(), m.auc)))
            .filter(|(_, a)| a.is_finite())
            .collect();
        let worst = aucs.iter().min_by(|a, b| a.1.total_cmp(&b.1));
        let best = aucs.iter().max_by(|a, b| a.1.total_cmp(&b.1));
        let (worst_cell, gap_cell) = match (worst, best) {
            (Some(w), Some(b)) => (
                format!("{} {:.4}", esc(w.0), w.1),
                format!("{:.4}", b.1 - w.1),
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let seconds = (r.updated_unix_ms - r.created_unix_ms).max(0) as f64 / 1000.0;
        let reason = if r.failure_reason.is_empty() {
            String::new()
        } else {
            format!("<br>{}", esc(&r.failure_reason))
        };
        let _ = write!(
            rows,
            "<tr data-round=\"{}\"><td class=\"num\">{}</td><td>{}{reason}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{seconds:.1}</td><td>{}</td><td>{worst_cell}</td><td class=\"num\">{gap_cell}</td></tr>",
            r.number,
            r.number,
            state_status(r),
            r.participants.len(),
            if dropped.is_empty() {
                "none".to_owned()
            } else {
                dropped.join(", ")
            },
            stage_durations(r, ctx.now_ms)
        );
    }
    if rows.is_empty() {
        body.push_str("<p>No round yet.</p>");
    } else {
        body.push_str(&table(
            &[
                "#Round",
                "State",
                "#Facilities",
                "Dropped or rejected",
                "#Seconds",
                "Seconds per stage",
                "Worst facility (AUC)",
                "#Best-worst gap",
            ],
            &rows,
        ));
    }

    body.push_str("<h2>Model versions</h2>");
    let mut versions: BTreeMap<u32, &pb::ModelRef> = BTreeMap::new();
    for r in &rounds {
        for m in [&r.base, &r.result].into_iter().flatten() {
            versions.entry(m.version).or_insert(m);
        }
    }
    if let Some(latest) = &fed.latest {
        versions.entry(latest.version).or_insert(latest);
    }
    let mut rows = String::new();
    if versions.len() > TABLE_VERSIONS {
        let _ = write!(
            body,
            "<p>The latest {TABLE_VERSIONS} of {} versions (every one: <code>harambee-coordinator model export --version N</code>).</p>",
            versions.len()
        );
    }
    for (version, m) in versions.iter().rev().take(TABLE_VERSIONS) {
        let action = if ctx.role == Role::Operator {
            let card = |format: &str, label: &str| {
                format!(
                    "<form class=\"inline\" method=\"post\" action=\"/federation/{}/card\">{}<input type=\"hidden\" name=\"version\" value=\"{version}\"><input type=\"hidden\" name=\"format\" value=\"{format}\"><button type=\"submit\" aria-label=\"Model card of version {version} as {label}\">Card ({label})</button></form>",
                    url_part(&name),
                    ctx.csrf_field()
                )
            };
            format!(
                "<td class=\"actions\"><form class=\"inline\" method=\"post\" action=\"/federation/{}/export\">{}<input type=\"hidden\" name=\"version\" value=\"{version}\"><button type=\"submit\">Export version {version}</button></form> {} {}</td>",
                url_part(&name),
                ctx.csrf_field(),
                card("json", "JSON"),
                card("md", "Markdown")
            )
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr><td class=\"num\">{version}</td><td class=\"num\">{}</td><td><code>{}</code></td>{action}</tr>",
            m.size_bytes,
            esc(&m.digest)
        );
    }
    let mut head = vec!["#Version", "#Bytes", "SHA-256"];
    if ctx.role == Role::Operator {
        head.push("Export (little-endian f32) and model card");
    }
    body.push_str(&table(&head, &rows));
    let refresh = rounds.iter().any(|r| is_running(r)).then_some(5);
    ctx.page(&format!("Federation {name}"), "", refresh, &body)
}

/// The facilities: status, enrolment, certificate, ε against budget, and (operators) revoke.
pub fn facilities(ctx: &Ctx<'_>, rows_data: &[FacilityRow<'_>], notice: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(notice) = notice {
        let _ = write!(
            body,
            "<p class=\"notice\" role=\"status\">{}</p>",
            esc(notice)
        );
    }
    let operator = ctx.role == Role::Operator;
    let mut rows = String::new();
    for row in rows_data {
        let enrolment = match row.facility {
            Some(f) => {
                let word = match f.status.as_str() {
                    "enrolled" => status("enrolled", Tone::Good),
                    "revoked" => status("revoked", Tone::Bad),
                    other => status(other, Tone::Warn),
                };
                let when = if f.enrolled_unix_ms > 0 {
                    format!("<br>{}", esc(&date_and_age(f.enrolled_unix_ms, ctx.now_ms)))
                } else {
                    String::new()
                };
                format!("{word}{when}")
            }
            None => status("certificate from pki issue", Tone::Neutral),
        };
        let (spent, max) = match (row.spend, row.agent) {
            (Some(s), a) => (
                Some(s.epsilon_spent),
                s.max_epsilon.or(a.and_then(|a| a.max_epsilon)),
            ),
            (None, Some(a)) => (a.epsilon_spent, a.max_epsilon),
            (None, None) => (None, None),
        };
        let revoked = row.facility.is_some_and(|f| f.status == "revoked");
        let action = if !operator {
            String::new()
        } else if revoked {
            "<td>revoked</td>".to_owned()
        } else {
            format!(
                "<td><a class=\"button revoke\" href=\"/facilities/{}/revoke\">Revoke {}</a></td>",
                url_part(row.name),
                esc(row.name)
            )
        };
        let _ = write!(
            rows,
            "<tr data-facility=\"{}\"><th scope=\"row\">{}</th><td>{}</td><td>{enrolment}</td><td>{}</td><td>{}</td>{action}</tr>",
            esc(row.name),
            esc(row.name),
            liveness(row),
            expiry(cert_not_after(row), ctx.now_ms),
            html::budget_bar(spent, max)
        );
    }
    if rows.is_empty() {
        body.push_str("<p>No facility yet.</p>");
    } else {
        let mut head = vec![
            "Facility",
            "Liveness",
            "Enrolment",
            "Certificate",
            "Privacy: ε spent of budget",
        ];
        if operator {
            head.push("Action");
        }
        body.push_str(&table(&head, &rows));
    }
    ctx.page("Facilities", "/facilities", None, &body)
}

/// The confirmation before revoking a facility.
pub fn revoke_confirm(ctx: &Ctx<'_>, name: &str) -> String {
    let body = format!(
        "<p class=\"notice\">Revoking <strong>{}</strong> is permanent: its connections are refused from now on, its running rounds go on without it, and it is never selected again. Enrolling it again needs a new token.</p><form method=\"post\" action=\"/facilities/{}/revoke\">{}<label for=\"reason\">Reason, for the record</label><br><input id=\"reason\" name=\"reason\" size=\"40\" maxlength=\"500\"><p><button class=\"danger confirm\" type=\"submit\" id=\"confirm-revoke\">Revoke {} for good</button> <a href=\"/facilities\">Cancel</a></p></form>",
        esc(name),
        url_part(name),
        ctx.csrf_field(),
        esc(name)
    );
    ctx.page(&format!("Revoke {name}?"), "/facilities", None, &body)
}

/// The ledger page's filter.
#[derive(Debug, Default, Clone)]
pub struct LedgerFilter {
    pub facility: String,
    pub round: Option<u64>,
    pub kind: String,
}

impl LedgerFilter {
    fn matches(&self, line: &harambee_privacy::ledger::LedgerLine) -> bool {
        (self.kind.is_empty() || ledger::type_name(&line.event) == self.kind)
            && self
                .round
                .is_none_or(|r| ledger::round_of(&line.event) == Some(r))
            && (self.facility.is_empty()
                || ledger::facilities_of(&line.event).contains(&self.facility.as_str()))
    }
}

/// Points each plot of the federation page holds at most (over all facilities): the
/// latest rounds that fit, and at least 10.
pub const PLOT_POINTS: usize = 2000;

/// Rounds the federation page's table lists (the latest).
pub const TABLE_ROUNDS: usize = 100;

/// Model versions the federation page lists (the latest).
pub const TABLE_VERSIONS: usize = 20;

/// At most this many entries are listed at once (the newest matching first).
pub const LEDGER_PAGE: usize = 500;

/// The privacy ledger: verdict, head, filtered entries, countersignatures, admin actions.
/// Each facility's privacy log against the export: whether its receipts match, naming
/// each mismatch, and how its whole audit (`audit verify --receipts`) ends.
fn facility_logs(logs: &[ledger::FacilityLog], ledger_failures: &[String]) -> String {
    let mut rows = String::new();
    for log in logs {
        let name = log.facility.as_deref().unwrap_or("unknown");
        let receipts = if log.facility.is_none() {
            status("not checked", Tone::Bad)
        } else if log.mismatches.is_empty() {
            format!(
                "{} {} found in the ledger as signed",
                status("match", Tone::Good),
                log.matched
            )
        } else {
            let mut cell = format!(
                "{} {} found as signed<ul class=\"mismatches\">",
                status("do not match", Tone::Bad),
                log.matched
            );
            for m in &log.mismatches {
                let _ = write!(cell, "<li>{}</li>", esc(m));
            }
            cell.push_str("</ul>");
            cell
        };
        let audit = match log.outcome {
            audit::Outcome::Verified => status("verified", Tone::Good),
            audit::Outcome::Unverified => status("unverified: no key pinned", Tone::Warn),
            audit::Outcome::Failed => {
                // What failed beyond the receipts and the ledger's own failures, listed
                // once above: the facility's last head, its countersignatures, its log.
                let other: Vec<&String> = log
                    .failures
                    .iter()
                    .filter(|f| !log.mismatches.contains(f) && !ledger_failures.contains(f))
                    .collect();
                let mut cell = status("fails", Tone::Bad);
                if log.failures.iter().any(|f| ledger_failures.contains(f)) {
                    cell.push_str(" with the ledger's failures above");
                }
                if !other.is_empty() {
                    cell.push_str("<ul>");
                    for f in other.iter().take(5) {
                        let _ = write!(cell, "<li>{}</li>", esc(f));
                    }
                    if other.len() > 5 {
                        let _ = write!(cell, "<li>and {} more</li>", other.len() - 5);
                    }
                    cell.push_str("</ul>");
                }
                cell
            }
        };
        let _ = write!(
            rows,
            "<tr data-facility=\"{}\"><th scope=\"row\">{}</th><td>{receipts}</td><td>{audit}</td><td><code>{}</code></td></tr>",
            esc(name),
            esc(name),
            esc(&log.file)
        );
    }
    format!(
        "<h2>Facilities' receipts</h2><p>Each facility's own privacy log against this export, checked as <code>harambee-agent audit verify --receipts</code> does.</p><div id=\"receipts\">{}</div>",
        table(&["Facility", "Receipts", "Audit", "Privacy log"], &rows)
    )
}

pub fn ledger_page(
    ctx: &Ctx<'_>,
    checked: &Checked,
    filter: &LedgerFilter,
    actions: Option<&[pb::AdminAction]>,
) -> String {
    let mut body = String::new();
    let (word, tone, explain) = match checked.verdict {
        Verdict::Verifies => (
            "verifies",
            "good",
            "the Merkle tree, the signed tree head and every receipt check out, with the ledger key you pinned",
        ),
        Verdict::Fails => (
            "does not verify",
            "bad",
            "what is wrong is listed below, by entry",
        ),
        Verdict::Unpinned => (
            "unverified: no key pinned",
            "warn",
            "the checks used the key the ledger states about itself; start the console with --ledger-key (the key or its sha256: fingerprint, obtained independently)",
        ),
    };
    let _ = write!(
        body,
        "<p>The ledger <strong id=\"verdict\" class=\"verdict status {tone}\">{word}</strong></p><p>{explain}.</p>"
    );
    if !checked.failures.is_empty() {
        body.push_str("<ul class=\"error\" id=\"failures\">");
        for f in &checked.failures {
            let _ = write!(body, "<li>{}</li>", esc(f));
        }
        body.push_str("</ul>");
    }
    if !checked.facility_logs.is_empty() {
        body.push_str(&facility_logs(&checked.facility_logs, &checked.failures));
    }
    let head = &checked.head.signed_tree_head;
    let _ = write!(
        body,
        "<h2>Signed tree head</h2><div class=\"scroll\"><table><tbody><tr><th scope=\"row\">Entries</th><td>{}</td></tr><tr><th scope=\"row\">Root</th><td><code>{}</code></td></tr><tr><th scope=\"row\">Signed</th><td>{}</td></tr><tr><th scope=\"row\">Checked with</th><td>{}</td></tr><tr><th scope=\"row\">Receipts verified</th><td>{}</td></tr></tbody></table></div>",
        head.head.tree_size,
        head.head.root_hash.to_hex(),
        esc(&date_and_age(
            i64::try_from(head.head.timestamp_ms).unwrap_or(0),
            ctx.now_ms
        )),
        esc(&checked.key_line),
        checked.receipts_verified
    );

    body.push_str("<h2>Entries</h2><form class=\"filters\" method=\"get\" action=\"/ledger\">");
    body.push_str("<label>Facility <select name=\"facility\"><option value=\"\">any</option>");
    for f in &checked.facilities {
        let selected = if *f == filter.facility {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<option value=\"{}\"{selected}>{}</option>",
            esc(f),
            esc(f)
        );
    }
    body.push_str(
        "</select></label><label>Type <select name=\"type\"><option value=\"\">any</option>",
    );
    for t in ledger::TYPES {
        let selected = if t == filter.kind { " selected" } else { "" };
        let _ = write!(body, "<option{selected}>{t}</option>");
    }
    let _ = write!(
        body,
        "</select></label><label>Round <input name=\"round\" inputmode=\"numeric\" size=\"6\" value=\"{}\"></label><button type=\"submit\">Filter</button></form>",
        filter.round.map_or_else(String::new, |r| r.to_string())
    );
    let matching: Vec<_> = checked
        .entries
        .iter()
        .rev()
        .filter(|l| filter.matches(l))
        .collect();
    let _ = write!(
        body,
        "<p>{} matching entries{}.</p>",
        matching.len(),
        if matching.len() > LEDGER_PAGE {
            format!(", the newest {LEDGER_PAGE} shown")
        } else {
            String::new()
        }
    );
    let mut rows = String::new();
    for line in matching.iter().take(LEDGER_PAGE) {
        let _ = write!(
            rows,
            "<tr><td class=\"num\"><a href=\"/ledger/entry/{0}\">{0}</a></td><td class=\"hide-narrow\">{1}</td><td>{2}</td><td>{3}</td></tr>",
            line.index,
            esc(&date_and_age(
                i64::try_from(line.timestamp_ms).unwrap_or(0),
                ctx.now_ms
            )),
            ledger::type_name(&line.event),
            esc(&ledger::summary(&line.event))
        );
    }
    body.push_str(&table(&["#Entry", "When (UTC)", "Type", "What"], &rows));

    body.push_str("<h2>Countersignatures</h2>");
    if checked.cosigned.is_empty() {
        body.push_str("<p>No facility has countersigned a head yet.</p>");
    } else {
        let mut rows = String::new();
        for c in &checked.cosigned {
            let check = match &c.check {
                Some(Ok(())) => status("consistent", Tone::Good),
                Some(Err(why)) => status(why, Tone::Bad),
                None => status("not checked: the ledger holds no key for it", Tone::Neutral),
            };
            let _ = write!(
                rows,
                "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{check}</td></tr>",
                esc(&c.facility),
                c.tree_size,
                esc(&date_and_age(
                    i64::try_from(c.timestamp_ms).unwrap_or(0),
                    ctx.now_ms
                ))
            );
        }
        body.push_str(&table(
            &["Facility", "#Head size", "Head signed (UTC)", "Check"],
            &rows,
        ));
    }
    if let Some(actions) = actions {
        body.push_str("<h2>Admin actions</h2>");
        let mut rows = String::new();
        for a in actions.iter().rev().take(LEDGER_PAGE) {
            let _ = write!(
                rows,
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                a.id,
                esc(&date_and_age(a.at_unix_ms, ctx.now_ms)),
                esc(&a.actor),
                esc(&a.action),
                esc(&a.subject),
                esc(&a.detail)
            );
        }
        body.push_str(&table(
            &["#Id", "When (UTC)", "Who", "Action", "Subject", "Detail"],
            &rows,
        ));
    }
    ctx.page("Privacy ledger", "/ledger", None, &body)
}

/// One entry: its contents and its inclusion proof.
pub fn entry_page(ctx: &Ctx<'_>, checked: &Checked, index: u64) -> Option<String> {
    let line = checked.entries.get(usize::try_from(index).ok()?)?;
    let json = serde_json::to_string_pretty(&line.event).unwrap_or_default();
    let mut body = format!(
        "<p>{}</p><pre>{}</pre>",
        esc(&ledger::summary(&line.event)),
        esc(&json)
    );
    match checked.inclusion(index) {
        Some(proof) => {
            let word = if proof.verifies {
                status("included in the signed head", Tone::Good)
            } else {
                status("not included in the signed head", Tone::Bad)
            };
            let _ = write!(
                body,
                "<h2>Inclusion proof</h2><p>{word}: recomputed by this console from the entries, checked against the root of the signed head of {} entries.</p><p>Leaf hash <code>{}</code></p><ol class=\"hash\">",
                checked.head.signed_tree_head.head.tree_size,
                proof.leaf_hash.to_hex()
            );
            for h in &proof.path {
                let _ = write!(body, "<li><code>{}</code></li>", h.to_hex());
            }
            body.push_str("</ol>");
        }
        None => body.push_str(&format!(
            "<p>{}</p>",
            status("not covered by the signed head", Tone::Bad)
        )),
    }
    Some(ctx.page(&format!("Ledger entry {index}"), "/ledger", None, &body))
}

/// The downloads.
pub fn downloads(ctx: &Ctx<'_>) -> String {
    let mut body = String::from("<ul>");
    if ctx.role != Role::Operator {
        body.push_str("<li><a href=\"/download/ledger.jsonl\" download>ledger.jsonl</a>: the privacy ledger, one canonical entry per line</li><li><a href=\"/download/ledger.head.json\" download>ledger.head.json</a>: its signed tree head, ledger key and countersignatures (check both with <code>harambee-agent audit verify</code>)</li>");
    }
    if ctx.role != Role::Offline {
        body.push_str("<li><a href=\"/download/metrics.csv\" download>metrics.csv</a>: every facility's metrics per round and federation</li>");
    }
    body.push_str("</ul>");
    ctx.page("Downloads", "/downloads", None, &body)
}

/// A page saying what went wrong.
pub fn error_page(ctx: &Ctx<'_>, title: &str, message: &str) -> String {
    ctx.page(
        title,
        "",
        None,
        &format!("<p class=\"error\" role=\"alert\">{}</p>", esc(message)),
    )
}

/// A CSV field: quoted when needed, and a leading `= + - @` defused for spreadsheets.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn csv_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

/// Metrics per round and facility, one row each (empty cells for NaN).
pub fn metrics_csv(rounds: &BTreeMap<String, Vec<pb::Round>>) -> String {
    let mut out = String::from(
        "federation,round_id,round_number,state,facility,status,n_samples,n_positives,loss,accuracy,auc,sensitivity,specificity,ece\n",
    );
    for (federation, list) in rounds {
        for r in list {
            for p in &r.participants {
                let m = p.metrics.unwrap_or_default();
                let has = p.metrics.is_some();
                let num = |v: f64| if has { csv_number(v) } else { String::new() };
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    csv_field(federation),
                    r.id,
                    r.number,
                    state_word(r).replace(' ', "_"),
                    csv_field(&p.facility),
                    participant_word(p),
                    if has {
                        m.n_samples.to_string()
                    } else {
                        String::new()
                    },
                    if has {
                        m.n_positives.to_string()
                    } else {
                        String::new()
                    },
                    num(m.loss),
                    num(m.accuracy),
                    num(m.auc),
                    num(m.sensitivity),
                    num(m.specificity),
                    num(m.ece)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(role: Role) -> Ctx<'static> {
        Ctx {
            role,
            acting_as: "operator admin",
            csrf: "token",
            now_ms: 1_796_414_282_000,
        }
    }

    fn round(number: u32, facility: &str, auc: f64) -> pb::Round {
        pb::Round {
            id: u64::from(number),
            federation: "heart".into(),
            number,
            state: pb::RoundState::Committed as i32,
            participants: vec![pb::Participant {
                facility: facility.into(),
                status: pb::ParticipantStatus::Uploaded as i32,
                metrics: Some(pb::Metrics {
                    auc,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_facility_named_like_a_script_is_shown_as_text_everywhere() {
        let evil = "<script>alert(1)</script>";
        let agents = [pb::Agent {
            facility: evil.into(),
            connected: true,
            ..Default::default()
        }];
        let facilities = [pb::Facility {
            name: evil.into(),
            status: "enrolled".into(),
            ..Default::default()
        }];
        let rounds: BTreeMap<String, Vec<pb::Round>> =
            [("heart".to_owned(), vec![round(1, evil, 0.7)])].into();
        let fed = pb::Federation {
            config: Some(pb::FederationConfig {
                name: evil.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = ctx(Role::Operator);
        let pages = [
            overview(
                &c,
                std::slice::from_ref(&fed),
                &rounds,
                &agents,
                &facilities,
            ),
            federation(&c, &fed, &rounds["heart"]),
            facilities_page_of(&c, &facilities, &agents),
            revoke_confirm(&c, evil),
        ];
        for page in pages {
            assert!(!page.contains("<script"), "{page}");
            assert!(page.contains("&lt;script&gt;"), "{page}");
        }
        assert!(metrics_csv(&rounds).contains("<script>alert(1)</script>"));
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }

    fn facilities_page_of(c: &Ctx<'_>, f: &[pb::Facility], a: &[pb::Agent]) -> String {
        facilities(c, &facility_rows(f, a, &[]), None)
    }

    #[test]
    fn only_an_operator_sees_revoke_and_export() {
        let agents = [pb::Agent {
            facility: "kisumu".into(),
            connected: true,
            ..Default::default()
        }];
        let operator = facilities_page_of(&ctx(Role::Operator), &[], &agents);
        assert!(operator.contains("class=\"button revoke\""));
        let auditor = facilities_page_of(&ctx(Role::Auditor), &[], &agents);
        assert!(!auditor.contains("revoke"), "{auditor}");
        let fed = pb::Federation {
            config: Some(pb::FederationConfig {
                name: "heart".into(),
                ..Default::default()
            }),
            latest: Some(pb::ModelRef {
                version: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let operator = federation(&ctx(Role::Operator), &fed, &[]);
        assert!(operator.contains("Export version 1"));
        for format in ["json", "md"] {
            assert!(
                operator.contains(&format!("name=\"format\" value=\"{format}\"")),
                "{operator}"
            );
        }
        assert!(operator.contains("action=\"/federation/heart/card\""));
        let auditor = federation(&ctx(Role::Auditor), &fed, &[]);
        assert!(!auditor.contains("Export"));
        assert!(!auditor.contains("/card"), "{auditor}");
        assert!(!federation(&ctx(Role::Auditor), &fed, &[]).contains("csrf"));
    }

    #[test]
    fn the_federation_plot_has_a_point_per_facility_and_round() {
        let fed = pb::Federation {
            config: Some(pb::FederationConfig {
                name: "heart".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let rounds = [round(1, "a", 0.6), round(2, "a", 0.7)];
        let page = federation(&ctx(Role::Auditor), &fed, &rounds);
        // AUC, sensitivity, specificity and ECE (0, finite here) each plot both rounds.
        assert_eq!(page.matches("class=\"pt\" data-facility=\"a\"").count(), 8);
        assert!(page.contains("a 0.7000"), "the worst facility of round 2");
    }

    #[test]
    fn stage_durations_add_up_to_the_round_and_name_where_facilities_dropped() {
        let fed = pb::Federation {
            config: Some(pb::FederationConfig {
                name: "heart".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t0 = 1_796_000_000_000;
        let stage = |state: pb::RoundState, at: i64| pb::RoundStage {
            state: state as i32,
            started_unix_ms: t0 + at,
        };
        let dropped = |facility: &str, detail: &str| pb::Participant {
            facility: facility.into(),
            status: pb::ParticipantStatus::Dropped as i32,
            detail: detail.into(),
            ..Default::default()
        };
        let mut committed = round(1, "a", 0.7);
        committed.created_unix_ms = t0;
        committed.updated_unix_ms = t0 + 9_000;
        committed.participants.push(dropped("b", "stream closed"));
        committed.participants.push(dropped(
            "c",
            "dropped at masked input: missed the stage deadline",
        ));
        committed.stages = vec![
            stage(pb::RoundState::Created, 0),
            stage(pb::RoundState::Selecting, 0),
            stage(pb::RoundState::Training, 1_000),
            stage(pb::RoundState::AdvertiseKeys, 4_000),
            stage(pb::RoundState::ShareKeys, 4_500),
            stage(pb::RoundState::MaskedInput, 5_000),
            stage(pb::RoundState::Unmasking, 7_000),
            stage(pb::RoundState::Evaluating, 7_200),
            stage(pb::RoundState::Committed, 9_000),
        ];
        let mut running = round(2, "a", 0.7);
        running.state = pb::RoundState::Training as i32;
        running.stages = vec![
            stage(pb::RoundState::Created, 10_000),
            stage(pb::RoundState::Selecting, 10_000),
            stage(pb::RoundState::Training, 12_000),
        ];
        let mut old = round(3, "a", 0.7);
        old.created_unix_ms = t0;
        old.updated_unix_ms = t0 + 1_000;
        let mut c = ctx(Role::Auditor);
        c.now_ms = t0 + 15_500;
        let page = federation(&c, &fed, &[committed, running, old]);
        for expected in [
            "<li>selecting 1.00 s</li>",
            "<li>training 3.00 s, 1 dropped</li>",
            "<li>masked input 2.00 s, 1 dropped</li>",
            "<li>evaluating 1.80 s</li>",
            "<li>training 3.50 s so far</li>",
            "not recorded",
        ] {
            assert!(page.contains(expected), "{expected} in {page}");
        }
        assert!(!page.contains("<li>committed"), "the end is not a stage");
    }
}
