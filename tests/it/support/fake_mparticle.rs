//! An in-process fake of the mParticle Events API (`/v2/bulkevents`,
//! `/v2/bulkevents/historical`, `/v2/events`).
//!
//! Events in batches are checked by the batch schema's rules (event types,
//! required fields, field types and enums: see [`validate_event`]); the
//! historical route also applies §3.1's rules (every batch has events, every
//! event a timestamp at least 72 hours old). mParticle drops such batches
//! silently; the fake answers 400 so a client that sends them fails its test.
//!
//! It exists so integration tests catch what the real service would reject: it
//! checks auth, request and batch sizes, batch counts and the batch JSON rules of
//! `shared/spec/mparticle.md` §3–§4 and the inbound batch JSON Schema (with the
//! §5.2 patch to its stale `user_identities` list). The rules are encoded here by
//! hand; nothing reads the reference files at run time.
//!
//! Every accepted batch and every request's outcome is recorded for assertions.
//! Faults (forced statuses, connections dropped after the body was applied, slow
//! replies) are queued with [`FakeMparticle::push_fault`] and consumed one per
//! request; a seeded random mix ([`FaultMix`]) can add more. Optional rules model
//! the service's other refusals: a poison batch answered with 400
//! ([`FakeMparticle::set_poison_rule`]), a smaller body limit answered with 413
//! ([`FakeMparticle::set_max_body_bytes`]) and a batches-per-second limit
//! answered with 429 ([`FakeMparticle::set_rate_limit`]).
//!
//! A profile store models what mParticle keeps: every newly applied batch
//! resolves its profile by `mpid`, else by any user identity or device id, and
//! creates one when nothing matches; the latest attribute value wins and
//! `deleted_user_attributes` removes. Tests seed profiles with
//! [`FakeMparticle::seed_profile`] and read them back. IDSync search
//! (`POST /v1/search`, §2) answers from the same store: platform key and secret
//! checked (HTTP Basic), IDSync identity names only, 200 with the `mpid` or 404
//! with mParticle's error body when no profile matches; it never creates one.
//!
//! The fake serves each connection itself (hyper, not `axum::serve`) so it can
//! close one without answering, the way a proxy dies after the service applied
//! a request.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

/// A request body must be strictly smaller than this (256 KiB), §3.3 and §4.
pub const MAX_REQUEST_BYTES: usize = 262_144;
/// A batch, serialized, must be at most this (128 KiB), §3.3 and §4.
pub const MAX_BATCH_BYTES: usize = 131_072;
/// A `/bulkevents` request holds at most this many batches, §3.3.
pub const MAX_BATCHES_PER_REQUEST: usize = 100;
/// At most this many user attributes per batch, §4.
pub const MAX_USER_ATTRIBUTES: usize = 100;
/// A user attribute name is at most this many characters, §4.
pub const MAX_ATTRIBUTE_NAME_CHARS: usize = 256;
/// A scalar user attribute value is at most this many characters, §4.
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 4096;
/// A list user attribute holds at most this many entries, §4.
pub const MAX_LIST_ENTRIES: usize = 1000;
/// One entry of a list user attribute is at most this many characters, §4.
pub const MAX_LIST_ENTRY_CHARS: usize = 512;

/// How much body the fake reads at all. Anything past [`MAX_REQUEST_BYTES`] is
/// already a 413; this cap only keeps a runaway test from exhausting memory.
const READ_CAP_BYTES: usize = 16 * 1024 * 1024;

/// Top-level batch keys the schema allows (root `additionalProperties: false`), §3.2 / §5.2.
const TOP_LEVEL_KEYS: &[&str] = &[
    "source_request_id",
    "events",
    "device_info",
    "application_info",
    "user_attributes",
    "deleted_user_attributes",
    "user_identities",
    "environment",
    "api_key",
    "api_keys",
    "ip",
    "integration_attributes",
    "context",
    "partner_identity",
    "source_info",
    "mp_deviceid",
    "attribution_info",
    "timestamp_unixtime_ms",
    "batch_id",
    "mpid",
    "origin_mpid",
    "sdk_version",
    "consent_state",
    "job_id",
];

/// `user_identities` keys: the schema's list plus the §5.2 patch
/// (`other_id_5..10`, `mobile_number`, `phone_number_2`, `phone_number_3`).
const USER_IDENTITY_KEYS: &[&str] = &[
    "other",
    "customer_id",
    "facebook",
    "twitter",
    "google",
    "microsoft",
    "yahoo",
    "email",
    "alias",
    "facebook_custom_audience_id",
    "other_id_2",
    "other_id_3",
    "other_id_4",
    // §5.2 patch: accepted by the docs and the OpenAPI, missing from the stale schema.
    "other_id_5",
    "other_id_6",
    "other_id_7",
    "other_id_8",
    "other_id_9",
    "other_id_10",
    "mobile_number",
    "phone_number_2",
    "phone_number_3",
];

/// The schema type of a `device_info` field (definitions `String`, `Integer`,
/// `Boolean`, `Uuid`, and two inline enums).
#[derive(Clone, Copy)]
enum DeviceField {
    /// Schema `String`: string, number, boolean or null.
    Scalar,
    /// Schema `Integer`: integer or null.
    Integer,
    /// Schema `Boolean`: boolean or null.
    Boolean,
    /// Schema `Uuid`: a hyphenated UUID string, or null.
    Uuid,
    /// An inline `{"type":"string","enum":[..]}`: null is not allowed.
    Enum(&'static [&'static str]),
}

const PLATFORMS: &[&str] = &[
    "iOS",
    "Android",
    "web",
    "tvOS",
    "roku",
    "out_of_band",
    "alexa",
    "smart_tv",
    "fire_tv",
    "xbox",
];
const ATT_STATUSES: &[&str] = &["authorized", "denied", "not_determined", "restricted"];

/// `device_info` keys and their schema types (`DeviceInformation`,
/// `additionalProperties: false`), §3.2 / §5.2.
const DEVICE_INFO_FIELDS: &[(&str, DeviceField)] = &[
    ("brand", DeviceField::Scalar),
    ("product", DeviceField::Scalar),
    ("device", DeviceField::Scalar),
    ("android_uuid", DeviceField::Scalar),
    ("device_manufacturer", DeviceField::Scalar),
    ("platform", DeviceField::Enum(PLATFORMS)),
    ("os_version", DeviceField::Scalar),
    ("device_model", DeviceField::Scalar),
    ("screen_height", DeviceField::Integer),
    ("screen_width", DeviceField::Integer),
    ("screen_dpi", DeviceField::Integer),
    ("device_country", DeviceField::Scalar),
    ("locale_language", DeviceField::Scalar),
    ("locale_country", DeviceField::Scalar),
    ("network_country", DeviceField::Scalar),
    ("network_carrier", DeviceField::Scalar),
    ("network_code", DeviceField::Scalar),
    ("network_mobile_country_code", DeviceField::Scalar),
    ("timezone_offset", DeviceField::Integer),
    ("build_identifier", DeviceField::Scalar),
    ("http_header_user_agent", DeviceField::Scalar),
    ("ios_advertising_id", DeviceField::Uuid),
    ("att_authorization_status", DeviceField::Enum(ATT_STATUSES)),
    ("att_timestamp_unixtime_ms", DeviceField::Integer),
    ("push_token", DeviceField::Scalar),
    ("cpu_architecture", DeviceField::Scalar),
    ("is_tablet", DeviceField::Boolean),
    ("push_notification_sound_enabled", DeviceField::Boolean),
    ("push_notification_vibrate_enabled", DeviceField::Boolean),
    ("radio_access_technology", DeviceField::Scalar),
    ("supports_telephony", DeviceField::Boolean),
    ("has_nfc", DeviceField::Boolean),
    ("bluetooth_enabled", DeviceField::Boolean),
    ("bluetooth_version", DeviceField::Scalar),
    ("ios_idfv", DeviceField::Uuid),
    ("android_advertising_id", DeviceField::Uuid),
    ("build_version_release", DeviceField::Scalar),
    ("limit_ad_tracking", DeviceField::Boolean),
    ("amp_id", DeviceField::Scalar),
    ("is_dst", DeviceField::Boolean),
    ("roku_advertising_id", DeviceField::Uuid),
    ("roku_publisher_id", DeviceField::Uuid),
    ("microsoft_advertising_id", DeviceField::Scalar),
    ("microsoft_publisher_id", DeviceField::Scalar),
    ("fire_advertising_id", DeviceField::Uuid),
];

