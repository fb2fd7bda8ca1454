//! Hex encodings of Ed25519 signatures (128 hex digits) and public keys (64 hex digits) for
//! `#[serde(with = ...)]`.

pub(crate) mod signature {
    use ed25519_dalek::Signature;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(sig: &Signature, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(sig.to_bytes()))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signature, D::Error> {
        let text = String::deserialize(d)?;
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(&text, &mut bytes)
            .map_err(|e| serde::de::Error::custom(format!("bad signature hex: {e}")))?;
        Ok(Signature::from_bytes(&bytes))
    }
}

pub(crate) mod verifying_key {
    use ed25519_dalek::VerifyingKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(key: &VerifyingKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(key.as_bytes()))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VerifyingKey, D::Error> {
        parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    pub(crate) fn parse(text: &str) -> Result<VerifyingKey, String> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|e| format!("bad public key hex: {e}"))?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key".to_string())
    }
}

pub(crate) mod opt_verifying_key {
    use ed25519_dalek::VerifyingKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        key: &Option<VerifyingKey>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match key {
            Some(key) => s.serialize_some(&hex::encode(key.as_bytes())),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<VerifyingKey>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::verifying_key::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
