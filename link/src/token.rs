//! The one-time enrolment token an operator hands to a facility's IT, and the ALPN protocol
//! of the enrolment connections it opens.
//!
//! The coordinator mints tokens (`facility add`) and checks them (it stores only the SHA-256
//! of the secret); the agent reads them (`enrol --token`). Both sides share this format.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The extra ALPN protocol an agent without a certificate offers next to `h2`: the
/// coordinator then asks for no client certificate and serves only the enrolment calls.
pub const ENROL_ALPN: &[u8] = b"harambee-enrol/1";
/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "hbe1.";

/// A one-time enrolment token: `hbe1.<base64url JSON>.<checksum>`.
///
/// The JSON carries the coordinator's address (and the name its certificate is valid for,
/// when that differs from the host), the facility, the SHA-256 of the federation CA
/// certificate, the token's id, its 256-bit secret and its expiry. The checksum (first 4
/// bytes of the SHA-256 of the JSON, hex) catches a token damaged in copying before
/// anything is sent; it is no protection against a forger, which is the coordinator's job:
/// it stores the SHA-256 of the secret under the id and checks the facility too.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub coordinator: String,
    pub server_name: Option<String>,
    pub facility: String,
    pub ca_sha256: String,
    pub id: String,
    pub secret: [u8; 32],
    pub expires_unix_ms: i64,
    /// The token as text.
    pub text: String,
}

/// The never-printed secret stays out of logs.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("coordinator", &self.coordinator)
            .field("facility", &self.facility)
            .field("id", &self.id)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenJson {
    /// Coordinator endpoint, `https://HOST:PORT`.
    c: String,
    /// Server name, when not the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    /// Facility.
    f: String,
    /// CA certificate SHA-256, hex.
    a: String,
    /// Token id.
    i: String,
    /// Secret, base64url.
    s: String,
    /// Expiry, Unix milliseconds.
    e: i64,
}

/// Why a token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("this is not a Harambee enrolment token (it should start with {TOKEN_PREFIX})")]
    NotAToken,
    #[error("the enrolment token is damaged (its checksum does not match): copy it again, in full")]
    Damaged,
    #[error("the enrolment token is malformed: {0}")]
    Malformed(String),
}

impl Token {
    /// A new token with a fresh random id and secret.
    pub fn generate(
        coordinator: &str,
        server_name: Option<&str>,
        facility: &str,
        ca_sha256: &str,
        expires_unix_ms: i64,
    ) -> Token {
        let id: [u8; 8] = rand::random();
        let secret: [u8; 32] = rand::random();
        let json = TokenJson {
            c: coordinator.to_owned(),
            n: server_name.filter(|n| !n.is_empty()).map(str::to_owned),
            f: facility.to_owned(),
            a: ca_sha256.to_ascii_lowercase(),
            i: hex::encode(id),
            s: URL_SAFE_NO_PAD.encode(secret),
            e: expires_unix_ms,
        };
        let text = encode(&json);
        Token {
            coordinator: json.c,
            server_name: json.n,
            facility: json.f,
            ca_sha256: json.a,
            id: json.i,
            secret,
            expires_unix_ms,
            text,
        }
    }

    /// Reads a token (surrounding whitespace ignored) and checks its checksum and shape.
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::NotAToken)?;
        let (body, checksum) = rest.rsplit_once('.').ok_or(TokenError::Damaged)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Damaged)?;
        if !checksum.eq_ignore_ascii_case(&checksum_of(&json)) {
            return Err(TokenError::Damaged);
        }
        let json: TokenJson =
            serde_json::from_slice(&json).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let malformed = |what: &str| TokenError::Malformed(what.to_owned());
        if !json.c.starts_with("https://") {
            return Err(malformed("the coordinator address is not https://"));
        }
        if json.a.len() != 64 || !json.a.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("the CA fingerprint is not a hex SHA-256"));
        }
        if json.i.is_empty() || json.i.len() > 64 || !json.i.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(malformed("the token id is not hex"));
        }
        let secret: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&json.s)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| malformed("the secret is not 32 bytes of base64url"))?;
        if json.f.is_empty() || json.f.len() > 64 {
            return Err(malformed("the facility name is empty or too long"));
        }
        Ok(Token {
            coordinator: json.c,
            server_name: json.n,
            facility: json.f,
            ca_sha256: json.a.to_ascii_lowercase(),
            id: json.i,
            secret,
            expires_unix_ms: json.e,
            text: text.to_owned(),
        })
    }

    /// Re-encodes the token with a facility of the caller's (and a valid checksum): what a
    /// forger would do. For tests of the coordinator's checks.
    pub fn with_facility(&self, facility: &str) -> Token {
        self.reencode(|json| json.f = facility.to_owned())
    }

    /// Re-encodes the token with another secret (and a valid checksum). For tests.
    pub fn with_secret(&self, secret: [u8; 32]) -> Token {
        self.reencode(|json| json.s = URL_SAFE_NO_PAD.encode(secret))
    }

    fn reencode(&self, change: impl FnOnce(&mut TokenJson)) -> Token {
        let mut json = TokenJson {
            c: self.coordinator.clone(),
            n: self.server_name.clone(),
            f: self.facility.clone(),
            a: self.ca_sha256.clone(),
            i: self.id.clone(),
            s: URL_SAFE_NO_PAD.encode(self.secret),
            e: self.expires_unix_ms,
        };
        change(&mut json);
        Token::parse(&encode(&json)).expect("a re-encoded token parses")
    }

    /// Lowercase hex SHA-256 of the secret: all the coordinator stores.
    pub fn secret_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.secret))
    }

    /// The name the coordinator's certificate must be valid for.
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_default()
    }
}

fn encode(json: &TokenJson) -> String {
    let bytes = serde_json::to_vec(json).expect("token JSON serializes");
    format!(
        "{TOKEN_PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(&bytes),
        checksum_of(&bytes)
    )
}

fn checksum_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_detect_damage() {
        let token = Token::generate(
            "https://coord.example:7443",
            None,
            "kisumu",
            &"ab".repeat(32),
            42,
        );
        let parsed = Token::parse(&format!("  {}\n", token.text)).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.server_name(), "");

        // One character changed anywhere: refused before anything is sent.
        let mut damaged = token.text.clone().into_bytes();
        let i = TOKEN_PREFIX.len() + 10;
        damaged[i] = if damaged[i] == b'A' { b'B' } else { b'A' };
        let err = Token::parse(std::str::from_utf8(&damaged).unwrap()).unwrap_err();
        assert!(matches!(err, TokenError::Damaged), "{err}");
        assert!(matches!(Token::parse("hello"), Err(TokenError::NotAToken)));

        // A forger can recompute the checksum; the coordinator catches that.
        let forged = token.with_facility("nakuru");
        assert_eq!(forged.facility, "nakuru");
        assert_eq!(forged.secret, token.secret);
        assert!(
            !format!("{forged:?}").contains(&URL_SAFE_NO_PAD.encode(token.secret)),
            "Debug hides the secret"
        );
    }
}
