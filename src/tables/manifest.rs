//! Manifests (the data files of a snapshot, with their statistics) and manifest lists (the
//! manifests of a snapshot), written and read as Avro files with the schemas of [`super::spec`].

use std::collections::BTreeMap;

use apache_avro::types::Value;
use apache_avro::{Codec, Reader, Schema, Writer};

use super::spec;
use super::TableError;

/// Whether a manifest entry adds, carries or removes its file (Iceberg's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Existing = 0,
    Added = 1,
    Deleted = 2,
}

/// One data file as a manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Absolute URI (`s3://bucket/prefix/data/...`, `file:///...`).
    pub path: String,
    /// The Kafka partition (the partition spec's one field).
    pub partition: i32,
    pub record_count: i64,
    pub file_size: i64,
    pub column_sizes: BTreeMap<i32, i64>,
    pub value_counts: BTreeMap<i32, i64>,
    pub null_value_counts: BTreeMap<i32, i64>,
    /// Single-value serialization of each bound (Iceberg spec, Appendix D).
    pub lower_bounds: BTreeMap<i32, Vec<u8>>,
    pub upper_bounds: BTreeMap<i32, Vec<u8>>,
    /// Where each row group starts, ascending.
    pub split_offsets: Vec<i64>,
}

/// One entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub status: Status,
    pub snapshot_id: i64,
    /// Data sequence number (the snapshot that added the file).
    pub sequence_number: i64,
    pub file_sequence_number: i64,
    pub file: DataFile,
}

/// One manifest as a manifest list names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: String,
    pub length: i64,
    pub sequence_number: i64,
    pub min_sequence_number: i64,
    pub added_snapshot_id: i64,
    pub added_files: i32,
    pub existing_files: i32,
    pub deleted_files: i32,
    pub added_rows: i64,
    pub existing_rows: i64,
    pub deleted_rows: i64,
    /// Smallest and largest Kafka partition among the manifest's live files.
    pub partitions: Option<(i32, i32)>,
}

fn schema(json: serde_json::Value) -> Schema {
    Schema::parse(&json).expect("the built-in Avro schemas parse")
}

