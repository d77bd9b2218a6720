//! Data files: Kafka records of one partition as Parquet (format v1). Columns `offset`,
//! `timestamp`, `timestamp_type`, `key`, `value`, `headers`; statistics and the page index on
//! `offset` and `timestamp`; a bloom filter on `key`; zstd; `rewind.*` footer metadata, with the
//! CRC32C of the file's own bytes ([`integrity`]).
//!
//! Invariant: decoding an encoded file gives back exactly the records and metadata that went in,
//! and a decoder of a whole file hands over no record from bytes its checksums do not vouch for.
//!
//! About 730 lines: the Parquet schema, encoder and decoder of one format version, kept together
//! so the two stay mirror images (its tests live in `datafile/tests.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Int64Array, ListArray, RecordBatch, StringArray, StructArray,
    TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::{BloomFilterPosition, EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::record::{Header, Record, TimestampType};
use super::typed::{self, Decoding, Prepared};
use super::FORMAT_VERSION;
use integrity::ChecksumWriter;
pub use integrity::Checksums;

/// Rows per Arrow batch while encoding or decoding.
const BATCH_ROWS: usize = 8_192;
/// Target size of a data page.
const PAGE_BYTES: usize = 128 * 1024;
/// Record bytes per Arrow batch while encoding, so large records do not make large batches.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;

/// The footer metadata of one data file (`rewind.*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub format_version: u32,
    pub topic: String,
    pub partition: i32,
    /// First offset of the range the file covers.
    pub start: i64,
    /// Offset after the range (exclusive).
    pub end: i64,
    pub record_count: u64,
    pub min_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
    pub cluster_id: String,
    pub writer: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// Why a data file could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum DataFileError {
    #[error("not a Rewind data file: {0}")]
    Format(String),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The bytes are not the ones the writer wrote: a checksum in the file does not match.
    #[error("damaged: {0}")]
    Damaged(String),
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// The Arrow schema of every data file.
pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("timestamp_type", DataType::Utf8, true),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new(
            "headers",
            DataType::List(Arc::new(Field::new(
                "element",
                DataType::Struct(header_fields()),
                false,
            ))),
            false,
        ),
    ]))
}

impl FileMeta {
    fn to_key_values(&self) -> Vec<KeyValue> {
        let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        [
            ("format_version", self.format_version.to_string()),
            ("topic", self.topic.clone()),
            ("partition", self.partition.to_string()),
            ("start", self.start.to_string()),
            ("end", self.end.to_string()),
            ("record_count", self.record_count.to_string()),
            ("min_timestamp", opt(self.min_timestamp)),
            ("max_timestamp", opt(self.max_timestamp)),
            ("cluster_id", self.cluster_id.clone()),
            ("writer", self.writer.clone()),
            ("created_at", super::time::rfc3339_millis(self.created_at)),
        ]
        .into_iter()
        .map(|(k, v)| KeyValue::new(format!("rewind.{k}"), v))
        .collect()
    }

    fn from_key_values(kv: &HashMap<String, String>) -> Result<FileMeta, DataFileError> {
        let get = |k: &str| {
            kv.get(&format!("rewind.{k}"))
                .ok_or_else(|| DataFileError::Format(format!("footer has no rewind.{k}")))
        };
        let num = |k: &str| -> Result<i64, DataFileError> {
            get(k)?
                .parse::<i64>()
                .map_err(|_| DataFileError::Format(format!("footer rewind.{k} is not a number")))
        };
        let opt = |k: &str| -> Result<Option<i64>, DataFileError> {
            match get(k)?.as_str() {
                "" => Ok(None),
                v => v.parse().map(Some).map_err(|_| {
                    DataFileError::Format(format!("footer rewind.{k} is not a number"))
                }),
            }
        };
        Ok(FileMeta {
            format_version: num("format_version")? as u32,
            topic: get("topic")?.clone(),
            partition: num("partition")? as i32,
            start: num("start")?,
            end: num("end")?,
            record_count: num("record_count")? as u64,
            min_timestamp: opt("min_timestamp")?,
            max_timestamp: opt("max_timestamp")?,
            cluster_id: get("cluster_id")?.clone(),
            writer: get("writer")?.clone(),
            created_at: super::time::parse_rfc3339_millis(get("created_at")?).ok_or_else(|| {
                DataFileError::Format("footer rewind.created_at is not an RFC 3339 time".into())
            })?,
        })
    }
}

