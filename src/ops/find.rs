//! `rewind find`: audit look-ups in one topic by key, time window and header, reading as little of
//! the archive as it can. A file is skipped by its hour folder (its records are all before the end
//! of its hour), then by its footer's time span; a row group by its timestamp statistics, its key
//! statistics and the bloom filter on `key`; pages by the timestamp page index. Only then are the
//! key, timestamp and header columns of what is left read and filtered, and the other columns read
//! for the matching rows only. Every byte used past the footer is checked first: the bloom filters
//! and page index, and each row group read (whole), against the checksums in the file's footer; a
//! file written before files carried them is read whole and checked against its stored checksum.
//!
//! Invariant: pruning never drops a match: every skip is justified by metadata that bounds every
//! row it skips (checked against a full scan in the tests); and no record comes from bytes a
//! checksum refused (a file no checksum can vouch for is searched, and named in a warning).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{
    Array, BinaryArray, BooleanArray, ListArray, RecordBatch, StringArray, StructArray,
    TimestampMillisecondArray,
};
use arrow_schema::ArrowError;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, RowFilter, RowSelection,
};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;
use serde::Serialize;

use super::{identity, OpsError, Progress};
use crate::archive::chain;
use crate::archive::datafile::{self, DataFileError, FileMeta};
use crate::archive::documents::{self, ChainStart, RETENTION_PREFIX};
use crate::archive::paths::{DataFileKey, DATA_PREFIX};
use crate::archive::Record;
use crate::storage::ObjectStore;
use reader::StoreReader;

mod reader;

/// Files searched at once.
const CONCURRENCY: usize = 16;
/// Bytes read from the end of a file for its footer (and usually its page index) in one request.
const TAIL_BYTES: usize = 64 * 1024;

/// Where the columns a look-up needs are in one file: leaf (column chunk) indices for statistics,
/// bloom filters and the page index, root indices for projections. Found by name, not assumed.
#[derive(Debug, Clone, Copy)]
struct Columns {
    timestamp: usize,
    key: usize,
    timestamp_root: usize,
    key_root: usize,
    headers_root: usize,
}

impl Columns {
    fn of(schema: &parquet::schema::types::SchemaDescriptor) -> Result<Columns, String> {
        let leaf = |name: &str| {
            (0..schema.num_columns())
                .find(|&i| schema.column(i).path().string() == name)
                .ok_or_else(|| format!("column {name:?} is missing"))
        };
        let (timestamp, key) = (leaf("timestamp")?, leaf("key")?);
        let headers_root = (0..schema.num_columns())
            .find(|&i| schema.column(i).path().parts()[0] == "headers")
            .map(|i| schema.get_column_root_idx(i))
            .ok_or("column \"headers\" is missing")?;
        Ok(Columns {
            timestamp,
            key,
            timestamp_root: schema.get_column_root_idx(timestamp),
            key_root: schema.get_column_root_idx(key),
            headers_root,
        })
    }
}

/// Which keys match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFilter {
    Any,
    /// Records without a key.
    Null,
    /// Records whose key is exactly these bytes.
    Bytes(Vec<u8>),
}

/// What to look for.
#[derive(Debug, Clone)]
pub struct FindOptions {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: KeyFilter,
    /// Records with a timestamp in `[from, to)`; records without one never match a window.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Header `key` with exactly this value (`None`: a null value); every pair must match.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub limit: Option<u64>,
}

impl FindOptions {
    fn has_window(&self) -> bool {
        self.from.is_some() || self.to.is_some()
    }

    /// Whether `[lo, hi]` (a span of timestamps) may hold a timestamp in the window.
    fn window_meets(&self, lo: i64, hi: i64) -> bool {
        self.from.is_none_or(|from| hi >= from) && self.to.is_none_or(|to| lo < to)
    }
}

/// How much of the archive a look-up read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FindStats {
    /// Data files of the topic, and their bytes.
    pub files_total: usize,
    pub archive_bytes: u64,
    /// Files whose footer was read, and files some data page of which was read.
    pub files_opened: usize,
    pub files_scanned: usize,
    pub row_groups_total: usize,
    pub row_groups_scanned: usize,
    /// Bytes fetched from the store.
    pub bytes_read: u64,
    pub records: u64,
    /// Files searched that no checksum could vouch for (written before files carried their own,
    /// and without a stored one).
    pub unchecked: Vec<String>,
    pub seconds: f64,
}

