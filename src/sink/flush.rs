//! Flushing: when buffered records become files, several partitions at a time; relieving memory by
//! flushing the largest buffers (and pausing consumption when that is not enough); backing off
//! while the store is away; seeking the consumer where a chain repositioned; and step 3 of the
//! commit order, the Kafka commit (steps 1 and 2, the file and the checkpoint, are
//! `PartitionChain::flush` in `partition.rs`).
//!
//! Invariant: the consumer never reads past a record the chain did not buffer. Whatever a flush
//! makes of a chain (an adopted file, a gap, records kept for later), the chain's reposition is
//! owed to the consumer as a seek before the next record of that partition is taken.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::partition::{now_millis, FlushError, Flushed, Landed, PartitionChain, Ticket};
use super::{Sink, SinkError};
use crate::archive::documents::Gap;
use crate::archive::rotation::{Event, RollReason};

impl Sink<'_> {
    /// After a flush that had to happen before `offset` could be buffered: if the file is still open
    /// (the store is down), the record must not join it (bucket rule), so the chain repositions to
    /// read it again later.
    pub(super) fn defer_if_open(
        &mut self,
        id: &(String, i32),
        ticket: Ticket,
    ) -> Result<(), SinkError> {
        if let Some(chain) = self.chains.get_mut(id) {
            if chain.open_file().is_some() {
                chain.defer(ticket);
                return self.apply_seek(id);
            }
        }
        Ok(())
    }

    /// Seek the consumer where the chain repositioned, if it did. A seek that fails is never a
    /// skip: a partition no longer assigned here is forgotten (its new owner reads from the
    /// archive's end); otherwise the sink stops with the error, rather than read past records it
    /// never buffered.
    pub(super) fn apply_seek(&mut self, id: &(String, i32)) -> Result<(), SinkError> {
        let Some(to) = self.chains.get_mut(id).and_then(|c| c.take_seek()) else {
            return Ok(());
        };
        self.seek(id, to)
    }

    pub(super) fn seek(&mut self, id: &(String, i32), offset: i64) -> Result<(), SinkError> {
        let mut attempt = 0;
        loop {
            let result = if crate::failpoint::fails(crate::failpoint::SEEK_FAILS) {
                Err(KafkaError::Seek("injected by failpoint seek-fails".into()))
            } else {
                self.consumer
                    .seek(&id.0, id.1, Offset::Offset(offset), Duration::from_secs(10))
            };
            let Err(e) = result else {
                return Ok(());
            };
            let assigned = self
                .consumer
                .assignment()
                .map(|tpl| tpl.find_partition(&id.0, id.1).is_some())
                .unwrap_or(true);
            if !assigned {
                if let Some(chain) = self.chains.remove(id) {
                    self.buffered -= chain.buffered_bytes();
                }
                tracing::info!(
                    topic = id.0,
                    partition = id.1,
                    "partition no longer assigned here; forgetting it"
                );
                return Ok(());
            }
            attempt += 1;
            if attempt == 3 {
                if let Some(chain) = self.chains.get_mut(id) {
                    chain.lose_position();
                }
                return Err(SinkError::Seek {
                    topic: id.0.clone(),
                    partition: id.1,
                    offset,
                    message: e.to_string(),
                });
            }
            tracing::warn!(topic = id.0, partition = id.1, offset, error = %e, "seek failed; trying again");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(super) fn buffered(&self) -> u64 {
        self.buffered
    }

    /// What buffered records may occupy: the budget less librdkafka's prefetch queue.
    pub(super) fn record_budget(&self) -> u64 {
        self.opts
            .buffer_budget
            .saturating_sub(prefetch_bytes(self.opts.buffer_budget))
    }

    /// Start making the largest buffers durable when the records not yet in flight hold more than
    /// half of the budget, until they hold a quarter: the files fly while consumption goes on.
    pub(super) async fn relieve_memory(&mut self) -> Result<(), SinkError> {
        let open = self.buffered - self.flying;
        if open <= self.record_budget() / 2 {
            return Ok(());
        }
        let mut by_size: Vec<((String, i32), u64)> = self
            .chains
            .iter()
            .filter(|(_, c)| !c.in_flight() && c.buffered_bytes() > 0)
            .map(|(id, c)| (id.clone(), c.buffered_bytes()))
            .collect();
        by_size.sort_unstable_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        let mut left = open;
        for (id, bytes) in by_size {
            if left <= self.record_budget() / 4 {
                break;
            }
            if self.launch(&id, Event::MemoryPressure).await? {
                left = left.saturating_sub(bytes);
            }
        }
        // Not again, for every record, while what is left cannot fly yet (its partitions' files
        // are in flight, or the store is away): only once buffers grew or a flight landed.
        self.relieve_above = (self.buffered - self.flying) + self.record_budget() / 16;
        Ok(())
    }

    /// The budget is used up: start flights for the largest buffers and wait for flights to land
    /// until `needed` more bytes fit. When nothing can fly (the store is away), consumption pauses
    /// until it can.
    pub(super) async fn make_room(&mut self, needed: u64) -> Result<(), SinkError> {
        while self.buffered + needed > self.record_budget() {
            self.relieve_memory().await?;
            if self.buffered + needed <= self.record_budget() || !self.land_next().await? {
                break;
            }
        }
        self.pause_if_stuck()
    }

    /// Pause consumption while the budget is used up and nothing is in flight to relieve it (the
    /// store is away); resume once it is relieved.
    pub(super) fn pause_if_stuck(&mut self) -> Result<(), SinkError> {
        let stuck = self.flights.is_empty() && self.buffered > self.record_budget() / 2;
        if stuck == self.paused {
            return Ok(());
        }
        let assignment = self.consumer.assignment().map_err(|e| self.kafka_err(e))?;
        let result = if stuck {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        result.map_err(|e| self.kafka_err(e))?;
        tracing::warn!(
            paused = stuck,
            buffered = self.buffered(),
            budget = self.opts.buffer_budget,
            "consumption {}",
            if stuck {
                "paused: uploads are behind"
            } else {
                "resumed"
            }
        );
        self.paused = stuck;
        Ok(())
    }

    /// Make every partition's records durable; while the store fails transiently, wait and try
    /// again (the caller's drain deadline bounds a graceful stop).
    pub(super) async fn flush_all(&mut self, event: Event) -> Result<(), SinkError> {
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at.into()).await;
                self.retry_at = None;
            }
            let ids: Vec<(String, i32)> = self.chains.keys().cloned().collect();
            for id in ids {
                self.launch(&id, event).await?;
            }
            while self.land_next().await? {}
            if self.chains.values().all(PartitionChain::settled) {
                return Ok(());
            }
        }
    }

    /// Roll one partition's open file: it flies at once, after the partition's file in flight (if
    /// any) landed, since a partition has one file in flight at a time.
    pub(super) async fn roll(&mut self, id: &(String, i32), event: Event) -> Result<(), SinkError> {
        self.land_partition(id).await?;
        self.launch(id, event).await?;
        Ok(())
    }

    /// Wait until the partition has no file in flight.
    pub(super) async fn land_partition(&mut self, id: &(String, i32)) -> Result<(), SinkError> {
        while self.chains.get(id).is_some_and(PartitionChain::in_flight) {
            if !self.land_next().await? {
                break;
            }
        }
        Ok(())
    }

    /// Send the partition's next file on its flight in the background ([`PartitionChain::seal`]):
    /// encoded, created, claimed and checkpointed by `PartitionChain::flush_checked`, while the
    /// partition goes on buffering. A file with offset jumps asks the broker for the log's start
    /// first; a failure to ask keeps the records for later, like a store that is away. Returns
    /// false when nothing flew: a file of the partition is in flight, nothing is buffered, or the
    /// store is being given time. The file is labelled with the rotation policy's decision on
    /// `event`.
    pub(super) async fn launch(
        &mut self,
        id: &(String, i32),
        event: Event,
    ) -> Result<bool, SinkError> {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Ok(false);
        }
        if !self
            .chains
            .get(id)
            .is_some_and(|c| !c.in_flight() && !c.settled())
        {
            return Ok(false);
        }
        while self.flights.len() >= MAX_FLIGHTS {
            self.land_next().await?;
        }
        let Some(chain) = self.chains.get_mut(id) else {
            return Ok(false);
        };
        let before = chain.buffered_bytes();
        let Some(mut flight) = chain.seal() else {
            return Ok(false);
        };
        self.buffered = self.buffered - before + chain.buffered_bytes();
        let reason = flight.should_roll(&self.opts.policy, event);
        let low = match flight.first_jump() {
            None => Ok(None),
            Some(_) => {
                self.report.log_start_queries += 1;
                self.offsets
                    .fetch_watermarks(&id.0, id.1, Duration::from_secs(30))
                    .map(|(low, _)| Some(low))
                    .map_err(|e| FlushError::LogStart(e.to_string()))
            }
        };
        let part_size = self.opts.part_size;
        let cost = flight.buffered_bytes() + encoder_bytes(flight.buffered_bytes(), part_size);
        self.buffered += cost;
        self.flying += cost;
        let (store, cluster_id, id) = (self.shared.clone(), self.cluster_id.clone(), id.clone());
        self.flights.spawn(async move {
            let started = Instant::now();
            let result = match low {
                Ok(low) => {
                    flight
                        .flush_checked(&*store, low, &cluster_id, part_size, now_millis())
                        .await
                }
                Err(e) => Err(e),
            };
            Arrival {
                id,
                flight,
                event,
                reason,
                cost,
                took: started.elapsed(),
                result,
            }
        });
        Ok(true)
    }

    /// Wait for the next flight to land and account for it. Returns false when none is out.
    pub(super) async fn land_next(&mut self) -> Result<bool, SinkError> {
        let Some(joined) = self.flights.join_next().await else {
            return Ok(false);
        };
        match joined {
            Ok(arrival) => self.arrive(arrival).await?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only when the runtime shuts down, and then nothing is waited for.
            Err(_) => {}
        }
        Ok(true)
    }

    /// A flight landed: its partition takes it back ([`PartitionChain::land`]), then the file is
    /// accounted for like any flush.
    pub(super) async fn arrive(&mut self, arrival: Arrival) -> Result<(), SinkError> {
        let Arrival {
            id,
            flight,
            event,
            reason,
            cost,
            took,
            result,
        } = arrival;
        self.buffered -= cost;
        self.flying -= cost;
        self.relieve_above = 0;
        let store_away = matches!(&result, Err(e) if e.is_transient());
        // A partition forgotten meanwhile (its seek failed, it was revoked): what the flight made
        // durable is in the chain, what it could not is read again by whoever owns it now.
        let Some(chain) = self.chains.get_mut(&id) else {
            return Ok(());
        };
        let before = chain.buffered_bytes();
        let landed = chain.land(flight);
        self.buffered = self.buffered - before + chain.buffered_bytes();
        if landed == Landed::Stray {
            return Ok(());
        }
        let result = result.map(|(files, gaps)| {
            self.report_gaps(&gaps);
            files
        });
        self.settle(&id, event, reason, took, result).await?;
        if !store_away {
            // Only a flush the store took ends the backoff.
            self.retry_at = None;
            self.backoff.reset();
        }
        if let Some((high, repositions)) = self.reaching.remove(&id) {
            self.target_landed(&id, high, repositions)?;
        }
        Ok(())
    }

    /// Account for one partition's flush: metrics and logs, reading again after an adoption, the
    /// Kafka commit (step 3 of the commit order), or the retry schedule when the store is away.
    pub(super) async fn settle(
        &mut self,
        id: &(String, i32),
        event: Event,
        reason: Option<RollReason>,
        took: Duration,
        result: Result<Vec<Flushed>, FlushError>,
    ) -> Result<(), SinkError> {
        if !self.chains.contains_key(id) {
            return Ok(());
        }
        if event != Event::Revoked {
            // Whatever the flush made of it, a reposition on the way (an adopted file, a gap, records
            // dropped before deleted offsets) is owed to the consumer now, even when the flush
            // itself wrote nothing or failed. (A revoked partition is its new owner's.)
            self.apply_seek(id)?;
        }
        let Some(chain) = self.chains.get(id) else {
            return Ok(());
        };
        let files = match result {
            Ok(files) if files.is_empty() => return Ok(()),
            Ok(files) => files,
            Err(e) if e.is_transient() => {
                // Keep the records and try again later; consumption pauses if memory runs out.
                let wait = self.backoff.next_delay();
                tracing::warn!(topic = chain.topic, partition = chain.partition, error = %e, retry_in_s = wait.as_secs(), "the archive store is unavailable; records stay buffered");
                metrics::counter!(crate::metrics::SINK_ERRORS, "kind" => "storage_unavailable")
                    .increment(1);
                self.retry_at = Some(Instant::now() + wait);
                return Ok(());
            }
            Err(e) => {
                metrics::counter!(crate::metrics::SINK_ERRORS, "kind" => "flush").increment(1);
                return Err(e.into());
            }
        };
        let topic = chain.topic.clone();
        for done in files {
            let topic = topic.clone();
            // Every file written was closed by a rotation decision (a file holds records, so the
            // policy answered); "unknown" would say otherwise.
            let reason = done.cut.or(reason).map_or("unknown", RollReason::as_str);
            if done.adopted {
                self.report.adopted_files += 1;
                metrics::counter!(crate::metrics::SINK_FILES_ADOPTED, "topic" => topic)
                    .increment(1);
            } else {
                self.report.files += 1;
                self.report.records += done.records;
                self.report.bytes += done.bytes;
                metrics::counter!(crate::metrics::SINK_RECORDS, "topic" => topic.clone())
                    .increment(done.records);
                metrics::counter!(crate::metrics::SINK_BYTES, "topic" => topic.clone())
                    .increment(done.bytes);
                metrics::counter!(crate::metrics::SINK_FILES, "topic" => topic, "reason" => reason)
                    .increment(1);
                metrics::histogram!(crate::metrics::SINK_UPLOAD_SECONDS).record(took.as_secs_f64());
            }
            tracing::debug!(
                key = done.key,
                start = done.start,
                end = done.end,
                records = done.records,
                bytes = done.bytes,
                reason,
                upload_ms = took.as_millis() as u64,
                "file durable"
            );
        }
        if event != Event::Revoked {
            // A revoked partition's position is the new owner's to commit.
            self.commit(id).await;
        }
        Ok(())
    }

    /// Step 3 of the commit order: Kafka follows the archive, for lag monitoring only.
    pub(super) async fn commit(&self, id: &(String, i32)) {
        crate::failpoint::hit(crate::failpoint::AFTER_CHECKPOINT).await;
        let Some(chain) = self.chains.get(id) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition_offset(&chain.topic, chain.partition, Offset::Offset(chain.end));
        if let Some(mut e) = tpl.find_partition(&chain.topic, chain.partition) {
            e.set_metadata(&self.owner.marker);
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing the archived position to Kafka failed; it is only used for lag monitoring");
        }
    }
}

/// Files in flight at once over all partitions (a partition has one at most). Many partitions
/// under memory pressure make many small files, which are bound by store round trips.
const MAX_FLIGHTS: usize = 32;

/// A file made durable in the background, back with what became of it.
pub(super) struct Arrival {
    id: (String, i32),
    flight: PartitionChain,
    event: Event,
    reason: Option<RollReason>,
    /// Memory the flight was charged ([`encoder_bytes`] included), released now.
    cost: u64,
    took: Duration,
    result: Result<(Vec<Flushed>, Vec<Gap>), FlushError>,
}

/// What encoding and uploading a file of `records` bytes holds besides the records: the row group
/// being encoded and the parts on their way to the store (see `upload.rs`), at most about two parts.
pub(super) fn encoder_bytes(records: u64, part_size: usize) -> u64 {
    records.min(2 * part_size as u64)
}

/// The part of the buffer budget that librdkafka's prefetch queue may use: an eighth, between
/// 512 KiB and 64 MiB. Records get the rest.
pub(super) fn prefetch_bytes(budget: u64) -> u64 {
    (budget / 8).clamp(512 << 10, 64 << 20)
}