/// The footer metadata for `records` (non-empty, in offset order) covering `[start, end)`.
pub fn file_meta(
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    records: &[Record],
    cluster_id: &str,
    now_ms: i64,
) -> FileMeta {
    let timestamps = records.iter().filter_map(|r| r.timestamp);
    FileMeta {
        format_version: FORMAT_VERSION,
        topic: topic.to_string(),
        partition,
        start,
        end,
        record_count: records.len() as u64,
        min_timestamp: timestamps.clone().min(),
        max_timestamp: timestamps.max(),
        cluster_id: cluster_id.to_string(),
        writer: concat!("rewind ", env!("CARGO_PKG_VERSION")).to_string(),
        created_at: now_ms,
    }
}

/// Encode records (in offset order) with their footer metadata into Parquet bytes, as one row group.
pub fn encode(meta: &FileMeta, records: &[Record]) -> Result<Bytes, DataFileError> {
    let size_hint = records.iter().map(|r| r.size() as usize).sum::<usize>() / 2 + 4096;
    let out = encode_to(meta, records, Vec::with_capacity(size_hint), usize::MAX)?;
    Ok(Bytes::from(out))
}

/// Encode records (in offset order) with their footer metadata into `out`, which receives the file
/// front to back as it is produced. A row group ends once its encoded size reaches
/// `row_group_bytes`, so the encoder never holds much more than that at a time: this is what lets a
/// large file be uploaded in parts while it is still being encoded.
pub fn encode_to<W: std::io::Write + Send>(
    meta: &FileMeta,
    records: &[Record],
    out: W,
    row_group_bytes: usize,
) -> Result<W, DataFileError> {
    encode_decoded_to(meta, records, None, out, row_group_bytes).map(|(w, _)| w)
}

/// [`encode_to`], with the typed columns `decoding` gives after the raw ones ([`typed`]); what
/// was decoded and what was not is handed back, and recorded in the footer (`rewind.decoded`).
pub fn encode_decoded_to<W: std::io::Write + Send>(
    meta: &FileMeta,
    records: &[Record],
    decoding: Option<&Decoding>,
    out: W,
    row_group_bytes: usize,
) -> Result<(W, Option<Prepared>), DataFileError> {
    let props = properties(meta, records)?;
    let mut typed = decoding.map(|d| d.prepare(records));
    if let Some(t) = typed.as_mut() {
        // A row group ends once its encoded size reaches `row_group_bytes`: the records' bytes,
        // and typed columns of about as many again at most.
        let bytes: usize = records.iter().map(Record::payload_len).sum();
        t.fit_footer(bytes.saturating_mul(2) / row_group_bytes.max(1) + 1);
    }
    let schema = match &typed {
        Some(t) => {
            let mut fields: Vec<Field> = schema().fields().iter().map(|f| (**f).clone()).collect();
            fields.extend(t.fields());
            Arc::new(Schema::new(fields))
        }
        None => schema(),
    };
    let mut writer = ArrowWriter::try_new(ChecksumWriter::new(out), schema.clone(), Some(props))?;
    // The magic bytes are a segment of their own: the others are the row groups.
    writer.sync()?;
    writer.inner_mut().end_segment();
    let batch_bytes = BATCH_BYTES.min(row_group_bytes as u64 / 4).max(1);
    let mut rest = records;
    let mut row_groups = 0;
    // Every row group's bytes reach the checksum writer (sync) as it is flushed, so that each is a
    // segment.
    let mut end_row_groups = |writer: &mut ArrowWriter<ChecksumWriter<W>>| {
        let flushed = writer.flushed_row_groups().len();
        if flushed > row_groups + 1 {
            return Err(DataFileError::Format(
                "the encoder ended several row groups at once".into(),
            ));
        }
        if flushed > row_groups {
            writer.sync()?;
            writer.inner_mut().end_segment();
            row_groups = flushed;
        }
        Ok::<_, DataFileError>(())
    };
    while !rest.is_empty() {
        let mut bytes = 0;
        let rows = rest
            .iter()
            .take(BATCH_ROWS)
            .take_while(|r| {
                let fits = bytes < batch_bytes;
                bytes += r.size();
                fits
            })
            .count();
        let (mut batch, mut tail) = rest.split_at(rows);
        let typed_columns = match typed.as_mut() {
            Some(t) => {
                // Typed values may end the batch early (they weigh more than the records).
                let (typed_rows, columns) = t.columns(batch);
                (batch, tail) = rest.split_at(typed_rows);
                columns
            }
            None => Vec::new(),
        };
        let mut columns = raw_columns(batch);
        columns.extend(typed_columns);
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        end_row_groups(&mut writer)?;
        if writer.in_progress_size() >= row_group_bytes {
            writer.flush()?;
            end_row_groups(&mut writer)?;
        }
        rest = tail;
    }
    writer.flush()?;
    end_row_groups(&mut writer)?;
    // The checksums of the row groups are known now; those of the rest (bloom filters, page index)
    // are written into the footer once it is written.
    let row_group_crcs =
        integrity::row_group_value(writer.inner().segments().get(1..).unwrap_or_default());
    writer.append_key_value_metadata(KeyValue::new(
        integrity::ROW_GROUP_CRC_KEY.to_string(),
        row_group_crcs,
    ));
    if let Some(t) = &typed {
        let spec = serde_json::to_string(&t.spec())
            .map_err(|e| DataFileError::Format(format!("typed columns: {e}")))?;
        writer.append_key_value_metadata(KeyValue::new(typed::FOOTER_KEY.to_string(), spec));
    }
    for (key, value) in ChecksumWriter::<W>::placeholders() {
        writer.append_key_value_metadata(KeyValue::new(key.to_string(), value));
    }
    writer.sync()?;
    writer.inner_mut().capture();
    Ok((writer.into_inner()?.finish()?, typed))
}

