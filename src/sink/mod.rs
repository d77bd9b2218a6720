//! The continuous backup sink: consume every selected partition → buffer → encode Parquet → put the
//! file → advance the checkpoint → commit to Kafka.
//!
//! Invariant: the archive, not Kafka, decides where a partition resumes. Every partition starts at
//! its chain's end as the archive records it, so restarts and crashes converge on one chain with no
//! record lost or archived twice; Kafka commits exist for lag monitoring only.
//!
//! The rooms: this file is the loop (records, end of partition, ticks, rebalances);
//! [`options`] what a sink is asked to do and what it reports; `discovery` which topics and
//! partitions there are and where each chain resumes; `partition` one partition's chain and the
//! commit order (steps 1 and 2); `flush` when buffers become files, memory relief, the store's
//! backoff and step 3 (the Kafka commit); `upload` encoding and putting a file; `observe` gauges,
//! live status and the status line; `groups` consumer-group snapshots; [`ownership`] which archive
//! a consumer group belongs to.

pub mod decode;
mod discovery;
mod flights;
mod flush;
mod groups;
mod observe;
mod options;
pub mod ownership;
mod partition;
mod upload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientConfig, Message, Timestamp, TopicPartitionList};
use rustc_hash::FxHashMap;

pub use options::{default_uploads_in_flight, SinkError, SinkOptions, SinkReport};
pub use partition::{Admission, FlushError, Flushed, Lander, PartitionChain, Sent, Ticket, Upload};
pub use upload::UploadError;

use flush::prefetch_bytes;
use observe::SinkContext;

use crate::archive::documents;
use crate::archive::rotation::Event;
use crate::archive::time::HourBucket;
use crate::archive::{Header, Record, TimestampType};
use crate::kafka::ClusterError;
use crate::storage::ObjectStore;

use partition::now_millis;

/// The group this sink commits to and the archive its commits are marked with.
struct Owner {
    group: String,
    id: String,
    url: String,
    /// The commit metadata of every commit (see [`ownership`]).
    marker: String,
}

struct Sink<'a> {
    store: &'a dyn ObjectStore,
    consumer: StreamConsumer<SinkContext>,
    /// `None` without the admin API (see `SinkOptions::admin_api`).
    admin: Option<AdminClient<crate::kafka::Ctx>>,
    /// Asks for log start offsets (never subscribes or fetches).
    offsets: BaseConsumer<crate::kafka::Ctx>,
    /// Reads the group's committed offsets without being a member (see [`ownership`]).
    group_reader: BaseConsumer<crate::kafka::Ctx>,
    opts: &'a SinkOptions,
    servers: String,
    cluster_id: String,
    owner: Owner,
    /// Looked up several times per record: a fast hash matters (SipHash was 7 % of the CPU).
    chains: FxHashMap<(String, i32), PartitionChain>,
    /// Snapshot mode: the offset each partition must reach; removed once reached.
    targets: FxHashMap<(String, i32), i64>,
    /// Snapshot mode: partitions that reached their targets, paused and waiting to be flushed
    /// together (one at a time, 1,000 small partitions took 1,000 store round trips in a row),
    /// each with its chain's reposition count from before the record that reached the target: a
    /// flush in between (memory pressure, a tick, the record's own) that moved the chain back must
    /// be seen when the partition is settled.
    reached: Vec<((String, i32), u64)>,
    report: SinkReport,
    started: Instant,
    /// Continuous mode: the topics currently subscribed to.
    subscribed: Vec<String>,
    /// The partitions known to have a checkpoint (see `announce`).
    announced: std::collections::HashSet<(String, i32)>,
    /// Every partition this worker handled, for the report.
    seen: std::collections::HashSet<(String, i32)>,
    /// Schema-change rolls each partition may still make now, and when that was counted
    /// ([`Sink::schema_roll_allowed`]).
    schema_rolls: FxHashMap<(String, i32), (f64, u64)>,
    /// Records read, records archived and bytes archived, sampled every tick for their rates.
    rates: crate::live::Rates<3>,
    /// The status line on a terminal (`SinkOptions::progress`), redrawn in place.
    bar: Option<indicatif::ProgressBar>,
    /// The store is failing transiently: no flush is tried before this instant.
    retry_at: Option<Instant>,
    backoff: crate::backoff::Backoff,
    /// Consumption is paused because the buffer budget is used up and flushing cannot relieve it.
    paused: bool,
    /// Sum of every chain's buffered bytes, kept current so the hot path never adds them up.
    buffered: u64,
    /// The partition of the last record read.
    last_id: (String, i32),
    /// Sealed files uploading in the background (see `flights`).
    flights: flights::Flights,
    /// The store, for the uploads' own tasks.
    shared_store: Arc<dyn ObjectStore>,
    /// `fly_largest` waits until the buffered bytes reach this after a pass that sealed nothing.
    fly_floor: u64,
    /// The part of `buffered` that is on its way in `flights` (records and encoders).
    flying: u64,
}

