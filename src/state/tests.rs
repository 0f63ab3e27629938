//! The state store's behaviour, on SQLite and on PostgreSQL alike.

use chrono::{DateTime, Utc};

use super::testing::{manual_clock, stores, stores_with};
use super::*;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn new_run(pipeline_id: &str, window: (Option<String>, Option<String>)) -> NewRun<'_> {
    NewRun {
        pipeline_id,
        run_type: "manual",
        dry_run: false,
        now: t0(),
        window,
        interval: None,
        resumed_from: None,
        claim: None,
        claim_cut_off: None,
        chunk: None,
    }
}

fn success(watermark: Option<&str>) -> RunOutcome {
    RunOutcome {
        state: RunState::Success,
        counts: RunCounts {
            records_extracted: 5,
            batches_sent: 4,
            rows_unchanged: 3,
            ..RunCounts::default()
        },
        files: serde_json::json!({"rejected": "x.jsonl"}),
        error: None,
        watermark: watermark.map(str::to_owned),
    }
}

#[tokio::test]
async fn run_lifecycle_and_watermark_in_one_transaction() {
    let (clock, options) = manual_clock();
    for t in stores_with(options).await {
        let store = &t.store;
        let stale = store.start_run(&new_run("p", (None, None))).await.unwrap();
        // Our own live run holds the pipeline.
        let busy = store
            .start_run(&new_run("p", (None, None)))
            .await
            .unwrap_err();
        assert!(
            busy.to_string().contains("already in progress (run 1"),
            "{}: {busy}",
            t.backend
        );
        store.checkpoint(stale, "a0").await.unwrap();
        assert_eq!(
            store.resume_point("p").await.unwrap(),
            Some(ResumePoint {
                run_id: stale,
                checkpoint: "a0".into()
            })
        );
        // Its holder stopped renewing: the lease expires and is taken over.
        clock.advance(chrono::Duration::hours(2));
        let id = store
            .start_run(&new_run("p", (Some("a".into()), Some("b".into()))))
            .await
            .unwrap();
        assert_eq!(
            store.run(stale).await.unwrap().unwrap().state,
            RunState::Interrupted
        );
        store
            .finish_run(id, "p", t0(), &success(Some("b")))
            .await
            .unwrap();
        assert_eq!(store.watermark("p").await.unwrap().as_deref(), Some("b"));
        assert_eq!(store.resume_point("p").await.unwrap(), None);
        assert_eq!(store.lease_holder("p").await.unwrap(), None);
        let runs = store.runs(Some("p"), 10, 0).await.unwrap();
        assert_eq!(runs.len(), 2, "{}", t.backend);
        assert_eq!(runs[0].id, id);
        assert_eq!(runs[0].state, RunState::Success);
        assert_eq!(runs[0].counts.records_extracted, 5);
        assert_eq!(runs[0].counts.rows_unchanged, 3);
        assert_eq!(runs[0].data_interval_end.as_deref(), Some("b"));
        assert_eq!(runs[0].files["rejected"], "x.jsonl");
        assert!(!runs[0].dry_run);
        assert_eq!(store.count_runs(Some("p")).await.unwrap(), 2);
        assert_eq!(store.count_runs(None).await.unwrap(), 2);
        assert!(store.runs(Some("other"), 10, 0).await.unwrap().is_empty());
        assert_eq!(store.last_success("p").await.unwrap(), Some(t0()));
        // Reopening applies no migration twice.
        let again = StateStore::open(&t.url).await.unwrap();
        assert_eq!(again.runs(None, 10, 0).await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn stuck_lease_of_this_process_is_released_and_its_run_failed() {
    for t in stores().await {
        let store = &t.store;
        let run = NewRun {
            run_type: "scheduled",
            ..new_run("p", (None, None))
        };
        assert_eq!(store.release_own_lease("p", t0(), "x").await.unwrap(), None);
        // A run whose finish never came (a panic, SQLITE_BUSY at finish_run).
        let stuck = store.start_run(&run).await.unwrap();
        store.checkpoint(stuck, "c1").await.unwrap();
        let holder = store.lease_holder("p").await.unwrap().unwrap();
        assert!(holder.own, "{holder:?}");
        assert_eq!(holder.run_id, stuck);
        assert!(store.start_run(&run).await.is_err(), "still held");
        let released = store
            .release_own_lease("p", t0(), "the run panicked")
            .await
            .unwrap();
        assert_eq!(released, Some(stuck));
        assert_eq!(store.lease_holder("p").await.unwrap(), None);
        let record = store.run(stuck).await.unwrap().unwrap();
        assert_eq!(record.state, RunState::Failed);
        assert_eq!(record.error.as_deref(), Some("the run panicked"));
        // The checkpoint survives for the next run to resume from.
        assert_eq!(
            store.resume_point("p").await.unwrap(),
            Some(ResumePoint {
                run_id: stuck,
                checkpoint: "c1".into()
            })
        );
        // Released means fenced: the stuck run can write nothing more.
        assert!(matches!(
            store.checkpoint(stuck, "c2").await,
            Err(StateError::LeaseLost { .. })
        ));
        assert!(store.start_run(&run).await.is_ok(), "free again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_run_starts_do_not_fail_with_database_locked() {
    for t in stores().await {
        let ids: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
        let starts = ids.iter().map(|id| {
            let store = t.store.clone();
            async move { store.start_run(&new_run(id, (None, None))).await }
        });
        for result in futures::future::join_all(starts).await {
            result.unwrap();
        }
        assert_eq!(t.store.runs(None, 20, 0).await.unwrap().len(), 12);
    }
}

/// Two daemons racing for one pipeline: exactly one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_starts_of_one_pipeline_let_exactly_one_run() {
    for t in stores().await {
        let other = StateStore::open(&t.url).await.unwrap();
        let stores = [t.store.clone(), other.clone(), t.store.clone(), other];
        let starts = stores
            .iter()
            .map(|s| async move { s.start_run(&new_run("solo", (None, None))).await });
        let results = futures::future::join_all(starts).await;
        let started = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(started, 1, "{}: {results:?}", t.backend);
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(r, StateError::InProgress { .. }),
                "{}: {r}",
                t.backend
            );
        }
    }
}

/// A holder that stalled past its lease cannot commit once another took over.
#[tokio::test]
async fn fencing_stops_a_stalled_holder_from_committing() {
    let (clock, options) = manual_clock();
    for t in stores_with(options).await {
        let store = &t.store;
        let first = store.start_run(&new_run("f", (None, None))).await.unwrap();
        let token = store
            .lease_holder("f")
            .await
            .unwrap()
            .unwrap()
            .fencing_token;
        store.checkpoint(first, "10").await.unwrap();
        // The first holder stalls (no heartbeat) past the lease's life.
        clock.advance(chrono::Duration::hours(2));
        assert_eq!(store.lease_holder("f").await.unwrap(), None, "expired");
        let second = store.start_run(&new_run("f", (None, None))).await.unwrap();
        let lease = store.lease_holder("f").await.unwrap().unwrap();
        assert_eq!(lease.fencing_token, token + 1, "{}", t.backend);
        assert_eq!(lease.run_id, second);
        // The stalled holder comes back: nothing it writes lands.
        let err = store.checkpoint(first, "20").await.unwrap_err();
        assert!(
            matches!(err, StateError::LeaseLost { run_id, token: tk, .. } if run_id == first && tk == token),
            "{}: {err}",
            t.backend
        );
        let err = store
            .finish_run(first, "f", t0(), &success(Some("stale")))
            .await
            .unwrap_err();
        assert!(matches!(err, StateError::LeaseLost { .. }), "{err}");
        assert_eq!(store.watermark("f").await.unwrap(), None);
        let stale = store.run(first).await.unwrap().unwrap();
        assert_eq!(stale.state, RunState::Interrupted);
        assert_eq!(stale.checkpoint.as_deref(), Some("10"));
        // The new holder commits normally.
        store
            .finish_run(second, "f", t0(), &success(Some("30")))
            .await
            .unwrap();
        assert_eq!(store.watermark("f").await.unwrap().as_deref(), Some("30"));
    }
}

/// A scheduled run two daemons both found due starts once.
#[tokio::test]
async fn a_claimed_scheduled_run_starts_once() {
    for t in stores().await {
        let store = &t.store;
        let run = NewRun {
            run_type: "scheduled",
            claim: Some("0:2024-01-01T00:00:00Z"),
            claim_cut_off: None,
            chunk: None,
            ..new_run("s", (None, None))
        };
        let id = store.start_run(&run).await.unwrap();
        store
            .finish_run(id, "s", t0(), &success(None))
            .await
            .unwrap();
        let err = store.start_run(&run).await.unwrap_err();
        assert!(
            matches!(err, StateError::AlreadyClaimed { .. }),
            "{}: {err}",
            t.backend
        );
        // Refused whole: no run record and the lease free.
        assert_eq!(store.runs(Some("s"), 10, 0).await.unwrap().len(), 1);
        assert_eq!(store.lease_holder("s").await.unwrap(), None);
        let history = store.schedule_history("s").await.unwrap();
        assert_eq!(history.last_scheduled_id, id);
        assert_eq!(history.last_scheduled_state, Some(RunState::Success));
        // The next due run has another claim.
        let next = NewRun {
            claim: Some("1:2024-01-01T01:00:00Z"),
            claim_cut_off: None,
            chunk: None,
            ..run
        };
        assert!(store.start_run(&next).await.is_ok());
    }
}

/// A run the plan saw cut off (running, its lease expired under load) that
/// committed its fire before another daemon took the lease over: the resume
/// the stale plan asked for does not start; a run really cut off is resumed.
#[tokio::test]
async fn a_resume_planned_from_a_stale_cut_off_does_not_start() {
    let (clock, options) = manual_clock();
    for t in stores_with(options).await {
        let store = &t.store;
        let scheduled = |claim| NewRun {
            run_type: "scheduled",
            claim: Some(claim),
            ..new_run("c", (None, None))
        };
        let first = store.start_run(&scheduled("after:0")).await.unwrap();
        // Another daemon read it `running` (its lease looked expired) and
        // planned a resume; meanwhile it committed.
        store
            .finish_run(first, "c", t0(), &success(None))
            .await
            .unwrap();
        let claim = format!("after:{first}");
        let resume = NewRun {
            claim_cut_off: Some(first),
            ..scheduled(&claim)
        };
        let err = store.start_run(&resume).await.unwrap_err();
        assert!(
            matches!(err, StateError::AlreadyClaimed { .. }),
            "{}: {err}",
            t.backend
        );
        assert_eq!(store.runs(Some("c"), 10, 0).await.unwrap().len(), 1);
        // A run that really was cut off (its holder stalled past the lease)
        // is resumed, and ends interrupted.
        let second = store.start_run(&scheduled(&claim)).await.unwrap();
        clock.advance(chrono::Duration::hours(1));
        let claim = format!("after:{second}");
        let resumed = store
            .start_run(&NewRun {
                claim_cut_off: Some(second),
                ..scheduled(&claim)
            })
            .await
            .unwrap();
        assert_eq!(
            store.run(second).await.unwrap().unwrap().state,
            RunState::Interrupted,
            "{}",
            t.backend
        );
        assert!(resumed > second);
    }
}

#[tokio::test]
async fn pause_daemons_and_feed_budget() {
    let (clock, options) = manual_clock();
    for t in stores_with(options).await {
        let store = &t.store;
        assert!(!store.paused("p").await.unwrap());
        store.set_paused("p", true, t0()).await.unwrap();
        assert!(store.paused("p").await.unwrap());
        store.set_paused("p", false, t0()).await.unwrap();
        assert!(!store.paused("p").await.unwrap());

        let me = store.register_daemon(3).await.unwrap();
        store.start_run(&new_run("d", (None, None))).await.unwrap();
        let daemons = store.daemons().await.unwrap();
        assert_eq!(daemons.len(), 1, "{}", t.backend);
        assert_eq!(daemons[0].id, me.id);
        assert!(daemons[0].alive && daemons[0].own);
        assert_eq!(daemons[0].runs_held, 1);
        assert_eq!(daemons[0].max_concurrent_runs, 3);
        store.daemon_stopped().await.unwrap();
        assert!(!store.daemons().await.unwrap()[0].alive);

        let ttl = std::time::Duration::from_secs(10);
        assert_eq!(store.feed_senders("feed-a", "me", ttl).await.unwrap(), 1);
        // Another sender's row, as another daemon would renew it.
        sqlx::query(
            "INSERT INTO feed_senders (feed, holder, expires_at) VALUES ('feed-a', 'x', $1)",
        )
        .bind(millis(clock.now()) + 5_000)
        .execute(&store.pool)
        .await
        .unwrap();
        assert_eq!(store.feed_senders("feed-a", "me", ttl).await.unwrap(), 2);
        clock.advance(chrono::Duration::seconds(6));
        assert_eq!(store.feed_senders("feed-a", "me", ttl).await.unwrap(), 1);
        store.leave_feed("feed-a", "me").await.unwrap();

        assert_eq!(store.learned_rate("feed-a").await.unwrap(), None);
        let learned = LearnedRate {
            rate: 268.5,
            learned_at: t0(),
        };
        store.set_learned_rate("feed-a", learned).await.unwrap();
        assert_eq!(store.learned_rate("feed-a").await.unwrap(), Some(learned));
    }
}
