//! Who may call what: one tower layer in front of every service authorizes each call (a
//! unary call, or the opening of a stream) by the role in the caller's certificate, refuses
//! revoked facilities, revoked certificates and expired certificates, and denies any RPC it
//! has no rule for.
//!
//! The rules ([`rule`]) are per method where they differ from their service's default: the
//! `AgentService` takes agents only, `AdminService` and `IdentityService` operators, except
//! that auditors may also call their `Get`/`List` methods; `EnrolmentService.Enrol` and
//! `.GetCaCertificate` need no certificate at all (the enrolment token is the credential),
//! `.RenewCertificate` takes agents; `grpc.health.v1.Health` takes any certificate. ARCHITECTURE.md ("Access") has the whole matrix, and a
//! test checks every RPC of the .proto files against it.
//!
//! The checks, in order, for every call:
//! 1. A presented certificate must carry a valid `harambee://` identity and must not have
//!    expired since the connection was made (TLS checked it at the handshake; connections
//!    live for days).
//! 2. A certificate whose serial has been revoked, or whose public key is that of a revoked
//!    certificate, is refused, whatever its role and the call. So is an agent certificate of
//!    a revoked facility.
//! 3. The method's rule: no certificate is enough for the enrolment calls only; otherwise
//!    the certificate's role must be among the rule's.
//!
//! Revocation, of a facility or of one certificate (by serial; every role, and the
//! coordinator's own server certificate, which `serve` then refuses to use), is permanent
//! and held in memory ([`Identity`]), loaded from the database at start-up and refreshed
//! every [`REVOCATION_REFRESH`] (so coordinator replicas sharing a database converge); the
//! replica that revokes applies it at once, closes the task stream of an agent connected
//! with what was revoked and drops it from running rounds. Revoking a certificate also
//! refuses its key: a certificate renewed from it before the revocation (renewal keeps the
//! key) dies with it. The services still check roles themselves
//! ([`crate::service::caller::require_role`]); this layer is the one place that knows the
//! whole policy.
//!
//! The revocation state itself is [`crate::identity::Identity`].

use std::future::Future;
use std::pin::Pin;

use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::{info, warn};

use crate::identity::{Identity, Revoked};
use crate::pki::CertFacts;
use crate::service::caller::Denial;
use crate::service::error::ServiceError;
use crate::state::Coordinator;
use harambee_link::identity::{PeerIdentity, Role};

/// How often each coordinator re-reads the revoked facilities from the database.
pub const REVOCATION_REFRESH: Duration = Duration::from_secs(10);

/// What may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Anyone, with or without a client certificate (the request carries its credential).
    Anyone,
    /// A client certificate with one of these roles.
    Roles(&'static [Role]),
}

const AGENT: &[Role] = &[Role::Agent];
const OPERATOR: &[Role] = &[Role::Operator];
const AUDITOR: &[Role] = &[Role::Auditor];
/// Reading: operators and auditors.
const READERS: &[Role] = &[Role::Operator, Role::Auditor];
/// Any certificate of the federation, whatever its role.
const AUTHENTICATED: &[Role] = &[Role::Agent, Role::Operator, Role::Auditor];

/// Methods whose rule differs from their service's default.
const METHOD_RULES: &[(&str, Rule)] = &[
    (
        "/harambee.v1.AdminService/ListFederations",
        Rule::Roles(READERS),
    ),
    ("/harambee.v1.AdminService/GetRound", Rule::Roles(READERS)),
    ("/harambee.v1.AdminService/ListRounds", Rule::Roles(READERS)),
    ("/harambee.v1.AdminService/ListAgents", Rule::Roles(READERS)),
    (
        "/harambee.v1.EnrolmentService/GetCaCertificate",
        Rule::Anyone,
    ),
    ("/harambee.v1.EnrolmentService/Enrol", Rule::Anyone),
    (
        "/harambee.v1.EnrolmentService/RenewCertificate",
        Rule::Roles(AGENT),
    ),
    (
        "/harambee.v1.IdentityService/ListFacilities",
        Rule::Roles(READERS),
    ),
    (
        "/harambee.v1.IdentityService/ListAdminActions",
        Rule::Roles(READERS),
    ),
];

