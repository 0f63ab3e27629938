//! A small in-process Snowflake for what fakesnow does not do: results split
//! into remote chunks (downloaded with the headers the answer gives, one of them
//! gzip-compressed, one failing once with 503), queries that answer "still
//! running" and must be polled, NULL timestamps in the struct encoding, narrow
//! integer encodings, statement timeouts and refused logins.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, Int8Array, RecordBatch, StringArray, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};

/// What the fake saw and how it behaves.
#[derive(Default)]
pub struct FakeState {
    /// Login bodies received.
    pub logins: Vec<Value>,
    /// Query bodies received.
    pub queries: Vec<Value>,
    /// Polls of the result URL.
    pub polls: u32,
    /// Chunk requests (chunk number, the SSE-C key header sent).
    pub chunk_requests: Vec<(u32, Option<String>)>,
    /// Refuse logins with this code.
    pub refuse_login: Option<&'static str>,
    /// Answer queries with this error code.
    pub fail_query: Option<&'static str>,
    /// `POST /session?delete=true` calls with the session token.
    pub session_deletes: u32,
    /// Answer the next query with "session expired" (code 390112).
    pub expire_session_once: bool,
    /// Send results as JSON (`rowset` and a JSON chunk) instead of Arrow.
    pub json_results: bool,
}

/// The running fake.
pub struct FakeSnowflake {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Shared state.
    pub state: Arc<Mutex<FakeState>>,
}

/// The key the fake hands out for chunk downloads (a secret).
pub const CHUNK_KEY: &str = "chunk-key-SECRET-42";
/// The session token the fake hands out (a secret).
pub const SESSION_TOKEN: &str = "session-token-SECRET-77";

#[derive(Clone)]
struct App {
    state: Arc<Mutex<FakeState>>,
    base: String,
}

/// Start the fake on a free loopback port.
pub async fn start() -> FakeSnowflake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base_url = format!("http://{}", listener.local_addr().expect("addr"));
    let state = Arc::new(Mutex::new(FakeState::default()));
    let app = App {
        state: state.clone(),
        base: base_url.clone(),
    };
    let router = Router::new()
        .route("/session/v1/login-request", post(login))
        .route("/queries/v1/query-request", post(query))
        .route("/queries/{id}/result", get(result))
        .route("/chunks/{n}", get(chunk))
        .route("/session", post(delete_session))
        .with_state(app);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    FakeSnowflake { base_url, state }
}

async fn login(State(app): State<App>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut state = app.state.lock().expect("state");
    state.logins.push(body);
    if let Some(code) = state.refuse_login {
        // Snowflake's answers may echo what was sent; the client must scrub it.
        let echoed = state
            .logins
            .last()
            .map(|b| b["data"]["TOKEN"].to_string())
            .unwrap_or_default();
        return axum::Json(json!({"success": false, "code": code, "message": format!("JWT token is invalid: {echoed}"), "data": null})).into_response();
    }
    axum::Json(json!({"success": true, "data": {"token": SESSION_TOKEN, "masterToken": "m"}}))
        .into_response()
}

async fn delete_session(
    State(app): State<App>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    if authorized(&headers) && uri.query() == Some("delete=true") {
        app.state.lock().expect("state").session_deletes += 1;
    }
    axum::Json(json!({"success": true})).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Snowflake Token=\"{SESSION_TOKEN}\""))
}

/// The result's columns: ID NUMBER(18,0), TS TIMESTAMP_NTZ(9), N NUMBER(10,2), S VARCHAR.
fn rowtype() -> Value {
    json!([
        {"name": "ID", "type": "fixed", "precision": 18, "scale": 0, "nullable": true},
        {"name": "TS", "type": "timestamp_ntz", "precision": 0, "scale": 9, "nullable": true},
        {"name": "N", "type": "fixed", "precision": 10, "scale": 2, "nullable": true},
        {"name": "S", "type": "text", "nullable": true},
    ])
}

async fn query(State(app): State<App>, headers: HeaderMap, body: String) -> Response {
    if !authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"success": false, "code": "390104", "message": "User must login again"}),
            ),
        )
            .into_response();
    }
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut state = app.state.lock().expect("state");
    state.queries.push(body.clone());
    if state.expire_session_once {
        state.expire_session_once = false;
        return axum::Json(json!({"success": false, "code": "390112", "message": "Your session has expired. Please login again.", "data": null})).into_response();
    }
    if let Some(code) = state.fail_query {
        return axum::Json(json!({"success": false, "code": code, "message": "Statement reached its statement or warehouse timeout of 30 second(s) and was canceled.", "data": {"errorCode": code}})).into_response();
    }
    if body["describeOnly"] == true {
        return axum::Json(json!({"success": true, "data": {"rowtype": rowtype(), "queryResultFormat": "arrow", "rowsetBase64": ""}})).into_response();
    }
    // A long query: answer "in progress" with the URL to poll.
    axum::Json(json!({"success": false, "code": "333333", "message": "Query execution in progress", "data": {"getResultUrl": "/queries/q-1/result", "queryId": "q-1"}})).into_response()
}