fn union(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn int_map<V>(map: &BTreeMap<i32, V>, value: impl Fn(&V) -> Value) -> Value {
    union(Some(Value::Array(
        map.iter()
            .map(|(k, v)| {
                Value::Record(vec![
                    ("key".into(), Value::Int(*k)),
                    ("value".into(), value(v)),
                ])
            })
            .collect(),
    )))
}

/// Encode a manifest of `entries` for the table whose current schema is `table_schema` (the partition
/// spec is Rewind's one, [`spec::partition_spec`]).
pub fn write_manifest(
    entries: &[Entry],
    table_schema: &serde_json::Value,
) -> Result<Vec<u8>, TableError> {
    let avro = schema(spec::manifest_entry_avro());
    let mut writer = Writer::with_codec(&avro, Vec::new(), Codec::Null);
    let spec = spec::partition_spec();
    let meta = [
        ("schema", table_schema.to_string()),
        ("schema-id", table_schema["schema-id"].to_string()),
        ("partition-spec", spec["fields"].to_string()),
        ("partition-spec-id", "0".to_string()),
        ("format-version", "2".to_string()),
        ("content", "data".to_string()),
    ];
    for (k, v) in meta {
        writer.add_user_metadata(k.to_string(), v)?;
    }
    for e in entries {
        let f = &e.file;
        let data_file = Value::Record(vec![
            ("content".into(), Value::Int(0)),
            ("file_path".into(), Value::String(f.path.clone())),
            ("file_format".into(), Value::String("PARQUET".into())),
            (
                "partition".into(),
                Value::Record(vec![(
                    "partition".into(),
                    union(Some(Value::Int(f.partition))),
                )]),
            ),
            ("record_count".into(), Value::Long(f.record_count)),
            ("file_size_in_bytes".into(), Value::Long(f.file_size)),
            (
                "column_sizes".into(),
                int_map(&f.column_sizes, |v| Value::Long(*v)),
            ),
            (
                "value_counts".into(),
                int_map(&f.value_counts, |v| Value::Long(*v)),
            ),
            (
                "null_value_counts".into(),
                int_map(&f.null_value_counts, |v| Value::Long(*v)),
            ),
            (
                "lower_bounds".into(),
                int_map(&f.lower_bounds, |v| Value::Bytes(v.clone())),
            ),
            (
                "upper_bounds".into(),
                int_map(&f.upper_bounds, |v| Value::Bytes(v.clone())),
            ),
            (
                "split_offsets".into(),
                union(Some(Value::Array(
                    f.split_offsets.iter().map(|o| Value::Long(*o)).collect(),
                ))),
            ),
            ("sort_order_id".into(), union(None)),
        ]);
        writer.append(Value::Record(vec![
            ("status".into(), Value::Int(e.status as i32)),
            (
                "snapshot_id".into(),
                union(Some(Value::Long(e.snapshot_id))),
            ),
            (
                "sequence_number".into(),
                union(Some(Value::Long(e.sequence_number))),
            ),
            (
                "file_sequence_number".into(),
                union(Some(Value::Long(e.file_sequence_number))),
            ),
            ("data_file".into(), data_file),
        ]))?;
    }
    Ok(writer.into_inner()?)
}

/// Encode a manifest list.
pub fn write_manifest_list(
    manifests: &[ManifestFile],
    snapshot_id: i64,
    parent: Option<i64>,
    sequence_number: i64,
) -> Result<Vec<u8>, TableError> {
    let avro = schema(spec::manifest_file_avro());
    let mut writer = Writer::with_codec(&avro, Vec::new(), Codec::Null);
    writer.add_user_metadata("snapshot-id".into(), snapshot_id.to_string())?;
    writer.add_user_metadata(
        "parent-snapshot-id".into(),
        parent.map_or("null".to_string(), |p| p.to_string()),
    )?;
    writer.add_user_metadata("sequence-number".into(), sequence_number.to_string())?;
    writer.add_user_metadata("format-version".into(), "2")?;
    for m in manifests {
        let partitions = m.partitions.map(|(lo, hi)| {
            Value::Array(vec![Value::Record(vec![
                ("contains_null".into(), Value::Boolean(false)),
                ("contains_nan".into(), union(None)),
                (
                    "lower_bound".into(),
                    union(Some(Value::Bytes(lo.to_le_bytes().to_vec()))),
                ),
                (
                    "upper_bound".into(),
                    union(Some(Value::Bytes(hi.to_le_bytes().to_vec()))),
                ),
            ])])
        });
        writer.append(Value::Record(vec![
            ("manifest_path".into(), Value::String(m.path.clone())),
            ("manifest_length".into(), Value::Long(m.length)),
            ("partition_spec_id".into(), Value::Int(0)),
            ("content".into(), Value::Int(0)),
            ("sequence_number".into(), Value::Long(m.sequence_number)),
            (
                "min_sequence_number".into(),
                Value::Long(m.min_sequence_number),
            ),
            ("added_snapshot_id".into(), Value::Long(m.added_snapshot_id)),
            ("added_files_count".into(), Value::Int(m.added_files)),
            ("existing_files_count".into(), Value::Int(m.existing_files)),
            ("deleted_files_count".into(), Value::Int(m.deleted_files)),
            ("added_rows_count".into(), Value::Long(m.added_rows)),
            ("existing_rows_count".into(), Value::Long(m.existing_rows)),
            ("deleted_rows_count".into(), Value::Long(m.deleted_rows)),
            (
                "partitions".into(),
                union(partitions.or(Some(Value::Array(Vec::new())))),
            ),
        ]))?;
    }
    Ok(writer.into_inner()?)
}

/// The fields of a decoded Avro record, by name, with unions unwrapped.
struct Fields(BTreeMap<String, Value>);

impl Fields {
    fn of(value: Value, what: &str) -> Result<Fields, TableError> {
        match unwrap(value) {
            Value::Record(fields) => Ok(Fields(fields.into_iter().collect())),
            other => Err(TableError::Metadata(format!(
                "a {what} is not a record: {other:?}"
            ))),
        }
    }

    fn take(&mut self, name: &str) -> Value {
        self.0.remove(name).map(unwrap).unwrap_or(Value::Null)
    }

    fn long(&mut self, name: &str) -> Result<i64, TableError> {
        match self.take(name) {
            Value::Long(v) => Ok(v),
            Value::Int(v) => Ok(v.into()),
            other => Err(TableError::Metadata(format!(
                "field {name} is not a number: {other:?}"
            ))),
        }
    }

    fn opt_long(&mut self, name: &str) -> Result<Option<i64>, TableError> {
        match self.take(name) {
            Value::Null => Ok(None),
            Value::Long(v) => Ok(Some(v)),
            Value::Int(v) => Ok(Some(v.into())),
            other => Err(TableError::Metadata(format!(
                "field {name} is not a number: {other:?}"
            ))),
        }
    }

    fn int(&mut self, name: &str) -> Result<i32, TableError> {
        let v = self.long(name)?;
        i32::try_from(v).map_err(|_| TableError::Metadata(format!("field {name} is out of range")))
    }

    fn string(&mut self, name: &str) -> Result<String, TableError> {
        match self.take(name) {
            Value::String(s) => Ok(s),
            other => Err(TableError::Metadata(format!(
                "field {name} is not a string: {other:?}"
            ))),
        }
    }

    fn map<V>(
        &mut self,
        name: &str,
        value: impl Fn(Value) -> Option<V>,
    ) -> Result<BTreeMap<i32, V>, TableError> {
        let bad = || TableError::Metadata(format!("field {name} is not an int map"));
        match self.take(name) {
            Value::Null => Ok(BTreeMap::new()),
            Value::Array(items) => items
                .into_iter()
                .map(|item| {
                    let mut f = Fields::of(item, name)?;
                    let k = f.int("key")?;
                    let v = value(f.take("value")).ok_or_else(bad)?;
                    Ok((k, v))
                })
                .collect(),
            _ => Err(bad()),
        }
    }
}

fn unwrap(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => unwrap(*inner),
        other => other,
    }
}

