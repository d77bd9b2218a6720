//! The service (`rewind run`): every pipeline of the configuration kept running, each under its own
//! supervisor, plus restores started through the HTTP API.
//!
//! A supervisor runs its pipeline, and when the run fails records the error and starts it again
//! after a backoff that doubles up to `service.restart_backoff_max` (reset once a run has lasted a
//! minute), while the other pipelines carry on. Pausing stops a run the graceful way — a sink
//! flushes and checkpoints, a restore commits what is in flight — and resuming starts a new run,
//! which continues from the archive's checkpoints or the restore's committed progress: nothing is
//! skipped or repeated across a pause, a restart or a crash.
//!
//! A pipeline is one thing across the workers that run it: a pause is recorded in its archive and
//! every worker of that pipeline follows it, now and after a restart; restores started through the
//! API are recorded there too, so a restarted service lists and resumes them (see [`control`]).
//!
//! Each pipeline and each API restore runs on a thread and an async runtime of its own (see
//! `Registry::isolated`): librdkafka's calls block, and a cluster that does not answer must not
//! hold up the HTTP API or the other pipelines.

pub mod api;
pub mod control;
pub mod guard;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use tokio::sync::watch;

use crate::archive::time::{now_ms, rfc3339_millis};
use crate::config::{Config, PipelineKind, PipelineSpec, RestoreJob, Service};
use crate::live::{Live, LiveStatus};
use crate::restore::{self, RestoreError, RestoreOptions};
use crate::sink::{self, SinkOptions};
use crate::storage::{self, StorageUrl};

/// Where a pipeline or an API restore is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Connecting to the cluster and the archive.
    Starting,
    Running,
    /// Asked to pause: finishing the run gracefully.
    Pausing,
    Paused,
    /// The last run failed; the next starts when the backoff ends.
    BackingOff,
    /// A restore that reached the end of its window.
    Completed,
    /// An API restore that stopped with an error (run it again with the same id to resume).
    Failed,
    /// Stopped by the service's shutdown, or through the API.
    Stopped,
    /// An API restore that was running when its service ended without stopping it (killed):
    /// `POST /restores/{id}/resume` continues it.
    Interrupted,
    /// `enabled = false`.
    Disabled,
}

/// The last error of a pipeline, kept until the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub message: String,
    pub at: String,
}

/// Life of a pipeline or an API restore, apart from its live numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Lifecycle {
    pub state: State,
    /// When the state was entered (RFC 3339).
    pub since: String,
    /// Runs started again after a failure.
    pub restarts: u32,
    pub last_error: Option<LastError>,
    /// `backing_off`: when the next run starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

impl Lifecycle {
    fn new(state: State) -> Lifecycle {
        Lifecycle {
            state,
            since: rfc3339_millis(now_ms()),
            restarts: 0,
            last_error: None,
            next_attempt_at: None,
        }
    }
}

/// What the operator wants of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Desired {
    Run,
    Pause,
}

/// A pipeline under supervision.
pub struct Pipeline {
    pub spec: PipelineSpec,
    desired: watch::Sender<Desired>,
    /// Held while the wanted state is written to the archive and applied, or read and applied,
    /// so that a read from before a pause never undoes it.
    control: tokio::sync::Mutex<()>,
    lifecycle: Mutex<Lifecycle>,
    live: Mutex<Arc<Live>>,
}

impl Pipeline {
    fn set_state(&self, state: State) {
        let mut life = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        if life.state != state {
            life.state = state;
            life.since = rfc3339_millis(now_ms());
        }
        if state != State::BackingOff {
            life.next_attempt_at = None;
        }
        metrics::gauge!(crate::metrics::PIPELINE_UP, "pipeline" => self.spec.name.clone())
            .set(if state == State::Running { 1.0 } else { 0.0 });
        metrics::gauge!(crate::metrics::PIPELINE_PAUSED, "pipeline" => self.spec.name.clone())
            .set(if state == State::Paused { 1.0 } else { 0.0 });
    }

