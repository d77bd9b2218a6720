//! Reading the archive for a restore: one reader per partition fetches its files in chain order
//! (the next ones prefetched while one is decoded), checks their CRC32C, decodes them on a blocking
//! thread and hands the records of the window over in chunks. A small file is fetched whole; a
//! file larger than its share of the budget is fetched one row group at a time (its footer first),
//! each checked against the checksum its footer keeps, so memory holds a row group, not the file.
//!
//! A file the plan listed may be gone by the time it is read: `rewind compact` merged it into a
//! larger file and deleted it. The claim of its start names that file then (a compaction hands the
//! claims of its parts' starts over before it deletes them), and the reader goes on from it, from
//! the first offset it has not handed over yet.
//!
//! Invariant: a reader hands over records in offset order, each once, and within the memory budget:
//! every chunk holds permits of a shared semaphore until the producer loop has sent it, and every
//! fetched file or row group holds permits of another until it is decoded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::RestoreError;
use crate::archive::chain::{self, ChainError, ChainFile};
use crate::archive::datafile::{self, integrity, FileMeta, Rows};
use crate::archive::documents::{self, ArchiveError};
use crate::archive::paths::DataFileKey;
use crate::kafka::blocking;
use crate::storage::{ObjectStore, StorageError};

/// Records are decoded and handed to the producer in chunks of about this many bytes.
pub const CHUNK_BYTES: u64 = 1024 * 1024;
/// Files fetched ahead of the one being decoded, per partition.
const PREFETCH_FILES: usize = 2;

/// What a reader hands the producer loop.
pub enum Msg {
    Chunk {
        lane: usize,
        /// Records of the lane's range, in offset order (strict mode filters them when producing).
        rows: Rows,
        next: i64,
        _permit: OwnedSemaphorePermit,
    },
    Done {
        lane: usize,
        next: i64,
    },
    Failed(RestoreError),
}

impl Msg {
    /// The lane a message is about (none for a failure).
    pub fn lane(&self) -> Option<usize> {
        match self {
            Msg::Chunk { lane, .. } | Msg::Done { lane, .. } => Some(*lane),
            Msg::Failed(_) => None,
        }
    }
}

pub fn kib(bytes: u64) -> usize {
    (bytes / 1024).max(1) as usize
}

/// Reads one lane's files in order and hands their records over in chunks.
pub struct Reader {
    pub store: Arc<dyn ObjectStore>,
    pub lane: usize,
    pub from: i64,
    pub until: i64,
    pub tx: mpsc::Sender<Msg>,
    pub files_pool: Arc<Semaphore>,
    pub chunks_pool: Arc<Semaphore>,
    pub budget_kib: usize,
}

/// What a reader fetches with one request: a whole file, or one row group of a file larger than
/// its share of the budget (so that memory holds a row group, not the file).
enum Piece {
    Whole(ChainFile),
    Group(Group),
}

/// One row group of a file, and the footer it is decoded with.
struct Group {
    file: ChainFile,
    metadata: ArrowReaderMetadata,
    index: usize,
    range: std::ops::Range<u64>,
}

impl Piece {
    fn bytes(&self) -> u64 {
        match self {
            Piece::Whole(file) => file.size,
            Piece::Group(group) => group.range.end - group.range.start,
        }
    }

    fn file(&self) -> &ChainFile {
        match self {
            Piece::Whole(file) => file,
            Piece::Group(group) => &group.file,
        }
    }
}

