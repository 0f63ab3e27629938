//! Pipeline leases: one run of a pipeline at a time, across processes and
//! hosts, the way job systems on PostgreSQL do it (River, Oban,
//! graphile-worker).
//!
//! A run holds its pipeline's lease (`holder`, `fencing_token`,
//! `expires_at`) from `start_run` to `finish_run`; a heartbeat task renews
//! every lease this process holds each third of the lease's life. A lease
//! that was not renewed in time (its holder crashed, or stalled: a long GC
//! pause, SIGSTOP, a partitioned host) is taken over by the next daemon that
//! wants the pipeline, with the next fencing token. Every write of a run
//! (checkpoint, outcome, watermark, snapshot) first checks, inside its own
//! transaction, that the lease still carries the run's token, and that check
//! locks the lease row until the commit: a holder that comes back after a
//! takeover cannot commit anything, and a takeover cannot slip in between
//! the check and the commit.
//!
//! A chunk of a parallel backfill has a lease of its own, keyed
//! `<pipeline>/backfill/<id>/<chunk>` (see [`super::backfills`]), which works
//! the same way; its runs record that key (`lease_key`), and every query here
//! that goes from a run to its lease goes through it.
//!
//! On SQLite (one host) a lease whose holder process is gone (SIGKILL, a
//! crash) is free at once instead of after its expiry: the process id means
//! something there. With PostgreSQL the expiry alone decides, since the
//! holder may live on another host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{millis, Backend, StateError, StateStore};

/// How long a lease lasts without a heartbeat, by default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// A lease held by a run of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub pipeline_id: String,
    pub run_id: i64,
    pub token: i64,
}

/// The leases this process holds through one store, and whether its
/// heartbeat task runs.
#[derive(Debug, Default)]
pub(crate) struct Held {
    leases: Mutex<HashMap<i64, Lease>>,
    heartbeat: Mutex<bool>,
    /// The daemon registered through this store, whose heartbeat the same
    /// task keeps.
    pub(crate) daemon: Mutex<Option<String>>,
    /// Runs whose lease a heartbeat found taken over.
    lost: Mutex<std::collections::HashSet<i64>>,
}

impl Held {
    pub(crate) fn hold(&self, pipeline_id: &str, run_id: i64, token: i64) {
        lock(&self.leases).insert(
            run_id,
            Lease {
                pipeline_id: pipeline_id.to_owned(),
                run_id,
                token,
            },
        );
    }

    pub(crate) fn drop_run(&self, run_id: i64) {
        lock(&self.leases).remove(&run_id);
        lock(&self.lost).remove(&run_id);
    }

    /// The leases to renew: held and not known lost.
    fn live(&self) -> Vec<Lease> {
        let lost = lock(&self.lost);
        lock(&self.leases)
            .values()
            .filter(|l| !lost.contains(&l.run_id))
            .cloned()
            .collect()
    }
}

/// The live holder of a pipeline's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The run holding the pipeline.
    pub run_id: i64,
    /// The daemon or process holding it (`host:pid:instance`).
    pub holder: String,
    /// Its host.
    pub host: String,
    /// Its process id (on `host`).
    pub pid: i64,
    /// When the lease was taken (RFC 3339).
    pub since: String,
    /// When it expires unless renewed.
    pub expires_at: DateTime<Utc>,
    /// The lease's fencing token.
    pub fencing_token: i64,
    /// Held by this very process.
    pub own: bool,
}