    /// The pipeline's life as the API shows it. Only the supervisor changes the stored state; a
    /// run that was asked to pause and has not ended yet shows as `pausing`.
    pub fn lifecycle(&self) -> Lifecycle {
        let mut life = self
            .lifecycle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if *self.desired.borrow() == Desired::Pause
            && matches!(life.state, State::Starting | State::Running)
        {
            life.state = State::Pausing;
        }
        life
    }

    pub fn live(&self) -> LiveStatus {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot()
    }

    /// Running (which a run becomes only once it has reported), or deliberately not running.
    pub fn ready(&self) -> bool {
        matches!(
            self.lifecycle().state,
            State::Running | State::Paused | State::Pausing | State::Completed | State::Disabled
        )
    }
}

/// A restore started through `POST /restores`.
pub struct ApiRestore {
    pub id: String,
    pub cluster: String,
    pub archive: String,
    pub job: RestoreJob,
    pub started_at: String,
    /// The service that runs (or last ran) it: host name and API address.
    owner: String,
    lifecycle: Mutex<Lifecycle>,
    live: Arc<Live>,
    stop: watch::Sender<bool>,
}

impl ApiRestore {
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn live(&self) -> LiveStatus {
        self.live.snapshot()
    }

    fn finish(&self, state: State, error: Option<String>) {
        let mut life = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        life.state = state;
        life.since = rfc3339_millis(now_ms());
        if let Some(message) = error {
            life.last_error = Some(LastError {
                message,
                at: life.since.clone(),
            });
        }
    }
}

