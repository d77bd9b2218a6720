//! Reading a partition's chain back: list its data files, read each file's footer with one ranged
//! read, and check that the files follow each other (`start` = previous `end`) except where a gap is
//! recorded.
//!
//! Invariant: a [`Chain`] handed out is contiguous apart from recorded gaps, and every file's footer
//! agrees with its key, so a reader that walks it in order sees every archived offset once.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};

use super::datafile::{self, FileMeta, Tail};
use super::documents::{self, ArchiveError, Gap};
use super::paths::{DataFileKey, DATA_PREFIX};
use super::time::HourBucket;
use crate::storage::{ObjectStore, StorageError};

/// Bytes read from the end of a file to find its footer in one request, most of the time.
const TAIL_BYTES: u64 = 64 * 1024;
/// Footers read at once.
const CONCURRENT_FOOTERS: usize = 16;

/// One data file of a chain, as its key and footer describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFile {
    pub key: String,
    pub bucket: HourBucket,
    pub start: i64,
    pub end: i64,
    /// Stored size in bytes.
    pub size: u64,
    pub records: u64,
    pub min_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
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

/// Read the footer of one data file of `size` bytes with ranged reads of its tail.
pub async fn read_footer(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
) -> Result<FileMeta, ChainError> {
    let bad = |message: String| ChainError::BadFile {
        url: store.url().to_string(),
        key: key.to_string(),
        message,
    };
    let mut want = TAIL_BYTES.min(size);
    loop {
        let tail = store.get_range(key, size - want..size).await?;
        match datafile::footer_from_tail(&tail, size).map_err(|e| bad(e.to_string()))? {
            Tail::Meta(meta) => return Ok(meta),
            Tail::Need(n) if (n as u64) > want && (n as u64) <= size => want = n as u64,
            Tail::Need(n) => return Err(bad(format!("its footer claims {n} bytes"))),
        }
    }
}

/// Read the footers of `files` (one partition, in offset order) and check the chain they form.
/// `known` holds files already read (by key), which are not read again.
pub async fn load(
    store: &dyn ObjectStore,
    topic: &str,
    partition: i32,
    files: &[(DataFileKey, u64)],
    known: &BTreeMap<String, ChainFile>,
) -> Result<Chain, ChainError> {
    let read: Vec<ChainFile> = futures::stream::iter(files.iter().map(|(key, size)| async move {
        let name = key.to_string();
        if let Some(file) = known.get(&name) {
            return Ok(file.clone());
        }
        let meta = read_footer(store, &name, *size).await?;
        if meta.topic != key.topic
            || meta.partition != key.partition
            || meta.start != key.start
            || meta.end <= meta.start
        {
            return Err(ChainError::BadFile {
                url: store.url().to_string(),
                key: name,
                message: format!(
                    "its footer says {}/{} [{}, {}), which does not match its key",
                    meta.topic, meta.partition, meta.start, meta.end
                ),
            });
        }
        Ok(ChainFile {
            key: name,
            bucket: key.bucket,
            start: meta.start,
            end: meta.end,
            size: *size,
            records: meta.record_count,
            min_timestamp: meta.min_timestamp,
            max_timestamp: meta.max_timestamp,
        })
    }))
    .buffered(CONCURRENT_FOOTERS)
    .try_collect()
    .await?;
    let gaps = documents::read_gaps(store, topic, partition).await?;
    for pair in read.windows(2) {
        let (previous, file) = (&pair[0], &pair[1]);
        let explained = gaps
            .iter()
            .any(|g| g.start == previous.end && g.end == file.start);
        if file.start != previous.end && !explained {
            return Err(ChainError::Broken {
                url: store.url().to_string(),
                topic: topic.to_string(),
                partition,
                key: file.key.clone(),
                start: file.start,
                previous_end: previous.end,
            });
        }
    }
    Ok(Chain {
        topic: topic.to_string(),
        partition,
        files: read,
        gaps,
    })
}
