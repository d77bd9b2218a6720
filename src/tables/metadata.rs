//! The table metadata file (`v<N>.metadata.json`, Iceberg format version 2).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec;

/// One snapshot: the table's files at one commit, through its manifest list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    pub snapshot_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<i64>,
    pub sequence_number: i64,
    pub timestamp_ms: i64,
    pub manifest_list: String,
    pub summary: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<i32>,
}

/// An entry of the snapshot log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotLogEntry {
    pub snapshot_id: i64,
    pub timestamp_ms: i64,
}

/// An entry of the metadata log: an earlier metadata file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetadataLogEntry {
    pub metadata_file: String,
    pub timestamp_ms: i64,
}

/// A named reference (`main`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Ref {
    pub snapshot_id: i64,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The table metadata, as far as Rewind writes it. Fields it does not model are kept as they were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TableMetadata {
    pub format_version: i32,
    pub table_uuid: String,
    pub location: String,
    pub last_sequence_number: i64,
    pub last_updated_ms: i64,
    pub last_column_id: i32,
    pub schemas: Vec<Value>,
    pub current_schema_id: i32,
    pub partition_specs: Vec<Value>,
    pub default_spec_id: i32,
    pub last_partition_id: i32,
    pub properties: BTreeMap<String, String>,
    /// `-1` when the table has no snapshot (as Iceberg's Java writers say it).
    #[serde(default = "no_snapshot")]
    pub current_snapshot_id: i64,
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    #[serde(default)]
    pub snapshot_log: Vec<SnapshotLogEntry>,
    #[serde(default)]
    pub metadata_log: Vec<MetadataLogEntry>,
    pub sort_orders: Vec<Value>,
    pub default_sort_order_id: i32,
    #[serde(default)]
    pub refs: BTreeMap<String, Ref>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl TableMetadata {
    /// A new table with no snapshot.
    pub fn new(
        uuid: String,
        location: String,
        now_ms: i64,
        properties: BTreeMap<String, String>,
    ) -> Self {
        TableMetadata {
            format_version: 2,
            table_uuid: uuid,
            location,
            last_sequence_number: 0,
            last_updated_ms: now_ms,
            last_column_id: spec::field::LAST,
            schemas: vec![spec::schema()],
            current_schema_id: 0,
            partition_specs: vec![spec::partition_spec()],
            default_spec_id: 0,
            last_partition_id: spec::field::PARTITION_FIELD,
            properties,
            current_snapshot_id: -1,
            snapshots: Vec::new(),
            snapshot_log: Vec::new(),
            metadata_log: Vec::new(),
            sort_orders: vec![serde_json::json!({"order-id": 0, "fields": []})],
            default_sort_order_id: 0,
            refs: BTreeMap::new(),
            other: BTreeMap::new(),
        }
    }

    /// The current snapshot, if the table has one (`-1` is how some writers say none).
    pub fn current(&self) -> Option<&Snapshot> {
        self.snapshots
            .iter()
            .find(|s| s.snapshot_id == self.current_snapshot_id)
    }
}

fn no_snapshot() -> i64 {
    -1
}
