//! The `harambee-coordinator` command line: [`identity`] holds the facility and admin-log
//! commands, [`audit`] the auditor's ledger reads.

pub mod audit;
pub mod backup;
pub mod identity;
pub mod json;
pub mod profile;
pub mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use harambee_link::tls::ClientTls;
use harambee_proto::pb::{self, admin_service_client::AdminServiceClient};
use serde::Deserialize;
use tonic::transport::Channel;

use crate::federation::FederationSpec;
use crate::pki::{self, PkiPaths};
use crate::server::{self, Storage};
use crate::state::Settings;
use crate::store::lease::Lease;
use crate::wire;
use harambee_link::identity::Role;

#[derive(Parser, Debug)]
#[command(
    name = "harambee-coordinator",
    version,
    about = "Harambee coordinator: federated learning across health facilities"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the coordinator server.
    Serve(ServeArgs),
    /// Certificate authority: create it, issue certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Federations (operator).
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Rounds (operator).
    #[command(subcommand)]
    Round(RoundCommand),
    /// Facilities known to the coordinator and whether they are connected (operator).
    Agents {
        #[command(flatten)]
        admin: AdminArgs,
        /// `table` (dates in UTC, with ages) or `json` (one object per facility, times in
        /// Unix milliseconds).
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Model versions (operator).
    #[command(subcommand)]
    Model(ModelCommand),
    /// Facilities: enrolment tokens, revocation (operator; auditors may list).
    #[command(subcommand)]
    Facility(crate::cli::identity::FacilityCommand),
    /// One certificate: revoke it by serial, whatever its role (operator).
    #[command(subcommand)]
    Certificate(crate::cli::identity::CertificateCommand),
    /// The admin-action log (auditor or operator).
    #[command(subcommand)]
    Audit(crate::cli::identity::AuditCommand),
    /// Differential-privacy planning.
    #[command(subcommand)]
    Privacy(PrivacyCommand),
    /// The privacy ledger's signing key (run with the coordinator stopped).
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Copy the database and the model blobs its versions use into a new directory, while
    /// the coordinator serves (SQLite: VACUUM INTO; PostgreSQL: pg_dump).
    Backup(crate::cli::backup::BackupArgs),
    /// Put a backup back (`--from DIR`), with the coordinator stopped (SQLite: the file;
    /// PostgreSQL: pg_restore).
    Restore(crate::cli::backup::BackupArgs),
    /// A web console on loopback (operator or auditor, as the certificate says; or an
    /// exported ledger offline with --ledger).
    Console(Box<crate::console::ConsoleArgs>),
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Hand the ledger over to a new signing key: appends an entry in which the old key
    /// signs the new public key (auditors follow it from the key they pinned), and records
    /// the new key's fingerprint. Then restart `serve` with `--ledger-key` the new file.
    RotateKey {
        /// `sqlite://PATH` or `postgres://USER@HOST/DB` (the coordinator's database).
        #[arg(long, env = "HARAMBEE_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The key in force (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        old_key: PathBuf,
        /// The new key: created (mode 0600) if the file does not exist.
        #[arg(long)]
        new_key: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "HARAMBEE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (TLS only).
    #[arg(long, env = "HARAMBEE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// `sqlite://PATH?mode=rwc` or `postgres://USER@HOST/DB`.
    #[arg(long, env = "HARAMBEE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory of content-addressed model blobs.
    #[arg(long, env = "HARAMBEE_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,
    /// Keep model blobs in the database (table `blobs`) instead of a directory: what an
    /// active/standby pair on one PostgreSQL database needs.
    #[arg(long, env = "HARAMBEE_BLOBS_IN_DATABASE")]
    pub blobs_in_database: bool,
    /// PKI directory made by `pki init`.
    #[arg(long, env = "HARAMBEE_PKI")]
    pub pki: Option<PathBuf>,
    /// The privacy ledger's Ed25519 signing key (PKCS#8 PEM, mode 0600; required, no
    /// default). Created only for an empty ledger; a ledger with entries needs the key the
    /// database records.
    #[arg(long, env = "HARAMBEE_LEDGER_KEY")]
    pub ledger_key: Option<PathBuf>,
    /// Export traces over OTLP/gRPC to this endpoint.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Wait while another coordinator holds the database's lease, and take over (recover
    /// its unfinished rounds, then listen) as soon as it stops. Without it a second
    /// coordinator on one database refuses to start.
    #[arg(long)]
    pub standby: bool,
    /// Serve `/healthz`, `/readyz` and `/metrics` (Prometheus) over plain HTTP on this
    /// address. Off unless given; keep it on loopback or a cluster-internal network.
    #[arg(long, env = "HARAMBEE_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,
}

/// The `serve` configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub blob_dir: Option<PathBuf>,
    pub blobs_in_database: Option<bool>,
    pub pki: Option<PathBuf>,
    pub ledger_key: Option<PathBuf>,
    pub otlp_endpoint: Option<String>,
    /// `--ops-listen`: the plain-HTTP health, readiness and metrics port.
    pub ops_listen: Option<SocketAddr>,
    pub heartbeat_interval_s: Option<u64>,
    pub liveness_timeout_s: Option<u64>,
    pub reconnect_grace_s: Option<u64>,
    /// Hours after which model blobs no version keeps are removed (0: keep them all).
    pub blob_retention_h: Option<u64>,
    /// MiB of uploads held at once while they arrive (default 128); see
    /// [`Settings::upload_buffer_bytes`].
    pub upload_buffer_mb: Option<u64>,
    /// KiB a connection may send before the coordinator reads it (default 256); see
    /// [`Settings::receive_window_bytes`].
    pub receive_window_kib: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum PrivacyCommand {
    /// The ε that the RDP accountant gives for the subsampled Gaussian mechanism; the last
    /// line is the number alone.
    Epsilon {
        #[arg(long)]
        noise_multiplier: f64,
        /// Probability that a record (or facility) takes part in a step.
        #[arg(long)]
        sampling_rate: f64,
        #[arg(long)]
        steps: u64,
        #[arg(long)]
        delta: f64,
    },
}

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create the CA and the coordinator's server certificate, plus an operator certificate `admin`.
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// DNS names or IP addresses agents use to reach the coordinator.
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1"])]
        sans: Vec<String>,
        /// Keep the CA key offline: write the root CA here (move it off this host), and give
        /// --dir an issuing CA instead (see deploy/PKI.md).
        #[arg(long)]
        ca_out: Option<PathBuf>,
    },
    /// Certify a new issuing CA for the serving host with the offline root CA.
    IssuingCa {
        /// The offline root CA directory (made by `pki init --ca-out`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The serving host's PKI directory.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[arg(long, default_value_t = crate::pki::ISSUING_CA_VALIDITY_DAYS)]
        days: u32,
    },
    /// Renew the coordinator's own server certificate, for its key or a new one.
    RenewServer(crate::cli::identity::RenewServerArgs),
    /// Issue a certificate for a facility's agent or for a person.
    Issue {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Issue an agent certificate for this facility.
        #[arg(long, conflicts_with_all = ["role", "name"])]
        facility: Option<String>,
        #[arg(long, requires = "name")]
        role: Option<Role>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
}

