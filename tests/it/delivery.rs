//! Delivery against the fault-injecting fake Events API: 429s with and without
//! `Retry-After`, 503s, connections dropped after the server applied the body,
//! slow answers past the timeout, 401, 413 splitting, 400 bisecting, gzip, the
//! account's limit learned from the first answer (and seeded, and capped by a
//! budget share), and 50,000 batches through a random fault mix with nothing
//! lost and nothing applied twice by the profile store.

use std::collections::HashSet;
use std::time::Duration;

use wsync::config::model::{Environment, Feed};
use wsync::mapping::batch::source_request_id;
use wsync::mapping::EncodedBatch;
use wsync::redact::Secret;
use wsync::sink::{
    Deliverer, DeliveryConfig, DeliveryError, EventsApiClient, PackedRequest, RequestOutcome,
    RequestPacker, RetryPolicy,
};

use crate::support::fake_mparticle::{FakeMparticle, Fault, FaultMix};

const KEY: &str = "delivery-test-key";
const SECRET: &str = "delivery-test-secret-51c0";

fn client(fake: &FakeMparticle, secret: &str, timeout: Duration) -> EventsApiClient {
    let feed = Feed {
        name: "fake".to_owned(),
        base_url: fake.base_url(),
        api_key: Secret::new(KEY),
        api_secret: Secret::new(secret),
        environment: Environment::Development,
        request_timeout: timeout,
        delivery: wsync::config::model::DeliverySettings::default(),
    };
    EventsApiClient::new(&feed).unwrap()
}

/// Unpaced, small backoffs: tests about faults, not about pacing.
fn config(max_in_flight: usize, max_attempts: u32) -> DeliveryConfig {
    DeliveryConfig {
        rate_per_sec: None,
        max_in_flight,
        gzip: false,
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(20),
            deadline: Duration::from_secs(60),
        },
    }
}

async fn setup(max_in_flight: usize, max_attempts: u32) -> (FakeMparticle, Deliverer) {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let deliverer = Deliverer::new(
        client(&fake, SECRET, Duration::from_secs(5)),
        config(max_in_flight, max_attempts),
    );
    (fake, deliverer)
}

/// A small valid batch for row `row`, with its deterministic id.
fn batch(row: u64, poison: bool) -> EncodedBatch {
    let content = format!(
        r#"{{"environment":"development","user_identities":{{"customer_id":"c{row}"}},"user_attributes":{{"n":{row},"poison":{poison}}}}}"#
    );
    let id = source_request_id("delivery-test", content.as_bytes());
    let json = format!(r#"{{"source_request_id":"{id}",{}"#, &content[1..]);
    EncodedBatch {
        row,
        part: 0,
        source_request_id: id,
        json: json.into_bytes(),
        historical: false,
    }
}

fn batches(rows: std::ops::Range<u64>, poison: &[u64]) -> Vec<EncodedBatch> {
    rows.map(|r| batch(r, poison.contains(&r))).collect()
}

fn ids(batches: &[EncodedBatch]) -> Vec<String> {
    batches
        .iter()
        .map(|b| b.source_request_id.clone())
        .collect()
}

fn assert_all_acknowledged(outcome: &RequestOutcome, sent: &[EncodedBatch]) {
    assert_eq!(outcome.acknowledged, ids(sent));
    assert!(
        outcome.dead_letters.is_empty(),
        "{:?}",
        outcome.dead_letters
    );
    assert_eq!(outcome.batch_count, sent.len());
}

#[tokio::test]
async fn retry_after_429_pauses_every_sender_and_is_not_a_failed_attempt() {
    // One attempt allowed: a 429 must not use it up.
    let (fake, deliverer) = setup(4, 1).await;
    fake.push_fault(Fault::Status {
        status: 429,
        headers: vec![("Retry-After".into(), "1".into())],
    });
    let first = batches(0..3, &[]);
    let second = batches(3..6, &[]);
    let a = {
        let d = deliverer.clone();
        let request = PackedRequest::from_batches(&first);
        tokio::spawn(async move { d.deliver(request).await })
    };
    // Start the second sender only once the first one has seen its 429.
    while deliverer.figures().responses_429 == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = deliverer
        .deliver(PackedRequest::from_batches(&second))
        .await
        .unwrap();
    let a = a.await.unwrap().unwrap();
    assert_all_acknowledged(&a, &first);
    assert_all_acknowledged(&b, &second);

    let requests = fake.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 202, 202]);
    for later in &requests[1..] {
        let gap = later.received_at - requests[0].received_at;
        assert!(
            gap >= Duration::from_millis(950),
            "sent {gap:?} after the 429"
        );
    }
    let figures = deliverer.figures();
    assert_eq!(figures.responses_429, 1);
    assert_eq!(figures.retries, 0);
    assert_eq!(figures.requests, 3);
    assert_eq!(figures.batches_acknowledged, 6);
    // Both senders waited on the gate.
    assert!(
        figures.rate_limit_wait >= Duration::from_millis(1800),
        "{figures:?}"
    );
}