/// Everything the service runs, shared with the HTTP API.
pub struct Registry {
    pub config: Config,
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
    pub restores: Mutex<BTreeMap<String, Arc<ApiRestore>>>,
    shutdown: watch::Receiver<bool>,
    /// One per pipeline and API restore: resolves when its thread ends.
    tasks: Mutex<Vec<tokio::sync::oneshot::Receiver<()>>>,
    pub started_at: String,
    /// Renders `/metrics`; `None` when another recorder is installed (in-process use).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The archives opened for `_control/` documents, by name.
    stores: tokio::sync::Mutex<BTreeMap<String, Arc<dyn storage::ObjectStore>>>,
    /// This service among those sharing archives: its host name and API address, the same after
    /// a restart (a pod's container restarting keeps both).
    identity: String,
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
    fn isolated<F>(&self, what: &str, work: impl FnOnce() -> F + Send + 'static) -> bool
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
    async fn store(&self, name: &str) -> Result<Arc<dyn storage::ObjectStore>, String> {
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

    /// Start a restore from a `POST /restores` body: `cluster` and `archive` (names from the
    /// configuration, `default` when absent) and the fields of a restore job.
    pub async fn start_restore(
        self: &Arc<Self>,
        body: Json,
    ) -> Result<Arc<ApiRestore>, ControlError> {
        let Json::Object(mut fields) = body else {
            return Err(ControlError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        };
        let mut name_of = |key: &str| match fields.remove(key) {
            None => Ok("default".to_string()),
            Some(Json::String(s)) => Ok(s),
            Some(other) => Err(ControlError::BadRequest(format!(
                "{key}: expected a string, got {other}"
            ))),
        };
        let cluster = name_of("cluster")?;
        let archive = name_of("archive")?;
        let job: RestoreJob = serde_path_to_error::deserialize(Json::Object(fields))
            .map_err(|e| ControlError::BadRequest(format!("{}: {}", e.path(), e.inner())))?;
        let id = job
            .restore_id
            .clone()
            .unwrap_or_else(|| restore::new_restore_id(now_ms()));
        self.launch(id, cluster, archive, job).await
    }

    /// The restore the API knows under `id` (started or recalled by this service).
    pub fn restore(&self, id: &str) -> Result<Arc<ApiRestore>, ControlError> {
        self.restores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "no restore {id:?} was started through this service"
                ))
            })
    }

    /// Resume a restore the API started (in this run of the service or an earlier one) that is
    /// not running: the same request under the same id, which continues from its committed
    /// progress.
    pub async fn resume_restore(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<Arc<ApiRestore>, ControlError> {
        let known = self.restore(id)?;
        let state = known.lifecycle().state;
        if state == State::Completed {
            return Err(ControlError::Conflict(format!(
                "restore {id} completed; there is nothing to resume"
            )));
        }
        self.launch(
            known.id.clone(),
            known.cluster.clone(),
            known.archive.clone(),
            known.job.clone(),
        )
        .await
    }

    /// Check a restore, record it in its archive, and start it.
    async fn launch(
        self: &Arc<Self>,
        id: String,
        cluster: String,
        archive: String,
        mut job: RestoreJob,
    ) -> Result<Arc<ApiRestore>, ControlError> {
        if self.config.cluster(&cluster).is_none() {
            return Err(ControlError::BadRequest(format!(
                "cluster: no cluster named {cluster:?} in the configuration"
            )));
        }
        if self.config.archive_named(&archive).is_none() {
            return Err(ControlError::BadRequest(format!(
                "archive: no archive named {archive:?} in the configuration"
            )));
        }
        job.restore_id = Some(id.clone());
        let mut opts = job
            .options(&id, &self.config.restore, str::to_string)
            .map_err(|problems| {
                ControlError::BadRequest(
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
        if *self.shutdown.borrow() {
            return Err(ControlError::Conflict(
                "the service is shutting down".into(),
            ));
        }
        if self.pipelines.values().any(|p| {
            p.spec.kind == PipelineKind::Restore
                && p.spec.enabled
                && p.spec.cluster == cluster
                && p.spec.restore_id() == id
        }) {
            return Err(ControlError::Conflict(format!(
                "restore id {id} belongs to a restore pipeline"
            )));
        }
        let live = Live::new();
        opts.live = Some(live.clone());
        opts.admin_api = admin_api(&self.config, &cluster);
        let (stop, stopped) = watch::channel(false);
        let restore = Arc::new(ApiRestore {
            id: id.clone(),
            cluster: cluster.clone(),
            archive: archive.clone(),
            job,
            started_at: rfc3339_millis(now_ms()),
            owner: self.identity.clone(),
            lifecycle: Mutex::new(Lifecycle::new(State::Running)),
            live,
            stop,
        });
        // The id is reserved before anything awaits, so two requests under one id never both
        // start (or both write its record); a used id takes only the request it was used for.
        let previous = {
            let mut restores = self.restores.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(known) = restores.get(&id) {
                if matches!(known.lifecycle().state, State::Starting | State::Running) {
                    return Err(ControlError::Conflict(format!(
                        "restore {id} is already running"
                    )));
                }
                if (&known.cluster, &known.archive, &known.job)
                    != (&restore.cluster, &restore.archive, &restore.job)
                {
                    return Err(ControlError::Conflict(format!(
                        "restore id {id} was used for another request (cluster, archive, window, topics, renames or flags differ); resume it with POST /restores/{id}/resume, or choose another id"
                    )));
                }
            }
            restores.insert(id.clone(), restore.clone())
        };
        let unreserve = |registry: &Registry| {
            let mut restores = registry.restores.lock().unwrap_or_else(|e| e.into_inner());
            match &previous {
                Some(previous) => restores.insert(id.clone(), previous.clone()),
                None => restores.remove(&id),
            };
        };
        // Recorded before it starts: a service that restarts lists it and can resume it.
        let recorded = match self.store(&archive).await {
            Ok(store) => control::remember_restore(&*store, &restore.record())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            unreserve(self);
            return Err(ControlError::Unavailable(format!(
                "cannot record restore {id} in archive {archive}, so a restarted service could not resume it; nothing started: {e}"
            )));
        }

        let registry = self.clone();
        let handle = restore.clone();
        let span = tracing::info_span!("restore", id = %id);
        let started = self.isolated(&format!("restore {id}"), move || {
            tracing::Instrument::instrument(
                async move {
                    let shutdown = registry.shutdown.clone();
                    let stop = async move {
                        tokio::select! {
                            _ = until_true(shutdown) => {}
                            _ = until_true(stopped) => {}
                        }
                    };
                    // A store of this thread's runtime (clients keep connections on the runtime
                    // that opened them), for the heartbeat and the final record.
                    let store = open_archive(&registry.config, &handle.archive).await;
                    let run = run_restore(
                        &registry.config,
                        &handle.cluster,
                        &handle.archive,
                        &opts,
                        stop,
                    );
                    let outcome = match &store {
                        Ok(store) => {
                            let beat = heartbeat(&**store, &handle);
                            tokio::select! {
                                outcome = run => outcome,
                                _ = beat => unreachable!("the heartbeat never ends"),
                            }
                        }
                        Err(_) => run.await,
                    };
                    let (state, error) = match outcome {
                        Ok(Outcome::Finished) => {
                            tracing::info!("restore completed");
                            (State::Completed, None)
                        }
                        Ok(Outcome::Stopped) => (State::Stopped, None),
                        Err(message) => {
                            let message = crate::config::secrets::scrub(&message);
                            tracing::error!(error = %message, "restore failed");
                            (State::Failed, Some(message))
                        }
                    };
                    // Recorded before the state shows: a resume accepted once it shows must not
                    // have its record overwritten by this run's ending.
                    let mut record = handle.record();
                    record.state = state_name(state);
                    if let Some(message) = &error {
                        record.last_error = Some(LastError {
                            message: message.clone(),
                            at: rfc3339_millis(now_ms()),
                        });
                    }
                    let recorded = match &store {
                        Ok(store) => control::remember_restore(&**store, &record)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.clone()),
                    };
                    if let Err(e) = recorded {
                        tracing::warn!(error = %e, "cannot record how the restore ended in its archive; a restarted service shows it as interrupted");
                    }
                    handle.finish(state, error);
                },
                span,
            )
        });
        if !started {
            restore.finish(State::Stopped, Some("the service is shutting down".into()));
            // Its record said running: say it never ran, or a restart would call it interrupted.
            if let Ok(store) = self.store(&archive).await {
                let _ = control::remember_restore(&*store, &restore.record()).await;
            }
            return Err(ControlError::Conflict(
                "the service is shutting down".into(),
            ));
        }
        tracing::info!(restore_id = %id, cluster, archive, "restore started through the API");
        Ok(restore)
    }
}

/// List the restores the API started in earlier runs of this service, from every configured
/// archive, now and every minute: those still marked running were interrupted (the service was
/// killed) and can be resumed. A restore another live service runs (its record is fresh) is left
/// to it until its heartbeat stops; one this run knows already is left as it is.
async fn recall_restores(registry: Arc<Registry>) {
    loop {
        recall_once(&registry).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        if *registry.shutdown.borrow() {
            return;
        }
    }
}

async fn recall_once(registry: &Registry) {
    let mut names = vec!["default".to_string()];
    names.extend(registry.config.archives.keys().cloned());
    for name in names {
        let recalled = async {
            let store = registry.store(&name).await?;
            control::remembered_restores(&*store)
                .await
                .map_err(|e| e.to_string())
        };
        let records = match tokio::time::timeout(Duration::from_secs(60), recalled).await {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                tracing::warn!(archive = name, error = %e, "cannot list the restores earlier runs started in this archive");
                continue;
            }
            Err(_) => {
                tracing::warn!(archive = name, "listing the restores earlier runs started in this archive took over 60 s; skipped");
                continue;
            }
        };
        let mut restores = registry.restores.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            if record.archive != name || restores.contains_key(&record.id) {
                continue;
            }
            let age_ms = crate::archive::time::parse_rfc3339_millis(&record.updated_at)
                .map_or(i64::MAX, |at| now_ms() - at);
            let mine = record.owner.as_deref() == Some(registry.identity.as_str());
            if record.state == "running" && !mine && age_ms < STALE.as_millis() as i64 {
                // Another service runs it now (its heartbeat is fresh): it is that one's to show,
                // and this one looks again later.
                continue;
            }
            let state = match record.state.as_str() {
                "completed" => State::Completed,
                "failed" => State::Failed,
                "stopped" => State::Stopped,
                _ => State::Interrupted,
            };
            let mut life = Lifecycle::new(state);
            life.since = record.updated_at.clone();
            life.last_error = record.last_error.clone();
            let (stop, _) = watch::channel(false);
            restores.insert(
                record.id.clone(),
                Arc::new(ApiRestore {
                    id: record.id,
                    cluster: record.cluster,
                    archive: record.archive,
                    job: record.job,
                    started_at: record.started_at,
                    owner: record.owner.unwrap_or_default(),
                    lifecycle: Mutex::new(life),
                    live: Live::new(),
                    stop,
                }),
            );
        }
    }
}

