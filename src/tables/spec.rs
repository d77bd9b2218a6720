//! The Iceberg table Rewind keeps for each topic: its schema, partition spec and name mapping, and
//! the Avro schemas of the manifests and manifest lists that list the archive's data files
//! (Iceberg table spec, format version 2).

use serde_json::{json, Value};

/// Field ids of the table's columns. The archive's Parquet files carry no field ids, so readers
/// find columns by name through the table's name mapping ([`name_mapping`]).
pub mod field {
    pub const PARTITION: i32 = 1;
    pub const OFFSET: i32 = 2;
    pub const TIMESTAMP: i32 = 3;
    pub const TIMESTAMP_TYPE: i32 = 4;
    pub const KEY: i32 = 5;
    pub const VALUE: i32 = 6;
    pub const HEADERS: i32 = 7;
    pub const HEADER: i32 = 8;
    pub const HEADER_KEY: i32 = 9;
    pub const HEADER_VALUE: i32 = 10;
    /// The highest column id.
    pub const LAST: i32 = 10;
    /// The partition field (identity of `partition`).
    pub const PARTITION_FIELD: i32 = 1000;
}

/// The field id of a Parquet leaf column of a data file, by its dotted path.
pub fn leaf_id(path: &str) -> Option<i32> {
    Some(match path {
        "offset" => field::OFFSET,
        "timestamp" => field::TIMESTAMP,
        "timestamp_type" => field::TIMESTAMP_TYPE,
        "key" => field::KEY,
        "value" => field::VALUE,
        "headers.list.element.key" => field::HEADER_KEY,
        "headers.list.element.value" => field::HEADER_VALUE,
        _ => return None,
    })
}

/// The table schema (id 0). `partition` is not in the data files: it is the partition spec's
/// identity field, whose value readers take from the manifests (the spec's rule for columns a data
/// file does not have, made for metadata-only migrations of Hive tables like this one).
pub fn schema() -> Value {
    json!({
        "type": "struct",
        "schema-id": 0,
        "fields": [
            // Optional, though every row has one: readers fill a column a file lacks from the
            // identity partition only for optional columns (pyiceberg 0.12 refuses a required one).
            {"id": field::PARTITION, "name": "partition", "required": false, "type": "int",
             "doc": "Kafka partition"},
            {"id": field::OFFSET, "name": "offset", "required": true, "type": "long"},
            {"id": field::TIMESTAMP, "name": "timestamp", "required": false, "type": "timestamptz"},
            {"id": field::TIMESTAMP_TYPE, "name": "timestamp_type", "required": false, "type": "string"},
            {"id": field::KEY, "name": "key", "required": false, "type": "binary"},
            {"id": field::VALUE, "name": "value", "required": false, "type": "binary"},
            {"id": field::HEADERS, "name": "headers", "required": true, "type": {
                "type": "list",
                "element-id": field::HEADER,
                "element-required": true,
                "element": {
                    "type": "struct",
                    "fields": [
                        {"id": field::HEADER_KEY, "name": "key", "required": true, "type": "string"},
                        {"id": field::HEADER_VALUE, "name": "value", "required": false, "type": "binary"},
                    ]
                }
            }},
        ]
    })
}

/// The partition spec (id 0): identity of the Kafka partition. Not by time: a file's records are
/// not all of one hour (late records stay in the open file), so time is pruned with the files'
/// `timestamp` bounds instead.
pub fn partition_spec() -> Value {
    json!({
        "spec-id": 0,
        "fields": [
            {"name": "partition", "transform": "identity", "source-id": field::PARTITION,
             "field-id": field::PARTITION_FIELD}
        ]
    })
}

/// The name mapping (`schema.name-mapping.default`) from the data files' column names to field ids.
pub fn name_mapping() -> Value {
    json!([
        {"field-id": field::OFFSET, "names": ["offset"]},
        {"field-id": field::TIMESTAMP, "names": ["timestamp"]},
        {"field-id": field::TIMESTAMP_TYPE, "names": ["timestamp_type"]},
        {"field-id": field::KEY, "names": ["key"]},
        {"field-id": field::VALUE, "names": ["value"]},
        {"field-id": field::HEADERS, "names": ["headers"], "fields": [
            {"field-id": field::HEADER, "names": ["element"], "fields": [
                {"field-id": field::HEADER_KEY, "names": ["key"]},
                {"field-id": field::HEADER_VALUE, "names": ["value"]},
            ]}
        ]},
    ])
}

