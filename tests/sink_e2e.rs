//! The sink against the real broker: what it archives is read back from the Parquet files and must
//! equal, byte for byte and offset for offset, what Kafka holds; the chain must be contiguous and
//! every record archived exactly once across restarts and interrupted commits.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{consume, create_topic, header, produce, produce_transaction, record};
use rewind::archive::datafile;
use rewind::archive::documents;
use rewind::archive::paths::DataFileKey;
use rewind::archive::rotation::RollingPolicy;
use rewind::archive::Record;
use rewind::sink::{self, SinkOptions, SinkReport};
use rewind::storage::{
    GetResult, ListPage, LocalStore, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutResult,
    StorageResult, StorageUrl,
};

fn local(dir: &tempfile::TempDir) -> Arc<dyn ObjectStore> {
    Arc::new(
        LocalStore::open(
            StorageUrl::parse(&format!("file://{}/archive", dir.path().display())).unwrap(),
        )
        .unwrap(),
    )
}

fn options(topics: &str) -> SinkOptions {
    SinkOptions {
        topics: rewind::kafka::topics::TopicSelector::new(topics).unwrap(),
        group: Some(common::unique("sink")),
        once: true,
        policy: RollingPolicy::default(),
        buffer_budget: 256 << 20,
        part_size: 5 << 20,
        uploads_in_flight: rewind::sink::default_uploads_in_flight(),
        discovery_interval: Duration::from_secs(30),
        allow_cluster_change: false,
        drain_timeout: Duration::from_secs(30),
        progress: false,
        group_snapshot_interval: std::time::Duration::ZERO,
        live: None,
        admin_api: true,
        decoders: None,
    }
}

async fn snapshot(store: &Arc<dyn ObjectStore>, opts: SinkOptions) -> SinkReport {
    let run = sink::run(
        common::kafka::config(),
        store.clone(),
        opts,
        std::future::pending(),
    );
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the snapshot finishes")
        .expect("the sink succeeds")
}

