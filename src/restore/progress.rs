//! A restore's progress, kept in the target cluster: one record per restored partition in a compacted
//! topic, written in the same Kafka transaction as the records it accounts for.
//!
//! Invariant: a committed progress record says exactly which source offsets of its partition are in
//! the target (`[start, next)`), because the records and the progress commit or abort together. A
//! rerun with the same restore id reads these records (`read_committed`) and continues at `next`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// Progress topic used unless configured otherwise. The `__` prefix keeps it out of the sink's
/// default selection, like Kafka's own internal topics.
pub const DEFAULT_TOPIC: &str = "__rewind_restores";

/// Where one partition of one restore stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub restore_id: String,
    pub topic: String,
    pub partition: i32,
    pub target_topic: String,
    /// The window as the restore was started with, e.g. `[2026-11-23T10:00:00.000Z, latest)`.
    pub window: String,
    /// The `--topics` pattern and the renames the restore was started with.
    #[serde(default)]
    pub selection: String,
    pub follow: bool,
    /// Source offsets `[start, end)` the restore covers; no end in follow mode.
    pub start: i64,
    pub end: Option<i64>,
    /// Every source offset before this one is in the target.
    pub next: i64,
    /// Consumer groups translated so far: group → target offset of the first restored record at
    /// or after the group's committed source offset.
    #[serde(default)]
    pub groups: BTreeMap<String, i64>,
    /// Group snapshots are taken as of this time (bounded `--groups` restores: the window's end,
    /// or with an open end the newest snapshot the first run found), fixed by the first run so
    /// that a resumed run translates the same offsets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_as_of: Option<i64>,
    pub updated_at: String,
}

/// [`read`] the progress of the restore `opts` describes off the async runtime, waiting for open
/// transactions as long as one can stay open (`transaction_timeout_ms`, and a minute more).
pub(super) async fn read_for(
    client: &ClientConfig,
    opts: &super::RestoreOptions,
    transaction_timeout_ms: u64,
    must_exist: bool,
) -> Result<BTreeMap<(String, i32), Progress>, KafkaError> {
    let (client, topic, id) = (
        client.clone(),
        opts.progress_topic.clone(),
        opts.restore_id.clone(),
    );
    let wait = Duration::from_millis(transaction_timeout_ms) + Duration::from_secs(60);
    crate::kafka::blocking(move || read(&client, &topic, &id, wait, must_exist)).await
}

/// Key of a partition's progress record: compaction keeps the latest one.
pub fn key(restore_id: &str, topic: &str, partition: i32) -> String {
    format!("{restore_id}/{topic}/{partition}")
}

