//! Temporary wsync projects for end-to-end tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempDir;
use wsync::clock::SystemClock;
use wsync::state::StateStore;
use wsync::sync::SyncContext;

/// A project folder that is deleted when dropped.
pub struct TestProject {
    /// The folder.
    pub dir: TempDir,
}

impl TestProject {
    /// A project with this `wsync.toml`.
    pub fn new(wsync_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("sql")).expect("sql dir");
        std::fs::create_dir_all(dir.path().join("schedules")).expect("schedules dir");
        std::fs::write(dir.path().join("wsync.toml"), wsync_toml).expect("wsync.toml");
        Self { dir }
    }

    /// The project folder.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Write `sql/<name>.sql`.
    pub fn model(&self, name: &str, sql: &str) -> &Self {
        std::fs::write(self.root().join("sql").join(format!("{name}.sql")), sql).expect("model");
        self
    }

    /// Write `schedules/<id>.toml`.
    pub fn pipeline(&self, id: &str, toml: &str) -> &Self {
        std::fs::write(
            self.root().join("schedules").join(format!("{id}.toml")),
            toml,
        )
        .expect("pipeline");
        self
    }

    /// Any other file, relative to the root.
    pub fn file(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.root().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent");
        }
        std::fs::write(&path, contents).expect("file");
        path
    }

    /// Load the project and open its state store.
    pub async fn context(&self) -> SyncContext {
        let project = wsync::config::load(self.root()).unwrap_or_else(|e| panic!("{e}"));
        let state = StateStore::for_project(&project.state)
            .await
            .expect("state store");
        SyncContext::new(Arc::new(project), state, Arc::new(SystemClock))
    }

    /// Run the `wsync` binary in this project; returns (exit code, stdout, stderr).
    pub fn wsync(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wsync"));
        cmd.arg("--config").arg(self.root()).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run wsync");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A batch without its `source_request_id`, after checking the id is 32 hex digits.
pub fn without_id(batch: &serde_json::Value) -> serde_json::Value {
    let mut batch = batch.clone();
    let id = batch
        .as_object_mut()
        .expect("batch object")
        .remove("source_request_id")
        .expect("source_request_id present");
    let id = id.as_str().expect("id string");
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    batch
}

/// The lines of a JSONL file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}