/// How an operator reaches the coordinator.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    #[arg(
        long,
        env = "HARAMBEE_COORDINATOR",
        default_value = "https://127.0.0.1:7443"
    )]
    pub coordinator: String,
    /// Name in the coordinator's certificate.
    #[arg(long, env = "HARAMBEE_SERVER_NAME", default_value = "localhost")]
    pub server_name: String,
    /// PKI directory holding ca.pem and issued/operator-NAME.{pem,key}.
    #[arg(long, env = "HARAMBEE_PKI", default_value = "pki")]
    pub pki: PathBuf,
    /// Operator certificate name within the PKI directory.
    #[arg(long, env = "HARAMBEE_OPERATOR", default_value = "admin")]
    pub operator: String,
}

#[derive(Subcommand, Debug)]
pub enum FederationCommand {
    /// Create a federation from a TOML definition.
    Create {
        #[arg(long)]
        config: PathBuf,
        /// Start from a safetensors checkpoint (e.g. from `model export`) instead of fresh
        /// parameters; combine with `train.frozen_layers` to fine-tune only the last layers.
        #[arg(long, conflicts_with = "init_from_federation")]
        init_from: Option<PathBuf>,
        /// Start from another federation's committed version: `NAME@VERSION`.
        #[arg(long)]
        init_from_federation: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Federations and their latest model version.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoundCommand {
    /// Start a round; with --wait, follow it until it ends.
    Start {
        #[arg(long)]
        federation: String,
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// End a running round that cannot finish: it fails with your name and reason.
    Cancel {
        #[arg(long)]
        round: u64,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one round, or every round of a federation.
    Status {
        #[arg(long, conflicts_with = "federation")]
        round: Option<u64>,
        #[arg(long)]
        federation: Option<String>,
        /// Follow the round (with --federation, its latest) until it ends: one line each
        /// time its stage or its facilities' states change, then the whole round.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        admin: AdminArgs,
        /// `json`: one object per round (with --watch, the progress lines stay text and
        /// the round at the end is JSON).
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Write a committed model version: safetensors with the model kind and feature schema
    /// (for facility applications and Python), or raw little-endian f32 plus a `.json`. A
    /// text model (`minilm_lora`) is written as a directory in the layout Python's PEFT
    /// loads: its adapters and head, for the base model its federation pins.
    Export {
        #[arg(long)]
        federation: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = ExportFormat::Safetensors)]
        format: ExportFormat,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Parses the command line with the operator profile's defaults ([`profile`]); exits with
/// a message on a bad command line or a bad profile, as clap does.
pub fn parse_from<I, T>(argv: I) -> Cli
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let command = match profile::Profile::load() {
        Ok(Some((_, profile))) => profile.apply(Cli::command()),
        Ok(None) => Cli::command(),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    let matches = command.get_matches_from(argv);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Runs the command line to completion on its own runtime and prints the error, if any:
/// the whole `harambee-coordinator` binary.
pub fn main(cli: Cli) -> std::process::ExitCode {
    if matches!(cli.command, Command::Serve(_)) {
        server::memory::return_large_blocks_to_the_system();
    }
    harambee_link::process::run_main(run(cli))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Pki(cmd) => pki_command(cmd),
        Command::Federation(FederationCommand::Create {
            config,
            init_from,
            init_from_federation,
            admin,
        }) => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let spec = FederationSpec::from_toml(&text)
                .with_context(|| format!("parsing {}", config.display()))?;
            spec.validate()?;
            let mut client = admin_client(&admin).await?;
            let source = match (init_from, init_from_federation) {
                (Some(path), _) => Some(pb::model_source::Source::Checkpoint(
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                )),
                (None, Some(from)) => {
                    let (federation, version) = from
                        .split_once('@')
                        .context("--init-from-federation takes NAME@VERSION")?;
                    let version = version.parse().context("the version after @ is a number")?;
                    Some(pb::model_source::Source::FederationVersion(
                        pb::FederationVersion {
                            federation: federation.to_owned(),
                            version,
                        },
                    ))
                }
                (None, None) => None,
            };
            let request = pb::CreateFederationRequest {
                config: Some(wire::federation_config(&spec, 0)),
                init_from: source.map(|s| pb::ModelSource { source: Some(s) }),
            };
            let fed = client.create_federation(request).await?.into_inner();
            let latest = fed.latest.unwrap_or_default();
            println!(
                "created federation {} (model version 0, {} bytes, sha256 {})",
                spec.name, latest.size_bytes, latest.digest
            );
            print_privacy_cost(&spec);
            Ok(())
        }
        Command::Federation(FederationCommand::List { admin, output }) => {
            let mut client = admin_client(&admin).await?;
            let federations = client
                .list_federations(pb::ListFederationsRequest {})
                .await?
                .into_inner()
                .federations;
            if output == Output::Json {
                json::print_lines(federations.iter().map(json::federation));
                return Ok(());
            }
            for fed in federations {
                let config = fed.config.unwrap_or_default();
                let latest = fed.latest.unwrap_or_default();
                println!(
                    "{}\tversion {}\t{}",
                    config.name, latest.version, latest.digest
                );
            }
            Ok(())
        }
        Command::Round(RoundCommand::Start {
            federation,
            wait,
            admin,
        }) => {
            let mut client = admin_client(&admin).await?;
            let round = client
                .start_round(pb::StartRoundRequest { federation })
                .await?
                .into_inner();
            println!("started round {} (number {})", round.id, round.number);
            if wait {
                let round = wait_for_round(&mut client, round.id, progress_printer()).await?;
                print_round(&round);
                if round.state() != pb::RoundState::Committed {
                    bail!("round {} failed: {}", round.id, round.failure_reason);
                }
            }
            Ok(())
        }
        Command::Round(RoundCommand::Cancel {
            round,
            reason,
            admin,
        }) => {
            let mut client = admin_client(&admin).await?;
            let round = client
                .cancel_round(pb::CancelRoundRequest {
                    round_id: round,
                    reason,
                })
                .await?
                .into_inner();
            print_round(&round);
            Ok(())
        }
        Command::Round(RoundCommand::Status {
            round,
            federation,
            watch,
            admin,
            output,
        }) => {
            let print = |round: &pb::Round| match output {
                Output::Json => json::print_lines([json::round(round)]),
                Output::Table => print_round(round),
            };
            let mut client = admin_client(&admin).await?;
            let rounds = match (round, federation) {
                (Some(id), _) => vec![
                    client
                        .get_round(pb::GetRoundRequest { round_id: id })
                        .await?
                        .into_inner(),
                ],
                (None, Some(federation)) => {
                    client
                        .list_rounds(pb::ListRoundsRequest { federation })
                        .await?
                        .into_inner()
                        .rounds
                }
                (None, None) => bail!("give --round ID or --federation NAME"),
            };
            if watch {
                let latest = rounds
                    .iter()
                    .max_by_key(|r| r.id)
                    .context("no rounds yet")?;
                let round = wait_for_round(&mut client, latest.id, progress_printer()).await?;
                print(&round);
                return Ok(());
            }
            rounds.iter().for_each(print);
            Ok(())
        }
        Command::Agents { admin, output } => {
            let mut client = admin_client(&admin).await?;
            let agents = client
                .list_agents(pb::ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            let now_ms = harambee_link::clock::Clock::system().unix_ms();
            match output {
                Output::Json => json::print_lines(agents.iter().map(json::agent)),
                Output::Table => {
                    println!("facility\tstate\tlast seen (UTC)\tprivacy\tcertificate sha256");
                    for agent in &agents {
                        println!("{}", agent_line(agent, now_ms));
                    }
                }
            }
            Ok(())
        }
        Command::Model(ModelCommand::Export {
            federation,
            version,
            out,
            format,
            admin,
        }) => {
            let mut client = admin_client(&admin).await?;
            let meta = match format {
                ExportFormat::Safetensors => {
                    export_safetensors(&mut client, &federation, version, &out).await?
                }
                ExportFormat::F32 => export_model(&mut client, &federation, version, &out).await?,
            };
            println!(
                "wrote model version {} of {federation} to {}",
                meta.version,
                out.display()
            );
            if let Some((json, md)) = write_model_card(&meta, &out)? {
                println!(
                    "wrote its model card to {} and {} (check it: harambee-agent audit verify \
                     --ledger LEDGER --model-card {})",
                    md.display(),
                    json.display(),
                    json.display()
                );
            }
            Ok(())
        }
        Command::Ledger(LedgerCommand::RotateKey {
            database_url,
            old_key,
            new_key,
        }) => {
            let rotated = rotate_ledger_key(&database_url, &old_key, &new_key).await?;
            println!(
                "ledger key rotated at entry {}: {} -> {}; restart serve with --ledger-key {}",
                rotated.index,
                rotated.old_fingerprint,
                rotated.new_fingerprint,
                new_key.display()
            );
            Ok(())
        }
        Command::Backup(args) => {
            let copied = crate::cli::backup::backup(&args).await?;
            println!(
                "backed up {} and {} model blob(s) into {} (the ledger key is not copied: keep it apart)",
                copied.database.display(),
                copied.blobs,
                args.out.display()
            );
            Ok(())
        }
        Command::Restore(args) => {
            let restored = crate::cli::backup::restore(&args).await?;
            println!(
                "restored {} and {} model blob(s); facilities that saw a later ledger head will report the rollback",
                restored.database.display(),
                restored.blobs
            );
            Ok(())
        }
        Command::Console(args) => crate::console::run(*args).await,
        Command::Facility(cmd) => crate::cli::identity::facility(cmd).await,
        Command::Certificate(cmd) => crate::cli::identity::certificate(cmd).await,
        Command::Audit(cmd) => crate::cli::identity::audit(cmd).await,
        Command::Privacy(PrivacyCommand::Epsilon {
            noise_multiplier,
            sampling_rate,
            steps,
            delta,
        }) => {
            let report = harambee_privacy::accountant::epsilon(
                noise_multiplier,
                sampling_rate,
                steps,
                delta,
            )?;
            println!(
                "noise multiplier {noise_multiplier}, sampling rate {sampling_rate}, {steps} steps, delta {delta}: epsilon {} (best RDP order {})",
                report.epsilon, report.order
            );
            println!("{}", report.epsilon);
            Ok(())
        }
    }
}

/// What `ledger rotate-key` did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The index of the rotation entry.
    pub index: u64,
    pub old_fingerprint: String,
    pub new_fingerprint: String,
}

/// `ledger rotate-key`: hands the ledger of the database at `database_url` over from the key
/// in `old_key` (which must be the one the database records) to the key in `new_key`
/// (created, mode 0600, if absent), in one transaction.
pub async fn rotate_ledger_key(
    database_url: &str,
    old_key: &Path,
    new_key: &Path,
) -> anyhow::Result<Rotated> {
    use crate::store::ledger_view;
    use harambee_privacy::ledger::key_fingerprint;
    let old = ledger_view::read_key(old_key)?
        .with_context(|| format!("the old ledger key {} does not exist", old_key.display()))?;
    let new = match ledger_view::read_key(new_key)? {
        Some(key) => key,
        None => ledger_view::create_key(new_key)?,
    };
    let store = crate::store::Store::connect(database_url)
        .await
        .with_context(|| format!("opening the database {}", server::redact_url(database_url)))?;
    let line = store
        .rotate_ledger_key(&old, &new.verifying_key(), crate::state::now_ms())
        .await
        .context("rotating the ledger key")?;
    store.close().await?;
    Ok(Rotated {
        index: line.index,
        old_fingerprint: key_fingerprint(&old.verifying_key()),
        new_fingerprint: key_fingerprint(&new.verifying_key()),
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file: ServeFile = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => ServeFile::default(),
    };
    let otlp = args.otlp_endpoint.or(file.otlp_endpoint);
    let _telemetry =
        crate::server::telemetry::init("harambee-coordinator", otlp.as_deref(), "info")?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "0.0.0.0:7443".parse().expect("valid address"));
    let storage = Storage {
        database_url: args
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| "sqlite://harambee-data/coordinator.db?mode=rwc".to_owned()),
        blob_dir: args
            .blob_dir
            .or(file.blob_dir)
            .unwrap_or_else(|| PathBuf::from("harambee-data/blobs")),
        blobs_in_database: args.blobs_in_database || file.blobs_in_database.unwrap_or(false),
        ledger_key: args.ledger_key.or(file.ledger_key).context(
            "no ledger key given: pass --ledger-key PATH (or ledger_key in the serve file, or HARAMBEE_LEDGER_KEY); key material has no default path",
        )?,
    };
    if let Some(path) = storage
        .database_url
        .strip_prefix("sqlite://")
        .map(|p| p.split('?').next().unwrap_or(p))
        && let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut settings = Settings::default();
    if let Some(s) = file.heartbeat_interval_s {
        settings.heartbeat_interval = Duration::from_secs(s.max(1));
    }
    if let Some(s) = file.liveness_timeout_s {
        settings.liveness_timeout = Duration::from_secs(s.max(1));
    }
    if let Some(s) = file.reconnect_grace_s {
        settings.reconnect_grace = Duration::from_secs(s);
    }
    if let Some(h) = file.blob_retention_h {
        settings.blob_retention = (h > 0).then(|| Duration::from_secs(h * 3600));
    }
    if let Some(mb) = file.upload_buffer_mb {
        settings.upload_buffer_bytes = usize::try_from(mb.max(1))
            .unwrap_or(usize::MAX >> 20)
            .saturating_mul(1 << 20);
    }
    if let Some(kib) = file.receive_window_kib {
        // HTTP/2's smallest window is 64 KiB - 1; its largest 2 GiB - 1.
        settings.receive_window_bytes = kib.clamp(64, (1 << 21) - 1) << 10;
    }
    let pki_dir = args
        .pki
        .or(file.pki)
        .unwrap_or_else(|| PathBuf::from("pki"));
    let tls = crate::server::tls::load_server_config(&PkiPaths::new(&pki_dir))
        .with_context(|| format!("loading the TLS identity from {}", pki_dir.display()))?;
    // The ops port answers from the start: a standby waiting for the lease is alive, not
    // ready.
    let readiness = server::ops::Readiness::default();
    let ops = match args.ops_listen.or(file.ops_listen) {
        Some(addr) => {
            let listener = server::ops::bind(addr)
                .await
                .with_context(|| format!("binding the ops port {addr}"))?;
            Some(tokio::spawn(server::ops::serve(
                listener,
                readiness.clone(),
                std::future::pending(),
            )))
        }
        None => None,
    };
    let _stop_ops = ops.map(|task| AbortOnDrop(task.abort_handle()));
    // One writer per database: held until this process ends.
    let url = &storage.database_url;
    let mut lease = if args.standby {
        let lease = tokio::select! {
            lease = Lease::wait(url, |held| tracing::info!("standing by: {held}")) => lease?,
            () = shutdown_signal() => return Ok(()),
        };
        tracing::info!("took the database lease; taking over");
        lease
    } else {
        Lease::take(url).await?
    };
    readiness.lease_taken();
    let coord = server::open(&storage, settings).await?;
    crate::service::enrol::enable_from_pki(&coord, &PkiPaths::new(&pki_dir)).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    readiness.serving(coord.clone());
    // A coordinator that lost its lease must not write another byte: a standby may be
    // serving already. Stop at once, without waiting for streams to drain.
    let _watch = tokio::spawn(async move {
        let lost = lease.lost().await;
        tracing::error!("{lost}; stopping");
        std::process::exit(1);
    });
    server::serve(coord, listener, tls, shutdown_signal()).await
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

fn pki_command(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init {
            dir,
            sans,
            ca_out: Some(ca_out),
        } => {
            pki::init_offline(&dir, &ca_out, &sans)
                .with_context(|| format!("creating a PKI in {}", dir.display()))?;
            let (cert, _key) = pki::issue(&dir, Role::Operator, "admin", 90)?;
            println!(
                "{}\noperator certificate: {}",
                crate::cli::identity::describe_offline_init(&dir, &ca_out),
                cert.display()
            );
            Ok(())
        }
        PkiCommand::IssuingCa { ca_dir, dir, days } => {
            let cert = pki::issue_issuing_ca(&ca_dir, &dir, days)
                .with_context(|| format!("issuing a new issuing CA into {}", dir.display()))?;
            println!(
                "issuing CA: {} (restart the coordinator to use it)",
                cert.display()
            );
            Ok(())
        }
        PkiCommand::Init {
            dir,
            sans,
            ca_out: None,
        } => {
            let paths = pki::init(&dir, &sans)
                .with_context(|| format!("creating a PKI in {}", dir.display()))?;
            let (cert, _key) = pki::issue(&dir, Role::Operator, "admin", 90)?;
            println!(
                "CA: {}\ncoordinator certificate: {}\noperator certificate: {}",
                paths.ca_cert().display(),
                paths.server_cert().display(),
                cert.display()
            );
            println!(
                "{} signs every certificate: while it is on this host, the coordinator enrols \
                 facilities and renews their certificates, and whoever takes the host can mint \
                 any identity. Taking it offline stops enrolment and renewal too. To keep both \
                 with the CA offline, create the PKI with `pki init --ca-out DIR` instead: the \
                 host then holds only a one-year issuing CA (deploy/PKI.md).",
                paths.ca_key().display()
            );
            Ok(())
        }
        PkiCommand::RenewServer(args) => crate::cli::identity::renew_server(&args),
        PkiCommand::Issue {
            dir,
            facility,
            role,
            name,
            days,
        } => {
            let (role, name) = match (facility, role, name) {
                (Some(facility), _, _) => (Role::Agent, facility),
                (None, Some(role), Some(name)) => (role, name),
                _ => bail!("give --facility NAME, or --role ROLE --name NAME"),
            };
            let (cert, key) = pki::issue(&dir, role, &name, days)?;
            println!(
                "certificate: {}\nprivate key: {}",
                cert.display(),
                key.display()
            );
            Ok(())
        }
    }
}

/// A client of the AdminService authenticated with an operator certificate.
pub async fn admin_client(args: &AdminArgs) -> anyhow::Result<AdminServiceClient<Channel>> {
    let paths = PkiPaths::new(&args.pki);
    let tls = ClientTls::from_files(
        &paths.ca_cert(),
        &paths.issued_cert(Role::Operator, &args.operator),
        &paths.issued_key(Role::Operator, &args.operator),
        &args.server_name,
    )?;
    let channel = harambee_link::tls::connect(&args.coordinator, &tls, Duration::from_secs(10))
        .await
        .with_context(|| format!("connecting to {}", args.coordinator))?;
    Ok(AdminServiceClient::new(channel)
        .max_decoding_message_size(harambee_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(harambee_proto::MAX_MESSAGE_BYTES))
}

/// Polls a round until it is committed or failed, calling `progress` on every poll.
pub async fn wait_for_round(
    client: &mut AdminServiceClient<Channel>,
    round_id: u64,
    mut progress: impl FnMut(&pb::Round),
) -> anyhow::Result<pb::Round> {
    loop {
        let round = client
            .get_round(pb::GetRoundRequest { round_id })
            .await?
            .into_inner();
        progress(&round);
        if matches!(
            round.state(),
            pb::RoundState::Committed | pb::RoundState::Failed
        ) {
            return Ok(round);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Formats of `model export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Safetensors,
    F32,
}

/// Downloads a model version as a safetensors checkpoint (tensors per layer; metadata: the
/// model kind, hidden sizes, feature schema, federation and version).
pub async fn export_safetensors(
    client: &mut AdminServiceClient<Channel>,
    federation: &str,
    version: Option<u32>,
    out: &Path,
) -> anyhow::Result<pb::ModelVersion> {
    let raw = out.with_extension("f32.tmp");
    let meta = export_model(client, federation, version, &raw).await?;
    let params = harambee_core::params::from_le_bytes(&std::fs::read(&raw)?)?;
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(raw.with_extension("json"));
    let (spec, schema) = harambee_link::convert::model(meta.spec.as_ref())?;
    if let harambee_models::model::ModelKind::MinilmLora { text } = &spec.kind {
        // The adapters and head only: the base model is the pinned one, not exported.
        harambee_models::text::lora::export_peft(
            &text.classifier(),
            &params,
            &text.base_sha256,
            out,
        )?;
        return Ok(meta);
    }
    let checkpoint = harambee_models::checkpoint::Checkpoint {
        spec,
        schema,
        params,
        federation: federation.to_owned(),
        version: meta.version.into(),
    };
    harambee_models::checkpoint::save_file(out, &checkpoint)?;
    Ok(meta)
}

/// Writes the model card the coordinator sent with an export next to `out`:
/// `<stem>.card.json` (exactly as sent: its SHA-256 is in the ledger) and `<stem>.card.md`.
/// `None` when the coordinator sent no card (an older coordinator).
pub fn write_model_card(
    meta: &pb::ModelVersion,
    out: &Path,
) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    if meta.model_card.is_empty() {
        return Ok(None);
    }
    let card = harambee_privacy::card::ModelCard::parse(&meta.model_card)
        .map_err(|e| anyhow::anyhow!("the coordinator sent a malformed model card: {e}"))?;
    let (json, md) = (
        out.with_extension("card.json"),
        out.with_extension("card.md"),
    );
    std::fs::write(&json, &meta.model_card)
        .with_context(|| format!("writing {}", json.display()))?;
    std::fs::write(&md, card.to_markdown()).with_context(|| format!("writing {}", md.display()))?;
    Ok(Some((json, md)))
}

/// A model version's description and model card, without its parameters: the export's
/// first message (the coordinator ledgers the export, card digest included, before it).
pub async fn model_description(
    client: &mut AdminServiceClient<Channel>,
    federation: &str,
    version: Option<u32>,
) -> anyhow::Result<pb::ModelVersion> {
    let request = pb::ExportModelRequest {
        federation: federation.to_owned(),
        version,
    };
    let mut stream = client.export_model(request).await?.into_inner();
    match stream.next().await.transpose()? {
        Some(pb::ExportModelResponse {
            part: Some(pb::export_model_response::Part::Meta(meta)),
        }) => Ok(meta),
        _ => bail!("export stream did not start with the model description"),
    }
}

/// Downloads a model version to `out` (raw little-endian f32) and `out.json` (description).
pub async fn export_model(
    client: &mut AdminServiceClient<Channel>,
    federation: &str,
    version: Option<u32>,
    out: &Path,
) -> anyhow::Result<pb::ModelVersion> {
    let (meta, bytes) = download_model(client, federation, version).await?;
    let model = meta.model.clone().unwrap_or_default();
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    let spec = meta.spec.clone().unwrap_or_default();
    let description = serde_json::json!({
        "federation": meta.federation,
        "version": meta.version,
        "round_id": meta.round_id,
        "sha256": model.digest,
        "n_params": spec.n_params,
        "kind": spec.kind,
        "hidden": spec.hidden,
        "format": "little-endian f32, parameters in model declaration order",
        "schema": spec.schema.map(wire::schema_from_pb).transpose()?,
    });
    let json_path = out.with_extension("json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&description)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(meta)
}

/// A model version's description and bytes (little-endian f32), checked against the
/// SHA-256 the coordinator advertises.
pub async fn download_model(
    client: &mut AdminServiceClient<Channel>,
    federation: &str,
    version: Option<u32>,
) -> anyhow::Result<(pb::ModelVersion, Vec<u8>)> {
    use sha2::{Digest, Sha256};
    let request = pb::ExportModelRequest {
        federation: federation.to_owned(),
        version,
    };
    let mut stream = client.export_model(request).await?.into_inner();
    let Some(pb::ExportModelResponse {
        part: Some(pb::export_model_response::Part::Meta(meta)),
    }) = stream.next().await.transpose()?
    else {
        bail!("export stream did not start with the model description");
    };
    let model = meta.model.clone().unwrap_or_default();
    let mut bytes = Vec::with_capacity(model.size_bytes as usize);
    while let Some(part) = stream.next().await.transpose()? {
        if let Some(pb::export_model_response::Part::Chunk(chunk)) = part.part {
            if chunk.offset != bytes.len() as u64 {
                bail!(
                    "export chunk at offset {} where {} was expected",
                    chunk.offset,
                    bytes.len()
                );
            }
            bytes.extend_from_slice(&chunk.data);
        }
    }
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != model.digest {
        bail!(
            "exported model's sha256 {digest} differs from the advertised {}",
            model.digest
        );
    }
    Ok((meta, bytes))
}

/// `masked_input`: the round's state as its proto name says it, without the prefix.
pub fn state_name(round: &pb::Round) -> String {
    round
        .state()
        .as_str_name()
        .trim_start_matches("ROUND_STATE_")
        .to_lowercase()
}

/// `uploaded`: a participant's status as its proto name says it, without the prefix.
fn status_name(p: &pb::Participant) -> String {
    p.status()
        .as_str_name()
        .trim_start_matches("PARTICIPANT_STATUS_")
        .to_lowercase()
}

pub fn print_round(round: &pb::Round) {
    let state = state_name(round);
    println!(
        "round {} (#{} of {}): {state}",
        round.id, round.number, round.federation
    );
    if let Some(eps) = round.facility_epsilon {
        println!("  facility-level privacy of the federation so far: ε = {eps:.4}");
    }
    if !round.failure_reason.is_empty() {
        println!("  reason: {}", round.failure_reason);
    }
    for n in &round.not_selected {
        println!("  {:<24} {:<9} ({})", n.facility, "not selected", n.reason);
    }
    for p in &round.participants {
        let status = status_name(p);
        let detail = if p.detail.is_empty() {
            String::new()
        } else {
            format!("  ({})", p.detail)
        };
        println!(
            "  {:<24} {status:<9} n={:<6}{detail}",
            p.facility, p.n_samples
        );
    }
    if round.participants.iter().any(|p| p.metrics.is_some()) {
        print_metrics_table(round);
    }
}

/// Per-facility metrics of a round, the weighted global row, the worst facility's AUC and
/// the best-worst gap.
pub fn print_metrics_table(round: &pb::Round) {
    println!(
        "  {:<24} {:>6} {:>7} {:>8} {:>7} {:>6} {:>6} {:>6}",
        "facility", "n_test", "loss", "accuracy", "auc", "sens", "spec", "ece"
    );
    let row = |name: &str, m: &pb::Metrics| {
        println!(
            "  {name:<24} {:>6} {:>7.4} {:>8.4} {:>7.4} {:>6.3} {:>6.3} {:>6.3}",
            m.n_samples, m.loss, m.accuracy, m.auc, m.sensitivity, m.specificity, m.ece
        )
    };
    for p in &round.participants {
        match &p.metrics {
            Some(m) => row(&p.facility, m),
            None => println!(
                "  {:<24} {:>6} {}",
                p.facility,
                "-",
                if p.detail.is_empty() {
                    "no metrics"
                } else {
                    &p.detail
                }
            ),
        }
    }
    if let Some(g) = &round.global_metrics {
        row("global (weighted mean)", g);
    }
    let aucs: Vec<(&str, f64)> = round
        .participants
        .iter()
        .filter_map(|p| p.metrics.map(|m| (p.facility.as_str(), m.auc)))
        .filter(|(_, a)| a.is_finite())
        .collect();
    if let (Some(worst), Some(best)) = (
        aucs.iter().min_by(|a, b| a.1.total_cmp(&b.1)),
        aucs.iter().max_by(|a, b| a.1.total_cmp(&b.1)),
    ) {
        println!(
            "  worst facility AUC {:.4} ({}), best-worst gap {:.4}",
            worst.1,
            worst.0,
            best.1 - worst.1
        );
    }
}

/// What a round of `spec` costs each facility in patient-level ε, and how many rounds
/// typical budgets allow: a facility whose budget is spent declines further rounds.
fn print_privacy_cost(spec: &FederationSpec) {
    let Some(cost) = spec.privacy_cost() else {
        println!(
            "no patient-level DP-SGD: facilities whose policy sets a privacy budget (max_epsilon) decline this federation"
        );
        return;
    };
    println!(
        "each round costs every facility ε = {:.3} at δ = {:e} (patient-level DP-SGD, {} noisy steps per round)",
        cost.epsilon_per_round, cost.delta, cost.steps_per_round
    );
    let within: Vec<String> = cost
        .rounds_within
        .iter()
        .map(|(budget, rounds)| format!("ε ≤ {budget}: {rounds}"))
        .collect();
    println!("rounds a facility's budget allows: {}", within.join(", "));
}

/// A `wait_for_round` progress callback that prints a line whenever the round's stage or its
/// facilities' states change.
fn progress_printer() -> impl FnMut(&pb::Round) {
    let mut last = String::new();
    let started = std::time::Instant::now();
    move |round| {
        let line = progress_line(round);
        if line != last {
            println!("{:>6.1} s  {line}", started.elapsed().as_secs_f64());
            last = line;
        }
    }
}

/// `round 12: masked input; 10 selected: 8 uploaded, 1 trained, 1 dropped`.
pub fn progress_line(round: &pb::Round) -> String {
    let state = state_name(round).replace('_', " ");
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for p in &round.participants {
        *counts.entry(status_name(p)).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    if counts.is_empty() {
        let refusing: Vec<String> = round
            .not_selected
            .iter()
            .map(|n| format!("{} ({})", n.facility, n.reason))
            .collect();
        if refusing.is_empty() {
            format!("round {}: {state}", round.id)
        } else {
            format!(
                "round {}: {state}; not selected: {}",
                round.id,
                refusing.join(", ")
            )
        }
    } else {
        format!(
            "round {}: {state}; {} selected: {}",
            round.id,
            round.participants.len(),
            counts.join(", ")
        )
    }
}

/// How a read command prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people: aligned by tabs, times as UTC dates with their age.
    #[default]
    Table,
    /// For scripts: one JSON object per line.
    Json,
}

fn agent_line(agent: &pb::Agent, now_ms: i64) -> String {
    let state = if agent.connected {
        "connected"
    } else {
        "offline"
    };
    let privacy = match (agent.epsilon_spent, agent.max_epsilon) {
        (Some(spent), Some(max)) => format!("ε {spent:.2} of {max}"),
        (Some(spent), None) => format!("ε {spent:.2}, no budget"),
        _ => "-".to_owned(),
    };
    format!(
        "{}\t{state}\t{}\t{privacy}\t{}",
        agent.facility,
        date_and_age(agent.last_seen_unix_ms, now_ms),
        agent.cert_sha256
    )
}

/// `2026-12-04 19:58:02 (12 s ago)`, in UTC; `never` for 0.
pub fn date_and_age(unix_ms: i64, now_ms: i64) -> String {
    if unix_ms <= 0 {
        return "never".to_owned();
    }
    let Some(date) = utc_date(unix_ms) else {
        return format!("{unix_ms} ms");
    };
    let age_s = (now_ms - unix_ms).max(0) / 1000;
    let age = match age_s {
        s if s < 120 => format!("{s} s ago"),
        s if s < 2 * 3600 => format!("{} min ago", s / 60),
        s if s < 2 * 86_400 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    };
    format!("{date} ({age})")
}

/// `2026-12-04 19:58:02`, in UTC; `None` outside the representable dates.
pub fn utc_date(unix_ms: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc_dates_with_their_age() {
        // 2026-12-04 19:58:02 UTC.
        let at = 1_796_414_282_000;
        assert_eq!(
            date_and_age(at, at + 12_400),
            "2026-12-04 19:58:02 (12 s ago)"
        );
        assert!(date_and_age(at, at + 5 * 60_000).ends_with("(5 min ago)"));
        assert!(date_and_age(at, at + 3 * 3_600_000).ends_with("(3 h ago)"));
        assert!(date_and_age(at, at + 9 * 86_400_000).ends_with("(9 days ago)"));
        assert_eq!(date_and_age(0, at), "never");
    }

    #[test]
    fn a_progress_line_names_the_stage_and_counts_facilities_by_state() {
        let participant = |name: &str, status: pb::ParticipantStatus| pb::Participant {
            facility: name.into(),
            status: status as i32,
            ..Default::default()
        };
        let mut round = pb::Round {
            id: 12,
            state: pb::RoundState::MaskedInput as i32,
            ..Default::default()
        };
        assert_eq!(progress_line(&round), "round 12: masked input");
        round.participants = vec![
            participant("a", pb::ParticipantStatus::Uploaded),
            participant("b", pb::ParticipantStatus::Uploaded),
            participant("c", pb::ParticipantStatus::Dropped),
        ];
        assert_eq!(
            progress_line(&round),
            "round 12: masked input; 3 selected: 1 dropped, 2 uploaded"
        );
        let selecting = pb::Round {
            id: 13,
            state: pb::RoundState::Selecting as i32,
            not_selected: vec![pb::NotSelected {
                facility: "d".into(),
                reason: "its budget is spent".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            progress_line(&selecting),
            "round 13: selecting; not selected: d (its budget is spent)"
        );
    }

    #[test]
    fn an_agent_line_and_its_json_carry_the_same_facts() {
        let agent = pb::Agent {
            facility: "kisumu".into(),
            connected: true,
            last_seen_unix_ms: 1_796_414_282_000,
            cert_sha256: "ab".into(),
            epsilon_spent: Some(1.5),
            max_epsilon: Some(10.0),
            delta: Some(1e-5),
            ..Default::default()
        };
        let line = agent_line(&agent, 1_796_414_283_000);
        assert_eq!(
            line,
            "kisumu\tconnected\t2026-12-04 19:58:02 (1 s ago)\tε 1.50 of 10\tab"
        );
        let json = json::agent(&agent);
        assert_eq!(json["last_seen_unix_ms"], 1_796_414_282_000i64);
        assert_eq!(json["max_epsilon"], 10.0);
    }

    #[test]
    fn a_round_as_json_names_states_and_keeps_nan_out() {
        let round = pb::Round {
            id: 7,
            federation: "heart".into(),
            state: pb::RoundState::Committed as i32,
            participants: vec![pb::Participant {
                facility: "kisumu".into(),
                status: pb::ParticipantStatus::Uploaded as i32,
                n_samples: 120,
                metrics: Some(pb::Metrics {
                    n_samples: 40,
                    auc: 0.9,
                    sensitivity: f64::NAN,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let json: serde_json::Value =
            serde_json::from_str(&json::round(&round).to_string()).unwrap();
        assert_eq!(json["state"], "committed");
        assert_eq!(json["participants"][0]["status"], "uploaded");
        assert_eq!(json["participants"][0]["metrics"]["auc"], 0.9);
        assert!(json["participants"][0]["metrics"]["sensitivity"].is_null());
        assert!(json["result"].is_null());
    }
}