#[tokio::test]
async fn retry_after_as_http_date_is_honoured() {
    let (fake, deliverer) = setup(1, 1).await;
    let at = std::time::SystemTime::now() + Duration::from_secs(2);
    fake.push_fault(Fault::Status {
        status: 429,
        headers: vec![("Retry-After".into(), httpdate::fmt_http_date(at))],
    });
    let sent = batches(0..2, &[]);
    let outcome = deliverer
        .deliver(PackedRequest::from_batches(&sent))
        .await
        .unwrap();
    assert_all_acknowledged(&outcome, &sent);
    let requests = fake.requests();
    // HTTP-dates have one-second resolution.
    assert!(requests[1].received_at - requests[0].received_at >= Duration::from_millis(900));
}

#[tokio::test]
async fn repeated_429_without_retry_after_backs_off_without_using_attempts() {
    let (fake, deliverer) = setup(1, 1).await;
    for _ in 0..3 {
        fake.respond_with_status_once(429);
    }
    let sent = batches(0..5, &[]);
    let outcome = deliverer
        .deliver(PackedRequest::from_batches(&sent))
        .await
        .unwrap();
    assert_all_acknowledged(&outcome, &sent);
    let figures = deliverer.figures();
    assert_eq!((figures.requests, figures.responses_429), (4, 3));
    assert_eq!(figures.retries, 0);
    assert_eq!(fake.distinct_applied(), 5);
}

/// `X-mp-rate-limit-exceeded: acceleration` (spec §3.4: ramp up more slowly):
/// the pace steps back a tenth instead of being cut to what got through.
#[tokio::test]
async fn an_acceleration_429_steps_the_pace_back_a_tenth() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let limited = |kind: &str| Fault::Status {
        status: 429,
        headers: vec![("X-mp-rate-limit-exceeded".to_owned(), kind.to_owned())],
    };
    let mut paces = Vec::new();
    for kind in ["acceleration", "account"] {
        let deliverer = Deliverer::new(
            client(&fake, SECRET, Duration::from_secs(5)),
            DeliveryConfig {
                rate_per_sec: Some(100.0),
                ..config(1, 3)
            },
        );
        fake.push_fault(limited(kind));
        let sent = batches(0..5, &[]);
        let outcome = deliverer
            .deliver(PackedRequest::from_batches(&sent))
            .await
            .unwrap();
        assert_all_acknowledged(&outcome, &sent);
        assert_eq!(deliverer.figures().responses_429, 1);
        paces.push(deliverer.current_rate().unwrap());
    }
    // Acceleration: 100 → 90 (then the accepted retry says nothing more). A
    // speed 429 with nothing accepted before it halves the pace.
    assert!((paces[0] - 90.0).abs() < 1.0, "{paces:?}");
    assert!((paces[1] - 50.0).abs() < 1.0, "{paces:?}");
}

#[tokio::test]
async fn service_unavailable_then_success() {
    let (fake, deliverer) = setup(1, 5).await;
    fake.respond_with_status_once(503);
    fake.respond_with_status_once(503);
    let sent = batches(0..10, &[]);
    let outcome = deliverer
        .deliver(PackedRequest::from_batches(&sent))
        .await
        .unwrap();
    assert_all_acknowledged(&outcome, &sent);
    let figures = deliverer.figures();
    assert_eq!(
        (figures.requests, figures.retries, figures.responses_5xx),
        (3, 2, 2)
    );
    assert_eq!(fake.distinct_applied(), 10);
    assert_eq!(fake.duplicates(), 0);
}

