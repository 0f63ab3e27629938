//! End to end on SQLite: a seeded warehouse with SQLite's types and nasty values,
//! sent to the fake Events API through the `wsync` binary; the exact JSON
//! received, the exact rejected rows, and no trace of the secrets anywhere.

use serde_json::json;

use crate::support::fake_mparticle::FakeMparticle;
use crate::support::project::{read_jsonl, without_id, TestProject};

const KEY: &str = "sqlite-key-3e1f";
const SECRET: &str = "sqlite-secret-b7c2d9e0";

const SEED: &str = r#"
CREATE TABLE people (
    customer_id TEXT, email TEXT, mpid INTEGER, ios_idfv TEXT, big INTEGER, score REAL,
    vip BOOLEAN, bio TEXT, born DATE, seen_at DATETIME, note TEXT, raw BLOB, seq INTEGER NOT NULL
);
INSERT INTO people VALUES
  ('s1', 'zoë+🎉@example.com', NULL, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 9007199254740993, 0.25,
   1, 'He said "hi"' || char(10) || 'and left', '1999-12-31', '2024-05-01 12:30:00', NULL, X'CAFE', 1),
  ('s2', NULL, -42, 'not-a-uuid', -9007199254740992, -1.5, 0, NULL, NULL,
   '2024-05-01T10:30:00.123+02:00', NULL, NULL, 2),
  (NULL, NULL, NULL, NULL, 5, NULL, NULL, 'nobody', NULL, NULL, NULL, NULL, 3),
  ('s4', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 4);
"#;

fn project(base_url: &str, null_policy: &str) -> TestProject {
    let p = TestProject::new(&format!(
        r#"
[connections.lite]
type = "sqlite"
url = "sqlite://warehouse.db"
seed_sql = "seed.sql"

[feeds.fake]
base_url = "{base_url}"
api_key_env = "WSYNC_TEST_SQLITE_KEY"
api_secret = "${{WSYNC_TEST_SQLITE_SECRET}}"

[defaults]
null_policy = "{null_policy}"
"#
    ));
    p.file("seed.sql", SEED);
    p.model(
        "people",
        "SELECT customer_id, email, mpid, ios_idfv, big, score, vip, bio, born, seen_at, note, raw, seq\nFROM people",
    );
    p.pipeline(
        "people",
        r#"
connection = "lite"
data_model = "people"
feed = "fake"

[sync_mode]
type = "incremental"
iterator_field = "seq"
iterator_data_type = "integer"

[[mappings]]
mapping_type = "column"
source = "note"
destination = "user_attributes.$zip"

[[mappings]]
mapping_type = "static"
value = 3
destination = "user_attributes.schema_version"
"#,
    );
    p
}

// Multi-threaded: the fake must keep serving while this thread waits on the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_reach_the_fake_exactly_and_secrets_stay_hidden() {
    let fake = FakeMparticle::start(KEY, SECRET).await;
    let p = project(&fake.base_url(), "delete");
    let env = [
        ("WSYNC_TEST_SQLITE_KEY", KEY),
        ("WSYNC_TEST_SQLITE_SECRET", SECRET),
    ];
    let (code, stdout, stderr) = p.wsync(&["--log", "trace", "run", "people"], &env);
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    let batches = fake.batches();
    assert_eq!(batches.len(), 3, "{batches:?}");
    assert_eq!(
        without_id(&batches[0]),
        json!({
            "environment": "development",
            "user_identities": {"customer_id": "s1", "email": "zoë+🎉@example.com"},
            "device_info": {"ios_idfv": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"},
            "user_attributes": {
                "big": "9007199254740993",
                "score": 0.25,
                "vip": true,
                "bio": "He said \"hi\"\nand left",
                "born": "1999-12-31",
                "seen_at": "2024-05-01T12:30:00Z",
                "raw": "yv4=",
                "schema_version": 3
            },
            "deleted_user_attributes": ["$zip"]
        })
    );
    assert_eq!(
        without_id(&batches[1]),
        json!({
            "environment": "development",
            "mpid": -42,
            "user_identities": {"customer_id": "s2"},
            "user_attributes": {
                "big": -9007199254740992_i64,
                "score": -1.5,
                "vip": false,
                "seen_at": "2024-05-01T08:30:00.123Z",
                "schema_version": 3
            },
            "deleted_user_attributes": ["bio", "born", "$zip", "raw"]
        })
    );
    assert_eq!(
        without_id(&batches[2]),
        json!({
            "environment": "development",
            "user_identities": {"customer_id": "s4"},
            "user_attributes": {"schema_version": 3},
            "deleted_user_attributes": ["big", "score", "vip", "bio", "born", "seen_at", "$zip", "raw"]
        })
    );

    // The row with no identity is kept with its reason and values.
    let rejected = read_jsonl(&p.root().join(".wsync/runs/people/1/rejected.jsonl"));
    assert_eq!(
        rejected,
        vec![json!({
            "row": 3,
            "reason": "no_identity",
            "detail": "no user identity, mpid or device id: every one was NULL or empty",
            "values": {
                "customer_id": null, "email": null, "mpid": null, "ios_idfv": null, "big": 5,
                "score": null, "vip": null, "bio": "nobody", "born": null, "seen_at": null,
                "note": null, "raw": null, "seq": 3
            }
        })]
    );
    assert!(stdout.contains("dropped: invalid_device_id"), "{stdout}");

    // The rejected row is also a dead letter of the pipeline, kept once however
    // often it is rejected again, until purged.
    let (code, list, _) = p.wsync(&["dead-letters", "list", "people", "--json"], &env);
    assert_eq!(code, 0);
    let letters: Vec<serde_json::Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{list}");
    assert_eq!(letters[0]["kind"], "row");
    assert_eq!(letters[0]["reason"], "no_identity");
    assert_eq!(letters[0]["run_id"], 1);
    assert_eq!(letters[0]["payload"]["bio"], "nobody");
    let (code, list, _) = p.wsync(&["dead-letters", "list", "people"], &env);
    assert_eq!(code, 0);
    assert!(
        list.contains("0 refused batch(es), 1 rejected row(s)"),
        "{list}"
    );

    let (code, purged, _) = p.wsync(&["dead-letters", "purge", "people"], &env);
    assert_eq!(code, 0);
    assert!(purged.contains("Purged 1 dead letter(s)"), "{purged}");

    // No secret in the output (at trace level), the run records or the run files.
    let mut haystack = format!("{stdout}{stderr}");
    let (_, runs, _) = p.wsync(&["runs", "--json"], &env);
    haystack.push_str(&runs);
    for entry in walk(p.root()) {
        haystack.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    // The secret is only in the environment; the key is sent but never printed.
    assert!(!haystack.contains(SECRET), "secret leaked");
    assert!(!haystack.contains(KEY), "api key leaked");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
