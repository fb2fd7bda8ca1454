//! HTTP CONNECT proxies, as hospital networks require: which proxy a connection to the
//! coordinator goes through ([`ProxyConfig`], from `agent.toml` or the usual environment
//! variables), and the CONNECT handshake that opens a tunnel through it ([`tunnel`]).
//!
//! The TLS session to the coordinator runs end-to-end inside the tunnel: the proxy sees
//! only the host and port asked for, never a certificate or a byte of the session, so the
//! mutual TLS checks are the same with or without a proxy. Only `http://` proxies are
//! supported (the CONNECT request travels in plain to the proxy, as with curl's default);
//! the proxy's basic-auth credentials come from the URL's userinfo, percent-decoded.
//!
//! Written here rather than taken from hyper-util's `client-proxy`: its matcher drops an
//! unparsable proxy URL silently (the agent would go direct, or nowhere, without saying
//! why), its `*` does not cover IP addresses, and its tunnel reports a refusal without the
//! proxy's status line, which is what a facility's IT staff need to see.
//!
//! This module reads no environment variable itself: callers pass a lookup function, so
//! tests pass a map.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Environment variables naming the proxy, in order of precedence.
pub const PROXY_VARIABLES: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
/// Environment variables listing hosts reached directly, in order of precedence.
pub const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// The longest CONNECT response head (status line and headers) accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Errors of proxy configuration.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid proxy {url} (from {source_name}): {reason}")]
    Url {
        /// The URL with any password replaced by `***`.
        url: String,
        source_name: String,
        reason: String,
    },
    #[error("invalid no-proxy entry {entry:?} (from {source_name}): {reason}")]
    NoProxy {
        entry: String,
        source_name: String,
        reason: String,
    },
}

/// One HTTP proxy: where it listens and the credentials it wants, if any.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    credentials: Option<Credentials>,
}

#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    user: String,
    password: String,
}

impl Proxy {
    /// Parses `http://[user[:password]@]host[:port][/]`; a URL without a scheme is taken
    /// as `http://`, and the port defaults to 80. `source_name` says where the URL came
    /// from, for errors.
    pub fn parse(url: &str, source_name: &str) -> Result<Proxy, ProxyError> {
        let invalid = |reason: &str| ProxyError::Url {
            url: redact_url(url),
            source_name: source_name.to_owned(),
            reason: reason.to_owned(),
        };
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(invalid(
                    "TLS to the proxy itself (https://) is not supported; use the proxy's http:// address (the coordinator's TLS still runs end-to-end through it)",
                ));
            }
            Some((scheme, _)) => {
                return Err(invalid(&format!(
                    "{scheme}:// proxies are not supported; use an HTTP proxy that allows CONNECT (http://host:port)"
                )));
            }
            None => url,
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(invalid("expected no path after host:port"));
        }
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode = |s: &str| {
                    percent_decode(s).ok_or_else(|| {
                        invalid("the user name or password is not valid percent-encoded UTF-8")
                    })
                };
                Some(Credentials {
                    user: decode(user)?,
                    password: decode(password)?,
                })
            }
        };
        let (host, port) = split_host_port(host_port).map_err(invalid)?;
        Ok(Proxy {
            host,
            port: port.unwrap_or(80),
            credentials,
        })
    }

    /// `host:port`, bracketing an IPv6 address.
    pub fn addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }

    /// Whether the proxy URL carries a user name (and so CONNECT sends basic auth).
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// The CONNECT request for `host:port`.
    fn connect_request(&self, host: &str, port: u16) -> String {
        let target = join_host_port(host, port);
        let mut request = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: harambee/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(c) = &self.credentials {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.user, c.password));
            request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        request.push_str("\r\n");
        request
    }
}

/// Never shows the password.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.credentials {
            Some(c) => write!(f, "http://{}:***@{}", c.user, self.addr()),
            None => write!(f, "http://{}", self.addr()),
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self})")
    }
}

/// Which proxy, if any, connections go through, and which hosts bypass it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    proxy: Option<Proxy>,
    no_proxy: Vec<NoProxyRule>,
    /// Where the proxy came from (`agent.toml`, `HTTPS_PROXY`, ...), for reports.
    source: String,
}

impl ProxyConfig {
    /// No proxy: every connection is direct.
    pub fn direct() -> ProxyConfig {
        ProxyConfig::default()
    }

