//! A pipeline's supervisor: it follows the pause recorded in the pipeline's archive, runs the
//! pipeline, and when a run fails records the error and starts it again after the backoff; and
//! what one run of a sink or a restore is.
//!
//! Invariant: only the supervisor changes a pipeline's stored state, and a run starts only once
//! the archive has said whether the pipeline is paused. A run ends the graceful way (a sink
//! flushes and checkpoints, a restore commits what is in flight) when a pause or the shutdown
//! stops it; the backoff doubles after each failure up to `service.restart_backoff_max` and is
//! reset by a stop or by a run that lasted a minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::views::kind_of;
use super::{
    admin_api, client_config, control, open_archive, read_archive, Desired, LastError, Pipeline,
    Registry, State,
};
use crate::archive::time::{now_ms, rfc3339_millis};
use crate::backoff::Backoff;
use crate::config::{Config, PipelineKind, PipelineSpec};
use crate::live::Live;
use crate::restore::{self, RestoreError, RestoreOptions};
use crate::sink::{self, SinkOptions};
use crate::storage;

/// How a run ended without an error.
pub(super) enum Outcome {
    /// A restore reached the end of its window.
    Finished,
    /// Asked to stop (pause or shutdown).
    Stopped,
}

/// Keep one pipeline running until shutdown.
pub(super) async fn supervise(registry: Arc<Registry>, pipeline: Arc<Pipeline>) {
    let service = &registry.config.service;
    // A pause recorded in the archive (through this worker before a restart, or another worker)
    // holds from the first run on; later changes are followed every `service.control_interval`.
    // Until the archive answers, the pipeline does not start: it may have been paused (a
    // restore pipeline paused to keep it from writing into its target must stay paused).
    let mut recorded = RecordedState::default();
    while !recorded.follow(&registry.config, &pipeline).await {
        tokio::select! {
            _ = tokio::time::sleep(registry.config.service.control_interval) => {}
            _ = until_true(registry.shutdown.clone()) => {}
        }
        if *registry.shutdown.borrow() {
            pipeline.set_state(State::Stopped);
            return;
        }
    }
    let _watcher = AbortOnDrop(tokio::spawn({
        let (registry, pipeline) = (registry.clone(), pipeline.clone());
        async move {
            loop {
                tokio::time::sleep(registry.config.service.control_interval).await;
                recorded.follow(&registry.config, &pipeline).await;
            }
        }
    }));
    let mut desired = pipeline.desired.subscribe();
    let mut shutdown = registry.shutdown.clone();
    let mut backoff = Backoff::new(service.restart_backoff, service.restart_backoff_max);
    loop {
        while *desired.borrow_and_update() == Desired::Pause && !*shutdown.borrow() {
            pipeline.set_state(State::Paused);
            tokio::select! {
                _ = desired.changed() => {}
                _ = shutdown.changed() => {}
            }
        }
        if *shutdown.borrow() {
            pipeline.set_state(State::Stopped);
            return;
        }
        pipeline.set_state(State::Starting);
        let live = Live::new();
        *pipeline.live.lock().unwrap_or_else(|e| e.into_inner()) = live.clone();
        let started = Instant::now();
        let stop = {
            let desired = desired.clone();
            let shutdown = shutdown.clone();
            async move {
                let paused = async {
                    let mut desired = desired;
                    let _ = desired.wait_for(|d| *d == Desired::Pause).await;
                };
                tokio::select! {
                    _ = paused => {}
                    _ = until_true(shutdown) => {}
                }
            }
        };
        // Running once the first status arrives: the cluster and the archive answered.
        let running = tokio::spawn({
            let pipeline = pipeline.clone();
            let live = live.clone();
            async move {
                while live.snapshot().updates == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if pipeline.lifecycle().state == State::Starting {
                    pipeline.set_state(State::Running);
                }
            }
        });
        let result = run_pipeline(&registry.config, &pipeline.spec, live, stop).await;
        running.abort();
        match result {
            Ok(Outcome::Finished) => {
                tracing::info!("restore pipeline completed its window");
                pipeline.set_state(State::Completed);
                return;
            }
            Ok(Outcome::Stopped) => {
                tracing::info!("pipeline stopped");
                backoff.reset();
            }
            Err(message) => {
                let message = crate::config::secrets::scrub(&message);
                if started.elapsed() >= Duration::from_secs(60) {
                    backoff.reset();
                }
                let wait = backoff.next_delay();
                tracing::error!(error = %message, retry_in_s = wait.as_secs_f64(), "pipeline failed; starting it again after the backoff");
                metrics::counter!(crate::metrics::PIPELINE_RESTARTS, "pipeline" => pipeline.spec.name.clone())
                    .increment(1);
                {
                    let mut life = pipeline.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
                    life.restarts += 1;
                    life.last_error = Some(LastError {
                        message,
                        at: rfc3339_millis(now_ms()),
                    });
                    life.next_attempt_at = Some(rfc3339_millis(now_ms() + wait.as_millis() as i64));
                }
                pipeline.set_state(State::BackingOff);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                    _ = desired.wait_for(|d| *d == Desired::Pause) => {}
                }
            }
        }
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A supervisor's reader of its pipeline's `_control/` document.
#[derive(Default)]
struct RecordedState {
    /// Opened on the supervisor's own runtime (clients keep connections on the runtime that
    /// opened them).
    store: Option<Arc<dyn storage::ObjectStore>>,
    /// Whether the last read failed, to warn once per outage.
    failing: bool,
}

impl RecordedState {
    /// Make the pipeline paused or running as its archive says. Under the pipeline's control lock,
    /// so that a read from before a pause through the API never undoes it.
    async fn follow(&mut self, config: &Config, pipeline: &Pipeline) -> bool {
        let _control = pipeline.control.lock().await;
        let name = &pipeline.spec.name;
        let read = async {
            if self.store.is_none() {
                self.store = Some(read_archive(config, &pipeline.spec.archive).await?);
            }
            let store = self.store.as_deref().expect("opened above");
            control::paused(store, kind_of(&pipeline.spec), name)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(30), read).await {
            Ok(Ok(paused)) => {
                self.failing = false;
                let want = if paused { Desired::Pause } else { Desired::Run };
                if *pipeline.desired.borrow() != want {
                    tracing::info!(
                        paused,
                        "following the pipeline's state recorded in its archive (set through the API of this or another worker)"
                    );
                    pipeline.desired.send_replace(want);
                }
                true
            }
            failed => {
                if !self.failing {
                    let error = match failed {
                        Ok(Err(e)) => e,
                        _ => "no answer within 30 s".into(),
                    };
                    tracing::warn!(error = %error, "cannot read whether the pipeline is paused from its archive; keeping its current state");
                }
                self.failing = true;
                false
            }
        }
    }
}

/// Resolves once the flag is true.
pub(super) async fn until_true(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

/// One run of a pipeline, until it fails, finishes (a restore) or `stop` resolves.
async fn run_pipeline(
    config: &Config,
    spec: &PipelineSpec,
    live: Arc<Live>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Outcome, String> {
    match spec.kind {
        PipelineKind::Sink => {
            let store = open_archive(config, &spec.archive).await?;
            let client = client_config(config, &spec.cluster)?;
            let opts = SinkOptions {
                live: Some(live),
                admin_api: admin_api(config, &spec.cluster),
                ..SinkOptions::from_config(
                    &spec.sink,
                    config.storage.s3.part_size.bytes(),
                    &config.restore.progress_topic,
                )?
            };
            let marks = crate::marks::schedules(
                client.clone(),
                store.clone(),
                opts.topics.clone(),
                spec.sink.marks.clone(),
            );
            let report = tokio::select! {
                report = sink::run(client, store, opts, stop) => report,
                () = marks => unreachable!("the mark schedule runs until dropped"),
            }
            .map_err(|e| e.to_string())?;
            tracing::info!(
                records = report.records,
                files = report.files,
                "sink run ended"
            );
            Ok(Outcome::Stopped)
        }
        PipelineKind::Restore => {
            let mut opts = spec
                .job
                .options(spec.restore_id(), &spec.restore, str::to_string)
                .map_err(|problems| problems[0].to_string())?;
            opts.live = Some(live);
            opts.admin_api = admin_api(config, &spec.cluster);
            run_restore(config, &spec.cluster, &spec.archive, &opts, stop).await
        }
    }
}

pub(super) async fn run_restore(
    config: &Config,
    cluster: &str,
    archive: &str,
    opts: &RestoreOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Outcome, String> {
    let store = read_archive(config, archive).await?;
    let client = client_config(config, cluster)?;
    let mut stop = Box::pin(stop);
    if opts.follow {
        // A standby may start before the sink has archived anything: wait for the archive
        // rather than fail and restart.
        let mut waiting = false;
        while let Err(e @ (RestoreError::NoArchive(_) | RestoreError::NoTopics { .. })) =
            restore::plan(&*store, opts).await
        {
            if !waiting {
                tracing::info!(reason = %e, "waiting for the archive to hold the selected topics");
                waiting = true;
            }
            if let Some(live) = &opts.live {
                live.update(|status| status.planned_records = Some(0));
            }
            tokio::select! {
                _ = tokio::time::sleep(opts.poll_interval) => {}
                _ = &mut stop => return Ok(Outcome::Stopped),
            }
        }
    }
    let report = restore::run(client, store, opts, stop)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        records = report.records,
        restore_id = report.restore_id,
        "restore run ended"
    );
    Ok(if report.stopped || opts.follow {
        Outcome::Stopped
    } else {
        Outcome::Finished
    })
}
