//! Restore drills on a schedule (`[drill] every = "daily"`): in each period one worker of the
//! archive, the one whose create-only claim `_control/drills/<period>.json` lands, runs a drill of a
//! sampled window into the configured cluster's scratch topics. Every worker exports when the
//! last drill passed (read from the archive's reports at start), so an alert can tell drills that
//! stopped passing from a worker that never ran one.

use std::time::Duration;

use serde_json::json;

use super::{client_config, Registry};
use crate::archive::time::{now_ms, parse_rfc3339_millis};
use crate::config::MarkEvery;
use crate::drill::{self, DrillOptions, DrillReport, DRILLS_PREFIX};
use crate::storage::{ObjectStore, PutMode, StorageError};

/// Run the configured schedule until the service shuts down.
pub(super) async fn schedule(registry: std::sync::Arc<Registry>) {
    let config = registry.config.drill.clone();
    if config.every == MarkEvery::Off {
        return;
    }
    let retry = Duration::from_secs(60);
    let mut shutdown = registry.shutdown.clone();
    let mut announced = false;
    loop {
        let wait = match once(&registry, &mut announced).await {
            Ok(next) => Duration::from_millis((next - now_ms()).max(0) as u64),
            Err(e) => {
                tracing::warn!(error = %e, "scheduled drill: {e}; trying again in a minute");
                retry
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait.min(Duration::from_secs(3600)) + Duration::from_millis(50)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Run this period's drill unless another worker claimed it; returns when the next period begins.
async fn once(registry: &Registry, announced: &mut bool) -> Result<i64, String> {
    let config = &registry.config.drill;
    let store = registry.store(&config.archive).await?;
    if !*announced {
        // What the archive says about the last drill that passed, for this worker's gauge.
        if let Some(last) = last_passed(&*store).await? {
            record(&last, false);
        }
        *announced = true;
    }
    let (period, next) = crate::marks::period(config.every, now_ms()).expect("not off");
    let claim = format!(
        "{}drills/{period}.json",
        crate::archive::paths::CONTROL_PREFIX
    );
    let body = serde_json::to_vec(&json!({ "worker": registry.identity, "claimed_at": crate::archive::time::rfc3339_millis(now_ms()) }))
        .expect("a claim serializes");
    match store
        .put(&claim, bytes::Bytes::from(body), PutMode::Create)
        .await
    {
        Ok(_) => {}
        Err(StorageError::AlreadyExists { .. }) => return Ok(next),
        Err(e) => return Err(e.to_string()),
    }
    let signing_key = config
        .sign_key
        .as_deref()
        .map(drill::signing_key)
        .transpose()
        .map_err(|e| format!("drill.sign_key is {e}"))?;
    let opts = DrillOptions {
        job: crate::config::RestoreJob {
            topics: config.topics.clone(),
            ..Default::default()
        },
        sample: Some(config.sample),
        prefix: config.prefix.clone(),
        keep: false,
        tuning: registry.config.restore.clone(),
        signing_key,
        run_by: format!("drill.every = {period} ({})", registry.identity),
    };
    let client = client_config(&registry.config, &config.cluster)?;
    tracing::info!(period, "scheduled drill: starting");
    match drill::drill(client, store, &opts).await {
        Ok(report) => {
            record(&report, true);
            if report.passed {
                tracing::info!(
                    drill = report.id,
                    records = report.records,
                    "scheduled drill passed"
                );
            } else {
                tracing::error!(drill = report.id, failures = %report.failures.join("; "), "scheduled drill FAILED");
            }
        }
        Err(e) => {
            metrics::counter!(crate::metrics::DRILLS, "result" => "error").increment(1);
            tracing::error!(error = %e, "scheduled drill could not run");
        }
    }
    Ok(next)
}

/// Export what `report` says; `ran`: this process ran it (it counts as a run).
fn record(report: &DrillReport, ran: bool) {
    if ran {
        let result = if report.passed { "passed" } else { "failed" };
        metrics::counter!(crate::metrics::DRILLS, "result" => result).increment(1);
    }
    if !report.passed {
        return;
    }
    if let Some(at) = parse_rfc3339_millis(&report.finished_at) {
        metrics::gauge!(crate::metrics::DRILL_LAST_SUCCESS).set(at as f64 / 1000.0);
    }
    for t in &report.topics {
        metrics::gauge!(crate::metrics::DRILL_RTO, "topic" => t.topic.clone())
            .set(t.estimated_full_restore_seconds as f64);
    }
}

/// The newest report of a drill that passed, if any.
async fn last_passed(store: &dyn ObjectStore) -> Result<Option<DrillReport>, String> {
    let mut keys: Vec<_> = store
        .list(DRILLS_PREFIX)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|o| o.key)
        .collect();
    // Ids begin with the time they started: newest last.
    keys.sort();
    for key in keys.iter().rev() {
        let Ok(got) = store.get(key).await else {
            continue;
        };
        if let Ok(report) = serde_json::from_slice::<DrillReport>(&got.body) {
            if report.passed {
                return Ok(Some(report));
            }
        }
    }
    Ok(None)
}
