use bytes::Bytes;
use parquet::file::metadata::PageIndexPolicy;

use super::*;
use crate::archive::documents::{self, Identity};
use crate::archive::time::HourBucket;
use crate::archive::{Header, TimestampType};
use crate::storage::{LocalStore, PutMode, StorageUrl};

const BASE: i64 = 1_795_428_000_000; // an hour's start

fn records() -> Vec<Record> {
    (0..200_000i64)
        .map(|i| Record {
            offset: 1_000 + i,
            // Mostly increasing, with late records, and a few without a timestamp.
            timestamp: (i % 997 != 5)
                .then_some(BASE + i * 15 - if i % 89 == 3 { 40_000 } else { 0 }),
            timestamp_type: Some(TimestampType::Create),
            key: match i % 10 {
                0 => None,
                1 => Some(vec![0xff, (i % 7) as u8]),
                _ => Some(format!("id-{}", i % 5_000).into_bytes()),
            },
            value: (i % 31 != 0).then(|| format!("v{i}").into_bytes()),
            headers: vec![Header {
                key: "h".into(),
                value: (i % 3 != 0).then(|| format!("{}", i % 4).into_bytes()),
            }],
        })
        .collect()
}

/// A store holding one data file of many row groups and many pages per column.
async fn store_with(records: &[Record]) -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
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
    let end = records.last().unwrap().offset + 1;
    let meta = datafile::file_meta("t", 0, records[0].offset, end, records, "c", 0);
    let bytes = datafile::encode_to(&meta, records, Vec::new(), 768 * 1024).unwrap();
    let parsed = parquet::file::metadata::ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Required)
        .parse_and_finish(&Bytes::from(bytes.clone()))
        .unwrap();
    assert!(
        parsed.num_row_groups() >= 3,
        "{} row groups",
        parsed.num_row_groups()
    );
    let timestamp_pages = parsed
        .page_index_for_row_group(0)
        .offset_index(1)
        .unwrap()
        .page_locations()
        .len();
    assert!(
        timestamp_pages >= 2,
        "{timestamp_pages} timestamp pages in a row group"
    );
    let key = DataFileKey {
        topic: "t".into(),
        partition: 0,
        bucket: HourBucket::of_millis(BASE),
        start: records[0].offset,
        end: None,
    };
    store
        .put(&key.to_string(), bytes.into(), PutMode::Create)
        .await
        .unwrap();
    (dir, store)
}

async fn run(store: &Arc<dyn ObjectStore>, opts: FindOptions) -> (Vec<i64>, FindStats) {
    let mut got = Vec::new();
    let stats = find(store.clone(), &opts, |_, _, r| got.push(r.offset))
        .await
        .unwrap();
    (got, stats)
}

fn opts() -> FindOptions {
    FindOptions {
        topic: "t".into(),
        partition: None,
        key: KeyFilter::Any,
        from: None,
        to: None,
        headers: Vec::new(),
        limit: None,
    }
}

#[tokio::test]
async fn pruning_on_many_row_groups_and_pages_never_drops_a_match() {
    let all = records();
    let (_dir, store) = store_with(&all).await;
    let expect = |pred: &dyn Fn(&Record) -> bool| -> Vec<i64> {
        all.iter().filter(|r| pred(r)).map(|r| r.offset).collect()
    };
    // Windows inside one page, across pages and row groups, and at the late records.
    for (from, to) in [
        (BASE + 10_000, BASE + 10_500),
        (BASE + 500_000, BASE + 2_100_000),
        (BASE + 1_999_990, BASE + 2_000_010),
        (BASE - 40_000, BASE + 1),
    ] {
        let (got, stats) = run(
            &store,
            FindOptions {
                from: Some(from),
                to: Some(to),
                ..opts()
            },
        )
        .await;
        assert_eq!(
            got,
            expect(&|r| r.timestamp.is_some_and(|t| t >= from && t < to)),
            "[{from}, {to})"
        );
        assert!(stats.bytes_read > 0);
    }
    for key in [
        KeyFilter::Bytes(b"id-1234".to_vec()),
        KeyFilter::Bytes(vec![0xff, 3]),
        KeyFilter::Null,
        KeyFilter::Bytes(b"absent".to_vec()),
    ] {
        let (got, _) = run(
            &store,
            FindOptions {
                key: key.clone(),
                ..opts()
            },
        )
        .await;
        let want = expect(&|r| match &key {
            KeyFilter::Null => r.key.is_none(),
            KeyFilter::Bytes(k) => r.key.as_deref() == Some(k.as_slice()),
            KeyFilter::Any => true,
        });
        assert_eq!(got, want, "{key:?}");
    }
    // A key with a window and a header, including a null header value.
    let (got, _) = run(
        &store,
        FindOptions {
            key: KeyFilter::Bytes(b"id-12".to_vec()),
            from: Some(BASE),
            to: Some(BASE + 2_500_000),
            headers: vec![("h".into(), None)],
            ..opts()
        },
    )
    .await;
    let want = expect(&|r| {
        r.key.as_deref() == Some(b"id-12")
            && r.timestamp
                .is_some_and(|t| (BASE..BASE + 2_500_000).contains(&t))
            && r.headers[0].value.is_none()
    });
    assert!(!want.is_empty());
    assert_eq!(got, want);
    // The page index at work: a narrow window reads less than everything.
    let (_, narrow) = run(
        &store,
        FindOptions {
            from: Some(BASE + 10_000),
            to: Some(BASE + 10_500),
            ..opts()
        },
    )
    .await;
    let (_, everything) = run(&store, opts()).await;
    assert!(
        narrow.bytes_read * 2 < everything.bytes_read,
        "{} vs {}",
        narrow.bytes_read,
        everything.bytes_read
    );
    // verify reads the footer only (metadata mode), and with --deep agrees the file is sound
    // (the hand-made archive lacks _topics/ only).
    let counting = crate::storage::testing::Counting::new(store.clone());
    let shallow = crate::ops::verify::verify(
        &counting,
        &crate::kafka::topics::TopicSelector::all(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(shallow.files, 1);
    let read = counting.bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        read <= 64 * 1024 + 4_096 && read * 4 < everything.archive_bytes,
        "metadata mode read {read} of {} bytes",
        everything.archive_bytes
    );
    let report =
        crate::ops::verify::verify(&*store, &crate::kafka::topics::TopicSelector::all(), true)
            .await
            .unwrap();
    let kinds: Vec<_> = report.problems.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, vec!["topic"], "{:?}", report.problems);
    assert_eq!(report.records, all.len() as u64);
    // --limit stops at the limit.
    let (got, _) = run(
        &store,
        FindOptions {
            limit: Some(7),
            ..opts()
        },
    )
    .await;
    assert_eq!(got, all[..7].iter().map(|r| r.offset).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_key_look_up_reads_a_small_part_of_a_large_file() {
    let all = records();
    let (_dir, store) = store_with(&all).await;
    let (got, stats) = run(
        &store,
        FindOptions {
            key: KeyFilter::Bytes(b"absent".to_vec()),
            ..opts()
        },
    )
    .await;
    assert!(got.is_empty());
    assert_eq!(
        stats.row_groups_scanned, 0,
        "the bloom filters rule every group out"
    );
    assert!(
        stats.bytes_read * 4 < stats.archive_bytes,
        "read {} of {} bytes",
        stats.bytes_read,
        stats.archive_bytes
    );
}
