//! What a running sink shows: the consumer's context (partitions the group assigned and revoked,
//! log ends from librdkafka's statistics), the gauges (buffer, lag, recovery point age per topic),
//! the service's live status and the status line.
//!
//! Invariant: observation reads the sink's state and never changes it. What it shows is true from
//! the first second: a partition counts from its assignment (its chain opens then, not at its
//! first record), its lag from the watermark read when it opened, and records read from Kafka are
//! told apart from records archived (in uploaded files, which may stay open for minutes).

use std::collections::{BTreeMap, HashMap};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;

use super::Sink;

/// Partitions the group handed to this worker or took away from it, noted by the rebalance
/// callbacks for the main loop: it opens the chains of the assigned ones (`open_assigned`) and
/// flushes what it buffered for the revoked ones (`release_revoked`).
#[derive(Default)]
pub(super) struct SinkContext {
    pub(super) assigned: std::sync::Mutex<Vec<(String, i32)>>,
    pub(super) revoked: std::sync::Mutex<Vec<(String, i32)>>,
    /// Last stable offset of each partition, from librdkafka's periodic statistics (for lag).
    pub(super) log_end: std::sync::Mutex<HashMap<(String, i32), i64>>,
    /// Whether the brokers answer: an outage is said once when it starts and once when it ends.
    connection: crate::kafka::logs::Connection,
}

impl rdkafka::client::ClientContext for SinkContext {
    crate::kafka::answer_oauth_token_refresh!();

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.connection.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition (how a snapshot knows it is done) is a debug line.
        self.connection.error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.connection.stats(&statistics);
        let mut ends = self.log_end.lock().unwrap_or_else(|e| e.into_inner());
        for (name, topic) in statistics.topics {
            for (id, partition) in topic.partitions {
                if id >= 0 && partition.ls_offset >= 0 {
                    ends.insert((name.clone(), id), partition.ls_offset);
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for SinkContext {
    fn pre_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            let gone: Vec<(String, i32)> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            // Assigned and taken away before the loop saw it: there is nothing to open.
            self.assigned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|id| !gone.contains(id));
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            revoked.extend(gone);
        }
    }

    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Assign(tpl) = rebalance {
            let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
            assigned.extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition())),
            );
        }
    }
}

impl Sink<'_> {
    /// Update the gauges (buffer, lag, recovery point age per topic), the live status and, every
    /// second, the status line when asked to.
    pub(super) fn observe(&mut self) {
        let now = self.now_ms();
        metrics::gauge!(crate::metrics::SINK_BUFFERED_BYTES).set(self.buffered() as f64);
        metrics::gauge!(crate::metrics::SINK_UPLOADS_IN_FLIGHT).set(self.flights.len() as f64);
        let ends = self
            .consumer
            .context()
            .log_end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut per_topic: BTreeMap<&str, (i64, u64)> = BTreeMap::new();
        for ((topic, partition), chain) in &self.chains {
            let entry = per_topic.entry(topic.as_str()).or_default();
            if let Some(end) = ends.get(&(topic.clone(), *partition)) {
                entry.0 += (end - chain.end).max(0);
            }
            if let Some(open) = chain.open_file() {
                entry.1 = entry.1.max(now.saturating_sub(open.opened_at_ms));
            }
        }
        let read = self.report.read;
        // Counted here, once a tick, not once a record on the hot path.
        let read_before = self.rates.latest().map_or(0, |[read, _, _]| read);
        metrics::counter!(crate::metrics::SINK_READ).increment(read.saturating_sub(read_before));
        let rates = self
            .rates
            .sample(now, [read, self.report.records, self.report.bytes]);
        if let Some(live) = &self.opts.live {
            let mut partitions: Vec<crate::live::LivePartition> = self
                .chains
                .iter()
                .map(|((topic, partition), chain)| {
                    let end = ends.get(&(topic.clone(), *partition)).copied();
                    crate::live::LivePartition {
                        topic: topic.clone(),
                        partition: *partition,
                        target_topic: None,
                        position: chain.end,
                        end,
                        lag: end.map(|end| (end - chain.end).max(0)),
                    }
                })
                .collect();
            partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            let report = &self.report;
            live.update(|status| {
                status.lag_records = partitions.iter().map(|p| p.lag).sum();
                status.partitions = partitions;
                status.recovery_point_age_seconds = Some(
                    per_topic.values().map(|(_, age)| *age).max().unwrap_or(0) as f64 / 1000.0,
                );
                status.records = report.records;
                status.bytes = report.bytes;
                status.files = Some(report.files);
                status.read_records = Some(read);
                status.read_records_per_second = rates.map(|r| r[0]);
                status.records_per_second = rates.map(|r| r[1]);
            });
        }
        let mut total_lag = 0;
        for (topic, (lag, age_ms)) in &per_topic {
            total_lag += lag;
            metrics::gauge!(crate::metrics::SINK_LAG, "topic" => topic.to_string())
                .set(*lag as f64);
            metrics::gauge!(crate::metrics::SINK_RECOVERY_POINT_AGE, "topic" => topic.to_string())
                .set(*age_ms as f64 / 1000.0);
        }
        if let (Some(bar), Some([read_rate, archived_rate, archived_bytes])) = (&self.bar, rates) {
            bar.set_message(format!(
                "{} partitions, read {:.0} records/s, archived {:.0} records/s ({:.1} MB/s), lag {} records, buffer {:.1}/{:.0} MiB, {} files",
                self.chains.len(),
                read_rate,
                archived_rate,
                archived_bytes / 1e6,
                total_lag,
                self.buffered() as f64 / 1048576.0,
                self.opts.buffer_budget as f64 / 1048576.0,
                self.report.files,
            ));
        }
    }
}