/// Snapshot mode: how many partitions that reached their targets wait to be flushed together.
const REACHED_BATCH: usize = 32;

/// Run the sink until it is told to stop (`stop` resolves) or, in snapshot mode, until every
/// partition reached its target.
pub async fn run(
    client: ClientConfig,
    store: Arc<dyn ObjectStore>,
    opts: SinkOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<SinkReport, SinkError> {
    let servers = crate::kafka::servers(&client);
    let kafka_err = |e: KafkaError| SinkError::Kafka(ClusterError::client(&servers, e));
    let mut consumer_config = client.clone();
    consumer_config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", "5000")
        // librdkafka's prefetch queue is part of the budget (see `prefetch_bytes`).
        .set(
            "queued.max.messages.kbytes",
            (prefetch_bytes(opts.buffer_budget) / 1024).to_string(),
        )
        .set(
            "fetch.max.bytes",
            prefetch_bytes(opts.buffer_budget)
                .clamp(2 << 20, 50 << 20)
                .to_string(),
        );
    if consumer_config.get("fetch.queue.backoff.ms").is_none() {
        // librdkafka stops fetching a partition whose prefetch queue is full and, by default, waits
        // a whole second before asking again: while catching up that idles the consumer for most of
        // every second (measured: 3× slower). Ask again soon instead; the queue bounds stay.
        consumer_config.set("fetch.queue.backoff.ms", "20");
    }
    // A client without a group asks the cluster for its id: the group is the archive's, which is
    // known once the archive's identity is. It is a short-lived client: if no broker answers, the
    // probe's error is the one line the user reads.
    let consumer: BaseConsumer<crate::kafka::Ctx> = client
        .create_with_context(crate::kafka::Ctx)
        .map_err(kafka_err)?;
    // Log-start questions go through a client of their own: on the consumer's connections they
    // queue behind fetches that long-poll for up to fetch.wait.max.ms (measured: ~0.5 s each).
    let offsets: BaseConsumer<crate::kafka::Ctx> = client
        .clone()
        .set("enable.auto.commit", "false")
        .create_with_context(crate::kafka::Ctx)
        .map_err(kafka_err)?;
    crate::kafka::ready(&offsets);
    let admin: Option<AdminClient<crate::kafka::Ctx>> = opts
        .admin_api
        .then(|| client.create_with_context(crate::kafka::Ctx))
        .transpose()
        .map_err(kafka_err)?;

    // Serve the consumer's queue once before any request: with SASL/OAUTHBEARER (Amazon MSK IAM)
    // that fetches the first token, without which no connection is made.
    crate::kafka::ready(&consumer);
    let timeout = Duration::from_secs(10);
    crate::kafka::probe(consumer.client(), &servers, timeout)?;
    let cluster_id =
        consumer
            .client()
            .fetch_cluster_id(timeout)
            .ok_or_else(|| ClusterError::Unreachable {
                servers: servers.clone(),
                timeout,
            })?;
    // Before anything is written: the chain rules rest on conditional writes.
    let probed = crate::storage::probe(&*store).await?;
    if !probed.keeps_checksums {
        tracing::warn!(
            archive = %store.url(),
            "the store does not keep the CRC32C it is sent with each object; integrity rests on the checksums inside each data file"
        );
    }
    let identity = documents::ensure_identity(
        &*store,
        &cluster_id,
        opts.allow_cluster_change,
        now_millis(),
    )
    .await?;
    drop(consumer);
    let group = opts
        .group
        .clone()
        .unwrap_or_else(|| ownership::default_group(&identity));
    let opts = SinkOptions {
        group: Some(group.clone()),
        ..opts
    };
    tracing::info!(
        group,
        archive_id = identity.archive_id(),
        "consumer group of this archive"
    );
    if let Some(registry) = opts.decoders.as_ref().and_then(|d| d.registry()) {
        // Typed columns wait for no registry: without one, records are archived raw (counted).
        if let Err(e) = registry.check().await {
            tracing::warn!(error = %e, "the schema registry of sink.decode does not answer; records that need its schemas are archived without typed columns until it does");
        }
    }
    let consumer: StreamConsumer<SinkContext> = consumer_config
        .set("group.id", &group)
        .create_with_context(SinkContext::default())
        .map_err(kafka_err)?;
    let _ = futures::FutureExt::now_or_never(consumer.recv());
    // The group's commits are read by a client that is not a member: the member's own requests
    // wait while the group rebalances (a dead worker holds it up for its whole session timeout).
    let group_reader: BaseConsumer<crate::kafka::Ctx> = client
        .clone()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create_with_context(crate::kafka::Ctx)
        .map_err(kafka_err)?;
    crate::kafka::ready(&group_reader);

    let mut sink = Sink {
        store: &*store,
        consumer,
        admin,
        offsets,
        group_reader,
        opts: &opts,
        servers,
        cluster_id,
        owner: Owner {
            group,
            id: identity.archive_id(),
            url: store.url().to_string(),
            marker: ownership::marker(&identity, &store.url().to_string()),
        },
        chains: FxHashMap::default(),
        targets: FxHashMap::default(),
        reached: Vec::new(),
        report: SinkReport::default(),
        started: Instant::now(),
        subscribed: Vec::new(),
        seen: Default::default(),
        schema_rolls: Default::default(),
        announced: Default::default(),
        rates: Default::default(),
        bar: opts.progress.then(|| {
            let line = crate::progress::status_line("sink: {msg}");
            line.set_message("starting: joining the group, opening the assigned partitions");
            line
        }),
        retry_at: None,
        backoff: crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
        paused: false,
        buffered: 0,
        last_id: Default::default(),
        flights: Default::default(),
        shared_store: store.clone(),
        fly_floor: 0,
        flying: 0,
    };
    sink.discover().await?;
    if sink.chains.is_empty() && opts.once {
        if !sink.report.refused.is_empty() {
            return Err(SinkError::OffsetsWentBackwards(sink.report.refused));
        }
        return Err(SinkError::NoTopics(opts.topics.anchored().to_string()));
    }
    let snapshots = (!opts.group_snapshot_interval.is_zero())
        .then(|| groups::GroupSnapshots::new(client.clone(), store.clone(), opts.clone()));
    let snapshotting = match snapshots {
        Some(mut snapshots) if !opts.once => {
            let every = opts.group_snapshot_interval;
            Some(tokio::spawn(async move {
                loop {
                    take_group_snapshots(&mut snapshots).await;
                    tokio::time::sleep(every).await;
                }
            }))
        }
        Some(mut snapshots) => {
            sink.consume(stop).await?;
            take_group_snapshots(&mut snapshots).await;
            return finish(sink);
        }
        None => None,
    };
    let consumed = sink.consume(stop).await;
    if let Some(task) = snapshotting {
        task.abort();
    }
    consumed?;
    finish(sink)
}

async fn take_group_snapshots(snapshots: &mut groups::GroupSnapshots) {
    match snapshots.take().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            groups = n,
            "snapshotted consumer-group offsets into _groups/"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "consumer-group snapshot failed; trying again at the next interval")
        }
    }
}