impl ApiRestore {
    /// Ask the restore to commit what is in flight and stop (resumable with the same id).
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// What the archive keeps of it.
    fn record(&self) -> control::RestoreRecord {
        let life = self.lifecycle();
        control::RestoreRecord {
            format_version: control::FORMAT_VERSION,
            id: self.id.clone(),
            cluster: self.cluster.clone(),
            archive: self.archive.clone(),
            job: self.job.clone(),
            started_at: self.started_at.clone(),
            owner: Some(self.owner.clone()),
            state: state_name(life.state),
            last_error: life.last_error,
            updated_at: rfc3339_millis(now_ms()),
        }
    }
}

/// Why an API request to steer the service was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    /// The archive that keeps the decision cannot be written.
    #[error("{0}")]
    Unavailable(String),
}

/// How a run ended without an error.
enum Outcome {
    /// A restore reached the end of its window.
    Finished,
    /// Asked to stop (pause or shutdown).
    Stopped,
}

/// Keep one pipeline running until shutdown.
async fn supervise(registry: Arc<Registry>, pipeline: Arc<Pipeline>) {
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
    let mut backoff = service.restart_backoff;
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
                backoff = service.restart_backoff;
            }
            Err(message) => {
                let message = crate::config::secrets::scrub(&message);
                if started.elapsed() >= Duration::from_secs(60) {
                    backoff = service.restart_backoff;
                }
                tracing::error!(error = %message, retry_in_s = backoff.as_secs_f64(), "pipeline failed; starting it again after the backoff");
                metrics::counter!(crate::metrics::PIPELINE_RESTARTS, "pipeline" => pipeline.spec.name.clone())
                    .increment(1);
                {
                    let mut life = pipeline.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
                    life.restarts += 1;
                    life.last_error = Some(LastError {
                        message,
                        at: rfc3339_millis(now_ms()),
                    });
                    life.next_attempt_at =
                        Some(rfc3339_millis(now_ms() + backoff.as_millis() as i64));
                }
                pipeline.set_state(State::BackingOff);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                    _ = desired.wait_for(|d| *d == Desired::Pause) => {}
                }
                backoff = (backoff * 2).min(service.restart_backoff_max);
            }
        }
    }
}