impl StateStore {
    /// The live holder of `pipeline_id`'s lease, if any (an expired lease, or
    /// on SQLite one whose process is gone, is not reported).
    pub async fn lease_holder(&self, pipeline_id: &str) -> Result<Option<LeaseHolder>, StateError> {
        let row = sqlx::query(
            "SELECT holder, host, pid, run_id, fencing_token, acquired_at, expires_at \
             FROM pipeline_leases WHERE pipeline_id = $1",
        )
        .bind(pipeline_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let holder = holder_of(&row)?;
        if !self.is_live(&holder) {
            return Ok(None);
        }
        Ok(Some(holder))
    }

    /// Release the lease this process holds on `pipeline_id` (or on a
    /// backfill chunk's lease key), if any, for a
    /// run that ended without recording an outcome (it panicked, or
    /// `finish_run` failed: a busy or full disk). That run, if still
    /// `running`, ends `failed` with `reason`; its checkpoint stays, so the
    /// next run resumes from it. Returns the released run's id. Only the
    /// caller knows that no run of the pipeline is in progress in this
    /// process: a live run's lease looks alike.
    pub async fn release_own_lease(
        &self,
        pipeline_id: &str,
        now: DateTime<Utc>,
        reason: &str,
    ) -> Result<Option<i64>, StateError> {
        let me = this_process();
        let mut tx = self.write_tx().await?;
        let run_id: Option<i64> = sqlx::query_scalar(
            "SELECT run_id FROM pipeline_leases WHERE pipeline_id = $1 AND holder = $2",
        )
        .bind(pipeline_id)
        .bind(&me.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(run_id) = run_id else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE pipeline_runs SET state = 'failed', end_date = $1, error = $2 \
             WHERE id = $3 AND state = 'running'",
        )
        .bind(now.to_rfc3339())
        .bind(reason)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        release(&mut tx, run_id).await?;
        tx.commit().await?;
        self.leases.drop_run(run_id);
        Ok(Some(run_id))
    }

    /// The error to stop run `run_id` with when a heartbeat found its lease
    /// taken over (this process stalled past the expiry): the run should
    /// stop sending, since nothing more of it can be committed.
    pub fn lease_lost(&self, run_id: i64) -> Option<StateError> {
        if !lock(&self.leases.lost).contains(&run_id) {
            return None;
        }
        let lease = lock(&self.leases.leases).get(&run_id).cloned()?;
        Some(StateError::LeaseLost {
            pipeline: lease.pipeline_id,
            run_id,
            token: lease.token,
        })
    }

    fn is_live(&self, holder: &LeaseHolder) -> bool {
        if holder.holder.is_empty() || holder.expires_at <= self.options.clock.now() {
            return false;
        }
        if self.backend() == Backend::Sqlite && holder.host == this_process().host {
            return process_alive(holder.pid, &holder.holder);
        }
        true
    }

    /// Start the task renewing this store's leases (and its daemon's
    /// heartbeat), once.
    pub(crate) fn ensure_heartbeat(&self) {
        {
            let mut running = lock(&self.leases.heartbeat);
            if *running {
                return;
            }
            *running = true;
        }
        let weak: Weak<Held> = Arc::downgrade(&self.leases);
        let store = self.clone_weak_leases();
        let every = self.options.lease_ttl / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(held) = weak.upgrade() else { return };
                if store.pool.is_closed() {
                    *lock(&held.heartbeat) = false;
                    return;
                }
                store.renew(&held).await;
            }
        });
    }

    /// A store sharing this one's pool and options but not keeping its
    /// leases alive (the heartbeat task holds this, and ends once the last
    /// real clone is dropped).
    fn clone_weak_leases(&self) -> Self {
        Self {
            leases: Arc::new(Held::default()),
            ..self.clone()
        }
    }

    /// One heartbeat: extend every held lease, forget those taken over.
    async fn renew(&self, held: &Held) {
        let now = self.options.clock.now();
        let until = millis(now) + ttl_millis(self.options.lease_ttl);
        for lease in held.live() {
            let result = sqlx::query(
                "UPDATE pipeline_leases SET expires_at = $1 WHERE pipeline_id = $2 \
                 AND run_id = $3 AND fencing_token = $4",
            )
            .bind(until)
            .bind(&lease.pipeline_id)
            .bind(lease.run_id)
            .bind(lease.token)
            .execute(&self.pool)
            .await;
            match result {
                Ok(r) if r.rows_affected() == 0 => {
                    tracing::error!(
                        pipeline = %lease.pipeline_id,
                        run_id = lease.run_id,
                        fencing_token = lease.token,
                        "This run's lease was taken over by another daemon (this process \
                         stalled past its expiry); the run stops and commits nothing."
                    );
                    lock(&held.lost).insert(lease.run_id);
                }
                Ok(_) => {}
                // A busy store: the lease lasts three heartbeats; try again.
                Err(e) => tracing::warn!(error = %e, "Cannot renew a pipeline lease."),
            }
        }
        let daemon = lock(&held.daemon).clone();
        if let Some(id) = daemon {
            if let Err(e) = super::daemons::beat(self, &id, now).await {
                tracing::warn!(error = %e, "Cannot record the daemon's heartbeat.");
            }
        }
    }
}