/// The `device_info` fields that identify a device, and so count as an identity, §3.2 / §1.6.
const DEVICE_IDENTITY_KEYS: &[&str] = &[
    "ios_advertising_id",
    "ios_idfv",
    "android_advertising_id",
    "android_uuid",
    "push_token",
    "amp_id",
    "roku_advertising_id",
    "roku_publisher_id",
    "microsoft_advertising_id",
    "microsoft_publisher_id",
    "fire_advertising_id",
];

/// Which Events API route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v2/bulkevents`: a JSON array of batches.
    Bulk,
    /// `POST /v2/events`: one batch object.
    Single,
    /// `POST /v2/bulkevents/historical`: a JSON array of batches of events
    /// older than 72 hours (§3.1).
    Historical,
}

/// What the fake saw and answered for one request, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The route the request used.
    pub endpoint: Endpoint,
    /// The HTTP status the fake answered with.
    pub status: u16,
    /// Batches in the request body (0 when the body never parsed, or a fault answered first).
    pub batch_count: usize,
    /// Body bytes as received on the wire (compressed size for gzip bodies).
    pub body_bytes: usize,
    /// Whether the request carried `Content-Encoding: gzip`.
    pub gzip: bool,
    /// The error message returned, if the answer was an error.
    pub error: Option<String>,
    /// The connection was closed without an answer (after applying the batches).
    pub dropped: bool,
    /// When the request's body had been read.
    pub received_at: Instant,
}

/// One injected misbehaviour, consumed by the next request (see [`FakeMparticle::push_fault`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status and extra headers without looking at the request
    /// (no auth check, nothing recorded as accepted). Error statuses get an
    /// mParticle-shaped error body; 2xx statuses get an empty body.
    Status {
        /// The HTTP status code to answer with.
        status: u16,
        /// Extra response headers, e.g. `("Retry-After", "2")` for a 429 (§3.4).
        headers: Vec<(String, String)>,
    },
    /// Handle the request normally (the batches are applied when valid), then
    /// close the connection without answering: the client cannot know it landed.
    DropAfterApply,
    /// Sleep this long, then handle the request normally. Past the client's
    /// timeout the client gives up first, and nothing is applied.
    Slow {
        /// How long to sleep before handling.
        delay: Duration,
    },
}

/// A seeded random fault mix, rolled for every request that has no queued fault.
/// Shares are probabilities in `[0, 1]`; they must sum to at most 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultMix {
    /// Seed of the random generator, so a failing run can be replayed.
    pub seed: u64,
    /// Share of requests answered 429 (with no `Retry-After` unless set below).
    pub rate_limited: f64,
    /// `Retry-After` seconds sent with the mix's 429s, if any.
    pub retry_after_secs: Option<u64>,
    /// Share of requests answered 503.
    pub unavailable: f64,
    /// Share of requests applied and then dropped without an answer.
    pub dropped_after_apply: f64,
}

/// A batches-per-second limit like mParticle's account limit (§3.3): a token
/// bucket holding one second of batches. A request that finds too few tokens is
/// answered 429 with `Retry-After` (whole seconds, at least 1); accepted requests
/// carry `X-mp-rate-limit-percentage-used`, the share of the bucket in use.
#[derive(Debug, Clone)]
struct FakeRateLimit {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

/// Everything recorded and queued, behind one lock.
#[derive(Default)]
struct Recorded {
    batches: Vec<Value>,
    requests: Vec<RequestRecord>,
    seen_source_request_ids: HashSet<String>,
    duplicates: usize,
    faults: VecDeque<Fault>,
    mix: Option<(FaultMix, fastrand::Rng)>,
    poison_rule: bool,
    max_body_bytes: Option<usize>,
    rate_limit: Option<FakeRateLimit>,
    profiles: Vec<FakeProfile>,
    /// (Events API identity name, JSON text of the value) → profile index, so
    /// resolving stays constant-time in 50k-batch tests.
    identity_index: HashMap<(String, String), usize>,
    profiles_created: usize,
    idsync_credentials: Option<(String, String)>,
    idsync_faults: VecDeque<u16>,
    searches: Vec<SearchRecord>,
}

/// A profile in the fake's store.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeProfile {
    /// Its MPID.
    pub mpid: i64,
    /// User identities and device ids, by Events API name (`customer_id`,
    /// `ios_advertising_id`, `mp_deviceid`).
    pub identities: Map<String, Value>,
    /// User attributes, latest value per name.
    pub attributes: Map<String, Value>,
    /// Whether a batch created it (seeded profiles are not).
    pub created_by_batch: bool,
    /// Batches applied to it after it existed.
    pub updates: usize,
}

/// One IDSync search and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRecord {
    /// HTTP status answered.
    pub status: u16,
    /// The request's `known_identities`, when the body parsed.
    pub known_identities: Option<Value>,
    /// The `Authorization` header as sent (to check no secret leaks elsewhere).
    pub authorization: Option<String>,
}

/// MPIDs the fake hands out to created profiles start here.
const FIRST_CREATED_MPID: i64 = 8_000_000_000_000_001;

/// IDSync `known_identities` names → the Events API name the store keys by
/// (§2). Written out here independently of wsync's table, so a wrong entry on
/// either side shows up as a failed search.
const IDSYNC_NAMES: &[(&str, &str)] = &[
    ("customerid", "customer_id"),
    ("email", "email"),
    ("facebook", "facebook"),
    ("twitter", "twitter"),
    ("google", "google"),
    ("microsoft", "microsoft"),
    ("yahoo", "yahoo"),
    ("facebookcustomaudienceid", "facebook_custom_audience_id"),
    ("other", "other"),
    ("other_id_2", "other_id_2"),
    ("other_id_3", "other_id_3"),
    ("other_id_4", "other_id_4"),
    ("other_id_5", "other_id_5"),
    ("other_id_6", "other_id_6"),
    ("other_id_7", "other_id_7"),
    ("other_id_8", "other_id_8"),
    ("other_id_9", "other_id_9"),
    ("other_id_10", "other_id_10"),
    ("mobile_number", "mobile_number"),
    ("phone_number_2", "phone_number_2"),
    ("phone_number_3", "phone_number_3"),
    ("android_uuid", "android_uuid"),
    ("ios_idfa", "ios_advertising_id"),
    ("ios_idfv", "ios_idfv"),
    ("android_aaid", "android_advertising_id"),
    ("push_token", "push_token"),
    ("roku_aid", "roku_advertising_id"),
    ("roku_publisher_id", "roku_publisher_id"),
    ("microsoft_aid", "microsoft_advertising_id"),
    ("microsoft_publisher_id", "microsoft_publisher_id"),
    ("fire_aid", "fire_advertising_id"),
    ("device_application_stamp", "mp_deviceid"),
];

