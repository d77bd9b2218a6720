//! A restore from start to end: plan, probe the target, fence earlier runs and read their progress,
//! check and create the targets, commit the plan, then pass over the plan (and follow the archive,
//! or wait until the restored records are visible).
//!
//! Invariant: nothing is written to the target before every check passed, and the plan is committed
//! before the first record (see [`transaction`](super::transaction)): a refused restore leaves the
//! cluster as it was, and an interrupted one is resumed by its id exactly where it stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use super::cluster::Cluster;
use super::plan::plan;
use super::transaction::{self, Transaction};
use super::{progress, visible, Restore, RestoreError, RestoreOptions, RestoreReport};
use crate::kafka::blocking;
use crate::storage::ObjectStore;

/// How long a finished restore waits for `read_committed` consumers to see its records: markers
/// take seconds to minutes on topics of many partitions; longer means another producer's open
/// transaction holds them back.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(300);

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
    // Before anything is written: both registries of a rewrite of schema ids answer.
    if let Some(ids) = &opts.schema_ids {
        ids.check().await.map_err(RestoreError::SchemaIds)?;
        if ids.keys() && !opts.repartition_by_key {
            tracing::warn!(
                "keys' schema ids are rewritten, and records keep their source partition: a producer of the target writing the same key (with the target's id) may hash it to another partition; --repartition-by-key places each record where its rewritten key hashes"
            );
        }
    }
    // Runs starting together fence each other's set-up. A worker of a shared restore that is
    // fenced tries again and finds the plan the other committed (see `shared`); a run of either
    // kind that finds a plan committed by a run it fenced sets up again to resume from it.
    let mut attempt = 1;
    let mut restore = loop {
        // Again from the archive after the first attempt: the plan another run committed may have
        // seen partitions this one's listing had not.
        let planned = match attempt {
            1 => planned.clone(),
            _ => plan(&*store, opts).await?,
        };
        let why = match set_up(&client, &store, opts, planned, &mut stop).await {
            Ok(SetUp::Ready(restore)) => break *restore,
            Ok(SetUp::Again(why)) if attempt < SET_UP_ATTEMPTS => why.to_string(),
            Err(RestoreError::Interrupted { message, .. })
                if opts.shared && attempt < SET_UP_ATTEMPTS =>
            {
                format!("setting up the shared restore did not commit ({message}); another worker may be setting it up")
            }
            Ok(SetUp::Again(why)) => {
                return Err(RestoreError::Interrupted {
                    id: opts.restore_id.clone(),
                    message: format!(
                    "{why}, {SET_UP_ATTEMPTS} times: another run of this restore keeps starting"
                ),
                })
            }
            Err(e) => return Err(e),
        };
        tracing::info!(attempt, "{why}: setting up again");
        attempt += 1;
        // Short: the run that fenced this one commits its plan within moments.
        let wait = Duration::from_millis(100 + rand::random::<u64>() % 400);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.as_mut() => {
                return Ok(RestoreReport {
                    restore_id: opts.restore_id.clone(),
                    stopped: true,
                    ..RestoreReport::default()
                });
            }
        }
    };
    if restore.report.stopped {
        return Ok(restore.report);
    }
    restore.report_lag();

    if opts.shared {
        // A worker that finds every lane complete has nothing to share.
        let left = restore.lanes.iter().any(|l| l.next < l.until());
        let stopped = left && restore.share(&client, &mut stop).await?;
        if !left {
            restore.report.partitions = 0;
        }
        if stopped {
            restore.report.stopped = true;
            return Ok(restore.report);
        }
        restore.wait_visible(&mut stop).await?;
        return Ok(restore.report);
    }
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
        restore.follow(&mut stop).await?;
    }
    Ok(restore.report)
}