/// Why `opts` finds no file: the topic (or its partition) has none, with what the archive holds
/// instead, so that a misspelt name shows the right one.
async fn nothing_archived(
    store: &dyn ObjectStore,
    opts: &FindOptions,
) -> Result<OpsError, OpsError> {
    let listed = chain::list_all(store).await?;
    let join = |items: Vec<String>| {
        if items.is_empty() {
            "nothing yet".to_string()
        } else {
            items.join(", ")
        }
    };
    let partitions: Vec<String> = listed
        .keys()
        .filter(|(t, _)| *t == opts.topic)
        .map(|(_, p)| p.to_string())
        .collect();
    let message = match opts.partition {
        Some(p) if !partitions.is_empty() => format!(
            "topic {} has no archived files in partition {p}; its archived partitions: {}",
            opts.topic,
            join(partitions)
        ),
        _ => {
            let topics: std::collections::BTreeSet<&str> =
                listed.keys().map(|(t, _)| t.as_str()).collect();
            format!(
                "topic {} has no archived files; the archive holds: {}",
                opts.topic,
                join(topics.into_iter().map(str::to_string).collect())
            )
        }
    };
    Ok(OpsError::Input(format!("{}: {message}", store.url())))
}

/// Look records up; `emit` gets each match in partition and offset order.
pub async fn find(
    store: Arc<dyn ObjectStore>,
    opts: &FindOptions,
    mut emit: impl FnMut(&str, i32, &Record),
) -> Result<FindStats, OpsError> {
    let started = Instant::now();
    identity(&*store).await?;
    let prefix = match opts.partition {
        Some(p) => DataFileKey::partition_prefix(&opts.topic, p),
        None => format!("{DATA_PREFIX}topic={}/", opts.topic),
    };
    let mut files: Vec<(DataFileKey, u64)> = store
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| DataFileKey::parse(&o.key).map(|k| (k, o.size)))
        .collect();
    if files.is_empty() {
        return Err(nothing_archived(&*store, opts).await?);
    }
    // Files before a chain's start (left by an interrupted retention run) are not part of the
    // archive any more.
    let mut recorded = std::collections::BTreeMap::new();
    for object in store
        .list(&format!("{RETENTION_PREFIX}{}/", opts.topic))
        .await?
    {
        if let Some(start) = documents::read_doc::<ChainStart>(&*store, &object.key).await? {
            recorded.insert(start.partition, start.start);
        }
    }
    let firsts: std::collections::BTreeMap<i32, i64> = recorded
        .into_iter()
        .filter_map(|(p, start)| {
            let of_partition = files.iter().filter(|(k, _)| k.partition == p);
            chain::effective_start(Some(start), of_partition.map(|(k, _)| (k.start, k.end)))
                .map(|first| (p, first))
        })
        .collect();
    files.retain(|(k, _)| firsts.get(&k.partition).is_none_or(|s| k.start >= *s));
    files.sort_by_key(|(k, _)| (k.partition, k.start, k.end.is_none()));
    // A compacted file replaces the files inside its range that a compaction has not deleted yet.
    let mut reach: Option<(i32, i64)> = None;
    files.retain(|(k, _)| {
        if reach.is_some_and(|(p, end)| p == k.partition && k.start < end) {
            return false;
        }
        if let Some(end) = k.end {
            reach = Some((k.partition, end));
        }
        true
    });
    tracing::debug!(
        files = files.len(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "find: listed"
    );
    let read = Arc::new(AtomicU64::new(0));
    let mut stats = FindStats {
        files_total: files.len(),
        archive_bytes: files.iter().map(|(_, s)| s).sum(),
        ..FindStats::default()
    };
    // Path pruning: a file's records are all before the end of its hour.
    let candidates: Vec<_> = files
        .into_iter()
        .filter(|(k, _)| opts.from.is_none_or(|from| k.bucket.end_millis() > from))
        .collect();
    let mut progress = Progress::new("find", "files", candidates.len() as u64);
    let mut searches = futures::stream::iter(candidates.into_iter().map(|(key, size)| {
        let reader = StoreReader {
            store: store.clone(),
            key: key.to_string(),
            size,
            read: read.clone(),
            cache: Vec::new(),
        };
        search_file(reader, key, opts)
    }))
    .buffered(CONCURRENCY);
    // Where each partition's matches so far end: a file sharing offsets with one searched before
    // (an orphan of a race, a compacted file's parts not deleted yet) reports none of them twice.
    let mut emitted: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    'files: while let Some(found) = searches.next().await {
        progress.add(1);
        let found = found?;
        stats.files_opened += 1;
        stats.row_groups_total += found.row_groups_total;
        stats.row_groups_scanned += found.row_groups_scanned;
        stats.files_scanned += usize::from(found.row_groups_scanned > 0);
        if found.unchecked {
            stats.unchecked.push(found.key.clone());
        }
        for record in &found.records {
            let last = emitted.entry(found.partition).or_insert(i64::MIN);
            if record.offset <= *last {
                continue;
            }
            *last = record.offset;
            emit(&found.topic, found.partition, record);
            stats.records += 1;
            if opts.limit.is_some_and(|limit| stats.records >= limit) {
                break 'files;
            }
        }
    }
    drop(searches);
    progress.finish();
    stats.bytes_read = read.load(Ordering::Relaxed);
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