/// Closes one connection without an answer (see [`Fault::DropAfterApply`]).
#[derive(Clone)]
struct ConnectionKill(Arc<Notify>);

/// State shared between the test and the server task.
struct Shared {
    api_key: String,
    api_secret: String,
    recorded: Mutex<Recorded>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // A panicking test thread must not hide the recording from other assertions.
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running fake Events API. Shuts down when dropped.
pub struct FakeMparticle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Tells open connections to close when the fake is dropped.
    closing: watch::Sender<bool>,
}

impl FakeMparticle {
    /// Starts the fake on `127.0.0.1:0`, on the calling test's tokio runtime,
    /// accepting HTTP Basic auth with exactly this key and secret.
    pub async fn start(api_key: &str, api_secret: &str) -> FakeMparticle {
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            api_secret: api_secret.to_owned(),
            recorded: Mutex::new(Recorded::default()),
        });
        let app = Router::new()
            .route("/v2/bulkevents", post(bulk_events))
            .route("/v2/bulkevents/historical", post(historical_events))
            .route("/v2/events", post(single_event))
            .route("/v1/search", post(idsync_search))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake mParticle listener");
        let addr = listener.local_addr().expect("fake listener address");
        let (tx, mut rx) = oneshot::channel::<()>();
        let (closing, closed) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = &mut rx => break,
                };
                let kill = ConnectionKill(Arc::new(Notify::new()));
                let service = hyper_util::service::TowerToHyperService::new(
                    app.clone().layer(Extension(kill.clone())),
                );
                let mut closed = closed.clone();
                tokio::spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    // Dropping the connection future closes the socket, answered or not.
                    tokio::select! {
                        _ = connection => {}
                        _ = kill.0.notified() => {}
                        _ = closed.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        FakeMparticle {
            addr,
            shared,
            shutdown: Some(tx),
            closing,
        }
    }

    /// `http://127.0.0.1:PORT`; the client appends `/v2/bulkevents` or `/v2/events`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every accepted batch, in arrival order (duplicates included).
    pub fn batches(&self) -> Vec<Value> {
        self.shared.lock().batches.clone()
    }

    /// Every request's outcome, in arrival order (rejected and faulted ones too).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Accepted batches whose `source_request_id` had already been accepted before.
    /// mParticle dedupes on it (§3.4); the fake counts instead of dropping.
    pub fn duplicates(&self) -> usize {
        self.shared.lock().duplicates
    }

    /// Queues a fault; each request consumes the oldest queued fault, if any, before anything else.
    ///
    /// Panics (in the test, not in the server task) on an invalid status or header.
    pub fn push_fault(&self, fault: Fault) {
        match &fault {
            Fault::DropAfterApply | Fault::Slow { .. } => {}
            Fault::Status { status, headers } => {
                StatusCode::from_u16(*status).expect("forced status is a valid HTTP status");
                for (name, value) in headers {
                    HeaderName::try_from(name.as_str()).expect("fault header name");
                    HeaderValue::try_from(value.as_str()).expect("fault header value");
                }
            }
        }
        self.shared.lock().faults.push_back(fault);
    }

    /// Queues one forced status (no extra headers) for the next request that has no earlier fault queued.
    pub fn respond_with_status_once(&self, status: u16) {
        self.push_fault(Fault::Status {
            status,
            headers: Vec::new(),
        });
    }

    /// Faults queued and not yet consumed.
    pub fn pending_faults(&self) -> usize {
        self.shared.lock().faults.len()
    }

    /// How many distinct `source_request_id`s were applied: what mParticle,
    /// which applies each id once (§3.4), would have stored.
    pub fn distinct_applied(&self) -> usize {
        self.shared.lock().seen_source_request_ids.len()
    }

    /// The distinct `source_request_id`s applied.
    pub fn applied_ids(&self) -> HashSet<String> {
        self.shared.lock().seen_source_request_ids.clone()
    }

    /// Rolls a random fault for every request with no queued fault (`None` stops it).
    ///
    /// Panics (in the test) when the shares are not probabilities summing to at most 1.
    pub fn set_fault_mix(&self, mix: Option<FaultMix>) {
        if let Some(m) = &mix {
            let shares = [m.rate_limited, m.unavailable, m.dropped_after_apply];
            assert!(
                shares.iter().all(|p| (0.0..=1.0).contains(p)) && shares.iter().sum::<f64>() <= 1.0,
                "fault mix shares must be probabilities summing to at most 1"
            );
        }
        self.shared.lock().mix = mix.map(|m| (m, fastrand::Rng::with_seed(m.seed)));
    }

    /// With the rule on, a request holding any batch whose
    /// `user_attributes.poison` is `true` is answered 400, naming the batch.
    pub fn set_poison_rule(&self, on: bool) {
        self.shared.lock().poison_rule = on;
    }

    /// Bodies longer than this (on the wire) are answered 413, like a front
    /// proxy with a smaller limit; `None` keeps only mParticle's 256 KiB rule.
    pub fn set_max_body_bytes(&self, max: Option<usize>) {
        self.shared.lock().max_body_bytes = max;
    }

    /// Limits accepted batches to `batches_per_sec` (a full one-second bucket at
    /// the start); `None` removes the limit.
    pub fn set_rate_limit(&self, batches_per_sec: Option<f64>) {
        self.shared.lock().rate_limit = batches_per_sec.map(|rate| FakeRateLimit {
            rate,
            tokens: rate,
            updated: Instant::now(),
        });
    }

    /// Adds a profile that exists before any batch (not counted as created);
    /// `identities` use Events API names. Returns its MPID.
    pub fn seed_profile(&self, mpid: i64, identities: &[(&str, &str)], attributes: Value) -> i64 {
        let profile = FakeProfile {
            mpid,
            identities: identities
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect(),
            attributes: attributes.as_object().cloned().unwrap_or_default(),
            created_by_batch: false,
            updates: 0,
        };
        let mut recorded = self.shared.lock();
        let ids: Vec<(String, Value)> = profile.identities.clone().into_iter().collect();
        recorded.profiles.push(profile);
        let index = recorded.profiles.len() - 1;
        merge_identities(&mut recorded, index, ids);
        mpid
    }

    /// Every profile, seeded ones first, then in creation order.
    pub fn profiles(&self) -> Vec<FakeProfile> {
        self.shared.lock().profiles.clone()
    }

    /// The profile with this MPID.
    pub fn profile(&self, mpid: i64) -> Option<FakeProfile> {
        self.shared
            .lock()
            .profiles
            .iter()
            .find(|p| p.mpid == mpid)
            .cloned()
    }

    /// Profiles created by batches (none matched).
    pub fn profiles_created(&self) -> usize {
        self.shared.lock().profiles_created
    }

    /// Applied batches that landed on a profile that already existed.
    pub fn profile_updates(&self) -> usize {
        self.shared.lock().profiles.iter().map(|p| p.updates).sum()
    }

    /// Turns IDSync search on, accepting HTTP Basic with this platform key and secret.
    pub fn enable_idsync(&self, key: &str, secret: &str) {
        self.shared.lock().idsync_credentials = Some((key.to_owned(), secret.to_owned()));
    }

    /// Queues a status for the next IDSync search (before auth, like an outage).
    pub fn push_idsync_fault(&self, status: u16) {
        StatusCode::from_u16(status).expect("valid status");
        self.shared.lock().idsync_faults.push_back(status);
    }

    /// Every IDSync search, in arrival order.
    pub fn searches(&self) -> Vec<SearchRecord> {
        self.shared.lock().searches.clone()
    }
}

