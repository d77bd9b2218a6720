//! `verify --deep` and `find` on files with and without the checksums inside them, and with and
//! without a stored checksum.

use std::sync::Arc;

use crate::kafka::topics::TopicSelector;

use crate::archive::datafile;
use crate::archive::documents::{self, Identity};
use crate::archive::paths::DataFileKey;
use crate::archive::time::HourBucket;
use crate::archive::{Record, TimestampType};
use crate::ops::find::{self, FindOptions, KeyFilter};
use crate::storage::{LocalStore, ObjectStore, PutMode, StorageUrl};

const BASE: i64 = 1_795_428_000_000; // an hour's start

fn records() -> Vec<Record> {
    (0..50i64)
        .map(|i| Record {
            offset: i,
            timestamp: Some(BASE + i),
            timestamp_type: Some(TimestampType::Create),
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("value {i}").into_bytes()),
            headers: vec![],
        })
        .collect()
}

fn key() -> String {
    DataFileKey {
        topic: "t".into(),
        partition: 0,
        bucket: HourBucket::of_millis(BASE),
        start: 0,
        end: None,
    }
    .to_string()
}

/// An archive holding one data file `bytes`, put through the store (with a stored checksum) or
/// written straight to disk (without one).
async fn archive(
    bytes: bytes::Bytes,
    stored_checksum: bool,
) -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let url = StorageUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(url).unwrap());
    let identity = Identity {
        format_version: 1,
        created_at: "2026-11-24T00:00:00.000Z".into(),
        cluster_id: "c".into(),
        writer: "test".into(),
        id: None,
    };
    documents::write_doc(&*store, "_archive.json", &identity, PutMode::Create)
        .await
        .unwrap();
    let topic = serde_json::json!({"topic": "t", "partitions": 1, "replication_factor": 1,
        "configs": {}, "updated_at": "2026-11-24T00:00:00.000Z"});
    store
        .put(
            "_topics/t.json",
            serde_json::to_vec(&topic).unwrap().into(),
            PutMode::Create,
        )
        .await
        .unwrap();
    if stored_checksum {
        store.put(&key(), bytes, PutMode::Create).await.unwrap();
    } else {
        let path = dir.path().join(key());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &bytes).unwrap();
    }
    (dir, store)
}

/// (kind, key) of the problems `verify --deep` finds.
async fn deep(store: &Arc<dyn ObjectStore>) -> Vec<(&'static str, String)> {
    let report = super::verify(&**store, &TopicSelector::all(), true)
        .await
        .unwrap();
    assert_eq!(report.records, 50);
    report
        .problems
        .iter()
        .map(|p| (p.kind, p.key.clone()))
        .collect()
}

async fn find_all(store: &Arc<dyn ObjectStore>) -> (Vec<i64>, Vec<String>) {
    let opts = FindOptions {
        topic: "t".into(),
        partition: None,
        key: KeyFilter::Bytes(b"k7".to_vec()),
        from: None,
        to: None,
        headers: Vec::new(),
        limit: None,
    };
    let mut got = Vec::new();
    let stats = find::find(store.clone(), &opts, |_, _, r| got.push(r.offset))
        .await
        .unwrap();
    (got, stats.unchecked)
}

#[tokio::test]
async fn a_file_no_checksum_vouches_for_fails_deep_verify_and_find_names_it() {
    let recs = records();
    let meta = datafile::file_meta("t", 0, 0, 50, &recs, "c", 0);
    let old = datafile::encode_without_checksums(&meta, &recs);
    let new = datafile::encode(&meta, &recs).unwrap();
    // Without the checksums inside it, but stored with one: checked by the stored one.
    let (_d1, store) = archive(old.clone(), true).await;
    assert_eq!(deep(&store).await, vec![]);
    assert_eq!(find_all(&store).await, (vec![7], vec![]));
    // Neither: --deep fails naming it; find returns its records and names it as unchecked.
    let (_d2, store) = archive(old, false).await;
    assert_eq!(deep(&store).await, vec![("checksum", key())]);
    assert_eq!(find_all(&store).await, (vec![7], vec![key()]));
    // The checksums inside it alone: clean.
    let (_d3, store) = archive(new, false).await;
    assert_eq!(deep(&store).await, vec![]);
    assert_eq!(find_all(&store).await, (vec![7], vec![]));
}

/// A local archive holding `bytes` as its data file, without a stored checksum; verify's problems.
async fn hostile(
    bytes: bytes::Bytes,
    deep: bool,
) -> (
    Vec<(&'static str, String, String)>,
    Arc<dyn ObjectStore>,
    tempfile::TempDir,
) {
    let (dir, store) = archive(bytes, false).await;
    let report = super::verify(&*store, &TopicSelector::all(), deep)
        .await
        .unwrap();
    let problems = report
        .problems
        .iter()
        .map(|p| (p.kind, p.key.clone(), p.message.clone()))
        .collect();
    (problems, store, dir)
}

#[tokio::test]
async fn hostile_sizes_get_one_clear_error_naming_the_file() {
    let recs = records();
    let meta = datafile::file_meta("t", 0, 0, 50, &recs, "c", 0);
    // A footer claiming more than a reader accepts.
    let mut long = datafile::encode(&meta, &recs).unwrap().to_vec();
    let n = long.len();
    long[n - 8..n - 4].copy_from_slice(&(20u32 << 20).to_le_bytes());
    let (problems, _, _d) = hostile(long.into(), false).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    let (kind, key_, message) = &problems[0];
    assert_eq!((*kind, key_.as_str()), ("unreadable", key().as_str()));
    // The claim is checked against the file's size before anything is read for it.
    assert!(message.contains("20971528"), "{message}");
    // A page claiming 2 GiB uncompressed, in a file without checksums inside it.
    let old = datafile::encode_without_checksums(&meta, &recs);
    let crafted = datafile::tests::claim_uncompressed(&old, i32::MAX);
    let (problems, store, _d) = hostile(crafted, true).await;
    let decode: Vec<_> = problems.iter().filter(|p| p.0 == "decode").collect();
    assert_eq!(decode.len(), 1, "{problems:?}");
    assert_eq!(decode[0].1, key());
    assert!(
        decode[0].2.contains("claims 2147483647 uncompressed bytes"),
        "{}",
        decode[0].2
    );
    // find reads the file whole (no checksums inside it) and refuses it the same way.
    let opts = FindOptions {
        topic: "t".into(),
        partition: None,
        key: KeyFilter::Any,
        from: None,
        to: None,
        headers: Vec::new(),
        limit: None,
    };
    let err = find::find(store, &opts, |_, _, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&key()) && err.contains("claims 2147483647 uncompressed bytes"),
        "{err}"
    );
}
