//! End to end over real mTLS gRPC on loopback: a coordinator and the real agent runtime on
//! the bundled multi-site data, on SQLite and on PostgreSQL.

use harambee_sim::harness as common;

use common::*;
use harambee_proto::pb;

/// Runs two rounds with the four hospitals and checks that each committed model is exactly
/// the base plus the sample-weighted mean of the updates the agents say they sent (read
/// from their own egress logs, not from the coordinator).
async fn federation_commits_weighted_mean(database_url: Option<String>) {
    let mut h = Harness::start(database_url).await;
    let facilities = h.facilities(None);
    let configs: Vec<_> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let mut admin = h.admin().await;
    let spec = plain(spec(&facilities, 2, 60));
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;

    for number in 1..=2u32 {
        let round = run_round(&mut admin, &spec.name).await;
        assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
        assert_eq!(round.number, number);
        assert_eq!(round.participants.len(), 4);
        assert!(!round.secure_aggregation);
        for p in &round.participants {
            assert_eq!(p.status(), pb::ParticipantStatus::Uploaded, "{p:?}");
            let m = p.metrics.expect("every facility reports metrics");
            assert!(m.n_samples > 0 && m.loss.is_finite(), "{m:?}");
        }
        let base = export(&mut admin, &spec.name, number - 1).await;
        let committed = export(&mut admin, &spec.name, number).await;
        let uploads: Vec<(u64, Vec<f32>)> = configs
            .iter()
            .flat_map(|c| uploads_of(c, round.id))
            .collect();
        assert_eq!(uploads.len(), 4, "each agent uploaded once");
        let total: u64 = uploads.iter().map(|(n, _)| n).sum();
        for (i, (&b, &c)) in base.iter().zip(&committed).enumerate() {
            let mean: f64 = uploads
                .iter()
                .map(|(n, u)| *n as f64 * u[i] as f64)
                .sum::<f64>()
                / total as f64;
            let want = b as f64 + mean;
            assert!(
                (c as f64 - want).abs() < 1e-6,
                "param {i}: committed {c}, expected {want}"
            );
        }
        let claimed: u64 = round.participants.iter().map(|p| p.n_samples).sum();
        assert_eq!(
            claimed, total,
            "the round record carries the agents' sample counts"
        );
    }
    let rounds = admin
        .list_rounds(pb::ListRoundsRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .rounds;
    assert_eq!(
        rounds.iter().map(|r| r.number).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let last = rounds.last().unwrap();
    let g = last.global_metrics.unwrap();
    assert!(g.auc > 0.75, "the federated model learned something: {g:?}");

    h.stop_agents().await;
    h.stop_coordinator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_on_sqlite() {
    federation_commits_weighted_mean(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_on_postgres() {
    let db = PgDatabase::create().await;
    federation_commits_weighted_mean(Some(db.url.clone())).await;
    db.drop_now().await;
}

/// With secure aggregation (the default) the coordinator never sees an update, yet the
/// committed model is the base plus the weighted mean of the clipped updates the agents
/// held, within the quantization bound; it reaches the same quality as plain aggregation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_federation_commits_the_sum_of_the_masked_updates() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(None);
    let configs: Vec<_> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let mut admin = h.admin().await;
    let spec = spec(&facilities, 2, 60);
    assert!(
        spec.secure_aggregation.enabled,
        "secure aggregation is the default"
    );
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;

    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    assert!(round.secure_aggregation);
    assert!(
        round
            .participants
            .iter()
            .all(|p| p.status() == pb::ParticipantStatus::Uploaded),
        "{round:?}"
    );
    for c in &configs {
        assert!(
            uploads_of(c, round.id).is_empty(),
            "no plain update left any agent"
        );
    }
    let base = export(&mut admin, &spec.name, 0).await;
    let committed = export(&mut admin, &spec.name, 1).await;
    let held: Vec<(u64, Vec<f32>)> = configs
        .iter()
        .map(|c| unmasked_of(c, round.id).expect("held update"))
        .collect();
    let clip = spec.secure_aggregation.clip;
    let total: u64 = held.iter().map(|(n, _)| n).sum();
    for i in 0..base.len() {
        let sum: f64 = held
            .iter()
            .map(|(n, u)| *n as f64 * u[i].clamp(-clip, clip) as f64)
            .sum();
        let want = base[i] as f64 + sum / total as f64;
        // Stochastic rounding to at least 2^-16 of the clip range per coordinate.
        assert!(
            (committed[i] as f64 - want).abs() < 1e-3,
            "param {i}: committed {}, expected {want}",
            committed[i]
        );
    }
    h.stop_agents().await;
    h.stop_coordinator().await;
}

/// A federation may size its neighbour graph for a larger failure probability (less mask
/// expansion); only facilities whose policy allows it take part: the one with the default
/// policy declines with the reason, and the round commits with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weaker_neighbour_graph_runs_only_with_facilities_that_allow_it() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(None);
    for f in &facilities[..3] {
        h.spawn_agent_with(f, "\n[policy]\nmax_graph_failure_probability = 1e-4\n");
    }
    h.spawn_agent(&facilities[3]);
    let mut admin = h.admin().await;
    let mut spec = spec(&facilities, 3, 60);
    spec.secure_aggregation.failure_probability = 1e-4;
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;

    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    let status = |name: &str| {
        round
            .participants
            .iter()
            .find(|p| p.facility == name)
            .unwrap_or_else(|| panic!("{name} took part: {round:?}"))
    };
    for f in &facilities[..3] {
        assert_eq!(status(&f.name).status(), pb::ParticipantStatus::Uploaded);
    }
    let strict = status(&facilities[3].name);
    assert_ne!(
        strict.status(),
        pb::ParticipantStatus::Uploaded,
        "{strict:?}"
    );
    assert!(
        strict.detail.contains("the policy accepts at most 1e-6"),
        "{strict:?}"
    );
    h.stop_agents().await;
    h.stop_coordinator().await;
}

/// A server optimizer (FedAdam) turns the weighted mean update into the new model, and its
/// moments survive a coordinator restart between rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedadam_state_persists_across_a_restart() {
    use harambee_core::strategy::{ServerOptimizer, StrategyConfig};
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(2));
    let configs: Vec<_> = facilities.iter().map(|f| h.spawn_agent(f)).collect();
    let mut admin = h.admin().await;
    let mut spec = plain(spec(&facilities, 2, 60));
    spec.strategy = StrategyConfig::FedAdam {
        eta: 0.05,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
    };
    create_federation(&mut admin, &spec).await;
    wait_connected(&mut admin, &["group-1", "group-2"]).await;

    let mut expected = ServerOptimizer::new(spec.strategy.clone()).unwrap();
    for number in 1..=2u32 {
        if number == 2 {
            h.stop_coordinator().await;
            h.start_coordinator().await;
            admin = h.admin().await;
            wait_connected(&mut admin, &["group-1", "group-2"]).await;
        }
        let round = run_round(&mut admin, &spec.name).await;
        assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
        let base = export(&mut admin, &spec.name, number - 1).await;
        let committed = export(&mut admin, &spec.name, number).await;
        let uploads: Vec<(u64, Vec<f32>)> = configs
            .iter()
            .flat_map(|c| uploads_of(c, round.id))
            .collect();
        let total: u64 = uploads.iter().map(|(n, _)| n).sum();
        let mean: Vec<f32> = (0..base.len())
            .map(|i| {
                (uploads
                    .iter()
                    .map(|(n, u)| *n as f64 * u[i] as f64)
                    .sum::<f64>()
                    / total as f64) as f32
            })
            .collect();
        let want = expected.step(&base, &mean);
        for i in 0..base.len() {
            assert!(
                (committed[i] - want[i]).abs() < 1e-5,
                "round {number}, param {i}: {} vs {}",
                committed[i],
                want[i]
            );
        }
        let fedavg: Vec<f32> = base.iter().zip(&mean).map(|(b, m)| b + m).collect();
        assert!(
            committed
                .iter()
                .zip(&fedavg)
                .any(|(c, f)| (c - f).abs() > 1e-4),
            "FedAdam differs from FedAvg"
        );
    }
    h.stop_agents().await;
    h.stop_coordinator().await;
}

/// `model export` writes safetensors that load back bit-exactly, with kind and schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_checkpoint_round_trips_bit_exactly() {
    let h = Harness::start(None).await;
    let facilities = h.facilities(Some(1));
    let mut admin = h.admin().await;
    let spec = spec(&facilities, 1, 60);
    create_federation(&mut admin, &spec).await;
    let path = h.dir.path().join("model.safetensors");
    harambee_coordinator::cli::export_safetensors(&mut admin, &spec.name, Some(0), &path)
        .await
        .unwrap();
    let checkpoint = harambee_models::checkpoint::load_file(&path).unwrap();
    let raw = export(&mut admin, &spec.name, 0).await;
    assert_eq!(
        checkpoint
            .params
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>(),
        raw.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(checkpoint.spec, spec.model_spec());
    assert_eq!(checkpoint.schema, spec.schema);
    assert_eq!(
        (checkpoint.federation.as_str(), checkpoint.version),
        (spec.name.as_str(), 0)
    );

    // A new federation starts from that checkpoint, or from the first one's version 0.
    let mut from_file = spec.clone();
    from_file.name = "from-file".into();
    from_file.init_seed = 999;
    let request = pb::CreateFederationRequest {
        config: Some(harambee_coordinator::wire::federation_config(&from_file, 0)),
        init_from: Some(pb::ModelSource {
            source: Some(pb::model_source::Source::Checkpoint(
                std::fs::read(&path).unwrap(),
            )),
        }),
    };
    admin.create_federation(request).await.unwrap();
    assert_eq!(export(&mut admin, "from-file", 0).await, raw);
    let mut from_version = from_file.clone();
    from_version.name = "from-version".into();
    let source = pb::model_source::Source::FederationVersion(pb::FederationVersion {
        federation: spec.name.clone(),
        version: 0,
    });
    let request = pb::CreateFederationRequest {
        config: Some(harambee_coordinator::wire::federation_config(
            &from_version,
            0,
        )),
        init_from: Some(pb::ModelSource {
            source: Some(source),
        }),
    };
    admin.create_federation(request).await.unwrap();
    assert_eq!(export(&mut admin, "from-version", 0).await, raw);
    // A checkpoint of another architecture is refused with the reason.
    let mut other = spec.clone();
    other.name = "other".into();
    other.model = harambee_coordinator::federation::ModelSection {
        kind: harambee_coordinator::federation::KindName::Mlp,
        hidden: vec![4],
        text: None,
    };
    let request = pb::CreateFederationRequest {
        config: Some(harambee_coordinator::wire::federation_config(&other, 0)),
        init_from: Some(pb::ModelSource {
            source: Some(pb::model_source::Source::Checkpoint(
                std::fs::read(&path).unwrap(),
            )),
        }),
    };
    let err = admin.create_federation(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}

/// The consistency-check round of the active-adversary variant, end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_round_with_consistency_check_commits() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(None);
    for f in &facilities {
        h.spawn_agent(f);
    }
    let mut admin = h.admin().await;
    let mut spec = spec(&facilities, 2, 60);
    spec.secure_aggregation.consistency_check = true;
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;
    let round = run_round(&mut admin, &spec.name).await;
    assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
    assert!(
        round
            .participants
            .iter()
            .all(|p| p.status() == pb::ParticipantStatus::Uploaded)
    );
    h.stop_agents().await;
    h.stop_coordinator().await;
}

/// A facility that is connected but whose policy (as its agent reports it) refuses the
/// federation is named with the reason while the round selects, and in the failure reason
/// when selection times out, rather than counted as "not connected".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_names_the_facilities_whose_policy_refuses() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(3));
    h.spawn_agent(&facilities[0]);
    h.spawn_agent(&facilities[1]);
    let endpoint = h.endpoint();
    let refusing = OPEN_POLICY.replace(
        "allowed_federations = [\"*\"]",
        "allowed_federations = [\"diabetes\"]",
    );
    h.spawn_agent_at(&facilities[2], &endpoint, &refusing);
    let mut admin = h.admin().await;
    let mut spec = plain(spec(&facilities, 3, 60));
    spec.deadlines.selecting_s = 4;
    create_federation(&mut admin, &spec).await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    wait_connected(&mut admin, &names).await;

    let started = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let refuser = facilities[2].name.clone();
    let live = admin
        .get_round(pb::GetRoundRequest {
            round_id: started.id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.state(), pb::RoundState::Selecting, "{live:?}");
    assert_eq!(live.not_selected.len(), 1, "{live:?}");
    assert_eq!(live.not_selected[0].facility, refuser);
    assert!(
        live.not_selected[0]
            .reason
            .contains(&format!("federation \"{}\"", spec.name)),
        "{live:?}"
    );

    let round = wait_round(&mut admin, started.id).await;
    assert_eq!(round.state(), pb::RoundState::Failed, "{round:?}");
    assert!(
        round.failure_reason.contains("min_agents (3)")
            && round
                .failure_reason
                .contains(&format!("connected but not selected: {refuser}: ")),
        "{}",
        round.failure_reason
    );
    assert!(round.not_selected.is_empty(), "only while selecting");
    h.stop_agents().await;
}

/// With an upload budget of one upload at a time, facilities uploading together wait their
/// turn and the rounds (secure, then plain) still commit with everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_upload_budget_serializes_uploads_and_rounds_commit() {
    let mut h = Harness::prepare(None);
    h.settings.upload_buffer_bytes = 1;
    h.start_coordinator().await;
    let facilities = h.facilities(Some(3));
    for f in &facilities {
        h.spawn_agent(f);
    }
    let mut admin = h.admin().await;
    let names: Vec<&str> = facilities.iter().map(|f| f.name.as_str()).collect();
    let secure = spec(&facilities, 3, 60);
    create_federation(&mut admin, &secure).await;
    let mut plain_spec = plain(spec(&facilities, 3, 60));
    plain_spec.name = "heart-plain".into();
    create_federation(&mut admin, &plain_spec).await;
    wait_connected(&mut admin, &names).await;
    for name in [&secure.name, &plain_spec.name] {
        let round = run_round(&mut admin, name).await;
        assert_eq!(round.state(), pb::RoundState::Committed, "{round:?}");
        assert!(
            round
                .participants
                .iter()
                .all(|p| p.status() == pb::ParticipantStatus::Uploaded),
            "{round:?}"
        );
    }
    h.stop_agents().await;
}
