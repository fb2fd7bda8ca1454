//! `harambee-agent doctor --config agent.toml`: one report a facility's IT staff can send
//! to the national unit. It checks, in order, everything the agent needs (configuration,
//! state directory, certificate, key, CA, data file, DNS, proxy, TCP, mutual TLS, clock,
//! policy and budget, last contact) and prints one line per check,
//! `ok|FAIL|warn  <check>  <detail>`, with a `fix:` line under each failure or warning.
//! It exits non-zero on any failure.
//!
//! It changes nothing the agent relies on and may run beside a running agent: it takes no
//! lock, writes only a probe file in the state directory, and talks to the coordinator
//! only through `GetCaCertificate` (which has no side effects). The report holds counts,
//! names and times, never a value from the data file, a key or the proxy's password.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harambee_link::identity::{PeerVerifier, ed25519_key_of, signing_key_from_pem};
use harambee_link::proxy;
use harambee_link::tls::{self, ClientTls, FailureKind, Target, TlsError};
use harambee_models::data::{DataError, Issue, Schema, split_holdout};
use harambee_privacy::accountant::RdpAccountant;
use harambee_privacy::log::{self as privacy_log, Record};
use harambee_proto::pb::{self, enrolment_service_client::EnrolmentServiceClient};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;

use crate::config::AgentConfig;

/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARNING_DAYS: i64 = 30;
/// Clock skew against the coordinator above this is a warning, above [`SKEW_FAIL`] a
/// failure (certificate validity and round deadlines start to misfire).
const SKEW_WARN: Duration = Duration::from_secs(30);
const SKEW_FAIL: Duration = Duration::from_secs(300);
/// A last contact older than this is a warning.
const STALE_CONTACT: Duration = Duration::from_secs(24 * 3600);

/// `harambee-agent doctor` arguments.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The agent's configuration file.
    #[arg(long, default_value = "agent.toml")]
    pub config: PathBuf,
    /// `text` (one line per check) or `json`.
    #[arg(long, default_value = "text")]
    pub output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// How one check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about it (failures and warnings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The first check named `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.check == name)
    }

    fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(check, Status::Ok, detail.into(), None);
    }

    fn warn(&mut self, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(check, Status::Warn, detail.into(), Some(fix.into()));
    }

    fn fail(&mut self, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(check, Status::Fail, detail.into(), Some(fix.into()));
    }

    fn push(&mut self, check: &'static str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            check,
            status,
            detail,
            fix,
        });
    }

    /// One line per check, a `fix:` line under each failure or warning, a verdict.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out += &format!("{:<4}  {:<12}  {}\n", c.status.label(), c.check, c.detail);
            if let Some(fix) = &c.fix {
                out += &format!("{:<4}  {:<12}  fix: {fix}\n", "", "");
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        out += &match failed {
            0 => "all checks passed\n".to_owned(),
            n => format!("{n} check(s) failed\n"),
        };
        out
    }

    pub fn json(&self) -> String {
        let value = serde_json::json!({ "passed": self.passed(), "checks": self.checks });
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

/// Runs `harambee-agent doctor`: prints the report; `Ok(false)` if a check failed.
pub async fn run(args: &DoctorArgs) -> anyhow::Result<bool> {
    let report = diagnose(&args.config, &crate::cli::process_env).await;
    match args.output {
        Output::Text => print!("{}", report.text()),
        Output::Json => println!("{}", report.json()),
    }
    Ok(report.passed())
}

/// Every check, in order, for the agent configured in `path` (proxy variables from `env`).
pub async fn diagnose(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Report {
    let mut report = Report::default();
    let config = match AgentConfig::load_with_env(path, env) {
        Ok(config) => config,
        Err(e) => {
            report.fail(
                "config",
                format!("{:#}", e),
                "correct agent.toml (see the README's example), or pass --config with its path",
            );
            return report;
        }
    };
    report.ok(
        "config",
        format!(
            "{} parses and is valid; coordinator {}",
            path.display(),
            config.coordinator
        ),
    );
    check_state_dir(&mut report, &config);
    let tls = check_identity(&mut report, &config);
    check_data(&mut report, &config);
    let network = check_network(&mut report, &config, tls.as_ref()).await;
    check_clock(&mut report, network);
    check_policy(&mut report, &config);
    check_contact(&mut report, &config);
    report
}

fn check_state_dir(report: &mut Report, config: &AgentConfig) {
    let dir = &config.state_dir;
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"probe"))
        .and_then(|()| std::fs::remove_file(&probe));
    match written {
        Ok(()) => report.ok("state dir", format!("{} is writable", dir.display())),
        Err(e) => report.fail(
            "state dir",
            format!("cannot write in {}: {e}", dir.display()),
            "create the directory and give the account the agent runs as write access to it (or set state_dir in agent.toml)",
        ),
    }
}

