//! Egress receipts: an agent's signed statement of one update that left its facility.
//!
//! # What is signed
//!
//! Ed25519 (RFC 8032) over `"harambee/egress-receipt/v1\n"` (27 ASCII bytes) followed by the
//! receipt's canonical JSON (RFC 8785 JCS: sorted keys, no whitespace, ECMAScript numbers), e.g.
//!
//! ```text
//! {"bytes":4096,"clipping_norm":1,"delta":0.00001,"epsilon_spent":0.42,"facility":"clinic-a",
//!  "federation":"sepsis","noise_multiplier":1.1,"policy_sha256":"…","round_id":7,
//!  "update_sha256":"…"}
//! ```
//!
//! (one line, no spaces). Receipts since the facility-trust release also carry
//! `"aggregation":"secure"|"plain"`, the SHA-256 of the SecAgg+ parameters the agent accepted
//! (`"secagg_params"`) and the DP-SGD terms behind the update (`"dp_sgd":{"noise_multiplier",
//! "sampling_rate","steps"}`), so that an auditor can tell how each update left and recompute
//! the facility's ε from the ledger alone; older receipts omit them (absent, not null), so
//! their signatures still verify. The agent keeps the signed receipt in its privacy log; the
//! coordinator records it in the ledger inside the [`Contribution`](super::Contribution).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{LedgerError, Sha256Digest, canonical, hexser};
use crate::policy::DpSteps;

const RECEIPT_DOMAIN: &[u8; 27] = b"harambee/egress-receipt/v1\n";

/// One update that left a facility, as its agent states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressReceipt {
    pub facility: String,
    pub federation: String,
    pub round_id: u64,
    /// SHA-256 of the bytes uploaded (the masked update under secure aggregation).
    pub update_sha256: Sha256Digest,
    /// Size of the upload in bytes.
    pub bytes: u64,
    /// SHA-256 of the facility's policy file in force when the update left.
    pub policy_sha256: Sha256Digest,
    pub clipping_norm: f64,
    pub noise_multiplier: f64,
    /// The facility's total ε at `delta` after this contribution, from its agent's accountant.
    pub epsilon_spent: f64,
    pub delta: f64,
    /// How the update left the facility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<Aggregation>,
    /// SHA-256 of the secure-aggregation parameters the agent accepted (`Params::digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secagg_params: Option<Sha256Digest>,
    /// The patient-level DP-SGD steps behind the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_sgd: Option<DpSteps>,
}

/// How an update left its facility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Masked, through secure aggregation: the coordinator sees only the sum.
    Secure,
    /// As it is: the coordinator sees this facility's update.
    Plain,
}

impl EgressReceipt {
    /// The bytes the agent signs (see the module docs). Fails on a non-finite float.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, LedgerError> {
        self.check_finite()?;
        let mut out = RECEIPT_DOMAIN.to_vec();
        out.extend(canonical::to_vec(self)?);
        Ok(out)
    }

    /// Signs with the facility's key.
    pub fn sign(self, facility_key: &SigningKey) -> Result<SignedReceipt, LedgerError> {
        let signature = facility_key.sign(&self.signing_bytes()?);
        Ok(SignedReceipt {
            receipt: self,
            signature,
        })
    }

    pub(crate) fn check_finite(&self) -> Result<(), LedgerError> {
        for (field, x) in [
            ("receipt.clipping_norm", self.clipping_norm),
            ("receipt.noise_multiplier", self.noise_multiplier),
            ("receipt.epsilon_spent", self.epsilon_spent),
            ("receipt.delta", self.delta),
            (
                "receipt.dp_sgd.noise_multiplier",
                self.dp_sgd.map_or(0.0, |d| d.noise_multiplier),
            ),
            (
                "receipt.dp_sgd.sampling_rate",
                self.dp_sgd.map_or(0.0, |d| d.sampling_rate),
            ),
        ] {
            if !x.is_finite() {
                return Err(LedgerError::NonFinite { field });
            }
        }
        Ok(())
    }
}

