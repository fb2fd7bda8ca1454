//! `harambee-coordinator console`: a local web console for national units and auditors.
//!
//! It talks to the coordinator over mTLS gRPC with the operator's or auditor's own
//! certificate (the files the command line uses, the operator profile included), so the
//! browser needs no certificate and the coordinator goes on enforcing roles; what the console
//! shows and offers follows the certificate's role. With `--ledger FILE` it browses an
//! exported ledger with no coordinator at all, and with `--receipts LOG...` checks each
//! facility's privacy log against it (`harambee_privacy::audit`, as `audit verify` does).
//!
//! Pages are rendered on the server ([`pages`]), with one stylesheet and SVG plots served by
//! the binary and no script. Safety ([`security`]): it listens on loopback unless
//! `--allow-remote` (then a token is required), answers only to its own host name, and every
//! action is a POST with this process's CSRF token. No key or token reaches a page.

pub mod html;
pub mod ledger;
pub mod pages;
pub mod security;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use harambee_link::identity::Role as CertRole;
use harambee_privacy::ledger::SignedTreeHead;
use harambee_privacy::ledger::export::KeyPin;
use harambee_proto::pb::{
    self, admin_service_client::AdminServiceClient, audit_service_client::AuditServiceClient,
    identity_service_client::IdentityServiceClient,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::net::TcpListener;
use tonic::transport::Channel;

use crate::cli::AdminArgs;
use crate::pki::PkiPaths;
pub use pages::Role;
use pages::{Ctx, LedgerFilter};
use security::{Guard, field, form_fields};

/// `harambee-coordinator console` arguments.
#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    /// Address to serve the console on. Loopback unless --allow-remote.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve a non-loopback address; browsers must then log in with the token in
    /// --token-file.
    #[arg(long)]
    pub allow_remote: bool,
    /// A file holding the token (at least 16 characters) that browsers give to log in.
    #[arg(long, env = "HARAMBEE_CONSOLE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Act with the auditor certificate issued/auditor-NAME.{pem,key} (reads, and the
    /// privacy ledger) instead of the operator's.
    #[arg(long)]
    pub auditor: Option<String>,
    /// Browse this exported ledger (`audit export`) offline, without a coordinator.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// The export's head file (default: `<stem>.head.json` beside --ledger).
    #[arg(long, requires = "ledger")]
    pub head: Option<PathBuf>,
    /// Facilities' privacy logs (`state_dir/privacy-log.jsonl`, as `harambee-agent audit
    /// verify --receipts` takes them): the ledger page shows, per facility, whether its
    /// receipts match the ledger, naming each mismatch.
    #[arg(long, requires = "ledger", num_args = 1..)]
    pub receipts: Vec<PathBuf>,
    /// The coordinator's ledger key (64 hex digits) or its fingerprint (`sha256:` and 64 hex
    /// digits), obtained independently: the ledger "verifies" only against a pinned key.
    #[arg(long, env = "HARAMBEE_LEDGER_PIN")]
    pub ledger_key: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Where the console's data comes from.
pub enum Source {
    /// A coordinator, through a channel with an operator's or auditor's certificate.
    Live { channel: Channel, role: Role },
    /// An export on disk, and facilities' privacy logs to check it against, read again on
    /// every request.
    Offline {
        ledger: PathBuf,
        head: Option<PathBuf>,
        receipts: Vec<PathBuf>,
    },
}

/// A running console's state.
pub struct Console {
    source: Source,
    guard: Guard,
    pin: Option<KeyPin>,
    acting_as: String,
    /// The last ledger checked, reused while its signed head (live) or its files' contents
    /// (offline) are unchanged: checking every receipt of a large ledger takes seconds.
    checked: Mutex<Option<(CacheKey, Arc<ledger::Checked>)>>,
}

/// What a checked ledger is kept for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CacheKey {
    /// The coordinator's signed head.
    Head(SignedTreeHead),
    /// SHA-256 of the export's entries and head file.
    Files([u8; 32]),
}

impl Console {
    /// A console over `source`, for a listener on `listen`; `token` turns on token mode.
    pub fn new(
        source: Source,
        acting_as: String,
        listen: SocketAddr,
        token: Option<String>,
        pin: Option<KeyPin>,
    ) -> Console {
        Console {
            source,
            guard: Guard::new(listen, token),
            pin,
            acting_as,
            checked: Mutex::new(None),
        }
    }