fn as_long(v: Value) -> Option<i64> {
    match v {
        Value::Long(v) => Some(v),
        Value::Int(v) => Some(v.into()),
        _ => None,
    }
}

fn as_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// Decode a manifest. Entries without sequence numbers inherit `inherited` (the sequence number of
/// the snapshot that added the manifest), as the spec says.
pub fn read_manifest(bytes: &[u8], inherited: &ManifestFile) -> Result<Vec<Entry>, TableError> {
    let reader = Reader::new(bytes)?;
    let mut entries = Vec::new();
    for value in reader {
        let mut e = Fields::of(value?, "manifest entry")?;
        let status = match e.int("status")? {
            0 => Status::Existing,
            1 => Status::Added,
            2 => Status::Deleted,
            s => {
                return Err(TableError::Metadata(format!(
                    "a manifest entry has status {s}"
                )))
            }
        };
        let mut f = Fields::of(e.take("data_file"), "data file")?;
        if f.int("content")? != 0 {
            return Err(TableError::Metadata(
                "a manifest lists delete files, which Rewind's tables never have".into(),
            ));
        }
        let mut partition = Fields::of(f.take("partition"), "partition")?;
        let split_offsets = match f.take("split_offsets") {
            Value::Array(items) => items.into_iter().filter_map(as_long).collect(),
            _ => Vec::new(),
        };
        let file = DataFile {
            path: f.string("file_path")?,
            partition: partition.int("partition")?,
            record_count: f.long("record_count")?,
            file_size: f.long("file_size_in_bytes")?,
            column_sizes: f.map("column_sizes", as_long)?,
            value_counts: f.map("value_counts", as_long)?,
            null_value_counts: f.map("null_value_counts", as_long)?,
            lower_bounds: f.map("lower_bounds", as_bytes)?,
            upper_bounds: f.map("upper_bounds", as_bytes)?,
            split_offsets,
        };
        let snapshot_id = e
            .opt_long("snapshot_id")?
            .unwrap_or(inherited.added_snapshot_id);
        let sequence_number = e
            .opt_long("sequence_number")?
            .unwrap_or(inherited.sequence_number);
        let file_sequence_number = e
            .opt_long("file_sequence_number")?
            .unwrap_or(inherited.sequence_number);
        entries.push(Entry {
            status,
            snapshot_id,
            sequence_number,
            file_sequence_number,
            file,
        });
    }
    Ok(entries)
}

/// Decode a manifest list.
pub fn read_manifest_list(bytes: &[u8]) -> Result<Vec<ManifestFile>, TableError> {
    let reader = Reader::new(bytes)?;
    let mut out = Vec::new();
    for value in reader {
        let mut m = Fields::of(value?, "manifest list entry")?;
        if m.int("content")? != 0 {
            return Err(TableError::Metadata(
                "a manifest list names a delete manifest, which Rewind's tables never have".into(),
            ));
        }
        let partitions = match m.take("partitions") {
            Value::Array(mut items) if !items.is_empty() => {
                let mut p = Fields::of(items.swap_remove(0), "partition summary")?;
                let bound = |v: Value| match v {
                    Value::Bytes(b) => <[u8; 4]>::try_from(b.as_slice())
                        .ok()
                        .map(i32::from_le_bytes),
                    _ => None,
                };
                bound(p.take("lower_bound")).zip(bound(p.take("upper_bound")))
            }
            _ => None,
        };
        out.push(ManifestFile {
            path: m.string("manifest_path")?,
            length: m.long("manifest_length")?,
            sequence_number: m.long("sequence_number")?,
            min_sequence_number: m.long("min_sequence_number")?,
            added_snapshot_id: m.long("added_snapshot_id")?,
            added_files: m.int("added_files_count")?,
            existing_files: m.int("existing_files_count")?,
            deleted_files: m.int("deleted_files_count")?,
            added_rows: m.long("added_rows_count")?,
            existing_rows: m.long("existing_rows_count")?,
            deleted_rows: m.long("deleted_rows_count")?,
            partitions,
        });
    }
    Ok(out)
}

