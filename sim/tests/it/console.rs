//! The web console (`harambee-coordinator console`) in a real headless Chromium, driven over
//! WebDriver, against a real coordinator with real agents: the overview lists the connected
//! facilities; after a round the federation's AUC plot has one more point per facility; an
//! operator revokes a facility from the page and its agent is refused; an auditor's console
//! (started through the command line) has no revoke button and a forged POST is refused; the
//! ledger page says "verifies", and after one byte of the export changes, names the entry.
//! Every page fits a 390 px phone without sideways scrolling of the page. Screenshots of every
//! page at 1280 and 390 px go to `target/console-screenshots/`.

use harambee_sim::harness as common;
use harambee_sim::harness::browser::{Browser, http};
use harambee_sim::harness::identity as identity_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use harambee_coordinator::console::{self, Console, Role, Source};
use harambee_link::identity::Role as CertRole;
use harambee_privacy::ledger::export::KeyPin;
use harambee_proto::pb;
use identity_common::*;
use tokio::sync::oneshot;
use tonic::Code;

/// `target/console-screenshots` (under `$CARGO_TARGET_DIR` when set).
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A console in this process on an ephemeral loopback port; dropping the sender stops it.
async fn start_console(
    source: Source,
    acting_as: &str,
    pin: Option<KeyPin>,
) -> (Arc<Console>, String, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let console = Arc::new(Console::new(source, acting_as.into(), addr, None, pin));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(console::serve(console.clone(), listener, async {
        let _ = stopped.await;
    }));
    (console, addr.to_string(), stop)
}

/// Saves the page at both widths and checks that at 390 px nothing but the tables' own
/// scrolling boxes is wider than the window.
async fn shoot(browser: &Browser, dir: &Path, name: &str) {
    for width in [1280, 390] {
        browser
            .screenshot(width, &dir.join(format!("{name}-{width}.png")))
            .await
            .unwrap();
    }
    browser.resize(390, 900).await.unwrap();
    let width = browser.execute("return window.innerWidth").await.unwrap();
    assert_eq!(width.as_i64(), Some(390), "{name} at 390 px");
    let overflow = browser
        .execute("return document.documentElement.scrollWidth - window.innerWidth")
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "{name} is wider than a 390 px window by {overflow} px"
    );
    browser.resize(1280, 900).await.unwrap();
}

/// Points per facility in the federation page's AUC plot.
async fn auc_points(browser: &Browser, facility: &str) -> usize {
    browser
        .find_all(&format!("#plot-auc circle[data-facility=\"{facility}\"]"))
        .await
        .unwrap()
        .len()
}

/// What the sections of the test share.
struct World {
    c: Coord,
    browser: Browser,
    shots: PathBuf,
    names: Vec<String>,
    /// Each facility's privacy log, in the order of `names`.
    logs: Vec<PathBuf>,
    federation: String,
    operator: Arc<Console>,
    op_addr: String,
    _stop_operator: oneshot::Sender<()>,
    rounds: Vec<pb::Round>,
}

impl World {
    fn op(&self) -> String {
        format!("http://{}", self.op_addr)
    }

    /// Rounds `facility` took part in (with `status`, if given).
    fn took_part(&self, facility: &str, status: Option<pb::ParticipantStatus>) -> usize {
        self.rounds
            .iter()
            .filter(|r| {
                r.participants
                    .iter()
                    .any(|p| p.facility == facility && status.is_none_or(|s| p.status() == s))
            })
            .count()
    }
}

// Each section is its own boxed future: one future for the whole test overflows the 2 MiB
// stack of a debug build's test thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser_shows_revokes_and_audits() {
    let mut w = Box::pin(setup()).await;
    Box::pin(overview_and_federation(&mut w)).await;
    Box::pin(forged_posts_and_revocation(&w)).await;
    let fingerprint = Box::pin(auditor(&w)).await;
    Box::pin(offline(&w, &fingerprint)).await;
    // Stopped, the agents see no head newer than the export their logs are checked against.
    w.c.h.stop_agents().await;
    Box::pin(offline_receipts(&w, &fingerprint)).await;
    println!("console screenshots: {}", w.shots.display());
    eprintln!("console screenshots: {}", w.shots.display());
    w.browser.close().await;
}