/// The writer settings of a data file of `records`.
fn properties(meta: &FileMeta, records: &[Record]) -> Result<WriterProperties, DataFileError> {
    let col = |name: &str| ColumnPath::new(vec![name.to_string()]);
    Ok(WriterProperties::builder()
        // Level 1: on the benchmark's payloads 2.6× faster than level 3 for files 2 % larger, and
        // the sink's CPU is what decides whether a backup keeps up with its cluster.
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_column_statistics_enabled(col("offset"), EnabledStatistics::Page)
        .set_column_statistics_enabled(col("timestamp"), EnabledStatistics::Page)
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled(col("timestamp_type"), true)
        .set_column_bloom_filter_enabled(col("key"), true)
        .set_column_bloom_filter_max_ndv(col("key"), records.len().max(1) as u64)
        .set_column_bloom_filter_fpp(col("key"), 0.01)
        // Bloom filters together at the end, next to the page index and the footer, so that a key
        // look-up reads a file's footer and filters with one or two requests.
        .set_bloom_filter_position(BloomFilterPosition::End)
        // Smaller pages than the 1 MiB default, so that a look-up that found its row reads and
        // decompresses a little of each column, not a megabyte of it.
        .set_data_page_size_limit(PAGE_BYTES)
        .set_max_row_group_row_count(Some(records.len().max(1)))
        .set_key_value_metadata(Some(meta.to_key_values()))
        .build())
}

/// A data file as earlier builds wrote it, without checksums inside it (for tests of readers
/// that must still read such files).
#[cfg(test)]
pub(crate) fn encode_without_checksums(meta: &FileMeta, records: &[Record]) -> Bytes {
    let props = properties(meta, records).expect("properties");
    let mut writer = ArrowWriter::try_new(Vec::new(), schema(), Some(props)).expect("writer");
    writer
        .write(&RecordBatch::try_new(schema(), raw_columns(records)).expect("batch"))
        .expect("write");
    Bytes::from(writer.into_inner().expect("finish"))
}

/// The columns of the records' own bytes, in the order of [`schema`].
fn raw_columns(records: &[Record]) -> Vec<ArrayRef> {
    let mut offsets = Int64Builder::with_capacity(records.len());
    let mut timestamps =
        TimestampMillisecondBuilder::with_capacity(records.len()).with_timezone("UTC");
    // Sized up front: builders that grow by doubling copy their bytes again each time.
    let bytes = |f: fn(&Record) -> usize| records.iter().map(f).sum::<usize>();
    let key_bytes = bytes(|r| r.key.as_ref().map_or(0, Vec::len));
    let value_bytes = bytes(|r| r.value.as_ref().map_or(0, Vec::len));
    let mut types = StringBuilder::with_capacity(records.len(), records.len() * 10);
    let mut keys = BinaryBuilder::with_capacity(records.len(), key_bytes);
    let mut values = BinaryBuilder::with_capacity(records.len(), value_bytes);
    let mut headers =
        ListBuilder::new(StructBuilder::from_fields(header_fields(), 0)).with_field(Arc::new(
            Field::new("element", DataType::Struct(header_fields()), false),
        ));
    for r in records {
        offsets.append_value(r.offset);
        timestamps.append_option(r.timestamp);
        types.append_option(r.timestamp_type.map(TimestampType::as_str));
        keys.append_option(r.key.as_deref());
        values.append_option(r.value.as_deref());
        let entries = headers.values();
        for h in &r.headers {
            entries
                .field_builder::<StringBuilder>(0)
                .expect("header key column")
                .append_value(&h.key);
            entries
                .field_builder::<BinaryBuilder>(1)
                .expect("header value column")
                .append_option(h.value.as_deref());
            entries.append(true);
        }
        headers.append(true);
    }
    vec![
        Arc::new(offsets.finish()),
        Arc::new(timestamps.finish()),
        Arc::new(types.finish()),
        Arc::new(keys.finish()),
        Arc::new(values.finish()),
        Arc::new(headers.finish()),
    ]
}

