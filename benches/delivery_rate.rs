//! Delivery rate against a rate-limited fake Events API (not a timed test).
//!
//! Pushes about 15 s worth of small batches through [`Deliverer`] against the
//! test suite's fake, limited to 270 batches/s the way mParticle limits an
//! account (§3.3), and prints the batches per second achieved, the utilisation
//! of the allowed rate and the share of requests answered 429. The goal is
//! ≥ 95 % utilisation with ≤ 2 % of requests answered 429.
//!
//! A second scenario configures the client above the server's limit (400/s) to
//! show what the 429 gate and AIMD make of a wrong setting.
//!
//! Run with `cargo bench --bench delivery_rate`.

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
use wsync::sink::rate_limit::DEFAULT_RATE_PER_SEC;
use wsync::sink::{Deliverer, DeliveryConfig, EventsApiClient, RequestPacker};

const KEY: &str = "bench-key";
const SECRET: &str = "bench-secret";
/// The server's limit, batches per second.
const SERVER_RATE: f64 = 270.0;
/// How long the run should take at the server's rate.
const SECONDS: f64 = 15.0;

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

async fn scenario(name: &str, client_rate: f64) -> Result<(), Box<dyn Error>> {
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

    let total = (SERVER_RATE * SECONDS) as u64;
    let mut packer = RequestPacker::default();
    let mut requests: Vec<_> = (0..total).filter_map(|r| packer.push(&batch(r))).collect();
    requests.extend(packer.take());

    let start = Instant::now();
    let mut handles = Vec::new();
    for request in requests {
        handles.push(deliverer.submit(request).await?);
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
    println!(
        "  waited on rate limit  {:.1} s (summed over senders); final adaptive rate {:.0}/s",
        figures.rate_limit_wait.as_secs_f64(),
        deliverer.current_rate().unwrap_or(f64::NAN)
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        scenario(
            "client at the default 270 batches/s, fake limited to 270 batches/s",
            DEFAULT_RATE_PER_SEC,
        )
        .await?;
        scenario(
            "client misconfigured at 400 batches/s, fake limited to 270 batches/s",
            400.0,
        )
        .await
    })
}
