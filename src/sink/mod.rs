//! The continuous backup sink: consume every selected partition → buffer → encode Parquet → put the
//! file → advance the checkpoint → commit to Kafka.
//!
//! Invariant: the archive, not Kafka, decides where a partition resumes. Every partition starts at
//! its chain's end as the archive records it, so restarts and crashes converge on one chain with no
//! record lost or archived twice; Kafka commits exist for lag monitoring only.

mod groups;
pub mod ownership;
mod partition;
mod upload;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientConfig, Message, Offset, Timestamp, TopicPartitionList};
use regex::Regex;
use rustc_hash::FxHashMap;

pub use partition::{Admission, FlushError, Flushed, PartitionChain, Ticket};

use crate::archive::documents::{self, ArchiveError, Gap, TopicMeta};
use crate::archive::rotation::{Event, RollReason, RollingPolicy};
use crate::archive::time::{rfc3339_millis, HourBucket};
use crate::archive::{Header, Record, TimestampType};
use crate::storage::ObjectStore;

use partition::now_millis;

/// What a sink does, beyond where it reads and writes.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Topics to back up (matched against the whole name).
    pub topics: Regex,
    /// Topics to leave out, even when `topics` matches.
    pub exclude: Option<Regex>,
    /// Consumer group the sink commits to (lag monitoring only); `None`: the archive's own,
    /// `rewind-sink-<archive id>` (see [`ownership`]).
    pub group: Option<String>,
    /// Snapshot mode: archive up to the high watermarks seen at start, then stop.
    pub once: bool,
    pub policy: RollingPolicy,
    /// Total bytes buffered across all partitions before the largest buffers are flushed early.
    pub buffer_budget: u64,
    /// Files larger than this go up as multipart uploads of parts this size.
    pub part_size: usize,
    /// How often new topics and partitions are looked for.
    pub discovery_interval: Duration,
    /// Accept an archive written from another Kafka cluster.
    pub allow_cluster_change: bool,
    /// How long a graceful stop may take to flush.
    pub drain_timeout: Duration,
    /// Print a status line to stderr every 10 seconds (for a terminal).
    pub progress: bool,
    /// How often consumer-group offsets are snapshotted into `_groups/` (zero: never). Snapshot
    /// mode takes one snapshot at the end.
    pub group_snapshot_interval: Duration,
    /// Where the service's API reads this run's partitions, lag and totals.
    pub live: Option<Arc<crate::live::Live>>,
    /// The cluster answers the admin API, so each topic's dynamic configs (DescribeConfigs) go
    /// into `_topics/` and restores can create targets like the source. Off for a cluster whose
    /// admin requests cannot succeed: the demo's embedded Kafka, and Amazon MSK IAM (rust-rdkafka's
    /// admin client cannot refresh OAUTHBEARER tokens, rust-rdkafka#757); `_topics/` then keeps
    /// partition count and replication only.
    pub admin_api: bool,
}

/// Why the sink stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("kafka {servers}: {message}")]
    Kafka { servers: String, message: String },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error(transparent)]
    Store(#[from] crate::storage::ProbeError),
    #[error("kafka: could not seek {topic}/{partition} to offset {offset}: {message}; the sink stops rather than read past records it has not archived")]
    Seek {
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },
    #[error("no topic matches --topics {0:?} (after --exclude); nothing to back up")]
    NoTopics(String),
    #[error("consumer group {:?} holds the commits of another archive ({}), not of {url} (archive {id}); sinks of two archives in one group split the partitions and leave both incomplete: pass a --group of this archive's own (without --group the sink uses rewind-sink-{id})", .foreign.group, other_archive(.foreign))]
    GroupOfOtherArchive {
        foreign: ownership::Foreign,
        url: String,
        id: String,
    },
    #[error("{} partition(s) were not backed up because their offsets went backwards (topic deleted and recreated?): {}; the archived chains are untouched — move them aside (data/topic=<t>/, _checkpoints/<t>/, _claims/<t>/, _gaps/<t>/) or back up into a new archive", .0.len(), .0.join(", "))]
    OffsetsWentBackwards(Vec<String>),
}

/// Totals of one sink run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkReport {
    pub partitions: usize,
    pub records: u64,
    pub bytes: u64,
    pub files: u64,
    pub adopted_files: u64,
    pub gaps: u64,
    /// Most record bytes buffered at once across all partitions.
    pub peak_buffered: u64,
    /// Times the broker was asked for a partition's log start before a file with offset jumps
    /// was made durable (at most one per file, never one per jump).
    pub log_start_queries: u64,
    /// Partitions refused because their log ends before the archived chain (`topic/partition`).
    pub refused: Vec<String>,
}