impl Drop for FakeMparticle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            // The server may already be gone with its runtime; nothing to do then.
            let _ = tx.send(());
        }
        self.closing.send_replace(true);
    }
}

async fn bulk_events(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&shared, Endpoint::Bulk, &headers, body, &kill).await
}

async fn historical_events(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&shared, Endpoint::Historical, &headers, body, &kill).await
}

async fn single_event(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&shared, Endpoint::Single, &headers, body, &kill).await
}

/// A rejection: status, mParticle error code and message.
struct Rejection {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Extra response headers (a 429's `Retry-After`).
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Rejection {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Rejection::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }
}

/// mParticle's error body shape, `{"errors":[{"code":..,"message":..}]}` (§3.4).
fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"errors": [{"code": code, "message": message}]});
    (status, axum::Json(body)).into_response()
}

async fn handle(
    shared: &Shared,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
    kill: &ConnectionKill,
) -> Response {
    // Read the body before anything else so every record knows its size.
    let raw = axum::body::to_bytes(body, READ_CAP_BYTES).await.ok();
    let mut record = RequestRecord {
        endpoint,
        status: 0,
        batch_count: 0,
        body_bytes: raw.as_ref().map_or(READ_CAP_BYTES, |b| b.len()),
        gzip: content_encoding(headers).as_deref() == Some("gzip"),
        error: None,
        dropped: false,
        received_at: Instant::now(),
    };

    // Fault plan first: a real outage or throttle answers before auth or validation.
    let fault = next_fault(shared);
    let mut drop_after_apply = false;
    match fault {
        Some(Fault::DropAfterApply) => drop_after_apply = true,
        Some(Fault::Slow { delay }) => tokio::time::sleep(delay).await,
        Some(Fault::Status { status, headers }) => {
            let response = apply_status(status, &headers, &mut record);
            shared.lock().requests.push(record);
            return response;
        }
        None => {}
    }

    let outcome = match raw {
        Some(raw) => check_request(shared, endpoint, headers, &raw, &mut record.batch_count),
        None => Err(too_large(READ_CAP_BYTES)),
    };

    match settle(shared, record, outcome, drop_after_apply) {
        Some(response) => response,
        None => {
            // Applied, and now the connection dies before any answer.
            kill.0.notify_one();
            std::future::pending().await
        }
    }
}

/// Records the request (and its batches when accepted) and builds the answer;
/// `None` when the connection must be dropped instead. Synchronous so the lock
/// is never held across an await.
fn settle(
    shared: &Shared,
    mut record: RequestRecord,
    outcome: Result<Vec<Value>, Rejection>,
    drop_after_apply: bool,
) -> Option<Response> {
    let mut recorded = shared.lock();
    let outcome = outcome.and_then(|batches| {
        let used = take_rate_tokens(&mut recorded, batches.len())?;
        Ok((batches, used))
    });
    match outcome {
        Ok((batches, percentage_used)) => {
            for batch in batches {
                let mut first_time = true;
                if let Some(Value::String(id)) = batch.get("source_request_id") {
                    if !recorded.seen_source_request_ids.insert(id.clone()) {
                        recorded.duplicates += 1;
                        first_time = false;
                    }
                }
                // mParticle applies a `source_request_id` once (§3.4).
                if first_time {
                    apply_to_profiles(&mut recorded, &batch);
                }
                recorded.batches.push(batch);
            }
            record.status = StatusCode::ACCEPTED.as_u16();
            record.dropped = drop_after_apply;
            recorded.requests.push(record);
            if drop_after_apply {
                return None;
            }
            // §3.4: 202 Accepted; the fake sends an empty body.
            let mut response = StatusCode::ACCEPTED.into_response();
            if let Some(used) = percentage_used {
                response.headers_mut().insert(
                    "x-mp-rate-limit-percentage-used",
                    HeaderValue::from(u16::from(used)),
                );
            }
            Some(response)
        }
        Err(rejection) => {
            record.status = rejection.status.as_u16();
            record.error = Some(rejection.message.clone());
            recorded.requests.push(record);
            let mut response = error_response(rejection.status, rejection.code, &rejection.message);
            for (name, value) in rejection.headers {
                response.headers_mut().insert(name, value);
            }
            Some(response)
        }
    }
}

/// The queued fault, else one rolled from the random mix, if any.
fn next_fault(shared: &Shared) -> Option<Fault> {
    let mut recorded = shared.lock();
    if let Some(fault) = recorded.faults.pop_front() {
        return Some(fault);
    }
    let (mix, rng) = recorded.mix.as_mut()?;
    let roll = rng.f64();
    if roll < mix.rate_limited {
        let headers = mix
            .retry_after_secs
            .map(|s| vec![("Retry-After".to_owned(), s.to_string())])
            .unwrap_or_default();
        Some(Fault::Status {
            status: 429,
            headers,
        })
    } else if roll < mix.rate_limited + mix.unavailable {
        Some(Fault::Status {
            status: 503,
            headers: Vec::new(),
        })
    } else if roll < mix.rate_limited + mix.unavailable + mix.dropped_after_apply {
        Some(Fault::DropAfterApply)
    } else {
        None
    }
}

/// Takes `batches` tokens from the rate limit, if one is set; returns the
/// percentage of the bucket in use, or a 429 when too few tokens are left.
fn take_rate_tokens(recorded: &mut Recorded, batches: usize) -> Result<Option<u8>, Rejection> {
    let Some(limit) = recorded.rate_limit.as_mut() else {
        return Ok(None);
    };
    let now = Instant::now();
    let capacity = limit.rate;
    limit.tokens =
        (limit.tokens + limit.rate * now.duration_since(limit.updated).as_secs_f64()).min(capacity);
    limit.updated = now;
    let wanted = batches as f64;
    if limit.tokens < wanted {
        let wait = ((wanted - limit.tokens) / limit.rate).ceil().max(1.0);
        let mut rejection = Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            format!("rate limit of {capacity} batches per second exceeded"),
        );
        rejection.headers = vec![
            (header::RETRY_AFTER, HeaderValue::from(wait as u64)),
            (
                HeaderName::from_static("x-mp-rate-limit-exceeded"),
                HeaderValue::from_static("account"),
            ),
        ];
        return Err(rejection);
    }
    limit.tokens -= wanted;
    let used = ((capacity - limit.tokens) / capacity * 100.0).round();
    Ok(Some(used.clamp(0.0, 100.0) as u8))
}

/// Answers a forced status with its extra headers.
fn apply_status(status: u16, headers: &[(String, String)], record: &mut RequestRecord) -> Response {
    let status = StatusCode::from_u16(status).expect("forced status is a valid HTTP status");
    record.status = status.as_u16();
    let mut response = if status.is_success() {
        status.into_response()
    } else {
        let message = format!("forced {} by the test's fault plan", status.as_u16());
        record.error = Some(message.clone());
        error_response(status, fault_code(status), &message)
    };
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// Error codes for forced statuses (mParticle publishes only BAD_REQUEST; the rest are ours).
fn fault_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        413 => "PAYLOAD_TOO_LARGE",
        429 => "TOO_MANY_REQUESTS",
        503 => "SERVICE_UNAVAILABLE",
        _ => "ERROR",
    }
}

fn content_encoding(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
}

fn too_large(len: usize) -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!(
            "request body is {len} bytes; it must be under {MAX_REQUEST_BYTES} bytes (spec §3.3)"
        ),
    )
}

