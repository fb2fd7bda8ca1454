//! Federated LoRA fine-tuning of the pretrained text encoder (`minilm_lora`), end to end over
//! mTLS with SecAgg+: only the adapters and the head leave a facility, a facility whose copy of
//! the base model is not the one the federation pins declines, and the federated classifier
//! reads held-out texts better than chance; with text-level DP-SGD the facilities' receipts
//! and the ledger show the ε spent; with local heads only the adapters leave and each
//! facility keeps its own head.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use harambee_sim::harness as common;

use common::*;
use harambee_agent::config::AgentConfig;
use harambee_coordinator::federation::{KindName, ModelSection};
use harambee_models::text::train::{self as text_train, TextDataset};
use harambee_models::text::{LoraConfig, LoraTarget, MINILM_SHA256, Minilm, TextTask};
use harambee_proto::pb;
use harambee_sim::demo::{self, Facility};

/// The pinned MiniLM, fetched with models/text/fetch-minilm.sh when missing.
fn minilm() -> &'static (PathBuf, Minilm) {
    static MODEL: OnceLock<(PathBuf, Minilm)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = harambee_models::text::default_dir().expect("HOME or HARAMBEE_MINILM_DIR");
        let model = Minilm::load_pinned(&dir, MINILM_SHA256)
            .or_else(|first| {
                let script =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/text/fetch-minilm.sh");
                eprintln!("{first}; running {}", script.display());
                let fetched = std::process::Command::new("bash")
                    .arg(&script)
                    .status()
                    .is_ok_and(|s| s.success());
                if fetched {
                    Minilm::load_pinned(&dir, MINILM_SHA256)
                } else {
                    Err(first)
                }
            })
            .unwrap_or_else(|e| panic!("cannot load the MiniLM weights for this test: {e}"));
        (dir, model)
    })
}

const CONTRACEPTION: [&str; 8] = [
    "I started the pill for birth control and my periods are lighter",
    "the implant is great birth control, no pregnancy scare",
    "this contraceptive pill gave me spotting the first month",
    "on this birth control pill I had mood swings but no pregnancy",
    "my gynecologist prescribed it to prevent pregnancy",
    "the IUD for contraception hurt at insertion but works well",
    "birth control patch caused breast tenderness",
    "I take the pill every morning to avoid getting pregnant",
];
const PAIN: [&str; 8] = [
    "it took the edge off my back pain after surgery",
    "the painkiller helped my knee pain but made me drowsy",
    "my migraine headache pain was gone in an hour",
    "for chronic neck pain this opioid barely worked",
    "after my injury the pain medicine let me sleep",
    "arthritis pain in my hands is much better now",
    "this relieved the severe pain from my kidney stone",
    "my toothache pain eased within thirty minutes",
];

fn task() -> TextTask {
    TextTask {
        base_sha256: MINILM_SHA256.to_owned(),
        text_column: "note".to_owned(),
        label_column: "condition".to_owned(),
        classes: vec!["Birth Control".to_owned(), "Pain".to_owned()],
        max_tokens: 24,
        lora: LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec![LoraTarget::Query, LoraTarget::Value],
            top_layers: Some(1),
        },
        local_head: false,
    }
}

/// Writes `f`'s texts: `(text, class)` rows.
fn write_texts(f: &Facility, rows: &[(&str, &str)]) {
    let mut writer = csv::Writer::from_path(f.dir.join("data.csv")).unwrap();
    writer.write_record(["note", "condition"]).unwrap();
    for (text, class) in rows {
        writer.write_record([text, class]).unwrap();
    }
    writer.flush().unwrap();
}