/// A federation of three facilities after one round, and an operator's console.
async fn setup() -> World {
    let browser = Browser::start().await.unwrap_or_else(|e| panic!("{e:#}"));
    let c = Coord::start(NINETY_DAYS).await;
    let mut c = c;
    let facilities = c.h.facilities(Some(3));
    let mut logs = Vec::new();
    for f in &facilities {
        let config = c.h.spawn_agent(f);
        logs.push(config.state_dir.join(harambee_privacy::log::LOG_FILE));
    }
    let names: Vec<String> = facilities.iter().map(|f| f.name.clone()).collect();
    let mut admin = c.h.admin().await;
    wait_connected(
        &mut admin,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    // Secure aggregation: the round goes through every stage the console times.
    let spec = spec(&facilities, 2, 30);
    create_federation(&mut admin, &spec).await;
    let first = run_round(&mut admin, &spec.name).await;
    assert_eq!(first.state(), pb::RoundState::Committed, "{first:?}");
    let (operator, op_addr, stop) = start_console(
        Source::Live {
            channel: c.h.channel(CertRole::Operator, "admin").await,
            role: Role::Operator,
        },
        "operator admin",
        None,
    )
    .await;
    World {
        c,
        browser,
        shots: screenshot_dir(),
        names,
        logs,
        federation: spec.name.clone(),
        operator,
        op_addr,
        _stop_operator: stop,
        rounds: vec![first],
    }
}

/// The overview lists every facility; a round adds one point per facility to the plot.
async fn overview_and_federation(w: &mut World) {
    let (browser, op) = (&w.browser, w.op());
    browser.goto(&format!("{op}/")).await.unwrap();
    for name in &w.names {
        let row = browser
            .find(&format!("tr[data-facility=\"{name}\"]"))
            .await
            .unwrap();
        let text = browser.text(&row).await.unwrap();
        assert!(text.contains("connected"), "{name}: {text}");
        // The certificate it connected with (issued for a day here) and its build.
        assert!(text.contains("0 days left"), "{name}: {text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{name}: {text}");
    }
    let text = browser.page_text().await.unwrap();
    assert!(text.contains(&w.federation), "{text}");
    // The keyboard reaches the skip link first, then the navigation.
    let body = browser.find("body").await.unwrap();
    let focused = "return document.activeElement.textContent";
    browser.send_keys(&body, "\u{E004}").await.unwrap();
    let first = browser.execute(focused).await.unwrap();
    assert_eq!(first.as_str(), Some("Skip to content"));
    browser.send_keys(&body, "\u{E004}").await.unwrap();
    let second = browser.execute(focused).await.unwrap();
    assert_eq!(second.as_str(), Some("Overview"));
    shoot(browser, &w.shots, "overview").await;

    let fed_url = format!("{op}/federation/{}", w.federation);
    browser.goto(&fed_url).await.unwrap();
    let mut before = Vec::new();
    for name in &w.names {
        before.push(auc_points(browser, name).await);
    }
    assert!(before.contains(&1), "{before:?}");
    let mut admin = w.c.h.admin().await;
    let second = run_round(&mut admin, &w.federation).await;
    assert_eq!(second.state(), pb::RoundState::Committed, "{second:?}");
    for name in &w.names {
        assert!(
            second
                .participants
                .iter()
                .any(|p| p.facility == *name && p.metrics.is_some()),
            "every facility evaluated round 2: {second:?}"
        );
    }
    browser.goto(&fed_url).await.unwrap();
    for (name, n) in w.names.iter().zip(&before) {
        assert_eq!(auc_points(browser, name).await, n + 1, "{name}");
    }
    let text = browser.page_text().await.unwrap();
    let digest = second.result.clone().unwrap().digest;
    assert!(text.contains(&digest), "model SHA-256 {digest}: {text}");
    stage_durations(browser, &second).await;
    shoot(browser, &w.shots, "federation").await;
    w.rounds.push(second);
}

/// The federation page's seconds per stage of a secure round: every stage the round went
/// through, none negative, adding up to the round's own duration.
async fn stage_durations(browser: &Browser, round: &pb::Round) {
    let stages: Vec<pb::RoundState> = round.stages.iter().map(|s| s.state()).collect();
    assert_eq!(stages.first(), Some(&pb::RoundState::Created), "{stages:?}");
    assert_eq!(
        stages.last(),
        Some(&pb::RoundState::Committed),
        "{stages:?}"
    );
    for stage in [pb::RoundState::Training, pb::RoundState::MaskedInput] {
        assert!(stages.contains(&stage), "{stage:?} in {stages:?}");
    }
    let row = format!("tr[data-round=\"{}\"]", round.number);
    let items = browser
        .find_all(&format!("{row} ul.stages li"))
        .await
        .unwrap();
    // Every stage but the terminal one is a line.
    assert_eq!(items.len(), stages.len() - 1, "{stages:?}");
    let (mut sum, mut slack) = (0.0, 1e-9);
    let mut words = Vec::new();
    for item in &items {
        let text = browser.text(item).await.unwrap();
        let (word, rest) = text
            .split_once(|c: char| c.is_ascii_digit())
            .map(|(w, _)| (w.trim().to_owned(), &text[w.len()..]))
            .unwrap_or_else(|| panic!("no seconds in {text:?}"));
        let seconds: f64 = rest
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no seconds in {text:?}"));
        assert!(seconds >= 0.0, "{text}");
        sum += seconds;
        slack += if seconds >= 10.0 { 0.05 } else { 0.005 };
        words.push(word);
    }
    for word in [
        "training",
        "advertise keys",
        "share keys",
        "masked input",
        "unmasking",
        "evaluating",
    ] {
        assert!(words.iter().any(|w| w == word), "{word} in {words:?}");
    }
    let cells = browser.find_all(&format!("{row} td")).await.unwrap();
    let total: f64 = browser.text(&cells[4]).await.unwrap().parse().unwrap();
    let api = (round.updated_unix_ms - round.created_unix_ms) as f64 / 1000.0;
    assert!(
        (total - api).abs() <= 0.05,
        "{total} s shown, {api} s by the API"
    );
    // Each line is rounded to a hundredth of a second (a tenth from ten seconds on).
    assert!(
        (sum - api).abs() <= slack,
        "stages add up to {sum} s, the round took {api} s"
    );
}

/// Forged POSTs change nothing; the operator revokes a facility from the page and its agent
/// is refused.
async fn forged_posts_and_revocation(w: &World) {
    let (browser, op_addr) = (&w.browser, w.op_addr.as_str());
    let victim = w.names[2].as_str();
    let path = format!("/facilities/{victim}/revoke");
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    // No token, and a wrong one.
    for body in [
        "reason=x".to_owned(),
        format!("csrf={}&reason=x", "0".repeat(64)),
    ] {
        let r = http(op_addr, "POST", &path, &form, &body).await.unwrap();
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(r.body.contains("did not carry this console"), "{}", r.body);
    }
    // The right token from a page of another host name (DNS rebinding).
    let rebound = [
        ("Host", "evil.example"),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let body = format!("csrf={}", w.operator.csrf());
    let r = http(op_addr, "POST", &path, &rebound, &body).await.unwrap();
    assert_eq!(r.status, 421, "{}", r.body);
    let r = http(op_addr, "GET", "/", &[], "").await.unwrap();
    assert!(r.header("content-security-policy").is_some());
    assert!(!r.body.contains("BEGIN"), "no key material on a page");
    w.c.h
        .raw_agent(victim)
        .await
        .heartbeat(open_heartbeat())
        .await
        .expect("the forged POSTs revoked nothing");

    // The operator's export of the latest version: the bytes the round committed.
    let result = w.rounds.last().unwrap().result.clone().unwrap();
    let path = format!("/federation/{}/export", w.federation);
    let body = format!("csrf={}&version={}", w.operator.csrf(), result.version);
    let r = http(op_addr, "POST", &path, &form, &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-disposition")
            .is_some_and(|d| d.contains(&format!("-v{}.f32", result.version))),
        "{:?}",
        r.headers
    );
    assert_eq!(r.bytes.len() as u64, result.size_bytes);
    use sha2::Digest as _;
    assert_eq!(hex::encode(sha2::Sha256::digest(&r.bytes)), result.digest);
    // Its model card, as JSON (what the ledger binds) and as Markdown; an auditor's form
    // would carry no token, and a forged one is refused.
    let path = format!("/federation/{}/card", w.federation);
    let body = format!(
        "csrf={}&version={}&format=json",
        w.operator.csrf(),
        result.version
    );
    let r = http(op_addr, "POST", &path, &form, &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-disposition")
            .is_some_and(|d| d.contains(&format!("-v{}.card.json", result.version))),
        "{:?}",
        r.headers
    );
    let card = harambee_privacy::card::ModelCard::parse(&r.body).unwrap();
    assert_eq!(card.model.version, u64::from(result.version));
    assert_eq!(card.model.sha256.to_hex(), result.digest);
    let mut contributors: Vec<&str> = card
        .facilities
        .iter()
        .map(|f| f.facility.as_str())
        .collect();
    contributors.sort_unstable();
    let mut uploaded: Vec<&str> = w
        .rounds
        .last()
        .unwrap()
        .participants
        .iter()
        .filter(|p| p.status() == pb::ParticipantStatus::Uploaded)
        .map(|p| p.facility.as_str())
        .collect();
    uploaded.sort_unstable();
    assert_eq!(contributors, uploaded);
    let body = body.replace("format=json", "format=md");
    let r = http(op_addr, "POST", &path, &form, &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(&result.digest), "{}", r.body);
    let forged = format!("csrf={}&version=1&format=json", "0".repeat(64));
    let r = http(op_addr, "POST", &path, &form, &forged).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.body);

    browser
        .goto(&format!("{}/facilities", w.op()))
        .await
        .unwrap();
    shoot(browser, &w.shots, "facilities-operator").await;
    let link = browser
        .find(&format!("tr[data-facility=\"{victim}\"] a.revoke"))
        .await
        .unwrap();
    browser.click(&link).await.unwrap();
    browser.wait_for_text("for good").await.unwrap();
    let reason = browser.find("#reason").await.unwrap();
    browser.send_keys(&reason, "laptop stolen").await.unwrap();
    shoot(browser, &w.shots, "revoke-confirm").await;
    let confirm = browser.find("#confirm-revoke").await.unwrap();
    browser.click(&confirm).await.unwrap();
    browser
        .wait_for_text(&format!("facility {victim} revoked"))
        .await
        .unwrap();
    let err =
        w.c.h
            .raw_agent(victim)
            .await
            .heartbeat(open_heartbeat())
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("has been revoked"), "{err:?}");
    let listed =
        w.c.operator()
            .await
            .list_facilities(pb::ListFacilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .facilities;
    let revoked = listed.iter().find(|f| f.name == victim).unwrap();
    assert_eq!(revoked.revoked_reason, "laptop stolen");
}

/// The auditor's console, started as the command line starts it with the ledger key pinned
/// by its fingerprint: no revoke button, no revocation by POST, a ledger that verifies.
/// Returns the fingerprint.
async fn auditor(w: &World) -> String {
    let browser = &w.browser;
    let ledger_key = harambee_coordinator::store::ledger_view::read_key(&w.c.h.storage.ledger_key)
        .unwrap()
        .unwrap()
        .verifying_key();
    let fingerprint = harambee_privacy::ledger::key_fingerprint(&ledger_key);
    w.c.h.channel(CertRole::Auditor, "auditor").await;
    let au_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let cli = harambee_coordinator::cli::parse_from([
        "harambee-coordinator",
        "console",
        "--listen",
        &au_addr,
        "--auditor",
        "auditor",
        "--ledger-key",
        &fingerprint,
        "--coordinator",
        &w.c.endpoint(),
        "--pki",
        &path_str(&w.c.h.pki),
    ]);
    let harambee_coordinator::cli::Command::Console(args) = cli.command else {
        panic!("the command line parses as the console")
    };
    let task = tokio::spawn(Box::pin(harambee_coordinator::console::run(*args)));
    let au = format!("http://{au_addr}");
    eventually(
        std::time::Duration::from_secs(10),
        "the auditor's console answers",
        || async { http(&au_addr, "GET", "/downloads", &[], "").await.is_ok() },
    )
    .await;
    browser.goto(&format!("{au}/facilities")).await.unwrap();
    assert!(browser.find_all(".revoke").await.unwrap().is_empty());
    let text = browser.page_text().await.unwrap();
    assert!(!text.contains("Revoke"), "{text}");
    assert!(text.contains("auditor auditor"), "{text}");
    shoot(browser, &w.shots, "facilities-auditor").await;
    // Even with a valid token (another console's), an auditor's console does not revoke.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let body = format!("csrf={}", w.operator.csrf());
    let path = format!("/facilities/{}/revoke", w.names[0]);
    let r = http(&au_addr, "POST", &path, &form, &body).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("needs an operator"), "{}", r.body);

    browser.goto(&format!("{au}/ledger")).await.unwrap();
    let verdict = browser.find("#verdict").await.unwrap();
    assert_eq!(browser.text(&verdict).await.unwrap(), "verifies");
    shoot(browser, &w.shots, "ledger").await;
    let facility = &w.names[0];
    browser
        .goto(&format!(
            "{au}/ledger?type=contribution&facility={facility}"
        ))
        .await
        .unwrap();
    let contributed = w.took_part(facility, Some(pb::ParticipantStatus::Uploaded));
    assert!(contributed > 0);
    let text = browser.page_text().await.unwrap();
    assert!(
        text.contains(&format!("{contributed} matching entries")),
        "{text}"
    );
    browser.goto(&format!("{au}/ledger/entry/1")).await.unwrap();
    let text = browser.page_text().await.unwrap();
    assert!(text.contains("included in the signed head"), "{text}");
    shoot(browser, &w.shots, "ledger-entry").await;
    browser.goto(&format!("{au}/downloads")).await.unwrap();
    shoot(browser, &w.shots, "downloads").await;
    let csv = http(&w.op_addr, "GET", "/download/metrics.csv", &[], "")
        .await
        .unwrap();
    assert_eq!(
        csv.body
            .lines()
            .filter(|l| l.contains(facility.as_str()))
            .count(),
        w.took_part(facility, None),
        "{}",
        csv.body
    );
    task.abort();
    fingerprint
}

