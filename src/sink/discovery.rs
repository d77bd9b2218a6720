//! Discovery and chain opening: which selected topics and partitions the cluster has, the group's
//! ownership check, every partition's first checkpoint, the `_topics/` metadata, and where each
//! partition's chain resumes (recording a gap where retention deleted records before they were
//! archived, refusing a log that ends before the chain).
//!
//! Invariant: a partition is read from its chain's end as the archive records it, never from a
//! Kafka commit; a log that ends before the chain (the topic was recreated) is never written to.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::partition::{now_millis, PartitionChain};
use super::{ownership, Sink, SinkError};
use crate::archive::documents::{self, ArchiveError, Gap, TopicMeta};
use crate::archive::time::rfc3339_millis;

/// How long one pass of the loop spends opening the chains of newly assigned partitions.
const OPEN_BUDGET: Duration = Duration::from_millis(100);
/// How many partitions' chains open at once.
const OPEN_AT_ONCE: usize = 32;
/// How many threads ask for watermarks at once (librdkafka's call blocks its caller).
const WATERMARK_THREADS: usize = 8;

impl Sink<'_> {
    /// Find the selected topics. Snapshot mode assigns their partitions directly, each from its
    /// chain's end; continuous mode subscribes the group to them, and partitions are resumed from
    /// the archive as the group hands them over.
    pub(super) async fn discover(&mut self) -> Result<(), SinkError> {
        let metadata = self
            .consumer
            .fetch_metadata(None, Duration::from_secs(30))
            .map_err(|e| self.kafka_err(e))?;
        let mut topics = Vec::new();
        let mut partitions = Vec::new();
        for topic in metadata.topics() {
            if !self.opts.selects(topic.name()) || topic.error().is_some() {
                continue;
            }
            let replication = topic
                .partitions()
                .first()
                .map_or(1, |p| p.replicas().len() as i32);
            topics.push((
                topic.name().to_string(),
                topic.partitions().len() as i32,
                replication,
            ));
            partitions.extend(
                topic
                    .partitions()
                    .iter()
                    .map(|p| (topic.name().to_string(), p.id())),
            );
        }
        self.check_group(&partitions)?;
        // A snapshot opens every chain at once, which gives each partition its first checkpoint as
        // announcing it would (and announcing then has nothing left to do).
        let added = if self.opts.once {
            self.open_snapshot(&partitions).await?
        } else {
            TopicPartitionList::new()
        };
        // Every partition gets its first checkpoint before `_topics/` counts it, so that a reader
        // never sees a partition the topic document counts and the archive does not know.
        if let Err(e) = self.announce(&partitions).await {
            tracing::warn!(error = %e, "could not give new partitions their first checkpoint; trying again at the next discovery");
        } else {
            for (topic, count, replication_factor) in &topics {
                match self
                    .write_topic_meta(topic, *count, *replication_factor)
                    .await
                {
                    Err(SinkError::Archive(ArchiveError::Storage(e))) if e.is_transient() => {
                        tracing::warn!(topic, error = %e, "could not update _topics metadata; trying again at the next discovery");
                    }
                    other => other?,
                }
            }
        }
        if !self.opts.once {
            let mut names: Vec<String> = topics.into_iter().map(|(name, _, _)| name).collect();
            names.sort();
            if names != self.subscribed && !names.is_empty() {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                self.consumer
                    .subscribe(&refs)
                    .map_err(|e| self.kafka_err(e))?;
                tracing::info!(
                    topics = names.len(),
                    "subscribed the group to the selected topics"
                );
                self.subscribed = names;
            }
            return Ok(());
        }
        if added.count() > 0 {
            self.consumer
                .incremental_assign(&added)
                .map_err(|e| self.kafka_err(e))?;
        }
        Ok(())
    }

    /// Snapshot mode: open the chains of `partitions` not open yet; the ones behind their log's end
    /// get a target and are returned, to be assigned from their chain's end.
    async fn open_snapshot(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<TopicPartitionList, SinkError> {
        let mut added = TopicPartitionList::new();
        let closed: Vec<(String, i32)> = partitions
            .iter()
            .filter(|id| !self.chains.contains_key(*id))
            .cloned()
            .collect();
        for (id, opened) in self.open_chains(closed).await {
            let Some((mut chain, high)) = opened? else {
                continue;
            };
            chain.positioned_at(chain.end);
            if chain.end < high {
                self.targets.insert(id.clone(), high);
                added
                    .add_partition_offset(&id.0, id.1, Offset::Offset(chain.end))
                    .map_err(|e| self.kafka_err(e))?;
            }
            self.seen.insert(id.clone());
            self.chains.insert(id, chain);
        }
        Ok(added)
    }

    /// Open the chains of the partitions the group just handed over, before their first record:
    /// the status shows them, and their lag, at once. A pass opens chains for at most
    /// [`OPEN_BUDGET`] (at least one), so that the consumer is polled, stops are heard and ticks
    /// run between passes however many partitions arrive; none while the store is failing. A chain
    /// that cannot open now (the store, or the partition's leader, is away) opens at the partition's
    /// first record instead, as it always could, and says why then if it still cannot.
    pub(super) async fn open_assigned(&mut self) -> Result<(), SinkError> {
        if self.opts.once || self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        let started = Instant::now();
        while started.elapsed() < OPEN_BUDGET {
            // The rebalance callback removes what is revoked from the same list.
            let ids: Vec<(String, i32)> = {
                let mut assigned = self
                    .consumer
                    .context()
                    .assigned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let from = assigned.len().saturating_sub(OPEN_AT_ONCE);
                assigned.split_off(from)
            };
            if ids.is_empty() {
                break;
            }
            let ids: Vec<(String, i32)> = ids
                .into_iter()
                .rev()
                .filter(|id| {
                    !self.chains.contains_key(id)
                        && !self.report.refused.contains(&format!("{}/{}", id.0, id.1))
                })
                .collect();
            for (id, opened) in self.open_chains(ids).await {
                match opened {
                    Ok(Some((chain, _))) => {
                        self.seen.insert(id.clone());
                        self.chains.insert(id, chain);
                    }
                    Ok(None) => {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&id.0, id.1);
                        let _ = self.consumer.pause(&tpl);
                    }
                    Err(e) => {
                        tracing::debug!(topic = id.0, partition = id.1, error = %e, "cannot open the partition's chain at its assignment; it opens at its first record");
                    }
                }
            }
        }
        Ok(())
    }

    /// Refuse a group whose commits on the selected partitions belong to another archive: its
    /// members would split the partitions with this sink (see [`ownership`]).
    pub(super) fn check_group(&self, partitions: &[(String, i32)]) -> Result<(), SinkError> {
        let committed = match ownership::committed(&self.group_reader, partitions) {
            Ok(committed) => committed,
            Err(e) => {
                // Only a definite answer decides; the next discovery asks again.
                tracing::warn!(group = self.owner.group, error = %e, "cannot read the group's committed offsets to check that they belong to this archive; checking again at the next discovery");
                return Ok(());
            }
        };
        match ownership::judge(&self.owner.group, &self.owner.id, &committed) {
            None => Ok(()),
            Some(foreign) => Err(SinkError::GroupOfOtherArchive {
                foreign,
                url: self.owner.url.clone(),
                id: self.owner.id.clone(),
            }),
        }
    }

    /// Give every selected partition that has none its first checkpoint, as opening its chain
    /// would (continuous mode opens a chain only when a record arrives), so that a partition that never gets a record is known to the
    /// archive (`verify` and `ls` tell it from one no sink of this archive backed up). The
    /// checkpoint is created only if absent, so racing the partition's owner is harmless.
    pub(super) async fn announce(&mut self, partitions: &[(String, i32)]) -> Result<(), SinkError> {
        let new: Vec<&(String, i32)> = partitions
            .iter()
            .filter(|id| !self.announced.contains(*id))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let stored: std::collections::HashSet<String> = self
            .store
            .list(crate::archive::paths::CHECKPOINTS_PREFIX)
            .await
            .map_err(ArchiveError::from)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let missing: Vec<(String, i32)> = new
            .iter()
            .filter(|id| {
                !stored.contains(&crate::archive::paths::checkpoint_key(&id.0, id.1))
                    && !self.chains.contains_key(*id)
            })
            .map(|id| (*id).clone())
            .collect();
        for batch in missing.chunks(OPEN_AT_ONCE) {
            // The partitions whose log start came back get their checkpoint even if one did not;
            // the first failure is reported after.
            let watermarks = self.watermarks(batch);
            let store = self.store;
            let created =
                batch
                    .iter()
                    .zip(&watermarks)
                    .filter_map(|(id, w)| w.as_ref().ok().map(|(low, _)| (id, *low)))
                    .map(|(id, low)| async move {
                        PartitionChain::resume(store, &id.0, id.1, low).await
                    });
            for result in futures::future::join_all(created).await {
                result?;
            }
            if let Some(Err(e)) = watermarks.into_iter().find(Result::is_err) {
                return Err(self.kafka_err(e));
            }
        }
        for id in new {
            self.announced.insert(id.clone());
        }
        Ok(())
    }

    /// The low and high watermarks of several partitions, asked a few at a time concurrently
    /// (each is a round trip to the partition's leader; 1,000 partitions one after the other
    /// took seconds), in the order of `ids`. Chains opening and files with offset jumps ask.
    pub(super) fn watermarks(
        &self,
        ids: &[(String, i32)],
    ) -> Vec<rdkafka::error::KafkaResult<(i64, i64)>> {
        let offsets = &self.offsets;
        let ask =
            |id: &(String, i32)| offsets.fetch_watermarks(&id.0, id.1, Duration::from_secs(30));
        if ids.len() <= 1 {
            return ids.iter().map(ask).collect();
        }
        let per_thread = ids.len().div_ceil(WATERMARK_THREADS);
        std::thread::scope(|scope| {
            let asks: Vec<_> = ids
                .chunks(per_thread)
                .map(|chunk| scope.spawn(move || chunk.iter().map(ask).collect::<Vec<_>>()))
                .collect();
            asks.into_iter()
                .flat_map(|asked| asked.join().expect("asking for watermarks does not panic"))
                .collect()
        })
    }

    /// Open the chains of several partitions, [`OPEN_AT_ONCE`] at a time concurrently (each is a
    /// few store round trips); see [`Self::open_chain`]. The answers come in the order of `ids`.
    pub(super) async fn open_chains(
        &mut self,
        ids: Vec<(String, i32)>,
    ) -> Vec<(
        (String, i32),
        Result<Option<(PartitionChain, i64)>, SinkError>,
    )> {
        let mut opened = Vec::with_capacity(ids.len());
        for batch in ids.chunks(OPEN_AT_ONCE) {
            let watermarks: Vec<Result<(i64, i64), SinkError>> = self
                .watermarks(batch)
                .into_iter()
                .map(|w| w.map_err(|e| self.kafka_err(e)))
                .collect();
            let store = self.store;
            let resumed = futures::future::join_all(batch.iter().zip(watermarks).map(
                |(id, watermarks)| async move {
                    let (low, high) = watermarks?;
                    let chain = PartitionChain::resume(store, &id.0, id.1, low).await?;
                    Ok::<_, SinkError>((chain, low, high))
                },
            ))
            .await;
            for (id, resumed) in batch.iter().zip(resumed) {
                let result = match resumed {
                    Ok((chain, low, high)) => self.check_opened(chain, low, high).await,
                    Err(e) => Err(e),
                };
                opened.push((id.clone(), result));
            }
        }
        opened
    }

    /// Resume one partition's chain from the archive, checked against the partition's log: a hole
    /// (records deleted before they were archived) is recorded, and a log that ends before the chain
    /// (offsets went backwards) is refused. Returns the chain and the high watermark.
    pub(super) async fn open_chain(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<(PartitionChain, i64)>, SinkError> {
        let id = (topic.to_string(), partition);
        let (_, opened) = self
            .open_chains(vec![id])
            .await
            .pop()
            .expect("one answer per partition");
        opened
    }

    /// A resumed chain checked against its partition's log (see [`Self::open_chain`]).
    async fn check_opened(
        &mut self,
        mut chain: PartitionChain,
        low: i64,
        high: i64,
    ) -> Result<Option<(PartitionChain, i64)>, SinkError> {
        let topic = chain.topic.clone();
        let (topic, partition) = (topic.as_str(), chain.partition);
        chain.decode_with(self.opts.decoders.clone().filter(|d| d.decodes(topic)));
        if chain.end > high {
            // The log ends before what is archived: the topic was deleted and recreated (or
            // truncated). Writing would mix two histories under one chain, so never do.
            let name = format!("{topic}/{partition}");
            if !self.report.refused.contains(&name) {
                tracing::error!(
                    topic,
                    partition,
                    archived_end = chain.end,
                    log_end = high,
                    "offsets went backwards: the partition's log ends before the archived chain; not backing it up"
                );
                self.report.refused.push(name);
                metrics::counter!(crate::metrics::SINK_REFUSED, "topic" => topic.to_string())
                    .increment(1);
            }
            return Ok(None);
        }
        if chain.end < low {
            let gaps = chain.record_gap(self.store, low).await?;
            self.report_gaps(&gaps);
        }
        // The partition's lag shows from now on, not from librdkafka's first statistics (5 s).
        self.consumer
            .context()
            .log_end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((topic.to_string(), partition))
            .and_modify(|end| *end = (*end).max(high))
            .or_insert(high);
        tracing::info!(
            topic,
            partition,
            resume = chain.end,
            low,
            high,
            "partition resumed from the archive"
        );
        Ok(Some((chain, high)))
    }

    /// Gaps a chain recorded: offsets the broker had deleted before they were archived.
    pub(super) fn report_gaps(&mut self, gaps: &[Gap]) {
        for gap in gaps {
            tracing::error!(
                topic = gap.topic,
                partition = gap.partition,
                archived_end = gap.start,
                earliest_available = gap.end,
                "records were deleted by retention before they were archived; recorded a gap"
            );
            self.report.gaps += 1;
            metrics::counter!(crate::metrics::SINK_GAPS, "topic" => gap.topic.clone()).increment(1);
        }
    }

    pub(super) async fn write_topic_meta(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: i32,
    ) -> Result<(), SinkError> {
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        let mut configs = BTreeMap::new();
        let described = if let Some(admin) = &self.admin {
            admin
                .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
                .await
        } else {
            Ok(Vec::new())
        };
        match described {
            Ok(results) => {
                for resource in results.into_iter().flatten() {
                    for entry in resource.entries {
                        if matches!(entry.source, ConfigSource::DynamicTopic) && !entry.is_sensitive
                        {
                            if let Some(value) = entry.value {
                                configs.insert(entry.name, value);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "could not read topic configs; _topics metadata keeps partition count and replication only")
            }
        }
        let meta = TopicMeta {
            topic: topic.to_string(),
            partitions,
            replication_factor,
            configs,
            updated_at: rfc3339_millis(now_millis()),
        };
        documents::write_topic_meta(self.store, &meta).await?;
        Ok(())
    }
}