/// A receipt and its facility's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    pub receipt: EgressReceipt,
    #[serde(with = "hexser::signature")]
    pub signature: Signature,
}

impl SignedReceipt {
    /// Checks the signature with the facility's key (strict Ed25519 verification).
    pub fn verify(&self, facility_key: &VerifyingKey) -> Result<(), LedgerError> {
        let bytes = self.receipt.signing_bytes()?;
        facility_key
            .verify_strict(&bytes, &self.signature)
            .map_err(|_| LedgerError::BadSignature("egress receipt"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn receipt() -> EgressReceipt {
        EgressReceipt {
            facility: "clinic-a".into(),
            federation: "sepsis".into(),
            round_id: 7,
            update_sha256: Sha256Digest::of(b"update"),
            bytes: 4096,
            policy_sha256: Sha256Digest::of(b"policy"),
            clipping_norm: 1.0,
            noise_multiplier: 1.1,
            epsilon_spent: 0.42,
            delta: 1e-5,
            aggregation: None,
            secagg_params: None,
            dp_sgd: None,
        }
    }

    #[test]
    fn the_aggregation_mode_and_dp_terms_are_signed_and_absent_when_unset() {
        let mut r = receipt();
        r.aggregation = Some(Aggregation::Secure);
        r.secagg_params = Some(Sha256Digest::of(b"params"));
        r.dp_sgd = Some(DpSteps {
            noise_multiplier: 1.5,
            sampling_rate: 0.1,
            steps: 30,
        });
        let text = String::from_utf8(r.signing_bytes().unwrap()).unwrap();
        assert!(text.contains("\"aggregation\":\"secure\""), "{text}");
        assert!(
            text.contains(
                "\"dp_sgd\":{\"noise_multiplier\":1.5,\"sampling_rate\":0.1,\"steps\":30}"
            ),
            "{text}"
        );
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut signed = r.sign(&key).unwrap();
        signed.receipt.aggregation = Some(Aggregation::Plain);
        assert!(
            signed.verify(&key.verifying_key()).is_err(),
            "a receipt cannot be relabelled plain or secure"
        );
        let old = String::from_utf8(receipt().signing_bytes().unwrap()).unwrap();
        assert!(
            !old.contains("aggregation") && !old.contains("dp_sgd"),
            "{old}"
        );
    }

    #[test]
    fn signing_bytes_are_domain_then_canonical_json() {
        let bytes = receipt().signing_bytes().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let want = format!(
            "harambee/egress-receipt/v1\n{{\"bytes\":4096,\"clipping_norm\":1,\"delta\":0.00001,\"epsilon_spent\":0.42,\"facility\":\"clinic-a\",\"federation\":\"sepsis\",\"noise_multiplier\":1.1,\"policy_sha256\":\"{}\",\"round_id\":7,\"update_sha256\":\"{}\"}}",
            Sha256Digest::of(b"policy"),
            Sha256Digest::of(b"update")
        );
        assert_eq!(text, want);
    }

    #[test]
    fn signed_receipt_verifies_and_tampering_breaks_it() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let signed = receipt().sign(&key).unwrap();
        assert!(signed.verify(&key.verifying_key()).is_ok());
        assert!(
            signed
                .verify(&SigningKey::from_bytes(&[8; 32]).verifying_key())
                .is_err()
        );
        let mut tampered = signed.clone();
        tampered.receipt.epsilon_spent = 0.41;
        assert_eq!(
            tampered.verify(&key.verifying_key()),
            Err(LedgerError::BadSignature("egress receipt"))
        );
        let json = serde_json::to_string(&signed).unwrap();
        assert_eq!(
            serde_json::from_str::<SignedReceipt>(&json).unwrap(),
            signed
        );
    }

    #[test]
    fn non_finite_values_are_refused() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut r = receipt();
        r.epsilon_spent = f64::INFINITY;
        assert_eq!(
            r.sign(&key).unwrap_err(),
            LedgerError::NonFinite {
                field: "receipt.epsilon_spent"
            }
        );
    }
}
