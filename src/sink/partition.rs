//! One partition's chain on the sink side: the records buffered for its open file, and the commit
//! protocol that makes them durable.
//!
//! The commit order lives here and only here: (1) the data file is created with a create-only put
//! and published by a create-only claim of its start, or the file already claimed at that start is
//! adopted; (2) only then the checkpoint is advanced by compare-and-swap; (3) the Kafka commit
//! follows, for lag monitoring only (`Sink::commit`). A crash between any two steps leaves a chain
//! the next start resumes without loss or duplicate.
//!
//! The read rule: every offset in `[end, read_to)` that exists in the log was read by this worker,
//! in order, since the consumer was last positioned, and is buffered. Whenever the chain's end moves
//! anywhere else (an adopted file, another worker's checkpoint, a record that must be read again)
//! the chain *repositions*: the consumer owes it a seek to the new position, and a record admitted
//! before that can no longer be buffered ([`Ticket`]). So no record is ever buffered after a hole
//! this worker did not read itself.
//!
//! One file of about 850 lines on purpose: it is the whole chain protocol (resume, the read rule,
//! the three steps of a flush, adoption, gaps), which reads top to bottom in commit order and is
//! what `tests/chain_model.rs` and `tests/chain_protocol.rs` drive; split, its steps would be
//! read out of order.

use std::sync::Arc;

use crate::archive::chain;
use crate::archive::datafile::{self, file_meta};
use crate::archive::documents::{self, ArchiveError, Checkpoint, Claim, Gap, Versioned};
use crate::archive::paths::DataFileKey;
use crate::archive::rotation::{self, Event, OpenFile, RollReason, RollingPolicy};
use crate::archive::time::{rfc3339_millis, HourBucket};
use crate::archive::typed::Decoding;
use crate::archive::{Record, FORMAT_VERSION};
use crate::failpoint;
use crate::storage::{ObjectStore, StorageError};

use super::decode::{Decoders, OpenShapes, Shapes};
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
    /// The broker could not say where the log starts (needed before a file with offset jumps is
    /// made durable); tried again like a store that is away.
    #[error("kafka: could not read the log start offset: {0}")]
    LogStart(String),
    #[error("{url}: {key} has a damaged footer ({message}); the partition stops here rather than trust it — run `rewind verify --deep` and move the file aside")]
    BadFooter {
        url: String,
        key: String,
        message: String,
    },
}

impl FlushError {
    /// Whether the store may accept the same flush later (outage, throttling, timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            FlushError::Storage(e) | FlushError::Archive(ArchiveError::Storage(e)) => {
                e.is_transient()
            }
            FlushError::LogStart(_) => true,
            _ => false,
        }
    }
}

/// What holds the range that starts at the chain's end.
enum Settled {
    File {
        key: String,
        meta: datafile::FileMeta,
    },
    Gap {
        end: i64,
    },
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
    /// Why the file was closed, when not by the flush's own reason: [`PartitionChain::flush_checked`]
    /// splits buffered records at a gap or a later hour ([`rotation::boundary`]).
    pub cut: Option<RollReason>,
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
    /// The read rule's bound: where the consumer reads this partition next. `None` until a record
    /// shows where the consumer stands.
    read_to: Option<i64>,
    /// Counts repositions; a [`Ticket`] of an older generation buffers nothing.
    generation: u64,
    /// A seek the consumer owes the chain after a reposition.
    seek: Option<i64>,
    /// Offsets skipped between buffered records: `(index of the record after the jump, the offset
    /// expected there)`. A jump is a hole (compaction, a transaction marker, aborted records)
    /// unless the broker deleted those records first, which only the log's start can tell: one
    /// question per file, asked before it is made durable ([`PartitionChain::flush_checked`]).
    jumps: Vec<(usize, i64)>,
    /// The file sealed for a background upload ([`PartitionChain::seal`]), the one before the
    /// buffered records, until [`PartitionChain::land`] makes it the chain's.
    sealed: Option<Sealed>,
    /// What decodes the typed columns of the partition's files, if its topic has them.
    decoders: Option<Arc<Decoders>>,
    /// The typed columns of the open file so far, and the schema ids its records were checked
    /// with (reset with the buffer).
    typed: OpenShapes,
}

/// A file sealed for a background upload: `[end, meta.end)` of the chain, its records with the
/// upload, or back here after an upload or landing that failed, for the next try.
#[derive(Debug)]
struct Sealed {
    /// Which upload this is: a landing of another one (of a chain that was forgotten and opened
    /// again meanwhile) is not this file's.
    id: u64,
    key: String,
    meta: datafile::FileMeta,
    /// `None` while the upload runs.
    records: Option<Vec<Record>>,
    /// How its typed columns are decoded: fixed when it is sealed, so every try writes the same.
    decoding: Option<Arc<Decoding>>,
    /// What the records occupy, still counted in [`PartitionChain::buffered_bytes`].
    bytes: u64,
}

/// The landing of a sealed file away from its chain ([`PartitionChain::lander`]): the claim and
/// the checkpoint, which need only the chain's end and checkpoint, run in the upload's own task
/// while the partition reads on, and [`PartitionChain::landed`] brings the outcome back.
#[derive(Debug)]
pub struct Lander {
    id: u64,
    /// The chain's end, checkpoint and sealed file, without its buffer.
    shell: PartitionChain,
}

impl Lander {
    /// [`PartitionChain::land`] on the shell.
    pub async fn land(
        &mut self,
        store: &dyn ObjectStore,
        sent: Sent,
    ) -> Result<Option<Flushed>, FlushError> {
        self.shell.land(store, sent).await
    }
}

