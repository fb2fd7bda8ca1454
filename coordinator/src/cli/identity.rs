//! `harambee-coordinator facility ...`, `certificate ...` and `audit ...`: facilities,
//! enrolment tokens, revocation and the admin-action log, through `IdentityService` with an
//! operator's (or, for reading, an auditor's) certificate; and `pki renew-server`, which
//! works on the PKI directory alone.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use harambee_link::tls::ClientTls;
use harambee_proto::pb::{self, identity_service_client::IdentityServiceClient};
use tonic::transport::Channel;

use crate::cli::{AdminArgs, Output, json};
use crate::pki::{self, PkiPaths, ServerKey};
use crate::service::enrol::format_time;
use harambee_link::identity::Role;

#[derive(Subcommand, Debug)]
pub enum FacilityCommand {
    /// Register a facility and print its one-time enrolment token (operator).
    Add {
        /// The facility's name, e.g. kisumu-district.
        name: String,
        /// How long the token stays valid: 90s, 30m, 24h, 7d (at most 30d).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        expires: Duration,
        /// Issue a new token for a facility that is already enrolled (it lost its key, say).
        #[arg(long)]
        reenrol: bool,
        /// The address the facility's agent should use, if not --coordinator (which may be
        /// an internal one), e.g. https://coordinator.health.example:443.
        #[allow(rustdoc::bare_urls)]
        #[arg(long)]
        advertise: Option<String>,
        /// The name the coordinator's certificate is valid for, as seen from the facility,
        /// when it is not the host of --advertise.
        #[arg(long, requires = "advertise")]
        advertise_server_name: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a facility for good: its connections are refused from now on (operator).
    Revoke {
        name: String,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Facilities, their status and certificate expiry (operator or auditor).
    List(ReaderArgs),
}

#[derive(Subcommand, Debug)]
pub enum CertificateCommand {
    /// Revoke one certificate for good, whatever its role (agent, operator, auditor, or the
    /// coordinator's server certificate), and with it its key: every certificate for that
    /// key is refused on every call and cannot be renewed (operator).
    Revoke {
        /// Its serial number in hex (as `openssl x509 -serial` or this tool prints it).
        #[arg(long, required_unless_present = "cert")]
        serial: Option<String>,
        /// Or the certificate file itself (PEM): also tells the coordinator its identity and
        /// key when the coordinator did not issue it (`pki issue`, the server certificate).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `pki renew-server` arguments.
#[derive(Args, Debug)]
pub struct RenewServerArgs {
    #[arg(long, default_value = "pki")]
    pub dir: PathBuf,
    /// Generate a new key (the old one may have leaked); by default the current
    /// `coordinator.key` is kept and certified again.
    #[arg(long)]
    pub new_key: bool,
    /// DNS names or IP addresses for the new certificate; by default those of the current one.
    #[arg(long = "san")]
    pub sans: Vec<String>,
    #[arg(long, default_value_t = crate::pki::DEFAULT_LEAF_VALIDITY_DAYS)]
    pub days: u32,
}

/// Runs `pki renew-server`.
pub fn renew_server(args: &RenewServerArgs) -> anyhow::Result<()> {
    let key = if args.new_key {
        ServerKey::New
    } else {
        ServerKey::Keep
    };
    let paths = PkiPaths::new(&args.dir);
    let (old, new) = pki::renew_server(&args.dir, &args.sans, key, args.days)
        .with_context(|| format!("renewing the server certificate in {}", args.dir.display()))?;
    println!(
        "server certificate {} renewed: serial {} (was {}), valid until {}, {}",
        paths.server_cert().display(),
        new.serial,
        old.serial,
        format_time(new.not_after.unix_timestamp() * 1000),
        match key {
            ServerKey::Keep => "same key",
            ServerKey::New => "new key",
        }
    );
    println!("restart the coordinator to use it");
    if key == ServerKey::New {
        println!(
            "if the old key may have leaked, revoke the old certificate (and with it its key):\n  harambee-coordinator certificate revoke --serial {} --reason \"key compromise\"",
            old.serial
        );
    }
    Ok(())
}

/// Runs `certificate ...`.
pub async fn certificate(command: CertificateCommand) -> anyhow::Result<()> {
    match command {
        CertificateCommand::Revoke {
            serial,
            cert,
            reason,
            admin,
        } => {
            let certificate_pem = match &cert {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
                None => String::new(),
            };
            let mut client = client(&admin, Role::Operator, &admin.operator).await?;
            let revoked = client
                .revoke_certificate(pb::RevokeCertificateRequest {
                    serial: serial.unwrap_or_default(),
                    reason,
                    certificate_pem,
                })
                .await?
                .into_inner();
            let identity = match revoked.identity.as_str() {
                "" => "an unknown identity".to_owned(),
                identity => identity.to_owned(),
            };
            println!(
                "certificate {} of {identity} revoked at {} by {}",
                revoked.serial,
                format_time(revoked.revoked_unix_ms),
                revoked.revoked_by
            );
            if revoked.key_sha256.is_empty() {
                println!(
                    "its key is unknown to the coordinator: pass --cert to refuse the key as well"
                );
            } else {
                println!(
                    "every certificate for its key (SHA-256 {}) is refused too",
                    revoked.key_sha256
                );
            }
            Ok(())
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Who did what and when: facilities added and revoked, federations created, rounds
    /// started, models exported (operator or auditor).
    Actions {
        /// Only entries after this id.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        reader: ReaderArgs,
    },
    /// Export the privacy ledger for offline verification (auditor): the entries up to the
    /// current signed tree head to --out, the head, ledger key and countersignatures to
    /// `<stem>.head.json` next to it. Check it with `harambee-agent audit verify`.
    Export {
        #[arg(long, default_value = "ledger.jsonl")]
        out: PathBuf,
        /// The auditor certificate issued/auditor-NAME.{pem,key}.
        #[arg(long, default_value = "auditor")]
        auditor: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Compliance records into --out (auditor): a GDPR Art. 30 record of processing per
    /// federation, a HIPAA audit-control report and each facility's privacy spend over time,
    /// as Markdown and HTML (and the plot as SVG), filled from the ledger (exported into the
    /// directory too) and the federations' configuration; what a person must answer is
    /// marked TO COMPLETE.
    Report {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "auditor")]
        auditor: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Patient-level ε spent per facility, from the signed receipts in the ledger (auditor).
    Privacy {
        #[arg(long, default_value = "auditor")]
        auditor: String,
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// A reading command: the operator's certificate, or an auditor's.
#[derive(Args, Debug, Clone)]
pub struct ReaderArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Use the auditor certificate issued/auditor-NAME.{pem,key} instead of the operator's.
    #[arg(long)]
    pub auditor: Option<String>,
    /// `table`, or `json`: one object per line, times in Unix milliseconds.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub async fn facility(command: FacilityCommand) -> anyhow::Result<()> {
    match command {
        FacilityCommand::Add {
            name,
            expires,
            reenrol,
            advertise,
            advertise_server_name,
            admin,
        } => {
            let (coordinator, server_name) = match advertise {
                Some(address) => (address, advertise_server_name.unwrap_or_default()),
                None => {
                    let host = host_of(&admin.coordinator);
                    let name = if admin.server_name == host {
                        String::new()
                    } else {
                        admin.server_name.clone()
                    };
                    (admin.coordinator.clone(), name)
                }
            };
            let host = host_of(&coordinator);
            if host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            {
                eprintln!(
                    "note: the token tells the agent to connect to {coordinator}; pass --advertise with the address facilities reach"
                );
            }
            let mut client = client(&admin, Role::Operator, &admin.operator).await?;
            let request = pb::AddFacilityRequest {
                name: name.clone(),
                expires_s: expires.as_secs().max(1),
                reenrol,
                coordinator,
                server_name,
            };
            let response = client.add_facility(request).await?.into_inner();
            println!(
                "facility {name} added; its enrolment token (one use, expires {}):",
                format_time(response.token_expires_unix_ms)
            );
            println!();
            println!("{}", response.token);
            println!();
            println!(
                "give it to the facility's IT over a trusted channel; on the facility's machine:"
            );
            println!(
                "  harambee-agent enrol --token '{}' --dir /etc/harambee",
                response.token
            );
            Ok(())
        }
        FacilityCommand::Revoke {
            name,
            reason,
            admin,
        } => {
            let mut client = client(&admin, Role::Operator, &admin.operator).await?;
            let facility = client
                .revoke_facility(pb::RevokeFacilityRequest {
                    name: name.clone(),
                    reason,
                })
                .await?
                .into_inner();
            println!(
                "facility {name} revoked at {} by {}",
                format_time(facility.revoked_unix_ms),
                facility.revoked_by
            );
            Ok(())
        }
        FacilityCommand::List(reader) => {
            let mut client = reader_client(&reader).await?;
            let facilities = client
                .list_facilities(pb::ListFacilitiesRequest {})
                .await?
                .into_inner()
                .facilities;
            if reader.output == Output::Json {
                json::print_lines(facilities.iter().map(json::facility));
                return Ok(());
            }
            for f in facilities {
                let connected = if f.connected { "connected" } else { "offline" };
                let cert = match f.cert_not_after_unix_ms {
                    0 => "no certificate issued here".to_owned(),
                    at => format!("certificate until {}", format_time(at)),
                };
                println!("{}\t{}\t{connected}\t{cert}", f.name, f.status);
            }
            Ok(())
        }
    }
}

pub async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Export {
            out,
            auditor,
            admin,
        } => {
            let channel = channel(&admin, Role::Auditor, &auditor).await?;
            let done = crate::cli::audit::export(channel, &out).await?;
            println!(
                "{} entries written to {}; signed tree head in {}",
                done.entries,
                done.ledger.display(),
                done.head.display()
            );
            Ok(())
        }
        AuditCommand::Report {
            out,
            auditor,
            admin,
        } => {
            let channel = channel(&admin, Role::Auditor, &auditor).await?;
            let written = crate::cli::audit::report(channel, &out).await?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        AuditCommand::Privacy {
            auditor,
            admin,
            output,
        } => {
            let channel = channel(&admin, Role::Auditor, &auditor).await?;
            let spend = crate::cli::audit::privacy_spend(channel).await?;
            if output == Output::Json {
                json::print_lines(spend.iter().map(json::privacy_spend));
                return Ok(());
            }
            println!("facility\tepsilon_spent\tdelta\tcontributions\tmax_epsilon");
            for f in spend {
                let max = f
                    .max_epsilon
                    .map_or_else(|| "-".to_owned(), |m| m.to_string());
                println!(
                    "{}\t{:.4}\t{}\t{}\t{max}",
                    f.facility, f.epsilon_spent, f.delta, f.contributions
                );
            }
            Ok(())
        }
        AuditCommand::Actions {
            after,
            limit,
            reader,
        } => {
            let mut client = reader_client(&reader).await?;
            let request = pb::ListAdminActionsRequest {
                after_id: after,
                limit,
            };
            let actions = client
                .list_admin_actions(request)
                .await?
                .into_inner()
                .actions;
            if reader.output == Output::Json {
                json::print_lines(actions.iter().map(json::admin_action));
                return Ok(());
            }
            for a in actions {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    a.id,
                    format_time(a.at_unix_ms),
                    a.actor,
                    a.action,
                    a.subject,
                    a.detail
                );
            }
            Ok(())
        }
    }
}

async fn reader_client(reader: &ReaderArgs) -> anyhow::Result<IdentityServiceClient<Channel>> {
    match &reader.auditor {
        Some(auditor) => client(&reader.admin, Role::Auditor, auditor).await,
        None => client(&reader.admin, Role::Operator, &reader.admin.operator).await,
    }
}

/// An `IdentityService` client with the certificate `issued/<role>-<name>` of the PKI
/// directory.
async fn client(
    args: &AdminArgs,
    role: Role,
    name: &str,
) -> anyhow::Result<IdentityServiceClient<Channel>> {
    Ok(IdentityServiceClient::new(channel(args, role, name).await?))
}

/// A channel with the certificate `issued/<role>-<name>` of the PKI directory.
async fn channel(args: &AdminArgs, role: Role, name: &str) -> anyhow::Result<Channel> {
    let paths = PkiPaths::new(&args.pki);
    let tls = ClientTls::from_files(
        &paths.ca_cert(),
        &paths.issued_cert(role, name),
        &paths.issued_key(role, name),
        &args.server_name,
    )?;
    harambee_link::tls::connect(&args.coordinator, &tls, Duration::from_secs(10))
        .await
        .with_context(|| format!("connecting to {}", args.coordinator))
}

/// The host of `https://HOST:PORT` (brackets of an IPv6 literal removed).
fn host_of(endpoint: &str) -> String {
    let rest = endpoint.trim_start_matches("https://");
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    host.trim_matches(['[', ']']).to_owned()
}

/// `90s`, `30m`, `24h`, `7d`, or plain seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("{text:?}: unknown unit {unit:?} (use s, m, h or d)"),
    };
    if seconds == 0 {
        bail!("a duration must be positive");
    }
    Ok(Duration::from_secs(seconds))
}

/// Where the PKI of `pki init --ca-out` puts what, for the commands' messages.
pub fn describe_offline_init(dir: &std::path::Path, ca_out: &std::path::Path) -> String {
    let paths = PkiPaths::new(dir);
    let offline = PkiPaths::new(ca_out);
    format!(
        "root CA: {} and {} (move this directory offline now)\nissuing CA for this host: {}\nCA certificate for peers: {}\ncoordinator certificate: {}",
        offline.ca_cert().display(),
        offline.ca_key().display(),
        paths.issuing_ca_cert().display(),
        paths.ca_cert().display(),
        paths.server_cert().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("https://127.0.0.1:7443"), "127.0.0.1");
        assert_eq!(host_of("https://[::1]:7443"), "::1");
        assert_eq!(
            host_of("https://coordinator.example"),
            "coordinator.example"
        );
    }
}
