//! `Enrol` attempts are rate-limited over the real server, per token (whatever the source)
//! and per source address (whatever the token); a refusal is `RESOURCE_EXHAUSTED` and says
//! which limit and when to try again.

use harambee_sim::harness::identity as identity_common;

use std::time::Duration;

use harambee_agent::enrol;
use harambee_link::token::Token;
use harambee_proto::pb;
use identity_common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_enrol_attempts_are_limited_per_token_and_per_source() {
    let c = Coord::start(NINETY_DAYS).await;
    let text = c.add_facility("guessed", 3600).await;
    let token = Token::parse(&text).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr_der = enrol::certificate_request(&key, "guessed").unwrap();
    let client = c.enrolment_without_certificate().await;
    let attempt = |token: String| {
        let mut client = client.clone();
        let csr_der = csr_der.clone();
        async move {
            client
                .enrol(pb::EnrolRequest { token, csr_der })
                .await
                .map(|_| ())
        }
    };

    // Someone guesses the token's secret: five wrong guesses are answered as such...
    for guess in 0..5 {
        let err = attempt(token.with_secret([guess; 32]).text)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    // ...then the token is locked for a while, even with the right secret.
    let err = attempt(text.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().starts_with(
            "too many enrolment attempts with this token (at most 5, then one every 60 s); try again in "
        ),
        "{err:?}"
    );

    // Another facility's token from the same address still works.
    let other = c.add_facility("neighbour", 3600).await;
    enrol::enrol(
        &other,
        &c.h.dir.path().join("neighbour"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    // Garbage from one address, whatever the token, runs into the per-source limit.
    let mut n_refused_as_garbage = 0;
    let limited = loop {
        match attempt(format!("not-a-token-{n_refused_as_garbage}")).await {
            Err(err) if err.code() == Code::InvalidArgument => n_refused_as_garbage += 1,
            Err(err) => break err,
            Ok(()) => panic!("garbage enrolled"),
        }
        assert!(n_refused_as_garbage <= 25, "no limit per source");
    };
    assert!(n_refused_as_garbage >= 10, "{n_refused_as_garbage}");
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(
        limited
            .message()
            .starts_with("too many enrolment attempts from 127.0.0.1 (at most 20, then one every 6 s); try again in "),
        "{limited:?}"
    );
    // An honest agent behind that address is told the same, clearly.
    let third = c.add_facility("third", 3600).await;
    let err = enrol::enrol(
        &third,
        &c.h.dir.path().join("third"),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains(
            "the coordinator refused the enrolment: too many enrolment attempts from 127.0.0.1"
        ),
        "{err}"
    );
}
