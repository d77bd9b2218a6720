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
//!
//! The rooms: this file holds the states and the pipeline as the supervisor and the API share
//! them; `registry` what the service runs and a pipeline's pause and resume; `supervise` one
//! pipeline's supervisor and what one run is; `restores` the restores started through the API,
//! their records and their recall after a restart; `views` the JSON the API shows; [`control`]
//! the `_control/` documents; [`api`] the HTTP API and [`guard`] who may talk to it.

pub mod api;
mod compact;
pub mod control;
mod drills;
pub mod guard;
mod marks;
mod registry;
mod restores;
mod supervise;
mod tables;
mod views;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::archive::time::{now_ms, rfc3339_millis};
use crate::config::{Config, PipelineSpec};
use crate::live::{Live, LiveStatus};
use crate::storage::{self, StorageUrl};

pub use registry::Registry;
pub use restores::ApiRestore;
pub use views::{pipeline_json, restore_json};

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

/// The archive named `name`, opened for writing: for sinks, and for the decisions and restore
/// records the service keeps in it.
async fn open_archive(
    config: &Config,
    name: &str,
) -> Result<Arc<dyn storage::ObjectStore>, String> {
    let url = archive_url(config, name)?;
    storage::open_writer(&url, &config.s3_options())
        .await
        .map_err(|e| e.to_string())
}

/// The archive named `name`, opened for reading: what a restore reads (it writes to Kafka only,
/// and a standby waiting for its archive must not create its folder) and the recorded pauses.
async fn read_archive(
    config: &Config,
    name: &str,
) -> Result<Arc<dyn storage::ObjectStore>, String> {
    let url = archive_url(config, name)?;
    storage::open_reader(&url, &config.s3_options())
        .await
        .map_err(|e| e.to_string())
}

fn archive_url(config: &Config, name: &str) -> Result<StorageUrl, String> {
    let url = config
        .archive_named(name)
        .ok_or_else(|| format!("no archive named {name:?}"))?;
    StorageUrl::parse(url).map_err(|e| e.to_string())
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
