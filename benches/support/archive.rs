//! A generated archive for the benchmarks that need no Kafka: files written straight through the
//! data file encoder, with their checkpoints, as a sink would leave them; and what those benchmarks
//! share around it (their flags, folder, DuckDB and file counts).

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

/// The value of flag `--name` of the bench's command line, or `default`.
pub fn flag<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().ok().expect("a flag's value"))
}

/// Where the generated archives go: `REWIND_BENCH_DIR` keeps them between runs (for profiling);
/// by default a temporary directory, deleted with `temp`.
pub fn bench_dir(temp: &tempfile::TempDir) -> std::path::PathBuf {
    std::env::var_os("REWIND_BENCH_DIR").map_or(temp.path().to_path_buf(), Into::into)
}

/// The Python of the DuckDB environment `scripts/duckdb.sh` installs.
pub fn duckdb_python() -> String {
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/duckdb.sh"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Bytes of the files under `dir`.
pub fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// The hour folders of partition 0 of `topic` under `root`, and the files in them.
pub fn hours_and_files(root: &std::path::Path, topic: &str) -> (usize, usize) {
    let part = root.join(format!("data/topic={topic}/partition=0"));
    let (mut hours, mut files) = (0, 0);
    for date in std::fs::read_dir(&part).unwrap() {
        for hour in std::fs::read_dir(date.unwrap().path()).unwrap() {
            hours += 1;
            files += std::fs::read_dir(hour.unwrap().path()).unwrap().count();
        }
    }
    (hours, files)
}
