//! A round that fails after something computed from the updates left its secrecy (here the
//! candidate model, sent out for evaluation) still counts in the facility-level ε that the
//! coordinator reports and records.

use harambee_sim::harness as common;

use common::*;
use harambee_coordinator::federation::Mechanism;
use harambee_link::identity::Role;
use harambee_privacy::ledger::{LedgerEvent, parse_jsonl};
use harambee_proto::pb::{self, task::Kind};
use harambee_sim::harness::scripted::ScriptedAgent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_that_failed_after_its_candidate_left_counts_in_the_facility_level_epsilon() {
    let mut h = Harness::start(None).await;
    let facilities = h.facilities(Some(1));
    let mut admin = h.admin().await;
    let mut spec = plain(spec(&facilities, 1, 60));
    spec.facilities = vec!["clinic".into()];
    spec.privacy.mechanism = Mechanism::Central;
    spec.privacy.clip_norm = 1.0;
    spec.privacy.noise_multiplier = 1.0;
    create_federation(&mut admin, &spec).await;

    let mut clinic = ScriptedAgent::connect(&h, "clinic").await;
    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: spec.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let task = clinic.next_train().await;
    let n = task.model.as_ref().unwrap().n_params;
    clinic
        .upload(&spec.name, round.id, 40, &vec![0.01f32; n as usize])
        .await
        .unwrap();
    // The candidate is out for evaluation; then the coordinator stops.
    let Kind::Evaluate(_) = clinic.next_task().await else {
        panic!("expected an evaluate task")
    };
    clinic.disconnect();
    h.stop_coordinator().await;
    h.start_coordinator().await;

    let mut admin = h.admin().await;
    let failed = admin
        .get_round(pb::GetRoundRequest { round_id: round.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state(), pb::RoundState::Failed, "{failed:?}");
    let eps = failed
        .facility_epsilon
        .expect("a failed round that revealed its candidate counts");
    let one_round = harambee_privacy::accountant::epsilon(1.0, 1.0, 1, spec.privacy.delta)
        .unwrap()
        .epsilon;
    assert!((eps - one_round).abs() < 1e-9, "{eps} vs {one_round}");

    // The ledger says why: the round failed, and it had revealed something.
    let out = h.dir.path().join("ledger.jsonl");
    harambee_coordinator::cli::audit::export(h.channel(Role::Auditor, "auditor").await, &out)
        .await
        .unwrap();
    let lines = parse_jsonl(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let ends: Vec<_> = lines
        .iter()
        .filter_map(|l| match &l.event {
            LedgerEvent::RoundFailed {
                round_id, revealed, ..
            } if *round_id == round.id => Some(*revealed),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [true], "{lines:#?}");
}