/// Certificate, key and CA; the TLS identity if all three are usable.
fn check_identity(report: &mut Report, config: &AgentConfig) -> Option<ClientTls> {
    let files = &config.tls;
    let reenrol = "restore the file from a backup, or enrol again with a new token from the national unit (harambee-agent enrol)";
    // The certificate.
    let cert_der = match CertificateDer::from_pem_file(&files.cert) {
        Ok(der) => Some(der),
        Err(e) => {
            report.fail(
                "certificate",
                format!(
                    "cannot read the certificate {}: {}",
                    files.cert.display(),
                    pem_error(&e)
                ),
                reenrol,
            );
            None
        }
    };
    let info = cert_der
        .as_ref()
        .and_then(|_| match crate::renew::read_certificate(&files.cert) {
            Ok(info) => Some(info),
            Err(e) => {
                report.fail("certificate", format!("{e:#}"), reenrol);
                None
            }
        });
    if let Some(info) = &info {
        let now = SystemTime::now();
        let days_left = days_between(now, info.not_after);
        if now < info.not_before {
            report.fail(
                "certificate",
                format!(
                    "{} (facility {}) is not valid before {}",
                    files.cert.display(),
                    info.facility,
                    utc(info.not_before)
                ),
                "check this machine's clock (see the clock check below)",
            );
        } else if days_left < 0 {
            report.fail(
                "certificate",
                format!(
                    "{} (facility {}) expired on {}",
                    files.cert.display(),
                    info.facility,
                    utc(info.not_after)
                ),
                "an expired certificate cannot be renewed: enrol again with a new token from the national unit",
            );
        } else if days_left < EXPIRY_WARNING_DAYS {
            report.warn(
                "certificate",
                format!(
                    "{} (facility {}) expires in {days_left} days, on {}",
                    files.cert.display(),
                    info.facility,
                    utc(info.not_after)
                ),
                "a running agent renews it before it expires; if this stays, check that the agent runs and reaches the coordinator",
            );
        } else {
            report.ok(
                "certificate",
                format!(
                    "{} (facility {}) valid for {days_left} more days, until {}",
                    files.cert.display(),
                    info.facility,
                    utc(info.not_after)
                ),
            );
        }
    }

    // The key, and that it belongs to the certificate.
    let key_ok = match std::fs::read(&files.key) {
        Err(e) => {
            report.fail(
                "key",
                format!("cannot read the key {}: {e}", files.key.display()),
                "the key never leaves this machine: restore it from a backup, or enrol again",
            );
            false
        }
        Ok(pem) => match signing_key_from_pem(&pem) {
            Err(e) => {
                report.fail(
                    "key",
                    format!("the key {} is not usable: {e}", files.key.display()),
                    "restore the key from a backup, or enrol again",
                );
                false
            }
            Ok(key) => match cert_der.as_ref().map(|der| ed25519_key_of(der)) {
                Some(Ok(certified)) if certified == key.verifying_key() => {
                    report.ok(
                        "key",
                        format!("{} belongs to the certificate", files.key.display()),
                    );
                    true
                }
                Some(Ok(_)) => {
                    report.fail(
                        "key",
                        format!(
                            "the key {} does not belong to the certificate {}",
                            files.key.display(),
                            files.cert.display()
                        ),
                        "the certificate and key files are from different enrolments: restore the matching pair, or enrol again",
                    );
                    false
                }
                Some(Err(e)) => {
                    report.fail(
                        "key",
                        format!("the certificate carries no Ed25519 key: {e}"),
                        reenrol,
                    );
                    false
                }
                None => {
                    report.warn(
                        "key",
                        format!(
                            "{} parses; not matched against the unreadable certificate",
                            files.key.display()
                        ),
                        "fix the certificate first",
                    );
                    false
                }
            },
        },
    };

    // The CA, and that it issued the certificate.
    let ca_pem = match std::fs::read(&files.ca) {
        Ok(pem) => Some(pem),
        Err(e) => {
            report.fail(
                "ca",
                format!("cannot read the CA certificate {}: {e}", files.ca.display()),
                "restore ca.pem (the federation CA the enrolment token pinned), or enrol again",
            );
            None
        }
    };
    // A wrong CA does not stop the TLS check: the coordinator's view of it is worth seeing.
    match (&ca_pem, &cert_der, &info) {
        (None, _, _) => {}
        (Some(ca), cert, info) => match PeerVerifier::from_ca_pem(ca) {
            Err(e) => {
                report.fail(
                    "ca",
                    format!("{} is not a usable CA certificate: {e}", files.ca.display()),
                    "restore ca.pem (the federation CA the enrolment token pinned), or enrol again",
                );
            }
            Ok(verifier) => match (cert, info) {
                (Some(der), Some(info)) => match verifier.verify(&info.facility, der) {
                    Ok(_) => {
                        report.ok(
                            "ca",
                            format!("the certificate chains to the CA in {}", files.ca.display()),
                        );
                    }
                    Err(e) => {
                        let text = e.to_string();
                        let wrong_ca =
                            text.contains("UnknownIssuer") || text.contains("BadSignature");
                        if wrong_ca {
                            report.fail(
                                "ca",
                                format!(
                                    "wrong CA: the certificate {} was not issued by the CA in {}",
                                    files.cert.display(),
                                    files.ca.display()
                                ),
                                "ca.pem must be this federation's CA certificate, as written at enrolment; restore it (the national unit can send it and its SHA-256)",
                            );
                        } else {
                            report.fail(
                                "ca",
                                format!(
                                    "the certificate does not verify against {}: {text}",
                                    files.ca.display()
                                ),
                                reenrol,
                            );
                        }
                    }
                },
                _ => {
                    report.warn(
                        "ca",
                        format!(
                            "{} parses; the certificate could not be checked against it",
                            files.ca.display()
                        ),
                        "fix the certificate first",
                    );
                }
            },
        },
    }
    if !(key_ok && ca_pem.is_some() && cert_der.is_some()) {
        return None;
    }
    ClientTls::from_files(&files.ca, &files.cert, &files.key, &config.server_name()).ok()
}

