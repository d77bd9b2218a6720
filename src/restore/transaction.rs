//! The restore's transaction protocol, as one type: every record a restore writes and every update
//! of its progress goes through a [`Transaction`].
//!
//! Invariant: a restore's records and its progress commit or abort together, so the committed
//! progress says exactly which source offsets the target holds, whatever interrupts the restore.
//! The steps, in order (compare the sink's commit order in `sink/partition.rs`):
//!
//! 1. **Fence** ([`Transaction::fence`]): `init_transactions` with the restore's transactional id,
//!    `rewind-restore-<id>`, aborts whatever an earlier run of the restore left open and fences
//!    that run out; only then is its committed progress read (`run.rs`).
//! 2. **Begin** ([`Transaction::begin`]): at the first record after a commit, or at a commit that
//!    writes progress only.
//! 3. **Send** ([`Transaction::send`]): a record goes to librdkafka's queue; a full queue is
//!    backpressure, not a failure.
//! 4. **Drain** ([`Transaction::drain`]): wait until every record sent is acknowledged, and stop at
//!    the first one the broker refused: progress written after a refused record would claim it.
//!    Group translation drains first too, to learn where watched records landed.
//! 5. **Write progress** ([`Transaction::start_commit`]): the progress of every partition that moved, in
//!    the same transaction, then drain again.
//! 6. **Commit**: records and progress become visible together.
//!
//! With `restore.producers = 2`, a restore that is not shared writes with **two producers**,
//! `rewind-restore-<id>` and `rewind-restore-<id>+1`. Every run fences both in step 1 before the progress is read, whatever
//! it writes with itself (one producer, or a `--shared` worker's own), so that no run of the id
//! can commit after another has read its progress. Each owns every other
//! lane: it alone sends that lane's records and writes its progress (after the plan, which the
//! first producer commits for every lane before either sends a record), so each lane's records
//! and progress still commit together, and its progress records are appended in the order they
//! commit. Their commits take turns: while one producer drains and commits, the other sends (see
//! `pass.rs`), which hides the pause a commit would otherwise put in the stream of records.
//!
//! A failure at any step **aborts** ([`Transaction::abort`]) and ends the run; running it again
//! with the same id fences this one and resumes from the committed progress. The plan is committed
//! before the first record: a restore's first transaction holds only its progress, every partition
//! at its start (`run.rs`), so a rerun never takes the records of an interrupted first transaction
//! for someone else's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};

use super::plan::Planned;
use super::progress::{self, Progress};
use super::REQUEST_TIMEOUT;
use super::{limits, partitioner, RestoreError, RestoreOptions};
use crate::archive::documents::{self, TopicMeta};
use crate::kafka::blocking;
use crate::storage::ObjectStore;

/// How long a commit may take to deliver what is queued (a quarter of the budget) to a slow target.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// A restore's transactional producer and the transaction it has open, if any.
pub(super) struct Transaction {
    handle: Handle,
    open: bool,
    /// A commit runs on its own ([`Transaction::start_commit`]): nothing is sent until it ends.
    committing: bool,
    /// Record bytes sent in the open transaction.
    bytes: u64,
    /// When the open transaction began (or the last one committed).
    started: Instant,
}

impl Transaction {
    /// Step 1: create the transactional producer and fence every earlier run of the restore.
    pub async fn fence(config: &ClientConfig, restore_id: &str) -> Result<Self, KafkaError> {
        let producer: Arc<ThreadedProducer<Deliveries>> =
            Arc::new(config.create_with_context(Deliveries::default())?);
        blocking({
            let producer = producer.clone();
            move || producer.init_transactions(REQUEST_TIMEOUT)
        })
        .await?;
        Ok(Transaction {
            handle: Handle {
                producer,
                restore_id: restore_id.to_string(),
            },
            open: false,
            committing: false,
            bytes: 0,
            started: Instant::now(),
        })
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether a commit started with [`Transaction::start_commit`] has not been finished.
    pub fn is_committing(&self) -> bool {
        self.committing
    }

    /// When the open transaction has to commit: `interval` after it began.
    pub fn deadline(&self, interval: Duration) -> Instant {
        self.started + interval
    }

    /// Whether the open transaction holds `max_bytes` or has been open for `interval`.
    pub fn due(&self, max_bytes: u64, interval: Duration) -> bool {
        self.open
            && !self.committing
            && (self.bytes >= max_bytes || self.started.elapsed() >= interval)
    }

    /// Step 2: begin a transaction unless one is open.
    pub fn begin(&mut self) -> Result<(), RestoreError> {
        debug_assert!(!self.committing, "nothing is sent while a commit runs");
        if self.open {
            return Ok(());
        }
        self.handle
            .producer
            .begin_transaction()
            .map_err(|e| self.interrupted(format!("cannot begin a transaction: {e}")))?;
        self.open = true;
        self.started = Instant::now();
        Ok(())
    }

    /// Step 3: hand one record of `size` bytes to the producer, inside the open transaction. Its
    /// opaque is a watch slot of group translation (0 for none).
    pub async fn send<K, P>(
        &mut self,
        record: BaseRecord<'_, K, P, usize>,
        size: u64,
    ) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        send(&self.handle.producer, record).await?;
        self.bytes += size;
        Ok(())
    }

