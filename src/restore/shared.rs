//! A restore shared by several processes: they join one Kafka consumer group and split the
//! restore's partitions between them, each writing its own transactions.
//!
//! The units the group assigns are the target partitions: without `--repartition-by-key` a lane
//! `(topic, p)` writes only to `(target, p)`, so owning a target partition is owning its lane. The
//! workers subscribe to the target topics but never fetch from them (every assigned partition is
//! paused as it is assigned).
//!
//! Invariant: a lane is written by one worker at a time, and its progress moves only with the
//! records it accounts for, whoever writes them. Three rules give it:
//!
//! 1. **The plan is committed once.** Setting up (fence, read progress, check and create targets,
//!    commit the plan) runs under the restore's own transactional id, `rewind-restore-<id>`, which
//!    every worker fences in turn: only the last to fence can commit, and it commits the plan only
//!    if it read none. A worker fenced while setting up tries again and finds the plan.
//! 2. **A worker's transaction commits only in its generation** (KIP-447): every commit sends the
//!    group's offsets of the lanes it moves with `send_offsets_to_transaction`, carrying the
//!    worker's group generation. A worker that lost its lanes to a rebalance it missed (paused,
//!    cut off) is refused by the group coordinator and aborts; its records never become visible.
//!    A worker that takes part in a rebalance does so only between transactions: its consumer is
//!    polled only when no transaction is open, and librdkafka rejoins only after the revocation
//!    was served by a poll.
//! 3. **A lane taken over starts from committed progress.** The progress records of a transaction
//!    are appended before its offsets are sent, so the new owner's `read_committed` read of the
//!    progress topic waits for that transaction to end (commit or abort, at the latest after
//!    `transaction.timeout.ms` for a worker killed in it) and continues where it says.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::lane::Lane;

/// A target partition, the unit the group assigns.
pub(super) type Unit = (String, i32);

/// This worker's membership in a shared restore's group.
pub(super) struct Group {
    consumer: BaseConsumer<Assignments>,
    /// The target partitions this worker owns as of its last poll; `None` while a rebalance is
    /// under way (revoked, not yet assigned).
    owned: Option<BTreeSet<Unit>>,
    /// The owned partitions changed since the worker last looked.
    pub(super) changed: bool,
    /// The group's metadata (generation, member id) as of the assignment of `owned`: a
    /// transaction commits in the generation that gave the worker its lanes, or not at all, even
    /// if librdkafka rejoined in the background since.
    metadata: Option<Arc<ConsumerGroupMetadata>>,
}

/// The group's id: one group per restore.
pub(super) fn group_id(restore_id: &str) -> String {
    format!("rewind-restore-{restore_id}")
}

/// A worker's transactional id. Restore ids hold no ':', so no restore's own id is a worker's.
pub(super) fn transactional_id(restore_id: &str, worker: &str) -> String {
    format!("rewind-restore-{restore_id}:{worker}")
}