fn check_data(report: &mut Report, config: &AgentConfig) {
    let path = config.data.path();
    let counted = match &config.data.fhir {
        Some(dir) => std::fs::read_dir(dir)
            .map(|_| None)
            .map_err(|e| e.to_string()),
        None => count_rows(path).map(Some),
    };
    let n_rows = match counted {
        Ok(n) => n,
        Err(reason) => {
            report.fail(
                "data",
                format!("cannot read the data file {}: {reason}", path.display()),
                "set [data] csv in agent.toml to the facility's CSV file (or fhir to its FHIR export directory), and let the agent's account read it",
            );
            return;
        }
    };
    let rows = n_rows.map_or_else(|| "a FHIR export".to_owned(), |n| format!("{n} rows"));
    let schemas = match crate::status::read_schemas(&config.state_dir) {
        Ok(schemas) => schemas,
        Err(e) => {
            report.warn(
                "data",
                format!(
                    "{}: {rows}; the recorded federation schemas are unreadable: {e:#}",
                    path.display()
                ),
                "remove the file named; the agent records the schemas again with its next task",
            );
            return;
        }
    };
    if schemas.is_empty() {
        report.ok(
            "data",
            format!(
                "{}: {rows} (no federation schema known yet: the coordinator sends it with the first task)",
                path.display()
            ),
        );
        return;
    }
    for (federation, schema) in &schemas {
        check_schema(report, config, federation, schema, &rows);
    }
}