/// Auth, size, encoding, JSON and per-batch checks, in the order a front end would apply them.
/// Returns the batches to record; sets `batch_count` as soon as the body parses.
fn check_request(
    shared: &Shared,
    endpoint: Endpoint,
    headers: &HeaderMap,
    raw: &[u8],
    batch_count: &mut usize,
) -> Result<Vec<Value>, Rejection> {
    check_auth(shared, headers)?;

    // A front proxy with a smaller limit, when the test sets one.
    let (proxy_limit, poison_rule) = {
        let recorded = shared.lock();
        (recorded.max_body_bytes, recorded.poison_rule)
    };
    if let Some(max) = proxy_limit {
        if raw.len() > max {
            return Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!(
                    "request body is {} bytes; the proxy takes at most {max}",
                    raw.len()
                ),
            ));
        }
    }

    // §3.3: the total request body must be < 256 KiB, on the wire...
    if raw.len() >= MAX_REQUEST_BYTES {
        return Err(too_large(raw.len()));
    }
    let decoded;
    let body: &[u8] = match content_encoding(headers).as_deref() {
        None | Some("identity") => raw,
        Some("gzip") => {
            decoded = gunzip_capped(raw)?;
            // ...and, our choice since the spec says nothing about compression, also
            // once decompressed: the limit is about the payload mParticle processes,
            // and a client must not be able to dodge it by compressing.
            if decoded.len() >= MAX_REQUEST_BYTES {
                return Err(too_large(decoded.len()));
            }
            &decoded
        }
        Some(other) => {
            // Only gzip is promised by the brief; anything else is refused loudly.
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                format!("unsupported Content-Encoding {other:?}; only gzip is accepted"),
            ));
        }
    };

    // §3.4: malformed JSON is a 400.
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request(format!("malformed JSON: {e} (spec §3.4)")))?;

    let batches = match (endpoint, parsed) {
        // §3.1: /bulkevents takes a JSON array of batches. An empty array is
        // accepted (202, nothing recorded): the spec names no minimum.
        (Endpoint::Bulk | Endpoint::Historical, Value::Array(batches)) => batches,
        (Endpoint::Bulk | Endpoint::Historical, _) => {
            return Err(Rejection::bad_request(
                "/v2/bulkevents expects a JSON array of batches (spec §3.1)",
            ))
        }
        // §3.1: /events takes one batch object.
        (Endpoint::Single, batch @ Value::Object(_)) => vec![batch],
        (Endpoint::Single, _) => {
            return Err(Rejection::bad_request(
                "/v2/events expects one batch object (spec §3.1)",
            ))
        }
    };
    *batch_count = batches.len();

    // §3.3: at most 100 batches per bulk request.
    if batches.len() > MAX_BATCHES_PER_REQUEST {
        return Err(Rejection::bad_request(format!(
            "request holds {} batches; at most {MAX_BATCHES_PER_REQUEST} allowed (spec §3.3)",
            batches.len()
        )));
    }

    // One bad batch rejects the whole request, so the client has to find it (§3.4: bisect on 400).
    for (index, batch) in batches.iter().enumerate() {
        validate_batch(batch)
            .map_err(|rule| Rejection::bad_request(format!("batch[{index}]: {rule}")))?;
        if endpoint == Endpoint::Historical {
            validate_historical(batch)
                .map_err(|rule| Rejection::bad_request(format!("batch[{index}]: {rule}")))?;
        }
        if poison_rule && batch["user_attributes"]["poison"] == Value::Bool(true) {
            let id = batch["source_request_id"].as_str().unwrap_or("(none)");
            return Err(Rejection::bad_request(format!(
                "batch[{index}] (source_request_id {id}): user attribute \"poison\" is not allowed"
            )));
        }
    }
    Ok(batches)
}

/// §3.1: `Authorization: Basic base64(key:secret)`; §3.4: missing → 401, present but invalid → 403.
fn check_auth(shared: &Shared, headers: &HeaderMap) -> Result<(), Rejection> {
    check_basic(headers, &shared.api_key, &shared.api_secret)
}

