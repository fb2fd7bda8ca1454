//! The coordinator's tasks as the agent turns them into domain types
//! (`link::convert`): a `pb::Task` decoded from the stream, then `model` and
//! `train_config` for a train or evaluate task and `params_from_pb` for a secure
//! round's parameters. A malformed task is a `BadTask`, never a panic; parameters that
//! convert go back to the same wire form.

#![no_main]

use harambee_link::convert::{model, params_from_pb, params_to_pb, train_config};
use harambee_proto::pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn model_and_config(spec: Option<&pb::ModelSpec>, config: Option<&pb::TrainConfig>) {
    if let Ok((spec, schema)) = model(spec) {
        assert!(spec.shared_len() <= spec.n_params());
        assert_eq!(spec.n_inputs, schema.n_inputs());
    }
    let _ = train_config(config);
}

fuzz_target!(|data: &[u8]| {
    let Ok(task) = pb::Task::decode(data) else {
        return;
    };
    match task.kind {
        Some(pb::task::Kind::Train(t)) => model_and_config(t.model.as_ref(), t.config.as_ref()),
        Some(pb::task::Kind::Evaluate(t)) => model_and_config(t.model.as_ref(), t.config.as_ref()),
        Some(pb::task::Kind::SecaggAdvertise(t)) => {
            let Some(wire) = t.params else {
                return;
            };
            if let Ok(params) = params_from_pb(&wire) {
                assert_eq!(
                    params_to_pb(&params).encode_to_vec(),
                    wire.encode_to_vec(),
                    "params_to_pb(params_from_pb(p)) != p"
                );
            }
        }
        _ => {}
    }
});
