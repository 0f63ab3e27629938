//! Backfill chunks in the state store, on SQLite and on PostgreSQL alike:
//! a chunk's lease is its claim, its state is read from its runs.

use chrono::{DateTime, Utc};

use super::testing::{manual_clock, stores_with};
use super::*;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn chunk_run(pipeline_id: &str, chunk: Option<ChunkRef>) -> NewRun<'_> {
    NewRun {
        pipeline_id,
        run_type: if chunk.is_some() {
            "backfill"
        } else {
            "manual"
        },
        dry_run: false,
        now: t0(),
        window: (None, None),
        interval: None,
        resumed_from: None,
        claim: None,
        claim_cut_off: None,
        chunk,
    }
}

fn outcome(state: RunState) -> RunOutcome {
    RunOutcome {
        state,
        counts: RunCounts {
            records_extracted: 10,
            batches_sent: 10,
            ..RunCounts::default()
        },
        files: serde_json::json!({}),
        error: (state != RunState::Success).then(|| "the warehouse refused".to_owned()),
        watermark: None,
    }
}

async fn three_chunks(store: &StateStore) -> i64 {
    let chunks: Vec<(String, String)> = ["1", "4", "7", "10"]
        .windows(2)
        .map(|w| (w[0].to_owned(), w[1].to_owned()))
        .collect();
    store
        .create_backfill(&NewBackfill {
            pipeline_id: "p",
            requested: ("1", "10"),
            chunks: &chunks,
            now: t0(),
        })
        .await
        .unwrap()
}

fn states(status: &BackfillStatus) -> Vec<ChunkState> {
    status.chunks.iter().map(|c| c.state).collect()
}