/// A reader of a whole data file whose bytes were checked against the checksum in its footer
/// first (files written before Rewind kept one there are read unchecked: the store's checksum is
/// what vouches for them). Its page headers are checked too, so that the decoder allocates no more than the
/// [`bounds`] allow.
fn checked_reader(bytes: Bytes) -> Result<ParquetRecordBatchReaderBuilder<Bytes>, DataFileError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())?;
    let metadata = builder.metadata();
    let checksums = Checksums::from_key_values(&key_values(metadata.file_metadata()))?;
    integrity::check_file(&bytes, checksums.as_ref())?;
    bounds::check_pages(metadata, 0..metadata.num_row_groups(), &bytes, 0)?;
    Ok(builder)
}

/// What a data file's footer records about its typed columns (`None`: it has none).
pub fn typed_spec(bytes: &Bytes) -> Result<Option<typed::Spec>, DataFileError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())?;
    typed::spec_from_footer(&key_values(builder.metadata().file_metadata()))
        .map_err(DataFileError::Format)
}

/// Read only the footer metadata of a data file (its bytes are not checked).
pub fn read_meta(bytes: Bytes) -> Result<FileMeta, DataFileError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    footer(&builder)
}

fn footer<T>(
    builder: &parquet::arrow::arrow_reader::ArrowReaderBuilder<T>,
) -> Result<FileMeta, DataFileError> {
    FileMeta::from_key_values(&key_values(builder.metadata().file_metadata()))
}

fn key_values(file: &parquet::file::metadata::FileMetaData) -> HashMap<String, String> {
    file.key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// What a data file's footer says: its `rewind.*` metadata and, from the Parquet statistics of its
/// row groups, the facts a checker compares them with, all without reading a data page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub meta: FileMeta,
    /// Rows over all row groups.
    pub rows: u64,
    pub row_groups: usize,
    /// Smallest and largest offset by the row groups' statistics (`None` if a group has none).
    pub offsets: Option<(i64, i64)>,
    /// Smallest and largest timestamp by the statistics (`None` if no row has one).
    pub timestamps: Option<(i64, i64)>,
    /// Whether every row group has a bloom filter on `key`.
    pub key_bloom_filter: bool,
    /// The checksums of the file's own bytes (`None` in files written before they were kept).
    pub checksums: Option<Checksums>,
    /// Bytes of the records' keys, values and header keys and values, as a restore counts what it
    /// sends, from the Parquet size statistics of every byte-array column (`None` where a row group
    /// has none: a file written by another Parquet writer).
    pub payload_bytes: Option<u64>,
}

impl Footer {
    /// Read a parsed Parquet footer as a data file's.
    pub fn of(
        metadata: &parquet::file::metadata::ParquetMetaData,
    ) -> Result<Footer, DataFileError> {
        let kv = key_values(metadata.file_metadata());
        let meta = FileMeta::from_key_values(&kv)?;
        let checksums = Checksums::from_key_values(&kv)?;
        let schema = metadata.file_metadata().schema_descr();
        let column = |name: &str| {
            (0..schema.num_columns())
                .find(|&i| schema.column(i).path().string() == name)
                .ok_or_else(|| DataFileError::Format(format!("column {name:?} is missing")))
        };
        let (offset, timestamp, key) = (column("offset")?, column("timestamp")?, column("key")?);
        let groups = metadata.row_groups();
        let range = |i: usize| -> Option<Option<(i64, i64)>> {
            // Outer None: a group without statistics; inner None: a group with only nulls.
            groups.iter().try_fold(None, |acc: Option<(i64, i64)>, g| {
                let (lo, hi, nulls) = match g.column(i).statistics()? {
                    parquet::file::statistics::Statistics::Int64(s) => {
                        (s.min_opt(), s.max_opt(), s.null_count_opt())
                    }
                    _ => return None,
                };
                match (acc, lo, hi) {
                    (acc, Some(&lo), Some(&hi)) => {
                        Some(Some(acc.map_or((lo, hi), |(a, b): (i64, i64)| {
                            (a.min(lo), b.max(hi))
                        })))
                    }
                    // No bounds: only nulls, or statistics that cannot tell.
                    (acc, _, _) if nulls == u64::try_from(g.num_rows()).ok() => Some(acc),
                    _ => None,
                }
            })
        };
        // The leaves of key, value and headers (not timestamp_type, also a byte array).
        let payload_bytes = groups.iter().try_fold(0u64, |sum, g| {
            g.columns()
                .iter()
                .filter(|c| {
                    matches!(
                        c.column_path().parts().first().map(String::as_str),
                        Some("key" | "value" | "headers")
                    )
                })
                .try_fold(sum, |sum, c| {
                    Some(sum + u64::try_from(c.unencoded_byte_array_data_bytes()?).ok()?)
                })
        });
        Ok(Footer {
            meta,
            payload_bytes,
            rows: groups.iter().map(|g| g.num_rows().max(0) as u64).sum(),
            row_groups: groups.len(),
            offsets: range(offset).flatten(),
            timestamps: range(timestamp).flatten(),
            key_bloom_filter: !groups.is_empty()
                && groups
                    .iter()
                    .all(|g| g.column(key).bloom_filter_offset().is_some()),
            checksums,
        })
    }
}