/// A map with int keys, as Iceberg writes it in Avro: an array of key/value records.
fn int_map(field_id: i32, name: &str, key_id: i32, value_id: i32, value: &str) -> Value {
    json!({
        "name": name,
        "type": ["null", {
            "type": "array",
            "logicalType": "map",
            "items": {
                "type": "record",
                "name": format!("k{key_id}_v{value_id}"),
                "fields": [
                    {"name": "key", "type": "int", "field-id": key_id},
                    {"name": "value", "type": value, "field-id": value_id},
                ]
            }
        }],
        "default": null,
        "field-id": field_id,
    })
}

/// The Avro schema of a manifest's entries (v2, data files).
pub fn manifest_entry_avro() -> Value {
    json!({
        "type": "record",
        "name": "manifest_entry",
        "fields": [
            {"name": "status", "type": "int", "field-id": 0},
            {"name": "snapshot_id", "type": ["null", "long"], "default": null, "field-id": 1},
            {"name": "sequence_number", "type": ["null", "long"], "default": null, "field-id": 3},
            {"name": "file_sequence_number", "type": ["null", "long"], "default": null, "field-id": 4},
            {"name": "data_file", "field-id": 2, "type": {
                "type": "record",
                "name": "r2",
                "fields": [
                    {"name": "content", "type": "int", "field-id": 134},
                    {"name": "file_path", "type": "string", "field-id": 100},
                    {"name": "file_format", "type": "string", "field-id": 101},
                    {"name": "partition", "field-id": 102, "type": {
                        "type": "record",
                        "name": "r102",
                        "fields": [
                            {"name": "partition", "type": ["null", "int"], "default": null,
                             "field-id": field::PARTITION_FIELD}
                        ]
                    }},
                    {"name": "record_count", "type": "long", "field-id": 103},
                    {"name": "file_size_in_bytes", "type": "long", "field-id": 104},
                    int_map(108, "column_sizes", 117, 118, "long"),
                    int_map(109, "value_counts", 119, 120, "long"),
                    int_map(110, "null_value_counts", 121, 122, "long"),
                    int_map(125, "lower_bounds", 126, 127, "bytes"),
                    int_map(128, "upper_bounds", 129, 130, "bytes"),
                    {"name": "split_offsets", "type": ["null", {"type": "array", "items": "long",
                     "element-id": 133}], "default": null, "field-id": 132},
                    {"name": "sort_order_id", "type": ["null", "int"], "default": null, "field-id": 140},
                ]
            }},
        ]
    })
}

/// The Avro schema of a manifest list's entries (v2).
pub fn manifest_file_avro() -> Value {
    json!({
        "type": "record",
        "name": "manifest_file",
        "fields": [
            {"name": "manifest_path", "type": "string", "field-id": 500},
            {"name": "manifest_length", "type": "long", "field-id": 501},
            {"name": "partition_spec_id", "type": "int", "field-id": 502},
            {"name": "content", "type": "int", "field-id": 517},
            {"name": "sequence_number", "type": "long", "field-id": 515},
            {"name": "min_sequence_number", "type": "long", "field-id": 516},
            {"name": "added_snapshot_id", "type": "long", "field-id": 503},
            {"name": "added_files_count", "type": "int", "field-id": 504},
            {"name": "existing_files_count", "type": "int", "field-id": 505},
            {"name": "deleted_files_count", "type": "int", "field-id": 506},
            {"name": "added_rows_count", "type": "long", "field-id": 512},
            {"name": "existing_rows_count", "type": "long", "field-id": 513},
            {"name": "deleted_rows_count", "type": "long", "field-id": 514},
            {"name": "partitions", "default": null, "field-id": 507, "type": ["null", {
                "type": "array",
                "element-id": 508,
                "items": {
                    "type": "record",
                    "name": "r508",
                    "fields": [
                        {"name": "contains_null", "type": "boolean", "field-id": 509},
                        {"name": "contains_nan", "type": ["null", "boolean"], "default": null, "field-id": 518},
                        {"name": "lower_bound", "type": ["null", "bytes"], "default": null, "field-id": 510},
                        {"name": "upper_bound", "type": ["null", "bytes"], "default": null, "field-id": 511},
                    ]
                }
            }]},
        ]
    })
}