/// The manifest list entry of a manifest holding `entries`, written by the snapshot
/// `snapshot_id` at `sequence_number`.
pub fn describe(
    path: String,
    length: i64,
    entries: &[Entry],
    snapshot_id: i64,
    sequence_number: i64,
) -> ManifestFile {
    let count = |s: Status| entries.iter().filter(|e| e.status == s).count() as i32;
    let rows = |s: Status| {
        entries
            .iter()
            .filter(|e| e.status == s)
            .map(|e| e.file.record_count)
            .sum()
    };
    let live = entries.iter().filter(|e| e.status != Status::Deleted);
    // Over every entry, deleted ones too, as Iceberg's writers do: a reader filtering on the
    // partition must not skip a manifest that says what a delete removed.
    let partitions = entries
        .iter()
        .map(|e| e.file.partition)
        .fold(None, |acc, p| {
            Some(acc.map_or((p, p), |(lo, hi): (i32, i32)| (lo.min(p), hi.max(p))))
        });
    ManifestFile {
        path,
        length,
        sequence_number,
        min_sequence_number: live
            .map(|e| e.sequence_number)
            .min()
            .unwrap_or(sequence_number),
        added_snapshot_id: snapshot_id,
        added_files: count(Status::Added),
        existing_files: count(Status::Existing),
        deleted_files: count(Status::Deleted),
        added_rows: rows(Status::Added),
        existing_rows: rows(Status::Existing),
        deleted_rows: rows(Status::Deleted),
        partitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(partition: i32, n: i64) -> DataFile {
        DataFile {
            path: format!("file:///a/data/topic=t/partition={partition}/x/{n:020}.parquet"),
            partition,
            record_count: n,
            file_size: 100 + n,
            column_sizes: [(2, 10), (6, 90)].into(),
            value_counts: [(2, n), (9, 0)].into(),
            null_value_counts: [(3, 0)].into(),
            lower_bounds: [(2, 5i64.to_le_bytes().to_vec())].into(),
            upper_bounds: [(2, 9i64.to_le_bytes().to_vec())].into(),
            split_offsets: vec![4],
        }
    }

    #[test]
    fn manifests_and_lists_read_back_as_written() {
        let entries = vec![
            Entry {
                status: Status::Added,
                snapshot_id: 7,
                sequence_number: 3,
                file_sequence_number: 3,
                file: file(0, 11),
            },
            Entry {
                status: Status::Deleted,
                snapshot_id: 7,
                sequence_number: 1,
                file_sequence_number: 1,
                file: file(4, 12),
            },
        ];
        let bytes = write_manifest(&entries, &spec::schema()).unwrap();
        let listed = describe("m.avro".into(), bytes.len() as i64, &entries, 7, 3);
        assert_eq!(read_manifest(&bytes, &listed).unwrap(), entries);
        assert_eq!(
            (listed.added_files, listed.deleted_files, listed.added_rows),
            (1, 1, 11)
        );
        assert_eq!(listed.partitions, Some((0, 4)));
        assert_eq!(listed.min_sequence_number, 3);
        let list = write_manifest_list(std::slice::from_ref(&listed), 7, Some(6), 3).unwrap();
        assert_eq!(read_manifest_list(&list).unwrap(), vec![listed]);
        // The schema written into the file keeps the field ids readers resolve columns by.
        let reader = Reader::new(&bytes[..]).unwrap();
        let written = serde_json::to_value(reader.writer_schema())
            .unwrap()
            .to_string();
        assert!(written.contains("\"field-id\":1000"), "{written}");
        assert!(written.contains("\"logicalType\":\"map\""), "{written}");
        assert!(written.contains("\"element-id\":133"), "{written}");
    }
}
