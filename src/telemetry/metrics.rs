//! Prometheus metrics: one registry per process, fed by finished runs (per
//! pipeline) and by every Events API attempt (per feed and status), and
//! rendered in the OpenMetrics text format for `GET /metrics`.
//!
//! Gauges that describe stored state (watermark lag, last success) are set from
//! the state store when scraped, so they are right after a restart too.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::sink::delivery::RequestObserver;
use crate::state::RunRecord;

type Labels = Vec<(&'static str, String)>;

/// Seconds-valued counter.
type SecondsCounter = Counter<f64, AtomicU64>;
/// Float gauge.
type FloatGauge = Gauge<f64, AtomicU64>;

/// The process's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    runs: Family<Labels, Counter>,
    rows_extracted: Family<Labels, Counter>,
    rows_sent: Family<Labels, Counter>,
    rows_rejected: Family<Labels, Counter>,
    rows_skipped: Family<Labels, Counter>,
    diff_rows: Family<Labels, Counter>,
    batches_sent: Family<Labels, Counter>,
    events: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    responses_429: Family<Labels, Counter>,
    rate_limit_wait: Family<Labels, SecondsCounter>,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    watermark_lag: Family<Labels, FloatGauge>,
    last_success: Family<Labels, FloatGauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 5 ms to ~80 s: an Events API request, from fast to a timeout.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 15,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every wsync metric registered.
    pub fn new() -> Self {
        let runs = Family::default();
        let rows_extracted = Family::default();
        let rows_sent = Family::default();
        let rows_rejected = Family::default();
        let rows_skipped = Family::default();
        let diff_rows = Family::default();
        let batches_sent = Family::default();
        let events = Family::default();
        let retries = Family::default();
        let responses_429 = Family::default();
        let rate_limit_wait = Family::default();
        let requests = Family::default();
        let latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let watermark_lag = Family::default();
        let last_success = Family::default();
        let mut r = Registry::with_prefix("wsync");
        r.register("runs", "Finished runs by pipeline and state", runs.clone());
        r.register(
            "rows_extracted",
            "Rows read from the warehouse",
            rows_extracted.clone(),
        );
        r.register(
            "rows_sent",
            "Rows mapped into batches by runs that send (not dry runs)",
            rows_sent.clone(),
        );
        r.register(
            "rows_rejected",
            "Rows rejected before sending",
            rows_rejected.clone(),
        );
        r.register(
            "rows_skipped",
            "Rows skipped by input protection (only_update: no existing profile)",
            rows_skipped.clone(),
        );
        r.register(
            "diff_rows",
            "Rows of diff pipelines by outcome (new, changed, unchanged: not sent, unset)",
            diff_rows.clone(),
        );
        r.register(
            "batches_sent",
            "Batches acknowledged by the Events API",
            batches_sent.clone(),
        );
        r.register(
            "events",
            "Events mapped by event pipelines, by the endpoint they go to (bulkevents or historical)",
            events.clone(),
        );
        r.register(
            "retries",
            "Requests re-sent after a retryable failure",
            retries.clone(),
        );
        r.register(
            "responses_429",
            "429 answers from the Events API",
            responses_429.clone(),
        );
        r.register(
            "rate_limit_wait_seconds",
            "Time spent waiting on rate limits",
            rate_limit_wait.clone(),
        );
        r.register(
            "requests",
            "Events API requests by feed and HTTP status (status=\"none\": no answer)",
            requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Events API request latency by feed",
            latency.clone(),
        );
        r.register(
            "watermark_lag_seconds",
            "How far a pipeline's watermark is behind now",
            watermark_lag.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "End of the pipeline's last successful run (Unix time)",
            last_success.clone(),
        );
        Self {
            registry: Mutex::new(r),
            runs,
            rows_extracted,
            rows_sent,
            rows_rejected,
            rows_skipped,
            diff_rows,
            batches_sent,
            events,
            retries,
            responses_429,
            rate_limit_wait,
            requests,
            latency,
            watermark_lag,
            last_success,
        }
    }

    /// Count an event pipeline run's events by endpoint (dry runs too: they
    /// are what a run would send).
    pub fn events_mapped(&self, pipeline: &str, events: crate::mapping::EventCounts) {
        for (endpoint, n) in [
            ("bulkevents", events.recent),
            ("historical", events.historical),
        ] {
            self.events
                .get_or_create(&vec![
                    ("pipeline", pipeline.to_owned()),
                    ("endpoint", endpoint.to_owned()),
                ])
                .inc_by(n);
        }
    }

    /// Count a finished run.
    pub fn run_finished(&self, record: &RunRecord, rows_skipped: u64) {
        let pipeline = || vec![("pipeline", record.pipeline_id.clone())];
        let mut labels = pipeline();
        labels.push(("state", record.state.as_str().to_owned()));
        self.runs.get_or_create(&labels).inc();
        let c = &record.counts;
        self.rows_extracted
            .get_or_create(&pipeline())
            .inc_by(c.records_extracted);
        if !record.dry_run {
            self.rows_sent
                .get_or_create(&pipeline())
                .inc_by(c.records_mapped.saturating_sub(c.rows_unchanged));
            for (outcome, n) in [
                ("new", c.rows_new),
                ("changed", c.rows_changed),
                ("unchanged", c.rows_unchanged),
                ("unset", c.rows_unset),
            ] {
                if n > 0 {
                    let mut labels = pipeline();
                    labels.push(("outcome", outcome.to_owned()));
                    self.diff_rows.get_or_create(&labels).inc_by(n);
                }
            }
        }
        self.rows_rejected
            .get_or_create(&pipeline())
            .inc_by(c.rows_rejected);
        self.rows_skipped
            .get_or_create(&pipeline())
            .inc_by(rows_skipped);
        self.batches_sent
            .get_or_create(&pipeline())
            .inc_by(c.batches_sent);
        self.retries.get_or_create(&pipeline()).inc_by(c.retries);
        self.responses_429
            .get_or_create(&pipeline())
            .inc_by(c.responses_429);
        self.rate_limit_wait
            .get_or_create(&pipeline())
            .inc_by(c.rate_limit_wait_ms as f64 / 1000.0);
    }

    /// Set the state-derived gauges of one pipeline.
    pub fn set_pipeline_gauges(
        &self,
        pipeline: &str,
        watermark_lag_secs: Option<i64>,
        last_success: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let labels = vec![("pipeline", pipeline.to_owned())];
        if let Some(lag) = watermark_lag_secs {
            self.watermark_lag.get_or_create(&labels).set(lag as f64);
        }
        if let Some(t) = last_success {
            self.last_success
                .get_or_create(&labels)
                .set(t.timestamp_millis() as f64 / 1000.0);
        }
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

impl RequestObserver for Metrics {
    fn observe(&self, feed: &str, status: Option<u16>, elapsed: Duration) {
        let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        self.requests
            .get_or_create(&vec![("feed", feed.to_owned()), ("status", status)])
            .inc();
        self.latency
            .get_or_create(&vec![("feed", feed.to_owned())])
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels_and_a_histogram() {
        let m = Metrics::new();
        m.observe("main", Some(202), Duration::from_millis(12));
        m.observe("main", Some(429), Duration::from_millis(3));
        m.observe("main", None, Duration::from_secs(30));
        m.set_pipeline_gauges("p", Some(90), None);
        let text = m.render();
        assert!(
            text.contains("wsync_requests_total{feed=\"main\",status=\"202\"} 1"),
            "{text}"
        );
        assert!(text.contains("wsync_requests_total{feed=\"main\",status=\"none\"} 1"));
        assert!(text.contains("wsync_request_duration_seconds_count{feed=\"main\"} 3"));
        assert!(text.contains("wsync_watermark_lag_seconds{pipeline=\"p\"} 90"));
        assert!(text.ends_with("# EOF\n"));
    }
}
