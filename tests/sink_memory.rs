//! Bounded memory and store outages: the sink keeps its buffers within one global budget across
//! hundreds of partitions, and when the S3 server goes away it holds what it has, pauses
//! consumption, and archives everything exactly once when the server returns.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::create_topic;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rewind::archive::documents;
use rewind::archive::rotation::RollingPolicy;
use rewind::sink::{self, SinkOptions};
use rewind::storage::{LocalStore, ObjectStore, S3Store, StorageUrl};

fn options(topic: &str, budget: u64) -> SinkOptions {
    SinkOptions {
        topics: rewind::kafka::topics::TopicSelector::exactly(topic),
        group: Some(common::unique("memory")),
        once: true,
        policy: RollingPolicy::default(),
        buffer_budget: budget,
        part_size: 5 << 20,
        uploads_in_flight: rewind::sink::default_uploads_in_flight(),
        discovery_interval: Duration::from_secs(1),
        allow_cluster_change: false,
        drain_timeout: Duration::from_secs(30),
        progress: false,
        group_snapshot_interval: std::time::Duration::ZERO,
        live: None,
        admin_api: true,
        decoders: None,
    }
}

/// Produce `per_partition` records of `size` bytes to every partition, many in flight at once.
async fn flood(topic: &str, partitions: i32, per_partition: usize, size: usize) -> u64 {
    let producer: FutureProducer = common::kafka::config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let value = vec![b'm'; size];
    let mut sent = 0;
    for round in 0..per_partition {
        let key = format!("k{round}");
        let sends: Vec<_> = (0..partitions)
            .map(|p| {
                producer.send(
                    FutureRecord::to(topic)
                        .partition(p)
                        .key(key.as_bytes())
                        .payload(&value),
                    Duration::from_secs(60),
                )
            })
            .collect();
        for result in futures::future::join_all(sends).await {
            result.unwrap_or_else(|(e, _)| panic!("produce: {e}"));
            sent += 1;
        }
    }
    sent
}

/// Sum of the checkpointed chain ends; -1 while the store does not answer (a server restarting).
async fn archived_ends(store: &dyn ObjectStore, topic: &str, partitions: i32) -> i64 {
    let mut total = 0;
    for p in 0..partitions {
        match documents::read_checkpoint(store, topic, p).await {
            Ok(Some(c)) => total += c.doc.end,
            Ok(None) => {}
            Err(_) => return -1,
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_partitions_stay_within_a_64_mib_budget() {
    const PARTITIONS: i32 = 500;
    let budget = 64 << 20;
    let topic = common::unique("memory-500");
    create_topic(&topic, PARTITIONS, &[]).await;
    // 500 partitions x 100 records x 2 KiB: about 100 MB, well over the budget.
    let sent = flood(&topic, PARTITIONS, 100, 2048).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(
        LocalStore::open(StorageUrl::parse(&format!("file://{}/a", dir.path().display())).unwrap())
            .unwrap(),
    );
    // Small fetches per partition make all 500 partitions advance together, as on a busy cluster.
    let mut client = common::kafka::config();
    client.set("max.partition.fetch.bytes", "65536");
    let report = sink::run(
        client,
        store.clone(),
        options(&topic, budget),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(report.records, sent);
    assert!(
        report.peak_buffered <= budget,
        "peak {} over the budget {budget}",
        report.peak_buffered
    );
    assert!(
        report.peak_buffered > budget / 4,
        "the budget was actually exercised (peak {})",
        report.peak_buffered
    );
}

/// A private S3 server on its own port and data directory, stopped and restarted by the test.
fn s3_server(dir: &std::path::Path, port: u16) -> Child {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3.sh"))
        .args(["serve", dir.to_str().unwrap(), &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the private S3 server did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_outage_pauses_within_budget_and_loses_nothing() {
    const PARTITIONS: i32 = 4;
    let budget: u64 = 8 << 20;
    let topic = common::unique("memory-outage");
    create_topic(&topic, PARTITIONS, &[]).await;

    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = s3_server(data.path(), port);
    wait_listening(port).await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut opts = common::s3_options();
    opts.endpoint = Some(endpoint.clone());
    let bucket = common::unique("rewind-outage");
    let raw = common::s3_client_at(&endpoint);
    let mut created = false;
    for _ in 0..50 {
        if raw.create_bucket().bucket(&bucket).send().await.is_ok() {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(created, "bucket created on the private server");
    let store: Arc<dyn ObjectStore> = Arc::new(
        S3Store::open(
            StorageUrl::parse(&format!("s3://{bucket}/a")).unwrap(),
            &opts,
        )
        .await
        .unwrap(),
    );

    let mut sink_opts = options(&topic, budget);
    sink_opts.once = false;
    sink_opts.policy.max_age = Duration::from_secs(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sink_store = store.clone();
    let running = tokio::spawn(async move {
        sink::run(common::kafka::config(), sink_store, sink_opts, async move {
            let _ = stop_rx.await;
        })
        .await
    });

    let mut sent = flood(&topic, PARTITIONS, 200, 1024).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while archived_ends(&*store, &topic, PARTITIONS).await < sent as i64 {
        assert!(
            !running.is_finished(),
            "the sink stopped: {:?}",
            running.await
        );
        assert!(Instant::now() < deadline, "the first batch was archived");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The S3 server goes away for 30 s while records keep coming: about 3x the budget.
    server.kill().unwrap();
    server.wait().unwrap();
    let outage = Instant::now();
    sent += flood(&topic, PARTITIONS, 6_000, 1024).await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    let mut server = s3_server(data.path(), port);
    wait_listening(port).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    while archived_ends(&*store, &topic, PARTITIONS).await < sent as i64 {
        assert!(
            !running.is_finished(),
            "the sink stopped: {:?}",
            running.await
        );
        assert!(
            Instant::now() < deadline,
            "the sink caught up after the outage"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_tx.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    let archived = archived_ends(&*store, &topic, PARTITIONS).await;
    server.kill().unwrap();
    let _ = server.wait();
    assert_eq!(archived, sent as i64, "the checkpoints cover every record");
    assert_eq!(report.records, sent, "every record archived exactly once");
    assert!(
        report.peak_buffered <= budget,
        "peak {} over the budget {budget}",
        report.peak_buffered
    );
}