    /// Every connection through `proxy`.
    pub fn through(proxy: Proxy) -> ProxyConfig {
        ProxyConfig {
            proxy: Some(proxy),
            no_proxy: Vec::new(),
            source: "configuration".to_owned(),
        }
    }

    /// Resolves the proxy: `configured` (the `proxy` key of a configuration file) first,
    /// where `"none"` means direct whatever the environment says; otherwise the first of
    /// [`PROXY_VARIABLES`] that `env` holds non-empty. Hosts listed in `configured_no_proxy`
    /// or else the first of [`NO_PROXY_VARIABLES`] are reached directly: comma- or
    /// space-separated host names (each also covering its subdomains; a leading dot is
    /// ignored), optionally with `:port`, IP addresses, CIDR blocks, or `*` for all.
    pub fn resolve(
        configured: Option<&str>,
        configured_no_proxy: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ProxyConfig, ProxyError> {
        let from_env = |names: &[&str]| {
            names.iter().find_map(|name| {
                env(name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (v, (*name).to_owned()))
            })
        };
        let (url, source) = match configured.map(str::trim) {
            Some(none) if none.eq_ignore_ascii_case("none") => return Ok(ProxyConfig::direct()),
            Some(url) if !url.is_empty() => (url.to_owned(), "agent.toml proxy".to_owned()),
            _ => match from_env(&PROXY_VARIABLES[..]) {
                Some(found) => found,
                None => return Ok(ProxyConfig::direct()),
            },
        };
        let proxy = Proxy::parse(&url, &source)?;
        let (list, list_source) = match configured_no_proxy {
            Some(list) => (list.to_owned(), "agent.toml no_proxy".to_owned()),
            None => from_env(&NO_PROXY_VARIABLES[..]).unwrap_or_default(),
        };
        let no_proxy = list
            .split([',', ' ', '\t', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| NoProxyRule::parse(e, &list_source))
            .collect::<Result<_, _>>()?;
        Ok(ProxyConfig {
            proxy: Some(proxy),
            no_proxy,
            source,
        })
    }

    /// The proxy a connection to `host:port` goes through, `None` for a direct one.
    pub fn for_target(&self, host: &str, port: u16) -> Option<&Proxy> {
        let proxy = self.proxy.as_ref()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if self.no_proxy.iter().any(|rule| rule.matches(host, port)) {
            return None;
        }
        Some(proxy)
    }

    /// The configured proxy, whether or not it applies to a given host.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    /// Where the proxy came from: `agent.toml proxy`, or the environment variable's name.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// One no-proxy entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NoProxyRule {
    All,
    /// A host name and its subdomains (lowercase, without a leading dot), on any port or one.
    Domain(String, Option<u16>),
    /// An address or a block of addresses.
    Network(IpAddr, u8),
}

impl NoProxyRule {
    fn parse(entry: &str, source_name: &str) -> Result<NoProxyRule, ProxyError> {
        let invalid = |reason: String| ProxyError::NoProxy {
            entry: entry.to_owned(),
            source_name: source_name.to_owned(),
            reason,
        };
        if entry == "*" {
            return Ok(NoProxyRule::All);
        }
        if let Some((addr, bits)) = entry.split_once('/') {
            let addr: IpAddr = addr
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| invalid("expected an IP address before /".to_owned()))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| invalid(format!("expected a prefix length of 0 to {max}")))?;
            return Ok(NoProxyRule::Network(addr, bits));
        }
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        if let Ok(addr) = bare.parse::<IpAddr>() {
            return Ok(NoProxyRule::Network(
                addr,
                if addr.is_ipv4() { 32 } else { 128 },
            ));
        }
        let (host, port) = split_host_port(entry).map_err(|r| invalid(r.to_owned()))?;
        if let Ok(addr) = host.parse::<IpAddr>() {
            // An address with a port: the port is not worth a rule kind of its own.
            return Ok(NoProxyRule::Network(
                addr,
                if addr.is_ipv4() { 32 } else { 128 },
            ));
        }
        let host = host.trim_start_matches("*.").trim_start_matches('.');
        if host.is_empty() {
            return Err(invalid("empty host name".to_owned()));
        }
        Ok(NoProxyRule::Domain(host.to_ascii_lowercase(), port))
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        match self {
            NoProxyRule::All => true,
            NoProxyRule::Domain(domain, rule_port) => {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                let name_matches = host == *domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|head| head.ends_with('.'));
                name_matches && rule_port.is_none_or(|p| p == port)
            }
            NoProxyRule::Network(network, bits) => match host.parse::<IpAddr>() {
                Ok(addr) => in_network(addr, *network, *bits),
                Err(_) => false,
            },
        }
    }
}

