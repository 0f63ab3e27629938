//! `wsync::config::load` end to end: real project folders in temp dirs, the exact
//! error text users see, and the model a valid project becomes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use wsync::config::model::{
    ConnectionKind, Destination, Environment, Frequency, InputProtection, IteratorDataType,
    LimitPolicy, Mapping, NullPolicy, Schedule, StaticValue, SyncMode,
};
use wsync::config::{load_with_env, ConfigErrors};
use wsync::mapping::identity::IdentityType;

/// A project folder holding `files` (path, contents).
fn project(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        write(dir.path(), path, text);
    }
    dir
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// Copy `tests/fixtures/config/NAME` into a temp dir.
fn fixture(name: &str) -> TempDir {
    fn copy(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).expect("read fixture") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.path().is_dir() {
                std::fs::create_dir_all(&target).expect("mkdir");
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).expect("copy");
            }
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name);
    copy(&src, dir.path());
    dir
}

fn env_of(vars: &[(&str, &str)]) -> HashMap<String, OsString> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), OsString::from(*v)))
        .collect()
}

/// The rendered errors of loading `root` with `vars` as the whole environment.
fn errors(root: &Path, vars: &[(&str, &str)]) -> String {
    let env = env_of(vars);
    match load_with_env(root, &|name| env.get(name).cloned()) {
        Ok(_) => panic!("expected errors"),
        Err(ConfigErrors(errors)) => ConfigErrors(errors).to_string(),
    }
}

const MINIMAL_WSYNC: &str = r#"[connections.pg]
type = "postgres"
url_env = "PG_URL"

[feeds.main]
pod = "US1"
api_key_env = "MP_KEY"
api_secret_env = "MP_SECRET"
"#;

#[test]
fn scratch() {
    let dir = project(&[
        ("wsync.toml", "[state]\nurl = \"sqlite://x.db\"\nruns_dir = \n"),
        ("schedules/a.toml", "connection = \"pg\"\nconection = \"x\"\n[sync_mode]\ntype = 1\n"),
        ("schedules/b.toml", "connection = \"pg\"\ndata_model = \"users\"\nfeed = \"main\"\ninput_protection = \"only_readd\"\nenvironment = \"prod\"\n[sync_mode]\ntype = \"full\"\niterator_field = \"x\"\n[schedule]\ntype = \"interval\"\nexpression = \"* * *\"\n[[mappings]]\nmapping_type = \"column\"\nsource = \"a\"\ndestination = \"user_identities.emial\"\nvalue = 1\n[[mappings]]\nmapping_type = \"static\"\ndestination = \"mpid\"\nvalue = \"x\"\n"),
        ("sql/users.sql", " ;\n"),
    ]);
    println!("{}", errors(dir.path(), &[]));
    let dir = project(&[("wsync.toml", MINIMAL_WSYNC)]);
    println!(
        "{}",
        errors(
            dir.path(),
            &[("PG_URL", "mysql://u:hunter2@h/db"), ("MP_KEY", "")]
        )
    );
    panic!();
}
