//! Every metric Rewind exports, named in one place. Labels have bounded cardinality: `topic` and a
//! small fixed set of reasons, never partitions or offsets.

use std::net::SocketAddr;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Records made durable in the archive (`topic`).
pub const SINK_RECORDS: &str = "rewind_sink_records_archived_total";
/// Bytes of data files written (`topic`).
pub const SINK_BYTES: &str = "rewind_sink_bytes_archived_total";
/// Records read from Kafka, archived or not yet: it rises as soon as records flow, while
/// `SINK_RECORDS` rises only as files are uploaded.
pub const SINK_READ: &str = "rewind_sink_records_read_total";
/// Data files written (`topic`, `reason`: records, bytes, age, later_bucket, revoked, shutdown, memory_pressure).
pub const SINK_FILES: &str = "rewind_sink_files_written_total";
/// Data files found already written and adopted instead of duplicated (`topic`).
pub const SINK_FILES_ADOPTED: &str = "rewind_sink_files_adopted_total";
/// Time to make one file durable: upload plus checkpoint.
pub const SINK_UPLOAD_SECONDS: &str = "rewind_sink_upload_seconds";
/// Bytes of records buffered in memory across all partitions.
pub const SINK_BUFFERED_BYTES: &str = "rewind_sink_buffered_bytes";
/// Full files uploading in the background while their partitions read on.
pub const SINK_UPLOADS_IN_FLIGHT: &str = "rewind_sink_uploads_in_flight";
/// Records in Kafka not yet durable in the archive (`topic`).
pub const SINK_LAG: &str = "rewind_sink_lag_records";
/// Seconds since the oldest record not yet durable was consumed (`topic`); 0 when all is durable.
pub const SINK_RECOVERY_POINT_AGE: &str = "rewind_sink_recovery_point_age_seconds";
/// Recorded gaps: records deleted by the broker before they were archived (`topic`).
pub const SINK_GAPS: &str = "rewind_sink_gaps_total";
/// Partitions refused because their offsets went backwards (`topic`).
pub const SINK_REFUSED: &str = "rewind_sink_partitions_refused_total";
/// Keys and values decoded into typed columns (`topic`, `side`: key or value), in files written.
pub const SINK_DECODED: &str = "rewind_sink_decoded_total";
/// Keys and values of topics decoded into typed columns that were not (`topic`, `side`, `reason`:
/// not_framed, unknown_schema, undecodable, incompatible); their records are archived raw.
pub const SINK_DECODE_FAILURES: &str = "rewind_sink_decode_failures_total";
/// Sink errors (`kind`: `storage_unavailable` for an upload that will be retried, `flush` for one that stopped the sink).
pub const SINK_ERRORS: &str = "rewind_sink_errors_total";

/// Named restore points a sink took on its schedule (`sink.marks`).
pub const MARKS_TAKEN: &str = "rewind_marks_taken_total";
/// When the last scheduled restore point was taken (seconds since the epoch).
pub const MARK_LAST_TAKEN: &str = "rewind_mark_last_taken_timestamp_seconds";
/// Scheduled restore points that could not be taken (tried again a minute later).
pub const MARK_ERRORS: &str = "rewind_mark_errors_total";

/// Versions of the Iceberg tables committed by scheduled syncs (`topic`).
pub const TABLE_COMMITS: &str = "rewind_table_commits_total";
/// Scheduled table syncs that failed.
pub const TABLE_SYNC_ERRORS: &str = "rewind_table_sync_errors_total";
/// When a scheduled sync last brought every selected table up to date.
pub const TABLE_LAST_SYNC: &str = "rewind_table_last_sync_timestamp_seconds";
/// Data files scheduled compactions merged (`topic`), and the compacted files they became.
pub const COMPACT_PARTS: &str = "rewind_compact_parts_total";
pub const COMPACT_FILES: &str = "rewind_compact_files_total";
/// Scheduled compactions that failed.
pub const COMPACT_ERRORS: &str = "rewind_compact_errors_total";
/// When a scheduled compaction last finished without an error.
pub const COMPACT_LAST_RUN: &str = "rewind_compact_last_run_timestamp_seconds";
/// Restore drills run (`result`: passed, failed, error).
pub const DRILLS: &str = "rewind_drills_total";
/// When the last drill that passed finished (seconds since the epoch).
pub const DRILL_LAST_SUCCESS: &str = "rewind_drill_last_success_timestamp_seconds";
/// The full-restore time the last passing drill measured for a topic (`topic`): the recovery time objective.
pub const DRILL_RTO: &str = "rewind_drill_estimated_restore_seconds";