fn in_network(addr: IpAddr, network: IpAddr, bits: u8) -> bool {
    let (a, n, width) = match (addr, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u32::from(a) as u128, u32::from(n) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        (IpAddr::V6(a), IpAddr::V4(n)) => match a.to_ipv4_mapped() {
            Some(a) => (u32::from(a) as u128, u32::from(n) as u128, 32),
            None => return false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || (a >> shift) == (n >> shift)
}

/// Why a CONNECT handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelError {
    /// The proxy answered 407 (or 401, as tinyproxy does for wrong credentials): it wants
    /// credentials, or refused the ones sent.
    AuthRequired {
        status: String,
        sent_credentials: bool,
    },
    /// The proxy answered with another 4xx: it will not open this tunnel (policy, port).
    Refused { status: String },
    /// The proxy answered 5xx: it could not reach the target (or is broken).
    UpstreamFailed { status: String },
    /// The proxy's answer was not HTTP, too long, or cut short.
    Protocol { reason: String },
    /// Reading or writing to the proxy failed.
    Io { reason: String },
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelError::AuthRequired {
                status,
                sent_credentials: true,
            } => write!(
                f,
                "the proxy refused the credentials in the proxy URL ({status}); check the user name and password"
            ),
            TunnelError::AuthRequired { status, .. } => write!(
                f,
                "the proxy requires authentication ({status}); put the user name and password in the proxy URL (http://user:password@host:port)"
            ),
            TunnelError::Refused { status } => write!(
                f,
                "the proxy refused to open a tunnel ({status}); ask the network team to allow CONNECT to the coordinator's host and port"
            ),
            TunnelError::UpstreamFailed { status } => write!(
                f,
                "the proxy could not reach the coordinator ({status}); check the coordinator's address, or ask the network team whether the proxy may reach it"
            ),
            TunnelError::Protocol { reason } => write!(
                f,
                "the proxy did not answer CONNECT as an HTTP proxy does ({reason}); is this the proxy's address and port?"
            ),
            TunnelError::Io { reason } => write!(f, "talking to the proxy failed: {reason}"),
        }
    }
}

impl std::error::Error for TunnelError {}

/// Asks the proxy on `stream` for a tunnel to `host:port` and reads its answer. On success
/// the stream carries the tunnel, with nothing of the target's read from it.
pub async fn tunnel(
    stream: &mut TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<(), TunnelError> {
    let io = |e: io::Error| TunnelError::Io {
        reason: e.to_string(),
    };
    stream
        .write_all(proxy.connect_request(host, port).as_bytes())
        .await
        .map_err(io)?;
    // Byte by byte, so as not to read past the response head into the tunnel (the target
    // speaks only after our ClientHello, but a proxy may pipeline).
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(TunnelError::Protocol {
                reason: format!("response head longer than {MAX_RESPONSE_HEAD} bytes"),
            });
        }
        match stream.read_u8().await {
            Ok(byte) => head.push(byte),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(if head.is_empty() {
                    TunnelError::Protocol {
                        reason: "it closed the connection without answering".to_owned(),
                    }
                } else {
                    TunnelError::Protocol {
                        reason: format!(
                            "the connection closed within the answer {:?}",
                            status_line(&head)
                        ),
                    }
                });
            }
            Err(e) => return Err(io(e)),
        }
    }
    let status = status_line(&head);
    let code = parse_status(&status).ok_or_else(|| TunnelError::Protocol {
        reason: format!("unexpected answer {status:?}"),
    })?;
    match code {
        200..=299 => Ok(()),
        401 | 407 => Err(TunnelError::AuthRequired {
            status,
            sent_credentials: proxy.has_credentials(),
        }),
        500..=599 => Err(TunnelError::UpstreamFailed { status }),
        _ => Err(TunnelError::Refused { status }),
    }
}

