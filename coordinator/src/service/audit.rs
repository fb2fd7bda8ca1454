//! `AuditService`: the privacy ledger for auditors, read only. Everything an auditor needs
//! to verify the ledger offline (`harambee-coordinator audit export`, then
//! `harambee-agent audit verify`) or online (heads and proofs).

use std::collections::BTreeMap;

use harambee_privacy::ledger::LedgerEvent;
use harambee_proto::pb::{self, audit_service_server::AuditService};
use tonic::{Request, Response, Status};

use crate::service::caller::require_role;
use crate::service::error::ServiceError;
use crate::state::{Coordinator, now_ms};
use harambee_link::identity::Role;

/// Entries per `GetEntries` call at most.
pub const MAX_ENTRIES_PER_CALL: u64 = 1000;

/// Countersignatures per `ListCosignatures` page at most (each is about 300 bytes).
pub const MAX_COSIGNATURES_PER_PAGE: u32 = 1000;

pub struct AuditApi {
    coord: Coordinator,
}

impl AuditApi {
    pub fn new(coord: Coordinator) -> AuditApi {
        AuditApi { coord }
    }
}

pub(crate) fn head_json(head: &harambee_privacy::ledger::SignedTreeHead) -> String {
    serde_json::to_string(head).expect("a signed tree head serializes")
}

pub(crate) fn hashes(proof: Vec<harambee_privacy::ledger::Sha256Digest>) -> Vec<Vec<u8>> {
    proof.into_iter().map(|h| h.0.to_vec()).collect()
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_signed_tree_head(
        &self,
        request: Request<pb::GetSignedTreeHeadRequest>,
    ) -> Result<Response<pb::SignedTreeHeadResponse>, Status> {
        require_role(&request, Role::Auditor)?;
        let ledger = self
            .coord
            .ledger
            .synced(&self.coord.store)
            .await
            .map_err(ServiceError::from)?;
        let head = self.coord.ledger.sign(&ledger, now_ms());
        Ok(Response::new(pb::SignedTreeHeadResponse {
            signed_tree_head: head_json(&head),
            ledger_key: self.coord.ledger.verifying_key().to_bytes().to_vec(),
        }))
    }

    /// The stored lines themselves (not re-encoded), so that an export is byte for byte what
    /// the database holds and tampering in the database shows in the export.
    async fn get_entries(
        &self,
        request: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<pb::GetEntriesResponse>, Status> {
        require_role(&request, Role::Auditor)?;
        let req = request.into_inner();
        if req.end < req.start {
            return Err(ServiceError::invalid_argument(format!(
                "end {} is before start {}",
                req.end, req.start
            ))
            .into());
        }
        let end = req.end.min(req.start.saturating_add(MAX_ENTRIES_PER_CALL));
        let texts = self
            .coord
            .store
            .ledger_texts(req.start, end)
            .await
            .map_err(ServiceError::from)?;
        let mut entries = Vec::with_capacity(texts.len());
        let mut bytes = 0;
        for (_, line) in texts {
            bytes += line.len() + 8;
            // Stay well inside the message limit; the caller asks again from where it stopped.
            if bytes > harambee_proto::MAX_MESSAGE_BYTES / 2 && !entries.is_empty() {
                break;
            }
            entries.push(line);
        }
        Ok(Response::new(pb::GetEntriesResponse { entries }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::ProofResponse>, Status> {
        require_role(&request, Role::Auditor)?;
        let req = request.into_inner();
        let ledger = self
            .coord
            .ledger
            .synced(&self.coord.store)
            .await
            .map_err(ServiceError::from)?;
        let proof = ledger
            .inclusion_proof(req.index, req.tree_size)
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ProofResponse {
            hashes: hashes(proof),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ProofResponse>, Status> {
        require_role(&request, Role::Auditor)?;
        let req = request.into_inner();
        let ledger = self
            .coord
            .ledger
            .synced(&self.coord.store)
            .await
            .map_err(ServiceError::from)?;
        let proof = ledger
            .consistency_proof(req.old_size, req.new_size)
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ProofResponse {
            hashes: hashes(proof),
        }))
    }

    async fn list_privacy_spend(
        &self,
        request: Request<pb::ListPrivacySpendRequest>,
    ) -> Result<Response<pb::ListPrivacySpendResponse>, Status> {
        require_role(&request, Role::Auditor)?;
        let ledger = self
            .coord
            .ledger
            .synced(&self.coord.store)
            .await
            .map_err(ServiceError::from)?;
        let mut spend: BTreeMap<String, pb::PrivacySpend> = BTreeMap::new();
        for line in ledger.lines() {
            if let LedgerEvent::Contribution(c) = &line.event {
                let entry = spend
                    .entry(c.facility.clone())
                    .or_insert_with(|| pb::PrivacySpend {
                        facility: c.facility.clone(),
                        ..Default::default()
                    });
                entry.epsilon_spent = c.epsilon_spent;
                entry.delta = c.receipt.receipt.delta;
                entry.contributions += 1;
            }
        }
        for (facility, status) in self.coord.registry.privacy_statuses() {
            let entry = spend
                .entry(facility.to_string())
                .or_insert_with(|| pb::PrivacySpend {
                    facility: facility.into_string(),
                    epsilon_spent: status.epsilon_spent,
                    delta: status.delta,
                    ..Default::default()
                });
            entry.max_epsilon = status.max_epsilon;
        }
        Ok(Response::new(pb::ListPrivacySpendResponse {
            facilities: spend.into_values().collect(),
        }))
    }

    async fn list_cosignatures(
        &self,
        request: Request<pb::ListCosignaturesRequest>,
    ) -> Result<Response<pb::ListCosignaturesResponse>, Status> {
        require_role(&request, Role::Auditor)?;
        let req = request.into_inner();
        let page_size = match req.page_size {
            0 => MAX_COSIGNATURES_PER_PAGE,
            n => n.min(MAX_COSIGNATURES_PER_PAGE),
        };
        let after_id = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse::<u64>().map_err(|_| {
                ServiceError::invalid_argument(format!(
                    "page_token {:?} is not one this service issued",
                    req.page_token.chars().take(40).collect::<String>()
                ))
            })?
        };
        let rows = self
            .coord
            .store
            .cosignatures_page(after_id, u64::from(page_size))
            .await
            .map_err(ServiceError::from)?;
        let next_page_token = match rows.last() {
            Some((id, _)) if rows.len() == page_size as usize => id.to_string(),
            _ => String::new(),
        };
        let cosignatures = rows
            .iter()
            .map(|(_, r)| {
                serde_json::json!({ "head": r.head, "cosignature": r.cosignature }).to_string()
            })
            .collect();
        Ok(Response::new(pb::ListCosignaturesResponse {
            cosignatures,
            next_page_token,
        }))
    }
}