/// Take `pipeline_id`'s lease inside `tx` (the caller records the run id
/// before committing). Returns the new fencing token.
pub(super) async fn acquire(
    store: &StateStore,
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    pipeline_id: &str,
) -> Result<i64, StateError> {
    let me = this_process();
    let now = store.options.clock.now();
    let expires = millis(now) + ttl_millis(store.options.lease_ttl);
    let row = sqlx::query(
        "SELECT holder, host, pid, run_id, fencing_token, acquired_at, expires_at \
         FROM pipeline_leases WHERE pipeline_id = $1",
    )
    .bind(pipeline_id)
    .fetch_optional(&mut **tx)
    .await?;
    let in_progress = |h: &LeaseHolder| StateError::InProgress {
        pipeline: pipeline_id.to_owned(),
        run_id: h.run_id,
        since: h.since.clone(),
        holder: h.holder.clone(),
    };
    let token = match row {
        None => {
            let inserted = sqlx::query(
                "INSERT INTO pipeline_leases (pipeline_id, holder, host, pid, run_id, \
                 fencing_token, acquired_at, expires_at) VALUES ($1, $2, $3, $4, 0, 1, $5, $6) \
                 ON CONFLICT (pipeline_id) DO NOTHING",
            )
            .bind(pipeline_id)
            .bind(&me.id)
            .bind(&me.host)
            .bind(me.pid)
            .bind(now.to_rfc3339())
            .bind(expires)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(lost_race(pipeline_id));
            }
            1
        }
        Some(row) => {
            let current = holder_of(&row)?;
            if store.is_live(&current) {
                return Err(in_progress(&current));
            }
            // Conditioned on the token read: of two daemons taking over the
            // same expired lease, the second's update finds the token moved.
            let taken = sqlx::query(
                "UPDATE pipeline_leases SET holder = $1, host = $2, pid = $3, run_id = 0, \
                 fencing_token = fencing_token + 1, acquired_at = $4, expires_at = $5 \
                 WHERE pipeline_id = $6 AND fencing_token = $7",
            )
            .bind(&me.id)
            .bind(&me.host)
            .bind(me.pid)
            .bind(now.to_rfc3339())
            .bind(expires)
            .bind(pipeline_id)
            .bind(current.fencing_token)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if taken == 0 {
                return Err(lost_race(pipeline_id));
            }
            current.fencing_token + 1
        }
    };
    store.ensure_heartbeat();
    Ok(token)
}