/// Starts `f`'s agent with the open test policy, reading the base model from `base_dir`.
fn spawn_text_agent(h: &mut Harness, f: &Facility, base_dir: &Path) -> AgentConfig {
    let path = demo::write_agent_config(f, &h.endpoint(), &h.pki, OPEN_POLICY).unwrap();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[data]\n",
        &format!("[data]\nbase_model_dir = {:?}\n", path_str(base_dir)),
    );
    std::fs::write(&path, format!("{text}\n[egress]\nkeep_payloads = true\n")).unwrap();
    let config = AgentConfig::load(&path).unwrap();
    h.spawn_agent_config(config.clone());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_adapters_federate_securely_and_a_foreign_base_model_is_refused() {
    let (base_dir, base) = minilm();
    // A copy of the base model with one weight changed: same shapes, another SHA-256.
    let foreign = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(base_dir.join(file), foreign.path().join(file)).unwrap();
    }
    let weights = foreign.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();

    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(3));
    // Two facilities with half of each class's texts for training (the last two of each
    // class are held out, here in the test); the third holds the foreign weights.
    let rows = |range: std::ops::Range<usize>| -> Vec<(&str, &str)> {
        range
            .flat_map(|i| [(CONTRACEPTION[i], "Birth Control"), (PAIN[i], "Pain")])
            .collect()
    };
    write_texts(&facilities[0], &rows(0..3));
    write_texts(&facilities[1], &rows(3..6));
    write_texts(&facilities[2], &rows(0..6));
    let good = [
        spawn_text_agent(&mut h, &facilities[0], base_dir),
        spawn_text_agent(&mut h, &facilities[1], base_dir),
    ];
    spawn_text_agent(&mut h, &facilities[2], foreign.path());

    let mut admin = h.admin().await;
    let mut spec = spec(&facilities, 2, 120);
    spec.model = ModelSection {
        kind: KindName::MinilmLora,
        hidden: Vec::new(),
        text: Some(task()),
    };
    spec.schema = Default::default();
    spec.train.epochs = 3;
    spec.train.batch_size = 4;
    spec.train.learning_rate = 0.01;
    spec.validate().unwrap();
    assert!(spec.secure_aggregation.enabled);
    let classifier = task().classifier();
    let n = spec.model_spec().n_params();
    assert_eq!(n, classifier.n_params());
    assert!(
        (n as f64) < 0.01 * base.n_params() as f64,
        "{n} values of a {}-parameter model",
        base.n_params()
    );
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2", "group-3"]).await;

    let held_out = TextDataset {
        texts: CONTRACEPTION[6..]
            .iter()
            .chain(&PAIN[6..])
            .map(|t| (*t).to_owned())
            .collect(),
        labels: vec![0, 0, 1, 1],
    };
    let initial = export(&mut admin, &spec.name, 0).await;
    assert_eq!(initial, spec.model_spec().init_params(spec.init_seed));
    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    assert!(round.secure_aggregation);
    let foreign_facility = round
        .participants
        .iter()
        .find(|p| p.facility == "group-3")
        .expect("the third facility was selected");
    assert!(
        foreign_facility
            .detail
            .contains("not the one the federation pins"),
        "{foreign_facility:?}"
    );
    // What each good facility held for secure aggregation: the adapters and head, no more.
    for config in &good {
        let (all, _) = task().load(&config.data.csv).unwrap();
        let (train, _) = all.split_holdout(demo::HOLDOUT, demo::SPLIT_SEED);
        let (weight, update) = unmasked_of(config, round.id).expect("an update was held");
        assert_eq!(weight, train.len() as u64);
        assert_eq!(update.len(), n);
        assert!(update[..classifier.adapter_len()].iter().any(|v| *v != 0.0));
    }
    let global = export(&mut admin, &spec.name, 1).await;
    assert_eq!(global.len(), n);
    // The operator's `model export` writes the adapters and head in PEFT's layout, and they
    // read back as the committed model.
    let exported = foreign.path().join("exported-adapter");
    harambee_coordinator::cli::export_safetensors(&mut admin, &spec.name, Some(1), &exported)
        .await
        .unwrap();
    assert!(
        exported
            .join(harambee_models::text::lora::PEFT_CONFIG)
            .is_file()
    );
    assert_eq!(
        harambee_models::text::lora::import_peft(&classifier, &exported).unwrap(),
        global
    );
    let before = text_train::evaluate(base, &classifier, &initial, &held_out, 24).unwrap();
    let after = text_train::evaluate(base, &classifier, &global, &held_out, 24).unwrap();
    assert!(after.loss < before.loss, "{before:?} -> {after:?}");
    assert!(after.accuracy > 0.5, "held-out accuracy {after:?}");
    h.stop_agents().await;
    h.stop_coordinator().await;
}