/// HTTP Basic with exactly `api_key:api_secret`.
fn check_basic(headers: &HeaderMap, api_key: &str, api_secret: &str) -> Result<(), Rejection> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Rejection::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing Authorization header (spec §3.4)",
        ));
    };
    let forbidden = |why: &str| {
        Rejection::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("invalid credentials: {why} (spec §3.4)"),
        )
    };
    let value = value
        .to_str()
        .map_err(|_| forbidden("header is not ASCII"))?;
    let encoded = value
        .strip_prefix("Basic ")
        .ok_or_else(|| forbidden("not HTTP Basic"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| forbidden("bad base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| forbidden("not UTF-8"))?;
    let (key, secret) = decoded
        .split_once(':')
        .ok_or_else(|| forbidden("no key:secret pair"))?;
    if key != api_key || secret != api_secret {
        return Err(forbidden("wrong key or secret"));
    }
    Ok(())
}

/// The identities a batch carries, by Events API name: `user_identities`,
/// identifying `device_info` fields and `mp_deviceid`.
fn batch_identities(batch: &Value) -> Vec<(String, Value)> {
    let mut ids: Vec<(String, Value)> = batch
        .get("user_identities")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    if let Some(device) = batch.get("device_info").and_then(Value::as_object) {
        ids.extend(
            device
                .iter()
                .filter(|(k, v)| DEVICE_IDENTITY_KEYS.contains(&k.as_str()) && !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    if let Some(id) = batch.get("mp_deviceid").filter(|v| !v.is_null()) {
        ids.push(("mp_deviceid".to_owned(), id.clone()));
    }
    ids
}

/// The index of the profile holding any of `ids`.
fn find_profile(recorded: &Recorded, ids: &[(String, Value)]) -> Option<usize> {
    ids.iter().find_map(|(k, v)| {
        recorded
            .identity_index
            .get(&(k.clone(), v.to_string()))
            .copied()
    })
}

/// Give profile `index` these identities (a new value replaces the old one).
fn merge_identities(recorded: &mut Recorded, index: usize, ids: Vec<(String, Value)>) {
    for (k, v) in ids {
        if let Some(old) = recorded.profiles[index]
            .identities
            .insert(k.clone(), v.clone())
        {
            let old_key = (k.clone(), old.to_string());
            if recorded.identity_index.get(&old_key) == Some(&index) {
                recorded.identity_index.remove(&old_key);
            }
        }
        recorded.identity_index.insert((k, v.to_string()), index);
    }
}

/// Apply one accepted batch to the store: resolve by `mpid`, else by any
/// identity; create when nothing matches; merge identities and attributes.
fn apply_to_profiles(recorded: &mut Recorded, batch: &Value) {
    let ids = batch_identities(batch);
    let by_mpid = batch
        .get("mpid")
        .and_then(Value::as_i64)
        .and_then(|m| recorded.profiles.iter().position(|p| p.mpid == m));
    let index = match by_mpid.or_else(|| find_profile(recorded, &ids)) {
        Some(i) => {
            recorded.profiles[i].updates += 1;
            i
        }
        None => {
            let mpid = FIRST_CREATED_MPID + recorded.profiles_created as i64;
            recorded.profiles_created += 1;
            recorded.profiles.push(FakeProfile {
                mpid,
                identities: Map::new(),
                attributes: Map::new(),
                created_by_batch: true,
                updates: 0,
            });
            recorded.profiles.len() - 1
        }
    };
    merge_identities(recorded, index, ids);
    let profile = &mut recorded.profiles[index];
    if let Some(attrs) = batch.get("user_attributes").and_then(Value::as_object) {
        for (k, v) in attrs {
            profile.attributes.insert(k.clone(), v.clone());
        }
    }
    if let Some(deleted) = batch
        .get("deleted_user_attributes")
        .and_then(Value::as_array)
    {
        for name in deleted.iter().filter_map(Value::as_str) {
            profile.attributes.remove(name);
        }
    }
}

async fn idsync_search(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let raw = axum::body::to_bytes(body, READ_CAP_BYTES).await.ok();
    let parsed: Option<Value> = raw.as_ref().and_then(|r| serde_json::from_slice(r).ok());
    let mut record = SearchRecord {
        status: 0,
        known_identities: parsed
            .as_ref()
            .and_then(|v| v.get("known_identities").cloned()),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let answer = search_answer(&shared, &headers, parsed.as_ref());
    let response = match answer {
        Ok(body) => {
            record.status = 200;
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(rejection) => {
            record.status = rejection.status.as_u16();
            error_response(rejection.status, rejection.code, &rejection.message)
        }
    };
    shared.lock().searches.push(record);
    response
}

/// The search's answer: the matched profile, or the rejection to send.
fn search_answer(
    shared: &Shared,
    headers: &HeaderMap,
    body: Option<&Value>,
) -> Result<Value, Rejection> {
    let mut recorded = shared.lock();
    if let Some(status) = recorded.idsync_faults.pop_front() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(Rejection::new(
            status,
            fault_code(status),
            "injected IDSync fault",
        ));
    }
    let Some((key, secret)) = recorded.idsync_credentials.clone() else {
        return Err(Rejection::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "IDSync is not enabled on this fake (call enable_idsync)",
        ));
    };
    check_basic(headers, &key, &secret)?;
    let body = body.ok_or_else(|| Rejection::bad_request("the body is not JSON"))?;
    match body.get("environment").and_then(Value::as_str) {
        Some("development" | "production") => {}
        _ => {
            return Err(Rejection::bad_request(
                "environment must be development or production",
            ))
        }
    }
    let known = body
        .get("known_identities")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| Rejection::bad_request("known_identities must be a non-empty object"))?;
    let mut ids = Vec::new();
    for (name, value) in known {
        let Some((_, events)) = IDSYNC_NAMES.iter().find(|(n, _)| n == name) else {
            return Err(Rejection::bad_request(format!(
                "`{name}` is not an IDSync identity type"
            )));
        };
        if !value.is_string() {
            return Err(Rejection::bad_request(format!(
                "identity `{name}` must be a string"
            )));
        }
        ids.push(((*events).to_owned(), value.clone()));
    }
    match find_profile(&recorded, &ids) {
        Some(i) => {
            let profile = &recorded.profiles[i];
            // IDSync sends MPIDs as strings (they exceed JavaScript's integers).
            Ok(json!({
                "mpid": profile.mpid.to_string(),
                "matched_identities": known,
                "context": null,
                "is_ephemeral": false,
                "is_logged_in": false,
            }))
        }
        None => Err(Rejection::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no user matches the known identities",
        )),
    }
}

/// Decompresses a gzip body, reading at most one byte past the request limit so a
/// small "zip bomb" cannot balloon in memory; the caller turns "over" into 413.
fn gunzip_capped(raw: &[u8]) -> Result<Vec<u8>, Rejection> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Rejection::bad_request(format!("body is not valid gzip: {e}")))?;
    Ok(out)
}

/// Checks one batch against the rules below; the error names the violated rule.
///
/// Public so a test can check a batch the daemon built without going over HTTP.
pub fn validate_batch(batch: &Value) -> Result<(), String> {
    let Value::Object(obj) = batch else {
        return Err("a batch must be a JSON object (spec §3.2)".into());
    };

    // §5.2: the schema's root has `additionalProperties: false`.
    for key in obj.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "unknown top-level key {key:?} (schema root, spec §3.2/§5.2)"
            ));
        }
    }

    // §3.2 / §5.2: `environment` is required, one of development|production.
    match obj.get("environment") {
        Some(Value::String(env)) if env == "development" || env == "production" => {}
        Some(other) => {
            return Err(format!(
                "environment must be \"development\" or \"production\", got {other} (spec §3.2)"
            ))
        }
        None => return Err("environment is required (spec §3.2/§5.2)".into()),
    }

    // §3.4: source_request_id is the dedupe key; we require a string (null = absent).
    match obj.get("source_request_id") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(other) => {
            return Err(format!(
                "source_request_id must be a string, got {other} (spec §3.4)"
            ))
        }
    }

    // §3.2: mpid is schema `Integer` (integer or null), a signed 64-bit id.
    for key in ["mpid", "origin_mpid", "batch_id", "timestamp_unixtime_ms"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.is_i64() => {}
            Some(other) => {
                return Err(format!(
                    "{key} must be an integer literal within i64 (schema Integer, spec §3.2), got {other}"
                ))
            }
        }
    }

    // §3.2 / §5.2: mp_deviceid is schema `Uuid`.
    if let Some(v) = obj.get("mp_deviceid") {
        check_uuid(v).map_err(|e| format!("mp_deviceid {e} (schema Uuid, spec §3.2)"))?;
    }

    let identities = validate_user_identities(obj.get("user_identities"))?;
    let device_ids = validate_device_info(obj.get("device_info"))?;
    validate_user_attributes(obj.get("user_attributes"))?;

    // §1.10 / schema: deleted_user_attributes is an array of strings (or null).
    match obj.get("deleted_user_attributes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(names)) => {
            if let Some(bad) = names.iter().find(|n| !n.is_string()) {
                return Err(format!(
                    "deleted_user_attributes entries must be strings, got {bad} (spec §1.10)"
                ));
            }
        }
        Some(other) => {
            return Err(format!(
                "deleted_user_attributes must be an array, got {other} (spec §1.10)"
            ))
        }
    }

    // Schema: events is an array (or null) of event objects, each checked by
    // its event type's definition.
    match obj.get("events") {
        None | Some(Value::Null) => {}
        Some(Value::Array(events)) => {
            for (i, event) in events.iter().enumerate() {
                validate_event(event).map_err(|e| format!("events[{i}]: {e}"))?;
            }
        }
        Some(_) => return Err("events must be an array (spec §3.2)".into()),
    }

    // Schema BatchContext / DataPlanContext: plan_id (string) is required,
    // plan_version an integer.
    match obj.get("context") {
        None | Some(Value::Null) => {}
        Some(Value::Object(context)) => match context.get("data_plan") {
            None | Some(Value::Null) => {}
            Some(Value::Object(plan)) => {
                if !matches!(plan.get("plan_id"), Some(Value::String(_))) {
                    return Err(
                        "context.data_plan.plan_id is required, a string (schema DataPlanContext)"
                            .into(),
                    );
                }
                if !matches!(plan.get("plan_version"), None | Some(Value::Null))
                    && !plan.get("plan_version").is_some_and(Value::is_i64)
                {
                    return Err("context.data_plan.plan_version must be an integer (schema DataPlanContext)".into());
                }
            }
            Some(other) => return Err(format!("context.data_plan must be an object, got {other}")),
        },
        Some(other) => return Err(format!("context must be an object, got {other}")),
    }

    // §1.6: a row needs at least one identity so mParticle can resolve a profile.
    let has_mpid = matches!(obj.get("mpid"), Some(Value::Number(_)));
    let has_device_id = matches!(obj.get("mp_deviceid"), Some(Value::String(_)));
    if identities == 0 && device_ids == 0 && !has_mpid && !has_device_id {
        return Err(
            "batch carries no identity (no user_identities, mpid, device_info ids or mp_deviceid) (spec §1.6)"
                .into(),
        );
    }

    // §3.3 / §4: a batch is at most 128 KiB. Measured on the compact re-serialization,
    // so the client's whitespace does not count against it.
    let size = serde_json::to_vec(batch)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_BATCH_BYTES {
        return Err(format!(
            "batch is {size} bytes serialized; at most {MAX_BATCH_BYTES} allowed (spec §3.3/§4)"
        ));
    }
    Ok(())
}

