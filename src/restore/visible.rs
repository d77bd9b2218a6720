//! The end of a restore: waiting until `read_committed` consumers of the target can read what it
//! committed. A commit returns once the transaction coordinator has decided it; the markers that
//! make the records readable reach each partition after that (on a topic of a thousand partitions,
//! minutes later), and another producer's open transaction holds a partition's last stable offset
//! back until it ends.
//!
//! Invariant: a restore is reported done only once the last stable offset of every partition it
//! wrote (ListOffsets with `read_committed`, one request per leader) has reached the high
//! watermark the partition had after the restore's last commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::kafka::Ctx;

/// Timeout of one ListOffsets round.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One partition of a target topic.
pub(super) type Partition = (String, i32);

/// Where the wait ended: the partitions still behind (none when everything is visible).
#[derive(Debug, Default)]
pub(super) struct Waited {
    pub behind: Vec<Partition>,
    pub elapsed: Duration,
}

/// A consumer that only asks for offsets, with the given isolation level.
fn consumer(client: &ClientConfig, isolation: &str) -> Result<BaseConsumer<Ctx>, KafkaError> {
    let mut config = client.clone();
    config.set("isolation.level", isolation);
    let consumer: BaseConsumer<Ctx> = config.create_with_context(Ctx)?;
    crate::kafka::ready(&consumer);
    Ok(consumer)
}

/// The end offset of each partition as `consumer` sees it: the high watermark, or with
/// `read_committed` the last stable offset. Partitions answered with an error are left out.
fn ends(
    consumer: &BaseConsumer<Ctx>,
    partitions: &[Partition],
) -> Result<BTreeMap<Partition, i64>, KafkaError> {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        // "Timestamp" -1 (latest) asks for the end; librdkafka batches the partitions per leader.
        tpl.add_partition_offset(topic, *partition, Offset::End)?;
    }
    let answer = consumer.offsets_for_times(tpl, REQUEST_TIMEOUT)?;
    Ok(answer
        .elements()
        .iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

/// Wait until the last stable offset of every one of `partitions` has reached the high watermark
/// it has now, for at most `timeout` or until `cancel` is set. `report(behind, total)` is called
/// after a second of waiting and then every 5 seconds.
pub(super) fn wait(
    client: &ClientConfig,
    partitions: Vec<Partition>,
    timeout: Duration,
    cancel: &Arc<AtomicBool>,
    report: impl Fn(usize, usize),
) -> Result<Waited, KafkaError> {
    let started = Instant::now();
    if partitions.is_empty() {
        return Ok(Waited::default());
    }
    // What was written: every record was acknowledged before the last commit, so it is below
    // the high watermarks the leaders answer now.
    let uncommitted = consumer(client, "read_uncommitted")?;
    let committed = consumer(client, "read_committed")?;
    let mut written: BTreeMap<Partition, i64> = BTreeMap::new();
    let mut pending = partitions;
    let total = pending.len();
    let mut pause = Duration::from_millis(10);
    let mut next_report = started + Duration::from_secs(1);
    loop {
        // A round that fails (a leader moving, say) is asked again, within the same bound.
        let unknown: Vec<Partition> = pending
            .iter()
            .filter(|p| !written.contains_key(*p))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            match ends(&uncommitted, &unknown) {
                Ok(found) => written.extend(found),
                Err(e) => tracing::debug!(error = %e, "asking for high watermarks failed"),
            }
        }
        match ends(&committed, &pending) {
            Ok(stable) => pending.retain(|p| match (written.get(p), stable.get(p)) {
                (Some(end), Some(lso)) => lso < end,
                _ => true,
            }),
            Err(e) => tracing::debug!(error = %e, "asking for last stable offsets failed"),
        }
        if pending.is_empty() || started.elapsed() >= timeout || cancel.load(Ordering::Relaxed) {
            break;
        }
        if Instant::now() >= next_report {
            next_report = Instant::now() + Duration::from_secs(5);
            report(pending.len(), total);
        }
        std::thread::sleep(pause.min(timeout.saturating_sub(started.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    Ok(Waited {
        behind: pending,
        elapsed: started.elapsed(),
    })
}