impl Group {
    /// Join the restore's group, subscribed to its target topics.
    pub(super) fn join(
        client: &ClientConfig,
        restore_id: &str,
        targets: &BTreeSet<String>,
        transaction_timeout_ms: u64,
    ) -> Result<Group, KafkaError> {
        let mut config = client.clone();
        // Static membership would keep a dead worker's partitions for its whole session, and the
        // fencing relies on the classic protocol's generations: neither comes from -X here.
        config.remove("group.instance.id");
        // A worker polls between transactions, and a read of the progress may wait for another's
        // transaction to time out: it must not be taken for a dead consumer meanwhile.
        let max_poll = (transaction_timeout_ms + 120_000).max(300_000);
        config
            .set("group.protocol", "classic")
            .set("max.poll.interval.ms", max_poll.to_string())
            // Targets created a moment ago are seen by the group's leader within seconds.
            .set("topic.metadata.refresh.interval.ms", "5000")
            .set("group.id", group_id(restore_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            // Spread the partitions of every target over the workers, not topic by topic.
            .set("partition.assignment.strategy", "roundrobin")
            // A dead worker's lanes move after this long.
            .set("session.timeout.ms", "10000")
            // Heartbeats are how a worker learns of a rebalance.
            .set("heartbeat.interval.ms", "500")
            // Nothing is fetched (every partition is paused): keep librdkafka's buffers small in case.
            .set("queued.max.messages.kbytes", "1024");
        let consumer: BaseConsumer<Assignments> =
            config.create_with_context(Assignments::default())?;
        let topics: Vec<&str> = targets.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Group {
            consumer,
            owned: None,
            changed: false,
            metadata: None,
        })
    }

    /// Serve the group's events (rebalances, heartbeat errors) for at most `wait`; returns whether
    /// the owned partitions changed. Call only with no transaction open: a revocation is served
    /// here, and the worker gives its lanes up by returning.
    pub(super) fn poll(&mut self, wait: Duration) -> Result<bool, KafkaError> {
        // Messages are never fetched; errors other than the end of a partition are the group's.
        match self.consumer.poll(wait) {
            Some(Err(KafkaError::PartitionEOF(_))) | Some(Ok(_)) | None => {}
            Some(Err(e)) => {
                use rdkafka::types::RDKafkaErrorCode::*;
                if matches!(
                    e.rdkafka_error_code(),
                    Some(GroupAuthorizationFailed | TopicAuthorizationFailed | Fatal)
                ) {
                    return Err(e);
                }
                tracing::warn!(error = %e, "the shared restore's group reported an error");
            }
        }
        let now = self
            .consumer
            .context()
            .owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let changed = now != self.owned;
        if changed {
            self.metadata = now
                .as_ref()
                .and_then(|_| self.consumer.group_metadata())
                .map(Arc::new);
        }
        self.owned = now;
        Ok(changed)
    }

    /// The target partitions owned now (`None` during a rebalance).
    pub(super) fn owned(&self) -> Option<&BTreeSet<Unit>> {
        self.owned.as_ref()
    }

    /// What a transaction sends with `send_offsets_to_transaction`: the group's offset of each
    /// lane it moves (the lane's next source offset; the group is never consumed from), and the
    /// generation that makes the coordinator refuse a worker that lost its lanes.
    pub(super) fn offsets(
        &self,
        lanes: &[&Lane],
    ) -> Result<(TopicPartitionList, Arc<ConsumerGroupMetadata>), String> {
        let metadata = self
            .metadata
            .clone()
            .ok_or("this worker is not in the shared restore's group")?;
        let mut offsets = TopicPartitionList::new();
        for lane in lanes {
            offsets
                .add_partition_offset(
                    &lane.target_topic,
                    lane.partition,
                    Offset::Offset(lane.next.max(0)),
                )
                .map_err(|e| e.to_string())?;
        }
        Ok((offsets, metadata))
    }

    /// Leave the group at once, so that the others take this worker's partitions without waiting
    /// for its session to time out.
    pub(super) fn leave(self) {
        self.consumer.unsubscribe();
        let _ = self.consumer.poll(Duration::from_millis(100));
    }
}

/// Records the assignment as rebalances serve it, and pauses what is assigned: the workers write
/// to these partitions, they never read them.
#[derive(Default)]
struct Assignments {
    owned: Mutex<Option<BTreeSet<Unit>>>,
    /// Tells apart the first assignment from a later one, for the log.
    rebalances: std::sync::atomic::AtomicU64,
}

impl ClientContext for Assignments {
    crate::kafka::answer_oauth_token_refresh!();
}

impl ConsumerContext for Assignments {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            *self.owned.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(error = %e, "cannot pause the assigned target partitions; the worker reads and drops them");
            }
            let units: BTreeSet<Unit> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            let n = self
                .rebalances
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                partitions = units.len(),
                rebalance = n + 1,
                "the shared restore's group assigned this worker its partitions"
            );
            *self.owned.lock().unwrap_or_else(|e| e.into_inner()) = Some(units);
        }
    }
}