/// Schema `EventType`: every event type the batch schema knows.
const EVENT_TYPES: &[&str] = &[
    "session_start",
    "session_end",
    "screen_view",
    "custom_event",
    "crash_report",
    "opt_out",
    "first_run",
    "pre_attribution",
    "push_registration",
    "application_state_transition",
    "push_message",
    "network_performance",
    "breadcrumb",
    "profile",
    "push_reaction",
    "commerce_event",
    "user_attribute_change",
    "user_identity_change",
    "uninstall",
];

/// Schema `CustomEvent.data.custom_event_type`.
const CUSTOM_EVENT_TYPES: &[&str] = &[
    "navigation",
    "location",
    "search",
    "transaction",
    "user_content",
    "user_preference",
    "social",
    "other",
    "media",
];

/// Schema `CommerceEvent.data.custom_event_type`: the custom types plus these.
const COMMERCE_ONLY_EVENT_TYPES: &[&str] = &[
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "checkout_option",
    "click",
    "view_detail",
    "purchase",
    "refund",
    "promotion_view",
    "promotion_click",
    "add_to_wishlist",
    "remove_from_wishlist",
    "impression",
    "attribution",
    "consent_granted",
    "consent_denied",
];

/// Schema `ProductAction.action`.
const PRODUCT_ACTIONS: &[&str] = &[
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "checkout_option",
    "click",
    "view_detail",
    "purchase",
    "refund",
    "add_to_wishlist",
    "remove_from_wish_list",
];

/// Schema `Integer` (integer or null).
fn is_integer(v: &Value) -> bool {
    v.is_null() || v.is_i64() || v.is_u64()
}

/// Schema `Number` (number or null).
fn is_number(v: &Value) -> bool {
    v.is_null() || v.is_number()
}

/// One event, by the schema's definition for its `event_type` (the ones
/// `CustomEvent`, `CommerceEvent` and `ScreenViewEvent` constrain are checked
/// field by field; the others only by `EventType` and `EventData`).
pub fn validate_event(event: &Value) -> Result<(), String> {
    let Value::Object(event) = event else {
        return Err("an event must be an object (spec §3.2)".into());
    };
    let event_type = match event.get("event_type") {
        Some(Value::String(t)) if EVENT_TYPES.contains(&t.as_str()) => t.as_str(),
        Some(other) => {
            return Err(format!(
                "event_type {other} is not one of the schema's EventType values"
            ))
        }
        None => {
            return Err("event_type is required (schema oneOf: every event names its type)".into())
        }
    };
    // CustomEvent and CommerceEvent: additionalProperties false.
    if matches!(event_type, "custom_event" | "commerce_event") {
        if let Some(key) = event
            .keys()
            .find(|k| !matches!(k.as_str(), "data" | "event_type"))
        {
            return Err(format!(
                "unknown event key {key:?} (schema: additionalProperties false)"
            ));
        }
    }
    let empty = Map::new();
    let data = match event.get("data") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(d)) => d,
        Some(other) => return Err(format!("data must be an object, got {other}")),
    };
    // EventData.
    for key in [
        "timestamp_unixtime_ms",
        "event_id",
        "session_id",
        "session_start_unixtime_ms",
        "event_start_unixtime_ms",
        "event_num",
    ] {
        if let Some(v) = data.get(key) {
            if !is_integer(v) {
                return Err(format!(
                    "data.{key} must be an integer (schema Integer), got {v}"
                ));
            }
        }
    }
    for key in ["source_message_id", "session_uuid"] {
        if let Some(v) = data.get(key) {
            check_uuid(v).map_err(|e| format!("data.{key} {e} (schema Uuid)"))?;
        }
    }
    if let Some(v) = data.get("lifetime_value_change") {
        if !is_number(v) {
            return Err(format!(
                "data.lifetime_value_change must be a number, got {v}"
            ));
        }
    }
    match data.get("custom_attributes") {
        None | Some(Value::Null) => {}
        Some(Value::Object(attributes)) => {
            if let Some((k, v)) = attributes.iter().find(|(_, v)| !is_scalar(v)) {
                return Err(format!(
                    "data.custom_attributes.{k} must be a scalar (schema String), got {v}"
                ));
            }
        }
        Some(other) => {
            return Err(format!(
                "data.custom_attributes must be an object, got {other}"
            ))
        }
    }
    let string = |key: &str| -> Result<Option<&str>, String> {
        match data.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("data.{key} must be a string, got {other}")),
        }
    };
    match event_type {
        "custom_event" => {
            if string("event_name")?.is_none() {
                return Err(
                    "data.event_name is required for a custom_event (schema CustomEvent)".into(),
                );
            }
            match string("custom_event_type")? {
                Some(t) if CUSTOM_EVENT_TYPES.contains(&t) => {}
                Some(t) => {
                    return Err(format!(
                        "data.custom_event_type {t:?} is not in the CustomEvent enum"
                    ))
                }
                None => return Err(
                    "data.custom_event_type is required for a custom_event (schema CustomEvent)"
                        .into(),
                ),
            }
        }
        "screen_view" => {
            string("screen_name")?
                .ok_or("data.screen_name is required for a screen_view (schema ScreenViewEvent)")?;
        }
        "commerce_event" => {
            if let Some(t) = data.get("custom_event_type") {
                let ok = t.as_str().is_some_and(|t| {
                    CUSTOM_EVENT_TYPES.contains(&t) || COMMERCE_ONLY_EVENT_TYPES.contains(&t)
                });
                if !ok {
                    return Err(format!(
                        "data.custom_event_type {t} is not in the CommerceEvent enum"
                    ));
                }
            }
            for key in ["currency_code", "screen_name", "event_name"] {
                if let Some(v) = data.get(key) {
                    if !is_scalar(v) {
                        return Err(format!(
                            "data.{key} must be a scalar (schema String), got {v}"
                        ));
                    }
                }
            }
            // §3.2: exactly one of product_action, promotion_action, product_impressions.
            let kinds = ["product_action", "promotion_action", "product_impressions"]
                .iter()
                .filter(|k| !matches!(data.get(**k), None | Some(Value::Null)))
                .count();
            if kinds != 1 {
                return Err(format!(
                    "a commerce_event takes exactly one of product_action, promotion_action, product_impressions; it has {kinds} (spec §3.2)"
                ));
            }
            if let Some(action) = data.get("product_action") {
                validate_product_action(action)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Schema `ProductAction` (additionalProperties false) and its `Product`s.
fn validate_product_action(action: &Value) -> Result<(), String> {
    let Value::Object(action) = action else {
        return Err(format!(
            "data.product_action must be an object, got {action}"
        ));
    };
    for (key, v) in action {
        let ok = match key.as_str() {
            "action" => v.as_str().is_some_and(|a| PRODUCT_ACTIONS.contains(&a)),
            "transaction_id" => v.is_string(),
            "checkout_step" => is_integer(v),
            "total_amount" | "tax_amount" | "shipping_amount" => is_number(v),
            "checkout_options"
            | "product_action_list"
            | "product_list_source"
            | "affiliation"
            | "coupon_code" => is_scalar(v),
            "products" => v.is_null() || v.is_array(),
            _ => {
                return Err(format!(
                    "unknown product_action key {key:?} (schema: additionalProperties false)"
                ))
            }
        };
        if !ok {
            return Err(format!(
                "data.product_action.{key} = {v} breaks the schema's ProductAction"
            ));
        }
    }
    if !action.contains_key("action") {
        return Err("data.product_action.action is required (schema ProductAction)".into());
    }
    for (i, product) in action
        .get("products")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Value::Object(product) = product else {
            return Err(format!(
                "data.product_action.products[{i}] must be an object"
            ));
        };
        for (key, v) in product {
            let ok = match key.as_str() {
                "id" | "name" => v.is_string(),
                "brand" | "category" | "variant" | "coupon_code" => is_scalar(v),
                "position" | "added_to_cart_time_ms" => is_integer(v),
                "price" | "quantity" | "total_product_amount" => is_number(v),
                "custom_attributes" => {
                    v.is_null()
                        || v.as_object()
                            .is_some_and(|m| m.values().all(Value::is_string))
                }
                _ => true,
            };
            if !ok {
                return Err(format!(
                    "data.product_action.products[{i}].{key} = {v} breaks the schema's Product"
                ));
            }
        }
    }
    Ok(())
}

/// §3.1: the historical endpoint drops a batch with no events, an event
/// without `data.timestamp_unixtime_ms`, or an event less than 72 hours old.
pub fn validate_historical(batch: &Value) -> Result<(), String> {
    let events = batch
        .get("events")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or("a historical batch must have events (spec §3.1)")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for (i, event) in events.iter().enumerate() {
        let ms = event
            .pointer("/data/timestamp_unixtime_ms")
            .and_then(Value::as_i64)
            .ok_or(format!(
                "events[{i}] has no data.timestamp_unixtime_ms; the historical endpoint drops it (spec §3.1)"
            ))?;
        if ms > now_ms - 72 * 3600 * 1000 {
            return Err(format!(
                "events[{i}] is less than 72 hours old; the historical endpoint drops it (spec §3.1)"
            ));
        }
    }
    Ok(())
}

/// §5.2 patched list; values are strings (null = not set). Returns how many identities are set.
fn validate_user_identities(value: Option<&Value>) -> Result<usize, String> {
    let map = match value {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(format!(
                "user_identities must be an object, got {other} (spec §3.2)"
            ))
        }
    };
    let mut set = 0;
    for (key, v) in map {
        if !USER_IDENTITY_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "unknown user_identities key {key:?} (schema list patched per spec §5.2)"
            ));
        }
        match v {
            Value::Null => {}
            Value::String(s) => {
                if !s.is_empty() {
                    set += 1;
                }
            }
            other => {
                return Err(format!(
                    "user_identities.{key} must be a string, got {other} (spec §3.2)"
                ))
            }
        }
    }
    Ok(set)
}