fn other_archive(foreign: &ownership::Foreign) -> String {
    if foreign.other_url.is_empty() {
        format!("archive {}", foreign.other_id)
    } else {
        format!("archive {} at {}", foreign.other_id, foreign.other_url)
    }
}

/// Kafka's internal topics start with `__`; Rewind never backs up its own or the broker's internals.
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

impl SinkOptions {
    /// Options from the configuration's `[sink]` section (or a sink pipeline's); `once`,
    /// `allow_cluster_change`, `progress` and `live` are the caller's to set.
    pub fn from_config(
        s: &crate::config::SinkConfig,
        part_size: u64,
    ) -> Result<SinkOptions, String> {
        let regex = |key: &str, pattern: &str| {
            topic_regex(pattern).map_err(|e| {
                format!("sink.{key} {pattern:?} is not a valid regular expression: {e}")
            })
        };
        Ok(SinkOptions {
            topics: regex("topics", &s.topics)?,
            exclude: s
                .exclude
                .as_deref()
                .map(|p| regex("exclude", p))
                .transpose()?,
            group: s.group.clone(),
            once: false,
            policy: RollingPolicy {
                max_records: s.max_file_records,
                max_bytes: s.max_file_bytes.bytes(),
                max_age: s.max_file_age,
            },
            buffer_budget: s.buffer_budget.bytes(),
            part_size: part_size as usize,
            discovery_interval: s.discovery_interval,
            allow_cluster_change: false,
            drain_timeout: s.drain_timeout,
            progress: false,
            group_snapshot_interval: s.group_snapshot_interval,
            live: None,
            admin_api: true,
        })
    }

    /// Whether a topic is selected.
    pub fn selects(&self, topic: &str) -> bool {
        !is_internal(topic)
            && self.topics.is_match(topic)
            && !self.exclude.as_ref().is_some_and(|e| e.is_match(topic))
    }
}

/// Compile a user regex so that it has to match the whole topic name.
pub fn topic_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// Partitions the group took away from this worker, noted by the rebalance callback and released by
/// the main loop, which flushes what it buffered for them (see `release_revoked`).
#[derive(Default)]
struct SinkContext {
    revoked: std::sync::Mutex<Vec<(String, i32)>>,
    /// Last stable offset of each partition, from librdkafka's periodic statistics (for lag).
    log_end: std::sync::Mutex<HashMap<(String, i32), i64>>,
}

impl rdkafka::client::ClientContext for SinkContext {
    crate::kafka::answer_oauth_token_refresh!();

    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is how a snapshot knows it is done, not an error.
        if matches!(
            error,
            KafkaError::Global(RDKafkaErrorCode::PartitionEOF) | KafkaError::PartitionEOF(_)
        ) {
            tracing::debug!(reason, "librdkafka: end of partition");
            return;
        }
        tracing::error!(error = %error, reason, "librdkafka error");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = self.log_end.lock().unwrap_or_else(|e| e.into_inner());
        for (name, topic) in statistics.topics {
            for (id, partition) in topic.partitions {
                if id >= 0 && partition.ls_offset >= 0 {
                    ends.insert((name.clone(), id), partition.ls_offset);
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for SinkContext {
    fn pre_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            revoked.extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition())),
            );
        }
    }
}

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
    report: SinkReport,
    started: Instant,
    /// Continuous mode: the topics currently subscribed to.
    subscribed: Vec<String>,
    /// The partitions known to have a checkpoint (see `announce`).
    announced: std::collections::HashSet<(String, i32)>,
    /// Every partition this worker handled, for the report.
    seen: std::collections::HashSet<(String, i32)>,
    /// When the last status line was printed, and the totals then.
    last_status: (u64, u64, u64),
    /// The store is failing transiently: no flush is tried before this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Consumption is paused because the buffer budget is used up and flushing cannot relieve it.
    paused: bool,
    /// Sum of every chain's buffered bytes, kept current so the hot path never adds them up.
    buffered: u64,
}

