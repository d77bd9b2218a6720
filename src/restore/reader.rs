//! Reading the archive for a restore: one reader per partition fetches its files in chain order
//! (the next ones prefetched while one is decoded), checks their CRC32C, decodes them on a blocking
//! thread and hands the records of the window over in chunks. A small file is fetched whole; a
//! file larger than its share of the budget is fetched one row group at a time (its footer first),
//! each checked against the checksum its footer keeps, so memory holds a row group, not the file.
//!
//! Invariant: a reader hands over records in offset order and within the memory budget: every chunk
//! holds permits of a shared semaphore until the producer loop has sent it, and every fetched file
//! or row group holds permits of another until it is decoded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::RestoreError;
use crate::archive::chain::{self, ChainError, ChainFile};
use crate::archive::datafile::{self, integrity, FileMeta, Rows};
use crate::kafka::blocking;
use crate::storage::ObjectStore;

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
    key: String,
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
}

impl Reader {
    pub async fn run(self, files: Vec<ChainFile>) {
        let budget = self.budget_kib;
        let whole_max = (budget as u64 * 1024 / PREFETCH_FILES as u64).max(CHUNK_BYTES);
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
                match self.pieces(file, whole_max).await {
                    Ok(pieces) => queued.extend(pieces),
                    Err(e) => {
                        let _ = self.tx.send(Msg::Failed(e)).await;
                        return;
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
                Err(e) => Err(e),
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
                    key: file.key.clone(),
                    metadata: metadata.clone(),
                    index,
                    range,
                })
            })
            .collect())
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
    fn chunk_sender(&self, open: Arc<AtomicBool>) -> impl FnMut(Rows) -> bool + Send + 'static {
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
            sent && last + 1 < until
        }
    }

    /// Decode one row group on a blocking thread; false once the loop is gone.
    async fn decode_group(&self, group: Group, bytes: Bytes) -> Result<bool, RestoreError> {
        let Group {
            key,
            metadata,
            index,
            range,
        } = group;
        let open = Arc::new(AtomicBool::new(true));
        let send = self.chunk_sender(open.clone());
        blocking(move || {
            datafile::decode_row_group(&metadata, index, range.start, bytes, CHUNK_BYTES, send)
        })
        .await
        .map_err(|e| {
            RestoreError::Chain(ChainError::BadFile {
                url: self.store.url().to_string(),
                key,
                message: e.to_string(),
            })
        })?;
        Ok(open.load(Ordering::Relaxed))
    }

    /// Decode one whole file on a blocking thread, sending chunks in range; false once the loop
    /// is gone.
    async fn decode(
        &self,
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
        let send = self.chunk_sender(open.clone());
        let body = got.body;
        let meta = blocking(move || datafile::decode_rows(body, CHUNK_BYTES, send))
            .await
            .map_err(|e| self.bad(file, e.to_string()))?;
        self.check_range(file, &meta)?;
        Ok(open.load(Ordering::Relaxed))
    }
}

/// Fetch one piece once the pool has room for it.
async fn fetch(
    store: Arc<dyn ObjectStore>,
    pool: Arc<Semaphore>,
    budget_kib: usize,
    piece: Piece,
) -> Result<(Fetched, OwnedSemaphorePermit), RestoreError> {
    let permit = pool
        .acquire_many_owned(kib(piece.bytes()).min(budget_kib) as u32)
        .await
        .expect("pool is never closed");
    let fetched = match piece {
        Piece::Whole(file) => {
            let got = store.get(&file.key).await;
            got.map(|got| Fetched::Whole(file, got))
        }
        Piece::Group(group) => {
            let got = store.get_range(&group.key, group.range.clone()).await;
            got.map(|bytes| Fetched::Group(group, bytes))
        }
    };
    let fetched = fetched.map_err(|e| RestoreError::Chain(e.into()))?;
    Ok((fetched, permit))
}

/// A piece with what its request brought.
enum Fetched {
    Whole(ChainFile, crate::storage::GetResult),
    Group(Group, Bytes),
}
