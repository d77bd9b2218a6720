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

/// Every record archived for one partition, in chain order, after checking the chain is contiguous.
pub async fn chain(store: &Arc<dyn ObjectStore>, topic: &str, partition: i32) -> Vec<Record> {
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
        expected_start = Some(meta.end);
        records.extend(rows);
    }
    if let Some(end) = expected_start {
        let checkpoint = documents::read_checkpoint(&**store, topic, partition)
            .await
            .unwrap()
            .expect("a checkpoint");
        assert_eq!(
            checkpoint.doc.end, end,
            "the checkpoint is at the end of the chain"
        );
    }
    records
}