    /// Where the watched records acknowledged since the last call landed, by watch slot.
    pub fn take_landed(&self) -> HashMap<usize, i64> {
        std::mem::take(
            &mut *self
                .handle
                .producer
                .context()
                .landed
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Step 4 (see [`Handle::drain`]).
    pub async fn drain(&self) -> Result<(), RestoreError> {
        self.handle.drain().await
    }

    /// Steps 5 and 6 as a task of their own: write `progress` into the progress topic (of
    /// `partitions` partitions), drain, and commit. A worker of a shared restore sends its group's
    /// offsets with the group's generation before it commits (see [`shared`](super::shared)). Any
    /// failure aborts the transaction. Until [`Transaction::finish_commit`] is given the outcome,
    /// nothing may be sent with this producer: the restore's other producer sends meanwhile (see
    /// [`pass`](super::pass)).
    pub fn start_commit(
        &mut self,
        progress: Vec<Progress>,
        topic: String,
        partitions: i32,
        group: Option<GroupOffsets>,
    ) -> Result<Commit, RestoreError> {
        self.begin()?;
        self.committing = true;
        let (handle, bytes, opened) = (self.handle.clone(), self.bytes, self.started);
        Ok(Box::pin(async move {
            handle
                .commit(&progress, &topic, partitions, group, bytes, opened)
                .await
        }))
    }

    /// The outcome of a commit started with [`Transaction::start_commit`]: committed, or aborted.
    /// Either way no transaction is open.
    pub fn finish_commit(&mut self, result: &Result<(), RestoreError>) {
        self.committing = false;
        self.open = false;
        self.bytes = 0;
        self.started = Instant::now();
        if result.is_ok() {
            metrics::counter!(crate::metrics::RESTORE_TRANSACTIONS).increment(1);
        }
    }

    /// Abort the open transaction, if any, dropping what is queued; an aborted transaction counts
    /// as a restore error. A commit under way ends on its own (and aborts if it fails): wait for
    /// it first.
    pub async fn abort(&mut self) {
        if self.open && !self.committing {
            metrics::counter!(crate::metrics::RESTORE_ERRORS).increment(1);
            self.handle.abort().await;
            self.open = false;
        }
    }

    fn interrupted(&self, message: impl ToString) -> RestoreError {
        self.handle.interrupted(message)
    }

    /// See [`Handle::fence_note`].
    pub(super) fn fence_note(&self) -> String {
        self.handle.fence_note()
    }
}

/// A commit running on its own (see [`Transaction::start_commit`]).
pub(super) type Commit =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RestoreError>> + Send>>;

/// A shared restore's group offsets for a transaction, with the group's metadata (KIP-447).
pub(super) type GroupOffsets = (
    rdkafka::TopicPartitionList,
    Arc<rdkafka::consumer::ConsumerGroupMetadata>,
);

/// A transaction's producer, as a commit running on its own holds it.
#[derive(Clone)]
struct Handle {
    producer: Arc<ThreadedProducer<Deliveries>>,
    restore_id: String,
}

impl Handle {
    /// Wait until everything sent is acknowledged, then fail with the first delivery failure, if
    /// any. rdkafka's own flush polls an event queue that the threaded producer serves elsewhere,
    /// in steps of 100 ms, which cost every transaction a tenth of a second (measured); the queue
    /// length tells the same without the wait. Step 4.
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

    /// Steps 5 and 6 of the open transaction, which holds `bytes` of records and began at
    /// `opened`; aborts it on any failure.
    async fn commit(
        &self,
        progress: &[Progress],
        topic: &str,
        partitions: i32,
        group: Option<GroupOffsets>,
        bytes: u64,
        opened: Instant,
    ) -> Result<(), RestoreError> {
        if bytes > 0 && crate::failpoint::fails(crate::failpoint::RESTORE_STALL_BEFORE_PROGRESS) {
            // The stall point's state: every record delivered, no progress written.
            if let Err(e) = self.drain().await {
                self.abort_failed().await;
                return Err(e);
            }
            crate::failpoint::stall(crate::failpoint::RESTORE_STALL_BEFORE_PROGRESS).await;
        }
        let started = Instant::now();
        for p in progress {
            let key = progress::key(&p.restore_id, &p.topic, p.partition);
            let value = serde_json::to_vec(p).expect("progress serializes");
            let partition = partitioner::partition_for_key(key.as_bytes(), partitions);
            let record = BaseRecord::with_opaque_to(topic, 0)
                .partition(partition)
                .key(key.as_bytes())
                .payload(&value);
            if let Err(e) = send(&self.producer, record).await {
                // A record the broker refused puts the transaction in an error state, and then
                // the progress cannot be sent: name the record's failure, the cause, once its
                // report is in (CI once saw "Erroneous state" here instead of the record's
                // "max.message.bytes").
                let cause = self.drain().await.err();
                self.abort_failed().await;
                return Err(cause
                    .unwrap_or_else(|| self.interrupted(format!("cannot write progress: {e}"))));
            }
        }
        if let Err(e) = self.drain().await {
            self.abort_failed().await;
            return Err(e);
        }
        if let Some((offsets, metadata)) = group {
            // After the progress is in the log: a worker taking a lane over reads it only once
            // this transaction has ended.
            let producer = self.producer.clone();
            let sent = blocking(move || {
                producer.send_offsets_to_transaction(&offsets, &metadata, REQUEST_TIMEOUT)
            })
            .await;
            if let Err(e) = sent {
                self.abort_failed().await;
                return Err(self.interrupted(format!(
                    "this worker's transaction was refused by the shared restore's group ({e}): another worker took its partitions in a rebalance this one missed, so what it wrote since its last commit is aborted; the other workers go on, and running this command again joins them"
                )));
            }
        }
        if bytes > 0 {
            crate::failpoint::hit(crate::failpoint::RESTORE_BEFORE_COMMIT).await;
        }
        let producer = self.producer.clone();
        if let Err(e) = blocking(move || producer.commit_transaction(FLUSH_TIMEOUT)).await {
            // A record the broker refused makes the commit fail: name the record's failure.
            let failure = self.producer.context().take_failure();
            self.abort_failed().await;
            return Err(self.interrupted(match failure {
                Some(failure) => failure,
                None => format!("the transaction did not commit: {e}"),
            }));
        }
        tracing::debug!(
            bytes,
            open_ms = opened.elapsed().as_millis() as u64,
            commit_ms = started.elapsed().as_millis() as u64,
            "committed a restore transaction"
        );
        Ok(())
    }

    /// Abort a transaction whose commit failed. Counts as a restore error.
    async fn abort_failed(&self) {
        metrics::counter!(crate::metrics::RESTORE_ERRORS).increment(1);
        self.abort().await;
    }

    /// Abort the open transaction, dropping what is queued.
    async fn abort(&self) {
        let producer = self.producer.clone();
        // Drop what is queued first: after a refused record it may never be delivered, and the
        // abort would wait for it. A rerun fences this transaction anyway.
        let aborted = blocking(move || {
            producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            producer.abort_transaction(Duration::from_secs(10))
        });
        match aborted.await {
            // A newer producer with this transactional id aborted it already.
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fenced) => {
                tracing::debug!(error = %e, "the transaction was aborted by the producer that fenced this one");
            }
            Err(e) => {
                tracing::warn!(error = %e, "aborting the transaction failed; the broker aborts it when it times out")
            }
            Ok(()) => {}
        }
    }

    fn interrupted(&self, message: impl ToString) -> RestoreError {
        RestoreError::Interrupted {
            id: self.restore_id.clone(),
            message: format!("{}{}", message.to_string(), self.fence_note()),
        }
    }

    /// Why the producer stopped, when it was fenced: librdkafka then purges what is queued, and the
    /// failure a run sees first ("Purged in queue", "Erroneous state") does not say it. Its own
    /// lines about the fence are debug lines ([`crate::kafka::logs::is_fenced`]): this is where
    /// the operator reads it. Empty otherwise.
    fn fence_note(&self) -> String {
        match self.producer.client().fatal_error() {
            Some((RDKafkaErrorCode::Fenced, reason)) => format!(
                "; this run's transactional producer was fenced ({reason}): another process is running this restore with the same restore id (or worker id), or the broker aborted a transaction that stayed open longer than transaction.timeout.ms"
            ),
            _ => String::new(),
        }
    }
}

/// The transactional id of a restore's second producer (see [`RestoreOptions::producers`]). Restore
/// ids and worker names hold no '+', so it is neither another restore's id nor a worker's.
pub(super) fn second_transactional_id(restore_id: &str) -> String {
    format!("rewind-restore-{restore_id}+1")
}

/// The transactional producer's settings: the cluster's client settings, the restore's transactional
/// id, then Rewind's defaults for what `-X` did not set.
pub(super) fn producer_config(
    client: &ClientConfig,
    opts: &RestoreOptions,
    transaction_timeout_ms: u64,
    batch_size: u64,
) -> ClientConfig {
    let mut config = client.clone();
    config.set(
        "transactional.id",
        format!("rewind-restore-{}", opts.restore_id),
    );
    // A quarter of the budget shared by the restore's producers, and at least 16 MiB each: a record
    // larger than its producer's queue cannot be sent at all (see `send`).
    let producers = opts.producer_count() as u64;
    let queue_kib = (opts.buffer_budget / 4 / 1024 / producers)
        .clamp(16 * 1024, 1024 * 1024 / producers)
        .to_string();
    let (transaction_timeout, batch_size) =
        (transaction_timeout_ms.to_string(), batch_size.to_string());
    for (key, value) in [
        // See `queue_kib`, unless given with -X.
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
        // Statistics tell when the brokers answer again after an outage (see `Deliveries`).
        ("statistics.interval.ms", "5000"),
    ] {
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    config
}

/// The producer's `transaction.timeout.ms`: as given (`-X` or the cluster's properties), which
/// must be within the brokers' `transaction.max.timeout.ms`; otherwise Rewind's default, lowered
/// to that maximum, which must stay above `restore.transaction_interval`.
pub(super) fn transaction_timeout(
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
pub(super) async fn batch_size(
    store: &dyn ObjectStore,
    opts: &RestoreOptions,
    planned: &Planned,
    cluster: &super::cluster::Cluster,
) -> Result<u64, RestoreError> {
    // Without the admin API nothing tells the limits: librdkafka's default fits Kafka's.
    let Some(known) = &cluster.limits else {
        return Ok(limits::DEFAULT_BATCH_SIZE);
    };
    let existing = &cluster.partitions;
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

/// Delivery reports: where the records watched for group translation landed, and the first failure.
#[derive(Default)]
struct Deliveries {
    landed: Mutex<HashMap<usize, i64>>,
    failure: Mutex<Option<String>>,
    /// The failure held is only a purge, which a refusal reported later replaces.
    purged_first: AtomicBool,
    /// Whether the target's brokers answer: one warning per outage, not one line a second.
    connection: crate::kafka::logs::Connection,
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

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if crate::kafka::logs::is_fenced(message) {
            tracing::debug!(target: "librdkafka", fac, "{message}");
        } else {
            self.connection.log(level, fac, message);
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if crate::kafka::logs::is_fenced_error(&error, reason) {
            tracing::debug!(target: "librdkafka", error = %error, "{reason}");
        } else {
            self.connection.error(error, reason);
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.connection.stats(&statistics);
    }
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
                // librdkafka refuses a record larger than the whole queue even when the queue is
                // empty: waiting would never end.
                if producer.in_flight_count() == 0 {
                    return Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
                }
                record = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}
