//! Consumer-group snapshots: every so often, the committed offsets of every consumer group on the
//! backed-up topics go into `_groups/<group>/<taken_at>.json`, so that a restore can move each group
//! to the matching place in the target cluster (`restore --groups`).
//!
//! Invariant: a snapshot is written only when a group's offsets changed since its previous snapshot,
//! and snapshots are never rewritten (create-only keys in time order).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::partition::now_millis;
use super::SinkOptions;
use crate::archive::documents::{self, ArchiveError, GroupSnapshot};
use crate::archive::time::rfc3339_millis;
use crate::kafka::Ctx;
use crate::storage::{ObjectStore, PutMode};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Groups whose offsets are fetched at once.
const CONCURRENT_GROUPS: usize = 16;

type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Takes snapshots and remembers the last one written per group.
pub struct GroupSnapshots {
    client: ClientConfig,
    store: Arc<dyn ObjectStore>,
    opts: SinkOptions,
    last: HashMap<String, Offsets>,
}

impl GroupSnapshots {
    pub fn new(client: ClientConfig, store: Arc<dyn ObjectStore>, opts: SinkOptions) -> Self {
        GroupSnapshots {
            client,
            store,
            opts,
            last: HashMap::new(),
        }
    }

    /// Snapshot every group whose offsets changed; returns how many snapshots were written.
    pub async fn take(&mut self) -> Result<usize, String> {
        let (client, opts) = (self.client.clone(), self.opts.clone());
        let read = tokio::task::spawn_blocking(move || read_all(&client, &opts))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read consumer group offsets: {e}"))?;
        let taken_at_ms = now_millis();
        let mut written = 0;
        for (group, offsets) in read {
            if !self.last.contains_key(&group) {
                if let Some(previous) = self
                    .newest_stored(&group)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    self.last.insert(group.clone(), previous.offsets);
                }
            }
            if self.last.get(&group) == Some(&offsets) {
                continue;
            }
            let snapshot = GroupSnapshot {
                group: group.clone(),
                taken_at_ms,
                taken_at: rfc3339_millis(taken_at_ms),
                offsets: offsets.clone(),
            };
            let key = documents::group_snapshot_key(&group, taken_at_ms);
            match documents::write_doc(&*self.store, &key, &snapshot, PutMode::Create).await {
                Ok(()) => written += 1,
                // Another worker took the same snapshot in the same millisecond.
                Err(ArchiveError::Storage(crate::storage::StorageError::AlreadyExists {
                    ..
                })) => {}
                Err(e) => return Err(e.to_string()),
            }
            self.last.insert(group, offsets);
        }
        Ok(written)
    }

    async fn newest_stored(&self, group: &str) -> Result<Option<GroupSnapshot>, ArchiveError> {
        let listed = self.store.list(&documents::group_prefix(group)).await?;
        match listed.last() {
            Some(newest) => documents::read_doc(&*self.store, &newest.key).await,
            None => Ok(None),
        }
    }
}

/// The committed offsets of every consumer group on the selected topics, but Rewind sinks' (this
/// one's, any named `rewind-sink-…`, and any whose commits carry a Rewind marker).
fn read_all(
    client: &ClientConfig,
    opts: &SinkOptions,
) -> Result<Vec<(String, Offsets)>, KafkaError> {
    let probe: BaseConsumer<Ctx> = client.create_with_context(Ctx)?;
    crate::kafka::ready(&probe);
    let metadata = probe.fetch_metadata(None, TIMEOUT)?;
    let mut tpl = TopicPartitionList::new();
    for topic in metadata.topics() {
        if topic.error().is_none() && opts.selects(topic.name()) {
            for p in topic.partitions() {
                tpl.add_partition(topic.name(), p.id());
            }
        }
    }
    if tpl.count() == 0 {
        return Ok(Vec::new());
    }
    let groups = probe.fetch_group_list(None, TIMEOUT)?;
    let names: Vec<&str> = groups
        .groups()
        .iter()
        .filter(|g| {
            Some(g.name()) != opts.group.as_deref()
                && !documents::is_sink_group(g.name())
                && matches!(g.protocol_type(), "consumer" | "")
        })
        .map(|g| g.name())
        .filter(|name| {
            let ok = documents::storable_group(name);
            if !ok {
                tracing::warn!(
                    group = name,
                    "consumer group id has characters an archive key cannot hold; not snapshotted"
                );
            }
            ok
        })
        .collect();
    // One client per group (a client's group id is fixed), and most of a client's cost is setting
    // up and tearing down its connections: ask for several groups at once.
    let mut out = Vec::new();
    for batch in names.chunks(CONCURRENT_GROUPS) {
        let results: Vec<Result<Option<(String, Offsets)>, KafkaError>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = batch
                    .iter()
                    .map(|name| scope.spawn(|| committed(client, name, &tpl)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("offset fetch does not panic"))
                    .collect()
            });
        for result in results {
            out.extend(result?);
        }
    }
    Ok(out)
}

/// One group's committed offsets on the partitions of `tpl`; `None` when it has none there.
fn committed(
    client: &ClientConfig,
    group: &str,
    tpl: &TopicPartitionList,
) -> Result<Option<(String, Offsets)>, KafkaError> {
    let mut config = client.clone();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer<Ctx> = config.create_with_context(Ctx)?;
    crate::kafka::ready(&consumer);
    let committed = crate::kafka::committed_offsets(&consumer, tpl, TIMEOUT)?;
    let rewind = committed
        .elements()
        .iter()
        .any(|e| e.metadata().starts_with(super::ownership::MARKER_PREFIX));
    if rewind {
        tracing::debug!(group, "a Rewind sink's group: not snapshotted");
        return Ok(None);
    }
    let mut offsets = Offsets::new();
    for e in committed.elements() {
        if let Offset::Offset(o) = e.offset() {
            offsets
                .entry(e.topic().to_string())
                .or_default()
                .insert(e.partition(), o);
        }
    }
    Ok((!offsets.is_empty()).then(|| (group.to_string(), offsets)))
}
