//! Consumer groups across a restore: pick each group's snapshot as of the window's end from
//! `_groups/`, and commit the translated offsets in the target cluster.
//!
//! Invariant: a group is moved only where the restore can say exactly where its next record is: the
//! target offset of the first restored record at or after the group's committed source offset, or
//! the end of the restored partition when the group had read past everything restored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::RestoreError;
use super::{Restore, REQUEST_TIMEOUT};
use crate::archive::documents::{self, ArchiveError, GroupSnapshot};
use crate::kafka::{blocking, Ctx};
use crate::storage::ObjectStore;

/// Why `--groups` and `--repartition-by-key` do not go together.
pub(super) const NOT_WITH_REPARTITION: &str = "--groups cannot be combined with --repartition-by-key: a group's position in one source partition has no single counterpart once records are spread over other partitions";

/// The newest snapshot of every archived group taken at or before `to` (the newest of all when
/// `to` is open), but Rewind sinks' groups (snapshots an older sink took), which are never moved.
pub async fn snapshots_as_of(
    store: &dyn ObjectStore,
    to: Option<i64>,
) -> Result<Vec<GroupSnapshot>, ArchiveError> {
    let mut newest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for object in store.list(crate::archive::paths::GROUPS_PREFIX).await? {
        let Some((group, taken)) = documents::parse_group_snapshot_key(&object.key) else {
            continue;
        };
        if documents::is_sink_group(group) {
            continue;
        }
        if to.is_some_and(|to| taken > to) {
            continue;
        }
        let slot = newest
            .entry(group.to_string())
            .or_insert((taken, object.key.clone()));
        if taken >= slot.0 {
            *slot = (taken, object.key.clone());
        }
    }
    let mut out = Vec::new();
    for (_, (_, key)) in newest {
        if let Some(snapshot) = documents::read_doc::<GroupSnapshot>(store, &key).await? {
            out.push(snapshot);
        }
    }
    Ok(out)
}

/// Whether the group has members in the cluster (then its offsets must not be moved under it).
pub fn has_members(
    client: &ClientConfig,
    group: &str,
    timeout: Duration,
) -> Result<bool, KafkaError> {
    let consumer: BaseConsumer<Ctx> = client.create_with_context(Ctx)?;
    crate::kafka::ready(&consumer);
    let list = consumer.fetch_group_list(Some(group), timeout)?;
    Ok(list
        .groups()
        .iter()
        .any(|g| g.name() == group && !g.members().is_empty()))
}

/// Whether each group of the cluster has members: `None` for a group the classic group API does not
/// describe (the consumer protocol of KIP-848; it answers such a group as dead).
pub fn members_of_all(
    client: &ClientConfig,
    timeout: Duration,
) -> Result<BTreeMap<String, Option<bool>>, KafkaError> {
    let consumer: BaseConsumer<Ctx> = client.create_with_context(Ctx)?;
    crate::kafka::ready(&consumer);
    let list = consumer.fetch_group_list(None, timeout)?;
    Ok(list
        .groups()
        .iter()
        .map(|g| {
            let known = !(g.state() == "Dead" && g.protocol_type().is_empty());
            (g.name().to_string(), known.then(|| !g.members().is_empty()))
        })
        .collect())
}

/// Whether a failed commit says the group has members (so its offsets are theirs to move).
pub fn has_members_error(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::UnknownMemberId
                | Code::IllegalGeneration
                | Code::RebalanceInProgress
                | Code::StaleMemberEpoch
                | Code::FencedMemberEpoch
                | Code::NonEmptyGroup
        )
    )
}

/// Commit `offsets` (target topic, partition → offset) for `group`, without joining it.
pub fn commit(
    client: &ClientConfig,
    group: &str,
    offsets: &BTreeMap<(String, i32), i64>,
) -> Result<(), KafkaError> {
    let mut config = client.clone();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer<Ctx> = config.create_with_context(Ctx)?;
    crate::kafka::ready(&consumer);
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    crate::kafka::while_coordinator_starts(Duration::from_secs(30), |_| {
        consumer.commit(&tpl, CommitMode::Sync)
    })
}

impl Restore<'_> {
    /// Read the group snapshots as of the window's end and watch, in each lane, for the first
    /// record at or after each group's committed offset.
    pub(super) async fn load_groups(&mut self) -> Result<(), RestoreError> {
        if self.opts.repartition_by_key {
            return Err(RestoreError::Target(NOT_WITH_REPARTITION.into()));
        }
        let follow = self.opts.follow;
        let as_of = if follow {
            None
        } else {
            self.groups_as_of.or(self.opts.window.to)
        };
        let snapshots = snapshots_as_of(&*self.store, as_of).await?;
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
    pub(super) async fn commit_groups(&mut self) -> Result<(), RestoreError> {
        let mut per_group: BTreeMap<String, BTreeMap<(String, i32), i64>> = BTreeMap::new();
        let consumer: Arc<BaseConsumer<Ctx>> = Arc::new(
            self.cluster
                .client
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
            let client = self.cluster.client.clone();
            let name = group.clone();
            let busy = blocking(move || has_members(&client, &name, REQUEST_TIMEOUT))
                .await
                .map_err(|e| self.kafka_err(e))?;
            if busy {
                tracing::warn!(group, "the group has active members in the target cluster; its offsets were left alone");
                self.report.groups_skipped.push(group);
                continue;
            }
            let client = self.cluster.client.clone();
            let name = group.clone();
            match blocking(move || commit(&client, &name, &offsets)).await {
                Ok(()) => {}
                // A member joined since the check, or the group uses the consumer protocol of
                // KIP-848, whose members the classic group list does not show.
                Err(e) if has_members_error(&e) => {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{LocalStore, PutMode, StorageUrl};

    /// Snapshots of a Rewind sink's group (taken by a sink from before they were left out) are
    /// never moved; an application's group is, with its newest snapshot as of the window's end.
    #[tokio::test]
    async fn a_sinks_group_is_never_moved() {
        let dir = tempfile::tempdir().unwrap();
        let url = StorageUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
        let store = LocalStore::open(url).unwrap();
        for (group, taken_at_ms) in [("app", 1_000), ("app", 2_000), ("rewind-sink-0123", 1_000)] {
            let snapshot = GroupSnapshot {
                group: group.into(),
                taken_at_ms,
                taken_at: crate::archive::time::rfc3339_millis(taken_at_ms),
                offsets: BTreeMap::from([("t".into(), BTreeMap::from([(0, taken_at_ms)]))]),
            };
            let key = documents::group_snapshot_key(group, taken_at_ms);
            documents::write_doc(&store, &key, &snapshot, PutMode::Create)
                .await
                .unwrap();
        }
        let got = snapshots_as_of(&store, Some(1_500)).await.unwrap();
        assert_eq!(
            got.iter()
                .map(|s| (s.group.as_str(), s.taken_at_ms))
                .collect::<Vec<_>>(),
            [("app", 1_000)]
        );
        let got = snapshots_as_of(&store, None).await.unwrap();
        assert_eq!(
            got.iter()
                .map(|s| (s.group.as_str(), s.taken_at_ms))
                .collect::<Vec<_>>(),
            [("app", 2_000)]
        );
    }
}
