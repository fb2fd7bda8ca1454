use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn config(n_params: usize, min_agents: usize) -> RoundConfig {
    RoundConfig {
        round_id: 1,
        n_params,
        min_agents,
        max_samples: 1_000_000,
        selecting_timeout: Duration::from_secs(10),
        training_timeout: Duration::from_secs(60),
        evaluating_timeout: Duration::from_secs(30),
        secure: None,
    }
}

fn agents(names: &[&str]) -> Vec<FacilityId> {
    names.iter().map(|&s| FacilityId::from(s)).collect()
}

fn drain(round: &mut Round<f64>) -> Vec<Event> {
    std::iter::from_fn(|| round.poll_event()).collect()
}

fn stages(events: &[Event]) -> Vec<Stage> {
    events
        .iter()
        .filter_map(|e| {
            if let Event::Stage(s) = e {
                Some(*s)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn happy_path_commits_the_weighted_mean() {
    let t0 = Instant::now();
    let mut round = Round::<f64>::new(config(2, 2), vec![1.0, 1.0], t0).unwrap();
    round.select(t0, &agents(&["a"]));
    assert_eq!(
        round.stage(),
        Stage::Selecting,
        "one facility is below min_agents"
    );
    round.select(t0, &agents(&["a", "b"]));
    assert_eq!(round.stage(), Stage::Training);
    let events = drain(&mut round);
    assert_eq!(stages(&events), vec![Stage::Selecting, Stage::Training]);
    assert!(events.contains(&Event::Train {
        agents: agents(&["a", "b"]),
        deadline: t0 + Duration::from_secs(60)
    }));

    round
        .handle_update(t0, "a", 10, "da".into(), &[1.0, 2.0])
        .unwrap();
    assert_eq!(
        round.handle_update(t0, "a", 10, "da".into(), &[1.0, 2.0]),
        Err(RoundError::Duplicate("a".into()))
    );
    assert_eq!(
        round.handle_update(t0, "zz", 10, "d".into(), &[1.0, 2.0]),
        Err(RoundError::NotSelected("zz".into()))
    );
    round
        .handle_update(t0, "b", 30, "db".into(), &[-1.0, 2.0])
        .unwrap();
    assert_eq!(round.stage(), Stage::Evaluating);
    // base + (10*[1,2] + 30*[-1,2]) / 40 = [1 - 0.5, 1 + 2]
    assert_eq!(round.candidate().unwrap(), &[0.5, 3.0]);

    round.handle_metrics(t0, "a", 0.8).unwrap();
    assert_eq!(
        round.handle_metrics(t0, "a", 0.8),
        Err(RoundError::Duplicate("a".into()))
    );
    round.handle_metrics(t0, "b", 0.9).unwrap();
    assert_eq!(round.stage(), Stage::Committed);
    let events = drain(&mut round);
    assert_eq!(events.last(), Some(&Event::Commit));
    assert_eq!(round.participants()["b"].metrics, Some(0.9));
    assert_eq!(round.poll_timeout(), None);
}

#[test]
fn invalid_update_is_rejected_and_the_round_goes_on() {
    let t0 = Instant::now();
    let mut round = Round::<f64>::new(config(2, 1), vec![0.0, 0.0], t0).unwrap();
    round.select(t0, &agents(&["a", "b"]));
    let err = round
        .handle_update(t0, "a", 5, "d".into(), &[f32::NAN, 0.0])
        .unwrap_err();
    assert!(matches!(
        err,
        RoundError::Invalid {
            source: UpdateError::NonFinite { index: 0, .. },
            ..
        }
    ));
    let err = round
        .handle_update(t0, "a", 5, "d".into(), &[1.0, 1.0])
        .unwrap_err();
    assert_eq!(
        err,
        RoundError::Duplicate("a".into()),
        "a rejected facility cannot retry within the round"
    );
    round
        .handle_update(t0, "b", 5, "d".into(), &[2.0, 2.0])
        .unwrap();
    assert_eq!(
        round.candidate().unwrap(),
        &[2.0, 2.0],
        "the NaN update is not in the sum"
    );
    assert_eq!(
        round.participants()["a"].status,
        ParticipantStatus::Rejected
    );
    assert!(
        round.participants()["a"]
            .detail
            .as_deref()
            .unwrap()
            .contains("not finite")
    );
}

#[test]
fn wrong_length_update_is_rejected() {
    let t0 = Instant::now();
    let mut round = Round::<f64>::new(config(3, 1), vec![0.0; 3], t0).unwrap();
    round.select(t0, &agents(&["a", "b"]));
    let err = round
        .handle_update(t0, "a", 5, "d".into(), &[1.0])
        .unwrap_err();
    assert!(matches!(
        err,
        RoundError::Invalid {
            source: UpdateError::WrongLength {
                expected: 3,
                got: 1
            },
            ..
        }
    ));
}

#[test]
fn training_deadline_drops_the_late_and_fails_below_min() {
    let t0 = Instant::now();
    let mut round = Round::<f64>::new(config(1, 2), vec![0.0], t0).unwrap();
    round.select(t0, &agents(&["a", "b", "c"]));
    round.handle_update(t0, "a", 1, "d".into(), &[1.0]).unwrap();
    let deadline = round.poll_timeout().unwrap();
    round.handle_timeout(deadline - Duration::from_millis(1));
    assert_eq!(
        round.stage(),
        Stage::Training,
        "a timeout before the deadline does nothing"
    );
    drain(&mut round);
    round.handle_timeout(deadline);
    assert_eq!(round.stage(), Stage::Failed);
    assert!(round.failure_reason().unwrap().contains("only 1 of 3"));
    assert_eq!(round.candidate(), None);
    let events = drain(&mut round);
    assert!(events.contains(&Event::Cancel {
        agent: "b".into(),
        reason: "missed the training deadline".into()
    }));
    assert!(matches!(events.last(), Some(Event::Fail { .. })));
    assert_eq!(round.participants()["c"].status, ParticipantStatus::Dropped);
}

#[test]
fn dropout_during_training_continues_with_enough_left() {
    let t0 = Instant::now();
    let mut round = Round::<f64>::new(config(1, 2), vec![0.0], t0).unwrap();
    round.select(t0, &agents(&["a", "b", "c"]));
    round.handle_dropout(t0, "c", "heartbeats stopped");
    round.handle_update(t0, "a", 1, "d".into(), &[1.0]).unwrap();
    round.handle_update(t0, "b", 1, "d".into(), &[3.0]).unwrap();
    assert_eq!(round.stage(), Stage::Evaluating);
    assert_eq!(round.candidate().unwrap(), &[2.0]);
    // A facility that drops during evaluation leaves its update in, its metrics out.
    round.handle_dropout(t0, "a", "stream closed");
    round.handle_metrics(t0, "b", 0.5).unwrap();
    assert_eq!(round.stage(), Stage::Committed);
    assert_eq!(
        round.participants()["a"].status,
        ParticipantStatus::Uploaded
    );
    assert_eq!(round.participants()["a"].metrics, None);
    assert_eq!(
        round.participants()["c"].detail.as_deref(),
        Some("heartbeats stopped")
    );
}

#[test]
fn evaluation_deadline_commits_without_missing_metrics() {
    let t0 = Instant::now();
    let mut round = Round::<f64>::new(config(1, 1), vec![0.0], t0).unwrap();
    round.select(t0, &agents(&["a"]));
    round.handle_update(t0, "a", 1, "d".into(), &[1.0]).unwrap();
    let deadline = round.poll_timeout().unwrap();
    round.handle_timeout(deadline);
    assert_eq!(round.stage(), Stage::Committed);
    assert!(
        round.participants()["a"]
            .detail
            .as_deref()
            .unwrap()
            .contains("evaluation deadline")
    );
}

#[test]
fn selection_deadline_fails_cleanly() {
    let t0 = Instant::now();
    let mut round = Round::<f64>::new(config(1, 3), vec![0.0], t0).unwrap();
    round.select(t0, &agents(&["a"]));
    round.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(round.stage(), Stage::Failed);
    assert!(round.failure_reason().unwrap().contains("min_agents (3)"));
    assert_eq!(
        round.handle_update(t0, "a", 1, "d".into(), &[1.0]),
        Err(RoundError::WrongStage(Stage::Failed))
    );
}

#[test]
fn a_failed_selection_names_the_facilities_that_refused_and_why() {
    let t0 = Instant::now();
    let mut round = Round::<f64>::new(config(1, 2), vec![0.0], t0).unwrap();
    let refusing = |names: &[(&str, &str)]| {
        names
            .iter()
            .map(|(f, why)| (FacilityId::from(*f), why.to_string()))
            .collect()
    };
    round.set_not_selected(refusing(&[("b", "its budget is spent")]));
    // The latest list is the one named: c's policy changed since.
    round.set_not_selected(refusing(&[(
        "c",
        "its policy does not allow federation \"x\"",
    )]));
    round.select(t0, &agents(&["a"]));
    round.handle_timeout(t0 + Duration::from_secs(10));
    let reason = round.failure_reason().unwrap();
    assert!(reason.contains("min_agents (2)"), "{reason}");
    assert!(
        reason
            .ends_with("connected but not selected: c: its policy does not allow federation \"x\""),
        "{reason}"
    );
    // Once selected, the list no longer matters.
    let mut round = Round::<f64>::new(config(1, 1), vec![0.0], t0).unwrap();
    round.select(t0, &agents(&["a"]));
    round.set_not_selected(refusing(&[("b", "its budget is spent")]));
    round.abort("operator");
    assert_eq!(round.failure_reason(), Some("operator"));
}

#[test]
fn base_of_the_wrong_length_is_refused() {
    let err = Round::<f64>::new(config(3, 1), vec![0.0; 2], Instant::now()).unwrap_err();
    assert_eq!(
        err,
        RoundError::BaseLength {
            expected: 3,
            got: 2
        }
    );
}

proptest! {
    /// Whatever the dropouts and the order of arrival, a committed round's model is the base
    /// plus the sample-weighted mean of exactly the accepted updates.
    #[test]
    fn committed_model_is_weighted_mean_of_accepted(
        n_params in 1usize..8,
        min_agents in 1usize..4,
        facilities in prop::collection::vec((1u64..500, any::<bool>(), prop::collection::vec(-10.0f32..10.0, 8)), 1..8),
    ) {
        let t0 = Instant::now();
        let base: Vec<f32> = (0..n_params).map(|i| i as f32).collect();
        let mut round = Round::<f64>::new(config(n_params, min_agents), base.clone(), t0).unwrap();
        let names: Vec<FacilityId> = (0..facilities.len()).map(|i| FacilityId::new(format!("f{i}"))).collect();
        round.select(t0, &names);
        if facilities.len() < min_agents {
            prop_assert_eq!(round.stage(), Stage::Selecting);
            return Ok(());
        }
        let mut expected = vec![0.0f64; n_params];
        let mut weight = 0.0f64;
        for (name, (n, drops, values)) in names.iter().zip(&facilities) {
            if *drops {
                round.handle_dropout(t0, name.as_str(), "gone");
            } else {
                round.handle_update(t0, name.as_str(), *n, String::new(), &values[..n_params]).unwrap();
                for (e, v) in expected.iter_mut().zip(&values[..n_params]) { *e += *n as f64 * *v as f64; }
                weight += *n as f64;
            }
        }
        let accepted = facilities.iter().filter(|f| !f.1).count();
        if accepted < min_agents {
            prop_assert_eq!(round.stage(), Stage::Failed);
            prop_assert!(round.candidate().is_none());
        } else {
            prop_assert_eq!(round.stage(), Stage::Evaluating);
            let candidate = round.candidate().unwrap();
            for i in 0..n_params {
                let want = base[i] as f64 + expected[i] / weight;
                prop_assert!((candidate[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0));
            }
        }
    }
}

#[test]
fn update_refused_on_its_header_counts_as_rejected() {
    let t0 = Instant::now();
    let mut round = Round::<f64>::new(config(4, 1), vec![0.0; 4], t0).unwrap();
    round.select(t0, &agents(&["a", "b"]));
    let err = round.reject_update(
        t0,
        "a",
        UpdateError::WrongLength {
            expected: 4,
            got: 9,
        },
    );
    assert!(matches!(err, RoundError::Invalid { .. }));
    assert_eq!(
        round.participants()["a"].status,
        ParticipantStatus::Rejected
    );
    round
        .handle_update(t0, "b", 2, "d".into(), &[1.0; 4])
        .unwrap();
    assert_eq!(round.stage(), Stage::Evaluating);
}

#[test]
fn central_noise_is_added_to_the_snapped_sum_before_the_mean() {
    use harambee_privacy::mechanism::LatticeGaussian;
    use harambee_secagg::ChaCha20Rng;
    use harambee_secagg::rand_core::SeedableRng;

    let t0 = Instant::now();
    let mechanism = LatticeGaussian::new(1.0, 2.0, 2).unwrap();
    let noise = mechanism.draw(&mut ChaCha20Rng::from_seed([5; 32]));
    // The release the round must take the mean of: the sum [0, 4], snapped, plus the noise.
    let released = noise.release(&[0.0, 4.0]);
    let mut round = Round::<f64>::new(config(2, 2), vec![1.0, 1.0], t0)
        .unwrap()
        .with_central_noise(noise)
        .unwrap();
    round.select(t0, &agents(&["a", "b"]));
    round
        .handle_update(t0, "a", 1, "da".into(), &[1.0, 2.0])
        .unwrap();
    round
        .handle_update(t0, "b", 1, "db".into(), &[-1.0, 2.0])
        .unwrap();
    let grid = mechanism.grid();
    let expected: Vec<f32> = released.iter().map(|s| (1.0 + s / 2.0) as f32).collect();
    assert_eq!(round.candidate().unwrap(), &expected[..]);
    for s in released {
        assert_eq!(s / grid, (s / grid).round(), "{s} is off the grid");
    }
    let wrong = LatticeGaussian::new(1.0, 2.0, 3).unwrap();
    assert!(
        Round::<f64>::new(config(2, 2), vec![1.0, 1.0], t0)
            .unwrap()
            .with_central_noise(wrong.draw(&mut ChaCha20Rng::from_seed([5; 32])))
            .is_err()
    );
}