    pub fn role(&self) -> Role {
        match &self.source {
            Source::Live { role, .. } => *role,
            Source::Offline { .. } => Role::Offline,
        }
    }

    /// The CSRF token this process's forms carry.
    pub fn csrf(&self) -> &str {
        self.guard.csrf()
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            role: self.role(),
            acting_as: &self.acting_as,
            csrf: self.guard.csrf(),
            now_ms: harambee_link::clock::Clock::system().unix_ms(),
        }
    }

    fn channel(&self) -> Option<Channel> {
        match &self.source {
            Source::Live { channel, .. } => Some(channel.clone()),
            Source::Offline { .. } => None,
        }
    }

    fn admin(&self) -> Option<AdminServiceClient<Channel>> {
        self.channel().map(|c| {
            AdminServiceClient::new(c)
                .max_decoding_message_size(harambee_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(harambee_proto::MAX_MESSAGE_BYTES)
        })
    }

    fn identity(&self) -> Option<IdentityServiceClient<Channel>> {
        self.channel().map(IdentityServiceClient::new)
    }
}

/// The role a certificate file (PEM) names: operator or auditor.
pub fn role_of_certificate(path: &std::path::Path) -> anyhow::Result<Role> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let der = CertificateDer::from_pem_slice(&pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    let identity = harambee_link::identity::identity_from_cert(&der)
        .with_context(|| format!("reading the identity in {}", path.display()))?;
    match identity.role {
        CertRole::Operator => Ok(Role::Operator),
        CertRole::Auditor => Ok(Role::Auditor),
        CertRole::Agent => bail!(
            "{} is a facility's agent certificate: the console runs with an operator's or an auditor's",
            path.display()
        ),
    }
}

/// Runs `harambee-coordinator console` until Ctrl-C.
pub async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the console token {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    security::check_listen(args.listen, args.allow_remote, token.as_deref())?;
    let pin = args
        .ledger_key
        .as_deref()
        .map(|text| KeyPin::parse(text).map_err(anyhow::Error::msg))
        .transpose()
        .context("--ledger-key")?;
    let (source, acting_as) = match &args.ledger {
        Some(ledger) => {
            // Fail early on a missing or unreadable export.
            ledger::Snapshot::read(ledger, args.head.as_deref(), &args.receipts)?;
            (
                Source::Offline {
                    ledger: ledger.clone(),
                    head: args.head.clone(),
                    receipts: args.receipts.clone(),
                },
                format!("offline auditor of {}", ledger.display()),
            )
        }
        None => {
            let (cert_role, name) = match &args.auditor {
                Some(name) => (CertRole::Auditor, name.clone()),
                None => (CertRole::Operator, args.admin.operator.clone()),
            };
            let paths = PkiPaths::new(&args.admin.pki);
            let cert = paths.issued_cert(cert_role, &name);
            // The role is the one the certificate itself names.
            let role = role_of_certificate(&cert)?;
            let tls = harambee_link::tls::ClientTls::from_files(
                &paths.ca_cert(),
                &cert,
                &paths.issued_key(cert_role, &name),
                &args.admin.server_name,
            )?;
            let channel = harambee_link::tls::connect(
                &args.admin.coordinator,
                &tls,
                std::time::Duration::from_secs(10),
            )
            .await
            .with_context(|| format!("connecting to {}", args.admin.coordinator))?;
            let word = if role == Role::Operator {
                "operator"
            } else {
                "auditor"
            };
            (Source::Live { channel, role }, format!("{word} {name}"))
        }
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let bound = listener.local_addr()?;
    let console = Arc::new(Console::new(source, acting_as, bound, token, pin));
    println!("console for {}: http://{bound}/", console.acting_as);
    serve(console, listener, crate::cli::shutdown_signal()).await
}

/// Serves `console` on `listener` until `shutdown` resolves.
pub async fn serve(
    console: Arc<Console>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(console))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the console")
}

