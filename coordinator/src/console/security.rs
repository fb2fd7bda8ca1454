//! What keeps the console's one port safe: it listens on loopback unless told otherwise (and
//! then asks for a token), it answers only to its own host name (no DNS rebinding), and
//! every action is a POST carrying this process's CSRF token.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Why the console refuses to start on an address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    #[error(
        "refusing to listen on {0}, which is not a loopback address: the console acts with your certificate; pass --allow-remote with --token-file to serve other machines"
    )]
    NotLoopback(SocketAddr),
    #[error(
        "--allow-remote needs --token-file (a file holding the token browsers must give, at least 16 characters)"
    )]
    NoToken,
    #[error("the console token must be at least 16 characters")]
    ShortToken,
}

/// Checks the listening address: loopback, or `allow_remote` with a token.
pub fn check_listen(
    addr: SocketAddr,
    allow_remote: bool,
    token: Option<&str>,
) -> Result<(), ListenError> {
    if let Some(token) = token
        && token.len() < 16
    {
        return Err(ListenError::ShortToken);
    }
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !allow_remote {
        return Err(ListenError::NotLoopback(addr));
    }
    if token.is_none() {
        return Err(ListenError::NoToken);
    }
    Ok(())
}

/// A random 32-byte value in hex.
pub fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Equality that takes the same time wherever the inputs differ (compares SHA-256 digests).
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The name of the session cookie in token mode.
pub const SESSION_COOKIE: &str = "harambee_console";

/// Who may use the console, and the CSRF token its forms carry.
pub struct Guard {
    csrf: String,
    /// Token mode (`--allow-remote`): the token, and the sessions it opened.
    token: Option<String>,
    sessions: Mutex<HashSet<String>>,
    /// `Host` values answered to; empty: any (token mode).
    hosts: Vec<String>,
}

impl Guard {
    /// A guard for a console listening on `addr`; `token` turns on token mode.
    pub fn new(addr: SocketAddr, token: Option<String>) -> Guard {
        let port = addr.port();
        let hosts = if token.is_some() {
            Vec::new()
        } else {
            vec![
                addr.to_string(),
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ]
        };
        Guard {
            csrf: random_hex(),
            token,
            sessions: Mutex::new(HashSet::new()),
            hosts,
        }
    }

    /// The token forms carry. Not a secret from the page: a page of another origin cannot
    /// read it, which is what stops a forged POST.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a POST's form field `csrf` is this process's token.
    pub fn csrf_ok(&self, given: Option<&str>) -> bool {
        given.is_some_and(|g| same_secret(g, &self.csrf))
    }

    /// Whether a request with this `Host` header is answered: a page of another site that
    /// rebinds its name to 127.0.0.1 sends its own name.
    pub fn host_ok(&self, host: Option<&str>) -> bool {
        self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|a| a == h))
    }

    /// Whether a token is needed to use the console.
    pub fn needs_login(&self) -> bool {
        self.token.is_some()
    }

    /// A new session for the right token; `None` for a wrong one.
    pub fn login(&self, token: &str) -> Option<String> {
        let expected = self.token.as_deref()?;
        if !same_secret(token, expected) {
            return None;
        }
        let session = random_hex();
        self.sessions.lock().unwrap().insert(session.clone());
        Some(session)
    }

    /// Whether the `Cookie` header holds a session of this process (always true without
    /// token mode).
    pub fn session_ok(&self, cookie_header: Option<&str>) -> bool {
        if self.token.is_none() {
            return true;
        }
        let Some(header) = cookie_header else {
            return false;
        };
        let sessions = self.sessions.lock().unwrap();
        header.split(';').any(|pair| {
            pair.trim()
                .strip_prefix(SESSION_COOKIE)
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(|value| sessions.contains(value))
        })
    }
}

/// The fields of an `application/x-www-form-urlencoded` body or query string.
pub fn form_fields(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of `name` among `fields`.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_loopback_unless_allowed_and_then_with_a_token() {
        assert_eq!(check_listen(addr("127.0.0.1:8080"), false, None), Ok(()));
        assert_eq!(check_listen(addr("[::1]:8080"), false, None), Ok(()));
        let err = check_listen(addr("0.0.0.0:8080"), false, None).unwrap_err();
        assert_eq!(err, ListenError::NotLoopback(addr("0.0.0.0:8080")));
        assert!(err.to_string().contains("--allow-remote"), "{err}");
        assert_eq!(
            check_listen(addr("10.1.2.3:8080"), true, None),
            Err(ListenError::NoToken)
        );
        assert_eq!(
            check_listen(addr("10.1.2.3:8080"), true, Some("short")),
            Err(ListenError::ShortToken)
        );
        assert_eq!(
            check_listen(addr("10.1.2.3:8080"), true, Some("a-long-enough-token")),
            Ok(())
        );
    }

    #[test]
    fn csrf_tokens_must_match_this_process() {
        let guard = Guard::new(addr("127.0.0.1:8080"), None);
        let other = Guard::new(addr("127.0.0.1:8080"), None);
        assert_eq!(guard.csrf().len(), 64);
        assert!(guard.csrf_ok(Some(guard.csrf())));
        assert!(!guard.csrf_ok(None));
        assert!(!guard.csrf_ok(Some("")));
        assert!(!guard.csrf_ok(Some(other.csrf())));
        assert!(!guard.csrf_ok(Some(&guard.csrf()[..63])));
    }

    #[test]
    fn a_loopback_console_answers_only_to_its_own_host_names() {
        let guard = Guard::new(addr("127.0.0.1:8080"), None);
        assert!(guard.host_ok(Some("127.0.0.1:8080")));
        assert!(guard.host_ok(Some("localhost:8080")));
        assert!(!guard.host_ok(Some("evil.example:8080")));
        assert!(!guard.host_ok(Some("localhost:9090")));
        assert!(!guard.host_ok(None));
        assert!(guard.session_ok(None), "no login on loopback");
    }

    #[test]
    fn token_mode_opens_sessions_for_the_right_token_only() {
        let guard = Guard::new(addr("0.0.0.0:8080"), Some("a-long-enough-token".into()));
        assert!(guard.needs_login());
        assert!(!guard.session_ok(None));
        assert!(guard.login("wrong-token-of-some-length").is_none());
        let session = guard.login("a-long-enough-token").unwrap();
        assert!(guard.session_ok(Some(&format!("x=1; {SESSION_COOKIE}={session}"))));
        assert!(!guard.session_ok(Some(&format!("{SESSION_COOKIE}=nope"))));
    }

    #[test]
    fn forms_decode() {
        let fields = form_fields("csrf=ab&reason=lost+laptop%21&x=");
        assert_eq!(field(&fields, "reason"), Some("lost laptop!"));
        assert_eq!(field(&fields, "x"), Some(""));
        assert_eq!(field(&fields, "y"), None);
    }
}