/// Parse the Parquet footer of a file of `file_size` bytes from its last bytes `tail`; `Err(n)`
/// when the footer needs the last `n` bytes instead.
pub fn metadata_from_tail(
    tail: &Bytes,
    file_size: u64,
) -> Result<Result<ParquetMetaData, usize>, DataFileError> {
    let mut reader = parquet::file::metadata::ParquetMetaDataReader::new();
    match reader.try_parse_sized(tail, file_size) {
        Ok(()) => Ok(Ok(reader.finish()?)),
        Err(parquet::errors::ParquetError::NeedMoreData(needed)) => Ok(Err(needed)),
        Err(e) => Err(e.into()),
    }
}

/// Decode a whole data file: its footer metadata and every record.
pub fn decode(bytes: Bytes) -> Result<(FileMeta, Vec<Record>), DataFileError> {
    let mut records = Vec::new();
    let meta = decode_chunks(bytes, u64::MAX, |chunk| {
        records.extend(chunk);
        true
    })?;
    Ok((meta, records))
}

/// Decode a data file in chunks of records of about `chunk_bytes` (by [`Record::size`]) each, in
/// offset order, handing each to `sink`; stop early when `sink` returns false. Memory stays at one
/// chunk plus one Arrow batch however large the file is.
pub fn decode_chunks(
    bytes: Bytes,
    chunk_bytes: u64,
    mut sink: impl FnMut(Vec<Record>) -> bool,
) -> Result<FileMeta, DataFileError> {
    let (builder, meta) = chunked_reader(bytes, chunk_bytes)?;
    let mut chunk = Vec::new();
    let mut size = 0;
    for batch in builder.build()? {
        let before = chunk.len();
        from_batch(&batch?, &mut chunk)?;
        size += chunk[before..].iter().map(Record::size).sum::<u64>();
        if size >= chunk_bytes {
            size = 0;
            if !sink(std::mem::take(&mut chunk)) {
                return Ok(meta);
            }
        }
    }
    if !chunk.is_empty() {
        sink(chunk);
    }
    Ok(meta)
}

/// A reader of a data file whose batches hold about `chunk_bytes` decoded bytes each (from the
/// rows' average decoded size, so that large values do not make a batch far larger than asked
/// for), and the file's footer.
fn chunked_reader(
    bytes: Bytes,
    chunk_bytes: u64,
) -> Result<(ParquetRecordBatchReaderBuilder<Bytes>, FileMeta), DataFileError> {
    let builder = checked_reader(bytes)?;
    let (rows, bytes) = builder
        .metadata()
        .row_groups()
        .iter()
        .fold((0i64, 0i64), |(r, b), g| {
            (r + g.num_rows(), b + g.total_byte_size())
        });
    let row_bytes = (bytes / rows.max(1)).max(1) as u64;
    let batch_rows = (chunk_bytes / row_bytes).clamp(1, BATCH_ROWS as u64) as usize;
    let raw = raw_projection(builder.parquet_schema());
    let builder = builder.with_batch_size(batch_rows).with_projection(raw);
    let meta = footer(&builder)?;
    Ok((builder, meta))
}