/// The console's routes.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/federation/{name}", get(federation))
        .route(
            "/federation/{name}/export",
            axum::routing::post(export_model),
        )
        .route(
            "/federation/{name}/card",
            axum::routing::post(export_model_card),
        )
        .route("/facilities", get(facilities))
        .route(
            "/facilities/{name}/revoke",
            get(revoke_confirm).post(revoke),
        )
        .route("/ledger", get(ledger_page))
        .route("/ledger/entry/{index}", get(entry))
        .route("/downloads", get(downloads))
        .route("/download/{file}", get(download))
        .route("/login", get(login_page).post(login))
        .route("/static/console.css", get(css))
        .route("/static/icon.svg", get(icon))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

type Shared = State<Arc<Console>>;

/// Host check, login in token mode, and the headers every answer carries.
async fn guard(State(console): Shared, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let mut response = if !console.guard.host_ok(host) {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "this console answers only to its own address\n",
        )
            .into_response()
    } else if console.guard.needs_login()
        && !request.uri().path().starts_with("/static/")
        && request.uri().path() != "/login"
        && !console.guard.session_ok(
            request
                .headers()
                .get(header::COOKIE)
                .and_then(|c| c.to_str().ok()),
        )
    {
        Redirect::to("/login").into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn page(status: StatusCode, html: String) -> Response {
    (status, Html(html)).into_response()
}

fn error(console: &Console, status: StatusCode, title: &str, message: &str) -> Response {
    page(status, pages::error_page(&console.ctx(), title, message))
}

/// A coordinator's refusal or a connection failure, as a page.
fn upstream(console: &Console, e: impl std::fmt::Display) -> Response {
    error(
        console,
        StatusCode::BAD_GATEWAY,
        "The coordinator did not answer",
        &format!("{e:#}"),
    )
}

fn offline_only_ledger(console: &Console) -> Response {
    error(
        console,
        StatusCode::NOT_FOUND,
        "Not available offline",
        "this console browses an exported ledger only: see the privacy ledger",
    )
}

async fn not_found(State(console): Shared) -> Response {
    error(
        &console,
        StatusCode::NOT_FOUND,
        "Not found",
        "there is no such page",
    )
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::CSS,
    )
        .into_response()
}

async fn icon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], html::ICON).into_response()
}

/// Federations and every round of each.
async fn federations_and_rounds(
    client: &mut AdminServiceClient<Channel>,
) -> Result<(Vec<pb::Federation>, BTreeMap<String, Vec<pb::Round>>), tonic::Status> {
    let federations = client
        .list_federations(pb::ListFederationsRequest {})
        .await?
        .into_inner()
        .federations;
    let mut rounds = BTreeMap::new();
    for fed in &federations {
        let name = fed
            .config
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let list = client
            .list_rounds(pb::ListRoundsRequest {
                federation: name.clone(),
            })
            .await?
            .into_inner()
            .rounds;
        rounds.insert(name, list);
    }
    Ok((federations, rounds))
}

async fn agents_and_facilities(
    console: &Console,
) -> Result<(Vec<pb::Agent>, Vec<pb::Facility>), tonic::Status> {
    let (Some(mut admin), Some(mut identity)) = (console.admin(), console.identity()) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let agents = admin
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    let facilities = identity
        .list_facilities(pb::ListFacilitiesRequest {})
        .await?
        .into_inner()
        .facilities;
    Ok((agents, facilities))
}

async fn overview(State(console): Shared) -> Response {
    let Some(mut admin) = console.admin() else {
        return Redirect::to("/ledger").into_response();
    };
    let result = async {
        let (federations, rounds) = federations_and_rounds(&mut admin).await?;
        let (agents, facilities) = agents_and_facilities(&console).await?;
        Ok::<_, tonic::Status>(pages::overview(
            &console.ctx(),
            &federations,
            &rounds,
            &agents,
            &facilities,
        ))
    }
    .await;
    match result {
        Ok(html) => page(StatusCode::OK, html),
        Err(e) => upstream(&console, e.message()),
    }
}

async fn federation(State(console): Shared, Path(name): Path<String>) -> Response {
    let Some(mut admin) = console.admin() else {
        return offline_only_ledger(&console);
    };
    let result = async {
        let federations = admin
            .list_federations(pb::ListFederationsRequest {})
            .await?
            .into_inner()
            .federations;
        let Some(fed) = federations
            .into_iter()
            .find(|f| f.config.as_ref().is_some_and(|c| c.name == name))
        else {
            return Ok(None);
        };
        let rounds = admin
            .list_rounds(pb::ListRoundsRequest {
                federation: name.clone(),
            })
            .await?
            .into_inner()
            .rounds;
        Ok::<_, tonic::Status>(Some(pages::federation(&console.ctx(), &fed, &rounds)))
    }
    .await;
    match result {
        Ok(Some(html)) => page(StatusCode::OK, html),
        Ok(None) => error(
            &console,
            StatusCode::NOT_FOUND,
            "No such federation",
            &format!("the coordinator knows no federation {name:?}"),
        ),
        Err(e) => upstream(&console, e.message()),
    }
}

