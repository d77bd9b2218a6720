//! One pass over the plan, and follow mode: archive readers decode each partition's files into
//! chunks, and the pass produces them through the open [`Transaction`](super::transaction), committing
//! with the progress as the transaction fills or ages.
//!
//! Invariant: a lane's `next` moves only past records handed to the open transaction (or past a
//! file's end that holds none to restore), and is written as progress only by the commit that
//! makes those records visible; a pass that ends early leaves every lane where its last commit
//! says.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use tokio::sync::{mpsc, Semaphore};

use super::plan::files_in;
use super::reader::{kib, Msg, Reader, CHUNK_BYTES};
use super::transaction::{Commit, Transaction};
use super::Restore;
use super::{partitioner, schema_ids, RestoreError};
use crate::archive::chain::ChainFile;
use crate::archive::datafile::Rows;

impl Restore<'_> {
    /// Restore every lane up to where it should go now. Returns whether `stop` ended it early.
    pub(super) async fn pass(
        &mut self,
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<bool, RestoreError> {
        let budget = self.opts.buffer_budget.max(4 * CHUNK_BYTES);
        let files_pool = Arc::new(Semaphore::new(kib(budget / 2)));
        let chunks_pool = Arc::new(Semaphore::new(kib(budget / 2)));
        let readers = Arc::new(Semaphore::new(self.opts.concurrency.max(1)));
        let (tx, mut rx) = mpsc::channel::<Msg>(64);
        let mut tasks = tokio::task::JoinSet::new();
        for (index, lane) in self.lanes.iter().enumerate() {
            let until = lane.until();
            if lane.next >= until || !lane.owned {
                continue;
            }
            let files: Vec<ChainFile> = files_in(&lane.files, lane.next, until).cloned().collect();
            let reader = Reader {
                store: self.store.clone(),
                lane: index,
                from: lane.next,
                until,
                tx: tx.clone(),
                files_pool: files_pool.clone(),
                chunks_pool: chunks_pool.clone(),
                budget_kib: kib(budget / 2),
            };
            let readers = readers.clone();
            tasks.spawn(async move {
                let _slot = readers.acquire_owned().await;
                reader.run(files).await;
            });
        }
        drop(tx);
        let mut stopped = false;
        let mut reassigned = false;
        // Each producer's commit runs on its own while the other sends (see `Overlap`).
        let mut overlap = Overlap::new(&self.opts.restore_id);
        loop {
            // While a commit runs no other starts, and its end wakes the loop.
            let deadline = (0..self.sides())
                .filter(|&side| self.side(side).is_open() && !overlap.committing())
                .map(|side| self.side(side).deadline(self.opts.transaction_interval))
                .min();
            let waiting = overlap.committing();
            tokio::select! {
                biased;
                _ = stop.as_mut() => {
                    stopped = true;
                    break;
                }
                (side, result) = overlap.next_commit(), if waiting => {
                    self.committed(&mut overlap, side, result).await?;
                    self.report_lag();
                    // Between transactions (a shared restore has one producer).
                    reassigned = self.regrouped()?;
                    if reassigned {
                        break;
                    }
                    self.apply_held(&mut overlap, side).await?;
                }
                message = rx.recv() => match message {
                    None => break,
                    Some(message) => {
                        let side = message.lane().map_or(0, |lane| self.side_of(lane));
                        if self.side(side).is_committing() {
                            overlap.held[side].push(message);
                        } else if let Err(e) = self.apply(message).await {
                            return Err(self.fail(&mut overlap, e).await);
                        }
                    }
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline.unwrap_or_else(std::time::Instant::now))), if deadline.is_some() => {}
            }
            // Checked after every message too: a busy channel must not keep a transaction open
            // past its interval (the broker aborts transactions that outlive their timeout). One
            // commit at a time, so that the other producer always sends, and the older transaction
            // first, so that both take turns.
            if !overlap.committing() {
                let due = (0..self.sides())
                    .filter(|&side| {
                        self.side(side)
                            .due(self.opts.transaction_bytes, self.opts.transaction_interval)
                    })
                    .min_by_key(|&side| self.side(side).deadline(self.opts.transaction_interval));
                if let Some(side) = due {
                    match self.start_commit(side, false).await {
                        Ok(commit) => overlap.pending[side] = Some(tokio::spawn(commit)),
                        Err(e) => return Err(self.fail(&mut overlap, e).await),
                    }
                }
            }
            self.status(false);
        }
        // Let the commits under way end; what their producers were not handed yet is not
        // restored by this pass (its lanes did not move past it).
        while overlap.committing() {
            let (side, result) = overlap.next_commit().await;
            self.committed(&mut overlap, side, result).await?;
        }
        if !(stopped || reassigned) {
            for side in 0..2 {
                self.apply_held(&mut overlap, side).await?;
            }
        }
        if stopped || reassigned {
            tasks.abort_all();
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                if e.is_panic() {
                    self.abort().await;
                    return Err(self.interrupted(format!("an archive reader failed: {e}")));
                }
            }
        }
        self.commit().await?;
        if reassigned {
            return Ok(false);
        }
        if !stopped {
            if let Some(lane) = self.lanes.iter().find(|l| l.owned && l.next < l.until()) {
                return Err(self.interrupted(format!(
                    "{}/{} stopped at offset {} before {}",
                    lane.topic,
                    lane.partition,
                    lane.next,
                    lane.until()
                )));
            }
        }
        self.status(true);
        if self.zero_timestamps > 0 {
            tracing::warn!(
                records = self.zero_timestamps,
                "records archived with timestamp 0 were restored with the time they were produced: librdkafka cannot send a timestamp of 0"
            );
            self.zero_timestamps = 0;
        }
        Ok(stopped)
    }

    /// Hand one chunk's records to the producer, inside the open transaction, straight from the
    /// decoded columns (librdkafka copies them).
    async fn produce(&mut self, index: usize, rows: &Rows) -> Result<(), RestoreError> {
        let mut chunk_bytes = 0;
        let mut chunk_records = 0;
        // Schema ids are mapped before this chunk's records are sent: one that cannot be mapped
        // stops the restore here, and the open transaction is aborted.
        let ids = match self.opts.schema_ids.clone() {
            Some(schema_ids) => {
                let lane = &self.lanes[index];
                let id = &self.opts.restore_id;
                let strict = self.opts.strict.then_some(&self.opts.window);
                Some(
                    schema_ids
                        .chunk(&lane.topic, lane.partition, rows, strict)
                        .await
                        .map_err(|message| RestoreError::SchemaIds(format!(
                            "{message}; restore {id} committed what came before, and running the same command with --restore-id {id} resumes there"
                        )))?,
                )
            }
            None => None,
        };
        let side = self.side_of(index);
        self.side_mut(side).begin()?;
        let repartition = self.opts.repartition_by_key.then(|| {
            self.cluster
                .partitions
                .get(&self.lanes[index].target_topic)
                .copied()
                .unwrap_or(1)
        });
        let strict = self.opts.strict.then_some(&self.opts.window);
        let provenance = self.opts.provenance_headers;
        let view = rows.view();
        for i in 0..rows.len() {
            let (offset, timestamp) = (view.offset(i), view.timestamp(i));
            if strict.is_some_and(|w| !w.contains(timestamp)) {
                continue;
            }
            let (key, value) = (view.key(i), view.value(i));
            // With ids rewritten, the key a target producer would write is the rewritten one, and
            // so is the partition its hash chooses.
            let (new_key, new_value) = match &ids {
                Some(ids) => (
                    schema_ids::rewritten(key, true, ids),
                    schema_ids::rewritten(value, false, ids),
                ),
                None => (None, None),
            };
            let key = new_key.as_deref().or(key);
            let value = new_value.as_deref().or(value);
            let lane = &mut self.lanes[index];
            let mut slot = 0;
            if lane
                .watches
                .first()
                .is_some_and(|(watched, _)| *watched <= offset)
            {
                slot = self.next_slot;
                self.next_slot += 1;
                let cut = lane
                    .watches
                    .partition_point(|(watched, _)| *watched <= offset);
                let groups = lane.watches.drain(..cut).map(|(_, g)| g).collect();
                lane.pending.push((slot, groups));
            }
            let partition = match repartition {
                Some(count) => match key {
                    Some(key) => partitioner::partition_for_key(key, count),
                    None => lane.partition % count,
                },
                None => lane.partition,
            };
            let mut message =
                BaseRecord::with_opaque_to(&lane.target_topic, slot).partition(partition);
            if let Some(key) = key {
                message = message.key(key);
            }
            if let Some(value) = value {
                message = message.payload(value);
            }
            // rdkafka sends a missing timestamp as 0, which librdkafka replaces with the current
            // time; -1 is Kafka's own "no timestamp" and reaches the broker as it was archived.
            // A record whose timestamp really was 0 cannot be produced as such (librdkafka stamps
            // it with the current time): counted and reported.
            message = message.timestamp(timestamp.unwrap_or(-1));
            if timestamp == Some(0) {
                self.zero_timestamps += 1;
            }
            let headers = view.headers(i);
            let mut size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
            if headers.len() > 0 || provenance {
                let mut kafka_headers = OwnedHeaders::new_with_capacity(headers.len() + 3);
                for (key, value) in headers {
                    size += key.len() + value.map_or(0, <[u8]>::len);
                    kafka_headers = kafka_headers.insert(KafkaHeader { key, value });
                }
                if provenance {
                    for (key, value) in [
                        ("rewind.source.topic", lane.topic.clone()),
                        ("rewind.source.partition", lane.partition.to_string()),
                        ("rewind.source.offset", offset.to_string()),
                    ] {
                        kafka_headers = kafka_headers.insert(KafkaHeader {
                            key,
                            value: Some(value.as_bytes()),
                        });
                    }
                }
                message = message.headers(kafka_headers);
            }
            let size = size as u64;
            // The transaction by its field: `message` borrows the lane.
            let txn = match side {
                0 => &mut self.txn,
                _ => self.second.as_mut().expect("a restore of two producers"),
            };
            if let Err(e) = txn.send(message, size).await {
                // After the broker refused an earlier record the producer is in an error state
                // and this send fails with "Erroneous state": name the refusal, the cause, once
                // its report is in (seen under load with a record above max.message.bytes).
                self.side(side).drain().await?;
                let hint = match e.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::MessageSizeTooLarge) => " (raise the producer's limit with -X message.max.bytes=N, and the target topic's max.message.bytes)",
                    Some(RDKafkaErrorCode::QueueFull) => " (the record is larger than the producer's whole queue: raise it with -X queue.buffering.max.kbytes=N)",
                    _ => "",
                };
                return Err(self.interrupted(format!(
                    "cannot produce record {}/{} offset {offset} ({} bytes) to {}: {e}{hint}",
                    self.lanes[index].topic,
                    self.lanes[index].partition,
                    value.map_or(0, <[u8]>::len),
                    self.lanes[index].target_topic
                )));
            }
            chunk_bytes += size;
            chunk_records += 1;
            self.report.records += 1;
            self.report.bytes += size;
        }
        let topic = self.lanes[index].target_topic.clone();
        metrics::counter!(crate::metrics::RESTORE_RECORDS, "topic" => topic.clone())
            .increment(chunk_records);
        metrics::counter!(crate::metrics::RESTORE_BYTES, "topic" => topic).increment(chunk_bytes);
        Ok(())
    }

    /// Steps 4 to 6 of the transaction protocol, for every producer with a transaction open or
    /// lanes that moved: see [`Restore::start_commit`]. Awaited, one producer after the other.
    pub(super) async fn commit(&mut self) -> Result<(), RestoreError> {
        for side in 0..self.sides() {
            let moved = self
                .lanes
                .iter()
                .enumerate()
                .any(|(index, lane)| lane.dirty && self.side_of(index) == side);
            if moved || self.side(side).is_open() {
                if let Err(e) = self.commit_awaited(side, false).await {
                    // The other producer's transaction must not stay open behind it.
                    self.abort().await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The restore's first transaction: the progress of every lane at its start, in one
    /// transaction of the restore's own producer, so that a run interrupted after it resumes every
    /// lane (a plan committed in part would leave lanes out).
    pub(super) async fn commit_plan(&mut self) -> Result<(), RestoreError> {
        for lane in &mut self.lanes {
            lane.dirty = true;
        }
        self.commit_awaited(0, true).await
    }

    async fn commit_awaited(&mut self, side: usize, every_lane: bool) -> Result<(), RestoreError> {
        let commit = self.start_commit(side, every_lane).await?;
        let result = commit.await;
        self.side_mut(side).finish_commit(&result);
        result?;
        self.report_lag();
        Ok(())
    }

    /// Steps 4 to 6 for one producer: learn where the records watched for group translation
    /// landed, then start committing its transaction with the progress of every lane of its own
    /// that moved (of every lane that moved, for the plan). The commit runs on its own: the
    /// returned future ends it, and its outcome goes to `finish_commit`.
    ///
    /// A lane's progress is written by one producer only (the plan's aside, which precedes every
    /// other transaction): two open transactions holding the same lane's progress could commit in
    /// the other order than they appended it, and the older progress would be read as the newer.
    async fn start_commit(
        &mut self,
        side: usize,
        every_lane: bool,
    ) -> Result<Commit, RestoreError> {
        self.side_mut(side).begin()?;
        let mine: Vec<usize> = (0..self.lanes.len())
            .filter(|&index| every_lane || self.side_of(index) == side)
            .collect();
        // Where watched records landed is known only once they are acknowledged; without any,
        // the commit's own drain is enough.
        if mine
            .iter()
            .any(|&index| !self.lanes[index].pending.is_empty())
        {
            if let Err(e) = self.side(side).drain().await {
                self.side_mut(side).abort().await;
                return Err(e);
            }
        }
        let landed = self.side(side).take_landed();
        let progress_partitions = self
            .cluster
            .partitions
            .get(&self.opts.progress_topic)
            .copied()
            .unwrap_or(1);
        let mut progress = Vec::new();
        for &index in &mine {
            let lane = &mut self.lanes[index];
            for (slot, groups) in lane.pending.drain(..) {
                if let Some(offset) = landed.get(&slot) {
                    for group in groups {
                        lane.resolved.insert(group, *offset);
                    }
                }
            }
            if lane.dirty {
                progress.push(lane.progress(self.opts, self.groups_as_of));
            }
        }
        let group = match &self.group {
            Some(group) if !progress.is_empty() => {
                let moved: Vec<&super::lane::Lane> = mine
                    .iter()
                    .map(|&index| &self.lanes[index])
                    .filter(|l| l.dirty)
                    .collect();
                match group.offsets(&moved) {
                    Ok(offsets) => Some(offsets),
                    Err(e) => {
                        self.side_mut(side).abort().await;
                        return Err(self.interrupted(e));
                    }
                }
            }
            _ => None,
        };
        for &index in &mine {
            self.lanes[index].dirty = false;
        }
        let topic = self.opts.progress_topic.clone();
        self.side_mut(side)
            .start_commit(progress, topic, progress_partitions, group)
    }

    /// How many producers the restore writes with: two, each owning every other lane, unless the
    /// restore is shared (a worker changes lanes only between transactions, see `shared`).
    pub(super) fn sides(&self) -> usize {
        if self.second.is_some() {
            2
        } else {
            1
        }
    }

    /// The producer that writes lane `index` and its progress.
    pub(super) fn side_of(&self, index: usize) -> usize {
        index % self.sides()
    }

    pub(super) fn side(&self, side: usize) -> &Transaction {
        match side {
            0 => &self.txn,
            _ => self.second.as_ref().expect("a restore of two producers"),
        }
    }

    fn side_mut(&mut self, side: usize) -> &mut Transaction {
        match side {
            0 => &mut self.txn,
            _ => self.second.as_mut().expect("a restore of two producers"),
        }
    }

    /// Abort every open transaction (none may be committing).
    pub(super) async fn abort(&mut self) {
        for side in 0..self.sides() {
            self.side_mut(side).abort().await;
        }
    }

    /// A pass failed with `error`: let the commits under way end (their producers cannot be
    /// aborted meanwhile), abort what is open, and return the error.
    async fn fail(&mut self, overlap: &mut Overlap, error: RestoreError) -> RestoreError {
        while overlap.committing() {
            let (side, result) = overlap.next_commit().await;
            self.side_mut(side).finish_commit(&result);
        }
        self.abort().await;
        error
    }

    /// The outcome of a commit that ran on its own; a failure fails the pass (see `fail`).
    async fn committed(
        &mut self,
        overlap: &mut Overlap,
        side: usize,
        result: Result<(), RestoreError>,
    ) -> Result<(), RestoreError> {
        self.side_mut(side).finish_commit(&result);
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(overlap, e).await),
        }
    }

    /// Hand the producer of `side` what waited for its commit, in order.
    async fn apply_held(&mut self, overlap: &mut Overlap, side: usize) -> Result<(), RestoreError> {
        for message in std::mem::take(&mut overlap.held[side]) {
            if let Err(e) = self.apply(message).await {
                return Err(self.fail(overlap, e).await);
            }
        }
        Ok(())
    }

    /// Hand a reader's message to its lane's producer.
    async fn apply(&mut self, message: Msg) -> Result<(), RestoreError> {
        match message {
            Msg::Failed(e) => Err(e),
            Msg::Done { lane, next } => {
                let lane = &mut self.lanes[lane];
                lane.next = lane.next.max(next);
                lane.dirty = true;
                Ok(())
            }
            Msg::Chunk {
                lane, rows, next, ..
            } => {
                self.produce(lane, &rows).await?;
                let lane = &mut self.lanes[lane];
                lane.next = lane.next.max(next);
                lane.dirty = true;
                Ok(())
            }
        }
    }

    /// Follow mode: poll the checkpoints and restore whatever the chains gained, until stopped.
    pub(super) async fn follow(
        &mut self,
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<(), RestoreError> {
        let mut seen: HashMap<String, String> = HashMap::new();
        loop {
            tokio::select! {
                _ = stop.as_mut() => return Ok(()),
                _ = tokio::time::sleep(self.opts.poll_interval) => {}
            }
            let checkpoints = self
                .store
                .list(crate::archive::paths::CHECKPOINTS_PREFIX)
                .await
                .map_err(|e| RestoreError::Archive(e.into()))?;
            let mut grown = false;
            let known_targets: BTreeSet<String> =
                self.lanes.iter().map(|l| l.target_topic.clone()).collect();
            let lanes_before = self.lanes.len();
            for object in checkpoints {
                if seen.get(&object.key) == Some(&object.etag) {
                    continue;
                }
                let Some((topic, partition)) =
                    crate::archive::paths::parse_checkpoint_key(&object.key)
                else {
                    continue;
                };
                seen.insert(object.key.clone(), object.etag.clone());
                if !self.opts.topics.is_match(&topic) {
                    continue;
                }
                grown |= self.extend_lane(&topic, partition).await?;
            }
            if self.lanes.len() > lanes_before {
                let new_targets = self
                    .lanes
                    .iter()
                    .map(|l| l.target_topic.clone())
                    .filter(|t| !known_targets.contains(t))
                    .collect();
                if !self.ensure_targets(&new_targets).await? {
                    self.abort().await;
                    return Err(self.interrupted(
                        "a new target topic was created by someone else while this restore created it; running the same command again checks it",
                    ));
                }
            }
            if grown && self.pass(stop).await? {
                return Ok(());
            }
        }
    }
}

/// The two producers' commits: each runs as a task of its own while the other producer sends, and
/// what the readers hand a producer that is committing waits, in order, until its commit has ended.
struct Overlap {
    pending: [Option<tokio::task::JoinHandle<Result<(), RestoreError>>>; 2],
    held: [Vec<Msg>; 2],
    restore_id: String,
}

impl Overlap {
    fn new(restore_id: &str) -> Self {
        Overlap {
            pending: [None, None],
            held: [Vec::new(), Vec::new()],
            restore_id: restore_id.to_string(),
        }
    }

    fn committing(&self) -> bool {
        self.pending.iter().any(Option::is_some)
    }

    /// The next commit to end: its producer and outcome (pending while none is under way).
    async fn next_commit(&mut self) -> (usize, Result<(), RestoreError>) {
        std::future::poll_fn(|cx| {
            for (side, pending) in self.pending.iter_mut().enumerate() {
                if let Some(commit) = pending {
                    if let std::task::Poll::Ready(joined) =
                        std::future::Future::poll(std::pin::Pin::new(commit), cx)
                    {
                        *pending = None;
                        // A commit task ends by returning: it panicked, or the runtime is going.
                        let result = joined.unwrap_or_else(|e| {
                            Err(RestoreError::Interrupted {
                                id: self.restore_id.clone(),
                                message: format!("a transaction's commit failed: {e}"),
                            })
                        });
                        return std::task::Poll::Ready((side, result));
                    }
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}
