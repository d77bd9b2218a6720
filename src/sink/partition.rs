//! One partition's chain on the sink side: the records buffered for its open file, and the commit
//! protocol that makes them durable.
//!
//! The commit order lives here and only here: (1) the data file is created with a create-only put,
//! or an existing file at the same start is adopted; (2) only then the checkpoint is advanced by
//! compare-and-swap; (3) the Kafka commit follows, for lag monitoring only. A crash between any two
//! steps leaves a chain the next start resumes without loss or duplicate.

use crate::archive::datafile::{self, file_meta};
use crate::archive::documents::{self, ArchiveError, Checkpoint, Versioned};
use crate::archive::paths::DataFileKey;
use crate::archive::rotation::{Event, OpenFile, RollReason, RollingPolicy};
use crate::archive::time::{rfc3339_millis, HourBucket};
use crate::archive::{Record, FORMAT_VERSION};
use crate::failpoint;
use crate::storage::{ObjectStore, StorageError};

use super::upload::{self, UploadError};

/// Why making a file durable failed.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{key}: {source}")]
    DataFile {
        key: String,
        source: datafile::DataFileError,
    },
    #[error("{key}: the existing file covers [{start}, {end}), which does not continue the chain at {expected}")]
    Inconsistent {
        key: String,
        start: i64,
        end: i64,
        expected: i64,
    },
}

impl FlushError {
    /// Whether the store may accept the same flush later (outage, throttling, timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            FlushError::Storage(e) | FlushError::Archive(ArchiveError::Storage(e)) => {
                e.is_transient()
            }
            _ => false,
        }
    }
}

/// What a flush made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed {
    pub key: String,
    pub start: i64,
    pub end: i64,
    pub records: u64,
    pub bytes: u64,
    /// The file was already there (written by an earlier run or another worker) and was adopted.
    pub adopted: bool,
}

/// The sink's view of one partition.
#[derive(Debug)]
pub struct PartitionChain {
    pub topic: String,
    pub partition: i32,
    /// Where the chain continues: the next file's start.
    pub end: i64,
    checkpoint: Option<Versioned<Checkpoint>>,
    buffer: Vec<Record>,
    open: Option<OpenFile>,
    /// Heap bytes the buffered records own (their keys, values and headers).
    heap_bytes: u64,
}

impl PartitionChain {
    /// Resume a partition from the archive: its checkpoint, then any files written after it (a crash
    /// between upload and checkpoint), adopted in chain order. `earliest` is where the chain starts
    /// when the archive has nothing for the partition.
    pub async fn resume(
        store: &dyn ObjectStore,
        topic: &str,
        partition: i32,
        earliest: i64,
    ) -> Result<PartitionChain, FlushError> {
        let checkpoint = documents::read_checkpoint(store, topic, partition).await?;
        let files = store
            .list(&DataFileKey::partition_prefix(topic, partition))
            .await?;
        let mut keys: Vec<DataFileKey> = files
            .iter()
            .filter_map(|o| DataFileKey::parse(&o.key))
            .collect();
        keys.sort_by_key(|k| k.start);
        let mut end = match (&checkpoint, keys.first()) {
            (Some(c), _) => c.doc.end,
            (None, Some(first)) => first.start,
            (None, None) => earliest,
        };
        for key in &keys {
            if key.start < end {
                continue;
            }
            if key.start != end {
                break;
            }
            let meta = read_meta(store, &key.to_string()).await?;
            end = meta.end;
        }
        let mut chain = PartitionChain {
            topic: topic.to_string(),
            partition,
            end,
            checkpoint,
            buffer: Vec::new(),
            open: None,
            heap_bytes: 0,
        };
        if chain.checkpoint.as_ref().is_some_and(|c| c.doc.end < end) {
            // Files beyond the checkpoint are durable: bring the checkpoint up to them.
            let last = keys
                .iter()
                .rev()
                .find(|k| k.start < end)
                .map(ToString::to_string)
                .unwrap_or_default();
            chain.advance_checkpoint(&last, None, store).await?;
        }
        Ok(chain)
    }

    /// Memory the buffer holds: what the records own plus the buffer's own capacity, which grows
    /// by doubling and so can be up to twice what the records need.
    pub fn buffered_bytes(&self) -> u64 {
        self.heap_bytes + (self.buffer.capacity() * std::mem::size_of::<Record>()) as u64
    }

    pub fn buffered_records(&self) -> usize {
        self.buffer.len()
    }

    /// What buffering `record` would add to [`PartitionChain::buffered_bytes`], including the
    /// buffer growing (it doubles when full).
    pub fn push_cost(&self, record: &Record) -> u64 {
        let growth = if self.buffer.len() == self.buffer.capacity() {
            self.buffer.capacity().max(4) * std::mem::size_of::<Record>()
        } else {
            0
        };
        record.size() - std::mem::size_of::<Record>() as u64 + growth as u64
    }

    pub fn open_file(&self) -> Option<&OpenFile> {
        self.open.as_ref()
    }

    /// Whether `event` should close the open file.
    pub fn should_roll(&self, policy: &RollingPolicy, event: Event) -> Option<RollReason> {
        policy.decide(self.open.as_ref(), event)
    }

    /// Buffer a record. Records before the chain's end were archived already (by an earlier run or
    /// an adopted file) and are dropped, which is what makes a replay after a crash exactly-once.
    /// Returns whether the record was kept.
    pub fn push(&mut self, record: Record, bucket: HourBucket, now_ms: u64) -> bool {
        if record.offset < self.end
            || self
                .buffer
                .last()
                .is_some_and(|last| record.offset <= last.offset)
        {
            return false;
        }
        let size = record.size();
        let open = self.open.get_or_insert(OpenFile {
            records: 0,
            bytes: 0,
            bucket,
            opened_at_ms: now_ms,
        });
        open.records += 1;
        open.bytes += size;
        self.heap_bytes += size - std::mem::size_of::<Record>() as u64;
        self.buffer.push(record);
        true
    }