/// `DeviceInformation` keys and value types. Returns how many device identities are set.
fn validate_device_info(value: Option<&Value>) -> Result<usize, String> {
    let map = match value {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(format!(
                "device_info must be an object, got {other} (spec §3.2)"
            ))
        }
    };
    let mut set = 0;
    for (key, v) in map {
        let Some((_, kind)) = DEVICE_INFO_FIELDS.iter().find(|(name, _)| name == key) else {
            return Err(format!(
                "unknown device_info key {key:?} (schema DeviceInformation, spec §3.2)"
            ));
        };
        check_device_field(*kind, v)
            .map_err(|e| format!("device_info.{key} {e} (schema DeviceInformation, spec §3.2)"))?;
        let present = match v {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if present && DEVICE_IDENTITY_KEYS.contains(&key.as_str()) {
            set += 1;
        }
    }
    Ok(set)
}

fn check_device_field(kind: DeviceField, v: &Value) -> Result<(), String> {
    let ok = match kind {
        DeviceField::Scalar => is_scalar(v),
        DeviceField::Integer => v.is_null() || v.is_i64() || v.is_u64(),
        DeviceField::Boolean => v.is_null() || v.is_boolean(),
        DeviceField::Uuid => return check_uuid(v),
        DeviceField::Enum(allowed) => v.as_str().is_some_and(|s| allowed.contains(&s)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("has the wrong type or value: {v}"))
    }
}

/// Schema `Uuid`: null, or a string matching `^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$`.
fn check_uuid(v: &Value) -> Result<(), String> {
    let s = match v {
        Value::Null => return Ok(()),
        Value::String(s) => s,
        other => return Err(format!("must be a UUID string, got {other}")),
    };
    let groups: Vec<&str> = s.split('-').collect();
    let shape_ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if shape_ok {
        Ok(())
    } else {
        Err(format!("must be a hyphenated UUID, got {s:?}"))
    }
}

/// Schema `String`: string, number, boolean or null.
fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

/// §4 user attribute limits; types from schema `StringOrArray`.
fn validate_user_attributes(value: Option<&Value>) -> Result<(), String> {
    let map: &Map<String, Value> = match value {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(format!(
                "user_attributes must be an object, got {other} (spec §3.2)"
            ))
        }
    };
    // §4: at most 100 user attributes per batch.
    if map.len() > MAX_USER_ATTRIBUTES {
        return Err(format!(
            "user_attributes has {} entries; at most {MAX_USER_ATTRIBUTES} allowed (spec §4)",
            map.len()
        ));
    }
    for (name, v) in map {
        // §4: attribute names at most 256 characters (Unicode scalar values).
        let name_chars = name.chars().count();
        if name_chars > MAX_ATTRIBUTE_NAME_CHARS {
            return Err(format!(
                "user attribute name of {name_chars} chars; at most {MAX_ATTRIBUTE_NAME_CHARS} allowed (spec §4)"
            ));
        }
        match v {
            // §4: scalar values at most 4096 characters.
            Value::String(s) => {
                let chars = s.chars().count();
                if chars > MAX_ATTRIBUTE_VALUE_CHARS {
                    return Err(format!(
                        "user attribute {name:?} value of {chars} chars; at most {MAX_ATTRIBUTE_VALUE_CHARS} allowed (spec §4)"
                    ));
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
            Value::Array(entries) => {
                // §4: lists at most 1000 entries.
                if entries.len() > MAX_LIST_ENTRIES {
                    return Err(format!(
                        "user attribute {name:?} list has {} entries; at most {MAX_LIST_ENTRIES} allowed (spec §4)",
                        entries.len()
                    ));
                }
                for (i, entry) in entries.iter().enumerate() {
                    match entry {
                        // §4: list entries at most 512 characters.
                        Value::String(s) => {
                            let chars = s.chars().count();
                            if chars > MAX_LIST_ENTRY_CHARS {
                                return Err(format!(
                                    "user attribute {name:?} list entry [{i}] of {chars} chars; at most {MAX_LIST_ENTRY_CHARS} allowed (spec §4)"
                                ));
                            }
                        }
                        // Schema `Array` items are `String`: scalars only, no nesting.
                        e if is_scalar(e) => {}
                        other => {
                            return Err(format!(
                                "user attribute {name:?} list entry [{i}] must be a scalar, got {other} (schema StringOrArray, spec §3.2)"
                            ))
                        }
                    }
                }
            }
            // Schema `StringOrArray`: objects are not attribute values.
            Value::Object(_) => {
                return Err(format!(
                    "user attribute {name:?} must be a scalar or a list, not an object (spec §3.2)"
                ))
            }
        }
    }
    Ok(())
}
