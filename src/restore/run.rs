//! The restore itself: planning across partitions, target topics, the read → produce → commit loop,
//! follow mode and group translation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};
use tokio::sync::{mpsc, Semaphore};

use super::plan::{files_in, plan_partition, PartitionPlan};
use super::progress::{self, Progress};
use super::reader::{kib, Msg, Reader, CHUNK_BYTES};
use super::{groups, limits, partitioner, visible, RestoreError, RestoreOptions, RestoreReport};
use crate::archive::chain::{self, Chain, ChainFile};
use crate::archive::datafile::Rows;
use crate::archive::documents::{self, Gap, TopicMeta};
use crate::archive::time::rfc3339_millis;
use crate::kafka::blocking;
use crate::kafka::Ctx;
use crate::storage::ObjectStore;

/// Timeout of Kafka requests that should answer at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a commit may take to deliver what is queued (a quarter of the budget) to a slow target.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a finished restore waits for `read_committed` consumers to see its records: markers
/// take seconds to minutes on topics of many partitions; longer means another producer's open
/// transaction holds them back.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The chains a restore reads and its plan for each.
#[derive(Debug, Clone)]
pub struct Planned {
    pub chains: Vec<Chain>,
    pub partitions: Vec<PartitionPlan>,
}

/// The topics a restore selects and where they go, as recorded with its progress.
fn selection(opts: &RestoreOptions) -> String {
    let mut out = format!("--topics {}", user_pattern(&opts.topics));
    for (from, to) in &opts.renames {
        out.push_str(&format!(" --rename {from}={to}"));
    }
    for (on, flag) in [
        (opts.strict, " --strict"),
        (opts.repartition_by_key, " --repartition-by-key"),
        (opts.provenance_headers, " --provenance-headers"),
        (opts.groups, " --groups"),
    ] {
        if on {
            out.push_str(flag);
        }
    }
    out
}

/// A `--topics` pattern as the user wrote it (without the anchors added to match whole names).
fn user_pattern(topics: &regex::Regex) -> &str {
    let p = topics.as_str();
    p.strip_prefix("^(?:")
        .and_then(|p| p.strip_suffix(")$"))
        .unwrap_or(p)
}

fn target_of<'a>(opts: &'a RestoreOptions, topic: &'a str) -> &'a str {
    opts.renames.get(topic).map_or(topic, String::as_str)
}