async fn facilities(State(console): Shared, RawQuery(query): RawQuery) -> Response {
    if console.role() == Role::Offline {
        return offline_only_ledger(&console);
    }
    let result = async {
        let (agents, facilities) = agents_and_facilities(&console).await?;
        let spend = match (console.role(), console.channel()) {
            (Role::Auditor, Some(channel)) => {
                AuditServiceClient::new(channel)
                    .list_privacy_spend(pb::ListPrivacySpendRequest {})
                    .await?
                    .into_inner()
                    .facilities
            }
            _ => Vec::new(),
        };
        Ok::<_, tonic::Status>((agents, facilities, spend))
    }
    .await;
    let (agents, facility_list, spend) = match result {
        Ok(data) => data,
        Err(e) => return upstream(&console, e.message()),
    };
    let rows = pages::facility_rows(&facility_list, &agents, &spend);
    // A notice only for what is true: the facility named is listed as revoked.
    let fields = form_fields(query.as_deref().unwrap_or(""));
    let notice = field(&fields, "revoked")
        .filter(|name| {
            facility_list
                .iter()
                .any(|f| f.name == *name && f.status == "revoked")
        })
        .map(|name| format!("facility {name} revoked: its connections are refused from now on"));
    page(
        StatusCode::OK,
        pages::facilities(&console.ctx(), &rows, notice.as_deref()),
    )
}

fn operator_only(console: &Console, what: &str) -> Option<Response> {
    match console.role() {
        Role::Operator => None,
        _ => Some(error(
            console,
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "{what} needs an operator's certificate; this console acts as {}",
                console.acting_as
            ),
        )),
    }
}

fn csrf_refused(console: &Console) -> Response {
    error(
        console,
        StatusCode::FORBIDDEN,
        "Refused",
        "the form did not carry this console's token (a page of another site, or a console restarted since the page was loaded): reload the page and try again",
    )
}

async fn revoke_confirm(State(console): Shared, Path(name): Path<String>) -> Response {
    if let Some(refused) = operator_only(&console, "revoking a facility") {
        return refused;
    }
    page(StatusCode::OK, pages::revoke_confirm(&console.ctx(), &name))
}

async fn revoke(State(console): Shared, Path(name): Path<String>, body: String) -> Response {
    if let Some(refused) = operator_only(&console, "revoking a facility") {
        return refused;
    }
    let fields = form_fields(&body);
    if !console.guard.csrf_ok(field(&fields, "csrf")) {
        return csrf_refused(&console);
    }
    let reason = field(&fields, "reason").unwrap_or("").to_owned();
    let Some(mut identity) = console.identity() else {
        return offline_only_ledger(&console);
    };
    match identity
        .revoke_facility(pb::RevokeFacilityRequest {
            name: name.clone(),
            reason,
        })
        .await
    {
        Ok(_) => {
            Redirect::to(&format!("/facilities?revoked={}", html::url_part(&name))).into_response()
        }
        Err(e) => error(
            &console,
            StatusCode::BAD_GATEWAY,
            "Not revoked",
            &format!("the coordinator refused: {}", e.message()),
        ),
    }
}

async fn export_model(State(console): Shared, Path(name): Path<String>, body: String) -> Response {
    if let Some(refused) = operator_only(&console, "exporting a model") {
        return refused;
    }
    let fields = form_fields(&body);
    if !console.guard.csrf_ok(field(&fields, "csrf")) {
        return csrf_refused(&console);
    }
    let version = field(&fields, "version").and_then(|v| v.parse().ok());
    let Some(mut admin) = console.admin() else {
        return offline_only_ledger(&console);
    };
    match crate::cli::download_model(&mut admin, &name, version).await {
        Ok((meta, bytes)) => {
            let filename = format!("{}-v{}.f32", html::url_part(&name), meta.version);
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{filename}\""),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => upstream(&console, e),
    }
}