/// A state as the API and `_control/` name it.
fn state_name(state: State) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// How often a running API restore says so in its record (`updated_at`): a record of a running
/// restore older than [`STALE`] was left by a service that ended without stopping it.
const HEARTBEAT: Duration = Duration::from_secs(30);
const STALE: Duration = Duration::from_secs(120);

/// Rewrite the restore's record every [`HEARTBEAT`] while it runs; never returns.
async fn heartbeat(store: &dyn storage::ObjectStore, restore: &ApiRestore) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if let Err(e) = control::remember_restore(store, &restore.record()).await {
            tracing::debug!(error = %e, "cannot refresh the restore's record");
        }
    }
}

/// The kind of a pipeline as `_control/` names it.
fn kind_of(spec: &PipelineSpec) -> &'static str {
    match spec.kind {
        PipelineKind::Sink => "sink",
        PipelineKind::Restore => "restore",
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
                self.store = Some(open_archive(config, &pipeline.spec.archive).await?);
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
async fn until_true(mut flag: watch::Receiver<bool>) {
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
                ..SinkOptions::from_config(&spec.sink, config.storage.s3.part_size.bytes())?
            };
            let report = sink::run(client, store, opts, stop)
                .await
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

async fn run_restore(
    config: &Config,
    cluster: &str,
    archive: &str,
    opts: &RestoreOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Outcome, String> {
    let store = open_archive(config, archive).await?;
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

async fn open_archive(
    config: &Config,
    name: &str,
) -> Result<Arc<dyn storage::ObjectStore>, String> {
    let url = config
        .archive_named(name)
        .ok_or_else(|| format!("no archive named {name:?}"))?;
    let url = StorageUrl::parse(url).map_err(|e| e.to_string())?;
    storage::open(&url, &config.s3_options())
        .await
        .map_err(|e| e.to_string())
}

/// Whether Rewind can use the cluster's admin API (not over Amazon MSK IAM; see `SinkOptions`).
fn admin_api(config: &Config, cluster: &str) -> bool {
    config.cluster(cluster).is_some_and(|k| !k.aws_msk_iam)
}

fn client_config(config: &Config, cluster: &str) -> Result<rdkafka::ClientConfig, String> {
    let kafka = config
        .cluster(cluster)
        .ok_or_else(|| format!("no cluster named {cluster:?}"))?;
    Ok(crate::kafka::client_config(kafka, &[]))
}

/// The JSON the API shows for a pipeline: its definition (secrets are not part of it), life and
/// live numbers.
pub fn pipeline_json(pipeline: &Pipeline, detail: bool) -> Json {
    let spec = &pipeline.spec;
    let life = pipeline.lifecycle();
    let live = pipeline.live();
    let mut doc = json!({
        "name": spec.name,
        "kind": spec.kind,
        "cluster": spec.cluster,
        "archive": spec.archive,
        "state": life.state,
        "since": life.since,
        "restarts": life.restarts,
        "last_error": life.last_error,
        "lag_records": live.lag_records,
        "records": live.records,
        "bytes": live.bytes,
    });
    if let Some(age) = live.recovery_point_age_seconds {
        doc["recovery_point_age_seconds"] = json!(age);
    }
    if let Some(at) = &life.next_attempt_at {
        doc["next_attempt_at"] = json!(at);
    }
    if detail {
        doc["file"] = json!(spec.file.display().to_string());
        doc["partitions"] = json!(live.partitions);
        match spec.kind {
            PipelineKind::Sink => {
                doc["files"] = json!(live.files);
                doc["settings"] = json!({
                    "topics": spec.sink.topics,
                    "exclude": spec.sink.exclude,
                    "group": spec.sink.group,
                });
            }
            PipelineKind::Restore => {
                doc["restore_id"] = json!(spec.restore_id());
                doc["planned_records"] = json!(live.planned_records);
                doc["settings"] = json!(spec.job);
            }
        }
    }
    doc
}

/// The JSON the API shows for an API restore.
pub fn restore_json(restore: &ApiRestore) -> Json {
    let life = restore.lifecycle();
    let live = restore.live();
    json!({
        "id": restore.id,
        "cluster": restore.cluster,
        "archive": restore.archive,
        "started_at": restore.started_at,
        "state": life.state,
        "since": life.since,
        "error": life.last_error.map(|e| e.message),
        "planned_records": live.planned_records,
        "records": live.records,
        "bytes": live.bytes,
        "lag_records": live.lag_records,
        "finished": live.finished,
        "partitions": live.partitions,
        "request": restore.job,
    })
}
