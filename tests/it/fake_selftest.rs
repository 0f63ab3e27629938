//! Self-test of the fake mParticle Events API: drives it with reqwest and checks
//! that it accepts what mParticle accepts and rejects what mParticle rejects, so
//! the daemon's tests can trust its answers.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::fake_mparticle::{Endpoint, FakeMparticle, Fault, MAX_REQUEST_BYTES};

const KEY: &str = "us1-test-key";
const SECRET: &str = "test-secret";

async fn fake() -> FakeMparticle {
    FakeMparticle::start(KEY, SECRET).await
}

/// A small valid profile batch for customer `n`.
fn batch(n: usize) -> Value {
    json!({
        "environment": "development",
        "source_request_id": format!("req-{n}"),
        "user_identities": {"customer_id": format!("cust-{n}"), "email": format!("u{n}@example.com")},
        "user_attributes": {"$firstname": "Ann", "ltv": 342.1, "vip": true, "favs": ["a", "b"], "gone": null},
    })
}

/// POSTs raw bytes to `/v2/bulkevents` with the right credentials.
async fn post_raw(fake: &FakeMparticle, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v2/bulkevents", fake.base_url()))
        .basic_auth(KEY, Some(SECRET))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request to the fake")
}

async fn post_bulk(fake: &FakeMparticle, batches: &[Value]) -> reqwest::Response {
    post_raw(fake, serde_json::to_vec(batches).unwrap()).await
}

/// Asserts a 400 whose mParticle-shaped message contains every `needle`.
async fn assert_rejected(response: reqwest::Response, status: StatusCode, needles: &[&str]) {
    assert_eq!(response.status(), status);
    let bytes = response.bytes().await.expect("error body");
    let body: Value = serde_json::from_slice(&bytes).expect("error body is JSON");
    let message = body["errors"][0]["message"]
        .as_str()
        .expect("errors[0].message");
    assert!(
        body["errors"][0]["code"].is_string(),
        "errors[0].code in {body}"
    );
    for needle in needles {
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

/// Sends `batches` and expects a 400 naming batch `index` and the rule.
async fn assert_batch_rejected(batches: &[Value], index: usize, rule: &str) {
    let fake = fake().await;
    let response = post_bulk(&fake, batches).await;
    assert_rejected(
        response,
        StatusCode::BAD_REQUEST,
        &[&format!("batch[{index}]"), rule],
    )
    .await;
    assert!(
        fake.batches().is_empty(),
        "a rejected request records no batch"
    );
}

fn with_attributes(mut b: Value, attrs: Value) -> Value {
    b["user_attributes"] = attrs;
    b
}

#[tokio::test]
async fn valid_bulk_request_is_accepted_and_recorded_exactly() {
    let fake = fake().await;
    let batches: Vec<Value> = (0..3).map(batch).collect();
    let response = post_bulk(&fake, &batches).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(
        response.bytes().await.unwrap().is_empty(),
        "202 has an empty body"
    );
    assert_eq!(fake.batches(), batches);
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].endpoint, Endpoint::Bulk);
    assert_eq!(requests[0].status, 202);
    assert_eq!(requests[0].batch_count, 3);
    assert_eq!(
        requests[0].body_bytes,
        serde_json::to_vec(&batches).unwrap().len()
    );
    assert!(!requests[0].gzip);
    assert_eq!(fake.duplicates(), 0);
}