async fn result(State(app): State<App>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorized(&headers) || id != "q-1" {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut state = app.state.lock().expect("state");
    state.polls += 1;
    if state.polls < 3 {
        return axum::Json(json!({"success": false, "code": "333334", "message": "still running", "data": {"getResultUrl": "/queries/q-1/result"}})).into_response();
    }
    if state.json_results {
        return axum::Json(json!({
            "success": true,
            "data": {
                "rowtype": rowtype(),
                "queryResultFormat": "json",
                "rowset": [["1", "1700000000.123456789", "12.5", "a"], ["2", null, null, "b"]],
                "chunks": [{"url": format!("{}/chunks/3?sig=PRESIGNED", app.base), "rowCount": 2}],
                "qrmk": CHUNK_KEY,
            }
        }))
        .into_response();
    }
    let first = ipc(&batch(
        &[Some(1), Some(2)],
        &[Some((1_700_000_000, 123_456_789)), None],
        &[Some(1250), None],
        &[Some("a"), Some("b")],
        false,
    ));
    axum::Json(json!({
        "success": true,
        "data": {
            "rowtype": rowtype(),
            "queryResultFormat": "arrow",
            "rowsetBase64": base64::engine::general_purpose::STANDARD.encode(first),
            "chunks": [
                {"url": format!("{}/chunks/1?sig=PRESIGNED", app.base), "rowCount": 3, "uncompressedSize": 1, "compressedSize": 1},
                {"url": format!("{}/chunks/2?sig=PRESIGNED", app.base), "rowCount": 2, "uncompressedSize": 1, "compressedSize": 1},
            ],
            "chunkHeaders": {"x-amz-server-side-encryption-customer-key": CHUNK_KEY, "x-amz-server-side-encryption-customer-algorithm": "AES256"},
            "queryId": "q-1",
        }
    }))
    .into_response()
}

async fn chunk(State(app): State<App>, headers: HeaderMap, Path(n): Path<u32>) -> Response {
    let key = headers
        .get("x-amz-server-side-encryption-customer-key")
        .and_then(|v| v.to_str().ok())
        .map(ToOwned::to_owned);
    let mut state = app.state.lock().expect("state");
    state.chunk_requests.push((n, key.clone()));
    if key.as_deref() != Some(CHUNK_KEY) {
        return StatusCode::FORBIDDEN.into_response();
    }
    match n {
        1 => {
            // Gzip-compressed, narrow (Int8) integers, a NULL timestamp.
            let bytes = ipc(&batch(
                &[Some(3), None, Some(5)],
                &[None, Some((-1, 500_000_000)), Some((0, 0))],
                &[Some(-5), Some(0), Some(100_000)],
                &[None, Some("é"), Some("")],
                true,
            ));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&bytes).expect("gzip");
            gz.finish().expect("gzip").into_response()
        }
        2 => {
            // The first try fails transiently.
            if state.chunk_requests.iter().filter(|(c, _)| *c == 2).count() == 1 {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            ipc(&batch(
                &[Some(6), Some(7)],
                &[Some((86_400, 1_000)), None],
                &[None, Some(1)],
                &[Some("f"), Some("g")],
                false,
            ))
            .into_response()
        }
        3 => {
            // A JSON chunk: rows without the enclosing brackets, gzip-compressed.
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(
                "[\"3\", \"-0.500000000\", \"-0.05\", null],\n[null, null, \"1000.00\", \"é\"]"
                    .as_bytes(),
            )
            .expect("gzip");
            gz.finish().expect("gzip").into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A batch in Snowflake's encodings. `narrow` sends ID as Int8, as Snowflake
/// does for a chunk of small values.
fn batch(
    ids: &[Option<i64>],
    ts: &[Option<(i64, i32)>],
    n: &[Option<i64>],
    s: &[Option<&str>],
    narrow: bool,
) -> RecordBatch {
    let id: ArrayRef = if narrow {
        Arc::new(
            ids.iter()
                .map(|v| v.map(|v| i8::try_from(v).expect("small")))
                .collect::<Int8Array>(),
        )
    } else {
        Arc::new(ids.iter().copied().collect::<Int64Array>())
    };
    let ts_fields = Fields::from(vec![
        Field::new("epoch", DataType::Int64, false),
        Field::new("fraction", DataType::Int32, false),
    ]);
    let ts_array = StructArray::new(
        ts_fields.clone(),
        vec![
            Arc::new(
                ts.iter()
                    .map(|v| v.map_or(0, |t| t.0))
                    .collect::<Int64Array>(),
            ) as ArrayRef,
            Arc::new(
                ts.iter()
                    .map(|v| v.map_or(0, |t| t.1))
                    .collect::<Int32Array>(),
            ) as ArrayRef,
        ],
        Some(NullBuffer::from(
            ts.iter().map(Option::is_some).collect::<Vec<bool>>(),
        )),
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("ID", id.data_type().clone(), true),
        Field::new("TS", DataType::Struct(ts_fields), true),
        Field::new("N", DataType::Int64, true),
        Field::new("S", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            id,
            Arc::new(ts_array),
            Arc::new(n.iter().copied().collect::<Int64Array>()),
            Arc::new(s.iter().copied().collect::<StringArray>()),
        ],
    )
    .expect("batch")
}

/// An Arrow IPC stream of one batch.
fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())
            .expect("ipc writer");
        writer.write(batch).expect("ipc write");
        writer.finish().expect("ipc finish");
    }
    out
}