/// Offline: the export verifies; with one byte changed, the page names the entry.
async fn offline(w: &World, fingerprint: &str) {
    let browser = &w.browser;
    let exported = w.c.h.export_ledger("ledger.jsonl").await;
    let text = std::fs::read_to_string(&exported).unwrap();
    let (line_no, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("\"type\":\"round_started\""))
        .unwrap();
    // A digit of the entry's timestamp: still a canonical line, now with other contents.
    let at = line.find("\"timestamp_ms\":").unwrap() + "\"timestamp_ms\":".len() + 5;
    let offset = text
        .lines()
        .take(line_no)
        .map(|l| l.len() + 1)
        .sum::<usize>()
        + at;
    let mut bytes = text.into_bytes();
    bytes[offset] = if bytes[offset] == b'9' {
        b'8'
    } else {
        bytes[offset] + 1
    };
    // One console over a copy of the export: it verifies; the same file with one byte
    // changed does not (the console checks again what changed), naming the entry.
    let dir = w.c.h.dir.path().join("offline");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("ledger.jsonl");
    std::fs::copy(&exported, &copy).unwrap();
    std::fs::copy(
        exported.with_file_name("ledger.head.json"),
        dir.join("ledger.head.json"),
    )
    .unwrap();
    let (_console, addr, _stop) = start_console(
        Source::Offline {
            ledger: copy.clone(),
            head: None,
            receipts: Vec::new(),
        },
        "offline auditor",
        Some(KeyPin::parse(fingerprint).unwrap()),
    )
    .await;
    browser.goto(&format!("http://{addr}/")).await.unwrap();
    let verdict = browser.find("#verdict").await.unwrap();
    assert_eq!(browser.text(&verdict).await.unwrap(), "verifies");
    std::fs::write(&copy, &bytes).unwrap();
    browser
        .goto(&format!("http://{addr}/ledger"))
        .await
        .unwrap();
    let verdict = browser.find("#verdict").await.unwrap();
    assert_eq!(browser.text(&verdict).await.unwrap(), "does not verify");
    let failures = browser.find("#failures").await.unwrap();
    let failures = browser.text(&failures).await.unwrap();
    assert!(
        failures.contains(&format!("entry {line_no}: bad hash")),
        "{failures}"
    );
    shoot(browser, &w.shots, "ledger-tampered").await;
}