/// The model card of a version (`format=json`, the canonical JSON the ledger binds, or
/// `format=md`), as `model export` writes it beside the model. Operators only, like the
/// export, which it is: the coordinator ledgers it.
async fn export_model_card(
    State(console): Shared,
    Path(name): Path<String>,
    body: String,
) -> Response {
    if let Some(refused) = operator_only(&console, "exporting a model card") {
        return refused;
    }
    let fields = form_fields(&body);
    if !console.guard.csrf_ok(field(&fields, "csrf")) {
        return csrf_refused(&console);
    }
    let version = field(&fields, "version").and_then(|v| v.parse().ok());
    let markdown = match field(&fields, "format") {
        Some("json") | None => false,
        Some("md") => true,
        Some(other) => {
            return error(
                &console,
                StatusCode::BAD_REQUEST,
                "No such format",
                &format!("a model card comes as json or md, not {other:?}"),
            );
        }
    };
    let Some(mut admin) = console.admin() else {
        return offline_only_ledger(&console);
    };
    let meta = match crate::cli::model_description(&mut admin, &name, version).await {
        Ok(meta) => meta,
        Err(e) => return upstream(&console, e),
    };
    if meta.model_card.is_empty() {
        return error(
            &console,
            StatusCode::BAD_GATEWAY,
            "No model card",
            "the coordinator sent no model card with this version",
        );
    }
    let (body, content_type, extension) = if markdown {
        match harambee_privacy::card::ModelCard::parse(&meta.model_card) {
            Ok(card) => (card.to_markdown(), "text/markdown; charset=utf-8", "md"),
            Err(e) => {
                return error(
                    &console,
                    StatusCode::BAD_GATEWAY,
                    "Malformed model card",
                    &format!("the coordinator sent a malformed model card: {e}"),
                );
            }
        }
    } else {
        (meta.model_card, "application/json", "json")
    };
    let filename = format!(
        "{}-v{}.card.{extension}",
        html::url_part(&name),
        meta.version
    );
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// The ledger: fetched as an auditor, or read from the export's files.
async fn snapshot(console: &Console) -> Result<ledger::Snapshot, Response> {
    match &console.source {
        Source::Offline {
            ledger,
            head,
            receipts,
        } => ledger::Snapshot::read(ledger, head.as_deref(), receipts).map_err(|e| {
            error(
                console,
                StatusCode::INTERNAL_SERVER_ERROR,
                "The export cannot be read",
                &format!("{e:#}"),
            )
        }),
        Source::Live {
            role: Role::Auditor,
            channel,
        } => crate::cli::audit::fetch(channel.clone())
            .await
            .map(|(text, head)| ledger::Snapshot {
                text,
                head,
                receipts: Vec::new(),
            })
            .map_err(|e| upstream(console, e)),
        Source::Live { .. } => Err(error(
            console,
            StatusCode::FORBIDDEN,
            "Auditors only",
            "the privacy ledger is read with an auditor's certificate: start the console with --auditor NAME",
        )),
    }
}

/// The ledger checked against the pinned key: the cached check while the signed head (or
/// the export's bytes) is the same, else a new one.
async fn checked(console: &Console) -> Result<Arc<ledger::Checked>, Response> {
    let cached = |key: &CacheKey| {
        console
            .checked
            .lock()
            .unwrap()
            .as_ref()
            .filter(|(k, _)| k == key)
            .map(|(_, c)| c.clone())
    };
    let (key, snapshot) = match &console.source {
        Source::Live {
            role: Role::Auditor,
            channel,
        } => {
            let head = AuditServiceClient::new(channel.clone())
                .get_signed_tree_head(pb::GetSignedTreeHeadRequest {})
                .await
                .map_err(|e| upstream(console, e.message()))?
                .into_inner();
            if let Ok(head) = serde_json::from_str(&head.signed_tree_head)
                && let Some(hit) = cached(&CacheKey::Head(head))
            {
                return Ok(hit);
            }
            let snapshot = snapshot(console).await?;
            (CacheKey::Head(snapshot.head.signed_tree_head), snapshot)
        }
        _ => {
            use sha2::{Digest, Sha256};
            let snapshot = snapshot(console).await?;
            let mut hash = Sha256::new();
            hash.update(snapshot.text.as_bytes());
            hash.update(serde_json::to_vec(&snapshot.head).unwrap_or_default());
            for log in &snapshot.receipts {
                hash.update(log.name.as_bytes());
                hash.update(Sha256::digest(log.text.as_bytes()));
            }
            let key = CacheKey::Files(hash.finalize().into());
            if let Some(hit) = cached(&key) {
                return Ok(hit);
            }
            (key, snapshot)
        }
    };
    let pin = console.pin.clone();
    let checked = tokio::task::spawn_blocking(move || ledger::check(&snapshot, pin.as_ref()))
        .await
        .map_err(|e| upstream(console, e))?;
    let checked = Arc::new(checked);
    *console.checked.lock().unwrap() = Some((key, checked.clone()));
    Ok(checked)
}

async fn ledger_page(State(console): Shared, RawQuery(query): RawQuery) -> Response {
    let checked = match checked(&console).await {
        Ok(c) => c,
        Err(response) => return response,
    };
    let fields = form_fields(query.as_deref().unwrap_or(""));
    let filter = LedgerFilter {
        facility: field(&fields, "facility").unwrap_or("").to_owned(),
        round: field(&fields, "round").and_then(|r| r.trim().parse().ok()),
        kind: field(&fields, "type").unwrap_or("").to_owned(),
    };
    let actions = match console.identity() {
        Some(mut identity) => {
            let mut all = Vec::new();
            loop {
                let after_id = all.last().map_or(0, |a: &pb::AdminAction| a.id);
                match identity
                    .list_admin_actions(pb::ListAdminActionsRequest { after_id, limit: 0 })
                    .await
                {
                    Ok(page) => {
                        let page = page.into_inner().actions;
                        let done = page.len() < 1000;
                        all.extend(page);
                        if done {
                            break;
                        }
                    }
                    Err(e) => return upstream(&console, e.message()),
                }
            }
            Some(all)
        }
        None => None,
    };
    page(
        StatusCode::OK,
        pages::ledger_page(&console.ctx(), &checked, &filter, actions.as_deref()),
    )
}

async fn entry(State(console): Shared, Path(index): Path<u64>) -> Response {
    let checked = match checked(&console).await {
        Ok(c) => c,
        Err(response) => return response,
    };
    match pages::entry_page(&console.ctx(), &checked, index) {
        Some(html) => page(StatusCode::OK, html),
        None => error(
            &console,
            StatusCode::NOT_FOUND,
            "No such entry",
            &format!("the ledger holds no readable entry {index}"),
        ),
    }
}

async fn downloads(State(console): Shared) -> Response {
    page(StatusCode::OK, pages::downloads(&console.ctx()))
}

async fn download(State(console): Shared, Path(file): Path<String>) -> Response {
    let attachment = |content_type: &'static str, body: String| {
        (
            [
                (header::CONTENT_TYPE, content_type.to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{file}\""),
                ),
            ],
            body,
        )
            .into_response()
    };
    match file.as_str() {
        "ledger.jsonl" | "ledger.head.json" => {
            let snapshot = match snapshot(&console).await {
                Ok(s) => s,
                Err(response) => return response,
            };
            if file == "ledger.jsonl" {
                attachment("application/jsonl; charset=utf-8", snapshot.text)
            } else {
                match serde_json::to_string_pretty(&snapshot.head) {
                    Ok(text) => attachment("application/json", text),
                    Err(e) => upstream(&console, e),
                }
            }
        }
        "metrics.csv" => {
            let Some(mut admin) = console.admin() else {
                return offline_only_ledger(&console);
            };
            match federations_and_rounds(&mut admin).await {
                Ok((_, rounds)) => {
                    attachment("text/csv; charset=utf-8", pages::metrics_csv(&rounds))
                }
                Err(e) => upstream(&console, e.message()),
            }
        }
        _ => not_found(State(console)).await,
    }
}