#[tokio::test]
async fn persistent_503_gives_up_after_max_attempts_naming_the_cause() {
    let (fake, deliverer) = setup(1, 3).await;
    for _ in 0..5 {
        fake.respond_with_status_once(503);
    }
    let error = deliverer
        .deliver(PackedRequest::from_batches(&batches(0..2, &[])))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        DeliveryError::RetriesExhausted { attempts: 3, .. }
    ));
    let text = error.to_string();
    assert!(
        text.contains("feed `fake`") && text.contains("HTTP 503"),
        "{text}"
    );
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn dropped_after_apply_is_retried_with_the_same_ids_and_applied_once() {
    let (fake, deliverer) = setup(1, 5).await;
    fake.push_fault(Fault::DropAfterApply);
    let sent = batches(0..10, &[]);
    let request = PackedRequest::from_batches(&sent);
    let body = request.body.clone();
    let outcome = deliverer.deliver(request).await.unwrap();
    assert_all_acknowledged(&outcome, &sent);

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].dropped && !requests[1].dropped);
    // The server saw the same ten ids twice: it counts ten duplicates, and a
    // store that applies each id once holds ten profiles updates.
    let recorded: Vec<String> = fake
        .batches()
        .iter()
        .map(|b| b["source_request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recorded[..10], recorded[10..]);
    assert_eq!(recorded[..10], ids(&sent));
    assert_eq!(fake.duplicates(), 10);
    assert_eq!(fake.distinct_applied(), 10);
    let figures = deliverer.figures();
    assert_eq!(figures.connection_failures, 1);
    assert_eq!(figures.retries, 1);
    assert_eq!(figures.batches_acknowledged, 10);
    assert_eq!(figures.bytes_sent, 2 * body.len() as u64);
}

#[tokio::test]
async fn slow_answer_past_the_timeout_is_retried() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let deliverer = Deliverer::new(
        client(&fake, SECRET, Duration::from_millis(300)),
        config(1, 5),
    );
    fake.push_fault(Fault::Slow {
        delay: Duration::from_secs(2),
    });
    let sent = batches(0..4, &[]);
    let outcome = deliverer
        .deliver(PackedRequest::from_batches(&sent))
        .await
        .unwrap();
    assert_all_acknowledged(&outcome, &sent);
    let figures = deliverer.figures();
    assert_eq!(figures.timeouts, 1);
    assert_eq!(figures.retries, 1);
    assert_eq!(fake.applied_ids(), ids(&sent).into_iter().collect());
}

#[tokio::test]
async fn unauthorized_is_fatal_at_once_with_one_request() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let wrong = "not-the-secret-9f2e";
    let deliverer = Deliverer::new(client(&fake, wrong, Duration::from_secs(5)), config(4, 5));
    let error = deliverer
        .deliver(PackedRequest::from_batches(&batches(0..3, &[])))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        DeliveryError::Unauthorized { status: 403, .. }
    ));
    let text = error.to_string();
    assert!(text.contains("feed `fake`"), "{text}");
    assert!(text.contains("api_key or api_secret is wrong"), "{text}");
    assert!(!text.contains(wrong) && !text.contains(KEY), "{text}");
    assert_eq!(fake.requests().len(), 1);

    // Delivery has stopped: later requests fail without being sent.
    let again = deliverer
        .deliver(PackedRequest::from_batches(&batches(3..4, &[])))
        .await
        .unwrap_err();
    assert!(matches!(again, DeliveryError::Unauthorized { .. }));
    assert!(deliverer
        .submit(PackedRequest::from_batches(&batches(4..5, &[])))
        .await
        .is_err());
    assert_eq!(fake.requests().len(), 1);
    assert!(deliverer.fatal_error().is_some());
}

#[tokio::test]
async fn payload_too_large_is_split_in_halves() {
    let (fake, deliverer) = setup(1, 3).await;
    let sent = batches(0..100, &[]);
    let whole = PackedRequest::from_batches(&sent);
    // Room for about 30 batches.
    let limit = whole.body.len() * 30 / 100;
    fake.set_max_body_bytes(Some(limit));
    let outcome = deliverer.deliver(whole).await.unwrap();
    assert_all_acknowledged(&outcome, &sent);

    let requests = fake.requests();
    assert!(requests.iter().any(|r| r.status == 413));
    for r in requests.iter().filter(|r| r.status == 202) {
        assert!(r.body_bytes <= limit);
    }
    // 100 → 50 + 50 → 25 × 4.
    assert_eq!(requests.iter().filter(|r| r.status == 202).count(), 4);
    assert_eq!(fake.distinct_applied(), 100);
    assert_eq!(fake.duplicates(), 0);
}

