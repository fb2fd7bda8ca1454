//! Writes the seed corpus (`fuzz/corpus/<target>/`): real messages produced by the code,
//! from a real SecAgg+ round with the consistency check, a real ledger with a
//! contribution, a key rotation and a signed head, a real privacy log, and the wire
//! messages that carry them. Deterministic (seeded), so running it again rewrites the same
//! files:
//!
//! ```sh
//! cd fuzz && cargo run --example seed_corpus
//! ```
//!
//! Targets whose first input byte picks a decoder get that byte in front. The CSV and
//! token seeds are written here too, without building `link` or `models`: a token is
//! `hbe1.` + base64url(JSON) + `.` + the first 4 bytes of its SHA-256 in hex.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use harambee_privacy::ledger::export::{CosignedHead, HeadFile};
use harambee_privacy::ledger::{
    Aggregation, Contribution, EgressReceipt, Ledger, LedgerEvent, Sha256Digest, rotation_event,
    to_jsonl,
};
use harambee_privacy::log::{LogLine, Record};
use harambee_privacy::policy::DpSteps;
use harambee_proto::pb;
use harambee_secagg::rand_core::SeedableRng;
use harambee_secagg::{
    AfterMaskedInputs, ChaCha20Rng, ClientRound, MaskPrg, Message, Params, ServerRound, Word,
    encode_list,
};
use prost::Message as _;
use sha2::{Digest, Sha256};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    secagg(&root);
    let ledger = ledger(&root);
    privacy_log(&root, &ledger);
    proto(&root, &ledger);
    update_bytes(&root);
    token(&root);
    csv(&root);
    println!("wrote the seed corpus under {}", root.display());
}

fn write(root: &Path, target: &str, name: &str, kind: Option<u8>, bytes: &[u8]) {
    let dir = root.join(target);
    fs::create_dir_all(&dir).expect("create the corpus directory");
    let mut data = kind.map_or_else(Vec::new, |k| vec![k]);
    data.extend_from_slice(bytes);
    fs::write(dir.join(name), data).expect("write a seed");
}

/// Three clients, complete graph, t = 2, the consistency check on: every message kind.
fn params() -> Params {
    let mut p = Params::recommended(7, &[1, 2, 3], 4, 1.0, 10).expect("valid parameters");
    p.consistency_check = true;
    p.prg = MaskPrg::ChaCha20;
    p
}

fn secagg(root: &Path) {
    let params = params();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let signing: BTreeMap<u32, SigningKey> = params
        .participants
        .iter()
        .map(|&id| (id, SigningKey::from_bytes(&[id as u8; 32])))
        .collect();
    let verifying: BTreeMap<_, _> = signing
        .iter()
        .map(|(&id, k)| (id, k.verifying_key()))
        .collect();
    let t = "secagg_messages";

    let mut server = ServerRound::new(params.clone(), verifying.clone()).expect("server");
    let mut clients = BTreeMap::new();
    for &id in &params.participants {
        let (client, ad) =
            ClientRound::new(params.clone(), id, signing[&id].clone(), &mut rng).expect("client");
        if id == 1 {
            write(root, t, "advertisement", Some(0), &ad.encode());
        }
        server.receive(id, ad).expect("advertisement");
        clients.insert(id, client);
    }
    let (mut server, routes) = server.finish().expect("advertise stage");
    write(
        root,
        t,
        "advertisements",
        Some(7),
        &encode_list(&routes[&1]),
    );

    let mut next = BTreeMap::new();
    for (id, client) in clients {
        let (client, shares) = client
            .handle_keys(routes[&id].clone(), &verifying, &mut rng)
            .expect("shares");
        if id == 1 {
            write(root, t, "share", Some(1), &shares[0].encode());
            write(root, t, "shares", Some(8), &encode_list(&shares));
        }
        server.receive(id, shares).expect("shares");
        next.insert(id, client);
    }
    let (mut server, routes) = server.finish().expect("share stage");

    let mut awaiting = BTreeMap::new();
    for (id, client) in next {
        let input = vec![0.25, -0.5, 0.75, 1.5];
        let (client, masked) = client
            .handle_shares(routes[&id].clone(), &input, 3, &mut rng)
            .expect("masked input");
        if id == 1 {
            write(root, t, "masked_input", Some(2), &masked.encode());
            write(
                root,
                t,
                "masked_words_u32",
                Some(9),
                &masked.words.to_le_bytes(),
            );
            write(root, t, "masked_words_u64", Some(10), &[0xff; 16]);
        }
        server.receive(id, masked).expect("masked input");
        awaiting.insert(id, client);
    }
    let AfterMaskedInputs::ConsistencyCheck(mut server, routes) =
        server.finish().expect("masked stage")
    else {
        panic!("the consistency check is on");
    };
    write(root, t, "unmask_request", Some(3), &routes[&1].encode());
    let mut signed = BTreeMap::new();
    for (id, client) in awaiting {
        let (client, sig) = client.sign_survivors(&routes[&id]).expect("signature");
        if id == 1 {
            write(root, t, "consistency_signature", Some(5), &sig.encode());
        }
        server.receive(id, sig).expect("signature");
        signed.insert(id, client);
    }
    let (mut server, routes) = server.finish().expect("consistency stage");
    write(root, t, "consistency_proof", Some(6), &routes[&1].encode());
    for (id, client) in signed {
        let answer = client
            .handle_consistency(&routes[&id])
            .expect("unmask shares");
        if id == 1 {
            write(root, t, "unmask_shares", Some(4), &answer.encode());
        }
        server.receive(id, answer).expect("unmask shares");
    }
    server.finish().expect("the round unmasks");
}