/// Decode a data file into Arrow batches of about `chunk_bytes` decoded bytes each, handed to
/// `sink` as [`Rows`] that are read in place (no copy of keys, values or headers) until it returns
/// false. What a restore uses: records go from the batch straight to the producer.
pub fn decode_rows(
    bytes: Bytes,
    chunk_bytes: u64,
    mut sink: impl FnMut(Rows) -> bool,
) -> Result<FileMeta, DataFileError> {
    let (builder, meta) = chunked_reader(bytes, chunk_bytes)?;
    for batch in builder.build()? {
        if !sink(Rows::new(batch?)?) {
            break;
        }
    }
    Ok(meta)
}

/// The rows of one row group of a data file, read alone: `bytes` are the file's bytes from `base`
/// on ([`integrity::row_group_range`]), checked against the row group's checksum in the footer
/// `metadata` before anything is decoded, then handed to `sink` like [`decode_rows`] does. What a
/// restore uses for files larger than its share of the memory budget: it holds one row group, not
/// the file. A footer without checksums is refused (such a file is read whole).
pub fn decode_row_group(
    metadata: &ArrowReaderMetadata,
    group: usize,
    base: u64,
    bytes: Bytes,
    chunk_bytes: u64,
    mut sink: impl FnMut(Rows) -> bool,
) -> Result<(), DataFileError> {
    let Some(row_group) = metadata.metadata().row_groups().get(group) else {
        return Err(DataFileError::Format(format!(
            "it has no row group {group}"
        )));
    };
    let row_bytes = (row_group.total_byte_size() / row_group.num_rows().max(1)).max(1) as u64;
    let batch_rows = (chunk_bytes / row_bytes).clamp(1, BATCH_ROWS as u64) as usize;
    for batch in row_group_reader(metadata, group, base, bytes, batch_rows, None)? {
        if !sink(Rows::new(batch?)?) {
            break;
        }
    }
    Ok(())
}

/// The smallest and the largest value of a column.
pub type Bounds = (i64, i64);

/// The smallest and largest offset, and timestamp, of row group `group` by its statistics (`None`
/// where the statistics cannot tell): what lets a reader skip row groups without reading them.
pub fn row_group_bounds(
    metadata: &ParquetMetaData,
    group: usize,
) -> (Option<Bounds>, Option<Bounds>) {
    let Some(row_group) = metadata.row_groups().get(group) else {
        return (None, None);
    };
    let schema = metadata.file_metadata().schema_descr();
    let bounds = |name: &str| {
        let column =
            (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == name)?;
        match row_group.column(column).statistics()? {
            parquet::file::statistics::Statistics::Int64(s) => {
                Some((*s.min_opt()?, *s.max_opt()?)).filter(|(lo, hi)| lo <= hi)
            }
            _ => None,
        }
    };
    (bounds("offset"), bounds("timestamp"))
}

/// The row groups of a file a reader of offsets `[from, until)` reads. The footer's offset
/// statistics say which groups hold the window, but the footer is the one part of a file no
/// checksum inside it covers, so they are trusted only as far as they can be checked: every group
/// must have them and they must increase from group to group (else every group is read), and the
/// group just before and just after the ones they name are read too. A damaged bound can then
/// only move a group to one of those neighbours, which is read, and its rows are filtered by the
/// offsets they really hold.
pub fn row_groups_holding(parquet: &ParquetMetaData, from: i64, until: i64) -> Vec<usize> {
    let bounds: Option<Vec<Bounds>> = (0..parquet.num_row_groups())
        .map(|g| row_group_bounds(parquet, g).0)
        .collect();
    groups_holding(bounds.as_deref(), parquet.num_row_groups(), from, until)
}

/// [`row_groups_holding`] given each of `count` row groups' offset bounds.
fn groups_holding(bounds: Option<&[Bounds]>, count: usize, from: i64, until: i64) -> Vec<usize> {
    let Some(bounds) = bounds.filter(|b| b.windows(2).all(|w| w[0].1 < w[1].0)) else {
        return (0..count).collect();
    };
    // The first group that can reach `from` and the first that starts at or after `until`.
    let first = bounds.partition_point(|&(_, max)| max < from);
    let past = bounds.partition_point(|&(min, _)| min < until);
    let start = first.saturating_sub(1);
    let end = (past + 1).min(bounds.len());
    (start..end.max(start)).collect()
}