fn check_schema(
    report: &mut Report,
    config: &AgentConfig,
    federation: &str,
    schema: &Schema,
    rows: &str,
) {
    let path = config.data.path();
    match config.data.load(schema) {
        Ok(loaded) => {
            let (_, held_out) = split_holdout(
                &loaded.data,
                config.data.holdout_fraction,
                config.data.split_seed,
            );
            let detail = format!(
                "{} matches federation {federation}'s schema: {rows}, {} usable, {} held out for evaluation",
                path.display(),
                loaded.data.n_rows(),
                held_out.n_rows()
            );
            match loaded.report.hard_issues().next() {
                None => report.ok("data", detail),
                Some(first) => report.warn(
                    "data",
                    format!(
                        "{detail}; {} values or rows cannot be read and are used as missing or left out, the first at {}",
                        loaded.report.hard_errors,
                        issue_location(first)
                    ),
                    "harambee-agent data check --config agent.toml lists each with its file, line and column",
                ),
            }
        }
        Err(e) => report.fail(
            "data",
            format!(
                "{} does not match federation {federation}'s schema: {}",
                path.display(),
                data_error(&e)
            ),
            format!(
                "the data needs the columns {} and the label {}, one patient per row; harambee-agent data check says more",
                schema
                    .features
                    .iter()
                    .map(|f| f.column.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                schema.label
            ),
        ),
    }
}

/// Data rows of a CSV file with a header, without looking at the values.
fn count_rows(path: &Path) -> Result<u64, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    reader.headers().map_err(|e| e.to_string())?;
    let mut record = csv::ByteRecord::new();
    let mut n = 0;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => n += 1,
            Ok(false) => return Ok(n),
            Err(e) => return Err(format!("not a CSV file: {e}")),
        }
    }
}

/// A data error; none quotes a value from the data.
fn data_error(error: &DataError) -> String {
    match error {
        DataError::Malformed {
            source_name, line, ..
        } => {
            format!("{source_name}: line {line}: broken CSV header (not UTF-8 or not CSV)")
        }
        DataError::NoUsableRows {
            source_name,
            rows_read,
            ..
        } => format!(
            "{source_name}: none of the {rows_read} rows is usable (harambee-agent data check names why)"
        ),
        other => other.to_string(),
    }
}

/// Where an issue is, without the value it may quote.
fn issue_location(issue: &Issue) -> String {
    match &issue.column {
        Some(column) => format!("{}: line {}, column {column}", issue.source, issue.line),
        None => format!("{}: line {}", issue.source, issue.line),
    }
}

/// What the network checks learnt, for the clock check.
struct Contacted {
    /// The coordinator's clock minus ours, at the midpoint of the call (ms).
    skew_ms: Option<i64>,
    rtt: Duration,
}

