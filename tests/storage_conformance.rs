//! One conformance suite for every storage backend: the same cases run against the local directory
//! backend, against the S3 backend talking to the test bed's real S3 server (MinIO), and against the
//! in-memory store the model-based tests use.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use rewind::storage::{
    crc32c, LocalStore, ObjectStore, PutMode, StorageError, StorageUrl, MIN_PART_SIZE,
};

fn local_store(dir: &tempfile::TempDir) -> Arc<dyn ObjectStore> {
    let url = StorageUrl::parse(&format!("file://{}/archive", dir.path().display())).unwrap();
    Arc::new(LocalStore::open(url).unwrap())
}

async fn s3_store() -> Arc<dyn ObjectStore> {
    Arc::new(common::s3_store().await)
}

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

async fn put_get_head_round_trip(store: Arc<dyn ObjectStore>) {
    let body = Bytes::from_static(b"\x00\xffbinary \xc3\x28 not utf-8");
    let put = store
        .put(
            "_checkpoints/orders/0.json",
            body.clone(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let got = store.get("_checkpoints/orders/0.json").await.unwrap();
    assert_eq!(got.body, body);
    assert_eq!(got.meta.etag, put.etag);
    assert_eq!(got.meta.size, body.len() as u64);
    assert_eq!(
        got.meta.crc32c,
        Some(crc32c(&body)),
        "stored with its CRC32C"
    );
    let head = store.head("_checkpoints/orders/0.json").await.unwrap();
    assert_eq!(
        (head.size, head.etag, head.crc32c),
        (body.len() as u64, put.etag.clone(), Some(crc32c(&body)))
    );

    let replaced = store
        .put(
            "_checkpoints/orders/0.json",
            Bytes::from_static(b"v2"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_ne!(replaced.etag, put.etag, "a new version has a new etag");
    assert_eq!(
        store.get("_checkpoints/orders/0.json").await.unwrap().body,
        Bytes::from_static(b"v2")
    );

    store
        .put("empty", Bytes::new(), PutMode::Create)
        .await
        .unwrap();
    let empty = store.get("empty").await.unwrap();
    assert_eq!(
        (empty.body.len(), empty.meta.crc32c),
        (0, Some(crc32c(b"")))
    );

    assert!(matches!(
        store.get("missing").await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        store.head("missing").await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .put("../escape", Bytes::new(), PutMode::Overwrite)
            .await,
        Err(StorageError::InvalidKey { .. })
    ));
}

async fn create_only_refuses_an_existing_key(store: Arc<dyn ObjectStore>) {
    let key = "data/topic=t/partition=0/date=2026-11-23/hour=10/00000000000000000000.parquet";
    store
        .put(key, Bytes::from_static(b"first"), PutMode::Create)
        .await
        .unwrap();
    let err = store
        .put(key, Bytes::from_static(b"second"), PutMode::Create)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        store.get(key).await.unwrap().body,
        Bytes::from_static(b"first"),
        "the existing object is untouched"
    );
}

async fn concurrent_creates_have_exactly_one_winner(store: Arc<dyn ObjectStore>) {
    for round in 0..3 {
        let key = format!("race/{round}.parquet");
        let tasks: Vec<_> = (0..12u8)
            .map(|i| {
                let store = store.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    (
                        i,
                        store
                            .put(&key, Bytes::from(vec![i; 1024]), PutMode::Create)
                            .await,
                    )
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (i, Ok(_)) => winners.push(i),
                (_, Err(StorageError::AlreadyExists { .. })) => {}
                (_, Err(other)) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert_eq!(
            store.get(&key).await.unwrap().body,
            Bytes::from(vec![winners[0]; 1024]),
            "the winner's bytes are stored"
        );
    }
}

async fn stale_compare_and_swap_is_refused(store: Arc<dyn ObjectStore>) {
    let key = "_checkpoints/t/3.json";
    let v1 = store
        .put(key, Bytes::from_static(b"{\"end\":10}"), PutMode::Create)
        .await
        .unwrap();
    let v2 = store
        .put(
            key,
            Bytes::from_static(b"{\"end\":20}"),
            PutMode::Update {
                etag: v1.etag.clone(),
            },
        )
        .await
        .unwrap();
    let stale = store
        .put(
            key,
            Bytes::from_static(b"{\"end\":15}"),
            PutMode::Update {
                etag: v1.etag.clone(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale, StorageError::PreconditionFailed { .. }),
        "{stale:?}"
    );
    let current = store.get(key).await.unwrap();
    assert_eq!(current.body, Bytes::from_static(b"{\"end\":20}"));
    assert_eq!(current.meta.etag, v2.etag);

    let gone = store
        .put(
            "_checkpoints/t/missing.json",
            Bytes::from_static(b"x"),
            PutMode::Update {
                etag: v2.etag.clone(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            gone,
            StorageError::NotFound { .. } | StorageError::PreconditionFailed { .. }
        ),
        "{gone:?}"
    );
    assert!(matches!(
        store.head("_checkpoints/t/missing.json").await,
        Err(StorageError::NotFound { .. })
    ));
}

async fn concurrent_compare_and_swap_has_exactly_one_winner(store: Arc<dyn ObjectStore>) {
    let key = "_checkpoints/t/cas.json";
    // S3 ETags of simple PUTs are the body's MD5, so every writer's body must differ from the base
    // body: a writer that stored the base bytes again would leave the ETag unchanged and let a
    // second writer's If-Match succeed (ABA), which is not what this test is about.
    let base = store
        .put(key, Bytes::from_static(b"base"), PutMode::Create)
        .await
        .unwrap();
    let tasks: Vec<_> = (1..=10u8)
        .map(|i| {
            let store = store.clone();
            let etag = base.etag.clone();
            tokio::spawn(async move {
                (
                    i,
                    store
                        .put(key, Bytes::from(vec![b'0' + i]), PutMode::Update { etag })
                        .await,
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (i, Ok(_)) => winners.push(i),
            (_, Err(StorageError::PreconditionFailed { .. })) => {}
            (_, Err(other)) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners {winners:?}");
    assert_eq!(
        store.get(key).await.unwrap().body,
        Bytes::from(vec![b'0' + winners[0]])
    );
}

async fn ranged_reads(store: Arc<dyn ObjectStore>) {
    let body = pattern(10_000, 7);
    store
        .put("ranged", body.clone(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(
        store.get_range("ranged", 0..10).await.unwrap(),
        body.slice(0..10)
    );
    assert_eq!(
        store.get_range("ranged", 4096..8192).await.unwrap(),
        body.slice(4096..8192)
    );
    assert_eq!(
        store.get_range("ranged", 9_990..20_000).await.unwrap(),
        body.slice(9_990..),
        "the end is clamped"
    );
    assert_eq!(store.get_range("ranged", 5..5).await.unwrap().len(), 0);
    let err = store.get_range("ranged", 10_000..10_010).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::InvalidRange {
                start: 10_000,
                end: 10_010,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        store.get_range("nothing-here", 0..1).await,
        Err(StorageError::NotFound { .. })
    ));
}

async fn listing_is_paginated_and_in_key_order(store: Arc<dyn ObjectStore>) {
    // More than one page (1,000 keys), across folders whose names make folder order differ from
    // key order ('-' sorts before '/').
    let mut keys = BTreeSet::new();
    for i in 0..1_030u32 {
        keys.insert(format!(
            "data/topic=a/partition={}/{:020}.parquet",
            i % 3,
            i
        ));
    }
    keys.insert("data/topic=a-b/partition=0/00000000000000000000.parquet".into());
    keys.insert("data/topic=ab/partition=0/00000000000000000000.parquet".into());
    let others = ["_archive.json", "datum", "zzz/last"];
    let all: Vec<String> = keys
        .iter()
        .cloned()
        .chain(others.iter().map(|s| s.to_string()))
        .collect();
    let puts = futures::stream::iter(all.into_iter().map(|key| {
        let store = store.clone();
        async move {
            store
                .put(&key, Bytes::from(key.clone().into_bytes()), PutMode::Create)
                .await
                .map(|_| ())
        }
    }));
    use futures::StreamExt;
    let results: Vec<_> = puts.buffer_unordered(32).collect().await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );

    let first = store.list_page("data/", None).await.unwrap();
    assert_eq!(first.objects.len(), 1_000, "a full first page");
    assert!(first.next.is_some(), "more pages follow");
    let second = store.list_page("data/", first.next.clone()).await.unwrap();
    assert!(second.next.is_none());

    let paged: Vec<String> = first
        .objects
        .iter()
        .chain(second.objects.iter())
        .map(|o| o.key.clone())
        .collect();
    let expected: Vec<String> = keys.iter().cloned().collect();
    assert_eq!(paged, expected, "pages cover every key once, in key order");

    let listed: Vec<String> = store
        .list("data/topic=a")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, expected, "a prefix may end inside a folder name");
    let one: Vec<String> = store
        .list("data/topic=a/partition=1/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(one.len(), 343);
    assert!(one.windows(2).all(|w| w[0] < w[1]));
    let sizes = store.list("_archive").await.unwrap();
    assert_eq!(sizes.len(), 1);
    assert_eq!(sizes[0].size, "_archive.json".len() as u64);
    assert!(store.list("nothing/").await.unwrap().is_empty());
}

async fn batch_delete(store: Arc<dyn ObjectStore>) {
    let keys: Vec<String> = (0..1_005).map(|i| format!("old/{i:05}")).collect();
    for chunk in keys.chunks(100) {
        futures::future::try_join_all(
            chunk
                .iter()
                .map(|k| store.put(k, Bytes::from_static(b"x"), PutMode::Overwrite)),
        )
        .await
        .unwrap();
    }
    store
        .put("keep/me", Bytes::from_static(b"y"), PutMode::Overwrite)
        .await
        .unwrap();
    let mut doomed = keys.clone();
    doomed.push("old/never-existed".into());
    store.delete_many(&doomed).await.unwrap();
    assert!(store.list("old/").await.unwrap().is_empty());
    assert_eq!(
        store.get("keep/me").await.unwrap().body,
        Bytes::from_static(b"y")
    );
    store.delete("keep/me").await.unwrap();
    store.delete("keep/me").await.unwrap();
    assert!(
        store.list("").await.unwrap().is_empty(),
        "nothing left, not even backend files"
    );
}

async fn multipart_upload_of_100_mib_round_trips(store: Arc<dyn ObjectStore>) {
    let body = pattern(100 * 1024 * 1024, 42);
    let key = "data/topic=big/partition=0/date=2026-11-23/hour=00/00000000000000000000.parquet";
    let put = store
        .put_multipart(key, body.clone(), 16 * 1024 * 1024, PutMode::Create)
        .await
        .unwrap();
    let got = store.get(key).await.unwrap();
    assert_eq!(got.meta.size, body.len() as u64);
    assert!(got.body == body, "100 MiB round-trip differs");
    let head = store.head(key).await.unwrap();
    assert_eq!(head.etag, put.etag);
    assert_eq!(
        (got.meta.crc32c, head.crc32c),
        (Some(crc32c(&body)), Some(crc32c(&body))),
        "a multipart object carries the CRC32C of its whole body"
    );
    assert_eq!(
        store
            .get_range(key, 50 * 1024 * 1024..50 * 1024 * 1024 + 100)
            .await
            .unwrap(),
        body.slice(50 * 1024 * 1024..50 * 1024 * 1024 + 100)
    );
    assert!(
        store.incomplete_uploads(key).await.unwrap().is_empty(),
        "no parts left behind"
    );
}

async fn multipart_uploads_are_invisible_until_complete_and_abort_leaves_nothing(
    store: Arc<dyn ObjectStore>,
) {
    let key = "data/topic=t/partition=0/x.parquet";
    let mut upload = store.start_multipart(key, PutMode::Create).await.unwrap();
    upload.put_part(pattern(MIN_PART_SIZE, 1)).await.unwrap();
    upload.put_part(pattern(MIN_PART_SIZE, 2)).await.unwrap();
    assert!(
        matches!(store.head(key).await, Err(StorageError::NotFound { .. })),
        "no reader sees a partial object"
    );
    assert!(store.list("data/").await.unwrap().is_empty());
    // Asked by exact key: MinIO lists multipart uploads only for a full object name.
    assert_eq!(
        store.incomplete_uploads(key).await.unwrap(),
        vec![key.to_string()]
    );
    upload.abort().await.unwrap();
    assert!(
        store.incomplete_uploads(key).await.unwrap().is_empty(),
        "abort removes every part"
    );
    assert!(matches!(
        store.head(key).await,
        Err(StorageError::NotFound { .. })
    ));
}

async fn multipart_create_over_an_existing_key_fails_cleanly(store: Arc<dyn ObjectStore>) {
    let key = "data/topic=t/partition=1/y.parquet";
    store
        .put(key, Bytes::from_static(b"original"), PutMode::Create)
        .await
        .unwrap();
    let mut upload = store.start_multipart(key, PutMode::Create).await.unwrap();
    upload.put_part(pattern(MIN_PART_SIZE, 3)).await.unwrap();
    upload.put_part(pattern(10, 3)).await.unwrap();
    assert_eq!(
        store.incomplete_uploads(key).await.unwrap().len(),
        1,
        "the parts are stored until completion"
    );
    let err = upload.complete().await.unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(
        store.get(key).await.unwrap().body,
        Bytes::from_static(b"original")
    );
    assert!(
        store.incomplete_uploads(key).await.unwrap().is_empty(),
        "the refused upload was aborted"
    );

    // Compare-and-swap completion: the right etag wins, a stale one is refused.
    let etag = store.head(key).await.unwrap().etag;
    let mut upload = store
        .start_multipart(key, PutMode::Update { etag: etag.clone() })
        .await
        .unwrap();
    upload.put_part(pattern(MIN_PART_SIZE, 4)).await.unwrap();
    upload.put_part(Bytes::from_static(b"tail")).await.unwrap();
    upload.complete().await.unwrap();
    assert_eq!(
        store.head(key).await.unwrap().size,
        MIN_PART_SIZE as u64 + 4
    );
    let stale = store
        .put_multipart(
            key,
            pattern(MIN_PART_SIZE + 1, 5),
            MIN_PART_SIZE,
            PutMode::Update { etag },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale, StorageError::PreconditionFailed { .. }),
        "{stale:?}"
    );
    assert!(store.incomplete_uploads("").await.unwrap().is_empty());
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$case(super::local_store(&dir)).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::s3_store().await).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(std::sync::Arc::new(rewind::storage::MemoryStore::new())).await;
                }
            )*
        }
    };
}

conformance!(
    put_get_head_round_trip,
    create_only_refuses_an_existing_key,
    concurrent_creates_have_exactly_one_winner,
    stale_compare_and_swap_is_refused,
    concurrent_compare_and_swap_has_exactly_one_winner,
    ranged_reads,
    listing_is_paginated_and_in_key_order,
    batch_delete,
    multipart_upload_of_100_mib_round_trips,
    multipart_uploads_are_invisible_until_complete_and_abort_leaves_nothing,
    multipart_create_over_an_existing_key_fails_cleanly,
);