/// `f`'s own head file, once it has one (`state/personal/FEDERATION.head.f32`).
fn own_head(config: &AgentConfig, federation: &str) -> Option<Vec<f32>> {
    let path = config
        .state_dir
        .join("personal")
        .join(format!("{federation}.head.f32"));
    let bytes = std::fs::read(path).ok()?;
    Some(harambee_core::params::from_le_bytes(&bytes).unwrap())
}

/// Polls `check` every 100 ms for up to 60 s.
async fn within_a_minute(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_adapters_train_with_text_level_dp_sgd_under_secure_aggregation() {
    use harambee_coordinator::federation::DpSgdSpec;
    use harambee_link::identity::Role;
    use harambee_privacy::log::{LOG_FILE, Record, parse_log};

    let (base_dir, _) = minilm();
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    let rows = |range: std::ops::Range<usize>| -> Vec<(&str, &str)> {
        range
            .flat_map(|i| [(CONTRACEPTION[i], "Birth Control"), (PAIN[i], "Pain")])
            .collect()
    };
    write_texts(&facilities[0], &rows(0..4));
    write_texts(&facilities[1], &rows(4..8));
    let configs = [
        spawn_text_agent(&mut h, &facilities[0], base_dir),
        spawn_text_agent(&mut h, &facilities[1], base_dir),
    ];
    let mut admin = h.admin().await;
    let mut spec = spec(&facilities, 2, 120);
    spec.model = ModelSection {
        kind: KindName::MinilmLora,
        hidden: Vec::new(),
        text: Some(task()),
    };
    spec.schema = Default::default();
    spec.train.epochs = 2;
    spec.train.learning_rate = 0.01;
    let (clip_norm, noise_multiplier, sampling_rate) = (1.0, 1.0, 0.5);
    spec.privacy.dp_sgd = Some(DpSgdSpec {
        clip_norm,
        noise_multiplier,
        sampling_rate,
    });
    spec.validate().unwrap();
    assert!(spec.secure_aggregation.enabled);
    let n = spec.model_spec().n_params();
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2"]).await;

    let initial = export(&mut admin, &spec.name, 0).await;
    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    assert!(round.secure_aggregation);
    assert_eq!(round.participants.len(), 2, "{round:?}");
    let global = export(&mut admin, &spec.name, 1).await;
    assert_ne!(global, initial);

    // Each facility trained with DP-SGD and its receipt says so: masked, with the steps an
    // auditor needs, at the ε its accountant gives for one round.
    let steps = harambee_models::dp::dp_steps(2, sampling_rate);
    let one_round =
        harambee_privacy::accountant::epsilon(noise_multiplier, sampling_rate, steps, 1e-5)
            .unwrap()
            .epsilon;
    for config in &configs {
        let (_, update) = unmasked_of(config, round.id).expect("an update was held");
        assert_eq!(update.len(), n);
        let receipts = || -> Vec<harambee_privacy::ledger::receipt::EgressReceipt> {
            parse_log(&std::fs::read_to_string(config.state_dir.join(LOG_FILE)).unwrap_or_default())
                .unwrap()
                .into_iter()
                .filter_map(|line| match line.record {
                    Record::Receipt { receipt, .. } => Some(receipt.receipt),
                    _ => None,
                })
                .collect()
        };
        within_a_minute("the facility's receipt", || !receipts().is_empty()).await;
        let receipts = receipts();
        assert_eq!(receipts.len(), 1, "{receipts:?}");
        let receipt = &receipts[0];
        assert_eq!(
            receipt.aggregation,
            Some(harambee_privacy::ledger::Aggregation::Secure)
        );
        assert_eq!(
            receipt.dp_sgd,
            Some(harambee_privacy::policy::DpSteps {
                noise_multiplier,
                sampling_rate,
                steps,
            })
        );
        assert!(
            (receipt.epsilon_spent - one_round).abs() < 1e-9,
            "{} vs {one_round}",
            receipt.epsilon_spent
        );
    }
    // The ledger shows the ε each facility spent on the text federation.
    let spend =
        harambee_coordinator::cli::audit::privacy_spend(h.channel(Role::Auditor, "auditor").await)
            .await
            .unwrap();
    assert_eq!(spend.len(), 2, "{spend:?}");
    for s in &spend {
        assert_eq!(s.contributions, 1, "{s:?}");
        assert!((s.epsilon_spent - one_round).abs() < 1e-9, "{s:?}");
    }
    h.stop_agents().await;
    h.stop_coordinator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_local_heads_only_adapters_leave_and_each_facility_keeps_its_head() {
    let (base_dir, _) = minilm();
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    // The facilities see the classes in different proportions: their heads differ. Eleven
    // texts each, so that the split holds one out (the eleventh) and the facility evaluates.
    let skewed = |most: &[&'static str; 8], few: &[&'static str; 8], classes: [&'static str; 2]| {
        most.iter()
            .map(|t| (*t, classes[0]))
            .chain(few[..3].iter().map(|t| (*t, classes[1])))
            .collect::<Vec<_>>()
    };
    write_texts(
        &facilities[0],
        &skewed(&CONTRACEPTION, &PAIN, ["Birth Control", "Pain"]),
    );
    write_texts(
        &facilities[1],
        &skewed(&PAIN, &CONTRACEPTION, ["Pain", "Birth Control"]),
    );
    let configs = [
        spawn_text_agent(&mut h, &facilities[0], base_dir),
        spawn_text_agent(&mut h, &facilities[1], base_dir),
    ];
    for config in &configs {
        let (all, _) = task().load(&config.data.csv).unwrap();
        let (_, held_out) = all.split_holdout(demo::HOLDOUT, demo::SPLIT_SEED);
        assert_eq!(held_out.len(), 1);
    }
    let mut admin = h.admin().await;
    // In plain aggregation, so that the updates the coordinator receives can be read.
    let mut spec = plain(spec(&facilities, 2, 120));
    let task = TextTask {
        local_head: true,
        ..task()
    };
    spec.model = ModelSection {
        kind: KindName::MinilmLora,
        hidden: Vec::new(),
        text: Some(task.clone()),
    };
    spec.schema = Default::default();
    spec.train.epochs = 2;
    spec.train.batch_size = 2;
    spec.train.learning_rate = 0.01;
    spec.validate().unwrap();
    let classifier = task.classifier();
    let adapters = classifier.adapter_len();
    let model = spec.model_spec();
    assert_eq!(model.shared_len(), adapters);
    assert!(adapters < model.n_params());
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2"]).await;

    let initial = export(&mut admin, &spec.name, 0).await;
    let mut heads_before: Vec<Option<Vec<f32>>> = vec![None, None];
    for version in 1..=2u32 {
        let round = run_round(&mut admin, &spec.name).await;
        assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
        // What the coordinator received: the adapters' change, no value of any head.
        for config in &configs {
            let uploads = uploads_of(config, round.id);
            assert_eq!(uploads.len(), 1);
            assert_eq!(uploads[0].1.len(), adapters);
        }
        let committed = export(&mut admin, &spec.name, version).await;
        assert_eq!(committed.len(), model.n_params());
        assert_eq!(
            committed[adapters..],
            initial[adapters..],
            "the global head is never federated"
        );
        assert_ne!(committed[..adapters], initial[..adapters]);

        let heads: Vec<Vec<f32>> = configs
            .iter()
            .map(|c| own_head(c, &spec.name).expect("the facility kept its head"))
            .collect();
        assert_ne!(heads[0], heads[1], "each facility's head is its own");
        for (facility_idx, head) in heads.iter().enumerate() {
            assert_eq!(head.len(), classifier.head_len());
            assert_ne!(head[..], initial[adapters..], "the head was trained here");
            // It persists across rounds and goes on training from where it was.
            if let Some(before) = &heads_before[facility_idx] {
                assert_ne!(head, before, "round {version} trained the head further");
            }
            // The facility evaluates (and keeps in PEFT's layout) the global adapters under
            // its own head.
            let dir = configs[facility_idx]
                .state_dir
                .join("personal")
                .join(format!("{}.adapter", spec.name));
            let expected = [&committed[..adapters], &head[..]].concat();
            within_a_minute("the evaluated classifier", || {
                harambee_models::text::lora::import_peft(&classifier, &dir)
                    .is_ok_and(|params| params == expected)
            })
            .await;
        }
        heads_before = heads.into_iter().map(Some).collect();
    }
    h.stop_agents().await;
    h.stop_coordinator().await;
}