/// Records produced into the target cluster by restores (`topic`: the target topic).
pub const RESTORE_RECORDS: &str = "rewind_restore_records_total";
/// Key and value bytes produced by restores (`topic`).
pub const RESTORE_BYTES: &str = "rewind_restore_bytes_total";
/// Restore transactions committed (records plus progress).
pub const RESTORE_TRANSACTIONS: &str = "rewind_restore_transactions_total";
/// Records archived but not yet restored (`topic`); in follow mode, the standby's lag behind the archive.
pub const RESTORE_LAG: &str = "rewind_restore_lag_records";
/// Restore transactions aborted by an error.
pub const RESTORE_ERRORS: &str = "rewind_restore_errors_total";

/// 1 while a pipeline of `rewind run` is running, 0 otherwise (`pipeline`).
pub const PIPELINE_UP: &str = "rewind_pipeline_up";
/// Runs of a pipeline started again after a failure (`pipeline`).
pub const PIPELINE_RESTARTS: &str = "rewind_pipeline_restarts_total";
/// Gauge per pipeline: 1 while it is paused (or pausing) on purpose, through the API.
pub const PIPELINE_PAUSED: &str = "rewind_pipeline_paused";

/// Count what a written file's typed columns decoded and did not.
pub fn decoded(topic: &str, typed: &crate::archive::typed::Prepared) {
    for (side, n) in typed.decoded() {
        metrics::counter!(SINK_DECODED, "topic" => topic.to_string(), "side" => side.as_str())
            .increment(n);
    }
    for (side, why, n) in typed.failures() {
        metrics::counter!(SINK_DECODE_FAILURES, "topic" => topic.to_string(), "side" => side.as_str(), "reason" => why.as_str())
            .increment(n);
    }
}

/// Install the Prometheus recorder without a listener of its own (the service's HTTP API renders
/// `/metrics` from the handle), and describe every metric.
pub fn install() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

/// Serve Prometheus exposition on `addr` (GET any path, e.g. `/metrics`) and describe every metric.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    describe();
    Ok(())
}