#[tokio::test]
async fn single_event_route_takes_one_batch() {
    let fake = fake().await;
    let response = reqwest::Client::new()
        .post(format!("{}/v2/events", fake.base_url()))
        .basic_auth(KEY, Some(SECRET))
        .body(serde_json::to_vec(&batch(1)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(fake.batches(), vec![batch(1)]);
    assert_eq!(fake.requests()[0].endpoint, Endpoint::Single);
}

#[tokio::test]
async fn missing_auth_is_401() {
    let fake = fake().await;
    let response = reqwest::Client::new()
        .post(format!("{}/v2/bulkevents", fake.base_url()))
        .body(serde_json::to_vec(&[batch(1)]).unwrap())
        .send()
        .await
        .unwrap();
    assert_rejected(response, StatusCode::UNAUTHORIZED, &[]).await;
    assert!(fake.batches().is_empty());
    assert_eq!(fake.requests()[0].status, 401);
}

#[tokio::test]
async fn wrong_secret_or_key_is_403() {
    let fake = fake().await;
    for (key, secret) in [(KEY, "nope"), ("other-key", SECRET)] {
        let response = reqwest::Client::new()
            .post(format!("{}/v2/bulkevents", fake.base_url()))
            .basic_auth(key, Some(secret))
            .body(serde_json::to_vec(&[batch(1)]).unwrap())
            .send()
            .await
            .unwrap();
        assert_rejected(response, StatusCode::FORBIDDEN, &[]).await;
    }
    assert!(fake.batches().is_empty());
}

#[tokio::test]
async fn more_than_100_batches_is_400() {
    let fake = fake().await;
    let hundred: Vec<Value> = (0..100).map(batch).collect();
    assert_eq!(
        post_bulk(&fake, &hundred).await.status(),
        StatusCode::ACCEPTED
    );
    let too_many: Vec<Value> = (0..101).map(batch).collect();
    assert_rejected(
        post_bulk(&fake, &too_many).await,
        StatusCode::BAD_REQUEST,
        &["101 batches"],
    )
    .await;
    assert_eq!(fake.batches().len(), 100);
    assert_eq!(fake.requests()[1].batch_count, 101);
}

/// A valid body padded with JSON whitespace to exactly `len` bytes.
fn padded_body(len: usize) -> Vec<u8> {
    // Three fat but legal batches, so the request nears 256 KiB without any batch
    // reaching 128 KiB.
    let batches: Vec<Value> = (0..3)
        .map(|n| {
            let attrs: serde_json::Map<String, Value> = (0..20)
                .map(|i| (format!("a{i}"), json!("x".repeat(4000))))
                .collect();
            with_attributes(batch(n), Value::Object(attrs))
        })
        .collect();
    let mut body = serde_json::to_vec(&batches).unwrap();
    assert!(
        body.len() < len,
        "base body {} must fit in {len}",
        body.len()
    );
    body.resize(len, b' ');
    body
}

#[tokio::test]
async fn body_of_256_kib_or_more_is_413_and_just_under_is_accepted() {
    let fake = fake().await;
    let response = post_raw(&fake, padded_body(MAX_REQUEST_BYTES - 1)).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = post_raw(&fake, padded_body(MAX_REQUEST_BYTES)).await;
    assert_rejected(response, StatusCode::PAYLOAD_TOO_LARGE, &["262144"]).await;
    assert_eq!(fake.batches().len(), 3);
    assert_eq!(fake.requests()[1].body_bytes, MAX_REQUEST_BYTES);
}

#[tokio::test]
async fn gzip_body_is_accepted_and_limit_applies_uncompressed() {
    let fake = fake().await;
    let gzip = |bytes: &[u8]| {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    };
    let send = |body: Vec<u8>| {
        reqwest::Client::new()
            .post(format!("{}/v2/bulkevents", fake.base_url()))
            .basic_auth(KEY, Some(SECRET))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
    };
    let batches: Vec<Value> = (0..2).map(batch).collect();
    let compressed = gzip(&serde_json::to_vec(&batches).unwrap());
    let response = send(compressed.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(fake.batches(), batches);
    let first = &fake.requests()[0];
    assert!(first.gzip);
    assert_eq!(first.body_bytes, compressed.len());

    // Whitespace compresses to almost nothing, but the uncompressed body is 256 KiB.
    let response = send(gzip(&padded_body(MAX_REQUEST_BYTES))).await.unwrap();
    assert_rejected(response, StatusCode::PAYLOAD_TOO_LARGE, &[]).await;

    let response = send(b"not gzip at all".to_vec()).await.unwrap();
    assert_rejected(response, StatusCode::BAD_REQUEST, &["gzip"]).await;
}

#[tokio::test]
async fn malformed_json_is_400() {
    let fake = fake().await;
    // NaN has no JSON spelling, so a client that tries to send one sends malformed JSON.
    let response = post_raw(
        &fake,
        br#"[{"environment":"production","mpid":NaN}]"#.to_vec(),
    )
    .await;
    assert_rejected(response, StatusCode::BAD_REQUEST, &["malformed JSON"]).await;
    let response = post_raw(&fake, b"[{\"environment\":".to_vec()).await;
    assert_rejected(response, StatusCode::BAD_REQUEST, &["malformed JSON"]).await;
    // A single object is not a bulk body.
    let response = post_raw(&fake, serde_json::to_vec(&batch(0)).unwrap()).await;
    assert_rejected(response, StatusCode::BAD_REQUEST, &["array"]).await;
}

#[tokio::test]
async fn more_than_100_user_attributes_is_400_naming_the_batch() {
    let attrs: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("attr_{i}"), json!(i))).collect();
    let batches = vec![batch(0), with_attributes(batch(1), Value::Object(attrs))];
    assert_batch_rejected(&batches, 1, "101 entries").await;
}

#[tokio::test]
async fn exactly_100_user_attributes_is_accepted() {
    let fake = fake().await;
    let attrs: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("attr_{i}"), json!(i))).collect();
    let response = post_bulk(&fake, &[with_attributes(batch(0), Value::Object(attrs))]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn attribute_value_of_4097_chars_is_400() {
    let ok = with_attributes(batch(0), json!({"bio": "é".repeat(4096)}));
    let fake = fake().await;
    assert_eq!(
        post_bulk(&fake, &[ok]).await.status(),
        StatusCode::ACCEPTED,
        "4096 multi-byte chars is fine"
    );
    let bad = with_attributes(batch(0), json!({"bio": "x".repeat(4097)}));
    assert_batch_rejected(&[bad], 0, "4097 chars").await;
}

#[tokio::test]
async fn list_of_1001_entries_is_400() {
    let bad = with_attributes(batch(0), json!({"tags": vec!["t"; 1001]}));
    assert_batch_rejected(&[bad], 0, "1001 entries").await;
}

#[tokio::test]
async fn list_entry_of_513_chars_is_400() {
    let bad = with_attributes(batch(0), json!({"tags": ["ok", "x".repeat(513)]}));
    assert_batch_rejected(&[bad], 0, "513 chars").await;
}

#[tokio::test]
async fn attribute_name_of_257_chars_is_400() {
    let mut attrs = serde_json::Map::new();
    attrs.insert("n".repeat(257), json!("v"));
    let bad = with_attributes(batch(0), Value::Object(attrs));
    assert_batch_rejected(&[bad], 0, "257 chars").await;
}

#[tokio::test]
async fn unknown_identity_key_is_400() {
    let mut bad = batch(0);
    bad["user_identities"]["customerid"] = json!("123");
    assert_batch_rejected(&[batch(1), batch(2), bad], 2, "customerid").await;
}

#[tokio::test]
async fn patched_identity_keys_are_accepted() {
    let fake = fake().await;
    let b = json!({
        "environment": "production",
        "user_identities": {"other_id_7": "x7", "mobile_number": "+15551234567", "phone_number_3": "+1555"},
    });
    assert_eq!(
        post_bulk(&fake, std::slice::from_ref(&b)).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(fake.batches(), vec![b]);
}

#[tokio::test]
async fn batch_over_128_kib_is_400() {
    // 33 attributes of 4096 chars: ~135 KB, over 128 KiB, while the request stays under 256 KiB.
    let attrs: serde_json::Map<String, Value> = (0..33)
        .map(|i| (format!("a{i}"), json!("x".repeat(4096))))
        .collect();
    let bad = with_attributes(batch(0), Value::Object(attrs));
    assert!(serde_json::to_vec(&bad).unwrap().len() < MAX_REQUEST_BYTES);
    assert_batch_rejected(&[bad], 0, "131072").await;
}

#[tokio::test]
async fn schema_rules_are_enforced() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"user_identities": {"email": "a@b.c"}}),
            "environment is required",
        ),
        (
            json!({"environment": "staging", "mpid": 1}),
            "environment must be",
        ),
        (
            json!({"environment": "production", "mpid": 1, "schema_version": 2}),
            "schema_version",
        ),
        (json!({"environment": "production", "mpid": "123"}), "mpid"),
        (json!({"environment": "production", "mpid": 1.5}), "mpid"),
        (
            json!({"environment": "production", "mpid": 1, "source_request_id": 7}),
            "source_request_id",
        ),
        (
            json!({"environment": "production", "user_identities": {"email": 5}}),
            "user_identities.email",
        ),
        (
            json!({"environment": "production", "device_info": {"imei": "1"}}),
            "imei",
        ),
        (
            json!({"environment": "production", "device_info": {"ios_idfv": "not-a-uuid"}}),
            "ios_idfv",
        ),
        (
            json!({"environment": "production", "mpid": 1, "deleted_user_attributes": [1]}),
            "deleted_user_attributes",
        ),
        (
            json!({"environment": "production", "mpid": 1, "user_attributes": {"o": {"k": 1}}}),
            "not an object",
        ),
        (
            json!({"environment": "production", "mpid": 1, "user_attributes": {"l": [[1]]}}),
            "scalar",
        ),
        (
            json!({"environment": "production", "user_attributes": {"a": 1}}),
            "no identity",
        ),
        (
            json!({"environment": "production", "user_identities": {"email": null}}),
            "no identity",
        ),
    ];
    for (bad, rule) in cases {
        assert_batch_rejected(&[bad], 0, rule).await;
    }
}

