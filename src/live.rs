//! What a running sink or restore shows the service's HTTP API, updated as it works: assigned
//! partitions, positions, lag, recovery point age and totals. Metrics say the same per topic across
//! the process; this says it per pipeline.

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
