//! Delivery rate against a rate-limited fake Events API (not a timed test).
//!
//! Pushes 40 s worth (at the server's rate) of small batches through
//! [`Deliverer`] against the test suite's fake, limited to 270 batches/s the way
//! mParticle limits an account (§3.3), and prints the batches per second
//! achieved, the utilisation of the allowed rate, the share of requests answered
//! 429 and the rate the limiter learned. The goal (issue 14) is ≥ 95 %
//! utilisation with ≤ 2 % of requests answered 429, whatever the configured
//! rate.
//!
//! Scenarios: the feed configured at 270 (the account's limit), at 400 and at
//! 1,000 (users who do not know their limit), and at 1,000 seeded with what the
//! 1,000 run learned (the next run of the same feed).
//!
//! Run with `cargo bench --bench delivery_rate`; `-- SECONDS` changes the
//! length (`-- 60`).

// Tests and benchmarks fail loudly and print what they measure; the library's
// lint discipline (Cargo.toml [lints]) is for the product's code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::pedantic,
    missing_docs
)]

#[allow(dead_code)]
#[path = "../tests/it/support/fake_mparticle.rs"]
mod fake_mparticle;

use std::error::Error;
use std::time::{Duration, Instant};

use fake_mparticle::FakeMparticle;
use wsync::config::model::{Environment, Feed};
use wsync::mapping::batch::source_request_id;
use wsync::mapping::EncodedBatch;
use wsync::redact::Secret;
use wsync::sink::rate_limit::{LearnedLimit, DEFAULT_RATE_PER_SEC};
use wsync::sink::{Deliverer, DeliveryConfig, EventsApiClient, RequestPacker};

const KEY: &str = "bench-key";
const SECRET: &str = "bench-secret";
/// The server's limit, batches per second.
const SERVER_RATE: f64 = 270.0;
/// How long each scenario should take at the server's rate, by default.
const SECONDS: f64 = 40.0;

fn batch(row: u64) -> EncodedBatch {
    let content = format!(
        r#"{{"environment":"production","user_identities":{{"customer_id":"c{row}"}},"user_attributes":{{"tier":"gold","n":{row}}}}}"#
    );
    let id = source_request_id("bench", content.as_bytes());
    let json = format!(r#"{{"source_request_id":"{id}",{}"#, &content[1..]);
    EncodedBatch {
        row,
        part: 0,
        source_request_id: id,
        json: json.into_bytes(),
        historical: false,
    }
}

async fn scenario(
    name: &str,
    client_rate: f64,
    seed: Option<LearnedLimit>,
    seconds: f64,
) -> Result<Option<LearnedLimit>, Box<dyn Error>> {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    fake.set_rate_limit(Some(SERVER_RATE));
    let feed = Feed {
        name: "bench".to_owned(),
        base_url: fake.base_url(),
        api_key: Secret::new(KEY),
        api_secret: Secret::new(SECRET),
        environment: Environment::Production,
        request_timeout: Duration::from_secs(10),
        delivery: wsync::config::model::DeliverySettings::default(),
    };
    let deliverer = Deliverer::new(
        EventsApiClient::new(&feed)?,
        DeliveryConfig {
            rate_per_sec: Some(client_rate),
            ..DeliveryConfig::default()
        },
    );

    if let Some(learned) = seed {
        deliverer.seed_learned_limit(learned);
    }

    let total = (SERVER_RATE * seconds) as u64;
    let mut packer = RequestPacker::default();
    let mut requests: Vec<_> = (0..total).filter_map(|r| packer.push(&batch(r))).collect();
    requests.extend(packer.take());

    let start = Instant::now();
    let mut handles = Vec::new();
    // (seconds, batches applied, rate paced at) about every 5 s.
    let mut samples = vec![(0.0, 0.0, deliverer.current_rate().unwrap_or(f64::NAN))];
    for request in requests {
        handles.push(deliverer.submit(request).await?);
        let now = start.elapsed().as_secs_f64();
        if now >= samples.len() as f64 * 5.0 {
            let rate = deliverer.current_rate().unwrap_or(f64::NAN);
            samples.push((now, fake.distinct_applied() as f64, rate));
        }
    }
    deliverer.drain().await;
    let elapsed = start.elapsed().as_secs_f64();
    for handle in handles {
        handle.await??;
    }

    let figures = deliverer.figures();
    let applied = fake.distinct_applied() as f64;
    let achieved = applied / elapsed;
    let share_429 = figures.responses_429 as f64 / figures.requests as f64;
    println!("{name}");
    println!("  batches delivered     {applied:.0} (distinct ids applied by the fake)");
    println!("  total time            {elapsed:.2} s");
    println!("  achieved              {achieved:.1} batches/s");
    println!(
        "  utilisation           {:.1} % of {SERVER_RATE} batches/s",
        100.0 * achieved / SERVER_RATE
    );
    println!(
        "  requests answered 429 {:.2} % ({} of {})",
        100.0 * share_429,
        figures.responses_429,
        figures.requests
    );
    // The second half shows the converged rate without the start, where the
    // fake's full bucket lets its first second of batches through at once.
    let half = samples
        .iter()
        .find(|(t, _, _)| *t >= elapsed / 2.0)
        .copied()
        .unwrap_or((0.0, 0.0, 0.0));
    let steady = (applied - half.1) / (elapsed - half.0);
    println!(
        "  second half           {steady:.1} batches/s from {:.0} s ({:.1} % of the limit)",
        half.0,
        100.0 * steady / SERVER_RATE
    );
    let timeline: Vec<String> = samples
        .iter()
        .map(|(t, _, r)| format!("{t:.0}s {r:.0}"))
        .collect();
    println!("  rate paced at         {}", timeline.join(", "));
    let learned = deliverer.learned_limit();
    println!(
        "  waited on rate limit  {:.1} s (summed over senders); final rate {:.1}/s; learned {}",
        figures.rate_limit_wait.as_secs_f64(),
        deliverer.current_rate().unwrap_or(f64::NAN),
        learned.map_or("nothing".to_owned(), |l| format!("{:.1}/s", l.rate))
    );
    Ok(learned)
}

fn main() -> Result<(), Box<dyn Error>> {
    let seconds = match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(arg) => arg.parse()?,
        None => SECONDS,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let limit = "fake limited to 270 batches/s";
        scenario(
            &format!("feed at 270 batches/s (the limit), {limit}"),
            DEFAULT_RATE_PER_SEC,
            None,
            seconds,
        )
        .await?;
        scenario(
            &format!("feed at 400 batches/s, {limit}"),
            400.0,
            None,
            seconds,
        )
        .await?;
        let learned = scenario(
            &format!("feed at 1,000 batches/s, {limit}"),
            1000.0,
            None,
            seconds,
        )
        .await?;
        scenario(
            &format!("feed at 1,000 batches/s seeded with the 1,000 run's learned rate, {limit}"),
            1000.0,
            learned,
            seconds,
        )
        .await?;
        Ok(())
    })
}