#[tokio::test]
async fn every_kind_of_identity_is_enough() {
    let fake = fake().await;
    let batches = vec![
        json!({"environment": "production", "mpid": -7_346_244_611_012_968_789_i64}),
        json!({"environment": "production", "mp_deviceid": "2f8b0b4e-0c0f-4d6e-9a59-0e3f0d6c1a2b"}),
        json!({"environment": "production", "device_info": {"push_token": "tok", "platform": "web"}}),
        json!({"environment": "development", "user_identities": {"email": "a@b.c"}, "deleted_user_attributes": ["old"]}),
    ];
    assert_eq!(
        post_bulk(&fake, &batches).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(fake.batches().len(), 4);
}

#[tokio::test]
async fn forced_status_queue_is_consumed_in_order() {
    let fake = fake().await;
    fake.push_fault(Fault::Status {
        status: 429,
        headers: vec![("Retry-After".into(), "2".into())],
    });
    fake.respond_with_status_once(503);
    assert_eq!(fake.pending_faults(), 2);

    let response = post_bulk(&fake, &[batch(0)]).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(
        post_bulk(&fake, &[batch(0)]).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        post_bulk(&fake, &[batch(0)]).await.status(),
        StatusCode::ACCEPTED
    );

    assert_eq!(fake.pending_faults(), 0);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 503, 202]);
    assert_eq!(fake.batches().len(), 1, "faulted requests record no batch");
}

#[tokio::test]
async fn duplicate_source_request_ids_are_counted_not_dropped() {
    let fake = fake().await;
    assert_eq!(
        post_bulk(&fake, &[batch(0), batch(1)]).await.status(),
        StatusCode::ACCEPTED
    );
    // A retry of batch 1 plus a repeat inside one request.
    assert_eq!(
        post_bulk(&fake, &[batch(1), batch(2), batch(2)])
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(fake.duplicates(), 2);
    assert_eq!(fake.batches().len(), 5);
}

#[tokio::test]
async fn dropping_the_fake_stops_the_server() {
    let fake = fake().await;
    let url = format!("{}/v2/bulkevents", fake.base_url());
    drop(fake);
    // The server task needs a moment to see the shutdown signal and close its
    // listener, so poll (with a generous deadline for a loaded CI machine).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let result = reqwest::Client::new()
            .post(&url)
            .basic_auth(KEY, Some(SECRET))
            .body("[]")
            .send()
            .await;
        if result.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fake still answers after being dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
