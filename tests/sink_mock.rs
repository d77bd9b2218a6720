//! The sink's loop against librdkafka's embedded mock cluster and a local archive: the middle test
//! tier between the chain's unit and model tests and the end-to-end tests against a real broker.
//! It needs no test bed and runs in seconds, and checks what a real broker run is too coarse for:
//! exact file boundaries per hour and the reason every file was closed with.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rewind::archive::rotation::RollingPolicy;
use rewind::kafka::topics::TopicSelector;
use rewind::sink::{self, SinkOptions};
use rewind::storage::{LocalStore, ObjectStore, StorageUrl};

const HOUR: i64 = 3_600_000;
/// An hour boundary (2025-06-04T02:00:00Z).
const START: i64 = 1_749_999_600_000;
const PARTITIONS: i32 = 2;
const HOURS: i64 = 3;
const PER_HOUR: i64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_writes_one_file_per_partition_and_hour_labelled_by_why_it_closed() {
    let metrics = rewind::metrics::install().expect("the only recorder of this test binary");
    let cluster = MockCluster::new(1).expect("the embedded cluster starts");
    let topic = "mock-orders";
    cluster.create_topic(topic, PARTITIONS, 1).unwrap();
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", cluster.bootstrap_servers());

    let producer: FutureProducer = client.create().unwrap();
    for partition in 0..PARTITIONS {
        for i in 0..HOURS * PER_HOUR {
            // PER_HOUR records in each hour, 30 s apart.
            let timestamp = START + (i / PER_HOUR) * HOUR + (i % PER_HOUR) * 30_000;
            let (key, value) = (format!("k{i}"), format!("p{partition}-{i}"));
            producer
                .send(
                    FutureRecord::to(topic)
                        .partition(partition)
                        .key(&key)
                        .payload(&value)
                        .timestamp(timestamp),
                    Duration::from_secs(10),
                )
                .await
                .expect("the mock cluster takes the record");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let url = StorageUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(url).unwrap());
    let opts = SinkOptions {
        topics: TopicSelector::exactly(topic),
        group: Some("rewind-mock".into()),
        once: true,
        policy: RollingPolicy {
            max_records: 1_000_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(3600),
        },
        buffer_budget: 64 << 20,
        part_size: 16 << 20,
        uploads_in_flight: rewind::sink::default_uploads_in_flight(),
        discovery_interval: Duration::from_secs(60),
        allow_cluster_change: false,
        drain_timeout: Duration::from_secs(10),
        progress: false,
        group_snapshot_interval: Duration::ZERO,
        live: None,
        // The embedded cluster does not answer DescribeConfigs.
        admin_api: false,
        decoders: None,
    };
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        sink::run(client, store.clone(), opts, std::future::pending()),
    )
    .await
    .expect("the snapshot ends")
    .expect("the snapshot succeeds");
    let total = (PARTITIONS as i64 * HOURS * PER_HOUR) as u64;
    assert_eq!(report.records, total);
    assert_eq!(report.files, (PARTITIONS as i64 * HOURS) as u64);

    let verified = rewind::ops::verify::verify(&*store, &TopicSelector::all(), true)
        .await
        .unwrap();
    assert!(verified.clean, "{:?}", verified.problems);
    assert_eq!(verified.records, total);
    for p in &verified.partitions {
        assert_eq!((p.start, p.end), (Some(0), Some(HOURS * PER_HOUR)), "{p:?}");
        assert_eq!(p.files, HOURS as usize, "{p:?}");
    }

    // Every hour but the last was closed by the next hour's first record; the last by the
    // snapshot reaching the partition's end.
    let text = metrics.render();
    let written = |reason: &str| -> u64 {
        let series =
            format!("rewind_sink_files_written_total{{topic=\"{topic}\",reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    assert_eq!(
        written("later_bucket"),
        (PARTITIONS as i64 * (HOURS - 1)) as u64,
        "{text}"
    );
    assert_eq!(written("snapshot_end"), PARTITIONS as u64, "{text}");
    assert_eq!(written("shutdown"), 0, "{text}");
}

/// Options of a continuous sink against the mock cluster whose files stay open for an hour, so
/// nothing is archived while the test looks at its status.
fn continuous(topic: &str, live: Arc<rewind::live::Live>) -> SinkOptions {
    SinkOptions {
        topics: TopicSelector::exactly(topic),
        group: Some(format!("rewind-mock-{topic}")),
        once: false,
        policy: RollingPolicy {
            max_records: 1_000_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(3600),
        },
        buffer_budget: 64 << 20,
        part_size: 16 << 20,
        uploads_in_flight: rewind::sink::default_uploads_in_flight(),
        discovery_interval: Duration::from_secs(60),
        allow_cluster_change: false,
        drain_timeout: Duration::from_secs(10),
        progress: false,
        group_snapshot_interval: Duration::ZERO,
        live: Some(live),
        admin_api: false,
        decoders: None,
    }
}

/// A continuous sink of `topic` (see [`continuous`]) running until the sender is used.
fn spawn_continuous(
    client: &ClientConfig,
    store: Arc<dyn ObjectStore>,
    topic: &str,
    live: &Arc<rewind::live::Live>,
) -> (
    tokio::task::JoinHandle<Result<sink::SinkReport, sink::SinkError>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sink = tokio::spawn(sink::run(
        client.clone(),
        store,
        continuous(topic, live.clone()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    (sink, stop_tx)
}

/// Produce `count` records to `topic`, spread over its partitions.
async fn produce_spread(client: &ClientConfig, topic: &str, count: i32) {
    let producer: FutureProducer = client.create().unwrap();
    for i in 0..count {
        let value = format!("v{i}");
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(i % PARTITIONS)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("the mock cluster takes the record");
    }
}

/// Wait until the live status satisfies `ready`, and return it.
async fn live_until(
    live: &rewind::live::Live,
    what: &str,
    ready: impl Fn(&rewind::live::LiveStatus) -> bool,
) -> rewind::live::LiveStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = live.snapshot();
        if ready(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the status never showed {what}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_assigned_partitions_lag_and_the_read_rate_before_the_first_file() {
    let cluster = MockCluster::new(1).expect("the embedded cluster starts");
    let topic = "mock-status";
    cluster.create_topic(topic, PARTITIONS, 1).unwrap();
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", cluster.bootstrap_servers());
    let dir = tempfile::tempdir().unwrap();
    let url = StorageUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(url).unwrap());
    let live = rewind::live::Live::new();
    let (sink, stop_tx) = spawn_continuous(&client, store.clone(), topic, &live);

    // The topic is empty: no record has arrived, yet the group assigned both partitions, and
    // their lag (none) is known.
    let idle = live_until(&live, "the assigned partitions", |s| {
        s.partitions.len() == PARTITIONS as usize
    })
    .await;
    assert_eq!(idle.lag_records, Some(0), "{idle:?}");
    assert_eq!(idle.records, 0, "{idle:?}");

    let sent = 200;
    produce_spread(&client, topic, sent).await;
    // Records flow: the sink reads them at once while its files stay open for an hour, so the
    // read rate shows and the archived rate and totals stay 0; the lag counts what is not archived.
    let reading = live_until(&live, "a read rate", |s| {
        s.read_records == Some(sent as u64) && s.read_records_per_second.is_some_and(|r| r > 0.0)
    })
    .await;
    assert_eq!(reading.records, 0, "{reading:?}");
    assert_eq!(reading.files, Some(0), "{reading:?}");
    assert_eq!(reading.records_per_second, Some(0.0), "{reading:?}");
    let lagging = live_until(&live, "the lag of the records read", |s| {
        s.lag_records == Some(sent as i64)
    })
    .await;
    assert_eq!(lagging.partitions.len(), PARTITIONS as usize, "{lagging:?}");

    stop_tx.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), sink)
        .await
        .expect("the sink stops")
        .unwrap()
        .expect("the sink succeeds");
    assert_eq!(report.records, sent as u64);
    assert_eq!(report.read, sent as u64);
}

/// Refuses one read of partition 1's files, as a store that denies a request now and then would.
#[derive(Debug, Default)]
struct DenyOnce {
    reads: std::sync::atomic::AtomicUsize,
}

impl rewind::storage::Hooks for DenyOnce {
    fn before_read(&self, _op: &str, key: &str) -> rewind::storage::StorageResult<()> {
        use std::sync::atomic::Ordering::SeqCst;
        // The first read is the sink's look at the archive as it starts; the second opens the
        // chain as the group assigns the partition.
        if key.contains("partition=1") && self.reads.fetch_add(1, SeqCst) == 1 {
            return Err(rewind::storage::StorageError::AccessDenied {
                url: "file:///deny-once".into(),
                key: Some(key.into()),
            });
        }
        Ok(())
    }
}

/// Opening a partition's chain as the group assigns it is only a head start: a partition whose
/// chain cannot open then (here the store refuses the read once; a partition without a leader does
/// the same) opens at its first record, as it always did, instead of stopping the sink and every
/// other partition with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_that_cannot_open_at_assignment_opens_at_its_first_record() {
    let cluster = MockCluster::new(1).expect("the embedded cluster starts");
    let topic = "mock-deny";
    cluster.create_topic(topic, PARTITIONS, 1).unwrap();
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", cluster.bootstrap_servers());
    let dir = tempfile::tempdir().unwrap();
    let url = StorageUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
    let store = Arc::new(rewind::storage::Intercept {
        inner: LocalStore::open(url).unwrap(),
        hooks: DenyOnce::default(),
    });
    let live = rewind::live::Live::new();
    let (sink, stop_tx) = spawn_continuous(&client, store.clone(), topic, &live);
    // Partition 0 opened at its assignment; partition 1's read was refused.
    live_until(&live, "partition 0", |s| !s.partitions.is_empty()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.hooks.reads.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(!sink.is_finished(), "the sink stopped");
        assert!(
            tokio::time::Instant::now() < deadline,
            "partition 1 was never opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sent = 100;
    produce_spread(&client, topic, sent).await;
    live_until(&live, "every record read", |s| {
        s.read_records == Some(sent as u64)
    })
    .await;
    stop_tx.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), sink)
        .await
        .expect("the sink stops")
        .unwrap()
        .expect("the sink goes on after a refused read at assignment");
    assert_eq!(report.records, sent as u64);
    let verified = rewind::ops::verify::verify(&*store, &TopicSelector::all(), true)
        .await
        .unwrap();
    // Every partition's chain is whole; the topic's metadata is not kept in this run (no admin
    // API), which is all verify has to say.
    assert!(
        verified.problems.iter().all(|p| p.kind == "topic"),
        "{:?}",
        verified.problems
    );
    assert_eq!(verified.records, sent as u64);
}