async fn check_network(
    report: &mut Report,
    config: &AgentConfig,
    tls: Option<&ClientTls>,
) -> Option<Contacted> {
    let target = match Target::parse(&config.coordinator) {
        Ok(target) => target,
        Err(e) => {
            report.fail("dns", e.to_string(), "correct coordinator in agent.toml");
            return None;
        }
    };
    let timeout = config.connect_timeout();
    let proxy = config
        .proxies
        .for_target(&target.host, target.port)
        .cloned();

    // DNS: the proxy resolves the name when there is one.
    if target.host.parse::<IpAddr>().is_ok() {
        report.ok("dns", format!("{} is an IP address", target.host));
    } else {
        match tokio::time::timeout(timeout, tokio::net::lookup_host(target.addr())).await {
            Ok(Ok(addrs)) => {
                let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                report.ok("dns", format!("{} resolves to {}", target.host, addrs.join(", ")));
            }
            Ok(Err(e)) if proxy.is_some() => report.ok(
                "dns",
                format!(
                    "{} does not resolve here ({e}); the proxy resolves it",
                    target.host
                ),
            ),
            Ok(Err(e)) => report.fail(
                "dns",
                format!("{} does not resolve: {e}", target.host),
                "check the coordinator's name in agent.toml and this machine's DNS servers; if outbound traffic must use a proxy, set proxy in agent.toml",
            ),
            Err(_) => report.fail(
                "dns",
                format!("no answer for {} within {timeout:?}", target.host),
                "check this machine's DNS servers",
            ),
        }
    }

    // Proxy, then TCP (through it, the CONNECT's success is the TCP check).
    match &proxy {
        None => {
            let detail = match config.proxies.proxy() {
                Some(p) => format!(
                    "none for {} ({p} from {} is bypassed by no_proxy)",
                    target.host,
                    config.proxies.source()
                ),
                None => "none configured; connecting directly".to_owned(),
            };
            report.ok("proxy", detail);
            let started = Instant::now();
            match tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
            )
            .await
            {
                Ok(Ok(_)) => report.ok(
                    "tcp",
                    format!("connected to {} in {} ms", target.addr(), started.elapsed().as_millis()),
                ),
                Ok(Err(e)) => report.fail(
                    "tcp",
                    format!("cannot connect to {}: {e}", target.addr()),
                    format!(
                        "check that the coordinator runs at this address and that the facility firewall allows outbound TCP to port {} (or configure the proxy outbound traffic must use)",
                        target.port
                    ),
                ),
                Err(_) => report.fail(
                    "tcp",
                    format!("no TCP connection to {} within {timeout:?}", target.addr()),
                    format!(
                        "a firewall probably drops outbound traffic to port {}: ask the network team to allow it, or configure the proxy",
                        target.port
                    ),
                ),
            }
        }
        Some(p) => {
            let started = Instant::now();
            match proxy::connect_through(p, &target.host, target.port, timeout).await {
                Ok(_) => {
                    report.ok(
                        "proxy",
                        format!(
                            "{p} (from {}) accepted CONNECT to {}",
                            config.proxies.source(),
                            target.addr()
                        ),
                    );
                    report.ok(
                        "tcp",
                        format!(
                            "tunnel to {} through the proxy in {} ms",
                            target.addr(),
                            started.elapsed().as_millis()
                        ),
                    );
                }
                Err(proxy::ConnectError::ProxyUnreachable(reason)) => {
                    report.fail(
                        "proxy",
                        format!("cannot reach the proxy {p}: {reason}"),
                        "check the proxy's address and port in agent.toml or HTTPS_PROXY, and that this machine may reach it",
                    );
                    return None;
                }
                Err(proxy::ConnectError::Tunnel(e)) => {
                    let upstream = matches!(e, proxy::TunnelError::UpstreamFailed { .. });
                    report.fail(
                        if upstream { "tcp" } else { "proxy" },
                        format!("the proxy {p}: {e}"),
                        if upstream {
                            "the proxy could not reach the coordinator: check its address, or ask the network team"
                        } else {
                            "ask the network team to allow CONNECT to the coordinator's host and port for this machine, with these credentials"
                        },
                    );
                    return None;
                }
            }
        }
    }

    // Mutual TLS, then one call to see that the coordinator accepts us, and its clock.
    let Some(tls) = tls else {
        report.warn(
            "tls",
            "not tried: the certificate, key or CA above is not usable",
            "fix the failures above first",
        );
        return None;
    };
    let started = Instant::now();
    let channel = match tls::connect_via(&config.coordinator, tls, &config.proxies, timeout).await {
        Ok(channel) => channel,
        Err(e) => {
            tls_failure(report, config, &e);
            return None;
        }
    };
    let sent_ms = unix_ms(SystemTime::now());
    let answer = EnrolmentServiceClient::new(channel)
        .get_ca_certificate(pb::GetCaCertificateRequest {})
        .await;
    let rtt = started.elapsed();
    let received_ms = unix_ms(SystemTime::now());
    // The coordinator's time: the answer's field, else the HTTP `date` header every answer
    // carries (to the second), also on a refusal by a coordinator without enrolment.
    let server_ms = match &answer {
        Ok(answer) if answer.get_ref().server_time_unix_ms != 0 => {
            Some(answer.get_ref().server_time_unix_ms)
        }
        Ok(answer) => http_date_ms(answer.metadata()),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ) =>
        {
            report.fail(
                "tls",
                format!(
                    "the TLS handshake succeeded but the coordinator refuses this facility: {}",
                    status.message()
                ),
                "ask the national unit whether this facility or its certificate was revoked; enrol again with a new token if so",
            );
            return None;
        }
        // Past the access layer, so the coordinator accepted the certificate.
        Err(status) => http_date_ms(status.metadata()),
    };
    report.ok(
        "tls",
        format!(
            "mutual TLS 1.3 with {} accepted (server name {}), {} ms",
            target.addr(),
            config.server_name(),
            rtt.as_millis()
        ),
    );
    let skew_ms = server_ms.map(|server| server - (sent_ms + received_ms) / 2);
    Some(Contacted { skew_ms, rtt })
}