impl super::Restore<'_> {
    /// Serve the group without waiting (between transactions only); returns whether this worker's
    /// partitions changed, which ends the pass under way.
    pub(super) fn regrouped(&mut self) -> Result<bool, super::RestoreError> {
        let Some(group) = &mut self.group else {
            return Ok(false);
        };
        let changed = group
            .poll(Duration::ZERO)
            .map_err(|e| self.cluster.kafka_err(e))?;
        group.changed |= changed;
        Ok(changed)
    }

    /// A shared restore's work, once it is set up: join the group, restore the lanes it assigns
    /// (from their committed progress, each time they are assigned), and stay in the group until
    /// every lane of the restore is complete, to take over the lanes of a worker that stops.
    /// Returns whether `stop` ended it.
    pub(super) async fn share(
        &mut self,
        client: &ClientConfig,
        stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<bool, super::RestoreError> {
        // The set-up's producer is done: from now on this worker writes with its own, fenced
        // while setting up.
        let (worker, own) = self
            .worker
            .take()
            .expect("a shared restore's set-up fences its worker");
        self.txn = own;
        let targets: BTreeSet<String> = self.lanes.iter().map(|l| l.target_topic.clone()).collect();
        let group = Group::join(
            client,
            &self.opts.restore_id,
            &targets,
            self.transaction_timeout_ms,
        )
        .map_err(|e| self.cluster.kafka_err(e))?;
        tracing::info!(
            worker,
            group = group_id(&self.opts.restore_id),
            "joined the shared restore's group"
        );
        for lane in &mut self.lanes {
            lane.owned = false;
        }
        self.group = Some(group);
        let mut taken: BTreeSet<Unit> = BTreeSet::new();
        // When the whole restore was last checked for completion (not yet).
        let mut checked: Option<std::time::Instant> = None;
        // Since when this worker has been without an assignment, for a warning if it lasts.
        let mut unassigned = std::time::Instant::now();
        let stopped = loop {
            if futures::FutureExt::now_or_never(stop.as_mut()).is_some() {
                break true;
            }
            self.regrouped()?;
            let group = self.group.as_mut().expect("joined above");
            if std::mem::take(&mut group.changed) {
                match group.owned().cloned() {
                    None => {
                        unassigned = std::time::Instant::now();
                        for lane in &mut self.lanes {
                            lane.owned = false;
                        }
                    }
                    Some(owned) => {
                        self.take(&owned).await?;
                        taken.extend(owned);
                    }
                }
            } else if group.owned().is_none() && unassigned.elapsed() >= Duration::from_secs(60) {
                unassigned = std::time::Instant::now();
                tracing::warn!(
                    group = group_id(&self.opts.restore_id),
                    "no partitions assigned to this worker of the shared restore for a minute: the group's rebalance waits for a member (one stalled, or reading progress behind another's open transaction), or cannot form (check the group's ACLs)"
                );
            }
            if self.lanes.iter().any(|l| l.owned && l.next < l.until()) {
                if self.pass(stop).await? {
                    break true;
                }
                continue;
            }
            // Nothing of ours to write: is the whole restore done? At once, then twice a second.
            if checked.is_none_or(|at| at.elapsed() >= Duration::from_millis(500)) {
                checked = Some(std::time::Instant::now());
                let stored = self.stored_progress().await?;
                self.refresh(&stored, |_| true);
                self.reach_planned_ends(|_| true).await?;
                if self.lanes.iter().all(|l| l.next >= l.until()) {
                    break false;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.as_mut() => break true,
            }
        };
        if let Some(group) = self.group.take() {
            group.leave();
        }
        self.report.partitions = taken.len();
        Ok(stopped)
    }

    /// The committed progress of every lane of the restore (the progress topic exists).
    pub(super) async fn stored_progress(
        &self,
    ) -> Result<std::collections::BTreeMap<(String, i32), super::Progress>, super::RestoreError>
    {
        super::progress::read_for(
            &self.cluster.client,
            self.opts,
            self.transaction_timeout_ms,
            true,
        )
        .await
        .map_err(|e| self.cluster.kafka_err(e))
    }

    /// Own exactly the lanes of `owned`, each continuing from its committed progress: another
    /// worker may have moved it since this one last wrote it.
    async fn take(&mut self, owned: &BTreeSet<Unit>) -> Result<(), super::RestoreError> {
        let stored = self.stored_progress().await?;
        for lane in &mut self.lanes {
            lane.owned = owned.contains(&(lane.target_topic.clone(), lane.partition));
        }
        self.refresh(&stored, |l| l.owned);
        self.reach_planned_ends(|l| l.owned).await?;
        for lane in self.lanes.iter_mut().filter(|l| l.owned) {
            lane.run_from = lane.next;
        }
        tracing::info!(
            partitions = owned.len(),
            "this worker of the shared restore writes {} partitions, each from its committed progress",
            owned.len()
        );
        self.report_lag();
        Ok(())
    }

    /// The plan a worker follows may come from another worker's later listing of the archive: a
    /// lane planned past the end of this worker's chain reads the chain again, so that it is not
    /// taken for complete where it is not.
    async fn reach_planned_ends(
        &mut self,
        which: impl Fn(&Lane) -> bool,
    ) -> Result<(), super::RestoreError> {
        let short: Vec<(String, i32)> = self
            .lanes
            .iter()
            .filter(|l| which(l) && l.end.is_some_and(|end| end > l.chain_end))
            .map(|l| (l.topic.clone(), l.partition))
            .collect();
        for (topic, partition) in short {
            self.extend_lane(&topic, partition).await?;
            let lane = self
                .lanes
                .iter()
                .find(|l| l.topic == topic && l.partition == partition)
                .expect("a lane of the plan");
            if let Some(end) = lane.end.filter(|end| *end > lane.chain_end) {
                return Err(self.interrupted(format!(
                    "{topic}/{partition}: the shared restore's plan goes to offset {end}, but the archive's chain ends at {}",
                    lane.chain_end
                )));
            }
        }
        Ok(())
    }

    /// Set `next` of the lanes `which` selects to their committed progress.
    fn refresh(
        &mut self,
        stored: &std::collections::BTreeMap<(String, i32), super::Progress>,
        which: impl Fn(&Lane) -> bool,
    ) {
        for lane in self.lanes.iter_mut().filter(|l| which(l)) {
            if let Some(p) = stored.get(&(lane.topic.clone(), lane.partition)) {
                lane.next = p.next;
                lane.resolved = p.groups.clone();
            }
            lane.dirty = false;
        }
    }
}