fn describe() {
    describe_counter!(
        COMPACT_PARTS,
        Unit::Count,
        "Data files merged by scheduled compactions, by topic."
    );
    describe_counter!(
        COMPACT_FILES,
        Unit::Count,
        "Compacted files written by scheduled compactions, by topic."
    );
    describe_counter!(
        COMPACT_ERRORS,
        Unit::Count,
        "Scheduled compactions that failed (the next one tries again)."
    );
    describe_gauge!(
        COMPACT_LAST_RUN,
        Unit::Seconds,
        "When a scheduled compaction last finished without an error, in seconds since the epoch."
    );
    describe_counter!(
        TABLE_COMMITS,
        Unit::Count,
        "Versions of the topics' Iceberg tables committed by scheduled syncs, by topic."
    );
    describe_counter!(
        TABLE_SYNC_ERRORS,
        Unit::Count,
        "Scheduled syncs of the Iceberg tables that failed (the next one tries again)."
    );
    describe_gauge!(
        TABLE_LAST_SYNC,
        Unit::Seconds,
        "When a scheduled sync last brought every selected table up to date, in seconds since the epoch."
    );
    describe_counter!(
        DRILLS,
        Unit::Count,
        "Restore drills run, by result (passed, failed, error)."
    );
    describe_gauge!(
        DRILL_LAST_SUCCESS,
        Unit::Seconds,
        "When the last restore drill that passed finished, in seconds since the epoch."
    );
    describe_gauge!(
        DRILL_RTO,
        Unit::Seconds,
        "Time a full restore of the topic would take at the last passing drill's rate."
    );
    describe_counter!(
        MARKS_TAKEN,
        Unit::Count,
        "Named restore points the sink took on its schedule (sink.marks)."
    );
    describe_gauge!(
        MARK_LAST_TAKEN,
        Unit::Seconds,
        "When the last scheduled restore point was taken, in seconds since the epoch."
    );
    describe_counter!(
        MARK_ERRORS,
        Unit::Count,
        "Scheduled restore points that could not be taken (tried again a minute later)."
    );
    describe_gauge!(
        PIPELINE_UP,
        Unit::Count,
        "1 while the pipeline is running, 0 otherwise."
    );
    describe_gauge!(
        PIPELINE_PAUSED,
        Unit::Count,
        "1 while the pipeline is paused through the API, 0 otherwise."
    );
    describe_counter!(
        PIPELINE_RESTARTS,
        Unit::Count,
        "Runs of the pipeline started again after a failure."
    );
    describe_counter!(
        SINK_RECORDS,
        Unit::Count,
        "Records made durable in the archive."
    );
    describe_counter!(
        SINK_READ,
        Unit::Count,
        "Records read from Kafka, archived or not yet."
    );
    describe_counter!(SINK_BYTES, Unit::Bytes, "Bytes of data files written.");
    describe_counter!(
        SINK_FILES,
        Unit::Count,
        "Data files written, by rotation reason."
    );
    describe_counter!(
        SINK_FILES_ADOPTED,
        Unit::Count,
        "Data files found already written and adopted."
    );
    describe_histogram!(
        SINK_UPLOAD_SECONDS,
        Unit::Seconds,
        "Time to make one data file durable (upload and checkpoint)."
    );
    describe_gauge!(
        SINK_BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes of records buffered in memory."
    );
    describe_gauge!(
        SINK_UPLOADS_IN_FLIGHT,
        Unit::Count,
        "Full files uploading in the background while their partitions read on."
    );
    describe_gauge!(
        SINK_LAG,
        Unit::Count,
        "Records in Kafka not yet durable in the archive."
    );
    describe_gauge!(
        SINK_RECOVERY_POINT_AGE,
        Unit::Seconds,
        "Seconds since the oldest record not yet durable was consumed."
    );
    describe_counter!(
        RESTORE_RECORDS,
        Unit::Count,
        "Records produced into the target cluster by restores."
    );
    describe_counter!(
        RESTORE_BYTES,
        Unit::Bytes,
        "Key and value bytes produced by restores."
    );
    describe_counter!(
        RESTORE_TRANSACTIONS,
        Unit::Count,
        "Restore transactions committed."
    );
    describe_gauge!(
        RESTORE_LAG,
        Unit::Count,
        "Records archived but not yet restored (follow mode: lag behind the archive)."
    );
    describe_counter!(
        RESTORE_ERRORS,
        Unit::Count,
        "Restore transactions aborted by an error."
    );
    describe_counter!(
        SINK_GAPS,
        Unit::Count,
        "Records deleted by the broker before they were archived (recorded gaps)."
    );
    describe_counter!(
        SINK_REFUSED,
        Unit::Count,
        "Partitions refused because their offsets went backwards."
    );
    describe_counter!(
        SINK_ERRORS,
        Unit::Count,
        "Sink errors: storage_unavailable (retried) or flush (fatal)."
    );
    describe_counter!(
        SINK_DECODED,
        Unit::Count,
        "Keys and values decoded into typed columns, in files written."
    );
    describe_counter!(
        SINK_DECODE_FAILURES,
        Unit::Count,
        "Keys and values of decoded topics that were archived raw only, by reason."
    );
}
