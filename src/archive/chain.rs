//! Reading a partition's chain back from its keys: list its data files, order them by start, and
//! derive each file's end from the next file's start (or the gap recorded between them). Footers are
//! read only where needed, with one ranged read each: the last file's (where the chain ends) always,
//! others on demand ([`read_footers`]), so that planning a window on a long history reads the files
//! around the window, not all of them.
//!
//! Invariant: every footer read is checked against the chain: its range must be exactly the
//! `[start, end)` the keys imply, so a reader that walks the chain in order sees every archived
//! offset once, or stops with an error naming the file that breaks it.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};

pub use super::datafile::Footer as FileFooter;
use parquet::file::metadata::ParquetMetaData;

use super::datafile::{self, FileMeta};
use super::documents::{self, ArchiveError, Gap};
use super::paths::{DataFileKey, DATA_PREFIX};
use super::time::HourBucket;
use crate::storage::{ObjectStore, StorageError};

/// Bytes read from the end of a file to find its footer in one request, most of the time.
const TAIL_BYTES: u64 = 64 * 1024;
/// Footers read at once.
const CONCURRENT_FOOTERS: usize = 16;

/// What a file's footer adds to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub records: u64,
    pub min_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
    /// Bytes of keys, values and headers (see [`FileFooter::payload_bytes`]).
    pub payload_bytes: Option<u64>,
}

/// One data file of a chain: its key, its range, and its footer once read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFile {
    pub key: String,
    pub bucket: HourBucket,
    pub start: i64,
    pub end: i64,
    /// Stored size in bytes.
    pub size: u64,
    pub footer: Option<Footer>,
}

/// The files of one partition in offset order, with the gaps recorded between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub topic: String,
    pub partition: i32,
    pub files: Vec<ChainFile>,
    pub gaps: Vec<Gap>,
}

impl Chain {
    /// First archived offset, if anything is archived.
    pub fn start(&self) -> Option<i64> {
        self.files.first().map(|f| f.start)
    }

    /// Offset after the last archived one.
    pub fn end(&self) -> Option<i64> {
        self.files.last().map(|f| f.end)
    }
}

/// Data files with their stored sizes.
pub type Listed = Vec<(DataFileKey, u64)>;

/// Why a chain could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{url}: {key} is not a readable Rewind data file ({message}); run `rewind verify` on the archive")]
    BadFile {
        url: String,
        key: String,
        message: String,
    },
    #[error("{url}: the chain of {topic}/{partition} is broken at {key}: it starts at offset {start} but the previous file ends at {previous_end} and no gap is recorded; run `rewind verify` on the archive")]
    Broken {
        url: String,
        topic: String,
        partition: i32,
        key: String,
        start: i64,
        previous_end: i64,
    },
}

impl From<StorageError> for ChainError {
    fn from(e: StorageError) -> ChainError {
        ChainError::Archive(e.into())
    }
}

/// The data files under `prefix` (`data/` or one topic's or partition's folder), grouped by
/// partition and in offset order, with their stored sizes. Keys that are not data files are ignored.
pub async fn list_files(
    store: &dyn ObjectStore,
    prefix: &str,
) -> Result<BTreeMap<(String, i32), Vec<(DataFileKey, u64)>>, StorageError> {
    let mut out: BTreeMap<(String, i32), Vec<(DataFileKey, u64)>> = BTreeMap::new();
    for object in store.list(prefix).await? {
        if let Some(key) = DataFileKey::parse(&object.key) {
            out.entry((key.topic.clone(), key.partition))
                .or_default()
                .push((key, object.size));
        }
    }
    for files in out.values_mut() {
        files.sort_by_key(|(k, _)| k.start);
    }
    Ok(out)
}

/// Every data file of the archive, grouped by partition.
pub async fn list_all(
    store: &dyn ObjectStore,
) -> Result<BTreeMap<(String, i32), Vec<(DataFileKey, u64)>>, StorageError> {
    list_files(store, DATA_PREFIX).await
}

/// Read the footer metadata of one data file of `size` bytes with ranged reads of its tail.
pub async fn read_footer(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
) -> Result<FileMeta, ChainError> {
    Ok(read_file_footer(store, key, size).await?.meta)
}

/// Read the whole footer of one data file of `size` bytes with ranged reads of its tail.
pub async fn read_file_footer(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
) -> Result<FileFooter, ChainError> {
    let metadata = read_file_metadata(store, key, size).await?;
    FileFooter::of(&metadata).map_err(|e| bad_file(store, key, e.to_string()))
}

