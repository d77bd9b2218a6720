//! What the API shows: the JSON of a pipeline and of an API restore, and the names a state and a
//! pipeline's kind have in the API and in `_control/`.
//!
//! Invariant: a view is built from the definition, the lifecycle and the live numbers only, so it
//! never shows a secret (a definition holds none), and a state has one name everywhere.

use serde_json::{json, Value as Json};

use super::{ApiRestore, Pipeline, State};
use crate::config::{PipelineKind, PipelineSpec};

/// A state as the API and `_control/` name it.
pub(super) fn state_name(state: State) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The kind of a pipeline as `_control/` names it.
pub(super) fn kind_of(spec: &PipelineSpec) -> &'static str {
    match spec.kind {
        PipelineKind::Sink => "sink",
        PipelineKind::Restore => "restore",
    }
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
        "partitions_assigned": live.partitions.len(),
        "records_per_second": live.records_per_second,
    });
    if spec.kind == PipelineKind::Sink {
        doc["read_records"] = json!(live.read_records);
        doc["read_records_per_second"] = json!(live.read_records_per_second);
    }
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
        "records_per_second": live.records_per_second,
        "finished": live.finished,
        "partitions": live.partitions,
        "request": restore.job,
    })
}