#[tokio::test]
async fn a_chunk_runs_once_under_its_own_lease_beside_the_pipelines_runs() {
    let (_clock, options) = manual_clock();
    for t in stores_with(options).await {
        let store = &t.store;
        let id = three_chunks(store).await;
        let open = store.claimable_chunks(None, 10).await.unwrap();
        assert_eq!(open.len(), 3, "{}", t.backend);
        assert_eq!((open[1].from.as_str(), open[1].until.as_str()), ("4", "7"));
        let c0 = open[0].id;
        // The pipeline's own run and a chunk's run hold different leases.
        let own = store.start_run(&chunk_run("p", None)).await.unwrap();
        let first = store.start_run(&chunk_run("p", Some(c0))).await.unwrap();
        let busy = store
            .start_run(&chunk_run("p", Some(c0)))
            .await
            .unwrap_err();
        assert!(matches!(busy, StateError::InProgress { .. }), "{busy}");
        let open = store.claimable_chunks(Some(id), 10).await.unwrap();
        assert_eq!(open.len(), 2, "a leased chunk is not offered");
        assert_eq!(
            states(&store.backfill(id).await.unwrap().unwrap()),
            [
                ChunkState::Running,
                ChunkState::Pending,
                ChunkState::Pending
            ]
        );
        // Starting another chunk leaves the running one alone (it is not
        // marked interrupted as a pipeline's stale run would be).
        let second = store
            .start_run(&chunk_run("p", Some(open[0].id)))
            .await
            .unwrap();
        assert_eq!(
            store.run(first).await.unwrap().unwrap().state,
            RunState::Running
        );
        store.checkpoint(first, "3").await.unwrap();
        store
            .finish_run(first, "p", t0(), &outcome(RunState::Success))
            .await
            .unwrap();
        store
            .finish_run(own, "p", t0(), &outcome(RunState::Success))
            .await
            .unwrap();
        let done = store
            .start_run(&chunk_run("p", Some(c0)))
            .await
            .unwrap_err();
        assert!(
            done.to_string().contains("chunk 0 of backfill") && done.to_string().contains("done"),
            "{}: {done}",
            t.backend
        );
        let status = store.backfill(id).await.unwrap().unwrap();
        assert_eq!(
            states(&status),
            [ChunkState::Done, ChunkState::Running, ChunkState::Pending]
        );
        assert_eq!(status.chunks[0].rows, 10);
        assert_eq!(
            status.chunks[0].holder.as_deref(),
            Some(leases::process_id())
        );
        assert!(!status.finished());
        assert_eq!(store.backfills(true, 100).await.unwrap().len(), 1);
        store
            .finish_run(second, "p", t0(), &outcome(RunState::Success))
            .await
            .unwrap();
        assert_eq!(store.claimable_chunks(None, 10).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_chunk_is_given_up_after_its_attempts_and_resumed_on_request() {
    let (_clock, options) = manual_clock();
    for t in stores_with(options).await {
        let store = &t.store;
        let id = three_chunks(store).await;
        let c2 = ChunkRef {
            backfill: id,
            chunk: 2,
        };
        for attempt in 0..CHUNK_ATTEMPTS {
            let run = store.start_run(&chunk_run("p", Some(c2))).await.unwrap();
            if attempt == 0 {
                store.checkpoint(run, "8").await.unwrap();
            }
            store
                .finish_run(run, "p", t0(), &outcome(RunState::Failed))
                .await
                .unwrap();
        }
        let status = store.backfill(id).await.unwrap().unwrap();
        assert_eq!(status.chunks[2].state, ChunkState::Failed, "{}", t.backend);
        assert_eq!(status.chunks[2].failed_attempts, CHUNK_ATTEMPTS);
        assert_eq!(
            status.chunks[2].error.as_deref(),
            Some("the warehouse refused")
        );
        let open = store.claimable_chunks(Some(id), 10).await.unwrap();
        assert_eq!(open.iter().map(|c| c.id.chunk).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(store.retry_backfill(id).await.unwrap(), 3);
        let open = store.claimable_chunks(Some(id), 10).await.unwrap();
        assert_eq!(open.len(), 3, "{}", t.backend);
        // A chunk whose last run left no checkpoint starts from its bound.
        assert_eq!(store.chunk_resume_point(open[2].id).await.unwrap(), None);
        let c1 = open[1].id;
        let run = store.start_run(&chunk_run("p", Some(c1))).await.unwrap();
        store.checkpoint(run, "5").await.unwrap();
        store
            .finish_run(run, "p", t0(), &outcome(RunState::Interrupted))
            .await
            .unwrap();
        assert_eq!(
            store.chunk_resume_point(c1).await.unwrap(),
            Some(ResumePoint {
                run_id: run,
                checkpoint: "5".into()
            }),
            "an interrupted chunk resumes from its checkpoint"
        );
        let status = store.backfill(id).await.unwrap().unwrap();
        assert_eq!(status.chunks[1].state, ChunkState::Pending);
        assert_eq!(
            status.chunks[1].failed_attempts, 0,
            "interrupted is no attempt"
        );
    }
}

#[tokio::test]
async fn a_cancelled_backfill_starts_no_chunk_and_an_expired_chunk_lease_is_fenced() {
    let (clock, options) = manual_clock();
    for t in stores_with(options).await {
        let store = &t.store;
        let id = three_chunks(store).await;
        let c0 = ChunkRef {
            backfill: id,
            chunk: 0,
        };
        let stalled = store.start_run(&chunk_run("p", Some(c0))).await.unwrap();
        let orphan = store
            .start_run(&chunk_run(
                "p",
                Some(ChunkRef {
                    backfill: id,
                    chunk: 2,
                }),
            ))
            .await
            .unwrap();
        clock.advance(chrono::Duration::hours(1));
        // The stalled holder's lease expired: the chunk is offered again and
        // taken over; the stalled run can commit nothing more.
        assert_eq!(store.claimable_chunks(Some(id), 1).await.unwrap()[0].id, c0);
        let taken = store.start_run(&chunk_run("p", Some(c0))).await.unwrap();
        assert_eq!(
            store.run(stalled).await.unwrap().unwrap().state,
            RunState::Interrupted,
            "{}",
            t.backend
        );
        assert!(matches!(
            store.checkpoint(stalled, "2").await,
            Err(StateError::LeaseLost { .. })
        ));
        assert!(store.cancel_backfill(id, t0()).await.unwrap());
        assert!(!store.cancel_backfill(id, t0()).await.unwrap());
        // The chunk whose holder died is never taken over now: its record
        // ends interrupted; the live one runs on.
        assert_eq!(
            store.run(orphan).await.unwrap().unwrap().state,
            RunState::Interrupted
        );
        assert_eq!(
            store.run(taken).await.unwrap().unwrap().state,
            RunState::Running
        );
        assert!(store.claimable_chunks(None, 10).await.unwrap().is_empty());
        let c1 = ChunkRef {
            backfill: id,
            chunk: 1,
        };
        let refused = store
            .start_run(&chunk_run("p", Some(c1)))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("cancelled"), "{refused}");
        // The running chunk finishes; the rest are cancelled.
        store
            .finish_run(taken, "p", t0(), &outcome(RunState::Success))
            .await
            .unwrap();
        let status = store.backfill(id).await.unwrap().unwrap();
        assert_eq!(
            states(&status),
            [
                ChunkState::Done,
                ChunkState::Cancelled,
                ChunkState::Cancelled
            ]
        );
        assert!(status.finished());
        let unknown = ChunkRef {
            backfill: id + 100,
            chunk: 0,
        };
        let err = store
            .start_run(&chunk_run("p", Some(unknown)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