/// Read the committed progress of `restore_id` from `topic` (absent topic: no progress, unless
/// `must_exist`: then a broker that does not know the topic yet, just created, is asked again
/// until `timeout`). Reads to the end of every partition of the topic, as a `read_committed`
/// consumer sees it.
pub fn read(
    client: &ClientConfig,
    topic: &str,
    restore_id: &str,
    timeout: Duration,
    must_exist: bool,
) -> Result<BTreeMap<(String, i32), Progress>, KafkaError> {
    let mut config = client.clone();
    config
        .set("group.id", format!("rewind-restore-progress-{restore_id}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // The end of each partition is what is waited for: do not let the broker hold a fetch.
        .set("fetch.wait.max.ms", "10");
    // Reaching a partition's end is how the reader knows it has read everything: `Ctx` does not
    // report it as an error.
    let consumer: BaseConsumer<crate::kafka::Ctx> =
        config.create_with_context(crate::kafka::Ctx)?;
    crate::kafka::ready(&consumer);
    let asked = std::time::Instant::now();
    let mut partitions = Vec::new();
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for t in metadata.topics() {
            match t.error() {
                None => partitions.extend(t.partitions().iter().map(|p| p.id())),
                Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {}
                Some(e) => {
                    return Err(KafkaError::MetadataFetch(e.into()));
                }
            }
        }
        if !partitions.is_empty() || !must_exist {
            break;
        }
        if asked.elapsed() > timeout {
            return Err(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = BTreeMap::new();
    if partitions.is_empty() {
        return Ok(out);
    }
    // Read up to the high watermarks as they are now. A read_committed consumer stops earlier,
    // at an open transaction of another restore, and the progress after it may be ours: wait
    // until that transaction ends (at most its timeout) rather than resume from stale progress.
    // A transaction that has committed but whose marker is not in the partition yet holds it back
    // too (a shared restore's worker taking a partition over reads right after the other's
    // commit). The watermarks come from a read_uncommitted client: a read_committed one is told
    // the last stable offset, which stops before all of these.
    let mut uncommitted = client.clone();
    uncommitted.set("isolation.level", "read_uncommitted");
    let probe: BaseConsumer<crate::kafka::Ctx> =
        uncommitted.create_with_context(crate::kafka::Ctx)?;
    let mut tpl = TopicPartitionList::new();
    let mut high = std::collections::HashMap::new();
    for p in &partitions {
        let (low, hw) = probe.fetch_watermarks(topic, *p, timeout)?;
        if hw > low {
            high.insert(*p, hw);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
    }
    if high.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let prefix = format!("{restore_id}/");
    let started = std::time::Instant::now();
    let deadline = started + timeout;
    let mut warned = false;
    loop {
        let position = consumer.position()?;
        let behind = position.elements().iter().any(|e| match e.offset() {
            Offset::Offset(o) => high.get(&e.partition()).is_some_and(|hw| o < *hw),
            _ => true,
        });
        if !behind {
            break;
        }
        let now = std::time::Instant::now();
        if now > deadline {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        if !warned && now - started > Duration::from_secs(5) {
            warned = true;
            tracing::warn!(topic, "waiting for an open transaction in the progress topic to end (another restore may have been interrupted; the broker aborts it after its transaction timeout)");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e),
            Some(Ok(message)) => {
                let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                if !key.starts_with(&prefix) {
                    continue;
                }
                match message.payload() {
                    Some(value) => {
                        if let Ok(p) = serde_json::from_slice::<Progress>(value) {
                            if p.restore_id == restore_id {
                                keep_furthest(&mut out, p);
                            }
                        }
                    }
                    None => {
                        // A tombstone: that partition's progress was deleted.
                        out.retain(|(t, p), _| key != self::key(restore_id, t, *p));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Keep `progress` unless the record already read for its partition went further. Within one
/// partition of the progress topic the later record is the newer; across partitions (partitions
/// added to the topic during a restore move its keys) the order read says nothing, but a
/// restore's progress only moves forward: the furthest is the newest.
fn keep_furthest(out: &mut BTreeMap<(String, i32), Progress>, progress: Progress) {
    let id = (progress.topic.clone(), progress.partition);
    if out.get(&id).is_none_or(|held| held.next <= progress.next) {
        out.insert(id, progress);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(next: i64, updated_at: &str) -> Progress {
        Progress {
            restore_id: "r".into(),
            topic: "t".into(),
            partition: 0,
            target_topic: "t".into(),
            window: String::new(),
            selection: String::new(),
            follow: false,
            start: 0,
            end: Some(100),
            next,
            groups: BTreeMap::new(),
            groups_as_of: None,
            updated_at: updated_at.into(),
        }
    }

    #[test]
    fn the_furthest_progress_of_a_partition_wins_whatever_the_order_read() {
        let mut out = BTreeMap::new();
        keep_furthest(&mut out, at(40, "second"));
        // An older record read later (from another partition of the progress topic).
        keep_furthest(&mut out, at(10, "first"));
        assert_eq!(out[&("t".to_string(), 0)].next, 40);
        // A record as far, read later, is the newer one (within a partition, later is newer).
        keep_furthest(&mut out, at(40, "third"));
        assert_eq!(out[&("t".to_string(), 0)].updated_at, "third");
        keep_furthest(&mut out, at(70, "fourth"));
        assert_eq!(out[&("t".to_string(), 0)].next, 70);
    }
}
