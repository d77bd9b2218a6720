//! The registry: everything the service runs, shared with the HTTP API; starting the pipelines'
//! supervisors, each on a thread of its own, waiting for them at shutdown, and a pipeline's pause
//! and resume through the API.
//!
//! Invariant: nothing starts once shutdown has begun, and shutdown waits for everything that
//! started (`Registry::isolated` checks and registers under one lock). A pause or a resume is
//! recorded in the pipeline's archive before it applies here, under the pipeline's control lock,
//! or it does not happen at all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::restores::{recall_restores, ApiRestore};
use super::supervise::supervise;
use super::views::kind_of;
use super::{control, open_archive, ControlError, Desired, Lifecycle, Pipeline, State};
use crate::archive::time::{now_ms, rfc3339_millis};
use crate::config::{Config, Service};
use crate::live::Live;
use crate::storage;

/// Everything the service runs, shared with the HTTP API.
pub struct Registry {
    pub config: Config,
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
    pub restores: Mutex<BTreeMap<String, Arc<ApiRestore>>>,
    pub(super) shutdown: watch::Receiver<bool>,
    /// One per pipeline and API restore: resolves when its thread ends.
    tasks: Mutex<Vec<tokio::sync::oneshot::Receiver<()>>>,
    pub started_at: String,
    /// Renders `/metrics`; `None` when another recorder is installed (in-process use).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The archives opened for `_control/` documents, by name.
    stores: tokio::sync::Mutex<BTreeMap<String, Arc<dyn storage::ObjectStore>>>,
    /// This service among those sharing archives: its host name and API address, the same after
    /// a restart (a pod's container restarting keeps both).
    pub(super) identity: String,
}