/// Run the sink until it is told to stop (`stop` resolves) or, in snapshot mode, until every
/// partition reached its target.
pub async fn run(
    client: ClientConfig,
    store: Arc<dyn ObjectStore>,
    opts: SinkOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<SinkReport, SinkError> {
    let servers = client
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_string();
    let kafka_err = |e: KafkaError| SinkError::Kafka {
        servers: servers.clone(),
        message: e.to_string(),
    };
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
    // known once the archive's identity is.
    let consumer: StreamConsumer<SinkContext> = client
        .create_with_context(SinkContext::default())
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
    // that fetches the first token, without which no connection is made. Nothing is subscribed
    // yet, so no record can come back.
    let _ = futures::FutureExt::now_or_never(consumer.recv());
    // A metadata request first: it connects at once, whereas asking for the cluster id alone on a
    // fresh client waits for librdkafka's first periodic refresh (a second of every start).
    let probe = consumer
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .ok()
        .and_then(|_| consumer.client().fetch_cluster_id(Duration::from_secs(10)));
    let cluster_id = match probe {
        Some(id) => id,
        None => {
            return Err(SinkError::Kafka {
                servers: servers.clone(),
                message: "no broker answered within 10s (check --bootstrap-servers and that the cluster is up)".into(),
            })
        }
    };
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
        report: SinkReport::default(),
        started: Instant::now(),
        subscribed: Vec::new(),
        seen: Default::default(),
        announced: Default::default(),
        last_status: (0, 0, 0),
        retry_at: None,
        backoff: Duration::from_secs(1),
        paused: false,
        buffered: 0,
    };
    sink.discover().await?;
    if sink.chains.is_empty() && opts.once {
        if !sink.report.refused.is_empty() {
            return Err(SinkError::OffsetsWentBackwards(sink.report.refused));
        }
        return Err(SinkError::NoTopics(opts.topics.as_str().to_string()));
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
    sink.report.partitions = sink.seen.len();
    if !sink.report.refused.is_empty() {
        return Err(SinkError::OffsetsWentBackwards(sink.report.refused));
    }
    Ok(sink.report)
}

impl Sink<'_> {
    fn kafka_err(&self, e: KafkaError) -> SinkError {
        SinkError::Kafka {
            servers: self.servers.clone(),
            message: e.to_string(),
        }
    }

    /// Find the selected topics. Snapshot mode assigns their partitions directly, each from its
    /// chain's end; continuous mode subscribes the group to them, and partitions are resumed from
    /// the archive as the group hands them over.
    async fn discover(&mut self) -> Result<(), SinkError> {
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
        let mut added = TopicPartitionList::new();
        for id in partitions {
            if self.chains.contains_key(&id) {
                continue;
            }
            let Some((mut chain, high)) = self.open_chain(&id.0, id.1).await? else {
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
        if added.count() > 0 {
            self.consumer
                .incremental_assign(&added)
                .map_err(|e| self.kafka_err(e))?;
        }
        Ok(())
    }

    /// Refuse a group whose commits on the selected partitions belong to another archive: its
    /// members would split the partitions with this sink (see [`ownership`]).
    fn check_group(&self, partitions: &[(String, i32)]) -> Result<(), SinkError> {
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
    async fn announce(&mut self, partitions: &[(String, i32)]) -> Result<(), SinkError> {
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
        for id in new {
            let key = crate::archive::paths::checkpoint_key(&id.0, id.1);
            if !stored.contains(&key) && !self.chains.contains_key(id) {
                let (low, _) = self
                    .offsets
                    .fetch_watermarks(&id.0, id.1, Duration::from_secs(30))
                    .map_err(|e| self.kafka_err(e))?;
                PartitionChain::resume(self.store, &id.0, id.1, low).await?;
            }
            self.announced.insert(id.clone());
        }
        Ok(())
    }

    /// Resume one partition's chain from the archive, checked against the partition's log: a hole
    /// (records deleted before they were archived) is recorded, and a log that ends before the chain
    /// (offsets went backwards) is refused. Returns the chain and the high watermark.
    async fn open_chain(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<(PartitionChain, i64)>, SinkError> {
        let (low, high) = self
            .offsets
            .fetch_watermarks(topic, partition, Duration::from_secs(30))
            .map_err(|e| self.kafka_err(e))?;
        let mut chain = PartitionChain::resume(self.store, topic, partition, low).await?;
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
    fn report_gaps(&mut self, gaps: &[Gap]) {
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

    async fn write_topic_meta(
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

    async fn consume(
        &mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), SinkError> {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_discovery = Instant::now();
        loop {
            if self.opts.once && self.targets.is_empty() {
                break;
            }
            self.release_revoked().await?;
            tokio::select! {
                _ = &mut stop => {
                    tracing::info!("stopping: flushing every buffered record");
                    break;
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
                            let (topic, partition, record) = to_record(&msg);
                            self.on_record(topic, partition, record).await?;
                        }
                        Err(KafkaError::PartitionEOF(partition)) => self.on_eof(partition).await?,
                        Err(e) => tracing::warn!(error = %e, "consumer error; librdkafka retries by itself"),
                    }
                }
            }
        }
        self.flush_all(RollReason::Shutdown).await
    }

    async fn on_record(
        &mut self,
        topic: String,
        partition: i32,
        record: Record,
    ) -> Result<(), SinkError> {
        let id = (topic, partition);
        let offset = record.offset;
        if !self.chains.contains_key(&id) {
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
                    return self.seek(&id, offset);
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
        let chain = self.chains.get_mut(&id).expect("chain exists");
        let ticket = match chain.admit(offset) {
            Admission::Skip => return Ok(()),
            Admission::Reposition => return self.apply_seek(&id),
            Admission::Keep(ticket) => ticket,
        };
        let bucket = HourBucket::of_millis(record.timestamp.unwrap_or_else(now_millis));
        if let Some(reason) = chain.should_roll(&self.opts.policy, Event::BeforeAppend { bucket }) {
            self.flush(&id, reason).await?;
            self.defer_if_open(&id, ticket)?;
        }
        let cost = |sink: &Self| {
            sink.chains
                .get(&id)
                .map_or(record.size(), |c| c.push_cost(&record))
        };
        if self.buffered() + cost(self) > self.record_budget() {
            self.relieve_memory().await?;
            // A record larger than what is free is still taken when nothing else is buffered.
            if self.buffered() > 0 && self.buffered() + cost(self) > self.record_budget() {
                // Still no room (the store is down): Kafka delivers it again from this offset once
                // consumption resumes.
                if let Some(chain) = self.chains.get_mut(&id) {
                    chain.defer(ticket);
                }
                return self.apply_seek(&id);
            }
        }
        let Some(chain) = self.chains.get_mut(&id) else {
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
            return self.apply_seek(&id);
        }
        self.buffered = self.buffered - before + chain.buffered_bytes();
        self.report.peak_buffered = self.report.peak_buffered.max(self.buffered);
        if let Some(reason) = chain.should_roll(&self.opts.policy, Event::AfterAppend) {
            self.flush(&id, reason).await?;
        }
        if self
            .targets
            .get(&id)
            .is_some_and(|high| offset + 1 >= *high)
        {
            self.reached_target(&id).await?;
        }
        Ok(())
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
                self.reached_target(&id).await?;
            }
        }
        Ok(())
    }

    /// Snapshot mode: a partition is complete; make it durable and stop reading it.
    async fn reached_target(&mut self, id: &(String, i32)) -> Result<(), SinkError> {
        let Some(high) = self.targets.remove(id) else {
            return Ok(());
        };
        let repositions = self.chains.get(id).map(PartitionChain::repositions);
        self.flush(id, RollReason::Shutdown).await?;
        let rewound = self
            .chains
            .get(id)
            .is_some_and(|c| Some(c.repositions()) != repositions && c.expected_next() < high);
        if rewound {
            // The flush moved the chain short of the target (it adopted a shorter file, another
            // worker's checkpoint or gap moved it, records went back to be read again): keep
            // reading to the target.
            self.targets.insert(id.clone(), high);
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&id.0, id.1);
        self.consumer
            .incremental_unassign(&tpl)
            .map_err(|e| self.kafka_err(e))?;
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<(), SinkError> {
        let now = self.now_ms();
        let due: Vec<(String, i32)> = self
            .chains
            .iter()
            .filter(|(_, c)| {
                c.should_roll(&self.opts.policy, Event::Tick { now_ms: now })
                    .is_some()
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.flush(&id, RollReason::Age).await?;
        }
        if self.paused {
            self.relieve_memory().await?;
        }
        self.observe();
        Ok(())
    }

    /// Update the gauges (buffer, lag, recovery point age per topic) and, every 10 seconds, print
    /// the status line when asked to.
    fn observe(&mut self) {
        let now = self.now_ms();
        metrics::gauge!(crate::metrics::SINK_BUFFERED_BYTES).set(self.buffered() as f64);
        let ends = self
            .consumer
            .context()
            .log_end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut per_topic: BTreeMap<&str, (i64, u64)> = BTreeMap::new();
        for ((topic, partition), chain) in &self.chains {
            let entry = per_topic.entry(topic.as_str()).or_default();
            if let Some(end) = ends.get(&(topic.clone(), *partition)) {
                entry.0 += (end - chain.end).max(0);
            }
            if let Some(open) = chain.open_file() {
                entry.1 = entry.1.max(now.saturating_sub(open.opened_at_ms));
            }
        }
        if let Some(live) = &self.opts.live {
            let mut partitions: Vec<crate::live::LivePartition> = self
                .chains
                .iter()
                .map(|((topic, partition), chain)| {
                    let end = ends.get(&(topic.clone(), *partition)).copied();
                    crate::live::LivePartition {
                        topic: topic.clone(),
                        partition: *partition,
                        target_topic: None,
                        position: chain.end,
                        end,
                        lag: end.map(|end| (end - chain.end).max(0)),
                    }
                })
                .collect();
            partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            let report = &self.report;
            live.update(|status| {
                status.lag_records = partitions.iter().map(|p| p.lag).sum();
                status.partitions = partitions;
                status.recovery_point_age_seconds = Some(
                    per_topic.values().map(|(_, age)| *age).max().unwrap_or(0) as f64 / 1000.0,
                );
                status.records = report.records;
                status.bytes = report.bytes;
                status.files = Some(report.files);
            });
        }
        let mut total_lag = 0;
        for (topic, (lag, age_ms)) in &per_topic {
            total_lag += lag;
            metrics::gauge!(crate::metrics::SINK_LAG, "topic" => topic.to_string())
                .set(*lag as f64);
            metrics::gauge!(crate::metrics::SINK_RECOVERY_POINT_AGE, "topic" => topic.to_string())
                .set(*age_ms as f64 / 1000.0);
        }
        if self.opts.progress && now.saturating_sub(self.last_status.0) >= 10_000 {
            let (at, records, bytes) = self.last_status;
            let secs = (now.saturating_sub(at)).max(1) as f64 / 1000.0;
            eprintln!(
                "sink: {} partitions, {:.0} records/s, {:.1} MB/s, lag {} records, buffer {:.1}/{:.0} MiB, {} files",
                self.chains.len(),
                (self.report.records - records) as f64 / secs,
                (self.report.bytes - bytes) as f64 / secs / 1e6,
                total_lag,
                self.buffered() as f64 / 1048576.0,
                self.opts.buffer_budget as f64 / 1048576.0,
                self.report.files,
            );
            self.last_status = (now, self.report.records, self.report.bytes);
        }
    }

    /// After a flush that had to happen before `offset` could be buffered: if the file is still open
    /// (the store is down), the record must not join it (bucket rule), so the chain repositions to
    /// read it again later.
    fn defer_if_open(&mut self, id: &(String, i32), ticket: Ticket) -> Result<(), SinkError> {
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
    fn apply_seek(&mut self, id: &(String, i32)) -> Result<(), SinkError> {
        let Some(to) = self.chains.get_mut(id).and_then(|c| c.take_seek()) else {
            return Ok(());
        };
        self.seek(id, to)
    }

    fn seek(&mut self, id: &(String, i32), offset: i64) -> Result<(), SinkError> {
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

    /// Hand over partitions the group moved to another worker: flush what is buffered for them
    /// (the create-only put makes racing the new owner safe: whoever is second adopts the other's
    /// file), then forget them. What cannot be flushed now (the store is away) is dropped; the new
    /// owner reads it again from the archive's end, so nothing is lost.
    async fn release_revoked(&mut self) -> Result<(), SinkError> {
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
        self.flush_many(owned.clone(), RollReason::Revoked).await?;
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

    fn buffered(&self) -> u64 {
        self.buffered
    }

    /// What buffered records may occupy: the budget less librdkafka's prefetch queue.
    fn record_budget(&self) -> u64 {
        self.opts
            .buffer_budget
            .saturating_sub(prefetch_bytes(self.opts.buffer_budget))
    }

    /// Over budget: flush the largest buffers until the total is back under half the budget.
    async fn relieve_memory(&mut self) -> Result<(), SinkError> {
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
        self.flush_many(largest, RollReason::MemoryPressure).await?;
        let over = self.buffered() > self.record_budget() / 2;
        if over != self.paused {
            // The store is not keeping up: stop fetching until uploads catch up.
            let assignment = self.consumer.assignment().map_err(|e| self.kafka_err(e))?;
            let result = if over {
                self.consumer.pause(&assignment)
            } else {
                self.consumer.resume(&assignment)
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
    async fn flush_all(&mut self, reason: RollReason) -> Result<(), SinkError> {
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at.into()).await;
            }
            let ids: Vec<(String, i32)> = self.chains.keys().cloned().collect();
            self.flush_many(ids, reason).await?;
            if self.buffered() == 0 && self.chains.values().all(|c| c.open_file().is_none()) {
                return Ok(());
            }
        }
    }

    /// Make one partition's buffer durable, then commit its position to Kafka for lag monitoring.
    async fn flush(&mut self, id: &(String, i32), reason: RollReason) -> Result<(), SinkError> {
        self.flush_many(vec![id.clone()], reason).await
    }

    /// Flush several partitions, a few at a time concurrently: encoding runs on the blocking pool
    /// and uploads overlap, so a batch takes about as long as its largest file. A batch has one
    /// flush per core, and up to 16 while its files together stay under one upload part (many small
    /// files are bound by store round trips, not by CPU or memory).
    async fn flush_many(
        &mut self,
        ids: Vec<(String, i32)>,
        reason: RollReason,
    ) -> Result<(), SinkError> {
        let cores = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8);
        let mut ids: Vec<(String, i32)> = ids
            .into_iter()
            .filter(|id| self.chains.get(id).is_some_and(|c| c.open_file().is_some()))
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
            // made durable (see `PartitionChain::flush_checked`); a failure to ask keeps the
            // records and tries again later, like a store that is away.
            let mut lows = Vec::with_capacity(taken.len());
            for (id, chain) in &taken {
                lows.push(match chain.first_jump() {
                    None => Ok(None),
                    Some(_) => {
                        self.report.log_start_queries += 1;
                        self.offsets
                            .fetch_watermarks(&id.0, id.1, Duration::from_secs(30))
                            .map(|(low, _)| Some(low))
                    }
                });
            }
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
            for ((id, chain), (before, took, result)) in taken.into_iter().zip(results) {
                store_away |= matches!(&result, Err(e) if e.is_transient());
                self.buffered = self.buffered - before + chain.buffered_bytes();
                self.chains.insert(id.clone(), chain);
                let result = result.map(|(files, gaps)| {
                    self.report_gaps(&gaps);
                    files
                });
                if let Err(e) = self.settle(&id, reason, took, result).await {
                    failure.get_or_insert(e);
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if !store_away {
                // Only a batch the store took whole ends the backoff.
                self.retry_at = None;
                self.backoff = Duration::from_secs(1);
            }
        }
        Ok(())
    }

    /// Account for one partition's flush: metrics and logs, reading again after an adoption, the
    /// Kafka commit (step 3 of the commit order), or the retry schedule when the store is away.
    async fn settle(
        &mut self,
        id: &(String, i32),
        reason: RollReason,
        took: Duration,
        result: Result<Vec<Flushed>, FlushError>,
    ) -> Result<(), SinkError> {
        if !self.chains.contains_key(id) {
            return Ok(());
        }
        if reason != RollReason::Revoked {
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
                tracing::warn!(topic = chain.topic, partition = chain.partition, error = %e, retry_in_s = self.backoff.as_secs(), "the archive store is unavailable; records stay buffered");
                metrics::counter!(crate::metrics::SINK_ERRORS, "kind" => "storage_unavailable")
                    .increment(1);
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
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
                metrics::counter!(crate::metrics::SINK_FILES, "topic" => topic, "reason" => reason.as_str()).increment(1);
                metrics::histogram!(crate::metrics::SINK_UPLOAD_SECONDS).record(took.as_secs_f64());
            }
            tracing::debug!(
                key = done.key,
                start = done.start,
                end = done.end,
                records = done.records,
                bytes = done.bytes,
                reason = reason.as_str(),
                upload_ms = took.as_millis() as u64,
                "file durable"
            );
        }
        if reason != RollReason::Revoked {
            // A revoked partition's position is the new owner's to commit.
            self.commit(id).await;
        }
        Ok(())
    }

    /// Step 3 of the commit order: Kafka follows the archive, for lag monitoring only.
    async fn commit(&self, id: &(String, i32)) {
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

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// The part of the buffer budget that librdkafka's prefetch queue may use: an eighth, between
/// 512 KiB and 64 MiB. Records get the rest.
fn prefetch_bytes(budget: u64) -> u64 {
    (budget / 8).clamp(512 << 10, 64 << 20)
}

/// A consumed message as an archive record, with its topic and partition.
pub fn to_record(msg: &BorrowedMessage<'_>) -> (String, i32, Record) {
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
    let record = Record {
        offset: msg.offset(),
        timestamp,
        timestamp_type,
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        headers,
    };
    (msg.topic().to_string(), msg.partition(), record)
}