fn sample(base: i64) -> Vec<Record> {
    vec![
        record(
            Some(b"order-1"),
            Some(b"{\"amount\": 42}"),
            vec![
                header("trace", Some(b"a")),
                header("trace", Some(b"b")),
                header("nullable", None),
            ],
            base,
        ),
        record(None, Some(&[0, 159, 146, 150, 255]), vec![], base + 1),
        record(
            Some(&[0xff, 0x00, 0xfe]),
            None,
            vec![header("deleted-by", Some(b"gc"))],
            base + 2,
        ),
        record(
            Some(b""),
            Some(b""),
            vec![header("", Some(b""))],
            base - 3_600_000,
        ),
        record(Some(b"big"), Some(&vec![7u8; 950_000]), vec![], base + 3),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_archives_every_record_byte_exact() {
    let prefix = common::unique("sink-exact");
    let (create, log_append, empty) = (
        format!("{prefix}.orders-v1"),
        format!("{prefix}.audit"),
        format!("{prefix}.empty"),
    );
    create_topic(&create, 3, &[("max.message.bytes", "2097152")]).await;
    create_topic(
        &log_append,
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    )
    .await;
    create_topic(&empty, 2, &[]).await;
    let base = common::now_ms() - 60_000;
    let mut produced = BTreeMap::new();
    for partition in 0..3 {
        produced.insert(
            (create.clone(), partition),
            produce(&create, partition, &sample(base + i64::from(partition))).await,
        );
    }
    produce(&log_append, 0, &sample(base)).await;
    let audit = log_append.clone();
    let broker_view: Vec<Record> = tokio::task::spawn_blocking(move || consume(&audit, 0, 5))
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    produced.insert((log_append.clone(), 0), broker_view);

    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    let report = snapshot(&store, options(&format!("{}\\..*", regex::escape(&prefix)))).await;
    assert_eq!(report.records, 20);
    assert_eq!(report.partitions, 6);

    for ((topic, partition), want) in &produced {
        let got = common::archive::chain(&store, topic, *partition).await;
        assert_eq!(&got, want, "{topic}/{partition}");
    }
    for partition in 0..2 {
        assert!(common::archive::chain(&store, &empty, partition)
            .await
            .is_empty());
    }
    let meta: serde_json::Value = serde_json::from_slice(
        &store
            .get(&format!("_topics/{create}.json"))
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(meta["partitions"], 3);
    assert_eq!(meta["configs"]["max.message.bytes"], "2097152");
    assert_eq!(meta["configs"]["retention.ms"], "-1");
    let audit_meta: serde_json::Value = serde_json::from_slice(
        &store
            .get(&format!("_topics/{log_append}.json"))
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(
        audit_meta["configs"]["message.timestamp.type"],
        "LogAppendTime"
    );
    assert!(store.head(&format!("_topics/{empty}.json")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_continue_the_chain_exactly_once_even_after_an_interrupted_commit() {
    let topic = common::unique("sink-chain");
    create_topic(&topic, 1, &[]).await;
    let base = common::now_ms() - 60_000;
    let first = produce(&topic, 0, &sample(base)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    let topics = regex::escape(&topic);

    let mut small_files = options(&topics);
    small_files.policy.max_records = 2;
    let report = snapshot(&store, small_files.clone()).await;
    assert_eq!((report.records, report.files), (5, 3));

    // Nothing new: nothing written.
    let again = snapshot(&store, small_files.clone()).await;
    assert_eq!((again.records, again.files), (0, 0));

    // A crash after the upload but before the checkpoint: the checkpoint lags behind the files.
    let second = produce(&topic, 0, &sample(base + 10)).await;
    snapshot(&store, small_files.clone()).await;
    let checkpoint_key = format!("_checkpoints/{topic}/0.json");
    let lagging = documents::Checkpoint {
        end: 5,
        ..documents::read_checkpoint(&*store, &topic, 0)
            .await
            .unwrap()
            .unwrap()
            .doc
    };
    store
        .put(
            &checkpoint_key,
            bytes::Bytes::from(serde_json::to_vec(&lagging).unwrap()),
            rewind::storage::PutMode::Overwrite,
        )
        .await
        .unwrap();
    let third = produce(&topic, 0, &sample(base + 20)).await;
    let resumed = snapshot(&store, small_files.clone()).await;
    assert_eq!(resumed.records, 5, "only the new records are archived");

    // A crash before the checkpoint was ever written: the files alone are the truth.
    store.delete(&checkpoint_key).await.unwrap();
    let fourth = produce(&topic, 0, &sample(base + 30)).await;
    let from_files = snapshot(&store, small_files).await;
    assert_eq!(from_files.records, 5);

    let all: Vec<Record> = [first, second, third, fourth].concat();
    assert_eq!(
        common::archive::chain(&store, &topic, 0).await,
        all,
        "every record exactly once, in order"
    );
}

/// A store seen through a skewed lens: listings that miss the data files (the view of a worker
/// that listed before another worker, or its own earlier crashed run, wrote them), or a proxy that
/// drops `If-None-Match` and `If-Match` so every put overwrites.
#[derive(Debug)]
struct Skewed {
    inner: Arc<dyn ObjectStore>,
    stale_data_listing: bool,
    ignore_conditions: bool,
}

/// The store as a second worker sees it that neither lists the data files nor finds a checkpoint
/// of `topic`'s first `partitions` partitions (they are deleted).
async fn blind_zombie(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    partitions: i32,
) -> Arc<dyn ObjectStore> {
    for partition in 0..partitions {
        store
            .delete(&format!("_checkpoints/{topic}/{partition}.json"))
            .await
            .unwrap();
    }
    Arc::new(Skewed {
        inner: store.clone(),
        stale_data_listing: true,
        ignore_conditions: false,
    })
}

#[async_trait::async_trait]
impl ObjectStore for Skewed {
    async fn put(&self, key: &str, body: bytes::Bytes, mode: PutMode) -> StorageResult<PutResult> {
        let mode = if self.ignore_conditions {
            PutMode::Overwrite
        } else {
            mode
        };
        self.inner.put(key, body, mode).await
    }
    async fn get(&self, key: &str) -> StorageResult<GetResult> {
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> StorageResult<bytes::Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> StorageResult<ObjectMeta> {
        self.inner.head(key).await
    }
    async fn list_page(&self, prefix: &str, token: Option<String>) -> StorageResult<ListPage> {
        if self.stale_data_listing && prefix.starts_with("data/") {
            return Ok(ListPage::default());
        }
        self.inner.list_page(prefix, token).await
    }
    async fn delete_many(&self, keys: &[String]) -> StorageResult<()> {
        self.inner.delete_many(keys).await
    }
    async fn start_multipart(
        &self,
        key: &str,
        mode: PutMode,
    ) -> StorageResult<Box<dyn MultipartUpload>> {
        self.inner.start_multipart(key, mode).await
    }
    async fn incomplete_uploads(&self, prefix: &str) -> StorageResult<Vec<String>> {
        self.inner.incomplete_uploads(prefix).await
    }
    fn url(&self) -> &StorageUrl {
        self.inner.url()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_written_by_another_worker_is_adopted_not_duplicated() {
    let topic = common::unique("sink-adopt");
    create_topic(&topic, 1, &[]).await;
    let produced = produce(&topic, 0, &sample(common::now_ms() - 60_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    let mut opts = options(&regex::escape(&topic));
    opts.policy.max_records = 2;
    assert_eq!(snapshot(&store, opts.clone()).await.files, 3);
    let files_before = store.list("data/").await.unwrap();

    // A second worker that neither sees the files nor the checkpoint writes the same starts again:
    // every create-only put fails, and it adopts the existing files instead of duplicating them.
    let zombie = blind_zombie(&store, &topic, 1).await;
    let report = snapshot(&zombie, opts).await;
    assert_eq!(
        (report.files, report.records, report.adopted_files),
        (0, 0, 3),
        "{report:?}"
    );
    assert_eq!(
        store.list("data/").await.unwrap(),
        files_before,
        "no file was replaced or added"
    );
    assert_eq!(common::archive::chain(&store, &topic, 0).await, produced);
}

/// More partitions than the sink opens, or flushes at its targets, at once (32): every batch, and
/// the last one short, must leave each partition's chain equal to its log and its checkpoint at the
/// log's end. A second worker that sees neither files nor checkpoints, with files of up to 1,000
/// records and a budget a few partitions fill, adopts every file: memory pressure flushes
/// partitions that reached their targets while they wait to be settled, adopting a file shorter
/// than what they read, and each must read on from there to the next. A third run continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_of_many_partitions_archives_each_one_exactly() {
    const PARTITIONS: i32 = 75;
    let topic = common::unique("sink-wide");
    create_topic(&topic, PARTITIONS, &[]).await;
    let base = common::now_ms() - 60_000;
    let batch = |round: i64, partition: i32| -> Vec<Record> {
        // 0 to 6 records: some partitions stay empty, others need several files.
        (0..i64::from(partition % 7))
            .map(|i| {
                let value = format!("{round}/{partition}/{i}/{}", "v".repeat(20_000));
                record(Some(b"k"), Some(value.as_bytes()), vec![], base + i)
            })
            .collect()
    };
    let produce_round = |round: i64| {
        let topic = topic.clone();
        async move {
            let sent = futures::future::join_all((0..PARTITIONS).map(|p| {
                let (topic, records) = (topic.clone(), batch(round, p));
                async move { produce(&topic, p, &records).await }
            }))
            .await;
            sent
        }
    };
    let mut produced: Vec<Vec<Record>> = produce_round(0).await;
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    let mut opts = options(&regex::escape(&topic));
    opts.policy.max_records = 2;
    let total = |produced: &[Vec<Record>]| produced.iter().map(Vec::len).sum::<usize>() as u64;
    let check = |produced: Vec<Vec<Record>>| {
        let store = store.clone();
        let topic = topic.clone();
        async move {
            for (partition, want) in produced.iter().enumerate() {
                let partition = partition as i32;
                let got = common::archive::chain(&store, &topic, partition).await;
                assert_eq!(&got, want, "{topic}/{partition}");
                let checkpoint = documents::read_checkpoint(store.as_ref(), &topic, partition)
                    .await
                    .unwrap()
                    .expect("every partition has a checkpoint");
                let log_end = want.last().map_or(0, |r| r.offset + 1);
                assert_eq!(checkpoint.doc.end, log_end, "{topic}/{partition}");
            }
        }
    };

    let report = snapshot(&store, opts.clone()).await;
    assert_eq!(report.records, total(&produced), "{report:?}");
    // Files of two records: most go up in the background while their partitions read on.
    assert!(report.background_uploads > 0, "{report:?}");
    check(produced.clone()).await;

    let files_before = store.list("data/").await.unwrap();
    let zombie = blind_zombie(&store, &topic, PARTITIONS).await;
    let mut crowded = opts.clone();
    crowded.policy.max_records = 1000;
    crowded.buffer_budget = 1 << 20;
    let report = snapshot(&zombie, crowded).await;
    assert_eq!(
        (report.files, report.records, report.adopted_files),
        (0, 0, files_before.len() as u64),
        "{report:?}"
    );
    assert_eq!(store.list("data/").await.unwrap(), files_before);
    check(produced.clone()).await;

    for (all, more) in produced.iter_mut().zip(produce_round(1).await) {
        all.extend(more);
    }
    let report = snapshot(&store, opts).await;
    assert_eq!(report.records, total(&produced) / 2, "{report:?}");
    check(produced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aborted_transactions_are_never_archived() {
    let topic = common::unique("sink-tx");
    create_topic(&topic, 1, &[]).await;
    let base = common::now_ms() - 60_000;
    let committed = sample(base);
    produce_transaction(&topic, 0, &committed[..2], true).await;
    produce_transaction(
        &topic,
        0,
        &[record(Some(b"aborted"), Some(b"never"), vec![], base)],
        false,
    )
    .await;
    produce_transaction(&topic, 0, &committed[2..4], true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    let report = snapshot(&store, options(&regex::escape(&topic))).await;
    assert_eq!(report.records, 4);
    let got = common::archive::chain(&store, &topic, 0).await;
    assert_eq!(got.len(), 4);
    assert!(got
        .iter()
        .all(|r| r.key.as_deref() != Some(b"aborted".as_slice())));
    let strip = |rs: &[Record]| {
        rs.iter()
            .map(|r| {
                (
                    r.key.clone(),
                    r.value.clone(),
                    r.headers.clone(),
                    r.timestamp,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&got), strip(&committed[..4]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_into_s3_round_trips() {
    let topic = common::unique("sink-s3");
    create_topic(&topic, 2, &[]).await;
    let base = common::now_ms() - 60_000;
    let p0 = produce(&topic, 0, &sample(base)).await;
    let p1 = produce(&topic, 1, &sample(base + 5)).await;
    let store: Arc<dyn ObjectStore> = Arc::new(common::s3_store().await);
    let mut opts = options(&regex::escape(&topic));
    // Small parts and a small file limit so the 1 MB record goes up as a multipart upload.
    opts.part_size = 5 << 20;
    let report = snapshot(&store, opts).await;
    assert_eq!(report.records, 10);
    assert_eq!(common::archive::chain(&store, &topic, 0).await, p0);
    assert_eq!(common::archive::chain(&store, &topic, 1).await, p1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archive_of_another_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    documents::ensure_identity(&*store, "some-other-cluster", false, 0)
        .await
        .unwrap();
    let run = sink::run(
        common::kafka::config(),
        store.clone(),
        options("nothing-matches-this"),
        std::future::pending(),
    );
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("belongs to Kafka cluster \"some-other-cluster\""),
        "{err}"
    );
    assert!(err.to_string().contains("--allow-cluster-change"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_deleted_before_they_were_archived_become_a_recorded_gap() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{Offset, TopicPartitionList};

    let topic = common::unique("sink-gap");
    create_topic(&topic, 1, &[]).await;
    let base = common::now_ms() - 60_000;
    let first = produce(&topic, 0, &sample(base)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    snapshot(&store, options(&regex::escape(&topic))).await;

    // Five more records, of which the broker deletes three before the next backup runs.
    let second = produce(&topic, 0, &sample(base + 10)).await;
    let admin: AdminClient<DefaultClientContext> = common::kafka::config().create().unwrap();
    let mut cut = TopicPartitionList::new();
    cut.add_partition_offset(&topic, 0, Offset::Offset(8))
        .unwrap();
    admin
        .delete_records(&cut, &AdminOptions::new())
        .await
        .unwrap();

    let report = snapshot(&store, options(&regex::escape(&topic))).await;
    assert_eq!((report.gaps, report.records), (1, 2));
    let gap: serde_json::Value = serde_json::from_slice(
        &store
            .get(&format!("_gaps/{topic}/0/00000000000000000005.json"))
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(
        (
            gap["start"].as_i64(),
            gap["end"].as_i64(),
            gap["reason"].as_str()
        ),
        (Some(5), Some(8), Some("retention"))
    );

    // The chain resumes after the hole: [0, 5) then [8, 10), nothing in between, nothing twice.
    let mut keys: Vec<DataFileKey> = store
        .list("data/")
        .await
        .unwrap()
        .iter()
        .filter_map(|o| DataFileKey::parse(&o.key))
        .collect();
    keys.sort_by_key(|k| k.start);
    // Offset 8 is an hour older than offset 9, so the bucket rule closes its file before 9.
    assert_eq!(
        keys.iter().map(|k| k.start).collect::<Vec<_>>(),
        vec![0, 8, 9]
    );
    let mut got = Vec::new();
    for key in keys {
        got.extend(
            datafile::decode(store.get(&key.to_string()).await.unwrap().body)
                .unwrap()
                .1,
        );
    }
    let want: Vec<Record> = first
        .into_iter()
        .chain(second.into_iter().filter(|r| r.offset >= 8))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recreated_topic_never_mixes_with_the_old_chain() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    let topic = common::unique("sink-recreated");
    create_topic(&topic, 1, &[]).await;
    let base = common::now_ms() - 60_000;
    let old = produce(&topic, 0, &[sample(base), sample(base + 10)].concat()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    snapshot(&store, options(&regex::escape(&topic))).await;
    let files_before = store.list("data/").await.unwrap();

    let admin: AdminClient<DefaultClientContext> = common::kafka::config().create().unwrap();
    admin
        .delete_topics(
            &[&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    // Topic deletion completes asynchronously on the broker; retry the creation until it is accepted.
    let mut created = false;
    for _ in 0..60 {
        let new =
            rdkafka::admin::NewTopic::new(&topic, 1, rdkafka::admin::TopicReplication::Fixed(1))
                .set("retention.ms", "-1");
        let result = admin
            .create_topics([&new], &AdminOptions::new())
            .await
            .unwrap();
        if result[0].is_ok() {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(created, "the topic could be recreated");
    let recreated = produce(&topic, 0, &sample(base + 20)).await;
    assert_eq!(
        recreated[0].offset, 0,
        "the new topic starts again at offset 0"
    );

    let run = sink::run(
        common::kafka::config(),
        store.clone(),
        options(&regex::escape(&topic)),
        std::future::pending(),
    );
    let err = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "offsets went backwards (topic deleted and recreated?): {topic}/0"
        )),
        "{err}"
    );
    assert_eq!(
        store.list("data/").await.unwrap(),
        files_before,
        "the old chain is untouched"
    );
    assert_eq!(common::archive::chain(&store, &topic, 0).await, old);
}

/// Issue 13, defect 4: a producer that writes microseconds (taken as milliseconds, year ~55,000)
/// or other timestamps outside years 0000–9999, accepted by a broker with an unlimited
/// `message.timestamp.after.max.ms`. Every record is archived under a key readers parse, and the
/// chain holds all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timestamps_beyond_year_9999_are_archived_under_keys_readers_parse() {
    let topic = common::unique("sink-far-future");
    create_topic(
        &topic,
        1,
        &[("message.timestamp.after.max.ms", "9223372036854775807")],
    )
    .await;
    let now = common::now_ms();
    let stamps = [
        now - 3_600_000,
        now,
        now * 1000, // microseconds taken for milliseconds
        now,
        i64::MAX / 2,
        now + 1,
        1, // (0 would mean "now" to librdkafka)
        now * 1000 + 1,
        now - 1,
        now,
    ];
    let records: Vec<Record> = stamps
        .iter()
        .enumerate()
        .map(|(i, ts)| record(Some(format!("k{i}").as_bytes()), Some(b"v"), vec![], *ts))
        .collect();
    let produced = produce(&topic, 0, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    let mut opts = options(&regex::escape(&topic));
    opts.policy.max_records = 3;
    let report = snapshot(&store, opts).await;
    assert_eq!(report.records, 10, "{report:?}");
    let keys = common::archive::data_keys(&store, &topic, 0).await;
    let listed = store.list("data/").await.unwrap();
    assert_eq!(keys.len(), listed.len(), "every key parses: {listed:?}");
    assert!(keys
        .iter()
        .any(|k| k.to_string().contains("date=9999-12-31/hour=23/")));
    assert_eq!(common::archive::chain(&store, &topic, 0).await, produced);
    let verified =
        rewind::ops::verify::verify(&*store, &rewind::kafka::topics::TopicSelector::all(), true)
            .await
            .unwrap();
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
}

/// Issue 13, defect 5: offset jumps (here a commit marker after every record) cost no broker round
/// trip each; the log's start is asked for at most once per file, and the snapshot is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transaction_markers_cost_no_round_trip_per_record() {
    let topic = common::unique("sink-small-tx");
    create_topic(&topic, 1, &[]).await;
    let base = common::now_ms() - 60_000;
    let mut produced = Vec::new();
    for i in 0..60 {
        let one = vec![record(
            Some(format!("k{i}").as_bytes()),
            Some(b"v"),
            vec![],
            base + i,
        )];
        produce_transaction(&topic, 0, &one, true).await;
        produced.extend(one);
    }
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    let mut opts = options(&regex::escape(&topic));
    opts.policy.max_records = 25;
    let report = snapshot(&store, opts).await;
    assert_eq!((report.records, report.files, report.gaps), (60, 3, 0));
    assert!(
        report.log_start_queries <= report.files,
        "one log-start question per file at most: {report:?}"
    );
    let archived = common::archive::chain(&store, &topic, 0).await;
    let offsets: Vec<i64> = archived.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (0..60).map(|i| i * 2).collect::<Vec<i64>>(),
        "a marker after each record"
    );
    let values: Vec<_> = archived.iter().map(|r| (&r.key, &r.value)).collect();
    let want: Vec<_> = produced.iter().map(|r| (&r.key, &r.value)).collect();
    assert_eq!(values, want);
}

/// Files with offset jumps ask the broker for their partition's log start, a batch of them
/// together: each answer must reach its own partition. Transactional partitions whose logs start at
/// different offsets (a prefix deleted from some) sit in one batch with plain ones; a log start
/// given to the wrong partition would record a gap over a marker this worker read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_starts_asked_together_reach_their_own_partitions() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{Offset, TopicPartitionList};

    const PARTITIONS: i32 = 6;
    let topic = common::unique("sink-log-starts");
    create_topic(&topic, PARTITIONS, &[]).await;
    let base = common::now_ms() - 60_000;
    let mut produced: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
    for p in 0..PARTITIONS {
        for i in 0..3 {
            let one = vec![record(
                Some(format!("p{p}-{i}").as_bytes()),
                Some(b"v"),
                vec![],
                base + i,
            )];
            if p % 2 == 0 {
                // Even partitions: one record per transaction, a marker after each.
                produce_transaction(&topic, p, &one, true).await;
            } else {
                produce(&topic, p, &one).await;
            }
            produced[p as usize].extend(one);
        }
    }
    // Partitions 2 and 4 lose their first record and its marker: their logs start at 2.
    let admin: AdminClient<DefaultClientContext> = common::kafka::config().create().unwrap();
    let mut cut = TopicPartitionList::new();
    for p in [2, 4] {
        cut.add_partition_offset(&topic, p, Offset::Offset(2))
            .unwrap();
        produced[p as usize].remove(0);
    }
    admin
        .delete_records(&cut, &AdminOptions::new())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    let report = snapshot(&store, options(&regex::escape(&topic))).await;
    assert_eq!(
        (report.records, report.gaps, report.log_start_queries),
        (16, 0, 3),
        "one log-start question per transactional partition, no gap: {report:?}"
    );
    for p in 0..PARTITIONS {
        let archived = common::archive::chain(&store, &topic, p).await;
        let got: Vec<_> = archived.iter().map(|r| (&r.key, &r.value)).collect();
        let want: Vec<_> = produced[p as usize]
            .iter()
            .map(|r| (&r.key, &r.value))
            .collect();
        assert_eq!(got, want, "partition {p}");
    }
}

/// Issue 13, defect 3: a store that ignores conditional writes is refused before anything is
/// written, with one sentence naming the store and what it ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_ignores_conditional_writes_is_refused_before_anything_is_written() {
    let topic = common::unique("sink-careless");
    create_topic(&topic, 1, &[]).await;
    produce(&topic, 0, &sample(common::now_ms() - 60_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);
    let careless: Arc<dyn ObjectStore> = Arc::new(Skewed {
        inner: store.clone(),
        stale_data_listing: false,
        ignore_conditions: true,
    });
    let err = sink::run(
        common::kafka::config(),
        careless,
        options(&regex::escape(&topic)),
        std::future::pending(),
    )
    .await
    .expect_err("the sink refuses the store");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "{}: the store ignores create-only puts",
            store.url()
        )),
        "{message}"
    );
    assert!(
        store.list("").await.unwrap().is_empty(),
        "nothing was written: {:?}",
        store.list("").await.unwrap()
    );
}
