//! What the service decides through its API, kept where it is durable already: the archive of
//! the pipeline or restore it concerns (`_control/`), not a database of its own.
//!
//! - `_control/pipelines/<kind>/<name>.json`: whether the pipeline of that kind and name is
//!   paused. Every worker running such a pipeline on that archive reads it before each run and every
//!   `service.control_interval`, so a pause stops the pipeline on all of them (a sink's
//!   partitions are not taken over by the others) and survives restarts.
//! - `_control/restores/<id>.json`: a restore started through `POST /restores`, with its request
//!   and last known state, so that a restarted service still lists it and can resume it (its
//!   progress lives in the target cluster, as for every restore).
//!
//! Invariant: a pause is answered "paused" only once its document is written; a document never
//! holds a secret (clusters and archives are named, as in the configuration).

use serde::{Deserialize, Serialize};

use super::LastError;
use crate::archive::documents::{read_doc, write_doc, ArchiveError};
use crate::archive::time::rfc3339_millis;
use crate::config::RestoreJob;
use crate::storage::{ObjectStore, PutMode};

use crate::archive::paths::{
    control_pipeline_key as pipeline_key, control_restore_key as restore_key,
};
/// The version of the documents this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// `_control/pipelines/<kind>/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineControl {
    pub format_version: u32,
    pub kind: String,
    pub pipeline: String,
    pub paused: bool,
    pub changed_at: String,
}

/// Whether the pipeline of `kind` (`sink`, `restore`) and `name` is paused, as the archive says
/// (`false` when it says nothing).
pub async fn paused(store: &dyn ObjectStore, kind: &str, name: &str) -> Result<bool, ArchiveError> {
    Ok(
        read_doc::<PipelineControl>(store, &pipeline_key(kind, name))
            .await?
            .is_some_and(|c| c.paused),
    )
}

/// Record that the pipeline of `kind` and `name` is paused, or not.
pub async fn set_paused(
    store: &dyn ObjectStore,
    kind: &str,
    name: &str,
    paused: bool,
    now_ms: i64,
) -> Result<(), ArchiveError> {
    let doc = PipelineControl {
        format_version: FORMAT_VERSION,
        kind: kind.to_string(),
        pipeline: name.to_string(),
        paused,
        changed_at: rfc3339_millis(now_ms),
    };
    write_doc(store, &pipeline_key(kind, name), &doc, PutMode::Overwrite).await
}

/// `_control/restores/<id>.json`: a restore started through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    pub format_version: u32,
    pub id: String,
    /// The names of its cluster and archive in the configuration.
    pub cluster: String,
    pub archive: String,
    /// The request, with its `restore_id` set to `id`.
    pub job: RestoreJob,
    pub started_at: String,
    /// The service that runs or last ran it: host name and API address.
    #[serde(default)]
    pub owner: Option<String>,
    /// Its state when last written: `running`, `completed`, `failed` or `stopped`.
    pub state: String,
    pub last_error: Option<LastError>,
    pub updated_at: String,
}

pub async fn remember_restore(
    store: &dyn ObjectStore,
    record: &RestoreRecord,
) -> Result<(), ArchiveError> {
    write_doc(store, &restore_key(&record.id), record, PutMode::Overwrite).await
}

/// Every restore the archive remembers; unreadable documents are skipped with a warning.
pub async fn remembered_restores(
    store: &dyn ObjectStore,
) -> Result<Vec<RestoreRecord>, ArchiveError> {
    let mut records = Vec::new();
    for object in store
        .list(&crate::archive::paths::control_restores_prefix())
        .await?
    {
        match read_doc::<RestoreRecord>(store, &object.key).await {
            Ok(Some(record)) if record.format_version == FORMAT_VERSION => records.push(record),
            Ok(_) => {}
            Err(e) => tracing::warn!(key = object.key, error = %e, "skipping a restore record"),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    #[tokio::test]
    async fn a_pause_reads_back_and_a_missing_document_means_running() {
        let store = MemoryStore::new();
        assert!(!paused(&store, "sink", "backup").await.unwrap());
        set_paused(&store, "sink", "backup", true, 0).await.unwrap();
        assert!(paused(&store, "sink", "backup").await.unwrap());
        assert!(!paused(&store, "sink", "other").await.unwrap());
        assert!(
            !paused(&store, "restore", "backup").await.unwrap(),
            "a restore pipeline of the same name is another pipeline"
        );
        set_paused(&store, "sink", "backup", false, 1)
            .await
            .unwrap();
        assert!(!paused(&store, "sink", "backup").await.unwrap());
    }

    #[tokio::test]
    async fn restores_are_remembered_and_listed() {
        let store = MemoryStore::new();
        let record = RestoreRecord {
            format_version: FORMAT_VERSION,
            id: "r1".into(),
            cluster: "default".into(),
            archive: "default".into(),
            job: RestoreJob {
                restore_id: Some("r1".into()),
                ..RestoreJob::default()
            },
            started_at: rfc3339_millis(0),
            owner: Some("host 127.0.0.1:8080".into()),
            state: "running".into(),
            last_error: None,
            updated_at: rfc3339_millis(0),
        };
        remember_restore(&store, &record).await.unwrap();
        store
            .put(
                "_control/restores/broken.json",
                bytes::Bytes::from_static(b"{"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        assert_eq!(remembered_restores(&store).await.unwrap(), vec![record]);
    }
}