    /// Make the buffered records durable as one data file, then advance the checkpoint. Returns
    /// `None` when nothing was buffered.
    pub async fn flush(
        &mut self,
        store: &dyn ObjectStore,
        cluster_id: &str,
        part_size: usize,
        now_ms: i64,
    ) -> Result<Option<Flushed>, FlushError> {
        let Some(open) = self.open else {
            return Ok(None);
        };
        if self.buffer.is_empty() {
            self.clear_buffer();
            return Ok(None);
        }
        let start = self.end;
        let end = self.buffer.last().map(|r| r.offset + 1).unwrap_or(start);
        let key = DataFileKey {
            topic: self.topic.clone(),
            partition: self.partition,
            bucket: open.bucket,
            start,
        }
        .to_string();
        let meta = file_meta(
            &self.topic,
            self.partition,
            start,
            end,
            &self.buffer,
            cluster_id,
            now_ms,
        );
        let max_timestamp = meta.max_timestamp;

        // Step 1: the data file, create-only, streamed to the store while it is encoded.
        let records = std::mem::take(&mut self.buffer);
        let (records, created) = upload::create(store, &key, meta, records, part_size).await;
        self.buffer = records;
        let flushed = match created {
            Ok(bytes) => Flushed {
                key: key.clone(),
                start,
                end,
                records: self.buffer.len() as u64,
                bytes,
                adopted: false,
            },
            Err(UploadError::Encode(source)) => return Err(FlushError::DataFile { key, source }),
            Err(UploadError::Store(StorageError::AlreadyExists { .. })) => {
                // Another run wrote this start already: its file is the chain. Keep only what lies past it.
                let existing = read_meta(store, &key).await?;
                if existing.start != start || existing.end <= start {
                    return Err(FlushError::Inconsistent {
                        key,
                        start: existing.start,
                        end: existing.end,
                        expected: start,
                    });
                }
                tracing::info!(
                    key,
                    end = existing.end,
                    "adopted a data file written by an earlier run or another worker"
                );
                // Every buffered record is dropped (the caller reads again from the new end, so
                // records past the adopted file go through the bucket rule afresh), and the state is
                // consistent before the checkpoint is even tried.
                self.end = existing.end;
                self.clear_buffer();
                let adopted = Flushed {
                    key: key.clone(),
                    start,
                    end: existing.end,
                    records: existing.record_count,
                    bytes: 0,
                    adopted: true,
                };
                self.advance_checkpoint(&key, existing.max_timestamp, store)
                    .await?;
                return Ok(Some(adopted));
            }
            Err(UploadError::Store(e)) => return Err(e.into()),
        };
        failpoint::hit(failpoint::AFTER_UPLOAD).await;

        // Step 2: the checkpoint, only now that the file is durable.
        self.end = end;
        self.clear_buffer();
        self.advance_checkpoint(&flushed.key, max_timestamp, store)
            .await?;
        Ok(Some(flushed))
    }

    fn clear_buffer(&mut self) {
        // Release the memory, not just the records: an idle partition must not keep the capacity
        // its largest file needed.
        self.buffer = Vec::new();
        self.open = None;
        self.heap_bytes = 0;
    }

    /// Skip the chain forward to `end` (a recorded gap): the checkpoint moves with it, so a restart
    /// never looks for files between the old end and `end`.
    pub async fn skip_to(&mut self, end: i64, store: &dyn ObjectStore) -> Result<(), FlushError> {
        self.clear_buffer();
        self.end = end;
        let last_file = self
            .checkpoint
            .as_ref()
            .map(|c| c.doc.last_file.clone())
            .unwrap_or_default();
        let max_timestamp = self.checkpoint.as_ref().and_then(|c| c.doc.max_timestamp);
        self.advance_checkpoint(&last_file, max_timestamp, store)
            .await
    }

    /// The offset the next record should have if nothing is missing.
    pub fn expected_next(&self) -> i64 {
        self.buffer.last().map_or(self.end, |r| r.offset + 1)
    }

    async fn advance_checkpoint(
        &mut self,
        last_file: &str,
        max_timestamp: Option<i64>,
        store: &dyn ObjectStore,
    ) -> Result<(), FlushError> {
        let previous_max = self.checkpoint.as_ref().and_then(|c| c.doc.max_timestamp);
        let next = Checkpoint {
            format_version: FORMAT_VERSION,
            topic: self.topic.clone(),
            partition: self.partition,
            end: self.end,
            last_file: last_file.to_string(),
            max_timestamp: previous_max.max(max_timestamp),
            updated_at: rfc3339_millis(now_millis()),
        };
        let stored = documents::advance_checkpoint(store, &next, self.checkpoint.take()).await?;
        if stored.doc.end > self.end {
            // Another worker got further: continue from there.
            self.clear_buffer();
            self.end = stored.doc.end;
        }
        self.checkpoint = Some(stored);
        Ok(())
    }
}

async fn read_meta(store: &dyn ObjectStore, key: &str) -> Result<datafile::FileMeta, FlushError> {
    let got = store.get(key).await?;
    datafile::read_meta(got.body).map_err(|source| FlushError::DataFile {
        key: key.to_string(),
        source,
    })
}

/// Milliseconds since the epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