struct Found {
    key: String,
    /// No checksum could vouch for the file's bytes.
    unchecked: bool,
    topic: String,
    partition: i32,
    records: Vec<Record>,
    row_groups_total: usize,
    row_groups_scanned: usize,
}

/// Search one file, pruning with its footer, statistics, bloom filters and page index.
async fn search_file(
    mut reader: StoreReader,
    key: DataFileKey,
    opts: &FindOptions,
) -> Result<Found, OpsError> {
    let name = reader.key.clone();
    let url = reader.store.url().to_string();
    let bad = |e: &dyn std::fmt::Display| {
        OpsError::Input(format!(
            "{url}: {name} is not a readable Rewind data file ({e}); run `rewind verify` on the archive"
        ))
    };
    let damaged = |why: &dyn std::fmt::Display| {
        OpsError::Input(format!(
            "{url}: {name} is damaged: {why}; its records are not returned (run `rewind verify --deep` on the archive)"
        ))
    };
    let checked = |e: DataFileError| match e {
        DataFileError::Damaged(why) => damaged(&why),
        other => bad(&other),
    };
    // The footer alone first: most files are ruled out by it and their bloom filters.
    let metadata = reader.footer().await.map_err(|e| bad(&e))?;
    let footer = datafile::Footer::of(&metadata).map_err(|e| bad(&e))?;
    let columns = Columns::of(metadata.file_metadata().schema_descr()).map_err(|e| bad(&e))?;
    let mut found = Found {
        key: name.clone(),
        unchecked: false,
        topic: key.topic.clone(),
        partition: key.partition,
        records: Vec::new(),
        row_groups_total: metadata.num_row_groups(),
        row_groups_scanned: 0,
    };
    if !file_may_match(&footer.meta, opts) {
        return Ok(found);
    }
    // What is read from here on is checked before it is used.
    match &footer.checksums {
        Some(sums) => {
            let index = reader.index_range(&metadata).await.map_err(&checked)?;
            let bytes = reader.read_cached(index).await.map_err(|e| bad(&e))?;
            sums.check_index(&bytes).map_err(&checked)?;
        }
        None => {
            found.unchecked = !reader.read_whole().await.map_err(&checked)?;
            if let Some((0, whole)) = reader.cache.first() {
                datafile::bounds::check_pages(&metadata, 0..metadata.num_row_groups(), whole, 0)
                    .map_err(|e| bad(&e))?;
            }
        }
    }
    let mut groups = Vec::new();
    for (i, group) in metadata.row_groups().iter().enumerate() {
        if opts.has_window() {
            match int64_range(
                group.column(columns.timestamp).statistics(),
                group.num_rows(),
            ) {
                Some(Some((lo, hi))) if !opts.window_meets(lo, hi) => continue,
                Some(None) => continue, // only null timestamps
                _ => {}
            }
        }
        let key_stats = group.column(columns.key).statistics();
        match &opts.key {
            KeyFilter::Any => {}
            KeyFilter::Null => {
                if key_stats.and_then(|s| s.null_count_opt()) == Some(0) {
                    continue;
                }
            }
            KeyFilter::Bytes(k) => {
                if let Some(Statistics::ByteArray(s)) = key_stats {
                    let below = s.min_bytes_opt().is_some_and(|min| k.as_slice() < min);
                    let above = s.max_bytes_opt().is_some_and(|max| k.as_slice() > max);
                    // Statistics may be truncated; only exact (untruncated) bounds prune.
                    if (below && s.min_is_exact()) || (above && s.max_is_exact()) {
                        continue;
                    }
                }
            }
        }
        groups.push(i);
    }
    if let KeyFilter::Bytes(k) = &opts.key {
        groups = reader
            .bloom_filter_pass(&metadata, columns.key, groups, k)
            .await
            .map_err(|e| bad(&e))?;
    }
    if groups.is_empty() {
        return Ok(found);
    }
    // Something may match: the page index, so that only the pages holding matching rows are read
    // (the offset index) and pages outside the window are skipped (the column index).
    let metadata = reader.page_index(metadata).await.map_err(|e| bad(&e))?;
    found.row_groups_scanned = groups.len();
    if let Some(sums) = &footer.checksums {
        // Each row group read is read whole and checked; the decoder reads it from memory.
        let ranges = groups
            .iter()
            .map(|&g| {
                datafile::integrity::row_group_range(&metadata, g)
                    .filter(|r| r.end <= reader.size)
                    .ok_or_else(|| bad(&format!("row group {g} lies outside the file")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        reader
            .read_all_cached(ranges.clone())
            .await
            .map_err(|e| bad(&e))?;
        for (&g, range) in groups.iter().zip(ranges) {
            let start = range.start;
            let bytes = reader.read_cached(range).await.map_err(|e| bad(&e))?;
            sums.check_row_group(g, &bytes).map_err(&checked)?;
            datafile::bounds::check_pages(&metadata, [g], &bytes, start).map_err(|e| bad(&e))?;
        }
    }
    let selection = opts
        .has_window()
        .then(|| page_selection(&metadata, columns.timestamp, &groups, opts))
        .flatten();
    if selection.as_ref().is_some_and(|s| !s.selects_any()) {
        return Ok(found);
    }
    let metadata = ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new())
        .map_err(|e| bad(&e))?;
    let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata);
    let schema = builder.parquet_schema().clone();
    let mut predicate_roots = vec![];
    if opts.has_window() {
        predicate_roots.push(columns.timestamp_root);
    }
    if opts.key != KeyFilter::Any {
        predicate_roots.push(columns.key_root);
    }
    if !opts.headers.is_empty() {
        predicate_roots.push(columns.headers_root);
    }
    let mut builder = builder.with_row_groups(groups);
    if let Some(selection) = selection {
        builder = builder.with_row_selection(selection);
    }
    if !predicate_roots.is_empty() {
        let filter = Filter::new(opts);
        let predicate = ArrowPredicateFn::new(
            ProjectionMask::roots(&schema, predicate_roots),
            move |batch: RecordBatch| filter.evaluate(&batch),
        );
        builder = builder.with_row_filter(RowFilter::new(vec![Box::new(predicate)]));
    }
    let batches: Vec<RecordBatch> = builder
        .build()
        .map_err(|e| bad(&e))?
        .try_collect()
        .await
        .map_err(|e| bad(&e))?;
    for batch in &batches {
        found
            .records
            .extend(datafile::records_of(batch).map_err(|e| bad(&e))?);
    }
    Ok(found)
}

/// Whether the footer's time span and range allow a match.
fn file_may_match(meta: &FileMeta, opts: &FindOptions) -> bool {
    if !opts.has_window() {
        return true;
    }
    match (meta.min_timestamp, meta.max_timestamp) {
        (Some(lo), Some(hi)) => opts.window_meets(lo, hi),
        _ => false,
    }
}

/// `Some(Some((min, max)))` from INT64 statistics, `Some(None)` when all of the group's `rows`
/// values are null, `None` when the statistics cannot tell.
fn int64_range(stats: Option<&Statistics>, rows: i64) -> Option<Option<(i64, i64)>> {
    match stats? {
        Statistics::Int64(s) => match (s.min_opt(), s.max_opt()) {
            (Some(&lo), Some(&hi)) => Some(Some((lo, hi))),
            _ if s.null_count_opt() == u64::try_from(rows).ok() => Some(None),
            _ => None,
        },
        _ => None,
    }
}

/// The rows of `groups` whose timestamp pages may meet the window, from the page index; `None`
/// when a group has no page index (then every row is read).
fn page_selection(
    metadata: &ParquetMetaData,
    timestamp: usize,
    groups: &[usize],
    opts: &FindOptions,
) -> Option<RowSelection> {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    let mut base = 0usize;
    for &g in groups {
        let rows = usize::try_from(metadata.row_group(g).num_rows()).ok()?;
        let index = metadata.page_index_for_row_group(g);
        let (Some(ColumnIndexMetaData::INT64(column)), Some(offsets)) =
            (index.column_index(timestamp), index.offset_index(timestamp))
        else {
            return None;
        };
        let pages = offsets.page_locations();
        // An index that does not describe the group's rows in order is not trusted: every row of
        // the file is read instead.
        if column.num_pages() != pages.len() as u64 {
            return None;
        }
        for (p, page) in pages.iter().enumerate() {
            let first = usize::try_from(page.first_row_index).ok()?;
            let end = match pages.get(p + 1) {
                Some(next) => usize::try_from(next.first_row_index).ok()?,
                None => rows,
            };
            if first > end || end > rows {
                return None;
            }
            let keep = match (column.min_value(p), column.max_value(p)) {
                (Some(&lo), Some(&hi)) => opts.window_meets(lo, hi),
                _ => false, // a page of null timestamps never meets a window
            };
            if keep {
                ranges.push(base + first..base + end);
            }
        }
        base += rows;
    }
    Some(RowSelection::from_consecutive_ranges(
        ranges.into_iter(),
        base,
    ))
}

/// The row predicate over the projected key, timestamp and header columns.
struct Filter {
    key: KeyFilter,
    from: Option<i64>,
    to: Option<i64>,
    window: bool,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Filter {
    fn new(opts: &FindOptions) -> Filter {
        Filter {
            key: opts.key.clone(),
            from: opts.from,
            to: opts.to,
            window: opts.has_window(),
            headers: opts.headers.clone(),
        }
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                ArrowError::SchemaError(format!("column {name} is missing from the filter batch"))
            })
        };
        let wrong =
            |name: &str| ArrowError::SchemaError(format!("column {name} has the wrong type"));
        let timestamps = if self.window {
            Some(
                column("timestamp")?
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .ok_or_else(|| wrong("timestamp"))?,
            )
        } else {
            None
        };
        let keys = if self.key != KeyFilter::Any {
            Some(
                column("key")?
                    .as_any()
                    .downcast_ref::<BinaryArray>()
                    .ok_or_else(|| wrong("key"))?,
            )
        } else {
            None
        };
        let headers = if self.headers.is_empty() {
            None
        } else {
            let list = column("headers")?
                .as_any()
                .downcast_ref::<ListArray>()
                .ok_or_else(|| wrong("headers"))?;
            let entries = list
                .values()
                .as_any()
                .downcast_ref::<StructArray>()
                .ok_or_else(|| wrong("headers"))?;
            let hk = entries
                .columns()
                .first()
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| wrong("headers.key"))?;
            let hv = entries
                .columns()
                .get(1)
                .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
                .ok_or_else(|| wrong("headers.value"))?;
            Some((list, hk, hv))
        };
        let keep = (0..batch.num_rows()).map(|i| {
            let time_ok = timestamps.is_none_or(|t| {
                !t.is_null(i)
                    && self.from.is_none_or(|from| t.value(i) >= from)
                    && self.to.is_none_or(|to| t.value(i) < to)
            });
            let key_ok = keys.is_none_or(|k| match &self.key {
                KeyFilter::Any => true,
                KeyFilter::Null => k.is_null(i),
                KeyFilter::Bytes(want) => !k.is_null(i) && k.value(i) == want.as_slice(),
            });
            let headers_ok = headers.is_none_or(|(list, hk, hv)| {
                let offsets = list.value_offsets();
                let range = offsets[i] as usize..offsets[i + 1] as usize;
                self.headers.iter().all(|(name, value)| {
                    range.clone().any(|j| {
                        hk.value(j) == name
                            && match value {
                                None => hv.is_null(j),
                                Some(v) => !hv.is_null(j) && hv.value(j) == v.as_slice(),
                            }
                    })
                })
            });
            Some(time_ok && key_ok && headers_ok)
        });
        Ok(keep.collect())
    }
}

#[cfg(test)]
mod tests;