#[tokio::test]
async fn a_single_batch_over_the_size_limit_is_a_dead_letter() {
    let (fake, deliverer) = setup(1, 3).await;
    fake.set_max_body_bytes(Some(50));
    let sent = batches(0..2, &[]);
    let outcome = deliverer
        .deliver(PackedRequest::from_batches(&sent))
        .await
        .unwrap();
    assert!(outcome.acknowledged.is_empty());
    let dead: Vec<(String, u16)> = outcome
        .dead_letters
        .iter()
        .map(|d| (d.source_request_id.clone(), d.status))
        .collect();
    assert_eq!(
        dead,
        ids(&sent).into_iter().map(|i| (i, 413)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn bad_request_is_bisected_to_the_poison_batches() {
    let (fake, deliverer) = setup(1, 3).await;
    fake.set_poison_rule(true);
    let poison = [3, 50, 51, 99];
    let sent = batches(0..100, &poison);
    let outcome = deliverer
        .deliver(PackedRequest::from_batches(&sent))
        .await
        .unwrap();

    let good: Vec<EncodedBatch> = sent
        .iter()
        .filter(|b| !poison.contains(&b.row))
        .cloned()
        .collect();
    let bad: Vec<EncodedBatch> = sent
        .iter()
        .filter(|b| poison.contains(&b.row))
        .cloned()
        .collect();
    assert_eq!(outcome.acknowledged, ids(&good));
    assert_eq!(outcome.dead_letters.len(), 4);
    for (dead, batch) in outcome.dead_letters.iter().zip(&bad) {
        assert_eq!(dead.source_request_id, batch.source_request_id);
        assert_eq!(dead.row, batch.row);
        assert_eq!(dead.batch, batch.json);
        assert_eq!(dead.status, 400);
        assert!(
            dead.message.contains("poison") && dead.message.contains(&batch.source_request_id),
            "{}",
            dead.message
        );
    }
    assert_eq!(fake.applied_ids(), ids(&good).into_iter().collect());
    assert_eq!(deliverer.figures().dead_letters, 4);
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let deliverer = Deliverer::new(
        client(&fake, SECRET, Duration::from_secs(5)),
        DeliveryConfig {
            gzip: true,
            ..config(1, 3)
        },
    );
    let sent = batches(0..50, &[]);
    let request = PackedRequest::from_batches(&sent);
    let plain = request.body.len();
    let outcome = deliverer.deliver(request).await.unwrap();
    assert_all_acknowledged(&outcome, &sent);
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].gzip);
    assert!(
        requests[0].body_bytes < plain / 2,
        "gzip should shrink repetitive JSON"
    );
    assert_eq!(
        deliverer.figures().bytes_sent,
        requests[0].body_bytes as u64
    );
    assert_eq!(fake.distinct_applied(), 50);
}

#[tokio::test]
async fn pacing_holds_the_configured_rate() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let deliverer = Deliverer::new(
        client(&fake, SECRET, Duration::from_secs(5)),
        DeliveryConfig {
            rate_per_sec: Some(1000.0),
            ..config(4, 3)
        },
    );
    // The first 100 batches are the burst; the next 500 take 0.5 s at 1000/s.
    let start = std::time::Instant::now();
    let mut handles = Vec::new();
    for chunk in batches(0..600, &[]).chunks(50) {
        handles.push(
            deliverer
                .submit(PackedRequest::from_batches(chunk))
                .await
                .unwrap(),
        );
    }
    deliverer.drain().await;
    let elapsed = start.elapsed();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert_eq!(fake.distinct_applied(), 600);
}

/// A feed configured far above its account's limit learns the limit from the
/// first answer's `X-mp-rate-limit-percentage-used` (100 batches used 37 % of a
/// 270 batches/s account), and what it learned can seed the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_answer_teaches_the_account_limit_and_seeds_the_next_run() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set_rate_limit(Some(270.0));
    let paced = DeliveryConfig {
        rate_per_sec: Some(1000.0),
        ..config(1, 3)
    };
    let deliverer = Deliverer::new(client(&fake, SECRET, Duration::from_secs(5)), paced);
    assert_eq!(deliverer.current_rate(), Some(1000.0));
    assert_eq!(deliverer.learned_limit(), None);
    deliverer
        .deliver(PackedRequest::from_batches(&batches(0..100, &[])))
        .await
        .unwrap();
    let learned = deliverer.learned_limit().unwrap();
    // 100 / 37 % = 270.3, paced 2 % below.
    assert!(
        (learned.rate - 100.0 / 0.37 * 0.98).abs() < 0.01,
        "{learned:?}"
    );
    assert_eq!(deliverer.current_rate(), Some(learned.rate));

    // The next run of the feed (the state store keeps the value as JSON).
    let stored = serde_json::to_string(&learned).unwrap();
    let next = Deliverer::new(client(&fake, SECRET, Duration::from_secs(5)), paced);
    next.seed_learned_limit(serde_json::from_str(&stored).unwrap());
    assert_eq!(next.current_rate(), Some(learned.rate));
    // Three daemons share the feed: this one's share caps it, lifting it
    // restores the learned rate rather than the configured 1,000.
    next.set_ceiling(Some(90.0));
    assert_eq!(next.current_rate(), Some(90.0));
    next.set_ceiling(None);
    assert_eq!(next.current_rate(), Some(learned.rate));
}

