//! The one-time enrolment token as `harambee-agent enrol --token` reads it and the
//! coordinator's `Enrol` checks it: `Token::parse`. The checksum stops mutated tokens
//! early, so the first byte also picks a mode that takes the rest as the token's JSON and
//! wraps it with a valid checksum, which reaches the field checks. A token that parses
//! parses again from its own text, and re-encoded (as `Token::with_facility` does) it
//! parses to the same fields.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use harambee_link::token::{TOKEN_PREFIX, Token};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let text = if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        text.to_owned()
    } else {
        let checksum = hex::encode(&Sha256::digest(bytes)[..4]);
        format!("{TOKEN_PREFIX}{}.{checksum}", URL_SAFE_NO_PAD.encode(bytes))
    };
    let Ok(token) = Token::parse(&text) else {
        return;
    };
    assert_eq!(token.text, text.trim());
    let again = Token::parse(&token.text).expect("a token parses from its own text");
    assert!(again == token);
    let reencoded = token.with_facility(&token.facility);
    assert_eq!(reencoded.coordinator, token.coordinator);
    assert_eq!(reencoded.server_name, token.server_name);
    assert_eq!(reencoded.facility, token.facility);
    assert_eq!(reencoded.ca_sha256, token.ca_sha256);
    assert_eq!(reencoded.id, token.id);
    assert_eq!(reencoded.secret, token.secret);
    assert_eq!(reencoded.expires_unix_ms, token.expires_unix_ms);
});