/// Read the Parquet footer of one data file of `size` bytes with ranged reads of its tail (one,
/// most of the time), for a reader that then reads its row groups on their own.
pub async fn read_file_metadata(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
) -> Result<ParquetMetaData, ChainError> {
    let bad = |message: String| bad_file(store, key, message);
    let mut want = TAIL_BYTES.min(size);
    loop {
        let tail = store.get_range(key, size - want..size).await?;
        match datafile::metadata_from_tail(&tail, size).map_err(|e| bad(e.to_string()))? {
            Ok(metadata) => return Ok(metadata),
            Err(n) if (n as u64) > datafile::bounds::MAX_FOOTER_BYTES => {
                return Err(bad(format!(
                    "its footer claims {n} bytes, more than the {} MiB a reader accepts",
                    datafile::bounds::MAX_FOOTER_BYTES >> 20
                )))
            }
            Err(n) if (n as u64) > want && (n as u64) <= size => want = n as u64,
            Err(n) => {
                return Err(bad(format!(
                    "its footer claims {n} bytes, but the file has {size}"
                )))
            }
        }
    }
}

fn bad_file(store: &dyn ObjectStore, key: &str, message: String) -> ChainError {
    ChainError::BadFile {
        url: store.url().to_string(),
        key: key.to_string(),
        message,
    }
}

/// Where a partition's chain begins, given the start `rewind retention` recorded and the ranges
/// the partition's listed files' keys give (`(start, end)`, the end only for a compacted file):
/// the recorded start when a file begins at it (retention always records it that way), or else
/// the start of a compacted file whose range holds it (a compaction merged the file retention
/// recorded the start at into one that begins earlier: the chain then begins with that file, so
/// nothing at or after the recorded start is left out). Any other start is stale (a partition
/// moved aside and backed up again, a hand-made document): the chain is then every listed file,
/// and `rewind verify` names the document.
pub fn effective_start(
    recorded: Option<i64>,
    files: impl Iterator<Item = (i64, Option<i64>)> + Clone,
) -> Option<i64> {
    let r = recorded?;
    if files.clone().any(|(s, _)| s == r) {
        return Some(r);
    }
    files
        .filter(|(s, e)| *s < r && e.is_some_and(|e| r < e))
        .map(|(s, _)| s)
        .min()
}

/// Split the files of a chain (orphans already left out, in offset order) into those the chain
/// reads and those a compacted file covers: a compacted file (one whose key carries its end)
/// replaces every file that starts inside its range, which `rewind compact` deletes once the
/// compacted file holds its start; one that stopped half-way leaves some behind.
pub fn without_covered(files: &[(DataFileKey, u64)]) -> (Listed, Listed) {
    let mut kept = Vec::with_capacity(files.len());
    let mut covered = Vec::new();
    let mut reach = i64::MIN;
    for file in files {
        if file.0.start < reach {
            covered.push(file.clone());
            continue;
        }
        if let Some(end) = file.0.end {
            reach = end;
        }
        kept.push(file.clone());
    }
    (kept, covered)
}

/// Split one partition's `files` (in offset order) into the files of its chain and the orphans: where
/// several files share a start (writers that disagreed on the time bucket of the range's first
/// record raced), the one its claim names is the chain's, and the others lost the race (their
/// writer deletes them; a crash can leave one behind). With no claim, the first key is taken, as a
/// resuming sink would claim it. A start where a gap is recorded (`gap_starts`) keeps none of its
/// files: a gap's document is written only once the gap won the claim of its start.
pub async fn without_orphans(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    files: &[(DataFileKey, u64)],
    gap_starts: &std::collections::BTreeSet<i64>,
) -> Result<(Vec<(DataFileKey, u64)>, Vec<(DataFileKey, u64)>), ChainError> {
    let mut kept: Vec<(DataFileKey, u64)> = Vec::with_capacity(files.len());
    let mut orphans = Vec::new();
    let mut i = 0;
    while i < files.len() {
        let start = files[i].0.start;
        let same = files[i..]
            .iter()
            .take_while(|(k, _)| k.start == start)
            .count();
        let group = &files[i..i + same];
        i += same;
        if gap_starts.contains(&start) {
            orphans.extend(group.iter().cloned());
            continue;
        }
        if same == 1 {
            kept.push(group[0].clone());
            continue;
        }
        let claim = documents::read_claim(store, topic, partition, start).await?;
        let winner = match &claim {
            Some(c) if c.is_gap() => None,
            Some(c) => group.iter().position(|(k, _)| k.to_string() == c.key),
            None => group
                .iter()
                .enumerate()
                .min_by_key(|(_, (k, _))| k.to_string())
                .map(|(i, _)| i),
        };
        for (j, file) in group.iter().enumerate() {
            if Some(j) == winner {
                kept.push(file.clone());
            } else {
                orphans.push(file.clone());
            }
        }
    }
    Ok((kept, orphans))
}