/// Load the chains of every selected partition and plan the window on each (no cluster needed).
pub async fn plan(store: &dyn ObjectStore, opts: &RestoreOptions) -> Result<Planned, RestoreError> {
    if documents::read_identity(store).await?.is_none() {
        return Err(RestoreError::NoArchive(store.url().to_string()));
    }
    let listed = chain::list_all(store)
        .await
        .map_err(|e| RestoreError::Archive(e.into()))?;
    let archived: BTreeSet<&str> = listed.keys().map(|(t, _)| t.as_str()).collect();
    let selected: Vec<_> = listed
        .iter()
        .filter(|((topic, _), _)| opts.topics.is_match(topic))
        .collect();
    if selected.is_empty() {
        return Err(RestoreError::NoTopics {
            pattern: user_pattern(&opts.topics).to_string(),
            archived: if archived.is_empty() {
                "nothing yet".into()
            } else {
                archived.into_iter().collect::<Vec<_>>().join(", ")
            },
        });
    }
    // A rename of a topic that is not restored would silently restore it under its own name (a
    // typo next to the default --topics .* fills production-named topics): refused.
    let chosen: BTreeSet<&str> = selected.iter().map(|((t, _), _)| t.as_str()).collect();
    for (from, to) in &opts.renames {
        if chosen.contains(from.as_str()) {
            continue;
        }
        let why = if archived.contains(from.as_str()) {
            format!("--topics {} does not select it", user_pattern(&opts.topics))
        } else {
            "the archive holds no such topic".to_string()
        };
        if opts.follow && !archived.contains(from.as_str()) && opts.topics.is_match(from) {
            // A standby may be set up before the topic's first file is archived.
            tracing::warn!(rename = %format!("{from}={to}"), "{why}: the rename applies only to a topic archived and selected later");
            continue;
        }
        return Err(RestoreError::Target(format!(
            "--rename {from}={to} renames nothing: {why} (it holds {})",
            archived.iter().copied().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
    for (topic, _) in selected.iter().map(|(k, _)| k) {
        let target = target_of(opts, topic);
        if let Some(other) = targets.insert(target, topic) {
            if other != topic.as_str() {
                return Err(RestoreError::Target(format!(
                    "{other} and {topic} would both be restored into {target}; rename one of them with --rename"
                )));
            }
        }
    }
    let known = BTreeMap::new();
    // The futures are collected before they are streamed, so that the stream's type holds no
    // closure over borrowed arguments (which keeps this future provably `Send` for the service).
    let loads: Vec<_> = selected
        .into_iter()
        .map(|((t, p), files)| chain::load(store, t, *p, files, &known))
        .collect();
    let mut chains: Vec<Chain> = futures::stream::iter(loads)
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let plans: Vec<_> = chains
        .iter_mut()
        .map(|chain| {
            let target = target_of(opts, &chain.topic).to_string();
            async move { plan_partition(store, chain, opts.window, &target).await }
        })
        .collect();
    let partitions: Vec<PartitionPlan> = futures::stream::iter(plans)
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(Planned { chains, partitions })
}

/// Delivery reports: where the records watched for group translation landed, and the first failure.
#[derive(Default)]
struct Deliveries {
    landed: Mutex<HashMap<usize, i64>>,
    failure: Mutex<Option<String>>,
    /// The failure held is only a purge, which a refusal reported later replaces.
    purged_first: AtomicBool,
}

impl Deliveries {
    /// The first delivery failure since the last call, if any.
    fn take_failure(&self) -> Option<String> {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        self.purged_first.store(false, Relaxed);
        failure.take()
    }
}

impl ClientContext for Deliveries {
    crate::kafka::answer_oauth_token_refresh!();
}

impl ProducerContext for Deliveries {
    /// 0 for most records; a watch slot for the first record at or after a group's offset.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        match result {
            Ok(message) if slot != 0 => {
                self.landed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(slot, message.offset());
            }
            Ok(_) => {}
            Err((error, message)) => {
                // Once a record is refused, librdkafka purges the rest of the transaction, and
                // those purges may be reported first: the refusal is the failure to name.
                let purged = matches!(
                    error.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                );
                let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
                if failure.is_none() || (!purged && self.purged_first.swap(false, Relaxed)) {
                    self.purged_first.store(purged, Relaxed);
                    let hint = if error.rdkafka_error_code()
                        == Some(RDKafkaErrorCode::MessageSizeTooLarge)
                    {
                        format!(
                            " (a record of {} bytes is larger than the topic accepts: raise its max.message.bytes)",
                            message.payload_len()
                        )
                    } else {
                        String::new()
                    };
                    *failure = Some(format!(
                        "producing to {} partition {} failed: {error}{hint}",
                        message.topic(),
                        message.partition()
                    ));
                }
            }
        }
    }
}

/// One partition being restored.
struct Lane {
    topic: String,
    partition: i32,
    target_topic: String,
    start: i64,
    /// Planned end; `None` in follow mode (the chain's end, which grows).
    end: Option<i64>,
    /// Every source offset before this one is committed in the target.
    next: i64,
    /// `next` when this run took the lane up (for the progress line).
    run_from: i64,
    /// Where the chain currently ends.
    chain_end: i64,
    files: Vec<ChainFile>,
    /// Groups still to translate: (committed source offset, group), sorted.
    watches: Vec<(i64, String)>,
    resolved: BTreeMap<String, i64>,
    /// Watch slots sent in the open transaction.
    pending: Vec<(usize, Vec<String>)>,
    /// Progress changed since the last commit.
    dirty: bool,
}

impl Lane {
    fn until(&self) -> i64 {
        self.end.unwrap_or(self.chain_end).min(self.chain_end)
    }

    fn progress(&self, opts: &RestoreOptions, groups_as_of: Option<i64>) -> Progress {
        Progress {
            restore_id: opts.restore_id.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            target_topic: self.target_topic.clone(),
            window: opts.window.describe(),
            selection: selection(opts),
            follow: opts.follow,
            start: self.start,
            end: self.end,
            next: self.next,
            groups: self.resolved.clone(),
            groups_as_of,
            updated_at: rfc3339_millis(crate::archive::time::now_ms()),
        }
    }
}

struct Restore<'a> {
    store: Arc<dyn ObjectStore>,
    opts: &'a RestoreOptions,
    client: ClientConfig,
    servers: String,
    producer: Arc<ThreadedProducer<Deliveries>>,
    lanes: Vec<Lane>,
    /// Partition count of each target topic.
    target_partitions: HashMap<String, i32>,
    report: RestoreReport,
    next_slot: usize,
    txn_open: bool,
    txn_bytes: u64,
    txn_started: Instant,
    /// Records archived with timestamp 0, which librdkafka restamps with the current time.
    zero_timestamps: u64,
    /// The progress topic does not exist yet: created with the targets, once they all passed.
    progress_missing: bool,
    /// Consumer group snapshots count as of this time (see `Progress::groups_as_of`); `None`: the
    /// window's end, or the newest snapshots in follow mode.
    groups_as_of: Option<i64>,
    /// Totals for the progress line.
    started: Instant,
    last_status: Instant,
}

/// Run a restore until its window is restored (or, in follow mode, until `stop` resolves).
pub async fn run(
    client: ClientConfig,
    store: Arc<dyn ObjectStore>,
    opts: &RestoreOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<RestoreReport, RestoreError> {
    tokio::pin!(stop);
    let planned = plan(&*store, opts).await?;
    // With a bounded --from, a partition's planned range starts at a record whose timestamp is in
    // the window, so `--strict` restores at least one record wherever this counts any (with
    // --from earliest, records without a timestamp before the first one are the exception).
    let planned_records: u64 = planned.partitions.iter().map(|p| p.records).sum();
    if planned_records == 0 && !opts.follow {
        // Nothing in the window: write nothing at all, not even the progress topic.
        if let Some(live) = &opts.live {
            live.update(|status| {
                status.planned_records = Some(0);
                status.finished = Some(true);
            });
        }
        return Ok(RestoreReport {
            restore_id: opts.restore_id.clone(),
            partitions: planned.partitions.len(),
            ..RestoreReport::default()
        });
    }
    let servers = client
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_string();
    let kafka_err = |e: KafkaError| RestoreError::Kafka {
        servers: servers.clone(),
        message: e.to_string(),
    };

    // The target must answer before anything is decided.
    let probe: BaseConsumer<Ctx> = client.create_with_context(Ctx).map_err(kafka_err)?;
    crate::kafka::ready(&probe);
    let metadata = blocking({
        let probe = Arc::new(probe);
        move || probe.fetch_metadata(None, Duration::from_secs(10))
    })
    .await
    .map_err(|_| RestoreError::Kafka {
        servers: servers.clone(),
        message:
            "no broker answered within 10s (check --bootstrap-servers and that the cluster is up)"
                .into(),
    })?;
    let brokers = metadata.brokers().len() as i32;
    let existing: HashMap<String, i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect();
    // No admin client at all without the admin API: one that cannot authenticate (MSK IAM) would
    // only keep failing to connect.
    let admin: Option<AdminClient<Ctx>> = opts
        .admin_api
        .then(|| client.create_with_context(Ctx))
        .transpose()
        .map_err(kafka_err)?;

    // Missing only when the broker does not know it: a topic listed with another error (a leader
    // election, say) may hold this restore's progress, which must be read.
    let progress_missing = !metadata.topics().iter().any(|t| {
        t.name() == opts.progress_topic
            && t.error()
                != Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
    });
    if progress_missing && admin.is_none() {
        return Err(no_progress_topic(&opts.progress_topic));
    }

    // What the target takes, asked before anything is written (DescribeConfigs).
    let limits = match &admin {
        Some(admin) => {
            let mut described: BTreeSet<String> = planned
                .partitions
                .iter()
                .map(|p| p.target_topic.clone())
                .filter(|t| existing.contains_key(t))
                .collect();
            if !progress_missing {
                described.insert(opts.progress_topic.clone());
            }
            let brokers: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
            Some(
                limits::TargetLimits::describe(admin, &brokers, &described, REQUEST_TIMEOUT)
                    .await
                    .map_err(kafka_err)?,
            )
        }
        None => None,
    };
    let batch_size = match &limits {
        Some(known) => batch_size(&*store, opts, &planned, known, &existing).await?,
        // Without the admin API nothing tells the limits: librdkafka's default fits Kafka's.
        None => limits::DEFAULT_BATCH_SIZE,
    }
    .to_string();
    let transaction_timeout = transaction_timeout(&client, opts, limits.as_ref())?.to_string();

    // Fence any earlier run of this restore, then read what it committed.
    let mut producer_config = client.clone();
    producer_config.set(
        "transactional.id",
        format!("rewind-restore-{}", opts.restore_id),
    );
    let queue_kib = (opts.buffer_budget / 4 / 1024)
        .clamp(16 * 1024, 1024 * 1024)
        .to_string();
    for (key, value) in [
        // The producer's queue is a quarter of the budget (at least 16 MiB), unless given with -X.
        ("queue.buffering.max.kbytes", queue_kib.as_str()),
        // Rewind's default, or the brokers' maximum if that is lower.
        ("transaction.timeout.ms", transaction_timeout.as_str()),
        // Archived records were accepted by their source topic, whose max.message.bytes (copied to
        // a created target) may exceed librdkafka's 1 MB default: let the target broker decide.
        ("message.max.bytes", "67108864"),
        ("linger.ms", "20"),
        ("batch.size", batch_size.as_str()),
        ("batch.num.messages", "100000"),
        ("queue.buffering.max.messages", "1000000"),
    ] {
        if producer_config.get(key).is_none() {
            producer_config.set(key, value);
        }
    }
    let producer: Arc<ThreadedProducer<Deliveries>> = Arc::new(
        producer_config
            .create_with_context(Deliveries::default())
            .map_err(kafka_err)?,
    );
    blocking({
        let producer = producer.clone();
        move || producer.init_transactions(REQUEST_TIMEOUT)
    })
    .await
    .map_err(kafka_err)?;
    // Without a progress topic no run of this restore has committed anything yet; the topic is
    // created once every target passed its checks, so that a refused restore leaves nothing behind.
    let stored = if progress_missing {
        BTreeMap::new()
    } else {
        blocking({
            let (client, topic, id) = (
                client.clone(),
                opts.progress_topic.clone(),
                opts.restore_id.clone(),
            );
            move || progress::read(&client, &topic, &id, Duration::from_secs(360))
        })
        .await
        .map_err(kafka_err)?
    };

    let mut restore = Restore {
        store: store.clone(),
        opts,
        client: client.clone(),
        servers: servers.clone(),
        producer,
        lanes: Vec::new(),
        target_partitions: existing,
        report: RestoreReport {
            restore_id: opts.restore_id.clone(),
            resumed: !stored.is_empty(),
            ..RestoreReport::default()
        },
        next_slot: 1,
        txn_open: false,
        txn_bytes: 0,
        txn_started: Instant::now(),
        zero_timestamps: 0,
        progress_missing,
        groups_as_of: stored.values().next().and_then(|p| p.groups_as_of),
        started: Instant::now(),
        last_status: Instant::now(),
    };
    restore.build_lanes(planned, &stored)?;
    if opts.groups {
        // Before anything is created: an unreadable snapshot leaves the target as it was.
        restore.load_groups().await?;
    }
    // A stop asked for while planning or fencing ends the restore before it creates anything.
    if futures::FutureExt::now_or_never(stop.as_mut()).is_some() {
        restore.report.stopped = true;
        return Ok(restore.report);
    }
    let remaining: u64 = restore
        .lanes
        .iter()
        .map(|l| (l.until() - l.next).max(0) as u64)
        .sum();
    if remaining > 0 || opts.follow {
        let fresh = !restore.report.resumed;
        let targets: BTreeSet<String> = if fresh {
            restore
                .lanes
                .iter()
                .map(|l| l.target_topic.clone())
                .collect()
        } else {
            BTreeSet::new()
        };
        restore
            .ensure_targets(admin.as_ref(), brokers, &targets)
            .await?;
    }
    if !restore.report.resumed {
        // Commit the plan before the first record: from now on a rerun with this id resumes
        // (and does not take the records of an interrupted first transaction for someone else's).
        restore
            .ensure_progress_topic(admin.as_ref(), brokers)
            .await?;
        for lane in &mut restore.lanes {
            lane.dirty = true;
        }
        restore.commit().await?;
    }
    restore.report_lag();

    let stopped = restore.pass(&mut stop).await?;
    if stopped {
        restore.report.stopped = true;
        return Ok(restore.report);
    }
    if opts.groups {
        // Also on a rerun with nothing left to restore: a group skipped because it had members
        // is moved once they are gone.
        restore.commit_groups().await?;
    }
    if !opts.follow {
        // Done means readable: the commit returned before its markers reached every partition.
        restore.wait_visible(&mut stop).await?;
    }
    if opts.follow {
        restore.follow(admin.as_ref(), brokers, &mut stop).await?;
    }
    Ok(restore.report)
}

/// The producer's `transaction.timeout.ms`: as given (`-X` or the cluster's properties), which
/// must be within the brokers' `transaction.max.timeout.ms`; otherwise Rewind's default, lowered
/// to that maximum, which must stay above `restore.transaction_interval`.
fn transaction_timeout(
    client: &ClientConfig,
    opts: &RestoreOptions,
    limits: Option<&limits::TargetLimits>,
) -> Result<u64, RestoreError> {
    let given = client.get("transaction.timeout.ms");
    let timeout = match given {
        Some(value) => value.trim().parse::<u64>().map_err(|_| {
            RestoreError::Target(format!(
                "transaction.timeout.ms {value:?} is not a number of milliseconds"
            ))
        })?,
        None => crate::config::RESTORE_TRANSACTION_TIMEOUT_MS,
    };
    let Some(max) = limits.and_then(|l| l.transaction_max_timeout_ms) else {
        return Ok(timeout);
    };
    if timeout <= max {
        return Ok(timeout);
    }
    let interval = opts.transaction_interval;
    if given.is_some() {
        return Err(RestoreError::Target(format!(
            "the producer's transaction.timeout.ms of {timeout} ms is above the brokers' transaction.max.timeout.ms of {max} ms, so the brokers would refuse the restore's transactions: pass -X transaction.timeout.ms={max} or less (and above restore.transaction_interval, {}), or raise transaction.max.timeout.ms on the brokers",
            humantime::format_duration(interval)
        )));
    }
    if interval >= Duration::from_millis(max) {
        return Err(RestoreError::Target(format!(
            "the brokers' transaction.max.timeout.ms of {max} ms is not above restore.transaction_interval ({}), so every restore transaction would time out before it commits: lower restore.transaction_interval, or raise transaction.max.timeout.ms on the brokers",
            humantime::format_duration(interval)
        )));
    }
    tracing::info!(
        transaction_timeout_ms = max,
        "the brokers allow transactions of at most transaction.max.timeout.ms: the restore's transaction timeout is lowered to it"
    );
    Ok(max)
}

/// The producer's `batch.size`: below the smallest `max.message.bytes` of the topics the restore
/// writes to, as the cluster described the existing ones and as a missing one will be created
/// (the source's setting from `_topics/`, or the brokers' `message.max.bytes`).
async fn batch_size(
    store: &dyn ObjectStore,
    opts: &RestoreOptions,
    planned: &Planned,
    known: &limits::TargetLimits,
    existing: &HashMap<String, i32>,
) -> Result<u64, RestoreError> {
    let mut sources: BTreeMap<&str, Option<&str>> = planned
        .partitions
        .iter()
        .map(|p| (p.target_topic.as_str(), Some(p.topic.as_str())))
        .collect();
    sources.insert(&opts.progress_topic, None);
    let mut smallest = None;
    for (target, source) in sources {
        let max = if existing.contains_key(target) {
            known.topic_max_bytes.get(target).copied()
        } else {
            let meta: Option<TopicMeta> = match source {
                Some(source) => {
                    documents::read_doc(store, &crate::archive::paths::topic_key(source)).await?
                }
                None => None,
            };
            meta.and_then(|m| m.configs.get("max.message.bytes")?.parse().ok())
                .or(known.broker_max_bytes)
        };
        smallest = limits::smaller(smallest, max);
    }
    let size = limits::batch_size(smallest);
    tracing::debug!(
        smallest_max_message_bytes = smallest,
        batch_size = size,
        "sized producer batches to the targets"
    );
    Ok(size)
}

/// Why a restore without the admin API cannot make a topic itself.
const NO_ADMIN: &str = "this cluster's admin API is not available to Rewind (Amazon MSK IAM, or the demo's embedded Kafka), so create it first";

/// Whether a source topic config may be set on a target created from it. Not copied: replication
/// throttles (they name the source's broker ids), tiered storage (the target may not have it),
/// and configs Kafka 4 no longer knows or that only vendor brokers do (creation would fail).
fn portable_config(key: &str) -> bool {
    const SOURCE_ONLY: &[&str] = &[
        "leader.replication.throttled.replicas",
        "follower.replication.throttled.replicas",
        "remote.storage.enable",
        "remote.log.copy.disable",
        "remote.log.delete.on.disable",
        "message.format.version",
        "message.downconversion.enable",
        "message.timestamp.difference.max.ms",
        // Archived records are older than the broker would accept with it (INVALID_TIMESTAMP).
        "message.timestamp.before.max.ms",
    ];
    !SOURCE_ONLY.contains(&key) && !key.starts_with("confluent.")
}

/// A topic's configs as the broker answers them.
async fn describe_topic(
    admin: &AdminClient<Ctx>,
    topic: &str,
) -> rdkafka::error::KafkaResult<Vec<rdkafka::admin::ConfigResourceResult>> {
    admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)),
        )
        .await
}