/// Check inside `tx` that run `run_id` still holds its pipeline's lease
/// with the fencing token it started with (kept on its record), and lock the
/// lease row until the transaction ends.
pub(super) async fn verify(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: i64,
) -> Result<(), StateError> {
    let held = sqlx::query(
        "UPDATE pipeline_leases SET fencing_token = fencing_token WHERE run_id = $1 \
         AND holder != '' \
         AND pipeline_id = (SELECT COALESCE(lease_key, pipeline_id) FROM pipeline_runs \
           WHERE id = $1) \
         AND fencing_token = (SELECT fencing_token FROM pipeline_runs WHERE id = $1)",
    )
    .bind(run_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if held == 0 {
        let row = sqlx::query("SELECT pipeline_id, fencing_token FROM pipeline_runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&mut **tx)
            .await?;
        let (pipeline, token) = match row {
            Some(r) => (r.try_get("pipeline_id")?, r.try_get("fencing_token")?),
            None => (String::new(), 0),
        };
        return Err(StateError::LeaseLost {
            pipeline,
            run_id,
            token,
        });
    }
    Ok(())
}

/// Free the lease of `run_id` inside `tx` (keeping the token, which only
/// grows). Run ids are unique across leases, pipelines' and chunks' alike.
pub(super) async fn release(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: i64,
) -> Result<(), StateError> {
    sqlx::query("UPDATE pipeline_leases SET holder = '', expires_at = 0 WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Another daemon took the lease between our read and our write.
fn lost_race(pipeline_id: &str) -> StateError {
    StateError::InProgress {
        pipeline: pipeline_id.to_owned(),
        run_id: 0,
        since: "just now".to_owned(),
        holder: "another daemon".to_owned(),
    }
}

fn holder_of(row: &sqlx::any::AnyRow) -> Result<LeaseHolder, StateError> {
    let holder: String = row.try_get("holder")?;
    let expires: i64 = row.try_get("expires_at")?;
    Ok(LeaseHolder {
        own: holder == this_process().id,
        holder,
        host: row.try_get("host")?,
        pid: row.try_get("pid")?,
        run_id: row.try_get("run_id")?,
        since: row.try_get("acquired_at")?,
        expires_at: DateTime::from_timestamp_millis(expires).unwrap_or(DateTime::UNIX_EPOCH),
        fencing_token: row.try_get("fencing_token")?,
    })
}

fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// This process, as recorded in the leases it takes.
#[derive(Debug)]
pub(crate) struct ProcessId {
    /// `host:pid:instance`, unique across hosts and restarts.
    pub id: String,
    pub host: String,
    pub pid: i64,
}

/// This process's identity, `host:pid:instance`: the holder of its leases.
pub fn process_id() -> &'static str {
    &this_process().id
}

/// This process's identity.
pub(crate) fn this_process() -> &'static ProcessId {
    static ME: std::sync::OnceLock<ProcessId> = std::sync::OnceLock::new();
    ME.get_or_init(|| {
        let host = hostname();
        let pid = i64::from(std::process::id());
        // A restarted container reuses pid 1 on the same host name: the
        // instance part tells its lives apart.
        let instance = uuid::Uuid::new_v4().simple().to_string();
        ProcessId {
            id: format!("{host}:{pid}:{}", &instance[..12]),
            host,
            pid,
        }
    })
}

/// The host's name (`HOSTNAME` unless the system says otherwise).
fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname writes a
        // NUL-terminated name into it (truncated if longer).
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            let name = String::from_utf8_lossy(&buf[..end]).into_owned();
            if !name.is_empty() {
                return name;
            }
        }
    }
    std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned())
}

/// Whether the process that took a lease on this host still runs. Our own
/// pid counts only with our own identity: a container restarted as pid 1
/// must not see its previous life's lease as its own.
fn process_alive(pid: i64, holder: &str) -> bool {
    let me = this_process();
    if pid == me.pid {
        return holder == me.id;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists and may be
        // signalled; nothing is sent.
        let rc = unsafe { libc::kill(pid, 0) };
        let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        // After a crash the pid may have been reused by an unrelated program;
        // where /proc tells, only a wsync process (or a test binary linking
        // it) counts as the holder.
        if !exists {
            return false;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return true;
        };
        // Empty: a zombie (killed, not yet reaped) or a kernel thread.
        if cmd.is_empty() {
            return false;
        }
        let cmd = String::from_utf8_lossy(&cmd);
        let own_name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        cmd.contains("wsync") || own_name.is_some_and(|n| cmd.contains(&n))
    }
    #[cfg(not(unix))]
    {
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
