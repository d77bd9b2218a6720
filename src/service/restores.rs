//! Restores started through the API (`POST /restores`): checking and launching one, resuming one,
//! the record each keeps in its archive, and recalling those records after a restart.
//!
//! Invariant: a restore's record is written before it starts and before its ending shows, and a
//! running one rewrites it every [`HEARTBEAT`]; so a restarted service lists every restore it ran.
//! A record still marked running is taken as interrupted when this service wrote it (before a
//! restart) or once it is older than [`STALE`] (its service ended without stopping it), never
//! while another live service runs it. An id is reserved before anything awaits, so two requests
//! under one id never both start.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::watch;

use super::supervise::{run_restore, until_true, Outcome};
use super::views::state_name;
use super::{
    admin_api, control, open_archive, ControlError, LastError, Lifecycle, Registry, State,
};
use crate::archive::time::{now_ms, rfc3339_millis};
use crate::config::{PipelineKind, RestoreJob};
use crate::live::{Live, LiveStatus};
use crate::restore;
use crate::storage;

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

/// The body of `POST /restores`: `cluster` and `archive` (names from the configuration, `default`
/// when absent) and the fields of a restore job, checked as a pipeline file's are (unknown fields
/// refused, each problem named by its path).
#[derive(Debug, Clone)]
pub struct StartRestore {
    pub cluster: String,
    pub archive: String,
    pub job: RestoreJob,
}

impl<'de> serde::Deserialize<'de> for StartRestore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let Json::Object(mut fields) = Json::deserialize(d)? else {
            return Err(D::Error::custom("the body must be a JSON object"));
        };
        let mut name_of = |key: &str| match fields.remove(key) {
            None => Ok("default".to_string()),
            Some(Json::String(s)) => Ok(s),
            Some(other) => Err(D::Error::custom(format!(
                "{key}: expected a string, got {other}"
            ))),
        };
        let cluster = name_of("cluster")?;
        let archive = name_of("archive")?;
        // The job's fields are flattened into the body; serde's `flatten` cannot be combined with
        // the job's `deny_unknown_fields`, so they are taken out of the object by hand.
        let job: RestoreJob = serde_path_to_error::deserialize(Json::Object(fields))
            .map_err(|e| D::Error::custom(format!("{}: {}", e.path(), e.inner())))?;
        // The job is kept in the archive and shown by GET /restores: no secrets in it.
        if let Some(field) = job.registry_credentials() {
            return Err(D::Error::custom(format!(
                "{field}: credentials in the URL would be kept with the restore and shown by GET /restores; give the service a registry URL without them"
            )));
        }
        Ok(StartRestore {
            cluster,
            archive,
            job,
        })
    }
}

impl Registry {
    /// Start the restore a `POST /restores` body asks for.
    pub async fn start_restore(
        self: &Arc<Self>,
        request: StartRestore,
    ) -> Result<Arc<ApiRestore>, ControlError> {
        let StartRestore {
            cluster,
            archive,
            mut job,
        } = request;
        // Relative times are resolved now, once: the restore is kept (and resumed, after a
        // restart too) with the absolute window it was asked for.
        let now = now_ms();
        for (field, value, open) in [
            ("from", &mut job.from, "earliest"),
            ("to", &mut job.to, "latest"),
        ] {
            *value = crate::config::when::absolute(value, open, now)
                .map_err(|e| ControlError::BadRequest(format!("{field}: {e}")))?
                .0;
        }
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
pub(super) async fn recall_restores(registry: Arc<Registry>) {
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
