//! What a running sink or restore shows the service's HTTP API, updated as it works: assigned
//! partitions, positions, lag, recovery point age and totals. Metrics say the same per topic across
//! the process; this says it per pipeline.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// A shared, always-current view of one run; cheap to update from the hot path's status ticks.
#[derive(Debug, Default)]
pub struct Live(Mutex<LiveStatus>);

/// One moment of a run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LiveStatus {
    /// Partitions this run works on, in topic and partition order.
    pub partitions: Vec<LivePartition>,
    /// Records in Kafka not yet durable in the archive (sink), or archived but not yet restored
    /// (restore). `None` while a partition's log end is not known yet (the sink learns it from
    /// the consumer's statistics, every 5 seconds).
    pub lag_records: Option<i64>,
    /// Sink: seconds since the oldest record not yet durable was consumed (0 when all is durable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_point_age_seconds: Option<f64>,
    /// Records made durable (sink) or produced (restore) by this run.
    pub records: u64,
    /// `records` per second over the last [`RATE_WINDOW_MS`] (sink: in uploaded files, so 0
    /// while files are still open) or, for a restore, since it started; `None` before the first
    /// second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_per_second: Option<f64>,
    /// Sink: records read from Kafka by this run, archived or not yet (a record read again after
    /// a seek counts again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_records: Option<u64>,
    /// Sink: `read_records` per second over the last [`RATE_WINDOW_MS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_records_per_second: Option<f64>,
    /// Bytes of data files written (sink) or key and value bytes produced (restore).
    pub bytes: u64,
    /// Sink: data files written by this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Restore: records the window holds across partitions (follow mode: so far).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned_records: Option<u64>,
    /// Restore: every partition reached the end of its window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<bool>,
    /// How many times the run reported; 0 until it has connected and looked around.
    #[serde(skip)]
    pub updates: u64,
}

/// One partition of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LivePartition {
    pub topic: String,
    pub partition: i32,
    /// Restore: where the partition's records go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_topic: Option<String>,
    /// Sink: the end of the archived chain. Restore: the next source offset to restore.
    pub position: i64,
    /// Sink: the partition's log end in Kafka, once known. Restore: the end of the window.
    pub end: Option<i64>,
    /// `end - position`, when the end is known.
    pub lag: Option<i64>,
}

/// How far back a rate looks: long enough to smooth the sink's one-second ticks, short enough to
/// show a stall within seconds.
pub const RATE_WINDOW_MS: u64 = 10_000;

/// Per-second rates of `N` growing counters over the last [`RATE_WINDOW_MS`], from samples a run
/// takes as it reports.
#[derive(Debug, Default)]
pub struct Rates<const N: usize> {
    samples: VecDeque<(u64, [u64; N])>,
}

impl<const N: usize> Rates<N> {
    /// The counters of the newest sample.
    pub fn latest(&self) -> Option<[u64; N]> {
        self.samples.back().map(|(_, counters)| *counters)
    }

    /// Note the counters at `now_ms` and return their rates since the oldest sample still inside
    /// the window; `None` until some time has passed since the first sample.
    pub fn sample(&mut self, now_ms: u64, counters: [u64; N]) -> Option<[f64; N]> {
        while self.samples.len() > 1 && now_ms.saturating_sub(self.samples[1].0) >= RATE_WINDOW_MS {
            self.samples.pop_front();
        }
        self.samples.push_back((now_ms, counters));
        let (then, old) = self.samples.front()?;
        let secs = now_ms.saturating_sub(*then) as f64 / 1000.0;
        if secs <= 0.0 {
            return None;
        }
        Some(std::array::from_fn(|i| {
            counters[i].saturating_sub(old[i]) as f64 / secs
        }))
    }
}

impl Live {
    pub fn new() -> Arc<Live> {
        Arc::new(Live::default())
    }

    pub fn update(&self, f: impl FnOnce(&mut LiveStatus)) {
        let mut status = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut status);
        status.updates += 1;
    }

    pub fn snapshot(&self) -> LiveStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_counts_over_the_last_window_only() {
        let mut rates = Rates::<2>::default();
        assert_eq!(rates.sample(0, [0, 0]), None);
        assert_eq!(rates.sample(1_000, [100, 0]), Some([100.0, 0.0]));
        for s in 2..=10 {
            rates.sample(s * 1_000, [100 * s, 0]);
        }
        // A burst in the archived counter; the oldest samples leave the window.
        assert_eq!(rates.sample(11_000, [1_100, 500]), Some([100.0, 50.0]));
        // Nothing read for 10 s: the read rate falls to 0, the burst has left the window.
        for s in 12..=21 {
            rates.sample(s * 1_000, [1_100, 500]);
        }
        assert_eq!(rates.sample(22_000, [1_100, 500]), Some([0.0, 0.0]));
        // The same instant twice still answers (over the window, not over zero seconds).
        assert_eq!(rates.sample(22_000, [1_100, 500]), Some([0.0, 0.0]));
    }
}