fn finish(mut sink: Sink<'_>) -> Result<SinkReport, SinkError> {
    if let Some(bar) = &sink.bar {
        bar.finish_and_clear();
    }
    sink.report.partitions = sink.seen.len();
    if !sink.report.refused.is_empty() {
        return Err(SinkError::OffsetsWentBackwards(sink.report.refused));
    }
    Ok(sink.report)
}

impl Sink<'_> {
    pub(super) fn kafka_err(&self, e: KafkaError) -> SinkError {
        SinkError::Kafka(ClusterError::client(&self.servers, e))
    }

    async fn consume(
        &mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), SinkError> {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_discovery = Instant::now();
        loop {
            if !self.reached.is_empty() && self.reached.len() == self.targets.len() {
                // Nothing is left to read: flush what reached its target now.
                self.settle_reached().await?;
            }
            if self.opts.once && self.targets.is_empty() {
                break;
            }
            self.release_revoked().await?;
            self.open_assigned().await?;
            tokio::select! {
                _ = &mut stop => {
                    tracing::info!("stopping: flushing every buffered record");
                    break;
                }
                Some(landing) = self.flights.next(), if !self.flights.is_empty() => {
                    self.land(landing).await?;
                }
                _ = tick.tick() => {
                    self.on_tick().await?;
                    if !self.opts.once && last_discovery.elapsed() >= self.opts.discovery_interval {
                        self.discover().await?;
                        last_discovery = Instant::now();
                    }
                }
                message = self.consumer.recv() => {
                    match message {
                        Ok(msg) => {
                            self.report.read += 1;
                            // The partition's name is allocated only when it changes between
                            // messages (they come in runs per partition), not once per record.
                            let mut id = std::mem::take(&mut self.last_id);
                            if id.1 != msg.partition() || id.0 != msg.topic() {
                                id = (msg.topic().to_string(), msg.partition());
                            }
                            let result = self.on_record(&id, to_record(&msg)).await;
                            self.last_id = id;
                            result?;
                        }
                        Err(KafkaError::PartitionEOF(partition)) => self.on_eof(partition).await?,
                        Err(e) => tracing::warn!(error = %e, "consumer error; librdkafka retries by itself"),
                    }
                }
            }
        }
        self.flush_all(Event::Shutdown).await
    }

    async fn on_record(&mut self, id: &(String, i32), record: Record) -> Result<(), SinkError> {
        let offset = record.offset;
        if !self.chains.contains_key(id) {
            if self.opts.once || self.report.refused.contains(&format!("{}/{}", id.0, id.1)) {
                return Ok(());
            }
            // The group just handed this partition over: the archive says where it continues.
            let opened = match self.open_chain(&id.0, id.1).await {
                Err(SinkError::Flush(e)) if e.is_transient() => {
                    // The archive cannot say where this partition continues yet: read this record
                    // again once the store answers.
                    tracing::warn!(topic = id.0, partition = id.1, error = %e, "cannot resume the partition from the archive yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return self.seek(id, offset);
                }
                other => other?,
            };
            let Some((chain, _)) = opened else {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&id.0, id.1);
                let _ = self.consumer.pause(&tpl);
                return Ok(());
            };
            self.seen.insert(id.clone());
            self.chains.insert(id.clone(), chain);
        }
        let chain = self.chains.get_mut(id).expect("chain exists");
        let repositions = chain.repositions();
        let ticket = match chain.admit(offset) {
            Admission::Skip => return Ok(()),
            Admission::Reposition => return self.apply_seek(id),
            Admission::Keep(ticket) => ticket,
        };
        let bucket = HourBucket::of_millis(record.timestamp.unwrap_or_else(now_millis));
        let before_append = Event::BeforeAppend { bucket };
        if chain
            .should_roll(&self.opts.policy, before_append)
            .is_some()
        {
            self.roll(id, before_append).await?;
            self.defer_if_open(id, ticket)?;
        }
        let shapes = match self.opts.decoders.clone() {
            Some(decoders) if decoders.decodes(&id.0) => {
                Some(decoders.shapes(&id.0, &record).await)
            }
            _ => None,
        };
        if let Some(shapes) = &shapes {
            let admits = self.chains.get(id).is_none_or(|c| c.admits_shapes(shapes));
            if !admits && self.schema_roll_allowed(id) {
                // A field changed type: the records before are one file, typed as they were.
                self.roll(id, Event::SchemaChange).await?;
                self.defer_if_open(id, ticket)?;
            }
        }
        let cost = |sink: &Self| {
            sink.chains
                .get(id)
                .map_or(record.size(), |c| c.push_cost(&record))
        };
        if self.buffered() + cost(self) > self.record_budget() {
            self.relieve_memory().await?;
            // A record larger than what is free is still taken when nothing else is buffered.
            if self.buffered() > 0 && self.buffered() + cost(self) > self.record_budget() {
                // Still no room (the store is down): Kafka delivers it again from this offset once
                // consumption resumes.
                if let Some(chain) = self.chains.get_mut(id) {
                    chain.defer(ticket);
                }
                return self.apply_seek(id);
            }
        }
        let Some(chain) = self.chains.get_mut(id) else {
            return Ok(());
        };
        let before = chain.buffered_bytes();
        // The clock is read only when the record opens a file (it was 5 % of the CPU per record).
        let now = if chain.open_file().is_none() {
            self.started.elapsed().as_millis() as u64
        } else {
            0
        };
        if !chain.push(ticket, record, bucket, now) {
            // A flush on the way repositioned the chain (an adopted file, another worker's
            // checkpoint, a record deferred): the consumer reads again from there.
            return self.apply_seek(id);
        }
        if let Some(shapes) = &shapes {
            chain.join_shapes(shapes);
        }
        self.buffered = self.buffered - before + chain.buffered_bytes();
        self.report.peak_buffered = self.report.peak_buffered.max(self.buffered);
        if chain
            .should_roll(&self.opts.policy, Event::AfterAppend)
            .is_some()
        {
            self.roll(id, Event::AfterAppend).await?;
        } else {
            self.fly_largest();
        }
        if self.targets.get(id).is_some_and(|high| offset + 1 >= *high) {
            self.reached_target(id, repositions).await?;
        }
        Ok(())
    }

    /// Whether a schema change may close `id`'s open file now: a few at once, then one a minute.
    /// Records of schemas that alternate (two event types sharing a field name, a rolling deploy)
    /// would otherwise make a file of each record; beyond the rate they join the open file, and
    /// those whose fields changed type are archived without typed values (`incompatible`).
    fn schema_roll_allowed(&mut self, id: &(String, i32)) -> bool {
        const BURST: f64 = 3.0;
        const REFILL_MS: f64 = 60_000.0;
        let now = self.started.elapsed().as_millis() as u64;
        let (tokens, at) = self.schema_rolls.entry(id.clone()).or_insert((BURST, now));
        *tokens = (*tokens + now.saturating_sub(*at) as f64 / REFILL_MS).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            tracing::debug!(
                topic = id.0,
                partition = id.1,
                "schema changes faster than files may roll; the record joins the open file untyped"
            );
            false
        }
    }

    async fn on_eof(&mut self, partition: i32) -> Result<(), SinkError> {
        // EOF carries only the partition number; in snapshot mode every target of that number whose
        // consumer position reached the end is done (read_committed stops at the last stable offset).
        if !self.opts.once {
            return Ok(());
        }
        let done: Vec<(String, i32)> = self
            .targets
            .keys()
            .filter(|(_, p)| *p == partition)
            .cloned()
            .collect();
        let position = self.consumer.position().map_err(|e| self.kafka_err(e))?;
        for id in done {
            let reached = position
                .find_partition(&id.0, id.1)
                .and_then(|e| e.offset().to_raw())
                .is_some_and(|pos| pos >= *self.targets.get(&id).unwrap_or(&i64::MAX));
            if reached {
                let repositions = self.chains.get(&id).map_or(0, PartitionChain::repositions);
                self.reached_target(&id, repositions).await?;
            }
        }
        Ok(())
    }

    /// Snapshot mode: a partition is complete: stop reading it, and make it durable together with
    /// others that completed meanwhile (their flushes overlap), once enough of them wait, nothing
    /// is left to read, or at the next tick. `repositions` is the chain's reposition count from
    /// before the record that completed it.
    async fn reached_target(
        &mut self,
        id: &(String, i32),
        repositions: u64,
    ) -> Result<(), SinkError> {
        if !self.targets.contains_key(id) || self.reached.iter().any(|(r, _)| r == id) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&id.0, id.1);
        self.consumer.pause(&tpl).map_err(|e| self.kafka_err(e))?;
        self.reached.push((id.clone(), repositions));
        if self.reached.len() >= REACHED_BATCH {
            self.settle_reached().await?;
        }
        Ok(())
    }

    /// Snapshot mode: flush the partitions that reached their targets, then stop reading them,
    /// except any that a flush since moved short of its target, which read on, and any whose
    /// records could not be made durable yet (the store is away), which wait for the next try.
    async fn settle_reached(&mut self) -> Result<(), SinkError> {
        self.land_all().await?;
        let waiting = std::mem::take(&mut self.reached);
        let ids: Vec<(String, i32)> = waiting.iter().map(|(id, _)| id.clone()).collect();
        self.flush_many(ids, Event::TargetReached).await?;
        let (mut done, mut again) = (TopicPartitionList::new(), TopicPartitionList::new());
        for (id, repositions) in waiting {
            let Some(&high) = self.targets.get(&id) else {
                continue;
            };
            let Some(chain) = self.chains.get(&id) else {
                // Forgotten (no longer assigned): nothing to wait for.
                self.targets.remove(&id);
                continue;
            };
            if chain.unflushed() {
                self.reached.push((id, repositions));
            } else if chain.repositions() != repositions && chain.expected_next() < high {
                // A flush moved the chain short of the target (it adopted a shorter file, another
                // worker's checkpoint or gap moved it, records went back to be read again): keep
                // reading to the target.
                again.add_partition(&id.0, id.1);
            } else {
                self.targets.remove(&id);
                done.add_partition(&id.0, id.1);
            }
        }
        // Under memory pressure every partition stays paused; relieving memory resumes these.
        if again.count() > 0 && !self.paused {
            self.consumer
                .resume(&again)
                .map_err(|e| self.kafka_err(e))?;
        }
        if done.count() > 0 {
            self.consumer
                .incremental_unassign(&done)
                .map_err(|e| self.kafka_err(e))?;
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<(), SinkError> {
        let tick = Event::Tick {
            now_ms: self.now_ms(),
        };
        let due: Vec<(String, i32)> = self
            .chains
            .iter()
            .filter(|(_, c)| {
                !c.in_flight()
                    && (c.sealed_waiting() || c.should_roll(&self.opts.policy, tick).is_some())
            })
            .map(|(id, _)| id.clone())
            .collect();
        // Together, so that their uploads overlap: with many partitions, files of the same age fall
        // due on the same tick.
        self.flush_many(due, tick).await?;
        if !self.reached.is_empty() {
            self.settle_reached().await?;
        }
        if self.paused {
            self.relieve_memory().await?;
        }
        self.observe();
        Ok(())
    }

    /// Hand over partitions the group moved to another worker: flush what is buffered for them
    /// (the create-only put makes racing the new owner safe: whoever is second adopts the other's
    /// file), then forget them. What cannot be flushed now (the store is away) is dropped; the new
    /// owner reads it again from the archive's end, so nothing is lost.
    async fn release_revoked(&mut self) -> Result<(), SinkError> {
        let any = !self
            .consumer
            .context()
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if any {
            // Uploads on their way land first (those of revoked partitions as revocations).
            self.land_all().await?;
        }
        let revoked: Vec<(String, i32)> = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if revoked.is_empty() {
            return Ok(());
        }
        let owned: Vec<(String, i32)> = revoked
            .into_iter()
            .filter(|id| self.chains.contains_key(id))
            .collect();
        self.flush_many(owned.clone(), Event::Revoked).await?;
        for id in owned {
            if let Some(chain) = self.chains.remove(&id) {
                self.buffered -= chain.buffered_bytes();
                tracing::info!(
                    topic = id.0,
                    partition = id.1,
                    archived_end = chain.end,
                    dropped_records = chain.buffered_records(),
                    "partition revoked"
                );
            }
        }
        Ok(())
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// A consumed message as an archive record.
pub fn to_record(msg: &BorrowedMessage<'_>) -> Record {
    let (timestamp, timestamp_type) = match msg.timestamp() {
        Timestamp::NotAvailable => (None, None),
        Timestamp::CreateTime(t) => (Some(t), Some(TimestampType::Create)),
        Timestamp::LogAppendTime(t) => (Some(t), Some(TimestampType::LogAppend)),
    };
    let headers = msg
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header {
                    key: h.key.to_string(),
                    value: h.value.map(<[u8]>::to_vec),
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        offset: msg.offset(),
        timestamp,
        timestamp_type,
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        headers,
    }
}
