//! Iceberg table syncs on a schedule (`[tables] every = "5m"`): every worker of the archive brings
//! the tables up to date in turn. Commits are compare-and-swap, so workers that sync at once only
//! cost each other a retry; a sync with nothing new commits nothing.

use std::time::Duration;

use super::Registry;
use crate::archive::time::now_ms;
use crate::kafka::topics::TopicSelector;
use crate::tables::{self, TableOptions};

/// Run the configured schedule until the service shuts down.
pub(super) async fn schedule(registry: std::sync::Arc<Registry>) {
    let config = registry.config.tables.clone();
    let selector = match TopicSelector::new(&config.topics) {
        Ok(selector) => selector,
        Err(e) => {
            tracing::error!(error = %e, "tables.topics is not a valid regular expression; no table syncs");
            return;
        }
    };
    let catalog = config
        .catalog_uri
        .clone()
        .map(|uri| crate::tables::catalog::Catalog {
            uri,
            namespace: config.catalog_namespace.clone(),
            token: config.catalog_token.clone(),
        });
    let opts = TableOptions {
        catalog,
        max_snapshot_age: Some(config.max_snapshot_age),
        min_snapshots: Some(config.min_snapshots.max(1) as usize),
        ..TableOptions::default()
    };
    let mut shutdown = registry.shutdown.clone();
    loop {
        match registry.store(&config.archive).await {
            Ok(store) => match tables::sync(&*store, &selector, &opts).await {
                Ok(reports) => {
                    for r in reports.iter().filter(|r| r.committed) {
                        metrics::counter!(crate::metrics::TABLE_COMMITS, "topic" => r.topic.clone())
                            .increment(1);
                        tracing::info!(
                            topic = r.topic,
                            version = r.version,
                            added = r.added_files,
                            removed = r.removed_files,
                            "table synced"
                        );
                    }
                    for r in reports.iter().filter(|r| r.error.is_some()) {
                        metrics::counter!(crate::metrics::TABLE_SYNC_ERRORS).increment(1);
                        tracing::warn!(
                            topic = r.topic,
                            error = r.error.as_deref().unwrap_or(""),
                            "table sync failed; trying again at the next interval"
                        );
                    }
                    if reports
                        .iter()
                        .all(|r| r.skipped.is_empty() && r.error.is_none())
                    {
                        metrics::gauge!(crate::metrics::TABLE_LAST_SYNC)
                            .set(now_ms() as f64 / 1000.0);
                    }
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::TABLE_SYNC_ERRORS).increment(1);
                    tracing::warn!(error = %e, "table sync failed; trying again at the next interval");
                }
            },
            Err(e) => {
                metrics::counter!(crate::metrics::TABLE_SYNC_ERRORS).increment(1);
                tracing::warn!(error = %e, "table sync: the archive is not reachable");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.every.max(Duration::from_secs(1))) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