impl Restore<'_> {
    pub(super) fn kafka_err(&self, e: KafkaError) -> RestoreError {
        self.cluster.kafka_err(e)
    }

    pub(super) fn interrupted(&self, message: impl ToString) -> RestoreError {
        let fenced = std::iter::once(&self.txn)
            .chain(self.second.as_ref())
            .chain(self.worker.as_ref().map(|(_, own)| own))
            .map(Transaction::fence_note)
            .find(|note| !note.is_empty())
            .unwrap_or_default();
        RestoreError::Interrupted {
            id: self.opts.restore_id.clone(),
            message: format!("{}{fenced}", message.to_string()),
        }
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
                    .cluster
                    .partitions
                    .get(&lane.target_topic)
                    .copied()
                    .unwrap_or(1);
                partitions.extend((0..count).map(|p| (lane.target_topic.clone(), p)));
            } else {
                partitions.insert((lane.target_topic.clone(), lane.partition));
            }
        }
        let progress = self
            .cluster
            .partitions
            .get(&self.opts.progress_topic)
            .copied()
            .unwrap_or(1);
        partitions.extend((0..progress).map(|p| (self.opts.progress_topic.clone(), p)));
        let cancel = Arc::new(AtomicBool::new(false));
        let waiting = blocking({
            let (client, cancel) = (self.cluster.client.clone(), cancel.clone());
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
}

/// How many times a run tries to set the restore up before it gives up.
const SET_UP_ATTEMPTS: u32 = 10;

/// Why a run sets up again when a topic it created was there already.
const APPEARED: &str =
    "a target topic or the progress topic was created by someone else while this run set up";

/// What one attempt to set the restore up came to.
enum SetUp<'a> {
    Ready(Box<Restore<'a>>),
    /// Another run got ahead of this one between its look at the cluster and its plan: it
    /// committed the plan, or created a topic this one set out to create.
    Again(&'static str),
}

/// Everything before the first record: ask the target, fence earlier runs (of a shared restore:
/// earlier set-ups, and this worker's earlier process) and read what they committed, build the
/// lanes, check and create the targets and commit the plan. Returns the restore (stopped, if
/// asked to meanwhile).
async fn set_up<'a>(
    client: &ClientConfig,
    store: &Arc<dyn ObjectStore>,
    opts: &'a RestoreOptions,
    planned: super::plan::Planned,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<SetUp<'a>, RestoreError> {
    // The target must answer before anything is decided.
    let cluster = Cluster::ask(client.clone(), opts, &planned).await?;
    if let Some(refusal) = cluster.refusal(opts) {
        return Err(refusal);
    }
    let kafka_err = |e: KafkaError| cluster.kafka_err(e);
    // Creating the targets creates the progress topic too: remember whether it was there.
    let missing_when_asked = cluster.progress_missing;
    let batch_size = transaction::batch_size(&**store, opts, &planned, &cluster).await?;
    let transaction_timeout =
        transaction::transaction_timeout(client, opts, cluster.limits.as_ref())?;

    crate::failpoint::stall(crate::failpoint::RESTORE_STALL_BEFORE_FENCE).await;
    // Fence any earlier run of this restore, then read what it committed.
    let producer_config =
        transaction::producer_config(client, opts, transaction_timeout, batch_size);
    // The second producer, fenced alongside by every run, whatever it writes with: a run of two
    // producers writes its odd lanes' progress with it, and a run that did not fence it could read
    // the progress while that one still commits.
    let mut second_config = producer_config.clone();
    second_config.set(
        "transactional.id",
        transaction::second_transactional_id(&opts.restore_id),
    );
    let (txn, second) = futures::join!(
        Transaction::fence(&producer_config, &opts.restore_id),
        Transaction::fence(&second_config, &opts.restore_id),
    );
    let txn = txn.map_err(kafka_err)?;
    let second = match second {
        Ok(second) => Some(second).filter(|_| opts.producer_count() > 1),
        // A run of one producer whose principal may not use the second id: no run of it can have
        // written with that id (a run of two would have failed here), so there is nothing to fence.
        Err(e)
            if opts.producer_count() == 1
                && e.rdkafka_error_code()
                    == Some(
                        rdkafka::error::RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
                    ) =>
        {
            tracing::debug!(error = %e, "not authorized for the restore's second transactional id; this run writes with one producer");
            None
        }
        Err(e) => return Err(kafka_err(e)),
    };
    crate::failpoint::stall(crate::failpoint::RESTORE_STALL_AFTER_FENCE).await;
    // A worker's own producer is fenced before the progress is read: whatever an earlier process
    // of the same worker left open is aborted now, not after its timeout.
    let worker = match opts.shared {
        true => {
            let name = opts
                .worker_id
                .clone()
                .unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
            let mut config = producer_config.clone();
            config.set(
                "transactional.id",
                super::shared::transactional_id(&opts.restore_id, &name),
            );
            let own = Transaction::fence(&config, &opts.restore_id)
                .await
                .map_err(kafka_err)?;
            Some((name, own))
        }
        false => None,
    };
    // Without a progress topic no run of this restore had committed anything when the cluster was
    // asked; the topic is created once every target passed its checks, so that a refused restore
    // leaves nothing behind. Another run may have created it since (before this one fenced it):
    // that is checked before the plan is committed, below. A shared restore's other workers are
    // expected to: its progress is read.
    let stored = if cluster.progress_missing && !opts.shared {
        BTreeMap::new()
    } else {
        // A topic the cluster listed must be found again (a broker whose metadata lags must not
        // read as "no progress").
        progress::read_for(client, opts, transaction_timeout, !cluster.progress_missing)
            .await
            .map_err(kafka_err)?
    };

    let mut restore = Restore {
        store: store.clone(),
        opts,
        cluster,
        txn,
        second,
        lanes: Vec::new(),
        report: RestoreReport {
            restore_id: opts.restore_id.clone(),
            resumed: !stored.is_empty(),
            ..RestoreReport::default()
        },
        next_slot: 1,
        zero_timestamps: 0,
        groups_as_of: stored
            .values()
            .next()
            .and_then(|p| p.groups_as_of)
            .or(planned.cuts.to_time()),
        cuts: planned.cuts.clone(),
        started: Instant::now(),
        last_status: Instant::now(),
        bar: opts.progress.then(super::status::bar_for_a_pass),
        group: None,
        worker,
        transaction_timeout_ms: transaction_timeout,
    };
    restore.build_lanes(planned, &stored)?;
    restore.report.ranges = restore
        .lanes
        .iter()
        .map(|l| (l.topic.clone(), l.partition, l.start, l.until()))
        .collect();
    if opts.shared {
        // Every lane of the committed plan must be one of this worker's, or the worker could own
        // a target partition it has nothing to write for: plan again.
        if let Some((topic, partition)) = stored.keys().find(|(t, p)| {
            !restore
                .lanes
                .iter()
                .any(|l| &l.topic == t && l.partition == *p)
        }) {
            return Err(restore.interrupted(format!(
                "the shared restore's plan holds {topic}/{partition}, which this worker's listing of the archive did not"
            )));
        }
    }
    if opts.groups {
        // Before anything is created: an unreadable snapshot leaves the target as it was.
        restore.load_groups().await?;
    }
    // A stop asked for while planning or fencing ends the restore before it creates anything.
    if futures::FutureExt::now_or_never(stop.as_mut()).is_some() {
        restore.report.stopped = true;
        return Ok(SetUp::Ready(Box::new(restore)));
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
        if !restore.ensure_targets(&targets).await? {
            return Ok(SetUp::Again(APPEARED));
        }
    }
    if !restore.report.resumed {
        // Commit the plan before the first record: from now on a rerun with this id resumes
        // (and does not take the records of an interrupted first transaction for someone else's).
        if !restore.ensure_progress_topic().await? {
            return Ok(SetUp::Again(APPEARED));
        }
        if opts.shared || missing_when_asked {
            // The progress topic exists now, whoever created it: a plan another run committed
            // before this one fenced it is there, even if this run saw no topic when it asked the
            // cluster (another run of the same restore starting at the same time) or a broker did
            // not list it yet. Committing a fresh plan over it would restore its records again.
            let committed = restore.stored_progress().await?;
            if !committed.is_empty() {
                return Ok(SetUp::Again(
                    "another run committed the restore's plan first",
                ));
            }
        }
        restore.commit_plan().await?;
        if let Some(hint) = &opts.resume_hint {
            // From now on there is something to resume.
            eprintln!("{hint}");
        }
    }
    Ok(SetUp::Ready(Box::new(restore)))
}
