//! A generated archive for the benchmarks that need no Kafka: files written straight through the
//! data file encoder, with their checkpoints, as a sink would leave them.

use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rewind::archive::datafile;
use rewind::archive::documents::{self, Checkpoint, Identity, TopicMeta};
use rewind::archive::paths::{checkpoint_key, DataFileKey};
use rewind::archive::time::{rfc3339_millis, HourBucket};
use rewind::archive::typed::Decoding;
use rewind::archive::{Header, Record, TimestampType};
use rewind::storage::{LocalStore, ObjectStore, PutMode, StorageUrl};

/// Keys that look like ids (hashes), so that row-group min/max statistics prune nothing and the
/// bloom filters have to do the work, as with real keys.
pub fn key(p: i32, i: u64) -> Vec<u8> {
    let mut x = (p as u64) << 40 | i;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    format!("customer-{:016x}", x ^ (x >> 31)).into_bytes()
}

/// Write an archive of `topic` of `partitions` × `files` files of `per_file` records each, one
/// file a minute from 48 hours ago, whose values are `value(rng, partition, offset)`, with the
/// typed columns of `decoding` if given. Returns the store and the seconds spent encoding.
pub async fn generate(
    root: &std::path::Path,
    topic: &str,
    (partitions, files, per_file): (i32, u64, u64),
    value: &dyn Fn(&mut StdRng, i32, u64) -> Vec<u8>,
    decoding: Option<&Decoding>,
) -> (Arc<dyn ObjectStore>, f64) {
    let url = StorageUrl::parse(&format!("file://{}", root.display())).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(url).unwrap());
    let now = super::common::now_ms();
    documents::write_doc(
        &*store,
        "_archive.json",
        &Identity {
            format_version: 1,
            created_at: rfc3339_millis(now),
            cluster_id: "bench".into(),
            writer: "rewind bench".into(),
            id: None,
        },
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    documents::write_topic_meta(
        &*store,
        &TopicMeta {
            topic: topic.into(),
            partitions,
            replication_factor: 1,
            configs: Default::default(),
            updated_at: rfc3339_millis(now),
        },
    )
    .await
    .unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    let mut encoding = 0.0;
    let base = (now / 3_600_000 - 48) * 3_600_000;
    for p in 0..partitions {
        let mut last = String::new();
        for f in 0..files {
            let start = f * per_file;
            let ts0 = base + (f as i64) * 60_000;
            let records: Vec<Record> = (0..per_file)
                .map(|j| {
                    let v = value(&mut rng, p, start + j);
                    Record {
                        offset: (start + j) as i64,
                        timestamp: Some(ts0 + (j as i64) * 50_000 / per_file as i64),
                        timestamp_type: Some(TimestampType::Create),
                        key: Some(key(p, start + j)),
                        value: Some(v),
                        headers: vec![Header {
                            key: "source".into(),
                            value: Some(b"bench".to_vec()),
                        }],
                    }
                })
                .collect();
            let end = start + per_file;
            let meta =
                datafile::file_meta(topic, p, start as i64, end as i64, &records, "bench", now);
            let t = Instant::now();
            let (bytes, _) =
                datafile::encode_decoded_to(&meta, &records, decoding, Vec::new(), 16 << 20)
                    .unwrap();
            encoding += t.elapsed().as_secs_f64();
            let k = DataFileKey {
                topic: topic.into(),
                partition: p,
                bucket: HourBucket::of_millis(ts0),
                start: start as i64,
                end: None,
            }
            .to_string();
            store.put(&k, bytes.into(), PutMode::Create).await.unwrap();
            last = k;
        }
        let c = Checkpoint {
            format_version: 1,
            topic: topic.into(),
            partition: p,
            end: (files * per_file) as i64,
            last_file: last,
            max_timestamp: None,
            updated_at: rfc3339_millis(now),
        };
        documents::write_doc(&*store, &checkpoint_key(topic, p), &c, PutMode::Overwrite)
            .await
            .unwrap();
    }
    (store, encoding)
}