/// Offline with the facilities' privacy logs: every facility's receipts match the export;
/// with one receipt in the export changed, that facility's row names the entry and the
/// others still match.
async fn offline_receipts(w: &World, fingerprint: &str) {
    let browser = &w.browser;
    let exported = w.c.h.export_ledger("receipts-ledger.jsonl").await;
    let text = std::fs::read_to_string(&exported).unwrap();
    let victim = &w.names[0];
    let (entry, line) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("\"type\":\"contribution\""))
        .find(|(_, l)| l.contains(&format!("\"facility\":\"{victim}\"")))
        .unwrap();
    // One hex digit of the update's SHA-256 the facility signed.
    let field = "\"update_sha256\":\"";
    let at = line.find(field).unwrap() + field.len();
    let offset = text.lines().take(entry).map(|l| l.len() + 1).sum::<usize>() + at;
    let dir = w.c.h.dir.path().join("offline-receipts");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("ledger.jsonl");
    std::fs::copy(&exported, &copy).unwrap();
    std::fs::copy(
        exported.with_file_name("receipts-ledger.head.json"),
        dir.join("ledger.head.json"),
    )
    .unwrap();
    // Through the command line, as an auditor starts it.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut argv = vec![
        "harambee-coordinator".to_owned(),
        "console".into(),
        "--listen".into(),
        addr.clone(),
        "--ledger".into(),
        path_str(&copy),
        "--ledger-key".into(),
        fingerprint.into(),
        "--receipts".into(),
    ];
    argv.extend(w.logs.iter().map(|p| path_str(p)));
    let cli = harambee_coordinator::cli::parse_from(argv);
    let harambee_coordinator::cli::Command::Console(args) = cli.command else {
        panic!("the command line parses as the console")
    };
    let task = tokio::spawn(Box::pin(harambee_coordinator::console::run(*args)));
    eventually(
        std::time::Duration::from_secs(10),
        "the offline console answers",
        || async { http(&addr, "GET", "/ledger", &[], "").await.is_ok() },
    )
    .await;
    let row_text = |facility: &str| {
        let selector = format!("#receipts tr[data-facility=\"{facility}\"]");
        async move {
            let row = browser.find(&selector).await.unwrap();
            browser.text(&row).await.unwrap()
        }
    };
    browser
        .goto(&format!("http://{addr}/ledger"))
        .await
        .unwrap();
    for name in &w.names {
        let text = row_text(name).await;
        // Facility, then its receipts, then its whole audit.
        assert!(text.starts_with(&format!("{name} match")), "{text}");
        assert!(text.contains("verified"), "{text}");
        assert!(
            !text.contains("unverified") && !text.contains("fails"),
            "{text}"
        );
    }

    let mut bytes = text.into_bytes();
    bytes[offset] = if bytes[offset] == b'0' { b'1' } else { b'0' };
    std::fs::write(&copy, &bytes).unwrap();
    browser
        .goto(&format!("http://{addr}/ledger"))
        .await
        .unwrap();
    let text = row_text(victim).await;
    assert!(
        text.starts_with(&format!("{victim} do not match")),
        "{text}"
    );
    assert!(
        text.contains(&format!("entry {entry}: the receipt for federation")),
        "{text}"
    );
    // The others' receipts still match; their audits fail with the ledger's own failures.
    for name in &w.names[1..] {
        let text = row_text(name).await;
        assert!(text.starts_with(&format!("{name} match")), "{text}");
        assert!(
            text.contains("fails with the ledger's failures above"),
            "{text}"
        );
    }
    shoot(browser, &w.shots, "ledger-receipts").await;
    task.abort();
}