fn no_progress_topic(topic: &str) -> RestoreError {
    RestoreError::Target(format!(
        "the progress topic {topic} does not exist in the target and {NO_ADMIN} (one partition, cleanup.policy=compact)"
    ))
}

/// Hand one record to the producer. A full local queue is backpressure, not a failure: the
/// threaded producer's poll thread makes room as deliveries are acknowledged (or, after a refusal,
/// purged), so wait a little and offer the record again.
async fn send<K, P>(
    producer: &ThreadedProducer<Deliveries>,
    mut record: BaseRecord<'_, K, P, usize>,
) -> Result<(), KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

async fn create_topic(
    admin: &AdminClient<Ctx>,
    name: &str,
    partitions: i32,
    replication: i32,
    configs: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)),
        )
        .await
        .map_err(|e| e.to_string())?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(code.to_string()),
        }
    }
    Ok(())
}

impl Restore<'_> {
    fn kafka_err(&self, e: KafkaError) -> RestoreError {
        RestoreError::Kafka {
            servers: self.servers.clone(),
            message: e.to_string(),
        }
    }

    fn interrupted(&self, message: impl ToString) -> RestoreError {
        RestoreError::Interrupted {
            id: self.opts.restore_id.clone(),
            message: message.to_string(),
        }
    }

    /// One lane per planned partition; a resumed restore keeps the ranges it was started with.
    fn build_lanes(
        &mut self,
        planned: Planned,
        stored: &BTreeMap<(String, i32), Progress>,
    ) -> Result<(), RestoreError> {
        let describe = |window: &str, selection: &str, follow: bool| {
            format!(
                "{window} {selection}{}",
                if follow { " --follow" } else { "" }
            )
        };
        let asked = describe(
            &self.opts.window.describe(),
            &selection(self.opts),
            self.opts.follow,
        );
        if let Some(p) = stored.values().next() {
            let started = describe(&p.window, &p.selection, p.follow);
            if started != asked {
                return Err(RestoreError::OtherWindow {
                    id: self.opts.restore_id.clone(),
                    stored: started,
                    asked,
                });
            }
        }
        let resumed = !stored.is_empty();
        for (chain, plan) in planned.chains.into_iter().zip(planned.partitions) {
            let key = (chain.topic.clone(), chain.partition);
            let gaps = chain.gaps.clone();
            let (start, end, next, resolved) = match stored.get(&key) {
                Some(p) => (p.start, p.end, p.next, p.groups.clone()),
                // A resumed bounded restore sticks to the partitions it planned.
                None if resumed && !self.opts.follow => continue,
                None => (
                    plan.start,
                    (!self.opts.follow).then_some(plan.end),
                    plan.start,
                    BTreeMap::new(),
                ),
            };
            self.report.planned_records += plan.records;
            self.lanes.push(Lane {
                topic: chain.topic.clone(),
                partition: chain.partition,
                target_topic: plan.target_topic.clone(),
                start,
                end,
                next,
                run_from: next,
                chain_end: chain.end().unwrap_or(0),
                files: chain.files,
                watches: Vec::new(),
                resolved,
                pending: Vec::new(),
                dirty: false,
            });
            check_covered(self.lanes.last().expect("just pushed"), &gaps)?;
        }
        self.report.partitions = self.lanes.len();
        Ok(())
    }

    /// Check every target, then create the missing ones from `_topics/` metadata and grow the ones
    /// this restore already writes to (follow mode). A target must have enough partitions, no
    /// LogAppendTime and, for the targets in `new_targets` (not written by this restore before), no
    /// records unless `--allow-non-empty`. Nothing is created before every target passed, so a
    /// refused restore leaves the cluster as it was.
    async fn ensure_targets(
        &mut self,
        admin: Option<&AdminClient<Ctx>>,
        brokers: i32,
        new_targets: &BTreeSet<String>,
    ) -> Result<(), RestoreError> {
        let mut needed: BTreeMap<String, (String, i32)> = BTreeMap::new();
        for lane in &self.lanes {
            let slot = needed
                .entry(lane.target_topic.clone())
                .or_insert((lane.topic.clone(), 0));
            slot.1 = slot.1.max(lane.partition + 1);
        }
        let mut grow = Vec::new();
        let mut create = Vec::new();
        for (target, (source, partitions)) in needed {
            let is_new = new_targets.contains(&target);
            match self.target_partitions.get(&target).copied() {
                Some(count) => {
                    if count < partitions && !self.opts.repartition_by_key {
                        if is_new {
                            return Err(RestoreError::Target(format!(
                                "target topic {target} has {count} partitions but the archive of {source} has {partitions}; add partitions to {target}, restore into a new topic with --rename, or pass --repartition-by-key"
                            )));
                        }
                        // The source topic grew while this restore follows it.
                        if admin.is_none() {
                            return Err(RestoreError::Target(format!(
                                "target topic {target} has {count} partitions but the archive of {source} now has {partitions}, and {NO_ADMIN}: add the partitions to {target}"
                            )));
                        }
                        grow.push((target.clone(), partitions));
                    }
                    if is_new {
                        self.check_existing(admin, &target, count).await?;
                    }
                }
                None => {
                    if admin.is_none() {
                        return Err(RestoreError::Target(format!(
                            "target topic {target} does not exist and {NO_ADMIN} (with at least {partitions} partitions)"
                        )));
                    }
                    create.push((source, target, partitions));
                }
            }
        }
        self.ensure_progress_topic(admin, brokers).await?;
        let Some(admin) = admin else { return Ok(()) };
        for (target, partitions) in grow {
            self.grow(admin, &target, partitions).await?;
        }
        for (source, target, partitions) in create {
            self.create_target(admin, brokers, &source, &target, partitions)
                .await?;
        }
        Ok(())
    }

    /// Create the progress topic if it does not exist yet (one partition, compacted).
    async fn ensure_progress_topic(
        &mut self,
        admin: Option<&AdminClient<Ctx>>,
        brokers: i32,
    ) -> Result<(), RestoreError> {
        if !self.progress_missing {
            return Ok(());
        }
        let topic = self.opts.progress_topic.clone();
        let Some(admin) = admin else {
            return Err(no_progress_topic(&topic));
        };
        create_topic(
            admin,
            &topic,
            1,
            brokers.clamp(1, 3),
            &BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
        )
        .await
        .map_err(|e| {
            RestoreError::Target(format!("cannot create the progress topic {topic}: {e}"))
        })?;
        self.target_partitions.insert(topic, 1);
        self.progress_missing = false;
        Ok(())
    }

    async fn grow(
        &mut self,
        admin: &AdminClient<Ctx>,
        target: &str,
        partitions: i32,
    ) -> Result<(), RestoreError> {
        let results = admin
            .create_partitions(
                [&rdkafka::admin::NewPartitions::new(
                    target,
                    partitions as usize,
                )],
                &AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)),
            )
            .await
            .map_err(|e| self.kafka_err(e))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(RestoreError::Target(format!(
                    "cannot add partitions to {target} (now {partitions} in the archive): {code}"
                )));
            }
        }
        tracing::info!(
            topic = target,
            partitions,
            "added partitions to the target topic"
        );
        self.target_partitions
            .insert(target.to_string(), partitions);
        Ok(())
    }

    /// An existing target must keep CreateTime and, unless allowed, be empty.
    async fn check_existing(
        &self,
        admin: Option<&AdminClient<Ctx>>,
        target: &str,
        count: i32,
    ) -> Result<(), RestoreError> {
        let configs = match admin {
            Some(admin) => describe_topic(admin, target)
                .await
                .map_err(|e| self.kafka_err(e))?,
            None => Vec::new(),
        };
        for resource in configs.into_iter().flatten() {
            if resource
                .get("message.timestamp.type")
                .and_then(|e| e.value.as_deref())
                == Some("LogAppendTime")
            {
                return Err(RestoreError::Target(format!(
                    "target topic {target} uses message.timestamp.type=LogAppendTime, so the broker would replace the restored timestamps; set it to CreateTime or restore into another topic with --rename"
                )));
            }
            self.warn_retention(target, &resource);
        }
        if self.opts.allow_non_empty {
            return Ok(());
        }
        let consumer: Arc<BaseConsumer<Ctx>> = Arc::new(
            self.client
                .create_with_context(Ctx)
                .map_err(|e| self.kafka_err(e))?,
        );
        crate::kafka::ready(&consumer);
        let records = blocking({
            let target = target.to_string();
            move || -> Result<i64, KafkaError> {
                let mut total = 0;
                for p in 0..count {
                    let (low, high) = consumer.fetch_watermarks(&target, p, REQUEST_TIMEOUT)?;
                    total += high - low;
                }
                Ok(total)
            }
        })
        .await
        .map_err(|e| self.kafka_err(e))?;
        if records > 0 {
            return Err(RestoreError::Target(format!(
                "target topic {target} is not empty: it holds {records} offsets (records or transaction markers); restore into another topic with --rename, empty it, or pass --allow-non-empty (to resume an interrupted restore into it, run it again with its --restore-id)"
            )));
        }
        Ok(())
    }

    /// Warn when the target's `retention.ms` is shorter than the age of the oldest record this
    /// restore sends there: Kafka deletes a segment once its newest timestamp is older than that,
    /// minutes after the restore landed it, and nothing would say so.
    fn warn_retention(&self, target: &str, configs: &rdkafka::admin::ConfigResource) {
        let Some(retention) = configs
            .get("retention.ms")
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|ms| *ms > 0)
        else {
            return;
        };
        let oldest = self
            .lanes
            .iter()
            .filter(|l| l.target_topic == target)
            .flat_map(|l| files_in(&l.files, l.next, l.until()))
            .filter_map(|f| f.footer.as_ref()?.min_timestamp)
            .min();
        if let Some(oldest) = oldest.filter(|t| *t < crate::archive::time::now_ms() - retention) {
            tracing::warn!(
                topic = target,
                retention_ms = retention,
                oldest = rfc3339_millis(oldest),
                "the target keeps records for less time than the oldest restored ones are old: the broker will delete them soon after they land; create the target beforehand (or set it now) with a longer retention.ms"
            );
        }
    }

    /// Create a missing target from the source's `_topics/` metadata.
    async fn create_target(
        &mut self,
        admin: &AdminClient<Ctx>,
        brokers: i32,
        source: &str,
        target: &str,
        partitions: i32,
    ) -> Result<(), RestoreError> {
        let meta: Option<TopicMeta> =
            documents::read_doc(&*self.store, &crate::archive::paths::topic_key(source)).await?;
        let (count, replication, mut configs) = match meta {
            Some(m) => (
                m.partitions.max(partitions),
                m.replication_factor,
                m.configs,
            ),
            None => (partitions, 3, BTreeMap::new()),
        };
        let replication = replication.clamp(1, brokers.max(1));
        let dropped: Vec<String> = configs
            .keys()
            .filter(|k| !portable_config(k))
            .cloned()
            .collect();
        for key in &dropped {
            configs.remove(key);
        }
        if !dropped.is_empty() {
            tracing::warn!(
                topic = target,
                configs = dropped.join(", "),
                "source topic configs that belong to the source cluster were not copied"
            );
        }
        // The archived timestamps are written as CreateTime, whatever the broker's default.
        configs.insert("message.timestamp.type".into(), "CreateTime".into());
        // A smaller target cluster cannot demand more in-sync replicas than it has.
        if let Some(isr) = configs.get_mut("min.insync.replicas") {
            if isr.parse::<i32>().is_ok_and(|n| n > replication) {
                *isr = replication.to_string();
            }
        }
        create_topic(admin, target, count, replication, &configs)
            .await
            .map_err(|e| {
                RestoreError::Target(format!("cannot create target topic {target}: {e}"))
            })?;
        tracing::info!(
            topic = target,
            partitions = count,
            replication,
            "created the target topic"
        );
        self.report.topics_created.push(target.to_string());
        self.target_partitions.insert(target.to_string(), count);
        // The broker's default retention applies where the source set none: look at what it is.
        let described = describe_topic(admin, target).await;
        for resource in described.into_iter().flatten().flatten() {
            self.warn_retention(target, &resource);
        }
        Ok(())
    }

    /// Read the group snapshots as of the window's end and watch, in each lane, for the first
    /// record at or after each group's committed offset.
    async fn load_groups(&mut self) -> Result<(), RestoreError> {
        if self.opts.repartition_by_key {
            return Err(RestoreError::Target(
                "--groups cannot be combined with --repartition-by-key: a group's position in one source partition has no single counterpart once records are spread over other partitions".into(),
            ));
        }
        let follow = self.opts.follow;
        let as_of = if follow {
            None
        } else {
            self.groups_as_of.or(self.opts.window.to)
        };
        let snapshots = groups::snapshots_as_of(&*self.store, as_of).await?;
        if !follow && !self.report.resumed {
            // A bounded restore sticks to the snapshots its first run found, even while the sink
            // keeps taking new ones: a resumed run must translate the same offsets.
            self.groups_as_of = as_of.or(snapshots.iter().map(|s| s.taken_at_ms).max());
        }
        for snapshot in snapshots {
            for lane in &mut self.lanes {
                let Some(offset) = snapshot
                    .offsets
                    .get(&lane.topic)
                    .and_then(|p| p.get(&lane.partition))
                else {
                    continue;
                };
                if !lane.resolved.contains_key(&snapshot.group) {
                    lane.watches.push((*offset, snapshot.group.clone()));
                }
            }
        }
        for lane in &mut self.lanes {
            lane.watches.sort();
        }
        Ok(())
    }

    /// Commit the translated group offsets in the target, skipping groups with active members.
    async fn commit_groups(&mut self) -> Result<(), RestoreError> {
        let mut per_group: BTreeMap<String, BTreeMap<(String, i32), i64>> = BTreeMap::new();
        let consumer: Arc<BaseConsumer<Ctx>> = Arc::new(
            self.client
                .create_with_context(Ctx)
                .map_err(|e| self.kafka_err(e))?,
        );
        crate::kafka::ready(&consumer);
        for lane in &self.lanes {
            let mut groups: BTreeSet<&String> = lane.resolved.keys().collect();
            groups.extend(lane.watches.iter().map(|(_, g)| g));
            if groups.is_empty() {
                continue;
            }
            let high = blocking({
                let (consumer, topic, p) =
                    (consumer.clone(), lane.target_topic.clone(), lane.partition);
                move || consumer.fetch_watermarks(&topic, p, REQUEST_TIMEOUT)
            })
            .await
            .map_err(|e| self.kafka_err(e))?
            .1;
            for group in groups {
                // Past everything restored: the group resumes at the end of the partition.
                let offset = lane.resolved.get(group).copied().unwrap_or(high);
                per_group
                    .entry(group.clone())
                    .or_default()
                    .insert((lane.target_topic.clone(), lane.partition), offset);
            }
        }
        for (group, offsets) in per_group {
            let client = self.client.clone();
            let name = group.clone();
            let busy = blocking(move || groups::has_members(&client, &name, REQUEST_TIMEOUT))
                .await
                .map_err(|e| self.kafka_err(e))?;
            if busy {
                tracing::warn!(group, "the group has active members in the target cluster; its offsets were left alone");
                self.report.groups_skipped.push(group);
                continue;
            }
            let client = self.client.clone();
            let name = group.clone();
            match blocking(move || groups::commit(&client, &name, &offsets)).await {
                Ok(()) => {}
                // A member joined since the check, or the group uses the consumer protocol of
                // KIP-848, whose members the classic group list does not show.
                Err(e) if groups::has_members_error(&e) => {
                    tracing::warn!(group, error = %e, "the group has active members in the target cluster; its offsets were left alone");
                    self.report.groups_skipped.push(group);
                    continue;
                }
                Err(e) => {
                    return Err(RestoreError::Target(format!(
                        "cannot commit the offsets of group {group}: {e}"
                    )))
                }
            }
            tracing::info!(group, "committed the translated offsets of the group");
            self.report.groups_committed.push(group);
        }
        Ok(())
    }

    /// Restore every lane up to where it should go now. Returns whether `stop` ended it early.
    async fn pass(
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
            if lane.next >= until {
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
        loop {
            let deadline =
                tokio::time::Instant::from_std(self.txn_started + self.opts.transaction_interval);
            tokio::select! {
                biased;
                _ = stop.as_mut() => {
                    stopped = true;
                    break;
                }
                message = rx.recv() => match message {
                    None => break,
                    Some(Msg::Failed(e)) => {
                        self.abort().await;
                        return Err(e);
                    }
                    Some(Msg::Done { lane, next }) => {
                        let lane = &mut self.lanes[lane];
                        lane.next = lane.next.max(next);
                        lane.dirty = true;
                    }
                    Some(Msg::Chunk { lane, rows, next, _permit }) => {
                        if let Err(e) = self.produce(lane, &rows).await {
                            self.abort().await;
                            return Err(e);
                        }
                        let lane = &mut self.lanes[lane];
                        lane.next = lane.next.max(next);
                        lane.dirty = true;
                    }
                },
                _ = tokio::time::sleep_until(deadline), if self.txn_open => {
                    self.commit().await?;
                }
            }
            // Checked after every message too: a busy channel must not keep a transaction open
            // past its interval (the broker aborts transactions that outlive their timeout).
            if self.txn_open
                && (self.txn_bytes >= self.opts.transaction_bytes
                    || self.txn_started.elapsed() >= self.opts.transaction_interval)
            {
                self.commit().await?;
            }
            self.status(false);
        }
        if stopped {
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
        if self.lanes.iter().any(|l| l.dirty) {
            self.commit().await?;
        }
        if !stopped {
            if let Some(lane) = self.lanes.iter().find(|l| l.next < l.until()) {
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
        if !self.txn_open {
            self.producer
                .begin_transaction()
                .map_err(|e| self.interrupted(format!("cannot begin a transaction: {e}")))?;
            self.txn_open = true;
            self.txn_started = Instant::now();
        }
        let repartition = self.opts.repartition_by_key.then(|| {
            self.target_partitions
                .get(&self.lanes[index].target_topic)
                .copied()
                .unwrap_or(1)
        });
        let strict = self.opts.strict.then_some(self.opts.window);
        let provenance = self.opts.provenance_headers;
        let view = rows.view();
        for i in 0..rows.len() {
            let (offset, timestamp) = (view.offset(i), view.timestamp(i));
            if strict.is_some_and(|w| !w.contains(timestamp)) {
                continue;
            }
            let (key, value) = (view.key(i), view.value(i));
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
            if let Err(e) = send(&self.producer, message).await {
                let hint = if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
                {
                    " (raise the producer's limit with -X message.max.bytes=N, and the target topic's max.message.bytes)"
                } else {
                    ""
                };
                return Err(self.interrupted(format!(
                    "cannot produce record {}/{} offset {offset} ({} bytes) to {}: {e}{hint}",
                    self.lanes[index].topic,
                    self.lanes[index].partition,
                    value.map_or(0, <[u8]>::len),
                    self.lanes[index].target_topic
                )));
            }
            let size = size as u64;
            self.txn_bytes += size;
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

    /// Flush, write the progress of every lane that moved, and commit the transaction.
    async fn commit(&mut self) -> Result<(), RestoreError> {
        if !self.txn_open {
            self.producer
                .begin_transaction()
                .map_err(|e| self.interrupted(format!("cannot begin a transaction: {e}")))?;
            self.txn_open = true;
        }
        // Where watched records landed is known only once they are acknowledged; without any,
        // the commit's own flush is enough.
        let started = Instant::now();
        if self.lanes.iter().any(|l| !l.pending.is_empty()) {
            if let Err(e) = self.drain().await {
                self.abort().await;
                return Err(e);
            }
        }
        let landed: HashMap<usize, i64> = std::mem::take(
            &mut *self
                .producer
                .context()
                .landed
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let progress_partitions = self
            .target_partitions
            .get(&self.opts.progress_topic)
            .copied()
            .unwrap_or(1);
        let mut progress = Vec::new();
        for lane in &mut self.lanes {
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
        for p in &progress {
            let key = progress::key(&p.restore_id, &p.topic, p.partition);
            let value = serde_json::to_vec(p).expect("progress serializes");
            let partition = partitioner::partition_for_key(key.as_bytes(), progress_partitions);
            let record = BaseRecord::with_opaque_to(&self.opts.progress_topic, 0)
                .partition(partition)
                .key(key.as_bytes())
                .payload(&value);
            if let Err(e) = send(&self.producer, record).await {
                // A record the broker refused puts the transaction in an error state, and then
                // the progress cannot be sent: name the record's failure, the cause, once its
                // report is in (CI once saw "Erroneous state" here instead of the record's
                // "max.message.bytes").
                let cause = self.drain().await.err();
                self.abort().await;
                return Err(cause
                    .unwrap_or_else(|| self.interrupted(format!("cannot write progress: {e}"))));
            }
        }
        if let Err(e) = self.drain().await {
            self.abort().await;
            return Err(e);
        }
        if self.txn_bytes > 0 {
            crate::failpoint::hit(crate::failpoint::RESTORE_BEFORE_COMMIT).await;
        }
        let producer = self.producer.clone();
        if let Err(e) = blocking(move || producer.commit_transaction(FLUSH_TIMEOUT)).await {
            // A record the broker refused makes the commit fail: name the record's failure.
            let failure = self.producer.context().take_failure();
            self.abort().await;
            return Err(self.interrupted(match failure {
                Some(failure) => failure,
                None => format!("the transaction did not commit: {e}"),
            }));
        }
        tracing::debug!(
            bytes = self.txn_bytes,
            open_ms = self.txn_started.elapsed().as_millis() as u64,
            commit_ms = started.elapsed().as_millis() as u64,
            "committed a restore transaction"
        );
        self.txn_open = false;
        self.txn_bytes = 0;
        self.txn_started = Instant::now();
        for lane in &mut self.lanes {
            lane.dirty = false;
        }
        self.report_lag();
        metrics::counter!(crate::metrics::RESTORE_TRANSACTIONS).increment(1);
        Ok(())
    }

    /// Wait until `read_committed` consumers of the target see everything this restore committed
    /// (at most [`VISIBLE_TIMEOUT`]); a stop asked for meanwhile ends the wait.
    async fn wait_visible(
        &mut self,
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<(), RestoreError> {
        let mut partitions: BTreeSet<(String, i32)> = BTreeSet::new();
        for lane in &self.lanes {
            if self.opts.repartition_by_key {
                let count = self
                    .target_partitions
                    .get(&lane.target_topic)
                    .copied()
                    .unwrap_or(1);
                partitions.extend((0..count).map(|p| (lane.target_topic.clone(), p)));
            } else {
                partitions.insert((lane.target_topic.clone(), lane.partition));
            }
        }
        let progress = self
            .target_partitions
            .get(&self.opts.progress_topic)
            .copied()
            .unwrap_or(1);
        partitions.extend((0..progress).map(|p| (self.opts.progress_topic.clone(), p)));
        let cancel = Arc::new(AtomicBool::new(false));
        let waiting = blocking({
            let (client, cancel) = (self.client.clone(), cancel.clone());
            let partitions = partitions.into_iter().collect();
            move || {
                visible::wait(
                    &client,
                    partitions,
                    VISIBLE_TIMEOUT,
                    &cancel,
                    |behind, total| {
                        tracing::info!(
                        behind,
                        total,
                        "waiting for read_committed consumers to see the restored records: {behind} of {total} partitions do not show all of them yet (transaction markers on their way, or another producer's open transaction ahead of them)"
                    )
                    },
                )
            }
        });
        tokio::pin!(waiting);
        let waited = tokio::select! {
            waited = &mut waiting => waited.map_err(|e| self.kafka_err(e))?,
            _ = stop.as_mut() => {
                cancel.store(true, Relaxed);
                let _ = waiting.await;
                self.report.stopped = true;
                return Ok(());
            }
        };
        if waited.behind.is_empty() {
            tracing::debug!(
                waited_ms = waited.elapsed.as_millis() as u64,
                "every restored record is visible to read_committed consumers"
            );
            self.report.visible = true;
            self.report_lag();
            return Ok(());
        }
        let mut names: Vec<String> = waited
            .behind
            .iter()
            .take(5)
            .map(|(t, p)| format!("{t}/{p}"))
            .collect();
        if waited.behind.len() > names.len() {
            names.push("…".into());
        }
        Err(RestoreError::NotVisible {
            id: self.opts.restore_id.clone(),
            waited_secs: waited.elapsed.as_secs(),
            count: waited.behind.len(),
            partitions: names.join(", "),
        })
    }

    /// Offsets archived but not restored yet, per target topic.
    fn report_lag(&self) {
        let mut lag: BTreeMap<&str, i64> = BTreeMap::new();
        for lane in &self.lanes {
            *lag.entry(&lane.target_topic).or_default() += (lane.until() - lane.next).max(0);
        }
        if let Some(live) = &self.opts.live {
            let partitions: Vec<crate::live::LivePartition> = self
                .lanes
                .iter()
                .map(|lane| crate::live::LivePartition {
                    topic: lane.topic.clone(),
                    partition: lane.partition,
                    target_topic: Some(lane.target_topic.clone()),
                    position: lane.next,
                    end: Some(lane.until()),
                    lag: Some((lane.until() - lane.next).max(0)),
                })
                .collect();
            let (records, bytes) = (self.report.records, self.report.bytes);
            let planned = self.report.planned_records;
            live.update(|status| {
                status.lag_records = partitions.iter().map(|p| p.lag).sum();
                status.finished =
                    Some(!self.opts.follow && status.lag_records == Some(0) && self.report.visible);
                status.partitions = partitions;
                status.records = records;
                status.bytes = bytes;
                status.planned_records = Some(planned);
            });
        }
        for (topic, behind) in lag {
            metrics::gauge!(crate::metrics::RESTORE_LAG, "topic" => topic.to_string())
                .set(behind as f64);
        }
    }

    /// Wait until everything sent is acknowledged, then fail with the first delivery failure, if
    /// any. rdkafka's own flush polls an event queue that the threaded producer serves elsewhere,
    /// in steps of 100 ms, which cost every transaction a tenth of a second (measured); the queue
    /// length tells the same without the wait.
    async fn drain(&self) -> Result<(), RestoreError> {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            // A refused record puts the transaction in an error state where the rest may never
            // be sent: stop at the first failure and name it. A purge is the consequence of a
            // refusal whose report is still to come: wait for it.
            let context = self.producer.context();
            let failure = if context.purged_first.load(Relaxed) {
                None
            } else {
                context.take_failure()
            };
            if let Some(failure) = failure {
                return Err(self.interrupted(failure));
            }
            if Instant::now() > deadline {
                let held = context
                    .take_failure()
                    .map_or(String::new(), |f| format!(" (first failure: {f})"));
                return Err(self.interrupted(format!(
                    "records were not acknowledged within {}s{held}",
                    FLUSH_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Everything is acknowledged: a failure held now (even a purge alone) ends the transaction.
        match self.producer.context().take_failure() {
            Some(failure) => Err(self.interrupted(failure)),
            None => Ok(()),
        }
    }

    async fn abort(&mut self) {
        metrics::counter!(crate::metrics::RESTORE_ERRORS).increment(1);
        if self.txn_open {
            let producer = self.producer.clone();
            // Drop what is queued first: after a refused record it may never be delivered, and
            // the abort would wait for it. A rerun fences this transaction anyway.
            let aborted = blocking(move || {
                producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
                producer.abort_transaction(Duration::from_secs(10))
            });
            if let Err(e) = aborted.await {
                tracing::warn!(error = %e, "aborting the transaction failed; the broker aborts it when it times out");
            }
            self.txn_open = false;
        }
    }

    /// A progress line: on a terminal every second, redrawn in place; in logs every 10 seconds.
    fn status(&mut self, last: bool) {
        let every = if self.opts.progress {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        if !last && self.last_status.elapsed() < every {
            return;
        }
        self.last_status = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.report.records as f64 / elapsed;
        // Progress in offsets, which every lane knows exactly, resumed runs included.
        let (done, left) = self.lanes.iter().fold((0, 0), |(done, left), l| {
            (
                done + (l.next - l.run_from).max(0),
                left + (l.until() - l.next).max(0),
            )
        });
        let eta = if done > 0 && left > 0 {
            format!(
                ", {:.0}% done, ETA {:.0}s",
                100.0 * done as f64 / (done + left) as f64,
                left as f64 * elapsed / done as f64
            )
        } else {
            String::new()
        };
        let line = format!(
            "restored {} records ({:.1} MB), {:.0} records/s{eta}",
            self.report.records,
            self.report.bytes as f64 / 1e6,
            rate
        );
        if self.opts.progress {
            eprint!("\r{line}\x1b[K{}", if last { "\n" } else { "" });
        } else if !last {
            tracing::info!("{line}");
        }
    }

    /// Follow mode: poll the checkpoints and restore whatever the chains gained, until stopped.
    async fn follow(
        &mut self,
        admin: Option<&AdminClient<Ctx>>,
        brokers: i32,
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
                .list("_checkpoints/")
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
                let Some((topic, partition)) = object
                    .key
                    .strip_prefix("_checkpoints/")
                    .and_then(|rest| rest.strip_suffix(".json"))
                    .and_then(|rest| rest.rsplit_once('/'))
                    .and_then(|(t, p)| Some((t.to_string(), p.parse::<i32>().ok()?)))
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
                self.ensure_targets(admin, brokers, &new_targets).await?;
            }
            if grown && self.pass(stop).await? {
                return Ok(());
            }
        }
    }

    /// Re-read a partition's chain; returns whether it holds records not restored yet.
    async fn extend_lane(&mut self, topic: &str, partition: i32) -> Result<bool, RestoreError> {
        let listed = chain::list_files(
            &*self.store,
            &crate::archive::paths::DataFileKey::partition_prefix(topic, partition),
        )
        .await
        .map_err(|e| RestoreError::Archive(e.into()))?;
        let Some(files) = listed.get(&(topic.to_string(), partition)) else {
            return Ok(false);
        };
        let Some(index) = self
            .lanes
            .iter()
            .position(|l| l.topic == topic && l.partition == partition)
        else {
            // A partition that appeared while following: planned like the first ones, from the
            // window's start.
            let mut chain =
                chain::load(&*self.store, topic, partition, files, &BTreeMap::new()).await?;
            let target_topic = target_of(self.opts, topic).to_string();
            let plan =
                plan_partition(&*self.store, &mut chain, self.opts.window, &target_topic).await?;
            self.lanes.push(Lane {
                topic: topic.to_string(),
                partition,
                target_topic,
                start: plan.start,
                end: None,
                next: plan.start,
                run_from: plan.start,
                chain_end: chain.end().unwrap_or(plan.start),
                files: chain.files,
                watches: Vec::new(),
                resolved: BTreeMap::new(),
                pending: Vec::new(),
                dirty: true,
            });
            let lane = self.lanes.last().expect("just pushed");
            return Ok(lane.next < lane.until());
        };
        let known: BTreeMap<String, ChainFile> = self.lanes[index]
            .files
            .iter()
            .map(|f| (f.key.clone(), f.clone()))
            .collect();
        let chain = chain::load(&*self.store, topic, partition, files, &known).await?;
        let lane = &mut self.lanes[index];
        lane.chain_end = chain.end().unwrap_or(lane.chain_end);
        lane.files = chain.files;
        check_covered(lane, &chain.gaps)?;
        Ok(lane.next < lane.until())
    }
}

/// A lane still to restore must find its next offset in the chain (or in a recorded gap before
/// it): retention may have deleted the files holding it since the restore planned (a resumed or
/// following restore), and skipping to the new start would lose those records silently.
fn check_covered(lane: &Lane, gaps: &[Gap]) -> Result<(), RestoreError> {
    if lane.next >= lane.until() {
        return Ok(());
    }
    let first = lane.files.first().map_or(lane.until(), |f| f.start);
    let never_archived = gaps.iter().any(|g| g.start <= lane.next && g.end >= first);
    if first > lane.next && !never_archived {
        return Err(RestoreError::Pruned {
            topic: lane.topic.clone(),
            partition: lane.partition,
            next: lane.next,
            start: first,
        });
    }
    Ok(())
}
