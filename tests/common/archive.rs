//! Reading an archive back in tests, checking the chain invariants on the way.

use std::sync::Arc;

use rewind::archive::datafile;
use rewind::archive::documents;
use rewind::archive::paths::DataFileKey;
use rewind::archive::time::HourBucket;
use rewind::archive::Record;
use rewind::storage::ObjectStore;

/// The data files of one partition, in chain (start) order.
pub async fn data_keys(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    partition: i32,
) -> Vec<DataFileKey> {
    let mut keys: Vec<DataFileKey> = store
        .list(&DataFileKey::partition_prefix(topic, partition))
        .await
        .unwrap()
        .iter()
        .filter_map(|o| DataFileKey::parse(&o.key))
        .collect();
    keys.sort_by_key(|k| k.start);
    keys
}

/// Every record archived for one partition, in chain order, after checking the chain is contiguous
/// and its checkpoint is at its end: the state a worker leaves when it stops cleanly or resumes.
pub async fn chain(store: &Arc<dyn ObjectStore>, topic: &str, partition: i32) -> Vec<Record> {
    let (records, bounds) = read_chain(store, topic, partition).await;
    if let [_, .., end] = bounds[..] {
        assert_eq!(
            checkpoint_end(store, topic, partition).await,
            end,
            "the checkpoint is at the end of the chain"
        );
    }
    records
}

/// Like [`chain`], for an archive as a SIGKILL may leave it: a worker killed after a file was made
/// durable and before the checkpoint was advanced leaves that file past the checkpoint, which the
/// next resume adopts. A worker advances the checkpoint after each file and before it writes the
/// next (only a failed checkpoint write lets it fall further behind, and the stores of this
/// helper's callers do not fail), so the checkpoint is at the chain's end or its last file's start.
pub async fn chain_as_killed(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    partition: i32,
) -> Vec<Record> {
    let (records, bounds) = read_chain(store, topic, partition).await;
    if !bounds.is_empty() {
        let checkpoint = checkpoint_end(store, topic, partition).await;
        assert!(
            bounds.iter().rev().take(2).any(|b| *b == checkpoint),
            "the checkpoint ({checkpoint}) is at the chain's end or its last file's start ({bounds:?})"
        );
    }
    records
}

async fn checkpoint_end(store: &Arc<dyn ObjectStore>, topic: &str, partition: i32) -> i64 {
    documents::read_checkpoint(&**store, topic, partition)
        .await
        .unwrap()
        .expect("a checkpoint")
        .doc
        .end
}

/// The records of a partition's chain and its file boundaries (the first file's start, then each
/// file's end; empty without files), checking contiguity.
async fn read_chain(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    partition: i32,
) -> (Vec<Record>, Vec<i64>) {
    let mut bounds = Vec::new();
    let keys = data_keys(store, topic, partition).await;
    let mut records = Vec::new();
    let mut expected_start = None;
    for key in keys {
        let got = store.get(&key.to_string()).await.unwrap();
        assert_eq!(
            got.meta.crc32c,
            Some(rewind::storage::crc32c(&got.body)),
            "{key}: stored with the CRC32C of its bytes"
        );
        let body = got.body;
        let (meta, rows) = datafile::decode(body).unwrap();
        assert_eq!(
            (meta.topic.as_str(), meta.partition, meta.start),
            (topic, partition, key.start),
            "{key}"
        );
        if let Some(start) = expected_start {
            assert_eq!(meta.start, start, "{key}: the chain is contiguous");
        }
        assert_eq!(meta.record_count as usize, rows.len());
        assert!(
            rows.iter()
                .all(|r| r.offset >= meta.start && r.offset < meta.end),
            "{key}: rows inside [start, end)"
        );
        assert!(
            rows.windows(2).all(|w| w[0].offset < w[1].offset),
            "{key}: offsets increase"
        );
        assert_eq!(
            key.bucket,
            HourBucket::of_millis(rows[0].timestamp.unwrap()),
            "{key}: bucket of the first record"
        );
        if bounds.is_empty() {
            bounds.push(meta.start);
        }
        expected_start = Some(meta.end);
        bounds.push(meta.end);
        records.extend(rows);
    }
    (records, bounds)
}