impl Reader {
    pub async fn run(mut self, files: Vec<ChainFile>) {
        let budget = self.budget_kib;
        let whole_max = (budget as u64 * 1024 / PREFETCH_FILES as u64).max(CHUNK_BYTES);
        let planned = files.clone();
        let mut files = files.into_iter();
        let mut queued: VecDeque<Piece> = VecDeque::new();
        let mut fetching = FuturesOrdered::new();
        loop {
            // Keep the next pieces coming while one is decoded.
            while fetching.len() < PREFETCH_FILES {
                if let Some(piece) = queued.pop_front() {
                    fetching.push_back(fetch(
                        self.store.clone(),
                        self.files_pool.clone(),
                        budget,
                        piece,
                    ));
                    continue;
                }
                let Some(file) = files.next() else {
                    break;
                };
                let result = self.pieces(file.clone(), whole_max).await;
                match result {
                    Ok(pieces) => queued.extend(pieces),
                    Err(e) => {
                        // Gone since the plan: go on from the file that replaced it, if any. The
                        // pieces of earlier files still on their way are decoded first (nothing
                        // is queued here: a file's pieces are made once the queue is empty).
                        match self.replaced(&file, e, &planned).await {
                            Ok(rest) => files = rest.into_iter(),
                            Err(e) => {
                                let _ = self.tx.send(Msg::Failed(e)).await;
                                return;
                            }
                        }
                    }
                }
            }
            let Some(fetched) = fetching.next().await else {
                break;
            };
            let result = match fetched {
                Ok((Fetched::Whole(file, got), permit)) => {
                    let decoded = self.decode(&file, got).await;
                    drop(permit);
                    decoded
                }
                Ok((Fetched::Group(group, bytes), permit)) => {
                    let decoded = self.decode_group(group, bytes).await;
                    drop(permit);
                    decoded
                }
                Err((e, file)) => match self.replaced(&file, e, &planned).await {
                    Ok(rest) => {
                        // What was fetched after the gone file is read again in order.
                        files = rest.into_iter();
                        queued.clear();
                        fetching = FuturesOrdered::new();
                        Ok(true)
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    let _ = self.tx.send(Msg::Failed(e)).await;
                    return;
                }
            }
        }
        let _ = self
            .tx
            .send(Msg::Done {
                lane: self.lane,
                next: self.until,
            })
            .await;
    }

    /// What to fetch of `file`: the whole file when it is small (one request), else its footer
    /// first (checked against the chain like a whole file's) and then each row group that holds
    /// offsets of the window, checked against its own checksum. A file written before data files
    /// carried checksums is read whole.
    async fn pieces(&self, file: ChainFile, whole_max: u64) -> Result<Vec<Piece>, RestoreError> {
        if file.size <= whole_max {
            return Ok(vec![Piece::Whole(file)]);
        }
        let parquet = chain::read_file_metadata(&*self.store, &file.key, file.size).await?;
        let footer = datafile::Footer::of(&parquet).map_err(|e| self.bad(&file, e.to_string()))?;
        if footer.checksums.is_none() {
            return Ok(vec![Piece::Whole(file)]);
        }
        self.check_range(&file, &footer.meta)?;
        let wanted = datafile::row_groups_holding(&parquet, self.from, self.until);
        let mut groups = Vec::new();
        for index in wanted {
            let range = integrity::row_group_range(&parquet, index)
                .filter(|r| r.start < r.end && r.end <= file.size)
                .ok_or_else(|| {
                    self.bad(
                        &file,
                        format!("its row group {index} lies outside the file"),
                    )
                })?;
            groups.push((index, range));
        }
        let metadata = ArrowReaderMetadata::try_new(Arc::new(parquet), Default::default())
            .map_err(|e| self.bad(&file, e.to_string()))?;
        Ok(groups
            .into_iter()
            .map(|(index, range)| {
                Piece::Group(Group {
                    file: file.clone(),
                    metadata: metadata.clone(),
                    index,
                    range,
                })
            })
            .collect())
    }

    /// `error` met reading `file`: when the file is gone and a compacted file holding its range
    /// replaced it, the files to read from here on, that one and the planned files after it;
    /// otherwise the error.
    async fn replaced(
        &self,
        file: &ChainFile,
        error: RestoreError,
        planned: &[ChainFile],
    ) -> Result<Vec<ChainFile>, RestoreError> {
        let gone = matches!(
            &error,
            RestoreError::Chain(ChainError::Archive(ArchiveError::Storage(
                StorageError::NotFound { .. }
            )))
        );
        if !gone {
            return Err(error);
        }
        let Some(merged) = replacement(&*self.store, file).await? else {
            return Err(error);
        };
        tracing::info!(
            gone = file.key,
            merged = merged.key,
            from = self.from,
            "a planned file was compacted into another since the plan; reading on from that one"
        );
        let end = merged.end;
        let after = planned.iter().filter(|f| f.start >= end).cloned();
        Ok(std::iter::once(merged).chain(after).collect())
    }

    fn bad(&self, file: &ChainFile, message: String) -> RestoreError {
        RestoreError::Chain(ChainError::BadFile {
            url: self.store.url().to_string(),
            key: file.key.clone(),
            message,
        })
    }

    /// A footer must say the range the chain listed the file with.
    fn check_range(&self, file: &ChainFile, meta: &FileMeta) -> Result<(), RestoreError> {
        if meta.start != file.start || meta.end != file.end {
            return Err(self.bad(
                file,
                format!(
                    "its footer now says [{}, {}) where [{}, {}) was listed",
                    meta.start, meta.end, file.start, file.end
                ),
            ));
        }
        Ok(())
    }

    /// What hands decoded rows over: the rows of the window, in chunks that hold permits of the
    /// chunk pool until the producer loop sent them. It answers false once the window is done or
    /// the loop is gone (then `open` turns false).
    fn chunk_sender(
        &self,
        open: Arc<AtomicBool>,
        reached: Arc<AtomicI64>,
    ) -> impl FnMut(Rows) -> bool + Send + 'static {
        let (lane, from, until) = (self.lane, self.from, self.until);
        let (tx, pool, budget) = (self.tx.clone(), self.chunks_pool.clone(), self.budget_kib);
        move |rows: Rows| {
            let view = rows.view();
            let offsets = view.offsets();
            let Some(&last) = offsets.last() else {
                return true;
            };
            if last < from {
                return true;
            }
            // Offsets increase within a file: the range is one run of rows.
            let first = offsets.partition_point(|&o| o < from);
            let end = offsets.partition_point(|&o| o < until);
            if first == end {
                // Nothing of the window (a row group read past its end).
                return last + 1 < until;
            }
            let rows = rows.slice(first, end - first);
            let permit = futures::executor::block_on(
                pool.clone()
                    .acquire_many_owned(kib(rows.memory() as u64).min(budget) as u32),
            )
            .expect("pool is never closed");
            let next = (last + 1).min(until);
            let sent = tx
                .blocking_send(Msg::Chunk {
                    lane,
                    rows,
                    next,
                    _permit: permit,
                })
                .is_ok();
            if !sent {
                open.store(false, Ordering::Relaxed);
            }
            reached.fetch_max(next, Ordering::Relaxed);
            sent && last + 1 < until
        }
    }