struct Ledgered {
    ledger: Ledger,
    head_file: HeadFile,
    facility: SigningKey,
    receipt_line: usize,
}

fn receipt(facility: &SigningKey) -> harambee_privacy::ledger::SignedReceipt {
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
        aggregation: Some(Aggregation::Secure),
        secagg_params: Some(Sha256Digest(params().digest())),
        dp_sgd: Some(DpSteps {
            noise_multiplier: 1.1,
            sampling_rate: 0.01,
            steps: 300,
        }),
    }
    .sign(facility)
    .expect("a finite receipt signs")
}

fn ledger(root: &Path) -> Ledgered {
    let key = SigningKey::from_bytes(&[7; 32]);
    let new_key = SigningKey::from_bytes(&[8; 32]);
    let facility = SigningKey::from_bytes(&[1; 32]);
    let signed = receipt(&facility);
    let r = &signed.receipt;
    let events = vec![
        LedgerEvent::FacilityEnrolled {
            facility: "clinic-a".into(),
            receipt_key: Some(facility.verifying_key()),
        },
        LedgerEvent::FederationCreated {
            name: "sepsis".into(),
            privacy: serde_json::json!({"mechanism": "distributed", "clip": 1.0, "delta": 1e-5}),
        },
        LedgerEvent::RoundStarted {
            federation: "sepsis".into(),
            round_id: 7,
            selected: vec!["clinic-a".into(), "clinic-b".into()],
            eligible: 3,
        },
        LedgerEvent::Contribution(Contribution {
            facility: r.facility.clone(),
            federation: r.federation.clone(),
            round_id: r.round_id,
            n_params: 1024,
            bytes: r.bytes,
            upload_sha256: r.update_sha256,
            clipping_norm: r.clipping_norm,
            noise_multiplier: r.noise_multiplier,
            epsilon_spent: r.epsilon_spent,
            receipt: signed.clone(),
        }),
        LedgerEvent::RoundCommitted {
            federation: "sepsis".into(),
            round_id: 7,
            model_version: 2,
            model_sha256: Sha256Digest::of(b"model"),
        },
        rotation_event(&key, &new_key.verifying_key()),
        LedgerEvent::AdminAction {
            actor: "op".into(),
            action: "pause".into(),
            detail: "maintenance\n\"window\"".into(),
        },
    ];
    let mut ledger = Ledger::new();
    for (i, event) in events.into_iter().enumerate() {
        ledger
            .append(1_700_000_000_000 + i as u64, event)
            .expect("append");
    }
    let head = ledger.sign_head(1_700_000_001_000, &new_key);
    let cosignature = head.head.cosign("clinic-a", &facility);
    let head_file = HeadFile {
        signed_tree_head: head,
        ledger_key: hex::encode(new_key.verifying_key().as_bytes()),
        cosignatures: vec![CosignedHead {
            head: head.head,
            cosignature: cosignature.clone(),
        }],
    };
    let lines = ledger.lines();
    let t = "ledger_lines";
    for (i, line) in lines.iter().enumerate() {
        let name = format!("line_{i}");
        write(
            root,
            t,
            &name,
            None,
            line.to_json().expect("encodes").as_bytes(),
        );
    }
    let export = to_jsonl(lines).expect("encodes");
    write(root, t, "export", None, export.as_bytes());

    let t = "ledger_heads";
    let json = |v: &dyn erased::Json| v.json();
    write(root, t, "signed_tree_head", Some(0), json(&head).as_bytes());
    write(
        root,
        t,
        "cosignature",
        Some(1),
        json(&cosignature).as_bytes(),
    );
    let head_json = serde_json::to_string_pretty(&head_file).expect("encodes");
    write(root, t, "head_file", Some(2), head_json.as_bytes());
    write(
        root,
        t,
        "cosigned_head",
        Some(3),
        json(&head_file.cosignatures[0]).as_bytes(),
    );
    write(root, t, "tree_head", Some(4), json(&head.head).as_bytes());
    write(root, t, "key_pin", Some(5), head_file.ledger_key.as_bytes());
    let fingerprint = harambee_privacy::ledger::key_fingerprint(&new_key.verifying_key());
    write(
        root,
        t,
        "key_pin_fingerprint",
        Some(5),
        fingerprint.as_bytes(),
    );
    write(
        root,
        t,
        "audit_export",
        Some(6),
        format!("{export}\0{head_json}").as_bytes(),
    );

    let t = "receipts";
    write(root, t, "receipt", None, json(&signed).as_bytes());
    let mut plain = signed.receipt.clone();
    plain.aggregation = Some(Aggregation::Plain);
    plain.secagg_params = None;
    plain.dp_sgd = None;
    plain.epsilon_spent = 1.234_567_890_123e-7;
    plain.delta = 1e21;
    let plain = plain.sign(&facility).expect("signs");
    write(
        root,
        t,
        "receipt_plain_exponents",
        None,
        json(&plain).as_bytes(),
    );

    Ledgered {
        ledger,
        head_file,
        facility,
        receipt_line: 3,
    }
}

