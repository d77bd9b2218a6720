//! Reading the archive for a restore: one reader per partition fetches its files in chain order
//! (the next ones prefetched while one is decoded), checks each file's CRC32C, decodes it on a
//! blocking thread and hands the records of the window over in chunks.
//!
//! Invariant: a reader hands over records in offset order and within the memory budget: every chunk
//! holds permits of a shared semaphore until the producer loop has sent it, and every fetched file
//! holds permits of another until it is decoded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::RestoreError;
use crate::archive::chain::{ChainError, ChainFile};
use crate::archive::datafile::{self, Rows};
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

impl Reader {
    pub async fn run(self, files: Vec<ChainFile>) {
        let store = self.store.clone();
        let pool = self.files_pool.clone();
        let budget = self.budget_kib;
        let mut fetched = futures::stream::iter(files.into_iter().map(|file| {
            let (store, pool) = (store.clone(), pool.clone());
            async move {
                let permit = pool
                    .acquire_many_owned(kib(file.size).min(budget) as u32)
                    .await
                    .expect("pool is never closed");
                let got = store.get(&file.key).await;
                (file, got, permit)
            }
        }))
        .buffered(PREFETCH_FILES);
        while let Some((file, got, permit)) = fetched.next().await {
            let result = match got {
                Ok(got) => self.decode(&file, got).await,
                Err(e) => Err(RestoreError::Chain(e.into())),
            };
            drop(permit);
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

    /// Decode one file on a blocking thread, sending chunks in range; false once the loop is gone.
    async fn decode(
        &self,
        file: &ChainFile,
        got: crate::storage::GetResult,
    ) -> Result<bool, RestoreError> {
        let bad = |message: String| {
            RestoreError::Chain(ChainError::BadFile {
                url: self.store.url().to_string(),
                key: file.key.clone(),
                message,
            })
        };
        if let Some(expected) = got.meta.crc32c {
            let body = got.body.clone();
            let actual = blocking(move || crate::storage::crc32c(&body)).await;
            if actual != expected {
                return Err(bad(format!(
                    "its CRC32C is {actual:08x} but {expected:08x} was stored with it (damaged)"
                )));
            }
        }
        let (lane, from, until) = (self.lane, self.from, self.until);
        let (tx, pool, budget) = (self.tx.clone(), self.chunks_pool.clone(), self.budget_kib);
        let open = Arc::new(AtomicU64::new(1));
        let still_open = open.clone();
        let body = got.body;
        let result = blocking(move || {
            datafile::decode_rows(body, CHUNK_BYTES, |rows| {
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
                    still_open.store(0, Ordering::Relaxed);
                }
                sent && last + 1 < until
            })
        })
        .await;
        let meta = result.map_err(|e| bad(e.to_string()))?;
        if meta.start != file.start || meta.end != file.end {
            return Err(bad(format!(
                "its footer now says [{}, {}) where [{}, {}) was listed",
                meta.start, meta.end, file.start, file.end
            )));
        }
        Ok(open.load(Ordering::Relaxed) == 1)
    }
}
