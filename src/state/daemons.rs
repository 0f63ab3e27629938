//! The daemons sharing a state store: each registers when it starts, beats
//! with its leases' heartbeat, and says when it stops, so `wsync status` and
//! the API can show who is running what.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::leases::this_process;
use super::{millis, to_u64, StateError, StateStore};

/// This daemon, as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonRegistration {
    /// Its id (`host:pid:instance`), the holder name on its leases.
    pub id: String,
}

/// A daemon as `wsync status` and the API show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DaemonInfo {
    /// `host:pid:instance`.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: i64,
    /// wsync version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it was last heard from.
    pub heartbeat_at: DateTime<Utc>,
    /// Its heartbeat is recent (within two lease lifetimes) and it has not stopped.
    pub alive: bool,
    /// Pipeline leases it holds now.
    pub runs_held: u64,
    /// Its `[daemon] max_concurrent_runs`.
    pub max_concurrent_runs: u64,
    /// This very process.
    pub own: bool,
}

impl StateStore {
    /// Register this process as a daemon (its heartbeat rides on the lease
    /// heartbeat from now on).
    pub async fn register_daemon(
        &self,
        max_concurrent_runs: usize,
    ) -> Result<DaemonRegistration, StateError> {
        let me = this_process();
        let now = self.options.clock.now();
        sqlx::query(
            "INSERT INTO daemons (id, host, pid, version, started_at, heartbeat_at, \
             max_concurrent_runs) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE \
             SET heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
        )
        .bind(&me.id)
        .bind(&me.host)
        .bind(me.pid)
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(now.to_rfc3339())
        .bind(millis(now))
        .bind(i64::try_from(max_concurrent_runs).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        *leases_lock(&self.leases.daemon) = Some(me.id.clone());
        self.ensure_heartbeat();
        Ok(DaemonRegistration { id: me.id.clone() })
    }

    /// Record that this daemon stopped (a clean shutdown).
    pub async fn daemon_stopped(&self) -> Result<(), StateError> {
        let me = this_process();
        *leases_lock(&self.leases.daemon) = None;
        sqlx::query("UPDATE daemons SET stopped_at = $1 WHERE id = $2")
            .bind(self.options.clock.now().to_rfc3339())
            .bind(&me.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The daemons heard from within the last day, newest heartbeat first.
    pub async fn daemons(&self) -> Result<Vec<DaemonInfo>, StateError> {
        let now = self.options.clock.now();
        let day_ago = millis(now) - 86_400_000;
        let live_after =
            millis(now) - 2 * i64::try_from(self.options.lease_ttl.as_millis()).unwrap_or(0);
        let rows = sqlx::query(
            "SELECT d.id, d.host, d.pid, d.version, d.started_at, d.heartbeat_at, \
             d.max_concurrent_runs, d.stopped_at, \
             (SELECT COUNT(*) FROM pipeline_leases l WHERE l.holder = d.id AND l.expires_at > $1) \
               AS runs_held \
             FROM daemons d WHERE d.heartbeat_at > $2 ORDER BY d.heartbeat_at DESC",
        )
        .bind(millis(now))
        .bind(day_ago)
        .fetch_all(&self.pool)
        .await?;
        let me = this_process();
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let beat: i64 = row.try_get("heartbeat_at")?;
                let stopped: Option<String> = row.try_get("stopped_at")?;
                Ok(DaemonInfo {
                    own: id == me.id,
                    host: row.try_get("host")?,
                    pid: row.try_get("pid")?,
                    version: row.try_get("version")?,
                    started_at: super::parse_time(row.try_get("started_at")?),
                    heartbeat_at: DateTime::from_timestamp_millis(beat)
                        .unwrap_or(DateTime::UNIX_EPOCH),
                    alive: stopped.is_none() && beat > live_after,
                    runs_held: to_u64(row.try_get("runs_held")?),
                    max_concurrent_runs: to_u64(row.try_get("max_concurrent_runs")?),
                    id,
                })
            })
            .collect()
    }
}

/// One heartbeat of daemon `id`.
pub(super) async fn beat(
    store: &StateStore,
    id: &str,
    now: DateTime<Utc>,
) -> Result<(), StateError> {
    sqlx::query("UPDATE daemons SET heartbeat_at = $1 WHERE id = $2")
        .bind(millis(now))
        .bind(id)
        .execute(&store.pool)
        .await?;
    Ok(())
}

fn leases_lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
