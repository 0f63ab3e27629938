//! Progress of a long command: a live line (rows read, batches acknowledged,
//! rate) when stderr is a terminal, a `Progress.` log line every 10 seconds
//! when it is not (a file, a pipe, journald). No ETA: counting the model's rows
//! first would cost a second full scan on most warehouses.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::telemetry::events;
use crate::telemetry::progress::{set_active_bar, RunProgress};

/// A running progress display; stops when dropped.
pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Start showing `counters` for `what` (e.g. "run demo_users").
    pub fn start(counters: Arc<RunProgress>, what: &str) -> Self {
        let started = Instant::now();
        let rate = move |rows: u64| {
            let secs = started.elapsed().as_secs_f64();
            if secs > 0.0 {
                (rows as f64 / secs) as u64
            } else {
                0
            }
        };
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            set_active_bar(Some(bar.clone()));
            let shown = bar.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    let (rows, batches) = counters.get();
                    shown.set_message(format!(
                        "{rows} rows read · {batches} batches acknowledged · {} rows/s",
                        rate(rows)
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            Self {
                bar: Some(bar),
                ticker,
            }
        } else {
            let ticker = tokio::spawn(async move {
                let mut last = (0, 0);
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let now = counters.get();
                    if now != last {
                        events::RunProgressed {
                            rows: now.0,
                            batches: now.1,
                            rows_per_sec: rate(now.0),
                        }
                        .emit();
                        last = now;
                    }
                }
            });
            Self { bar: None, ticker }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.abort();
        if let Some(bar) = self.bar.take() {
            set_active_bar(None);
            bar.finish_and_clear();
        }
    }
}
