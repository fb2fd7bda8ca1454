//! `harambee-coordinator audit export` and `audit privacy`: an auditor's reads of the privacy
//! ledger over `AuditService`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use harambee_privacy::ledger::SignedTreeHead;
use harambee_privacy::ledger::export::{CosignedHead, HeadFile, head_path_for};
use harambee_proto::pb::{self, audit_service_client::AuditServiceClient};
use tonic::transport::Channel;

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub entries: u64,
    pub ledger: PathBuf,
    pub head: PathBuf,
}

/// Writes the ledger up to the current signed head to `out` (one canonical line per entry,
/// exactly as stored) and the head, the ledger key and the countersignatures to
/// `<stem>.head.json` next to it, both read page by page. Files are written whole, then
/// renamed into place.
pub async fn export(channel: Channel, out: &Path) -> anyhow::Result<Exported> {
    let (text, head_file) = fetch(channel).await?;
    let size = head_file.signed_tree_head.head.tree_size;
    let head_path = head_path_for(out);
    write_whole(out, text.as_bytes())?;
    write_whole(
        &head_path,
        serde_json::to_string_pretty(&head_file)?.as_bytes(),
    )?;
    Ok(Exported {
        entries: size,
        ledger: out.to_owned(),
        head: head_path,
    })
}

/// The ledger up to the current signed head as the export's text (one canonical line per
/// entry, exactly as stored) and its head file, read page by page.
pub async fn fetch(channel: Channel) -> anyhow::Result<(String, HeadFile)> {
    let mut client = AuditServiceClient::new(channel)
        .max_decoding_message_size(harambee_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(harambee_proto::MAX_MESSAGE_BYTES);
    let head = client
        .get_signed_tree_head(pb::GetSignedTreeHeadRequest {})
        .await?
        .into_inner();
    let signed: SignedTreeHead = serde_json::from_str(&head.signed_tree_head)
        .context("the coordinator sent a malformed tree head")?;
    let size = signed.head.tree_size;
    let mut text = String::new();
    let mut next = 0;
    while next < size {
        let page = client
            .get_entries(pb::GetEntriesRequest {
                start: next,
                end: size,
            })
            .await?
            .into_inner()
            .entries;
        if page.is_empty() {
            bail!("the coordinator returned no entries from {next} while its head covers {size}");
        }
        // Continue after the last index received: a gap (a missing entry) must not make
        // the export repeat or skip anything, so the verifier sees exactly what is stored.
        let last = page.last().expect("not empty");
        let index = serde_json::from_str::<serde_json::Value>(last)
            .ok()
            .and_then(|v| v["index"].as_u64());
        next = match index {
            Some(i) if i >= next => i + 1,
            _ => next + page.len() as u64,
        };
        for line in page {
            text.push_str(&line);
            text.push('\n');
        }
    }
    let mut cosignatures = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_cosignatures(pb::ListCosignaturesRequest {
                page_size: 0,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        for c in &page.cosignatures {
            cosignatures.push(
                serde_json::from_str::<CosignedHead>(c)
                    .context("the coordinator sent a malformed countersignature")?,
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token == page_token || page.cosignatures.is_empty() {
            bail!(
                "the coordinator's countersignature pages do not advance (token {:?})",
                page.next_page_token
            );
        }
        page_token = page.next_page_token;
    }
    let head_file = HeadFile {
        signed_tree_head: signed,
        ledger_key: hex::encode(&head.ledger_key),
        cosignatures,
    };
    Ok((text, head_file))
}

/// ε per facility, from the receipts in the ledger and the budgets the facilities report.
pub async fn privacy_spend(channel: Channel) -> anyhow::Result<Vec<pb::PrivacySpend>> {
    let mut client = AuditServiceClient::new(channel);
    Ok(client
        .list_privacy_spend(pb::ListPrivacySpendRequest {})
        .await?
        .into_inner()
        .facilities)
}

/// `audit report`: exports the ledger into `dir` (`ledger.jsonl` and its head), checks its
/// tree and head signature with the key it states, reads the federations, and writes the
/// records (`crate::cli::report`) as Markdown, HTML and SVG. Returns the files written.
pub async fn report(channel: Channel, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let exported = export(channel.clone(), &dir.join("ledger.jsonl")).await?;
    let text = std::fs::read_to_string(&exported.ledger)
        .with_context(|| format!("reading {}", exported.ledger.display()))?;
    let entries = harambee_privacy::ledger::parse_jsonl(&text)?;
    let head_file: HeadFile = serde_json::from_str(
        &std::fs::read_to_string(&exported.head)
            .with_context(|| format!("reading {}", exported.head.display()))?,
    )?;
    let key_bytes: [u8; 32] = hex::decode(&head_file.ledger_key)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the coordinator's ledger key is not 32 bytes"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes)?;
    let verification = harambee_privacy::ledger::verify_ledger(
        &entries,
        &head_file.signed_tree_head,
        &key,
        None,
        &harambee_privacy::ledger::enrolled_receipt_keys(&entries),
    );
    let federations = harambee_proto::pb::admin_service_client::AdminServiceClient::new(channel)
        .list_federations(pb::ListFederationsRequest {})
        .await?
        .into_inner()
        .federations;
    let fingerprint = harambee_privacy::ledger::key_fingerprint(&key);
    let facts = crate::cli::report::LedgerFacts {
        entries: &entries,
        head: &head_file.signed_tree_head,
        key_fingerprint: &fingerprint,
        verified: verification.is_ok(),
    };
    let now_ms = harambee_link::clock::Clock::system().unix_ms();
    let report = crate::cli::report::report(&facts, &federations, now_ms);
    let mut written = vec![exported.ledger, exported.head];
    for (stem, markdown) in &report.documents {
        let md_path = dir.join(format!("{stem}.md"));
        write_whole(&md_path, markdown.as_bytes())?;
        let html_path = dir.join(format!("{stem}.html"));
        write_whole(
            &html_path,
            crate::cli::report::to_html(stem, markdown).as_bytes(),
        )?;
        written.extend([md_path, html_path]);
    }
    let svg = dir.join("privacy-spend.svg");
    write_whole(&svg, report.spend_svg.as_bytes())?;
    written.push(svg);
    Ok(written)
}

fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