async fn login_page(State(console): Shared) -> Response {
    if !console.guard.needs_login() {
        return Redirect::to("/").into_response();
    }
    let body = format!(
        "<form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><label for=\"token\">Console token</label><br><input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required> <button type=\"submit\">Log in</button></form>",
        html::esc(console.csrf())
    );
    page(
        StatusCode::OK,
        console.ctx().page("Log in", "/login", None, &body),
    )
}

async fn login(State(console): Shared, body: String) -> Response {
    let fields = form_fields(&body);
    if !console.guard.csrf_ok(field(&fields, "csrf")) {
        return csrf_refused(&console);
    }
    match console.guard.login(field(&fields, "token").unwrap_or("")) {
        Some(session) => {
            let mut response = Redirect::to("/").into_response();
            if let Ok(cookie) = HeaderValue::from_str(&format!(
                "{}={session}; HttpOnly; SameSite=Strict; Path=/",
                security::SESSION_COOKIE
            )) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        None => error(
            &console,
            StatusCode::FORBIDDEN,
            "Wrong token",
            "that is not this console's token",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harambee_privacy::ledger::Ledger;
    use harambee_privacy::ledger::export::HeadFile;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request over a fresh connection; the status line, headers and body as text.
    async fn request(addr: SocketAddr, text: String) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(text.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn get(addr: SocketAddr, path: &str, cookie: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        )
    }

    fn post(addr: SocketAddr, path: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// An offline console over an empty ledger, in token mode.
    async fn token_console(dir: &std::path::Path) -> (Arc<Console>, SocketAddr) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let ledger = dir.join("ledger.jsonl");
        std::fs::write(&ledger, "").unwrap();
        let head = HeadFile {
            signed_tree_head: Ledger::new().sign_head(1, &key),
            ledger_key: hex::encode(key.verifying_key().as_bytes()),
            cosignatures: Vec::new(),
        };
        std::fs::write(
            dir.join("ledger.head.json"),
            serde_json::to_string(&head).unwrap(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let console = Arc::new(Console::new(
            Source::Offline {
                ledger,
                head: None,
                receipts: Vec::new(),
            },
            "offline auditor".into(),
            addr,
            Some("a-long-enough-token".into()),
            Some(KeyPin::Key(key.verifying_key())),
        ));
        tokio::spawn(serve(console.clone(), listener, std::future::pending()));
        (console, addr)
    }

    #[tokio::test]
    async fn with_a_token_nothing_is_shown_before_logging_in_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (console, addr) = token_console(dir.path()).await;
        let answer = request(addr, get(addr, "/ledger", "")).await;
        assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
        assert!(answer.contains("location: /login"), "{answer}");
        assert!(!answer.contains("verdict"), "{answer}");
        // The stylesheet needs no login (the login page uses it).
        let css = request(addr, get(addr, "/static/console.css", "")).await;
        assert!(css.starts_with("HTTP/1.1 200"), "{css}");

        let csrf = console.csrf().to_owned();
        let wrong = request(
            addr,
            post(
                addr,
                "/login",
                &format!("csrf={csrf}&token=not-the-token-at-all"),
            ),
        )
        .await;
        assert!(wrong.starts_with("HTTP/1.1 403"), "{wrong}");
        let forged = request(addr, post(addr, "/login", "token=a-long-enough-token")).await;
        assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
        let right = request(
            addr,
            post(
                addr,
                "/login",
                &format!("csrf={csrf}&token=a-long-enough-token"),
            ),
        )
        .await;
        assert!(right.starts_with("HTTP/1.1 303"), "{right}");
        let cookie = right
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        assert!(right.contains("HttpOnly; SameSite=Strict"), "{right}");
        let page = request(addr, get(addr, "/ledger", &cookie)).await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains(">verifies<"), "{page}");
        assert!(
            !page.contains("a-long-enough-token"),
            "the token stays off the page"
        );
    }

    #[tokio::test]
    async fn an_offline_console_offers_no_coordinator_pages_and_escapes_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        // Writes the empty export.
        token_console(dir.path()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let console = Arc::new(Console::new(
            Source::Offline {
                ledger: dir.path().join("ledger.jsonl"),
                head: None,
                receipts: Vec::new(),
            },
            "<script>x</script>".into(),
            addr,
            None,
            None,
        ));
        tokio::spawn(serve(console, listener, std::future::pending()));
        let page = request(addr, get(addr, "/ledger", "")).await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("unverified: no key pinned"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        let facilities = request(addr, get(addr, "/facilities", "")).await;
        assert!(facilities.starts_with("HTTP/1.1 404"), "{facilities}");
        let revoke = request(addr, post(addr, "/facilities/x/revoke", "csrf=0")).await;
        assert!(revoke.starts_with("HTTP/1.1 403"), "{revoke}");
    }
}