/// A sealed file on its way to the store: what [`upload::create`] is given. Its result goes back
/// to [`PartitionChain::land`].
#[derive(Debug)]
pub struct Upload {
    pub key: String,
    pub meta: datafile::FileMeta,
    records: Vec<Record>,
    decoding: Option<Arc<Decoding>>,
    id: u64,
}

/// A finished upload, for [`PartitionChain::land`]: the records handed back and whether the file
/// was created.
#[derive(Debug)]
pub struct Sent {
    id: u64,
    records: Vec<Record>,
    pub created: Result<u64, UploadError>,
}

/// Numbers uploads, process-wide.
static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What to do with a record the consumer delivered.
#[derive(Debug)]
#[must_use]
pub enum Admission {
    /// Archived already, or read before the consumer was repositioned: drop it.
    Skip,
    /// The record continues what this worker read: buffer it with [`PartitionChain::push`], unless
    /// a flush in between repositions the chain.
    Keep(Ticket),
    /// The consumer is not where the chain continues: drop the record and seek
    /// ([`PartitionChain::take_seek`]).
    Reposition,
}

/// Permission to buffer one admitted record, valid until the chain repositions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Ticket {
    generation: u64,
    offset: i64,
}

impl PartitionChain {
    /// Resume a partition from the archive: its checkpoint, then any files written after it (a crash
    /// between upload and checkpoint), adopted in chain order once claimed. `earliest` is where the
    /// chain starts when the archive has nothing for the partition.
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
        let mut starts: std::collections::BTreeMap<i64, Vec<(DataFileKey, u64)>> =
            Default::default();
        for object in &files {
            if let Some(key) = DataFileKey::parse(&object.key) {
                starts
                    .entry(key.start)
                    .or_default()
                    .push((key, object.size));
            }
        }
        let checkpoint = match (checkpoint, starts.keys().next()) {
            (None, None) => {
                // Nothing archived yet: the first checkpoint says where the chain begins, so that
                // workers starting at different log starts agree on one beginning.
                let first = Checkpoint {
                    format_version: FORMAT_VERSION,
                    topic: topic.to_string(),
                    partition,
                    end: earliest,
                    last_file: String::new(),
                    max_timestamp: None,
                    updated_at: rfc3339_millis(now_millis()),
                };
                Some(documents::create_checkpoint(store, &first).await?)
            }
            (checkpoint, _) => checkpoint,
        };
        let mut end = match (&checkpoint, starts.keys().next()) {
            (Some(c), _) => c.doc.end,
            (None, Some(first)) => *first,
            (None, None) => earliest,
        };
        let mut chain = PartitionChain::at(topic.to_string(), partition, end, checkpoint);
        let mut last = None;
        while let Some(candidates) = starts.get(&end) {
            match chain.settle_start(store, candidates, None).await? {
                Settled::File { key, meta } => {
                    last = Some((end, key, meta.max_timestamp));
                    end = meta.end;
                }
                // A gap won the start; the files there were orphans. Opening the partition meets
                // the gap again (its end is before the log's start) and continues after it.
                Settled::Gap { .. } => break,
            }
            chain.end = end;
        }
        chain.end = end;
        if let Some((from, key, max_timestamp)) = last {
            // Files beyond the checkpoint are durable: bring the checkpoint up to them.
            chain
                .advance_checkpoint(from, &key, max_timestamp, store)
                .await?;
        }
        Ok(chain)
    }

    /// Decide which data file holds the range starting at the chain's end, given the files listed
    /// there (`listed`) and the one this worker just wrote (`mine`): the claimed one, claiming the
    /// first listed if nothing claims the start yet. Other files at the start are orphans of a lost
    /// race and are deleted (a failed delete leaves an orphan readers ignore and verify reports).
    /// Returns the file's key and checked footer (`mine`'s own metadata when the claim names it: this
    /// worker just wrote it, so reading its footer back would only cost two requests), or the end of
    /// the gap that holds the start.
    async fn settle_start(
        &self,
        store: &dyn ObjectStore,
        listed: &[(DataFileKey, u64)],
        mine: Option<(&str, &datafile::FileMeta)>,
    ) -> Result<Settled, FlushError> {
        let start = self.end;
        let candidate = mine
            .map(|(key, _)| key.to_string())
            .or_else(|| listed.iter().map(|(k, _)| k.to_string()).min())
            .ok_or_else(|| FlushError::BadFooter {
                url: store.url().to_string(),
                key: DataFileKey::partition_prefix(&self.topic, self.partition),
                message: format!("no data file starts at {start}"),
            })?;
        // Create-only: where a claim exists already, it is the answer (one request fewer per file
        // than reading first, which finds nothing in the common case).
        let claimed = documents::claim(
            store,
            &Claim {
                topic: self.topic.clone(),
                partition: self.partition,
                start,
                key: candidate.clone(),
                end: None,
                created_at: rfc3339_millis(now_millis()),
            },
        )
        .await?;
        failpoint::hit(failpoint::AFTER_CLAIM).await;
        // A claim naming a compacted file that begins before this start was handed to it by a
        // compaction: the files listed here are its parts, which are that compaction's to delete
        // (it may not have committed yet); only this worker's own file lost.
        let inner =
            DataFileKey::parse(&claimed.key).is_some_and(|k| k.end.is_some() && k.start < start);
        let orphans: Vec<String> = listed
            .iter()
            .map(|(k, _)| k.to_string())
            .filter(|_| !inner)
            .chain(mine.map(|(key, _)| key.to_string()))
            .filter(|k| *k != claimed.key)
            .collect();
        if !orphans.is_empty() {
            tracing::warn!(
                topic = self.topic,
                partition = self.partition,
                start,
                claimed = claimed.key,
                orphans = ?orphans,
                "another file was claimed at this start first; deleting the files that lost the race"
            );
            if let Err(e) = store.delete_many(&orphans).await {
                tracing::warn!(error = %e, "could not delete orphaned data files; readers ignore them and `rewind verify` names them");
            }
        }
        if claimed.is_gap() {
            // The gap's document follows its claim; a worker that died in between left it to us.
            let gap = gap_of(&claimed);
            documents::record_gap(store, &gap).await?;
            return Ok(Settled::Gap { end: gap.end });
        }
        let (key, meta) = match mine {
            Some((key, meta)) if key == claimed.key => (claimed.key, meta.clone()),
            _ => adopted(store, claimed.key, &self.topic, self.partition, start).await?,
        };
        Ok(Settled::File { key, meta })
    }

    /// Records `[end, low)` were deleted by the broker before any worker archived them: record the
    /// gap by claiming its start, so that a gap and a file never both hold one start (a zombie that
    /// still holds those records and flushes them loses to the gap, or the gap to its file, which
    /// is then adopted and the question asked again at its end). Nothing may be buffered. Returns
    /// the gaps recorded (none when other workers archived up to `low` meanwhile).
    pub async fn record_gap(
        &mut self,
        store: &dyn ObjectStore,
        low: i64,
    ) -> Result<Vec<Gap>, FlushError> {
        debug_assert!(self.buffer.is_empty());
        let mut recorded = Vec::new();
        // Another worker may have moved on: start from the newest checkpoint.
        if let Some(current) =
            documents::read_checkpoint(store, &self.topic, self.partition).await?
        {
            if current.doc.end > self.end {
                self.clear_buffer();
                self.end = current.doc.end;
                self.reposition(current.doc.end);
            }
            self.checkpoint = Some(current);
        }
        while self.end < low {
            let start = self.end;
            let gap_key = documents::gap_key(&self.topic, self.partition, start);
            let claimed = documents::claim(
                store,
                &Claim {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    start,
                    key: gap_key.clone(),
                    end: Some(low),
                    created_at: rfc3339_millis(now_millis()),
                },
            )
            .await?;
            if claimed.is_gap() {
                let gap = gap_of(&claimed);
                documents::record_gap(store, &gap).await?;
                self.skip_to(gap.end, store).await?;
                if self.end < gap.end {
                    // The chain passed this start elsewhere (see `advance_checkpoint`): the gap
                    // lies before the chain's recorded start, and is nobody's.
                    self.withdraw(
                        store,
                        &documents::gap_key(&self.topic, self.partition, start),
                        start,
                    )
                    .await;
                } else {
                    recorded.push(gap);
                }
            } else {
                // A file holds this start: it is the chain.
                let (key, meta) =
                    adopted(store, claimed.key, &self.topic, self.partition, start).await?;
                self.end = meta.end;
                self.reposition(meta.end);
                self.advance_checkpoint(start, &key, meta.max_timestamp, store)
                    .await?;
            }
        }
        Ok(recorded)
    }

    /// Memory the buffer holds: what the records own plus the buffer's own capacity, which grows
    /// by doubling and so can be up to twice what the records need.
    pub fn buffered_bytes(&self) -> u64 {
        self.heap_bytes
            + (self.buffer.capacity() * std::mem::size_of::<Record>()) as u64
            + self.sealed.as_ref().map_or(0, |s| s.bytes)
    }

    /// Records held and not durable yet: the open file's and a sealed one's.
    pub fn buffered_records(&self) -> usize {
        self.buffer.len()
            + self
                .sealed
                .as_ref()
                .map_or(0, |s| s.meta.record_count as usize)
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

    /// Whether the chain holds records that are not durable yet: an open file, or a sealed one.
    pub fn unflushed(&self) -> bool {
        self.open.is_some() || self.sealed.is_some()
    }

    /// Whether a sealed file's upload is running ([`PartitionChain::seal`] until
    /// [`PartitionChain::land`]): the chain cannot be flushed until it lands.
    pub fn in_flight(&self) -> bool {
        self.sealed.as_ref().is_some_and(|s| s.records.is_none())
    }

    /// Whether a sealed file waits for another try (its upload or landing failed).
    pub fn sealed_waiting(&self) -> bool {
        self.sealed.as_ref().is_some_and(|s| s.records.is_some())
    }

    /// Where the buffered records begin: after the sealed file, or at the chain's end.
    fn base(&self) -> i64 {
        self.sealed.as_ref().map_or(self.end, |s| s.meta.end)
    }

    /// Whether `event` should close the open file.
    pub fn should_roll(&self, policy: &RollingPolicy, event: Event) -> Option<RollReason> {
        policy.decide(self.open.as_ref(), event)
    }

    /// Decide what to do with the record at `offset` the consumer just delivered (the read rule).
    pub fn admit(&mut self, offset: i64) -> Admission {
        if self.seek.is_some() {
            // Delivered before the seek the chain is owed: read from where that seek goes.
            return Admission::Reposition;
        }
        match self.read_to {
            // Delivered from before the last seek: the seek reads it again if it is needed.
            Some(read_to) if offset < read_to => return Admission::Skip,
            Some(_) => {}
            // Where the consumer stands is unknown (a partition just handed over, positioned by
            // the group's committed offset): a record past the chain's end may follow records this
            // worker never saw, so read again from the end.
            None if offset > self.base() => {
                self.reposition(self.base());
                return Admission::Reposition;
            }
            None => {}
        }
        self.read_to = Some(offset + 1);
        if offset < self.base() {
            // Archived already (by an earlier run or an adopted file) or in the sealed file: a
            // replay, dropped, which is what makes reading again after a crash exactly-once.
            return Admission::Skip;
        }
        Admission::Keep(Ticket {
            generation: self.generation,
            offset,
        })
    }

    /// Buffer an admitted record. Returns false, buffering nothing, when the chain repositioned
    /// since the record was admitted: the consumer reads it again after its seek.
    pub fn push(
        &mut self,
        ticket: Ticket,
        record: Record,
        bucket: HourBucket,
        now_ms: u64,
    ) -> bool {
        if ticket.generation != self.generation || ticket.offset != record.offset {
            return false;
        }
        debug_assert!(record.offset >= self.expected_next());
        self.append(record, bucket, now_ms);
        true
    }

    /// Buffer `record` after the buffered ones, noting a jump before it; a file opens with it when
    /// none is open.
    fn append(&mut self, record: Record, bucket: HourBucket, now_ms: u64) {
        let expected = self.expected_next();
        if record.offset > expected {
            self.jumps.push((self.buffer.len(), expected));
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
    }

    /// Move the consumer to `offset`: records admitted so far can no longer be buffered, and the
    /// chain owes the consumer a seek there. `offset` is the chain's end, or the record after the
    /// buffered ones that could not be buffered now (the store is away, memory is full).
    pub fn reposition(&mut self, offset: i64) {
        debug_assert!(offset >= self.expected_next() || self.buffer.is_empty());
        self.generation += 1;
        self.read_to = Some(offset);
        self.seek = Some(offset);
    }

    /// Where the consumer reads this partition next, as far as the chain knows.
    pub fn position(&self) -> i64 {
        self.read_to.unwrap_or_else(|| self.expected_next())
    }

    /// The consumer was assigned this partition at `offset` (snapshot mode assigns each partition
    /// at its chain's end).
    pub fn positioned_at(&mut self, offset: i64) {
        self.read_to = Some(offset);
        self.seek = None;
    }

    /// The admitted record cannot be buffered now (the store is away, memory is full): read it
    /// again later. Only while its ticket is valid: if the chain repositioned meanwhile (a flush on
    /// the way adopted a file or met a gap), the consumer already owes a seek to the chain's end,
    /// and moving it to the record instead would skip what lies between.
    pub fn defer(&mut self, ticket: Ticket) {
        if ticket.generation == self.generation {
            self.reposition(ticket.offset);
        }
    }

    /// How many times the chain repositioned: a change across a flush means the consumer reads
    /// again from where the chain moved.
    pub fn repositions(&self) -> u64 {
        self.generation
    }

    /// The seek the consumer owes the chain, if it repositioned since the last call.
    pub fn take_seek(&mut self) -> Option<i64> {
        self.seek.take()
    }

    /// Forget where the consumer stands (its seek failed): the next record decides, as for a
    /// partition just handed over.
    pub fn lose_position(&mut self) {
        self.generation += 1;
        self.read_to = None;
        self.seek = None;
    }

    /// Where the first offset jump among the buffered records starts, if there is one: the caller
    /// then asks the broker for the log's start before flushing ([`PartitionChain::flush_checked`]).
    pub fn first_jump(&self) -> Option<i64> {
        self.jumps.first().map(|(_, expected)| *expected)
    }

    /// Flush, given the log's start `low` when there are jumps ([`PartitionChain::first_jump`]).
    /// Retention deletes a prefix of the log, so a jump from an offset at or after `low` skipped
    /// nothing that was deleted. A jump from `expected` before `low` may have: the records before
    /// it become a file, the gap from `expected` to the record after the jump (or to `low`, if that
    /// is sooner) is recorded by claim, and the records from the jump on continue the chain after
    /// the gap, so that a record this worker read is never counted lost because retention deleted
    /// it since. Returns the files made durable and the gaps recorded.
    ///
    /// A sealed file that waits for another try goes first; one still on its way must land before
    /// (nothing else is flushed then).
    pub async fn flush_checked(
        &mut self,
        store: &dyn ObjectStore,
        low: Option<i64>,
        cluster_id: &str,
        part_size: usize,
        now_ms: i64,
    ) -> Result<(Vec<Flushed>, Vec<Gap>), FlushError> {
        let mut flushed: Vec<Flushed> = self
            .upload_sealed(store, part_size)
            .await?
            .into_iter()
            .collect();
        if self.sealed.is_some() {
            debug_assert!(false, "flushed while a sealed file is on its way");
            return Ok((flushed, Vec::new()));
        }
        let (more, gaps) = self
            .flush_open_checked(store, low, cluster_id, part_size, now_ms)
            .await?;
        flushed.extend(more);
        Ok((flushed, gaps))
    }

    async fn flush_open_checked(
        &mut self,
        store: &dyn ObjectStore,
        low: Option<i64>,
        cluster_id: &str,
        part_size: usize,
        now_ms: i64,
    ) -> Result<(Vec<Flushed>, Vec<Gap>), FlushError> {
        let (Some(low), Some(open)) = (low, self.open) else {
            return self
                .flush(store, cluster_id, part_size, now_ms)
                .await
                .map(|done| (done.into_iter().collect(), Vec::new()));
        };
        if !self.jumps.iter().any(|(_, expected)| *expected < low) {
            return self
                .flush(store, cluster_id, part_size, now_ms)
                .await
                .map(|done| (done.into_iter().collect(), Vec::new()));
        }
        // The records wait aside and go back into the buffer one file at a time. A file ends at a
        // deleted jump, and where a record of a later hour than its first follows (the first record
        // after a gap may be a late one, so a file there may start in an earlier hour).
        let bucket_of = |r: &Record| r.timestamp.map_or(open.bucket, HourBucket::of_millis);
        let mut rest: std::collections::VecDeque<Record> = std::mem::take(&mut self.buffer).into();
        self.clear_buffer();
        let mut flushed = Vec::new();
        let mut gaps = Vec::new();
        let result = loop {
            let Some(first) = rest.front().map(|r| r.offset) else {
                break Ok(());
            };
            let expected = self.end;
            if first > expected && expected < low {
                let gap_end = low.min(first);
                let step = self
                    .record_gap(store, gap_end)
                    .await
                    .map(|g| gaps.extend(g));
                // The records continue the chain only where this worker's own steps left it: if
                // another worker's file or checkpoint moved it elsewhere, they are dropped and read
                // again from the chain's end.
                if self.end != gap_end && self.end != expected {
                    rest.clear();
                }
                if step.is_err() || self.end != gap_end {
                    break step;
                }
            }
            let bucket = rest.front().map(bucket_of).unwrap_or(open.bucket);
            let mut cut = None;
            while let Some(record) = rest.front() {
                let next = self.expected_next();
                let event = if record.offset > next && next < low {
                    Event::Gap
                } else {
                    Event::BeforeAppend {
                        bucket: bucket_of(record),
                    }
                };
                cut = rotation::boundary(self.open.as_ref(), event);
                if cut.is_some() {
                    break;
                }
                let record = rest.pop_front().expect("front exists");
                self.append(record, bucket, open.opened_at_ms);
            }
            let covered = self.expected_next();
            let step = self
                .flush(store, cluster_id, part_size, now_ms)
                .await
                .map(|done| flushed.extend(done.map(|f| Flushed { cut, ..f })));
            if self.expected_next() != covered {
                rest.clear();
            }
            if step.is_err() {
                break step;
            }
        };
        // What could not be made durable now goes back into the buffer, for the next flush.
        for record in rest {
            let bucket = bucket_of(&record);
            self.append(record, bucket, open.opened_at_ms);
        }
        // Whatever moved on the way, the consumer reads on from right after what the chain now
        // holds (where it stood, unless the chain moved): this also voids the ticket of a record
        // admitted before this flush, which the seek delivers again.
        let at = self.expected_next();
        self.reposition(at);
        result.map(|()| (flushed, gaps))
    }

    /// Make the buffered records durable as one data file, then advance the checkpoint: the file is
    /// sealed, uploaded and landed in one go ([`PartitionChain::seal`] and
    /// [`PartitionChain::land`] are the same steps with the upload in the background). Returns
    /// `None` when nothing was buffered, or when a sealed file is still on its way (it lands first).
    /// A sealed file that waits for another try (its upload or landing failed) is what a flush
    /// makes durable first; the open file waits for the next.
    pub async fn flush(
        &mut self,
        store: &dyn ObjectStore,
        cluster_id: &str,
        part_size: usize,
        now_ms: i64,
    ) -> Result<Option<Flushed>, FlushError> {
        if self.sealed.is_some() {
            // A sealed file waiting for another try goes first (the open one follows it).
            return self.upload_sealed(store, part_size).await;
        }
        let Some(sealed) = self.seal_open(cluster_id, now_ms) else {
            return Ok(None);
        };
        let sent = sealed.send(store, part_size).await;
        self.land(store, sent).await
    }

    /// Seal the open file for an upload in the background, so that the partition reads on into the
    /// next one: the records leave with the returned [`Upload`], whose result goes to
    /// [`PartitionChain::land`]; records buffered meanwhile continue from the sealed file's end,
    /// and the chain's end and checkpoint move only when it lands (so checkpoints stay in chain
    /// order). `None` when nothing is buffered, a file is sealed already (one at a time), or the
    /// buffered records jump over offsets the broker may have deleted: `low`, the log's start, must
    /// be given when they jump ([`PartitionChain::first_jump`]), and a jump from before it needs
    /// [`PartitionChain::flush_checked`], which records the gap.
    pub fn seal(&mut self, low: Option<i64>, cluster_id: &str, now_ms: i64) -> Option<Upload> {
        if !self.jumps.is_empty() {
            let low = low?;
            if self.jumps.iter().any(|(_, expected)| *expected < low) {
                return None;
            }
        }
        self.seal_open(cluster_id, now_ms)
    }

    fn seal_open(&mut self, cluster_id: &str, now_ms: i64) -> Option<Upload> {
        if self.sealed.is_some() {
            return None;
        }
        let open = self.open?;
        if self.buffer.is_empty() {
            self.clear_buffer();
            return None;
        }
        let start = self.end;
        let end = self.buffer.last().map_or(start, |r| r.offset + 1);
        let key = DataFileKey {
            topic: self.topic.clone(),
            partition: self.partition,
            bucket: open.bucket,
            start,
            end: None,
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
        let records = std::mem::take(&mut self.buffer);
        let decoding = self
            .decoders
            .as_ref()
            .and_then(|d| d.decoding(&self.topic, &self.typed))
            .map(Arc::new);
        let bytes = self.heap_bytes + (records.capacity() * std::mem::size_of::<Record>()) as u64;
        self.clear_buffer();
        let id = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sealed = Some(Sealed {
            id,
            key: key.clone(),
            meta: meta.clone(),
            records: None,
            decoding: decoding.clone(),
            bytes,
        });
        Some(Upload {
            key,
            meta,
            records,
            decoding,
            id,
        })
    }

    /// Try the sealed file again (its upload or landing failed before), if one waits.
    async fn upload_sealed(
        &mut self,
        store: &dyn ObjectStore,
        part_size: usize,
    ) -> Result<Option<Flushed>, FlushError> {
        let Some(sealed) = self.sealed.as_mut() else {
            return Ok(None);
        };
        let Some(records) = sealed.records.take() else {
            return Ok(None);
        };
        let upload = Upload {
            key: sealed.key.clone(),
            meta: sealed.meta.clone(),
            records,
            decoding: sealed.decoding.clone(),
            id: sealed.id,
        };
        let sent = upload.send(store, part_size).await;
        self.land(store, sent).await
    }

    /// Take what landing the sealed file needs (the chain's end, its checkpoint and the sealed
    /// file) so that it can land away from the chain, while the partition reads on; `None` when no
    /// upload is on its way. Until [`PartitionChain::landed`], the chain must not be flushed (it
    /// is not: it is in flight).
    pub fn lander(&mut self) -> Option<Lander> {
        let sealed = self.sealed.as_ref().filter(|s| s.records.is_none())?;
        let copy = Sealed {
            id: sealed.id,
            key: sealed.key.clone(),
            meta: sealed.meta.clone(),
            records: None,
            decoding: sealed.decoding.clone(),
            bytes: sealed.bytes,
        };
        let mut shell = PartitionChain::at(
            self.topic.clone(),
            self.partition,
            self.end,
            self.checkpoint.take(),
        );
        let id = copy.id;
        shell.sealed = Some(copy);
        Some(Lander { id, shell })
    }

    /// A chain that ends at `end`, with nothing buffered or sealed and the consumer's position
    /// unknown.
    fn at(
        topic: String,
        partition: i32,
        end: i64,
        checkpoint: Option<Versioned<Checkpoint>>,
    ) -> PartitionChain {
        PartitionChain {
            topic,
            partition,
            end,
            checkpoint,
            buffer: Vec::new(),
            open: None,
            heap_bytes: 0,
            read_to: None,
            generation: 0,
            seek: None,
            jumps: Vec::new(),
            sealed: None,
            decoders: None,
            typed: OpenShapes::default(),
        }
    }

    /// Decode the typed columns of this partition's files with `decoders`.
    pub fn decode_with(&mut self, decoders: Option<Arc<Decoders>>) {
        self.decoders = decoders;
    }

    /// Whether a record of `shapes` may join the open file: none is open, or no field of its
    /// typed columns would change type.
    pub fn admits_shapes(&self, shapes: &Shapes) -> bool {
        self.open.is_none() || self.typed.admits(shapes)
    }

    /// The record just pushed had `shapes`.
    pub fn join_shapes(&mut self, shapes: &Shapes) {
        self.typed.join(shapes);
    }

    /// Bring back what a [`Lander`] made of the sealed file: the chain's new end and checkpoint,
    /// the sealed file gone (or waiting for another try, its records back), and, if the landing
    /// moved the chain anywhere but the sealed file's end (an adopted file, a gap, another
    /// worker further), the records read since dropped and the consumer owed a seek there. A
    /// lander of another upload (the chain was forgotten and opened again) changes nothing.
    ///
    /// Returns whether the landing was this chain's.
    pub fn landed(&mut self, lander: Lander) -> bool {
        if self.sealed.as_ref().is_none_or(|s| s.id != lander.id) {
            return false;
        }
        let shell = lander.shell;
        debug_assert!(!shell.in_flight(), "a lander brought back before it landed");
        self.end = shell.end;
        self.checkpoint = shell.checkpoint;
        self.sealed = shell.sealed;
        if shell.generation != 0 {
            self.clear_buffer();
            self.reposition(shell.end);
        }
        true
    }

    /// The sealed file's upload finished (`created`, with its `records` handed back): publish it
    /// by claiming its start (the rest of step 1), then advance the checkpoint (step 2). A failure
    /// keeps the records with the sealed file for the next try
    /// ([`PartitionChain::flush_checked`] tries it first). Where another file or a gap holds the
    /// start, or another worker's checkpoint is further, every buffered record is dropped and the
    /// chain repositions, as in a flush.
    ///
    /// An upload that is not the sealed file's (the chain was forgotten and opened again since
    /// it was sealed) changes nothing: what it put is an unclaimed file, like a crashed worker's.
    pub async fn land(
        &mut self,
        store: &dyn ObjectStore,
        sent: Sent,
    ) -> Result<Option<Flushed>, FlushError> {
        let Some(sealed) = self.sealed.as_mut().filter(|s| s.id == sent.id) else {
            return Ok(None);
        };
        let Sent {
            records, created, ..
        } = sent;
        let (key, meta) = (sealed.key.clone(), sealed.meta.clone());
        let start = self.end;
        let end = meta.end;
        let lost = created.is_err() && records.len() as u64 != meta.record_count;
        if lost {
            // The records did not come back (the encoder was cancelled): the consumer reads them
            // again from the chain's end.
            self.sealed = None;
            self.clear_buffer();
            self.reposition(start);
        } else {
            sealed.records = Some(records);
        }

        // Step 1: the data file was created with a create-only put (or failed to be).
        let mine = match created {
            Ok(bytes) => Some(bytes),
            Err(UploadError::Encode(source)) => return Err(FlushError::DataFile { key, source }),
            // The same key exists: an earlier run of this worker, or another worker that read the
            // same first record. Whichever file the claim names is the chain.
            Err(UploadError::Store(StorageError::AlreadyExists { .. })) if !lost => None,
            Err(UploadError::Store(e)) => return Err(e.into()),
        };
        failpoint::hit(failpoint::AFTER_UPLOAD).await;

        // Still step 1: publish the file by claiming its start, or learn which file holds it.
        let settled = match mine {
            Some(_) => self.settle_start(store, &[], Some((&key, &meta))).await?,
            None => {
                let listed = DataFileKey::parse(&key)
                    .map(|k| (k, 0))
                    .into_iter()
                    .collect::<Vec<_>>();
                self.settle_start(store, &listed, None).await?
            }
        };
        let (claimed, existing) = match settled {
            Settled::File { key, meta } => (key, meta),
            Settled::Gap { end: gap_end } => {
                // A gap was recorded at this start first: the records it says are missing are
                // gone from Kafka, and the chain continues after it.
                tracing::warn!(
                    topic = self.topic,
                    partition = self.partition,
                    start,
                    gap_end,
                    "a gap was recorded at this start by another worker; the file written for it was dropped"
                );
                self.sealed = None;
                self.clear_buffer();
                self.skip_to(gap_end.max(start), store).await?;
                return Ok(Some(Flushed {
                    key: documents::gap_key(&self.topic, self.partition, start),
                    start,
                    end: gap_end.max(start),
                    records: 0,
                    bytes: 0,
                    adopted: true,
                    cut: None,
                }));
            }
        };
        let flushed = match mine {
            Some(bytes) if claimed == key => Flushed {
                key,
                start,
                end,
                records: meta.record_count,
                bytes,
                adopted: false,
                cut: None,
            },
            _ => {
                tracing::info!(
                    key = claimed,
                    end = existing.end,
                    "adopted a data file written by an earlier run or another worker"
                );
                // Every buffered record is dropped and the consumer reads again from the adopted
                // file's end: records past it go through the bucket rule afresh, and the record
                // that caused this flush is never buffered into a file that starts elsewhere.
                self.sealed = None;
                self.end = existing.end;
                self.clear_buffer();
                self.reposition(existing.end);
                let adopted = Flushed {
                    key: claimed.clone(),
                    start,
                    end: existing.end,
                    records: existing.record_count,
                    bytes: 0,
                    adopted: true,
                    cut: None,
                };
                self.advance_checkpoint(start, &claimed, existing.max_timestamp, store)
                    .await?;
                return Ok(Some(adopted));
            }
        };

        // Step 2: the checkpoint, only now that the file is durable and claimed. The records
        // buffered since it was sealed continue from its end.
        self.sealed = None;
        self.end = end;
        self.advance_checkpoint(start, &flushed.key, meta.max_timestamp, store)
            .await?;
        if self.end < end {
            // The chain passed this start through another file: this one is not the chain's, and
            // its records from the chain's end on are read again.
            self.withdraw(store, &flushed.key, start).await;
            return Ok(Some(Flushed {
                key: self
                    .checkpoint
                    .as_ref()
                    .map(|c| c.doc.last_file.clone())
                    .unwrap_or_default(),
                start,
                end: self.end,
                records: 0,
                bytes: 0,
                adopted: true,
                cut: None,
            }));
        }
        Ok(Some(flushed))
    }

    /// Delete what this worker wrote at `start` (the object `key` and the claim of `start`) once
    /// the checkpoint has shown the chain passed `start` through a file retention has since deleted:
    /// `start` lies before the chain's recorded start, where readers look at nothing, and what is
    /// left there would only show records retention deleted to engines that read `data/**`. A
    /// failed delete leaves it to the next retention run.
    async fn withdraw(&self, store: &dyn ObjectStore, key: &str, start: i64) {
        for key in [
            key.to_string(),
            crate::archive::paths::claim_key(&self.topic, self.partition, start),
        ] {
            if let Err(e) = store.delete_many(std::slice::from_ref(&key)).await {
                tracing::warn!(error = %e, key, "could not delete an object before the chain's start; the next retention run does");
            }
        }
    }

    fn clear_buffer(&mut self) {
        // Release the memory, not just the records: an idle partition must not keep the capacity
        // its largest file needed.
        self.buffer = Vec::new();
        self.jumps = Vec::new();
        self.open = None;
        self.heap_bytes = 0;
        self.typed = OpenShapes::default();
    }

    /// Skip the chain forward to `end` (a recorded gap; nothing may be buffered): the checkpoint
    /// moves with it, so a restart never looks for files between the old end and `end`, and the
    /// consumer reads from `end`.
    pub async fn skip_to(&mut self, end: i64, store: &dyn ObjectStore) -> Result<(), FlushError> {
        debug_assert!(self.buffer.is_empty());
        self.clear_buffer();
        let from = self.end;
        self.end = end;
        self.reposition(end);
        let last_file = self
            .checkpoint
            .as_ref()
            .map(|c| c.doc.last_file.clone())
            .unwrap_or_default();
        let max_timestamp = self.checkpoint.as_ref().and_then(|c| c.doc.max_timestamp);
        self.advance_checkpoint(from, &last_file, max_timestamp, store)
            .await
    }

    /// The offset the next record should have if nothing is missing.
    pub fn expected_next(&self) -> i64 {
        self.buffer
            .last()
            .map_or_else(|| self.base(), |r| r.offset + 1)
    }

    /// Advance the checkpoint to the chain's end, over what this worker claimed from `from` on.
    async fn advance_checkpoint(
        &mut self,
        from: i64,
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
        let stored =
            documents::advance_checkpoint(store, &next, from, self.checkpoint.take()).await?;
        if stored.doc.end < self.end {
            // The chain passed `from` through another file than the one claimed here: retention
            // deleted the chain's file and claim there, and this worker, late, wrote the same start
            // again and claimed it. That file lies before the chain's recorded start; the records
            // after the checkpoint are read again.
            tracing::warn!(
                topic = self.topic,
                partition = self.partition,
                start = from,
                end = self.end,
                checkpoint = stored.doc.end,
                "the chain passed this start through a file retention has since deleted; continuing at the checkpoint"
            );
        }
        if stored.doc.end != self.end {
            // Another worker got further, or the chain is elsewhere: continue from there.
            self.clear_buffer();
            self.end = stored.doc.end;
            self.reposition(stored.doc.end);
        }
        self.checkpoint = Some(stored);
        Ok(())
    }
}

/// The gap a gap's claim describes.
fn gap_of(claim: &Claim) -> Gap {
    Gap {
        topic: claim.topic.clone(),
        partition: claim.partition,
        start: claim.start,
        end: claim.end.unwrap_or(claim.start).max(claim.start),
        reason: "retention".into(),
        detected_at: claim.created_at.clone(),
    }
}

/// The file a claim of `start` names, and its checked footer. A compacted file that is gone was
/// merged again into a larger one, which took the claim of its start: that claim names it (a few
/// hops at most, one per compaction).
async fn adopted(
    store: &dyn ObjectStore,
    mut key: String,
    topic: &str,
    partition: i32,
    start: i64,
) -> Result<(String, datafile::FileMeta), FlushError> {
    for _ in 0..8 {
        match checked_footer(store, &key, topic, partition, start).await {
            Err(FlushError::Storage(StorageError::NotFound { .. })) => {
                let Some(merged) = DataFileKey::parse(&key).filter(|k| k.end.is_some()) else {
                    break;
                };
                match documents::read_claim(store, topic, partition, merged.start).await? {
                    Some(next) if next.key != key && !next.is_gap() => key = next.key,
                    _ => break,
                }
            }
            other => return other.map(|meta| (key, meta)),
        }
    }
    match checked_footer(store, &key, topic, partition, start).await {
        // Gone, and the chain moved on past it (retention deleted the range after other workers
        // archived beyond it): continue where the checkpoint says, as after a file ending there.
        Err(FlushError::Storage(StorageError::NotFound { .. })) => {
            match documents::read_checkpoint(store, topic, partition).await? {
                Some(c) if c.doc.end > start => {
                    tracing::warn!(
                        topic,
                        partition,
                        start,
                        key,
                        resume = c.doc.end,
                        "the file claimed at this start is gone and the chain moved on past it; continuing at the checkpoint"
                    );
                    let meta = datafile::FileMeta {
                        format_version: FORMAT_VERSION,
                        topic: topic.to_string(),
                        partition,
                        start,
                        end: c.doc.end,
                        record_count: 0,
                        min_timestamp: None,
                        max_timestamp: c.doc.max_timestamp,
                        cluster_id: String::new(),
                        writer: String::new(),
                        created_at: 0,
                    };
                    Ok((c.doc.last_file, meta))
                }
                _ => Err(FlushError::Storage(StorageError::NotFound {
                    url: store.url().to_string(),
                    key,
                })),
            }
        }
        other => other.map(|meta| (key, meta)),
    }
}

/// The footer of the data file `key`, checked against where the chain expects it: its topic,
/// partition and start, a range that holds its records (`end` one past its last offset, which the
/// offset statistics give), and a record count its rows agree with. A damaged footer claiming a
/// huge `end` would otherwise make the sink skip everything after it.
async fn checked_footer(
    store: &dyn ObjectStore,
    key: &str,
    topic: &str,
    partition: i32,
    start: i64,
) -> Result<datafile::FileMeta, FlushError> {
    let bad = |message: String| FlushError::BadFooter {
        url: store.url().to_string(),
        key: key.to_string(),
        message,
    };
    // A compacted file replaced the files of its range, and the claims of their starts name it:
    // adopting it at one of them continues at its end.
    let start = match DataFileKey::parse(key) {
        Some(k) if k.end.is_some_and(|end| k.start <= start && start < end) => k.start,
        _ => start,
    };
    let size = store.head(key).await?.size;
    let footer = match chain::read_file_footer(store, key, size).await {
        Ok(footer) => footer,
        Err(chain::ChainError::Archive(ArchiveError::Storage(e))) => return Err(e.into()),
        Err(e) => return Err(bad(e.to_string())),
    };
    let meta = footer.meta;
    if (meta.topic.as_str(), meta.partition, meta.start) != (topic, partition, start) {
        return Err(bad(format!(
            "it says {}/{} from {}, where the chain expects {topic}/{partition} from {start}",
            meta.topic, meta.partition, meta.start
        )));
    }
    match footer.offsets {
        Some((first, last))
            if first >= start
                && last.checked_add(1) == Some(meta.end)
                && footer.rows == meta.record_count
                && meta.record_count > 0
                && meta.record_count as i128 <= i128::from(meta.end) - i128::from(start) => {}
        _ => {
            return Err(bad(format!(
                "it claims [{}, {}) with {} records, but holds {} rows at offsets {:?}",
                meta.start, meta.end, meta.record_count, footer.rows, footer.offsets
            )))
        }
    }
    Ok(meta)
}

/// Milliseconds since the epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Upload {
    /// Encode the sealed file and create it in the store, handing the records back with the
    /// result for [`PartitionChain::land`].
    pub async fn send(self, store: &dyn ObjectStore, part_size: usize) -> Sent {
        let (records, created) = upload::create(
            store,
            &self.key,
            self.meta,
            self.records,
            self.decoding,
            part_size,
        )
        .await;
        Sent {
            id: self.id,
            records,
            created,
        }
    }

    /// What the sealed records occupy.
    pub fn records(&self) -> usize {
        self.records.len()
    }
}