/// The `date` header (RFC 9110 IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`) as Unix ms,
/// at the middle of its second.
fn http_date_ms(metadata: &tonic::metadata::MetadataMap) -> Option<i64> {
    let value = metadata.get("date")?.to_str().ok()?;
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + m * 60 + sec) * 1000 + 500)
}

fn tls_failure(report: &mut Report, config: &AgentConfig, error: &TlsError) {
    let detail = error.to_string();
    let (detail, fix) = match error.failure_kind() {
        Some(FailureKind::ServerNotTrusted) if detail.contains("not signed by the configured CA") => (
            format!(
                "wrong CA: the coordinator's certificate is not signed by the CA in {} ({detail})",
                config.tls.ca.display()
            ),
            "restore this federation's ca.pem; if a TLS-inspecting proxy is in the path, exempt the coordinator's address from inspection".to_owned(),
        ),
        Some(FailureKind::ServerNotTrusted) => (
            detail,
            "check server_name in agent.toml and this machine's clock; otherwise ask the national unit".to_owned(),
        ),
        Some(FailureKind::ClientRejected) => (
            format!("the coordinator refused this facility's certificate: {detail}"),
            "ask the national unit whether the facility was revoked; enrol again with a new token if so".to_owned(),
        ),
        Some(FailureKind::ProxyRefused | FailureKind::ProxyUnreachable) => (
            detail,
            "see the proxy check above".to_owned(),
        ),
        _ => (
            detail,
            "check that the address is the coordinator's and that no middlebox interferes with TLS".to_owned(),
        ),
    };
    report.fail("tls", detail, fix);
}

fn check_clock(report: &mut Report, contacted: Option<Contacted>) {
    let Some(contacted) = contacted else {
        report.warn(
            "clock",
            "not checked: the coordinator was not reached",
            "fix the network checks above first",
        );
        return;
    };
    let Some(skew_ms) = contacted.skew_ms else {
        report.warn(
            "clock",
            "not checked: the coordinator's answer carried no time",
            "compare this machine's clock with a trusted time source (NTP)",
        );
        return;
    };
    let skew = Duration::from_millis(skew_ms.unsigned_abs());
    let direction = if skew_ms > 0 { "behind" } else { "ahead of" };
    let detail = format!(
        "this machine's clock is {:.1} s {direction} the coordinator's (round trip {} ms)",
        skew.as_secs_f64(),
        contacted.rtt.as_millis()
    );
    let fix = "synchronise this machine's clock (NTP); certificate validity and round deadlines depend on it";
    if skew > SKEW_FAIL {
        report.fail("clock", detail, fix);
    } else if skew > SKEW_WARN {
        report.warn("clock", detail, fix);
    } else {
        report.ok("clock", detail);
    }
}

