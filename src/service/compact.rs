//! Compaction on a schedule (`[compact] every = "1h"`): every worker of the archive merges the
//! closed hours' small files in turn. A compaction commits by compare-and-swap of a claim, so
//! workers that compact at once only cost each other the work; one with nothing to merge writes
//! nothing.

use std::time::Duration;

use super::Registry;
use crate::archive::time::now_ms;
use crate::kafka::topics::TopicSelector;
use crate::ops::compact::{self, CompactOptions};

/// Run the configured schedule until the service shuts down.
pub(super) async fn schedule(registry: std::sync::Arc<Registry>) {
    let config = registry.config.compact.clone();
    let part_size = registry.config.storage.s3.part_size.bytes() as usize;
    let selector = match TopicSelector::new(&config.topics) {
        Ok(selector) => selector,
        Err(e) => {
            tracing::error!(error = %e, "compact.topics is not a valid regular expression; no compactions");
            return;
        }
    };
    let mut shutdown = registry.shutdown.clone();
    loop {
        let opts = CompactOptions {
            topics: selector.clone(),
            settle_ms: i64::try_from(config.settle.as_millis()).unwrap_or(i64::MAX),
            max_bytes: config.max_file_size.bytes(),
            part_size,
            dry_run: false,
            now_ms: now_ms(),
        };
        let outcome = match registry.store(&config.archive).await {
            Ok(store) => compact::compact(&*store, &opts)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("the archive is not reachable: {e}")),
        };
        match outcome {
            Ok(report) => {
                for c in &report.compacted {
                    metrics::counter!(crate::metrics::COMPACT_PARTS, "topic" => c.topic.clone())
                        .increment(c.parts as u64);
                    metrics::counter!(crate::metrics::COMPACT_FILES, "topic" => c.topic.clone())
                        .increment(1);
                }
                if !report.compacted.is_empty() || report.deleted > 0 {
                    tracing::info!(
                        merged = report.files_before(),
                        into = report.compacted.len(),
                        deleted = report.deleted,
                        seconds = report.seconds,
                        "compacted"
                    );
                }
                for e in &report.errors {
                    tracing::warn!(
                        topic = e.topic,
                        partition = e.partition,
                        error = e.error,
                        "could not compact the partition"
                    );
                }
                if report.held_for_tables.is_empty() && report.errors.is_empty() {
                    metrics::gauge!(crate::metrics::COMPACT_LAST_RUN).set(now_ms() as f64 / 1000.0);
                } else {
                    metrics::counter!(crate::metrics::COMPACT_ERRORS).increment(1);
                }
            }
            Err(e) => {
                metrics::counter!(crate::metrics::COMPACT_ERRORS).increment(1);
                tracing::warn!(error = %e, "compaction failed; trying again at the next interval");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.every.max(Duration::from_secs(1))) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