fn privacy_log(root: &Path, l: &Ledgered) {
    let head = l.head_file.signed_tree_head;
    let key = SigningKey::from_bytes(&[7; 32]);
    let old_head = {
        let mut first = Ledger::new();
        for line in &l.ledger.lines()[..5] {
            first.push_line(line.clone()).expect("same lines");
        }
        first.sign_head(1_700_000_000_500, &key)
    };
    let proof = l
        .ledger
        .inclusion_proof(l.receipt_line as u64, head.head.tree_size)
        .expect("in the tree");
    let signed = receipt(&l.facility);
    let records = vec![
        Record::Identity {
            facility: "clinic-a".into(),
            key: hex::encode(l.facility.verifying_key().as_bytes()),
        },
        Record::Head {
            signed_tree_head: old_head,
            ledger_key: hex::encode(key.verifying_key().as_bytes()),
            cosignature: old_head.head.cosign("clinic-a", &l.facility),
        },
        Record::Receipt {
            receipt: signed.clone(),
            dp: signed.receipt.dp_sgd,
        },
        Record::Accepted {
            federation: "sepsis".into(),
            round_id: 7,
        },
        Record::KeyRotation {
            old_key: hex::encode(key.verifying_key().as_bytes()),
            new_key: l.head_file.ledger_key.clone(),
            rotations: vec![l.ledger.lines()[5].clone()],
            inclusion_proofs: vec![
                l.ledger
                    .inclusion_proof(5, head.head.tree_size)
                    .expect("in"),
            ],
            signed_tree_head: head,
        },
        Record::Proof {
            federation: "sepsis".into(),
            round_id: 7,
            entry: Box::new(l.ledger.lines()[l.receipt_line].clone()),
            inclusion_proof: proof,
            signed_tree_head: head,
        },
        Record::Head {
            signed_tree_head: head,
            ledger_key: l.head_file.ledger_key.clone(),
            cosignature: head.head.cosign("clinic-a", &l.facility),
        },
        Record::PeerKey {
            facility: "clinic-b".into(),
            key: hex::encode(SigningKey::from_bytes(&[2; 32]).verifying_key().as_bytes()),
        },
        Record::Refusal {
            federation: "sepsis".into(),
            round_id: 8,
            reason: "the budget would be exceeded".into(),
        },
        Record::Alarm {
            federation: "sepsis".into(),
            round_id: 9,
            problem: "the inclusion proof does not verify".into(),
        },
    ];
    let mut lines: Vec<LogLine> = Vec::new();
    for (i, record) in records.into_iter().enumerate() {
        let line = LogLine::next(lines.last(), 1_700_000_000_000 + i as i64, record);
        lines.push(line);
    }
    let mut text = String::new();
    for line in &lines {
        text.push_str(&serde_json::to_string(line).expect("encodes"));
        text.push('\n');
    }
    harambee_privacy::log::parse_log(&text).expect("the log parses");
    harambee_privacy::log::check_ledger_keys(&lines).expect("the rotation is in the log");
    write(root, "privacy_log", "log", Some(0), text.as_bytes());
    write(
        root,
        "privacy_log",
        "log_rechained",
        Some(1),
        text.as_bytes(),
    );
}