/// The chain one partition's `files` (in offset order) form. Ends come from the next file's start
/// or the gap recorded before it; the last file's footer is read for the chain's end. Files before
/// the start `rewind retention` recorded are left out. `known` holds files already read (by key),
/// whose footers are kept.
pub async fn load(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    files: &[(DataFileKey, u64)],
    known: &BTreeMap<String, ChainFile>,
) -> Result<Chain, ChainError> {
    // Retention may have moved the chain's start: what lies before it is no longer archived.
    let recorded = documents::read_chain_start(store, topic, partition)
        .await?
        .map(|s| s.start);
    let first = effective_start(recorded, files.iter().map(|(k, _)| (k.start, k.end)));
    if let (Some(start), None) = (recorded, first) {
        tracing::warn!(
            topic,
            partition,
            start,
            "the chain start recorded in _retention/ matches no data file; ignoring it (run `rewind verify`)"
        );
    }
    let first = first.unwrap_or(i64::MIN);
    let mut gaps = documents::read_gaps(store, topic, partition).await?;
    let gap_starts = gaps.iter().map(|g| g.start).collect();
    let (files, _) = without_orphans(store, topic, partition, files, &gap_starts).await?;
    let files = files.as_slice();
    // A gap ending at the start stays: it says the offsets before the start were never archived.
    gaps.retain(|g| g.end >= first);
    let (files, _) = without_covered(&files[files.partition_point(|(k, _)| k.start < first)..]);
    let files = files.as_slice();
    let mut chain = Vec::with_capacity(files.len());
    for (i, (key, size)) in files.iter().enumerate() {
        let name = key.to_string();
        let end = match files.get(i + 1) {
            // The next file's start, or the start of the run of recorded gaps that ends there
            // (a sink that came back to deleted records more than once records one gap each time).
            Some((next, _)) => {
                let mut end = next.start;
                while let Some(g) = gaps.iter().find(|g| g.end == end && g.start > key.start) {
                    end = g.start;
                }
                end
            }
            None => key.end.unwrap_or(i64::MAX),
        };
        // The next file does not start where this one ends (or at a gap after it).
        let broken = |previous_end: i64| ChainError::Broken {
            url: store.url().to_string(),
            topic: topic.to_string(),
            partition,
            key: files[i + 1].0.to_string(),
            start: files[i + 1].0.start,
            previous_end,
        };
        if end <= key.start {
            return Err(broken(key.start));
        }
        // A compacted file's range is in its name: the next file must start at its end.
        if let Some(named) = key.end.filter(|e| *e != end) {
            return Err(broken(named));
        }
        // A file read before keeps its footer, whose end must still meet the next file.
        let (end, footer) = match known.get(&name).filter(|k| k.footer.is_some()) {
            Some(k) if end == i64::MAX || k.end == end => (k.end, k.footer),
            Some(k) => return Err(broken(k.end)),
            None => (end, None),
        };
        chain.push(ChainFile {
            key: name,
            bucket: key.bucket,
            start: key.start,
            end,
            size: *size,
            footer,
        });
    }
    let mut chain = Chain {
        topic: topic.to_string(),
        partition,
        files: chain,
        gaps,
    };
    if let Some(last) = chain.files.len().checked_sub(1) {
        read_footers(store, &mut chain, |i, _| i == last).await?;
    }
    Ok(chain)
}

/// Read the footers of the chain's files that `wanted` picks (by index) and do not have one yet,
/// several at once, checking each against the chain: its range must be the one the keys imply.
pub async fn read_footers(
    store: &dyn ObjectStore,
    chain: &mut Chain,
    wanted: impl Fn(usize, &ChainFile) -> bool,
) -> Result<(), ChainError> {
    let todo: Vec<usize> = chain
        .files
        .iter()
        .enumerate()
        .filter(|(i, f)| f.footer.is_none() && wanted(*i, f))
        .map(|(i, _)| i)
        .collect();
    let read: Vec<(usize, FileFooter)> =
        futures::stream::iter(
            todo.into_iter().map(|i| {
                let file = &chain.files[i];
                async move {
                    Ok::<_, ChainError>((i, read_file_footer(store, &file.key, file.size).await?))
                }
            }),
        )
        .buffered(CONCURRENT_FOOTERS)
        .try_collect()
        .await?;
    for (i, footer) in read {
        let meta = &footer.meta;
        let last = i + 1 == chain.files.len();
        let file = &mut chain.files[i];
        let named_end = DataFileKey::parse(&file.key).and_then(|k| k.end);
        if meta.topic != chain.topic
            || meta.partition != chain.partition
            || meta.start != file.start
            || meta.end <= meta.start
            || named_end.is_some_and(|e| e != meta.end)
        {
            return Err(ChainError::BadFile {
                url: store.url().to_string(),
                key: file.key.clone(),
                message: format!(
                    "its footer says {}/{} [{}, {}), which does not match its key",
                    meta.topic, meta.partition, meta.start, meta.end
                ),
            });
        }
        if last {
            file.end = meta.end;
        } else if meta.end != file.end {
            // The next file does not start where this one ends, and no gap says why.
            let next = &chain.files[i + 1];
            return Err(ChainError::Broken {
                url: store.url().to_string(),
                topic: chain.topic.clone(),
                partition: chain.partition,
                key: next.key.clone(),
                start: next.start,
                previous_end: meta.end,
            });
        }
        chain.files[i].footer = Some(Footer {
            records: meta.record_count,
            min_timestamp: meta.min_timestamp,
            max_timestamp: meta.max_timestamp,
            payload_bytes: footer.payload_bytes,
        });
    }
    Ok(())
}