/// Opens a TCP connection to `proxy` and a tunnel through it to `host:port`, within
/// `timeout` each.
pub async fn connect_through(
    proxy: &Proxy,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let mut stream = match tokio::time::timeout(
        timeout,
        TcpStream::connect((proxy.host.as_str(), proxy.port)),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ConnectError::ProxyUnreachable(e.to_string())),
        Err(_) => {
            return Err(ConnectError::ProxyUnreachable(format!(
                "no TCP connection within {timeout:?}"
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(timeout, tunnel(&mut stream, proxy, host, port)).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(ConnectError::Tunnel(e)),
        Err(_) => Err(ConnectError::Tunnel(TunnelError::Protocol {
            reason: format!("no answer to CONNECT within {timeout:?}"),
        })),
    }
}

/// Why [`connect_through`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// No TCP connection to the proxy.
    ProxyUnreachable(String),
    /// The proxy refused or failed the tunnel.
    Tunnel(TunnelError),
}

/// The first line of a response head, lossily decoded and bounded.
fn status_line(head: &[u8]) -> String {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    line.trim_end().chars().take(200).collect()
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

fn split_host_port(s: &str) -> Result<(String, Option<u16>), &'static str> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed [ in the host")?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or("expected :port after ]")?),
            ),
        }
    } else {
        match s.rsplit_once(':') {
            Some((_, _)) if s.matches(':').count() > 1 => {
                return Err("an IPv6 address must be in brackets: [::1]:3128");
            }
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("missing host");
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("the port must be a number from 1 to 65535")?,
        ),
    };
    Ok((host.to_owned(), port))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `%XX` decoding; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `url` with the password (whatever follows the first `:` of the userinfo) as `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, _)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}{shown}@{}", &rest[userinfo.len() + 1..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn proxy_urls_parse_with_decoded_credentials_and_never_print_the_password() {
        let p = Proxy::parse("http://ward%40it:p%3Ass%20w@proxy.hospital:3128/", "t").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.hospital", 3128));
        let c = p.credentials.as_ref().unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("ward@it", "p:ss w")
        );
        for shown in [p.to_string(), format!("{p:?}")] {
            assert!(!shown.contains("ss"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        assert!(p.connect_request("c.example", 443).contains(&format!(
            "Proxy-Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ward@it:p:ss w")
        )));
        let p = Proxy::parse("proxy:8080", "t").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.has_credentials()),
            ("proxy", 8080, false)
        );
        assert_eq!(
            Proxy::parse("http://[::1]:3128", "t").unwrap().addr(),
            "[::1]:3128"
        );
        assert_eq!(Proxy::parse("http://proxy", "t").unwrap().port, 80);
        for bad in [
            "socks5://proxy:1080",
            "https://proxy:3128",
            "http://proxy:0",
            "http://proxy:x",
            "http://proxy:3128/path",
            "http://::1:3128",
            "http://",
            "http://u:%zz@proxy:1",
        ] {
            assert!(Proxy::parse(bad, "t").is_err(), "{bad}");
        }
        let err = Proxy::parse("socks5://u:secret@proxy:1080", "HTTPS_PROXY").unwrap_err();
        let shown = err.to_string();
        assert!(
            !shown.contains("secret") && shown.contains("HTTPS_PROXY"),
            "{shown}"
        );
    }

    #[test]
    fn the_configuration_key_comes_first_then_https_proxy_then_all_proxy() {
        let e = env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:1"),
            ("ALL_PROXY", "http://all:1"),
        ]);
        let host = |c: ProxyConfig| c.proxy().map(|p| p.host.clone());
        assert_eq!(
            host(ProxyConfig::resolve(Some("http://toml:1"), None, &e).unwrap()).as_deref(),
            Some("toml")
        );
        assert_eq!(
            host(ProxyConfig::resolve(Some("none"), None, &e).unwrap()),
            None
        );
        assert_eq!(
            host(ProxyConfig::resolve(None, None, &e).unwrap()).as_deref(),
            Some("upper")
        );
        let e = env(&[("HTTPS_PROXY", " "), ("https_proxy", "http://lower:1")]);
        let c = ProxyConfig::resolve(None, None, &e).unwrap();
        assert_eq!(
            (host(c.clone()).as_deref(), c.source()),
            (Some("lower"), "https_proxy")
        );
        let e = env(&[
            ("all_proxy", "http://all:1"),
            ("HTTP_PROXY", "http://plain:1"),
        ]);
        assert_eq!(
            host(ProxyConfig::resolve(None, None, &e).unwrap()).as_deref(),
            Some("all")
        );
        assert_eq!(
            host(ProxyConfig::resolve(None, None, &env(&[])).unwrap()),
            None
        );
        assert!(ProxyConfig::resolve(None, None, &env(&[("HTTPS_PROXY", "ftp://x")])).is_err());
    }

    #[test]
    fn no_proxy_names_hosts_domains_addresses_blocks_and_everything() {
        let e = env(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            (
                "NO_PROXY",
                "intranet.local, .lab.example,10.0.0.0/8 192.168.1.7,[fd00::]/8,direct.example:8443",
            ),
        ]);
        let c = ProxyConfig::resolve(None, None, &e).unwrap();
        let direct = |host: &str, port: u16| c.for_target(host, port).is_none();
        assert!(direct("intranet.local", 443));
        assert!(direct("coordinator.INTRANET.local", 443));
        assert!(!direct("notintranet.local", 443));
        assert!(direct("x.lab.example", 443) && direct("lab.example", 443));
        assert!(direct("10.20.30.40", 443) && !direct("11.0.0.1", 443));
        assert!(direct("192.168.1.7", 443) && !direct("192.168.1.8", 443));
        assert!(direct("[fd12::1]", 443) && !direct("fe80::1", 443));
        assert!(direct("direct.example", 8443) && !direct("direct.example", 443));
        assert!(!direct("coordinator.health.example", 443));
        let all = ProxyConfig::resolve(None, Some("*"), &e).unwrap();
        assert!(all.for_target("10.1.1.1", 1).is_none() && all.for_target("a.b", 1).is_none());
        // The configuration's list replaces the environment's.
        let c = ProxyConfig::resolve(None, Some("other.example"), &e).unwrap();
        assert!(c.for_target("intranet.local", 443).is_some());
        assert!(ProxyConfig::resolve(None, Some("10.0.0.0/33"), &e).is_err());
        assert!(ProxyConfig::resolve(None, Some("x/8"), &e).is_err());
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact_url("http://u:p@h:1"), "http://u:***@h:1");
        assert_eq!(redact_url("http://u@h:1/x@y"), "http://u@h:1/x@y");
        assert_eq!(redact_url("u:p%40@h:1"), "u:***@h:1");
        assert_eq!(redact_url("http://h:1"), "http://h:1");
    }

    /// A one-shot proxy answering `answer` to the first CONNECT: the request it received.
    async fn answering(answer: &'static str) -> (Proxy, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let proxy = Proxy::parse(&format!("http://it:secret@127.0.0.1:{port}"), "t").unwrap();
        (proxy, task)
    }

    #[tokio::test]
    async fn connect_answers_become_tunnels_or_named_refusals() {
        let (proxy, seen) = answering("HTTP/1.1 200 Connection established\r\n\r\n").await;
        connect_through(&proxy, "coordinator.example", 443, Duration::from_secs(5))
            .await
            .unwrap();
        let seen = seen.await.unwrap();
        assert!(
            seen.starts_with("CONNECT coordinator.example:443 HTTP/1.1\r\n"),
            "{seen}"
        );
        assert!(
            seen.contains("Proxy-Authorization: Basic aXQ6c2VjcmV0\r\n"),
            "{seen}"
        );

        let cases = [
            (
                "HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
                "refused the credentials",
            ),
            (
                "HTTP/1.0 401 Unauthorized\r\n\r\n",
                "refused the credentials",
            ),
            (
                "HTTP/1.1 403 Access violation\r\n\r\n",
                "HTTP/1.1 403 Access violation",
            ),
            (
                "HTTP/1.1 502 Bad Gateway\r\n\r\n",
                "could not reach the coordinator",
            ),
            (
                "SSH-2.0-OpenSSH\r\n\r\n",
                "not answer CONNECT as an HTTP proxy",
            ),
            ("HTTP/1.1 403 Forb", "closed within the answer"),
        ];
        for (answer, expected) in cases {
            let (proxy, _) = answering(answer).await;
            let err = connect_through(&proxy, "c", 443, Duration::from_secs(5))
                .await
                .unwrap_err();
            let ConnectError::Tunnel(err) = err else {
                panic!("{err:?}")
            };
            assert!(err.to_string().contains(expected), "{answer:?}: {err}");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let proxy = Proxy::parse(&format!("127.0.0.1:{port}"), "t").unwrap();
        let err = connect_through(&proxy, "c", 443, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::ProxyUnreachable(_)), "{err:?}");
    }
}
