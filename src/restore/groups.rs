//! Consumer groups across a restore: pick each group's snapshot as of the window's end from
//! `_groups/`, and commit the translated offsets in the target cluster.
//!
//! Invariant: a group is moved only where the restore can say exactly where its next record is: the
//! target offset of the first restored record at or after the group's committed source offset, or
//! the end of the restored partition when the group had read past everything restored.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::archive::documents::{self, ArchiveError, GroupSnapshot};
use crate::kafka::Ctx;
use crate::storage::ObjectStore;

/// The newest snapshot of every archived group taken at or before `to` (the newest of all when
/// `to` is open).
pub async fn snapshots_as_of(
    store: &dyn ObjectStore,
    to: Option<i64>,
) -> Result<Vec<GroupSnapshot>, ArchiveError> {
    let mut newest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for object in store.list("_groups/").await? {
        let Some((group, taken)) = documents::parse_group_snapshot_key(&object.key) else {
            continue;
        };
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