fn check_policy(report: &mut Report, config: &AgentConfig) {
    let p = &config.policy;
    let list = |items: &[String]| match items {
        [] => "none".to_owned(),
        items => items.join(", "),
    };
    let summary = format!(
        "federations {}; model kinds {}; labels {}; secure aggregation {}; at least {} contributors; metrics withheld below {} rows",
        list(&p.allowed_federations),
        list(&p.allowed_model_kinds),
        list(&p.allowed_labels),
        if p.require_secure_aggregation {
            "required"
        } else {
            "optional"
        },
        p.min_contributors,
        p.min_cohort
    );
    if p.allowed_federations.is_empty() {
        report.warn(
            "policy",
            summary,
            "the policy denies every federation by default: list the ones this facility takes part in under [policy] allowed_federations",
        );
    } else {
        report.ok("policy", summary);
    }

    let log_path = config.state_dir.join(privacy_log::LOG_FILE);
    let lines = match std::fs::read_to_string(&log_path) {
        Ok(text) => match privacy_log::parse_log(&text) {
            Ok(lines) => lines,
            Err(e) => {
                report.fail(
                    "budget",
                    format!("the privacy log {} does not verify: {e}", log_path.display()),
                    "keep the file as it is and send this report to the national unit: the log is the facility's record of what left",
                );
                return;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            report.fail(
                "budget",
                format!("cannot read the privacy log {}: {e}", log_path.display()),
                "let the agent's account read its state directory",
            );
            return;
        }
    };
    let mut total = RdpAccountant::new();
    let mut by_federation: std::collections::BTreeMap<String, (RdpAccountant, u64)> =
        Default::default();
    for line in &lines {
        if let Record::Receipt { receipt, dp } = &line.record {
            let entry = by_federation
                .entry(receipt.receipt.federation.clone())
                .or_insert_with(|| (RdpAccountant::new(), 0));
            entry.1 += 1;
            if let Some(dp) = dp {
                let _ = entry
                    .0
                    .compose(dp.noise_multiplier, dp.sampling_rate, dp.steps);
                let _ = total.compose(dp.noise_multiplier, dp.sampling_rate, dp.steps);
            }
        }
    }
    let spent = total.epsilon_spent(p.delta);
    let per_federation = if by_federation.is_empty() {
        "no update has left yet".to_owned()
    } else {
        by_federation
            .iter()
            .map(|(federation, (accountant, n))| {
                format!(
                    "{federation}: {n} updates, ε {:.3}",
                    accountant.epsilon_spent(p.delta)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match p.max_epsilon {
        Some(max) if spent >= max => report.warn(
            "budget",
            format!("ε {spent:.3} of {max} spent at δ {}: exhausted; {per_federation}", p.delta),
            "no further DP round will be admitted; raising policy.max_epsilon is the facility's decision alone",
        ),
        Some(max) => report.ok(
            "budget",
            format!("ε {spent:.3} of {max} spent at δ {}; {per_federation}", p.delta),
        ),
        None => report.ok(
            "budget",
            format!(
                "ε {spent:.3} spent at δ {} (no budget set: policy.max_epsilon); {per_federation}",
                p.delta
            ),
        ),
    }
}

fn check_contact(report: &mut Report, config: &AgentConfig) {
    match crate::status::read_contact(&config.state_dir) {
        Ok(Some(contact)) => {
            let at = UNIX_EPOCH + Duration::from_millis(contact.unix_ms.max(0) as u64);
            let ago = SystemTime::now().duration_since(at).unwrap_or_default();
            let detail = format!(
                "{} with {} ({} ago)",
                utc(at),
                contact.coordinator,
                human(ago)
            );
            if ago > STALE_CONTACT {
                report.warn(
                    "last contact",
                    detail,
                    "check that the agent runs (harambee-agent run) and look at its log",
                );
            } else {
                report.ok("last contact", detail);
            }
        }
        Ok(None) => report.warn(
            "last contact",
            "none recorded: the agent has not reached the coordinator from this state directory",
            "start the agent (harambee-agent run --config agent.toml) and look at its log",
        ),
        Err(e) => report.warn(
            "last contact",
            format!("{e:#}"),
            "remove the file named; the agent writes it again",
        ),
    }
}

fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::NoItemsFound => "no CERTIFICATE block found".to_owned(),
        other => format!("not a valid PEM certificate ({other})"),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn days_between(from: SystemTime, to: SystemTime) -> i64 {
    (unix_ms(to) - unix_ms(from)).div_euclid(86_400_000)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// `YYYY-MM-DD HH:MM UTC`.
fn utc(t: SystemTime) -> String {
    let secs = unix_ms(t).div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_print_in_utc() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(utc(t), "2024-02-29 12:34 UTC");
    }

    #[test]
    fn http_dates_parse() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("date", "Thu, 29 Feb 2024 12:34:56 GMT".parse().unwrap());
        assert_eq!(http_date_ms(&metadata), Some(1_709_210_096_500));
        metadata.insert("date", "yesterday".parse().unwrap());
        assert_eq!(http_date_ms(&metadata), None);
    }

    #[test]
    fn issues_and_errors_lose_the_value() {
        let issue = Issue {
            source: "d.csv".into(),
            line: 7,
            column: Some("chol".into()),
            kind: harambee_models::data::IssueKind::Unreadable,
            reason: "cannot read \"123456x\" as a number".into(),
        };
        let shown = issue_location(&issue);
        assert_eq!(shown, "d.csv: line 7, column chol");
        let e = DataError::NoUsableRows {
            source_name: "d.csv".into(),
            rows_read: 3,
            first_issue: issue.to_string(),
        };
        let shown = data_error(&e);
        assert!(shown.contains("3 rows"), "{shown}");
        assert!(!shown.contains("123456"), "{shown}");
    }
}
