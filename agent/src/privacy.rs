//! The facility's side of privacy: its policy, its patient-level privacy accountant, the
//! egress receipts it signs, and its privacy log (`state_dir/privacy-log.jsonl`, in the
//! format of [`harambee_privacy::log`]; this module appends to it with fsync).
//!
//! The coordinator's ledger key is pinned by the first proof (received over mTLS from the
//! coordinator the agent trusts). A later head signed by another key is accepted only with
//! the ledger's proof of the rotation (`LedgerKeyRotated` entries chaining from the pinned
//! key, each signed by the key before it and included in the new head, which must extend
//! the last head seen); the rotation is then recorded in the log and the new key pinned.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use harambee_privacy::accountant::RdpAccountant;
use harambee_privacy::ledger::{
    Aggregation, LedgerLine, Sha256Digest, SignedReceipt, SignedTreeHead,
};
use harambee_privacy::log::{self, LogLine, Record};
use harambee_privacy::policy::{self, DpSteps, TaskDemand};
use harambee_proto::pb;

use crate::config::PolicyConfig;

/// The privacy log, read and verified at open, appended to with fsync.
pub struct PrivacyLog {
    path: PathBuf,
    lines: Vec<LogLine>,
}

impl PrivacyLog {
    /// Opens (or starts) the log at `path`, checking its whole hash chain.
    pub fn open(path: &Path) -> anyhow::Result<PrivacyLog> {
        // A last line cut by a crash or a full disk was never synced: what it records had
        // not happened. Completed if whole, removed if not; never blamed on anyone.
        let removed = harambee_link::files::repair_torn_tail(path, |line| {
            serde_json::from_str::<LogLine>(line).is_ok()
        })
        .with_context(|| format!("repairing {}", path.display()))?;
        if removed > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = removed,
                "the privacy log's last line was torn (an interrupted write) and was removed"
            );
        }
        let lines = match std::fs::read_to_string(path) {
            Ok(text) => {
                let lines = log::parse_log(&text)
                    .with_context(|| format!("privacy log {}", path.display()))?;
                log::check_ledger_keys(&lines)
                    .with_context(|| format!("privacy log {}", path.display()))?;
                lines
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(PrivacyLog {
            path: path.to_owned(),
            lines,
        })
    }

    pub fn lines(&self) -> &[LogLine] {
        &self.lines
    }

    /// Appends a record and flushes it to disk before returning.
    pub fn append(&mut self, unix_ms: i64, record: Record) -> anyhow::Result<()> {
        self.append_all(unix_ms, [record])
    }

    /// Appends records in order with one write and one flush to disk.
    pub fn append_all(
        &mut self,
        unix_ms: i64,
        records: impl IntoIterator<Item = Record>,
    ) -> anyhow::Result<()> {
        let mut text = String::new();
        let mut lines = Vec::new();
        for record in records {
            let line = LogLine::next(lines.last().or(self.lines.last()), unix_ms, record);
            text.push_str(&serde_json::to_string(&line)?);
            text.push('\n');
            lines.push(line);
        }
        if lines.is_empty() {
            return Ok(());
        }
        harambee_link::files::append_line(&self.path, text.as_bytes())
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.lines.extend(lines);
        Ok(())
    }

    /// Receipts of uploads the coordinator accepted: those the ledger must hold.
    pub fn accepted_receipts(&self) -> Vec<SignedReceipt> {
        log::accepted_receipts(&self.lines)
    }

    /// The last head this facility checked and countersigned, and the pinned ledger key.
    pub fn last_head(&self) -> Option<(SignedTreeHead, VerifyingKey)> {
        log::last_head(&self.lines)
    }
}

/// The facility's privacy state: its policy, its accountant, its log, its signing key.
pub struct Privacy {
    pub facility: String,
    pub policy: PolicyConfig,
    pub policy_sha256: Sha256Digest,
    key: SigningKey,
    accountant: RdpAccountant,
    pub log: PrivacyLog,
}

/// What an update's receipt states besides the update itself: its federation, how it
/// leaves, the DP-SGD steps behind it (for the accountant), and the clipping and noise it
/// was made with.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptTerms {
    pub federation: String,
    pub aggregation: Aggregation,
    /// SHA-256 of the secure-aggregation parameters accepted, once they are.
    pub secagg_params: Option<Sha256Digest>,
    pub dp: Option<DpSteps>,
    pub clipping_norm: f64,
    pub noise_multiplier: f64,
}

/// Why a task is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal(pub String);