    /// Decode one row group on a blocking thread; false once the loop is gone.
    async fn decode_group(&mut self, group: Group, bytes: Bytes) -> Result<bool, RestoreError> {
        let Group {
            file,
            metadata,
            index,
            range,
        } = group;
        let open = Arc::new(AtomicBool::new(true));
        let reached = Arc::new(AtomicI64::new(self.from));
        let send = self.chunk_sender(open.clone(), reached.clone());
        blocking(move || {
            datafile::decode_row_group(&metadata, index, range.start, bytes, CHUNK_BYTES, send)
        })
        .await
        .map_err(|e| self.bad(&file, e.to_string()))?;
        self.from = reached.load(Ordering::Relaxed);
        Ok(open.load(Ordering::Relaxed))
    }

    /// Decode one whole file on a blocking thread, sending chunks in range; false once the loop
    /// is gone.
    async fn decode(
        &mut self,
        file: &ChainFile,
        got: crate::storage::GetResult,
    ) -> Result<bool, RestoreError> {
        if let Some(expected) = got.meta.crc32c {
            let body = got.body.clone();
            let actual = blocking(move || crate::storage::crc32c(&body)).await;
            if actual != expected {
                return Err(self.bad(
                    file,
                    format!(
                        "its CRC32C is {actual:08x} but {expected:08x} was stored with it (damaged)"
                    ),
                ));
            }
        }
        let open = Arc::new(AtomicBool::new(true));
        let reached = Arc::new(AtomicI64::new(self.from));
        let send = self.chunk_sender(open.clone(), reached.clone());
        let body = got.body;
        let meta = blocking(move || datafile::decode_rows(body, CHUNK_BYTES, send))
            .await
            .map_err(|e| self.bad(file, e.to_string()))?;
        self.check_range(file, &meta)?;
        self.from = reached.load(Ordering::Relaxed);
        Ok(open.load(Ordering::Relaxed))
    }
}

/// Fetch one piece once the pool has room for it.
async fn fetch(
    store: Arc<dyn ObjectStore>,
    pool: Arc<Semaphore>,
    budget_kib: usize,
    piece: Piece,
) -> Result<(Fetched, OwnedSemaphorePermit), (RestoreError, ChainFile)> {
    let permit = pool
        .acquire_many_owned(kib(piece.bytes()).min(budget_kib) as u32)
        .await
        .expect("pool is never closed");
    let file = piece.file().clone();
    let fetched = match piece {
        Piece::Whole(file) => {
            let got = store.get(&file.key).await;
            got.map(|got| Fetched::Whole(file, got))
        }
        Piece::Group(group) => {
            let got = store.get_range(&group.file.key, group.range.clone()).await;
            got.map(|bytes| Fetched::Group(group, bytes))
        }
    };
    let fetched = fetched.map_err(|e| (RestoreError::Chain(e.into()), file))?;
    Ok((fetched, permit))
}

/// The compacted file that replaced `gone` (deleted since it was listed): the claim of its start
/// names it, or, when that one was merged again, the claim of its own start does (a few hops at
/// most, one per compaction). `None` when no compacted file holds `gone`'s range.
async fn replacement(
    store: &dyn ObjectStore,
    gone: &ChainFile,
) -> Result<Option<ChainFile>, RestoreError> {
    let Some(listed) = DataFileKey::parse(&gone.key) else {
        return Ok(None);
    };
    let mut start = gone.start;
    let mut previous = gone.key.clone();
    for _ in 0..8 {
        let Some(claim) =
            documents::read_claim(store, &listed.topic, listed.partition, start).await?
        else {
            return Ok(None);
        };
        let named = DataFileKey::parse(&claim.key);
        let Some((named, end)) = named.and_then(|k| k.end.map(|end| (k, end))) else {
            return Ok(None);
        };
        if claim.key == previous || named.start > gone.start || end < gone.end {
            return Ok(None);
        }
        match store.head(&claim.key).await {
            Ok(meta) => {
                return Ok(Some(ChainFile {
                    key: claim.key,
                    bucket: named.bucket,
                    start: named.start,
                    end,
                    size: meta.size,
                    footer: None,
                }))
            }
            Err(StorageError::NotFound { .. }) => {
                start = named.start;
                previous = claim.key;
            }
            Err(e) => return Err(RestoreError::Chain(e.into())),
        }
    }
    Ok(None)
}

/// A piece with what its request brought.
enum Fetched {
    Whole(ChainFile, crate::storage::GetResult),
    Group(Group, Bytes),
}