/// The offsets and timestamps of one row group read alone (see [`decode_row_group`]), appended to
/// `out`: what a planner reads of a file too large to fetch whole.
pub fn read_row_group_offsets(
    metadata: &ArrowReaderMetadata,
    group: usize,
    base: u64,
    bytes: Bytes,
    out: &mut Vec<(i64, Option<i64>)>,
) -> Result<(), DataFileError> {
    let columns = Some(&["offset", "timestamp"][..]);
    for batch in row_group_reader(metadata, group, base, bytes, BATCH_ROWS, columns)? {
        offsets_of(&batch?, out)?;
    }
    Ok(())
}

/// A decoder of row group `group` alone, from `bytes` (the file's bytes from `base` on), which are
/// checked against the row group's checksum and their page headers against the [`bounds`] first.
fn row_group_reader(
    metadata: &ArrowReaderMetadata,
    group: usize,
    base: u64,
    bytes: Bytes,
    batch_rows: usize,
    columns: Option<&[&str]>,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, DataFileError> {
    let parquet = metadata.metadata();
    if group >= parquet.num_row_groups() {
        return Err(DataFileError::Format(format!(
            "it has no row group {group}"
        )));
    }
    let checksums = Checksums::from_key_values(&key_values(parquet.file_metadata()))?
        .ok_or_else(|| DataFileError::Format("its footer has no checksums".into()))?;
    checksums.check_row_group(group, &bytes)?;
    bounds::check_pages(parquet, [group], &bytes, base)?;
    let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(
        Window { base, bytes },
        metadata.clone(),
    )
    .with_row_groups(vec![group])
    .with_batch_size(batch_rows);
    let raw = raw_projection(builder.parquet_schema());
    builder = builder.with_projection(raw);
    if let Some(columns) = columns {
        let mask = parquet::arrow::ProjectionMask::columns(
            builder.parquet_schema(),
            columns.iter().copied(),
        );
        builder = builder.with_projection(mask);
    }
    Ok(builder.build()?)
}

/// The columns of the records' own bytes: what restores and checks decode (typed columns, which
/// only engines read, are left alone).
fn raw_projection(
    schema: &parquet::schema::types::SchemaDescriptor,
) -> parquet::arrow::ProjectionMask {
    parquet::arrow::ProjectionMask::columns(schema, RAW_COLUMNS.iter().copied())
}

/// The names of the raw columns, in order.
pub const RAW_COLUMNS: [&str; 6] = [
    "offset",
    "timestamp",
    "timestamp_type",
    "key",
    "value",
    "headers",
];

/// A file's bytes from `base` on, as the decoder reads them: asking for anything else is an error.
struct Window {
    base: u64,
    bytes: Bytes,
}

impl Window {
    fn at(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        start
            .checked_sub(self.base)
            .and_then(|from| usize::try_from(from).ok())
            .and_then(|from| Some(from..from.checked_add(length)?))
            .filter(|range| range.end <= self.bytes.len())
            .map(|range| self.bytes.slice(range))
            .ok_or_else(|| {
                parquet::errors::ParquetError::General(format!(
                    "the decoder asked for bytes [{start}, +{length}) outside the row group"
                ))
            })
    }
}

impl parquet::file::reader::Length for Window {
    fn len(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }
}

impl parquet::file::reader::ChunkReader for Window {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let end = parquet::file::reader::Length::len(self);
        let rest = end.saturating_sub(start) as usize;
        Ok(bytes::Buf::reader(self.at(start, rest)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.at(start, length)
    }
}

/// Decoded records of a data file, as the Arrow batch that holds them; [`Rows::view`] reads them.
#[derive(Debug, Clone)]
pub struct Rows {
    batch: RecordBatch,
}

/// Typed access to the columns of [`Rows`].
pub struct RowsView<'a> {
    offsets: &'a Int64Array,
    timestamps: &'a TimestampMillisecondArray,
    keys: &'a BinaryArray,
    values: &'a BinaryArray,
    header_offsets: &'a [i32],
    header_keys: &'a StringArray,
    header_values: &'a BinaryArray,
}

impl Rows {
    /// Checks the columns once, so that [`Rows::view`] cannot fail afterwards.
    fn new(batch: RecordBatch) -> Result<Rows, DataFileError> {
        let rows = Rows { batch };
        rows.typed()?;
        Ok(rows)
    }

    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory the batch holds (its buffers, shared with the slices cut from it).
    pub fn memory(&self) -> usize {
        self.batch.get_array_memory_size()
    }

    /// The rows `[from, from + len)`, sharing this batch's buffers.
    pub fn slice(&self, from: usize, len: usize) -> Rows {
        Rows {
            batch: self.batch.slice(from, len),
        }
    }

    pub fn view(&self) -> RowsView<'_> {
        self.typed()
            .expect("columns checked when the rows were decoded")
    }

    fn typed(&self) -> Result<RowsView<'_>, DataFileError> {
        let batch = &self.batch;
        let headers = column::<ListArray>(batch, "headers")?;
        let entries = headers
            .values()
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| DataFileError::Format("headers are not a list of structs".into()))?;
        Ok(RowsView {
            offsets: column::<Int64Array>(batch, "offset")?,
            timestamps: column::<TimestampMillisecondArray>(batch, "timestamp")?,
            keys: column::<BinaryArray>(batch, "key")?,
            values: column::<BinaryArray>(batch, "value")?,
            header_offsets: headers.value_offsets(),
            header_keys: entries
                .columns()
                .first()
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| DataFileError::Format("header keys are not strings".into()))?,
            header_values: entries
                .columns()
                .get(1)
                .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
                .ok_or_else(|| DataFileError::Format("header values are not binary".into()))?,
        })
    }
}