fn proto(root: &Path, l: &Ledgered) {
    let t = "proto_messages";
    let seed =
        |name: &str, kind: u8, m: &dyn erased::Proto| write(root, t, name, Some(kind), &m.bytes());
    let params = params();
    let wire_params = pb::SecAggParams {
        round_id: params.round_id,
        participants: params.participants.clone(),
        vector_len: params.vector_len as u64,
        neighbours: params.neighbours as u32,
        threshold: params.threshold as u32,
        clip: params.clip,
        quant_bits: params.quant_bits,
        max_weight: params.max_weight,
        word_bits: params.word.bits(),
        prg: "chacha20".into(),
        consistency_check: params.consistency_check,
        noise_stddev: params.noise_stddev,
        n_min: params.n_min as u64,
    };
    assert_eq!(params.word, Word::U32);
    let advertise = pb::Task {
        kind: Some(pb::task::Kind::SecaggAdvertise(pb::SecAggAdvertise {
            round_id: 7,
            params: Some(wire_params),
            my_id: 1,
            deadline_unix_ms: 1_700_000_060_000,
        })),
    };
    let model = pb::ModelSpec {
        kind: "mlp".into(),
        hidden: vec![8],
        schema: Some(pb::FeatureSchema {
            label: "target".into(),
            features: vec![
                pb::Feature {
                    column: "age".into(),
                    center: 54.0,
                    scale: 9.0,
                    missing: vec![],
                    indicator: false,
                    ..Default::default()
                },
                pb::Feature {
                    column: "chol".into(),
                    center: 200.0,
                    scale: 50.0,
                    missing: vec!["0".into()],
                    indicator: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
        // 3 inputs → 8 hidden → 1: 3·8 + 8 + 8 + 1.
        n_params: 41,
        text: None,
    };
    let config = pb::TrainConfig {
        epochs: 2,
        batch_size: 32,
        learning_rate: 0.01,
        optimizer: "adam".into(),
        seed: 1,
        proximal_mu: 0.0,
        frozen_layers: 0,
    };
    let train = pb::Task {
        kind: Some(pb::task::Kind::Train(pb::TrainTask {
            round_id: 7,
            federation: "sepsis".into(),
            model: Some(model),
            config: Some(config),
            deadline_unix_ms: 1_700_000_060_000,
            ..Default::default()
        })),
    };
    // Kinds: the index in proto_messages' list (requests, then responses).
    seed("task_secagg_advertise", 31, &advertise);
    seed("task_train", 31, &train);
    write(
        root,
        "wire_convert",
        "task_secagg_advertise",
        None,
        &advertise.encode_to_vec(),
    );
    write(
        root,
        "wire_convert",
        "task_train",
        None,
        &train.encode_to_vec(),
    );

    let ad = fs::read(root.join("secagg_messages/advertisement")).expect("written above");
    seed(
        "secagg_submission_advertise",
        13,
        &pb::SecAggSubmission {
            round_id: 7,
            part: Some(pb::sec_agg_submission::Part::Advertise(ad[1..].to_vec())),
            known_tree_size: 7,
        },
    );
    let head = l.head_file.signed_tree_head;
    let cosignature = head.head.cosign("clinic-a", &l.facility);
    seed(
        "cosign_tree_head_request",
        16,
        &pb::CosignTreeHeadRequest {
            signed_tree_head: serde_json::to_string(&head).expect("encodes"),
            cosignature: serde_json::to_string(&cosignature).expect("encodes"),
        },
    );
    seed(
        "upload_update_header",
        11,
        &pb::UploadUpdateRequest {
            part: Some(pb::upload_update_request::Part::Header(pb::UpdateHeader {
                round_id: 7,
                n_params: 41,
                n_samples: 120,
                sha256: Sha256Digest::of(b"update").to_hex(),
                train_loss: 0.61,
                masked: false,
                receipt: serde_json::to_string(&receipt(&l.facility)).expect("encodes"),
            })),
        },
    );
    seed(
        "decline_task_request",
        14,
        &pb::DeclineTaskRequest {
            round_id: 7,
            reason: "policy".into(),
        },
    );
    let line = &l.ledger.lines()[l.receipt_line];
    seed(
        "ledger_proof",
        38,
        &pb::LedgerProof {
            entry: line.to_json().expect("encodes"),
            index: line.index,
            inclusion_proof: l
                .ledger
                .inclusion_proof(line.index, head.head.tree_size)
                .expect("in the tree")
                .iter()
                .map(|h| h.0.to_vec())
                .collect(),
            signed_tree_head: serde_json::to_string(&head).expect("encodes"),
            ..Default::default()
        },
    );
}

fn update_bytes(root: &Path) {
    let values = [
        0.0f32,
        -0.0,
        1.5,
        f32::MIN_POSITIVE,
        -3.25e7,
        f32::MAX,
        f32::NAN,
    ];
    write(
        root,
        "update_bytes",
        "update",
        Some(120),
        &harambee_core::params::to_le_bytes(&values),
    );
}

fn token(root: &Path) {
    let json = serde_json::json!({
        "c": "https://coordinator.health.example:7443",
        "f": "kisumu-district",
        "a": hex::encode(Sha256::digest(b"ca certificate")),
        "i": "0011223344556677",
        "s": URL_SAFE_NO_PAD.encode([9u8; 32]),
        "e": 1_700_086_400_000i64,
    })
    .to_string();
    let text = format!(
        "hbe1.{}.{}",
        URL_SAFE_NO_PAD.encode(&json),
        hex::encode(&Sha256::digest(json.as_bytes())[..4])
    );
    write(root, "enrolment_token", "token", Some(0), text.as_bytes());
    write(
        root,
        "enrolment_token",
        "token_json",
        Some(1),
        json.as_bytes(),
    );
}

fn csv(root: &Path) {
    let text = "site,age,sex,chol,oldpeak,target\n\
                cleveland,63,1,233,2.3,0\n\
                hungary,54,0,0,,1\n\
                va, 61 ,1,?,NA,1\n\
                \"switzerland\",45,1,260,-0.5,0\n";
    write(root, "csv_rows", "heart", None, text.as_bytes());
}

/// Object-safe helpers so the writers above take any message.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("encodes")
        }
    }

    pub trait Proto {
        fn bytes(&self) -> Vec<u8>;
    }

    impl<T: prost::Message> Proto for T {
        fn bytes(&self) -> Vec<u8> {
            self.encode_to_vec()
        }
    }
}
