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

use super::partition::{now_millis, FlushError, Flushed, PartitionChain, Ticket};
use super::{Sink, SinkError};
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

    /// Over budget: flush the largest buffers until the total is back under half the budget.
    pub(super) async fn relieve_memory(&mut self) -> Result<(), SinkError> {
        // Uploads on their way free their records when they land.
        self.land_all().await?;
        let mut by_size: Vec<((String, i32), u64)> = self
            .chains
            .iter()
            .map(|(id, c)| (id.clone(), c.buffered_bytes()))
            .collect();
        by_size.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
        // The largest buffers that together bring memory back to half the budget.
        let mut left = self.buffered();
        let largest: Vec<(String, i32)> = by_size
            .into_iter()
            .take_while(|(_, bytes)| {
                let needed = left > self.record_budget() / 2;
                left = left.saturating_sub(*bytes);
                needed
            })
            .map(|(id, _)| id)
            .collect();
        self.flush_many(largest, Event::MemoryPressure).await?;
        let over = self.buffered() > self.record_budget() / 2;
        if over != self.paused {
            // The store is not keeping up: stop fetching until uploads catch up.
            let assignment = self.consumer.assignment().map_err(|e| self.kafka_err(e))?;
            let result = if over {
                self.consumer.pause(&assignment)
            } else {
                // Not the partitions that reached their snapshot targets: they stay paused.
                let mut reading = TopicPartitionList::new();
                for e in assignment.elements() {
                    let id = (e.topic().to_string(), e.partition());
                    if !self.reached.iter().any(|(r, _)| *r == id) {
                        reading.add_partition(&id.0, id.1);
                    }
                }
                self.consumer.resume(&reading)
            };
            result.map_err(|e| self.kafka_err(e))?;
            tracing::warn!(
                paused = over,
                buffered = self.buffered(),
                budget = self.opts.buffer_budget,
                "consumption {}",
                if over {
                    "paused: uploads are behind"
                } else {
                    "resumed"
                }
            );
            self.paused = over;
        }
        Ok(())
    }

    /// Flush every partition; while the store fails transiently, wait and try again (the caller's
    /// drain deadline bounds a graceful stop).
    pub(super) async fn flush_all(&mut self, event: Event) -> Result<(), SinkError> {
        self.land_all().await?;
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at.into()).await;
            }
            let ids: Vec<(String, i32)> = self.chains.keys().cloned().collect();
            self.flush_many(ids, event).await?;
            if self.buffered() == 0 && self.chains.values().all(|c| !c.unflushed()) {
                return Ok(());
            }
        }
    }

    /// Make one partition's buffer durable, then commit its position to Kafka for lag monitoring.
    pub(super) async fn flush(
        &mut self,
        id: &(String, i32),
        event: Event,
    ) -> Result<(), SinkError> {
        self.flush_many(vec![id.clone()], event).await
    }

    /// Flush several partitions, a few at a time concurrently: encoding runs on the blocking pool
    /// and uploads overlap, so a batch takes about as long as its largest file. A batch has one
    /// flush per core, and up to 16 while its files together stay under one upload part (many small
    /// files are bound by store round trips, not by CPU or memory). Each file is labelled with the
    /// rotation policy's decision on `event` for its partition.
    pub(super) async fn flush_many(
        &mut self,
        ids: Vec<(String, i32)>,
        event: Event,
    ) -> Result<(), SinkError> {
        let cores = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8);
        let mut ids: Vec<(String, i32)> = ids
            .into_iter()
            .filter(|id| {
                self.chains
                    .get(id)
                    .is_some_and(|c| c.unflushed() && !c.in_flight())
            })
            .collect();
        while !ids.is_empty() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return Ok(());
            }
            let mut bytes = 0;
            let take = ids
                .iter()
                .take(16)
                .take_while(|id| {
                    let fits = bytes < self.opts.part_size as u64;
                    bytes += self.chains.get(*id).map_or(0, |c| c.buffered_bytes());
                    fits
                })
                .count()
                .max(cores)
                .min(ids.len());
            let batch: Vec<(String, i32)> = ids.drain(..take).collect();
            // The chains leave the map while their flushes run, so each is borrowed by one future.
            let mut taken: Vec<((String, i32), PartitionChain)> = batch
                .into_iter()
                .filter_map(|id| self.chains.remove(&id).map(|chain| (id, chain)))
                .collect();
            // A file with offset jumps asks the broker for the log's start once, before it is
            // made durable (see `PartitionChain::flush_checked`), the batch's questions asked
            // together; a failure to ask keeps the records and tries again later, like a store
            // that is away.
            let jumped: Vec<(String, i32)> = taken
                .iter()
                .filter(|(_, chain)| chain.first_jump().is_some())
                .map(|(id, _)| id.clone())
                .collect();
            self.report.log_start_queries += jumped.len() as u64;
            let mut asked = self.watermarks(&jumped).into_iter();
            let lows: Vec<_> = taken
                .iter()
                .map(|(_, chain)| match chain.first_jump() {
                    None => Ok(None),
                    Some(_) => asked
                        .next()
                        .expect("an answer for each question")
                        .map(|(low, _)| Some(low)),
                })
                .collect();
            // Decided before the flush, which closes the file the policy looks at.
            let reasons: Vec<Option<RollReason>> = taken
                .iter()
                .map(|(_, chain)| chain.should_roll(&self.opts.policy, event))
                .collect();
            let (store, cluster_id, part_size) =
                (self.store, self.cluster_id.as_str(), self.opts.part_size);
            let results = futures::future::join_all(taken.iter_mut().zip(lows).map(
                |((_, chain), low)| async move {
                    let before = chain.buffered_bytes();
                    let started = Instant::now();
                    let result = match low {
                        Ok(low) => {
                            chain
                                .flush_checked(store, low, cluster_id, part_size, now_millis())
                                .await
                        }
                        Err(e) => Err(FlushError::LogStart(e.to_string())),
                    };
                    (before, started.elapsed(), result)
                },
            ))
            .await;
            let mut failure = None;
            let mut store_away = false;
            for (((id, chain), (before, took, result)), reason) in
                taken.into_iter().zip(results).zip(reasons)
            {
                store_away |= matches!(&result, Err(e) if e.is_transient());
                self.buffered = self.buffered - before + chain.buffered_bytes();
                self.chains.insert(id.clone(), chain);
                let result = result.map(|(files, gaps)| {
                    self.report_gaps(&gaps);
                    files
                });
                if let Err(e) = self.settle(&id, event, reason, took, result).await {
                    failure.get_or_insert(e);
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if !store_away {
                // Only a batch the store took whole ends the backoff.
                self.retry_at = None;
                self.backoff.reset();
            }
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
                let what = match e {
                    FlushError::LogStart(_) => {
                        "the broker did not say where the partition's log starts"
                    }
                    _ => "the archive store is unavailable",
                };
                tracing::warn!(topic = chain.topic, partition = chain.partition, error = %e, retry_in_s = wait.as_secs(), "{what}; records stay buffered");
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

/// The part of the buffer budget that librdkafka's prefetch queue may use: an eighth, between
/// 512 KiB and 64 MiB. Records get the rest.
pub(super) fn prefetch_bytes(budget: u64) -> u64 {
    (budget / 8).clamp(512 << 10, 64 << 20)
}