impl<'a> RowsView<'a> {
    pub fn offset(&self, i: usize) -> i64 {
        self.offsets.value(i)
    }

    /// Every row's offset.
    pub fn offsets(&self) -> &'a [i64] {
        self.offsets.values()
    }

    pub fn timestamp(&self, i: usize) -> Option<i64> {
        (!self.timestamps.is_null(i)).then(|| self.timestamps.value(i))
    }

    pub fn key(&self, i: usize) -> Option<&'a [u8]> {
        (!self.keys.is_null(i)).then(|| self.keys.value(i))
    }

    pub fn value(&self, i: usize) -> Option<&'a [u8]> {
        (!self.values.is_null(i)).then(|| self.values.value(i))
    }

    /// The headers of row `i`, in order: key and value (`None` for a null value).
    pub fn headers(&self, i: usize) -> impl ExactSizeIterator<Item = (&'a str, Option<&'a [u8]>)> {
        let (keys, values) = (self.header_keys, self.header_values);
        (self.header_offsets[i] as usize..self.header_offsets[i + 1] as usize)
            .map(move |j| (keys.value(j), (!values.is_null(j)).then(|| values.value(j))))
    }
}

/// The offset and timestamp of every record of a data file, without decoding keys, values or
/// headers: what a planner needs to cut a time window inside a file.
pub fn read_offsets(bytes: Bytes) -> Result<Vec<(i64, Option<i64>)>, DataFileError> {
    let builder = checked_reader(bytes)?.with_batch_size(BATCH_ROWS);
    let mask =
        parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), ["offset", "timestamp"]);
    let mut out = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        offsets_of(&batch?, &mut out)?;
    }
    Ok(out)
}

fn offsets_of(batch: &RecordBatch, out: &mut Vec<(i64, Option<i64>)>) -> Result<(), DataFileError> {
    let offsets = column::<Int64Array>(batch, "offset")?;
    let timestamps = column::<TimestampMillisecondArray>(batch, "timestamp")?;
    out.extend((0..batch.num_rows()).map(|i| {
        (
            offsets.value(i),
            (!timestamps.is_null(i)).then(|| timestamps.value(i)),
        )
    }));
    Ok(())
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, DataFileError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            DataFileError::Format(format!("column {name:?} is missing or has the wrong type"))
        })
}

/// The records of an Arrow batch read from a data file with every column.
pub fn records_of(batch: &RecordBatch) -> Result<Vec<Record>, DataFileError> {
    let mut out = Vec::with_capacity(batch.num_rows());
    from_batch(batch, &mut out)?;
    Ok(out)
}

fn from_batch(batch: &RecordBatch, out: &mut Vec<Record>) -> Result<(), DataFileError> {
    let rows = Rows::new(batch.clone())?;
    let view = rows.view();
    let types = column::<StringArray>(batch, "timestamp_type")?;
    for i in 0..rows.len() {
        let timestamp_type = if types.is_null(i) {
            None
        } else {
            Some(TimestampType::parse(types.value(i)).ok_or_else(|| {
                DataFileError::Format(format!("unknown timestamp_type {:?}", types.value(i)))
            })?)
        };
        out.push(Record {
            offset: view.offset(i),
            timestamp: view.timestamp(i),
            timestamp_type,
            key: view.key(i).map(<[u8]>::to_vec),
            value: view.value(i).map(<[u8]>::to_vec),
            headers: view
                .headers(i)
                .map(|(key, value)| Header {
                    key: key.to_string(),
                    value: value.map(<[u8]>::to_vec),
                })
                .collect(),
        });
    }
    Ok(())
}

pub mod bounds;
pub mod integrity;
#[cfg(test)]
pub(crate) mod tests;