impl Privacy {
    /// Loads the log and rebuilds the accountant from the receipts in it.
    pub fn open(
        now_ms: i64,
        state_dir: &Path,
        facility: String,
        policy: PolicyConfig,
        key: SigningKey,
    ) -> anyhow::Result<Privacy> {
        let log = PrivacyLog::open(&state_dir.join(log::LOG_FILE))?;
        let mut accountant = RdpAccountant::new();
        for line in log.lines() {
            if let Record::Receipt { dp: Some(dp), .. } = &line.record {
                accountant
                    .compose(dp.noise_multiplier, dp.sampling_rate, dp.steps)
                    .context("replaying the privacy log")?;
            }
        }
        let policy_sha256 = policy.sha256();
        let mut privacy = Privacy {
            facility,
            policy,
            policy_sha256,
            key,
            accountant,
            log,
        };
        let own = hex::encode(privacy.key.verifying_key().to_bytes());
        if log::facility_key(privacy.log.lines(), &privacy.facility).as_deref()
            != Some(own.as_str())
        {
            let record = Record::Identity {
                facility: privacy.facility.clone(),
                key: own,
            };
            privacy.log.append(now_ms, record)?;
        }
        Ok(privacy)
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Patient-level ε spent so far at the policy's δ (0 before any DP-SGD update left).
    pub fn epsilon_spent(&self) -> f64 {
        self.accountant.epsilon_spent(self.policy.delta)
    }

    /// What the heartbeat tells the coordinator.
    pub fn status(&self) -> pb::PrivacyStatus {
        pb::PrivacyStatus {
            epsilon_spent: self.epsilon_spent(),
            max_epsilon: self.policy.max_epsilon,
            delta: self.policy.delta,
            rdp: self.accountant.rdp().to_vec(),
            allowed_federations: self.policy.allowed_federations.clone(),
            allowed_model_kinds: self.policy.allowed_model_kinds.clone(),
        }
    }

    /// Whether the facility's policy lets it take this training task: the federation,
    /// model kind and label are allowed, the update leaves as the policy requires, it holds
    /// enough rows (when known: `None` before the data is read), and (with a budget) the
    /// task uses DP-SGD and one more round fits the budget. Returns the DP steps the task
    /// will take.
    pub fn admit(
        &self,
        task: &pb::TrainTask,
        n_rows: Option<usize>,
        epochs: usize,
    ) -> Result<Option<DpSteps>, Refusal> {
        let privacy = task.privacy.as_ref();
        let dp = privacy.and_then(|p| p.dp_sgd.as_ref()).map(|d| DpSteps {
            noise_multiplier: d.noise_multiplier,
            sampling_rate: d.sampling_rate,
            steps: harambee_models::dp::dp_steps(epochs, d.sampling_rate),
        });
        let model = task.model.as_ref();
        let demand = TaskDemand {
            federation: &task.federation,
            model_kind: model.map_or("", |m| m.kind.as_str()),
            label: Some(model_label(model)),
            secure: Some(task.secure.is_some()),
            n_rows: n_rows.map(|n| n as u64),
            dp,
        };
        policy::admit(&self.policy.admission(), &self.accountant, &demand)
            .map_err(|refusal| Refusal(refusal.to_string()))
    }

    /// Whether the facility's policy lets it evaluate for this task: a federation, model
    /// kind and label it trains for (nothing is spent: metrics carry no DP guarantee, and
    /// `min_cohort` bounds what they say).
    pub fn admit_evaluation(&self, task: &pb::EvaluateTask) -> Result<(), Refusal> {
        let model = task.model.as_ref();
        let demand = TaskDemand {
            federation: &task.federation,
            model_kind: model.map_or("", |m| m.kind.as_str()),
            label: Some(model_label(model)),
            secure: None,
            n_rows: None,
            dp: None,
        };
        let mut rules = self.policy.admission();
        rules.max_epsilon = None;
        policy::admit(&rules, &self.accountant, &demand)
            .map(|_| ())
            .map_err(|refusal| Refusal(refusal.to_string()))
    }

    /// Records an update of `round_id` about to leave: composes its DP-SGD steps (checking
    /// the budget once more), signs its egress receipt with the running ε, and logs both.
    /// Nothing is logged or composed when it is refused.
    pub fn sign_egress(
        &mut self,
        now_ms: i64,
        terms: &ReceiptTerms,
        round_id: u64,
        payload: &[u8],
    ) -> anyhow::Result<SignedReceipt> {
        let digest = Sha256Digest::of(payload);
        self.sign_egress_of(now_ms, terms, round_id, digest, payload.len() as u64)
    }

    /// [`Privacy::sign_egress`] for a payload of `bytes` bytes whose SHA-256 the caller has
    /// computed already (an upload of a large model is hashed once, not once per use).
    pub fn sign_egress_of(
        &mut self,
        now_ms: i64,
        terms: &ReceiptTerms,
        round_id: u64,
        digest: Sha256Digest,
        bytes: u64,
    ) -> anyhow::Result<SignedReceipt> {
        let ReceiptTerms {
            federation,
            aggregation,
            secagg_params,
            dp,
            clipping_norm,
            noise_multiplier,
        } = terms;
        let (dp, clipping_norm, noise_multiplier) = (*dp, *clipping_norm, *noise_multiplier);
        // The same bytes sent again (a retried step after a reconnect): same receipt, no
        // second charge to the budget.
        let earlier = self.log.lines().iter().rev().find_map(|l| match &l.record {
            Record::Receipt { receipt, .. }
                if receipt.receipt.federation == *federation
                    && receipt.receipt.round_id == round_id
                    && receipt.receipt.update_sha256 == digest =>
            {
                Some(receipt.clone())
            }
            _ => None,
        });
        if let Some(receipt) = earlier {
            return Ok(receipt);
        }
        let mut after = self.accountant.clone();
        if let Some(dp) = dp {
            after.compose(dp.noise_multiplier, dp.sampling_rate, dp.steps)?;
        }
        let epsilon_spent = if after.steps() == 0 {
            0.0
        } else {
            after.epsilon(self.policy.delta)?.epsilon
        };
        if let Some(max) = self.policy.max_epsilon
            && epsilon_spent > max
        {
            bail!(
                "sending this update would bring ε to {epsilon_spent:.3}, over the budget of {max}"
            );
        }
        let receipt = harambee_privacy::ledger::EgressReceipt {
            facility: self.facility.clone(),
            federation: federation.clone(),
            round_id,
            update_sha256: digest,
            bytes,
            policy_sha256: self.policy_sha256,
            clipping_norm,
            noise_multiplier,
            epsilon_spent,
            delta: self.policy.delta,
            aggregation: Some(*aggregation),
            secagg_params: *secagg_params,
            dp_sgd: dp,
        }
        .sign(&self.key)?;
        self.log.append(
            now_ms,
            Record::Receipt {
                receipt: receipt.clone(),
                dp,
            },
        )?;
        self.accountant = after;
        Ok(receipt)
    }

    /// Receipts accepted by the coordinator that have no ledger proof in the log yet.
    pub fn awaiting_proof(&self) -> Vec<(String, u64)> {
        let lines = self.log.lines();
        self.log
            .accepted_receipts()
            .into_iter()
            .map(|r| (r.receipt.federation, r.receipt.round_id))
            .filter(|(f, r)| {
                !lines.iter().any(|l| {
                    matches!(&l.record, Record::Proof { federation, round_id, .. } | Record::Alarm { federation, round_id, .. } if federation == f && round_id == r)
                })
            })
            .collect()
    }

    /// Checks the coordinator's answer for one contribution: the entry carries exactly the
    /// receipt this facility signed, the inclusion proof leads to the signed head, the head
    /// is signed by the pinned ledger key (or by a key the ledger proves the pinned one
    /// rotated to, see the module docs) and consistent with the last head seen. Logs the
    /// rotation if any, the proof and the head, and returns the countersignature to send back.
    pub fn accept_proof(
        &mut self,
        now_ms: i64,
        federation: &str,
        round_id: u64,
        answer: &pb::LedgerProof,
    ) -> anyhow::Result<(SignedTreeHead, harambee_privacy::ledger::Cosignature)> {
        use harambee_privacy::ledger::verify_receipt_inclusion;
        let receipt = self
            .log
            .accepted_receipts()
            .into_iter()
            .rev()
            .find(|r| r.receipt.federation == federation && r.receipt.round_id == round_id)
            .context("no accepted receipt for this round in the privacy log")?;
        let entry = LedgerLine::parse(1, &answer.entry).context("the ledger entry is malformed")?;
        let offered = OfferedHead {
            signed_tree_head: &answer.signed_tree_head,
            ledger_key: &answer.ledger_key,
            from_tree_size: self.log.last_head().map_or(0, |(h, _)| h.head.tree_size),
            consistency_proof: &answer.consistency_proof,
            key_rotations: &answer.key_rotations,
        };
        let checked = self.check_head(&offered)?;
        let inclusion = digests(&answer.inclusion_proof)?;
        verify_receipt_inclusion(
            &entry,
            &receipt,
            &inclusion,
            &checked.head,
            &checked.ledger_key,
        )
        .context("the ledger's inclusion proof does not verify")?;
        let head = checked.head;
        let proof = Record::Proof {
            federation: federation.to_owned(),
            round_id,
            entry: Box::new(entry),
            inclusion_proof: inclusion,
            signed_tree_head: head,
        };
        let cosignature = self.countersign(now_ms, checked, Some(proof))?;
        Ok((head, cosignature))
    }

    /// Checks the ledger evidence of a secure round's peer-key stage: the offered head as in
    /// [`Privacy::accept_proof`], and for each peer (facility, key of its certificate) a
    /// `FacilityEnrolled` entry recording that key, included in the head. A key the CA
    /// certified but the ledger does not record for that facility is refused, so a
    /// certificate minted behind the ledger's back is useless. Logs the head (and a
    /// rotation if any) and returns the countersignature to send back.
    pub fn accept_peer_keys(
        &mut self,
        now_ms: i64,
        ledger: Option<&pb::LedgerHead>,
        peers: &[(String, VerifyingKey, &pb::SecAggPeer)],
    ) -> anyhow::Result<(SignedTreeHead, harambee_privacy::ledger::Cosignature)> {
        use harambee_privacy::ledger::verify_enrolment;
        let ledger = ledger.context(
            "the coordinator sent no ledger head with the peers' keys, so they cannot be checked against the ledger",
        )?;
        let offered = OfferedHead {
            signed_tree_head: &ledger.signed_tree_head,
            ledger_key: &ledger.ledger_key,
            from_tree_size: ledger.from_tree_size,
            consistency_proof: &ledger.consistency_proof,
            key_rotations: &ledger.key_rotations,
        };
        let checked = self.check_head(&offered)?;
        for (facility, key, peer) in peers {
            let fingerprint = harambee_privacy::ledger::key_fingerprint(key);
            if peer.enrolment.is_empty() {
                bail!(
                    "the ledger holds no enrolment of {facility} under the key in its certificate ({fingerprint})"
                );
            }
            let entry = LedgerLine::parse(1, &peer.enrolment)
                .with_context(|| format!("{facility}'s ledgered enrolment is malformed"))?;
            let proof = digests(&peer.enrolment_proof)?;
            verify_enrolment(&entry, facility, key, &proof, &checked.head).with_context(|| {
                format!(
                    "the key in {facility}'s certificate ({fingerprint}) is not the one the ledger enrolled"
                )
            })?;
        }
        let head = checked.head;
        let cosignature = self.countersign(now_ms, checked, None)?;
        Ok((head, cosignature))
    }

    /// Checks an offered head against the last one this facility saw: signed by the pinned
    /// ledger key or a key the ledger proves it rotated to, and extending the last head.
    fn check_head(&self, offered: &OfferedHead<'_>) -> anyhow::Result<CheckedHead> {
        use harambee_privacy::ledger::rotation::follow_proven_rotations;
        use harambee_privacy::ledger::verify_consistency;
        let head: SignedTreeHead = serde_json::from_str(offered.signed_tree_head)
            .context("the signed tree head is malformed")?;
        let key_bytes: [u8; 32] = offered
            .ledger_key
            .try_into()
            .context("the ledger key is not 32 bytes")?;
        let ledger_key =
            VerifyingKey::from_bytes(&key_bytes).context("the ledger key is not an Ed25519 key")?;
        let previous = self.log.last_head();
        let seen = previous.as_ref().map_or(0, |(h, _)| h.head.tree_size);
        if offered.from_tree_size != seen {
            bail!(
                "the consistency proof starts at {} entries; this facility last saw {seen}",
                offered.from_tree_size
            );
        }
        // A head under another key than the pinned one is followed only through rotations
        // the pinned key signed, each included in the new head.
        let rotation = match &previous {
            Some((seen, pinned)) if *pinned != ledger_key => {
                let proofs = offered
                    .key_rotations
                    .iter()
                    .map(|r| Ok((r.entry.as_str(), digests(&r.inclusion_proof)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let rotations = follow_proven_rotations(
                    pinned,
                    &ledger_key,
                    seen.head.tree_size,
                    &proofs,
                    &head,
                )?;
                Some(Record::KeyRotation {
                    old_key: hex::encode(pinned.to_bytes()),
                    new_key: hex::encode(ledger_key.to_bytes()),
                    rotations,
                    inclusion_proofs: proofs.into_iter().map(|(_, p)| p).collect(),
                    signed_tree_head: head,
                })
            }
            _ => None,
        };
        head.verify(&ledger_key)
            .context("the tree head's signature does not verify")?;
        if let Some((old, pinned)) = &previous {
            let consistency = digests(offered.consistency_proof)?;
            old.verify(pinned)
                .and_then(|()| {
                    verify_consistency(
                        old.head.tree_size,
                        head.head.tree_size,
                        &old.head.root_hash,
                        &head.head.root_hash,
                        &consistency,
                    )
                })
                .context("the new tree head is not consistent with the last one this facility saw (a forked or rewritten ledger)")?;
        }
        Ok(CheckedHead {
            head,
            ledger_key,
            rotation,
        })
    }

    /// Logs a checked head (after its rotation, if any, and `proof`, if any) with this
    /// facility's countersignature, which it returns.
    fn countersign(
        &mut self,
        now_ms: i64,
        checked: CheckedHead,
        proof: Option<Record>,
    ) -> anyhow::Result<harambee_privacy::ledger::Cosignature> {
        use harambee_privacy::ledger::key_fingerprint;
        if let Some(record) = checked.rotation {
            tracing::warn!(
                to = %key_fingerprint(&checked.ledger_key),
                "following a ledger key rotation proven by the ledger"
            );
            self.log.append(now_ms, record)?;
        }
        if let Some(proof) = proof {
            self.log.append(now_ms, proof)?;
        }
        let cosignature = checked.head.head.cosign(&self.facility, &self.key);
        self.log.append(
            now_ms,
            Record::Head {
                signed_tree_head: checked.head,
                ledger_key: hex::encode(checked.ledger_key.to_bytes()),
                cosignature: cosignature.clone(),
            },
        )?;
        Ok(cosignature)
    }
}

/// A tree head as the coordinator offers it, before any check.
struct OfferedHead<'a> {
    signed_tree_head: &'a str,
    ledger_key: &'a [u8],
    /// The size of the head the consistency proof starts from.
    from_tree_size: u64,
    consistency_proof: &'a [Vec<u8>],
    key_rotations: &'a [pb::LedgerKeyRotationProof],
}

/// A head that passed [`Privacy::check_head`], with the key it verified under and the
/// rotation record to log when that key is new.
struct CheckedHead {
    head: SignedTreeHead,
    ledger_key: VerifyingKey,
    rotation: Option<Record>,
}

/// Proof hashes from the wire.
fn digests(hashes: &[Vec<u8>]) -> anyhow::Result<Vec<Sha256Digest>> {
    hashes
        .iter()
        .map(|h| {
            Ok(Sha256Digest(
                h.as_slice()
                    .try_into()
                    .context("a proof hash is not 32 bytes")?,
            ))
        })
        .collect()
}

/// The label column a task's model predicts ("" when it names none): the schema's, or a
/// text model's label column.
fn model_label(model: Option<&pb::ModelSpec>) -> &str {
    match model {
        Some(pb::ModelSpec {
            text: Some(text), ..
        }) => text.label_column.as_str(),
        Some(m) => m.schema.as_ref().map_or("", |s| s.label.as_str()),
        None => "",
    }
}

impl PolicyConfig {
    /// The rules [`policy::admit`] applies.
    pub fn admission(&self) -> policy::Policy {
        policy::Policy {
            allowed_federations: self.allowed_federations.clone(),
            allowed_model_kinds: self.allowed_model_kinds.clone(),
            allowed_labels: self.allowed_labels.clone(),
            require_secure_aggregation: self.require_secure_aggregation,
            min_samples: self.min_samples,
            max_epsilon: self.max_epsilon,
            delta: self.delta,
        }
    }

    /// SHA-256 of the policy in force (its canonical JSON), stated in every receipt.
    pub fn sha256(&self) -> Sha256Digest {
        let value = serde_json::to_value(self).expect("a policy serializes");
        Sha256Digest::of(&serde_json::to_vec(&value).expect("a policy serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_epsilon: Option<f64>) -> PolicyConfig {
        PolicyConfig {
            allowed_federations: vec!["sepsis".into()],
            allowed_model_kinds: vec!["mlp".into()],
            allowed_labels: vec!["death".into()],
            min_samples: 10,
            max_epsilon,
            ..PolicyConfig::default()
        }
    }

    fn terms(dp: Option<DpSteps>) -> ReceiptTerms {
        ReceiptTerms {
            federation: "sepsis".into(),
            aggregation: Aggregation::Secure,
            secagg_params: None,
            dp,
            clipping_norm: 1.0,
            noise_multiplier: 1.0,
        }
    }

    fn dp_config() -> pb::PrivacyConfig {
        pb::PrivacyConfig {
            dp_sgd: Some(pb::DpSgdConfig {
                clip_norm: 1.0,
                noise_multiplier: 1.0,
                sampling_rate: 0.1,
            }),
            ..Default::default()
        }
    }

    fn admit(
        p: &Privacy,
        kind: &str,
        n_rows: usize,
        privacy: Option<&pb::PrivacyConfig>,
    ) -> Result<Option<DpSteps>, Refusal> {
        let task = pb::TrainTask {
            federation: "sepsis".into(),
            model: Some(pb::ModelSpec {
                kind: kind.into(),
                schema: Some(pb::FeatureSchema {
                    label: "death".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            secure: Some(pb::SecureAggregation::default()),
            privacy: privacy.cloned(),
            ..Default::default()
        };
        p.admit(&task, Some(n_rows), 1)
    }

    fn open(dir: &Path, max_epsilon: Option<f64>) -> Privacy {
        Privacy::open(
            1_000,
            dir,
            "clinic-a".into(),
            policy(max_epsilon),
            SigningKey::from_bytes(&[7; 32]),
        )
        .unwrap()
    }

    #[test]
    fn privacy_policy_denies_by_default_and_names_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let p = Privacy::open(
            1_000,
            dir.path(),
            "clinic-a".into(),
            PolicyConfig::default(),
            SigningKey::from_bytes(&[7; 32]),
        )
        .unwrap();
        let err = admit(&p, "mlp", 100, None).unwrap_err();
        assert!(err.0.contains("allowed_federations"), "{}", err.0);
        let p = open(dir.path(), None);
        assert!(
            admit(&p, "logistic_regression", 100, None)
                .unwrap_err()
                .0
                .contains("model kind")
        );
        assert!(
            admit(&p, "mlp", 9, None)
                .unwrap_err()
                .0
                .contains("min_samples")
        );
        assert_eq!(admit(&p, "mlp", 10, None), Ok(None));
    }

    #[test]
    fn privacy_budget_refuses_the_round_that_would_exceed_it_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let steps = harambee_models::dp::dp_steps(1, 0.1);
        let one = harambee_privacy::accountant::epsilon(1.0, 0.1, steps, 1e-5)
            .unwrap()
            .epsilon;
        let two = harambee_privacy::accountant::epsilon(1.0, 0.1, 2 * steps, 1e-5)
            .unwrap()
            .epsilon;
        let mut p = open(dir.path(), Some((one + two) / 2.0));
        // A budget means DP-SGD only.
        assert!(
            admit(&p, "mlp", 100, None)
                .unwrap_err()
                .0
                .contains("without DP-SGD")
        );
        let dp = admit(&p, "mlp", 100, Some(&dp_config())).unwrap();
        assert_eq!(dp.unwrap().steps, steps);
        let receipt = p.sign_egress(2_000, &terms(dp), 1, b"update").unwrap();
        assert!((receipt.receipt.epsilon_spent - one).abs() < 1e-12);
        assert!(receipt.verify(&p.verifying_key()).is_ok());
        // The same bytes again (a retried step): the same receipt, no second charge.
        assert_eq!(
            p.sign_egress(2_000, &terms(dp), 1, b"update").unwrap(),
            receipt
        );
        assert!((p.epsilon_spent() - one).abs() < 1e-12);
        let refusal = admit(&p, "mlp", 100, Some(&dp_config())).unwrap_err();
        assert!(refusal.0.contains("over the budget"), "{}", refusal.0);
        assert!(
            p.sign_egress(2_000, &terms(dp), 2, b"other").is_err(),
            "the budget is checked again at egress"
        );
        // The accountant is rebuilt from the log.
        let p = open(dir.path(), Some((one + two) / 2.0));
        assert!((p.epsilon_spent() - one).abs() < 1e-12);
        assert!(admit(&p, "mlp", 100, Some(&dp_config())).is_err());
        assert_eq!(
            p.status().rdp.len(),
            harambee_privacy::accountant::default_orders().len()
        );
    }

    #[test]
    fn privacy_log_chain_names_the_altered_removed_or_moved_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(log::LOG_FILE);
        let mut log = PrivacyLog::open(&path).unwrap();
        for round_id in 1..=3 {
            log.append(
                1_000 + round_id as i64,
                Record::Accepted {
                    federation: "sepsis".into(),
                    round_id,
                },
            )
            .unwrap();
        }
        assert_eq!(PrivacyLog::open(&path).unwrap().lines().len(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        let altered = text.replacen("\"round_id\":2", "\"round_id\":9", 1);
        std::fs::write(&path, &altered).unwrap();
        let err = format!("{:#}", PrivacyLog::open(&path).err().unwrap());
        assert!(err.contains("line 2") && err.contains("altered"), "{err}");

        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let err = format!("{:#}", PrivacyLog::open(&path).err().unwrap());
        assert!(err.contains("line 2"), "{err}");

        std::fs::write(&path, format!("{}\n{}\n{}\n", lines[1], lines[0], lines[2])).unwrap();
        let err = format!("{:#}", PrivacyLog::open(&path).err().unwrap());
        assert!(err.contains("line 1"), "{err}");
    }

    /// A coordinator's ledger, signing with `key`, answering proofs as the service does.
    struct FakeLedger {
        ledger: harambee_privacy::ledger::Ledger,
        key: SigningKey,
    }

    impl FakeLedger {
        /// Records the contribution of `receipt`.
        fn contribute(&mut self, receipt: &SignedReceipt) -> u64 {
            use harambee_privacy::ledger::{Contribution, LedgerEvent};
            let r = &receipt.receipt;
            let event = LedgerEvent::Contribution(Contribution {
                facility: r.facility.clone(),
                federation: r.federation.clone(),
                round_id: r.round_id,
                n_params: 1,
                bytes: r.bytes,
                upload_sha256: r.update_sha256,
                clipping_norm: r.clipping_norm,
                noise_multiplier: r.noise_multiplier,
                epsilon_spent: r.epsilon_spent,
                receipt: receipt.clone(),
            });
            self.ledger.append(1, event).unwrap().index
        }

        fn rotation_proof(&self, index: u64) -> pb::LedgerKeyRotationProof {
            let size = self.ledger.size();
            pb::LedgerKeyRotationProof {
                entry: self.ledger.lines()[index as usize].to_json().unwrap(),
                inclusion_proof: bytes(self.ledger.inclusion_proof(index, size).unwrap()),
            }
        }

        /// The answer for the contribution at `index`, to an agent that saw `known` entries.
        fn proof(
            &self,
            index: u64,
            known: u64,
            rotations: Vec<pb::LedgerKeyRotationProof>,
        ) -> pb::LedgerProof {
            let size = self.ledger.size();
            let head = self.ledger.sign_head(2, &self.key);
            pb::LedgerProof {
                entry: self.ledger.lines()[index as usize].to_json().unwrap(),
                index,
                inclusion_proof: bytes(self.ledger.inclusion_proof(index, size).unwrap()),
                signed_tree_head: serde_json::to_string(&head).unwrap(),
                consistency_proof: if known == 0 {
                    Vec::new()
                } else {
                    bytes(self.ledger.consistency_proof(known, size).unwrap())
                },
                ledger_key: self.key.verifying_key().to_bytes().to_vec(),
                key_rotations: rotations,
            }
        }
    }

    fn bytes(hashes: Vec<Sha256Digest>) -> Vec<Vec<u8>> {
        hashes.into_iter().map(|h| h.0.to_vec()).collect()
    }

    /// Signs and has the coordinator accept the update of `round_id`.
    fn contribute(p: &mut Privacy, ledger: &mut FakeLedger, round_id: u64) -> u64 {
        let receipt = p
            .sign_egress(2_000, &terms(None), round_id, &round_id.to_le_bytes())
            .unwrap();
        p.log
            .append(
                2_000,
                Record::Accepted {
                    federation: "sepsis".into(),
                    round_id,
                },
            )
            .unwrap();
        ledger.contribute(&receipt)
    }

    fn refusal_of(p: &mut Privacy, round_id: u64, answer: &pb::LedgerProof) -> String {
        let err = p
            .accept_proof(3_000, "sepsis", round_id, answer)
            .unwrap_err();
        format!("{err:#}")
    }

    #[test]
    fn ledger_key_rotation_is_followed_only_when_the_pinned_key_signed_it_in_the_tree() {
        use harambee_privacy::ledger::{key_fingerprint, rotation_event};
        let dir = tempfile::tempdir().unwrap();
        let mut p = open(dir.path(), None);
        let (old, new, intruder) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
            SigningKey::from_bytes(&[3; 32]),
        );
        let mut ledger = FakeLedger {
            ledger: harambee_privacy::ledger::Ledger::new(),
            key: old.clone(),
        };
        let first = contribute(&mut p, &mut ledger, 1);
        p.accept_proof(3_000, "sepsis", 1, &ledger.proof(first, 0, Vec::new()))
            .unwrap();
        let seen = ledger.ledger.size();
        assert_eq!(p.log.last_head().unwrap().1, old.verifying_key());

        // The coordinator switches keys without any rotation in the ledger.
        let second = contribute(&mut p, &mut ledger, 2);
        let mut switched = FakeLedger {
            ledger: ledger.ledger.clone(),
            key: new.clone(),
        };
        let err = refusal_of(&mut p, 2, &switched.proof(second, seen, Vec::new()));
        assert!(err.contains("proves no rotation"), "{err}");
        assert!(
            err.contains(&key_fingerprint(&old.verifying_key())),
            "{err}"
        );

        // A rotation to the new key signed by a key other than the pinned one: forged.
        let forged = switched
            .ledger
            .append(1, rotation_event(&intruder, &new.verifying_key()))
            .unwrap()
            .index;
        let answer = switched.proof(second, seen, vec![switched.rotation_proof(forged)]);
        let err = refusal_of(&mut p, 2, &answer);
        assert!(err.contains("forged ledger key rotation"), "{err}");
        assert!(err.contains("not from the key in force"), "{err}");

        // Claiming the pinned key as its old key, signed by another: forged.
        let claimed = harambee_privacy::ledger::LedgerEvent::LedgerKeyRotated {
            old_key: old.verifying_key(),
            new_key: new.verifying_key(),
            signature: ed25519_dalek::Signer::sign(
                &intruder,
                &harambee_privacy::ledger::rotation::rotation_bytes(
                    &old.verifying_key(),
                    &new.verifying_key(),
                ),
            ),
        };
        let mut claiming = FakeLedger {
            ledger: ledger.ledger.clone(),
            key: new.clone(),
        };
        let at = claiming.ledger.append(1, claimed).unwrap().index;
        let answer = claiming.proof(second, seen, vec![claiming.rotation_proof(at)]);
        let err = refusal_of(&mut p, 2, &answer);
        assert!(err.contains("not signed by the old key"), "{err}");

        // A rightly signed rotation that is not in the tree of the head it comes with.
        let mut elsewhere = ledger.ledger.clone();
        let at = elsewhere
            .append(1, rotation_event(&old, &new.verifying_key()))
            .unwrap()
            .index;
        let outside = FakeLedger {
            ledger: elsewhere,
            key: new.clone(),
        }
        .rotation_proof(at);
        let answer = switched.proof(second, seen, vec![outside]);
        let err = refusal_of(&mut p, 2, &answer);
        assert!(err.contains("is not in the signed tree head"), "{err}");
        assert_eq!(
            p.log.last_head().unwrap().1,
            old.verifying_key(),
            "nothing refused changes the pin"
        );

        // The rotation the pinned key signed, in the tree: followed, recorded, pinned.
        let mut rotated = FakeLedger {
            ledger: ledger.ledger.clone(),
            key: old.clone(),
        };
        let at = rotated
            .ledger
            .append(1, rotation_event(&old, &new.verifying_key()))
            .unwrap()
            .index;
        rotated.key = new.clone();
        let answer = rotated.proof(second, seen, vec![rotated.rotation_proof(at)]);
        p.accept_proof(3_000, "sepsis", 2, &answer).unwrap();
        assert!(matches!(
            p.log.lines()[p.log.lines().len() - 3].record,
            Record::KeyRotation { .. }
        ));
        let path = dir.path().join(log::LOG_FILE);
        let reopened = PrivacyLog::open(&path).unwrap();
        assert_eq!(reopened.last_head().unwrap().1, new.verifying_key());

        // A log whose head changes key without the rotation record is refused at open.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = log::parse_log(&text).unwrap();
        let removed = lines
            .iter()
            .position(|l| matches!(l.record, Record::KeyRotation { .. }))
            .unwrap();
        lines.remove(removed);
        let mut rewritten: Vec<LogLine> = Vec::new();
        for line in lines {
            rewritten.push(LogLine::next(rewritten.last(), line.unix_ms, line.record));
        }
        let text: String = rewritten
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect();
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", PrivacyLog::open(&path).err().unwrap());
        assert!(
            err.contains("no recorded rotation hands the pinned key"),
            "{err}"
        );
    }

    impl FakeLedger {
        /// The peer-key stage's evidence for `facility` enrolled at `index`, to an agent
        /// that saw `known` entries.
        fn peer_keys(&self, known: u64, index: u64) -> (pb::LedgerHead, pb::SecAggPeer) {
            let size = self.ledger.size();
            let head = pb::LedgerHead {
                signed_tree_head: serde_json::to_string(&self.ledger.sign_head(2, &self.key))
                    .unwrap(),
                ledger_key: self.key.verifying_key().to_bytes().to_vec(),
                from_tree_size: known,
                consistency_proof: bytes(self.ledger.consistency_proof(known, size).unwrap()),
                key_rotations: Vec::new(),
            };
            let peer = pb::SecAggPeer {
                enrolment: self.ledger.lines()[index as usize].to_json().unwrap(),
                enrolment_proof: bytes(self.ledger.inclusion_proof(index, size).unwrap()),
                ..pb::SecAggPeer::default()
            };
            (head, peer)
        }
    }

    #[test]
    fn peer_keys_are_accepted_only_as_the_ledger_enrolled_them_in_a_head_that_extends_the_last() {
        use harambee_privacy::ledger::LedgerEvent;
        let dir = tempfile::tempdir().unwrap();
        let mut p = open(dir.path(), None);
        let (real, minted) = (
            SigningKey::from_bytes(&[4; 32]).verifying_key(),
            SigningKey::from_bytes(&[5; 32]).verifying_key(),
        );
        let mut ledger = FakeLedger {
            ledger: harambee_privacy::ledger::Ledger::new(),
            key: SigningKey::from_bytes(&[1; 32]),
        };
        let enrolled = |key| LedgerEvent::FacilityEnrolled {
            facility: "clinic-b".into(),
            receipt_key: Some(key),
        };
        let b = ledger.ledger.append(1, enrolled(real)).unwrap().index;
        let first = contribute(&mut p, &mut ledger, 1);
        p.accept_proof(3_000, "sepsis", 1, &ledger.proof(first, 0, Vec::new()))
            .unwrap();
        let seen = ledger.ledger.size();
        let heads = |p: &Privacy| {
            p.log
                .lines()
                .iter()
                .filter(|l| matches!(l.record, Record::Head { .. }))
                .count()
        };
        let refusal = |p: &mut Privacy, head: &pb::LedgerHead, key, peer: &pb::SecAggPeer| {
            let peers = [("clinic-b".to_owned(), key, peer)];
            format!(
                "{:#}",
                p.accept_peer_keys(4_000, Some(head), &peers).unwrap_err()
            )
        };

        // The CA's certificate for clinic-b with a key the ledger never enrolled.
        let (head, peer) = ledger.peer_keys(seen, b);
        let err = refusal(&mut p, &head, minted, &peer);
        assert!(err.contains("is not the one the ledger enrolled"), "{err}");
        let none = pb::SecAggPeer::default();
        let err = refusal(&mut p, &head, minted, &none);
        assert!(err.contains("holds no enrolment of clinic-b"), "{err}");
        // No head at all.
        let peers = [("clinic-b".to_owned(), real, &peer)];
        let err = format!("{:#}", p.accept_peer_keys(4_000, None, &peers).unwrap_err());
        assert!(err.contains("sent no ledger head"), "{err}");

        // A ledgered enrolment of the minted key, but in a history that is not the one this
        // facility saw (the contribution it countersigned is gone): a fork.
        let mut fork = FakeLedger {
            ledger: harambee_privacy::ledger::Ledger::new(),
            key: ledger.key.clone(),
        };
        fork.ledger.append(1, enrolled(real)).unwrap();
        fork.ledger.append(1, enrolled(minted)).unwrap();
        let at = fork.ledger.append(1, enrolled(minted)).unwrap().index;
        let (head, peer) = fork.peer_keys(seen, at);
        let err = refusal(&mut p, &head, minted, &peer);
        assert!(err.contains("not consistent with the last one"), "{err}");
        // A proof from another size than the one this facility saw.
        let (head, peer) = ledger.peer_keys(1, b);
        let err = refusal(&mut p, &head, real, &peer);
        assert!(err.contains("last saw 2"), "{err}");
        // An entry proven in another tree than the head's.
        let (head, _) = ledger.peer_keys(seen, b);
        let (_, elsewhere) = fork.peer_keys(0, 0);
        let err = refusal(&mut p, &head, real, &elsewhere);
        assert!(err.contains("is not the one the ledger enrolled"), "{err}");
        assert_eq!(heads(&p), 1, "nothing refused is logged as a head");

        // The real key, ledgered, in a head that extends the last one: accepted, the head
        // logged and countersigned.
        ledger.ledger.append(1, enrolled(real)).unwrap();
        let (head, peer) = ledger.peer_keys(seen, b);
        let peers = [("clinic-b".to_owned(), real, &peer)];
        let (signed, cosignature) = p.accept_peer_keys(4_000, Some(&head), &peers).unwrap();
        assert_eq!(heads(&p), 2);
        assert_eq!(p.log.last_head().unwrap().0, signed);
        cosignature
            .verify(&signed.head, &p.key.verifying_key())
            .unwrap();
    }
}