/// The headline: 50,000 batches, 0.1 % poison, through 10 % 429, 5 % 503 and 2 %
/// connections dropped after the server applied the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_thousand_batches_through_a_fault_storm_lose_nothing() {
    const ROWS: u64 = 50_000;
    let (fake, deliverer) = setup(8, 30).await;
    fake.set_poison_rule(true);
    fake.set_fault_mix(Some(FaultMix {
        seed: 0x5eed,
        rate_limited: 0.10,
        retry_after_secs: None,
        unavailable: 0.05,
        dropped_after_apply: 0.02,
    }));
    let poison: Vec<u64> = (0..ROWS).filter(|r| r % 1000 == 7).collect();
    let all = batches(0..ROWS, &poison);
    let good: HashSet<String> = all
        .iter()
        .filter(|b| !poison.contains(&b.row))
        .map(|b| b.source_request_id.clone())
        .collect();
    let bad: HashSet<String> = all
        .iter()
        .filter(|b| poison.contains(&b.row))
        .map(|b| b.source_request_id.clone())
        .collect();
    assert_eq!((good.len(), bad.len()), (49_950, 50));

    // Submit with backpressure (at most 8 in flight), as the run engine would.
    let mut packer = RequestPacker::default();
    let mut handles = Vec::new();
    let mut requests: Vec<PackedRequest> = all.iter().filter_map(|b| packer.push(b)).collect();
    requests.extend(packer.take());
    assert_eq!(requests.len(), 500);
    for request in requests {
        handles.push(deliverer.submit(request).await.unwrap());
    }
    // The checkpoint barrier: once drained, every delivery has finished.
    deliverer.drain().await;
    let at_drain = (deliverer.figures(), fake.requests().len());

    let mut acknowledged = Vec::new();
    let mut dead = Vec::new();
    for handle in handles {
        let outcome = handle.await.unwrap().unwrap();
        acknowledged.extend(outcome.acknowledged);
        dead.extend(outcome.dead_letters);
    }
    // Every good batch acknowledged exactly once, every poison one dead-lettered.
    assert_eq!(acknowledged.len(), good.len());
    assert_eq!(acknowledged.into_iter().collect::<HashSet<_>>(), good);
    assert_eq!(dead.len(), bad.len());
    assert!(dead.iter().all(|d| d.status == 400));
    assert_eq!(
        dead.into_iter()
            .map(|d| d.source_request_id)
            .collect::<HashSet<_>>(),
        bad
    );

    // The server applied every good batch, no poison one; duplicates only come
    // from bodies it applied and then dropped the connection on.
    assert_eq!(fake.applied_ids(), good);
    let records = fake.requests();
    let dropped: Vec<_> = records.iter().filter(|r| r.dropped).collect();
    let dropped_batches: usize = dropped.iter().map(|r| r.batch_count).sum();
    assert!(!dropped.is_empty());
    assert!(fake.duplicates() > 0);
    assert!(fake.duplicates() <= dropped_batches);
    assert_eq!(fake.batches().len(), good.len() + fake.duplicates());

    let figures = deliverer.figures();
    // Nothing was still being sent when drain returned.
    assert_eq!(at_drain, (figures, records.len()));
    // A dropped request is not acknowledged to the client; its resend is.
    assert_eq!(figures.batches_acknowledged as usize, good.len());
    assert_eq!(figures.requests as usize, records.len());
    assert!(figures.responses_429 > 0 && figures.responses_5xx > 0);
    assert_eq!(figures.connection_failures as usize, dropped.len());
    assert_eq!(figures.dead_letters, 50);
}