impl Registry {
    /// Start a supervisor for every enabled pipeline.
    pub fn start(
        service: Service,
        shutdown: watch::Receiver<bool>,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Arc<Registry> {
        let pipelines = service
            .pipelines
            .into_iter()
            .map(|spec| {
                let initial = if spec.enabled {
                    State::Starting
                } else {
                    State::Disabled
                };
                let (desired, _) = watch::channel(Desired::Run);
                let pipeline = Pipeline {
                    spec,
                    desired,
                    control: tokio::sync::Mutex::new(()),
                    lifecycle: Mutex::new(Lifecycle::new(initial)),
                    live: Mutex::new(Live::new()),
                };
                (pipeline.spec.name.clone(), Arc::new(pipeline))
            })
            .collect();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let identity = format!("{} {}", host.trim(), service.config.service.http_addr);
        let registry = Arc::new(Registry {
            config: service.config,
            pipelines,
            restores: Mutex::new(BTreeMap::new()),
            shutdown,
            tasks: Mutex::new(Vec::new()),
            started_at: rfc3339_millis(now_ms()),
            metrics,
            stores: tokio::sync::Mutex::new(BTreeMap::new()),
            identity,
        });
        tokio::spawn(recall_restores(registry.clone()));
        if registry.config.drill.every != crate::config::MarkEvery::Off {
            let registry_ = registry.clone();
            if !registry.isolated("scheduled drills", move || {
                super::drills::schedule(registry_)
            }) {
                tracing::error!("cannot start the drill schedule");
            }
        }
        if !registry.config.compact.every.is_zero() {
            let registry_ = registry.clone();
            if !registry.isolated("compactions", move || super::compact::schedule(registry_)) {
                tracing::error!("cannot start the compaction schedule");
            }
        }
        if !registry.config.tables.every.is_zero() {
            let registry_ = registry.clone();
            if !registry.isolated("table syncs", move || super::tables::schedule(registry_)) {
                tracing::error!("cannot start the table sync schedule");
            }
        }
        for pipeline in registry.pipelines.values() {
            if !pipeline.spec.enabled {
                continue;
            }
            let span = tracing::info_span!("pipeline", name = %pipeline.spec.name);
            let (registry_, pipeline_) = (registry.clone(), pipeline.clone());
            let started = registry
                .isolated(&format!("pipeline {}", pipeline.spec.name), move || {
                    tracing::Instrument::instrument(supervise(registry_, pipeline_), span)
                });
            if !started {
                pipeline.set_state(State::Stopped);
            }
        }
        registry
    }

    /// Run `work` on a thread and an async runtime of its own. librdkafka's calls block (metadata,
    /// watermarks, seeks: seconds when a cluster is down), so a pipeline must not share threads
    /// with the HTTP API or with other pipelines; its heavy work (encoding, decoding) goes to the
    /// blocking pool as everywhere else.
    ///
    /// Refused (false) once shutdown has begun: the check and the registration for [`drained`]
    /// happen under one lock, so nothing starts that shutdown would not wait for.
    ///
    /// [`drained`]: Registry::drained
    #[must_use]
    pub(super) fn isolated<F>(&self, what: &str, work: impl FnOnce() -> F + Send + 'static) -> bool
    where
        F: std::future::Future<Output = ()>,
    {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if *self.shutdown.borrow() {
            return false;
        }
        let (done, finished) = tokio::sync::oneshot::channel();
        let name = format!("rewind {what}");
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        runtime.block_on(work());
                        // The work is over (flushed, committed); a blocking call still running
                        // (a consumer-group snapshot's reads) is abandoned rather than waited for.
                        runtime.shutdown_timeout(Duration::from_secs(1));
                    }
                    Err(e) => tracing::error!(error = %e, "{name}: cannot start its runtime"),
                }
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => {
                tasks.push(finished);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a thread for {what}");
                false
            }
        }
    }

    /// Wait for every supervisor and API restore to finish (after shutdown was signalled), at most
    /// `deadline`. Returns whether all finished in time.
    pub async fn drained(&self, deadline: Duration) -> bool {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        // A thread that ended drops its sender either way, so an error is an ending too.
        tokio::time::timeout(deadline, futures::future::join_all(tasks))
            .await
            .is_ok()
    }

    pub async fn pause(&self, name: &str) -> Result<State, ControlError> {
        self.control(name, Desired::Pause).await
    }

    pub async fn resume(&self, name: &str) -> Result<State, ControlError> {
        self.control(name, Desired::Run).await
    }

    /// The archive named `name`, opened once.
    pub(super) async fn store(&self, name: &str) -> Result<Arc<dyn storage::ObjectStore>, String> {
        let mut stores = self.stores.lock().await;
        if let Some(store) = stores.get(name) {
            return Ok(store.clone());
        }
        let store = open_archive(&self.config, name).await?;
        stores.insert(name.to_string(), store.clone());
        Ok(store)
    }

    async fn control(&self, name: &str, want: Desired) -> Result<State, ControlError> {
        let pipeline = self
            .pipelines
            .get(name)
            .ok_or_else(|| ControlError::NotFound(format!("no pipeline named {name:?}")))?;
        let refused = |pipeline: &Pipeline| {
            if *self.shutdown.borrow() {
                return Some("the service is shutting down".to_string());
            }
            let life = pipeline.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
            match life.state {
                State::Disabled => Some(format!(
                    "pipeline {name} is disabled in {}",
                    pipeline.spec.file.display()
                )),
                State::Completed => Some(format!("pipeline {name} has completed its restore")),
                State::Stopped => Some("the service is shutting down".into()),
                _ => None,
            }
        };
        if let Some(reason) = refused(pipeline) {
            return Err(ControlError::Conflict(reason));
        }
        // Durable first, in the pipeline's archive, so that its other workers follow and a restart
        // keeps it; then here. The supervisor owns the state: this only says what is wanted, and
        // the supervisor acts on it (a pause ends the run gracefully; a resume before that
        // cancels the pause).
        let _control = pipeline.control.lock().await;
        let paused = want == Desired::Pause;
        let unavailable = |e: String| {
            ControlError::Unavailable(format!(
                "cannot record the {} of pipeline {name} in its archive ({}), so its other workers and a restart would not follow it; nothing changed: {e}",
                if paused { "pause" } else { "resume" },
                pipeline.spec.archive
            ))
        };
        // Bounded: an archive that does not answer must not hold the pipeline's lock (and the
        // request) indefinitely.
        let write = async {
            let store = self.store(&pipeline.spec.archive).await?;
            control::set_paused(&*store, kind_of(&pipeline.spec), name, paused, now_ms())
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(Duration::from_secs(30), write)
            .await
            .unwrap_or_else(|_| Err("no answer within 30 s".into()))
            .map_err(unavailable)?;
        pipeline.desired.send_replace(want);
        tracing::info!(pipeline = name, action = ?want, "pipeline control, recorded in its archive");
        Ok(pipeline.lifecycle().state)
    }
}
