//! Two sink workers racing on one archive, against the real broker: whatever the interleaving, the
//! chain ends up holding every record exactly once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::kafka::{create_topic, produce, record};
use rewind::archive::rotation::RollingPolicy;
use rewind::archive::time::HourBucket;
use rewind::archive::Record;
use rewind::sink;
use rewind::storage::{LocalStore, ObjectStore, StorageUrl};

fn local(dir: &tempfile::TempDir) -> Arc<dyn ObjectStore> {
    Arc::new(
        LocalStore::open(
            StorageUrl::parse(&format!("file://{}/archive", dir.path().display())).unwrap(),
        )
        .unwrap(),
    )
}

fn records(offsets: std::ops::Range<i64>, timestamp: i64) -> Vec<Record> {
    offsets
        .map(|i| {
            record(
                Some(format!("k{i}").as_bytes()),
                Some(format!("value {i}").as_bytes()),
                vec![],
                timestamp + i,
            )
        })
        .collect()
}

/// Wait until `check` holds, polling; panics naming `what` after a minute.
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Issue 13, defect 1. Worker A resumed the partition at 0 and buffers `[0, 100)` of one hour;
/// meanwhile another run writes the shorter `[0, 60)`. When A meets the first record of the next
/// hour it finds its key taken and adopts the shorter file: it must then read again from 60, never
/// buffer the record in hand into a file that starts at 60 and drop what lies between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adopting_a_shorter_file_never_loses_the_records_after_it() {
    let topic = common::unique("race-adopt");
    create_topic(&topic, 1, &[]).await;
    let hour = HourBucket::of_millis(common::now_ms()).0 - 3;
    let in_hour = HourBucket(hour).start_millis() + 60_000;
    let next_hour = HourBucket(hour + 1).start_millis() + 60_000;
    let mut produced = produce(&topic, 0, &records(0..60, in_hour)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = local(&dir);

    // Worker A: continuous, files close only on a later hour (or at its stop).
    let live = rewind::live::Live::new();
    let mut a = common::once_sink_options(&topic, 1_000_000);
    a.once = false;
    a.policy = RollingPolicy {
        max_age: Duration::from_secs(3600),
        ..RollingPolicy::default()
    };
    a.live = Some(live.clone());
    let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
    // The sink's future is not Send (librdkafka handles): worker A gets a thread of its own.
    let store_a = store.clone();
    let worker_a = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(sink::run(common::kafka::config(), store_a, a, async move {
                let _ = stopped_a.await;
            }))
    });
    wait_for("worker A to resume the partition", || {
        !live.snapshot().partitions.is_empty()
    })
    .await;

    // Another run writes [0, 60) while A holds those records too.
    let b = sink::run(
        common::kafka::config(),
        store.clone(),
        common::once_sink_options(&topic, 1_000_000),
        std::future::pending(),
    )
    .await
    .expect("the --once run succeeds");
    assert_eq!(b.records, 60);

    // A keeps buffering the hour, then meets the next hour's first record.
    produced.extend(produce(&topic, 0, &records(60..100, in_hour)).await);
    produced.extend(produce(&topic, 0, &records(100..101, next_hour)).await);
    let checkpoint_end = || async {
        rewind::archive::documents::read_checkpoint(&*store, &topic, 0)
            .await
            .unwrap()
            .map_or(0, |c| c.doc.end)
    };
    for _ in 0..600 {
        if checkpoint_end().await >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_a.send(()).unwrap();
    worker_a.join().unwrap().expect("worker A stops cleanly");

    // Whatever A left unarchived, a last --once run completes; nothing may be missing.
    sink::run(
        common::kafka::config(),
        store.clone(),
        common::once_sink_options(&topic, 1_000_000),
        std::future::pending(),
    )
    .await
    .expect("the last run succeeds");
    let archived = common::archive::chain(&store, &topic, 0).await;
    let offsets: Vec<i64> = archived.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (0..101).collect::<Vec<i64>>(),
        "every offset archived exactly once"
    );
    assert_eq!(archived, produced);
}