/// Service defaults (path prefixes). `EnrolmentService` has none: a method added there is
/// refused to everyone until it gets a rule.
const SERVICE_RULES: &[(&str, Rule)] = &[
    ("/harambee.v1.AgentService/", Rule::Roles(AGENT)),
    ("/harambee.v1.AdminService/", Rule::Roles(OPERATOR)),
    ("/harambee.v1.IdentityService/", Rule::Roles(OPERATOR)),
    ("/harambee.v1.AuditService/", Rule::Roles(AUDITOR)),
    // grpc.health.v1: whether the coordinator serves, to any authenticated caller (not to
    // enrolment connections, which have no certificate).
    ("/grpc.health.v1.Health/", Rule::Roles(AUTHENTICATED)),
];

/// The rule for a gRPC path (`/package.Service/Method`); `None`: nobody may call it.
pub fn rule(path: &str) -> Option<Rule> {
    METHOD_RULES
        .iter()
        .find(|(p, _)| *p == path)
        .or_else(|| {
            SERVICE_RULES
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix) && !path[prefix.len()..].contains('/'))
        })
        .map(|(_, rule)| *rule)
}

impl Identity {
    /// Decides a call to `path` by a connection with client certificates `certs` (leaf
    /// first; `None` for an enrolment connection) at `now`. Returns the caller's identity,
    /// if it has one.
    pub fn authorize(
        &self,
        path: &str,
        certs: Option<&[CertificateDer<'static>]>,
        now: SystemTime,
    ) -> Result<Option<PeerIdentity>, Denial> {
        let identity = match certs.and_then(|c| c.first()) {
            None => None,
            Some(leaf) => {
                let identity = harambee_link::identity::identity_from_cert(leaf)
                    .map_err(|e| Denial::NoIdentity(e.to_string()))?;
                let facts = CertFacts::of(leaf).map_err(|e| Denial::NoIdentity(e.to_string()))?;
                if SystemTime::from(facts.not_after) < now {
                    return Err(Denial::Expired(crate::service::enrol::format_time(
                        facts.not_after.unix_timestamp() * 1000,
                    )));
                }
                match self.certificate_revocation(&facts.serial, &facts.key_sha256) {
                    Some(Revoked::Serial(serial)) => {
                        return Err(Denial::CertificateRevoked(serial));
                    }
                    Some(Revoked::Key(serial)) => {
                        return Err(Denial::KeyRevoked(serial));
                    }
                    None => {}
                }
                if identity.role == Role::Agent && self.is_revoked(&identity.name) {
                    return Err(Denial::Revoked(identity.name));
                }
                Some(identity)
            }
        };
        match (rule(path), identity) {
            (None, _) => Err(Denial::NoRule(path.to_owned())),
            (Some(Rule::Anyone), identity) => Ok(identity),
            (Some(Rule::Roles(_)), None) => Err(Denial::NoCertificate),
            (Some(Rule::Roles(roles)), Some(identity)) if roles.contains(&identity.role) => {
                Ok(Some(identity))
            }
            (Some(Rule::Roles(roles)), Some(identity)) => Err(Denial::WrongRole {
                identity: identity.to_string(),
                path: path.to_owned(),
                allowed: roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// Loads the revoked facilities from the database, then keeps re-reading them every
/// [`REVOCATION_REFRESH`] until the returned guard is dropped.
pub async fn watch_revocations(coord: &Coordinator) -> anyhow::Result<RefreshTask> {
    let revoked = coord.store.revoked_facilities().await?;
    coord.identity.add_revoked(revoked);
    let certificates = coord.store.revoked_certificates().await?;
    coord.identity.add_revoked_certificates(certificates);
    let coord = coord.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(REVOCATION_REFRESH);
        tick.tick().await;
        loop {
            tick.tick().await;
            match coord.store.revoked_facilities().await {
                Ok(revoked) => {
                    let new: Vec<String> = revoked
                        .into_iter()
                        .filter(|f| !coord.identity.is_revoked(f))
                        .collect();
                    for facility in &new {
                        info!(%facility, "facility revoked (by another coordinator)");
                        coord.registry.remove(facility);
                        coord.broadcast_dropout(facility, "facility revoked").await;
                    }
                    coord.identity.add_revoked(new);
                }
                Err(error) => warn!(%error, "re-reading revoked facilities failed"),
            }
            match coord.store.revoked_certificates().await {
                Ok(rows) => {
                    for row in coord.identity.add_revoked_certificates(rows) {
                        info!(serial = %row.serial, identity = %row.identity, "certificate revoked (by another coordinator)");
                        coord.disconnect_revoked_certificate(&row).await;
                    }
                }
                Err(error) => warn!(%error, "re-reading revoked certificates failed"),
            }
        }
    });
    Ok(RefreshTask(task.abort_handle()))
}

/// Stops the revocation refresh when dropped.
pub struct RefreshTask(tokio::task::AbortHandle);

impl Drop for RefreshTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The layer to put in front of the coordinator's services (`Server::builder().layer(..)`).
#[derive(Clone)]
pub struct AccessLayer {
    coord: Coordinator,
}

impl AccessLayer {
    pub fn new(coord: Coordinator) -> AccessLayer {
        AccessLayer { coord }
    }
}

impl<S> tower_layer::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> AccessService<S> {
        AccessService {
            inner,
            coord: self.coord.clone(),
        }
    }
}

/// See [`AccessLayer`].
#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    coord: Coordinator,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<S> tonic::codegen::Service<http::Request<Body>> for AccessService<S>
where
    S: tonic::codegen::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        let path = request.uri().path();
        match self.coord.identity.authorize(
            path,
            certs.as_deref().map(Vec::as_slice),
            SystemTime::now(),
        ) {
            Ok(_) => Box::pin(self.inner.call(request)),
            Err(denial) => {
                let remote = request
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|info| info.get_ref().remote_addr());
                info!(path, ?remote, reason = %denial, "call refused");
                let response = ServiceError::from(&denial).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_per_method_then_per_service_and_deny_the_rest() {
        assert_eq!(
            rule("/harambee.v1.AgentService/Heartbeat"),
            Some(Rule::Roles(AGENT))
        );
        assert_eq!(
            rule("/harambee.v1.AdminService/GetRound"),
            Some(Rule::Roles(READERS))
        );
        assert_eq!(
            rule("/harambee.v1.AdminService/StartRound"),
            Some(Rule::Roles(OPERATOR))
        );
        assert_eq!(
            rule("/harambee.v1.EnrolmentService/Enrol"),
            Some(Rule::Anyone)
        );
        assert_eq!(rule("/harambee.v1.EnrolmentService/Other"), None);
        assert_eq!(
            rule("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(rule("/harambee.v1.AgentService/a/b"), None);
        assert_eq!(
            rule("/grpc.health.v1.Health/Check"),
            Some(Rule::Roles(AUTHENTICATED))
        );
    }

    #[test]
    fn no_certificate_reaches_only_the_enrolment_calls() {
        let identity = Identity::default();
        let now = SystemTime::now();
        assert!(
            identity
                .authorize("/harambee.v1.EnrolmentService/Enrol", None, now)
                .is_ok()
        );
        assert_eq!(
            identity.authorize("/harambee.v1.AgentService/Heartbeat", None, now),
            Err(Denial::NoCertificate)
        );
        assert_eq!(
            identity.authorize("/grpc.health.v1.Health/Check", None, now),
            Err(Denial::NoCertificate)
        );
        assert!(matches!(
            identity.authorize("/x.Y/Z", None, now),
            Err(Denial::NoRule(_))
        ));
    }
}
