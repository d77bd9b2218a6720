//! Crashes and scale-out: sink workers of one group are killed with SIGKILL at arbitrary moments
//! (mid-consume, mid-upload, between upload and checkpoint, between checkpoint and commit) and
//! restarted while records keep arriving; partitions move between workers. Afterwards the archive
//! must hold every produced record exactly once, in one contiguous chain per partition.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{create_topic, produce, record};
use rand::Rng;
use rewind::archive::Record;
use rewind::storage::{LocalStore, ObjectStore, StorageUrl};

fn worker(archive: &str, topic: &str, group: &str) -> Child {
    worker_with_age(archive, topic, group, "1s")
}

fn worker_with_age(archive: &str, topic: &str, group: &str, max_file_age: &str) -> Child {
    common::sink_command(archive, topic, group)
        // A killed member's partitions move to the others after the session timeout.
        .args([
            "-X",
            "session.timeout.ms=6000",
            "-X",
            "heartbeat.interval.ms=1000",
        ])
        .env("REWIND__SINK__MAX_FILE_RECORDS", "7")
        .env("REWIND__SINK__MAX_FILE_AGE", max_file_age)
        .env("REWIND__SINK__DISCOVERY_INTERVAL", "1s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_workers_lose_and_duplicate_nothing() {
    const PARTITIONS: i32 = 4;
    let topic = common::unique("crash");
    create_topic(&topic, PARTITIONS, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}/archive", dir.path().display());
    let group = common::unique("crash-group");

    let mut workers = vec![
        worker(&archive, &topic, &group),
        worker(&archive, &topic, &group),
    ];
    let mut produced: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
    let mut kills = 0;
    for round in 0..12 {
        for partition in 0..PARTITIONS {
            let batch: Vec<Record> = (0..9)
                .map(|i| {
                    record(
                        Some(format!("p{partition}-r{round}-{i}").as_bytes()),
                        Some(&[b'x'; 200]),
                        vec![],
                        common::now_ms(),
                    )
                })
                .collect();
            produced[partition as usize].extend(produce(&topic, partition, &batch).await);
        }
        let pause = rand::rng().random_range(200..900);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if round % 3 == 2 {
            // SIGKILL one worker at an arbitrary moment and start a replacement: partitions move.
            let victim = rand::rng().random_range(0..workers.len());
            let mut dead = workers.remove(victim);
            dead.kill().unwrap();
            dead.wait().unwrap();
            kills += 1;
            workers.push(worker(&archive, &topic, &group));
        }
    }
    // Let the survivors archive what they can, then stop them gracefully.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for w in &workers {
        Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status()
            .unwrap();
    }
    for mut w in workers {
        let status = tokio::task::spawn_blocking(move || w.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "a drained worker exits 0: {status:?}");
    }
    assert_eq!(kills, 4);

    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalStore::open(StorageUrl::parse(&archive).unwrap()).unwrap());
    // The last kill may have landed between a file's claim and its checkpoint, and its partitions
    // are not reassigned before the session timeout: such files are durable past the checkpoint
    // until the final snapshot adopts them.
    let archived_by_workers: usize = {
        let mut n = 0;
        for p in 0..PARTITIONS {
            n += common::archive::chain_as_killed(&store, &topic, p)
                .await
                .len();
        }
        n
    };
    assert!(
        archived_by_workers > 0,
        "the workers archived records before the final snapshot"
    );
    eprintln!(
        "workers archived {archived_by_workers} of {} records before the final snapshot",
        PARTITIONS * 12 * 9
    );

    // A final snapshot catches up whatever the last kill left unarchived.
    let out = common::sink_command(&archive, &topic, &group)
        .arg("--once")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for p in 0..PARTITIONS {
        let got = common::archive::chain(&store, &topic, p).await;
        let want = &produced[p as usize];
        assert_eq!(
            got.len(),
            want.len(),
            "partition {p}: every record exactly once"
        );
        assert_eq!(&got, want, "partition {p}: byte-exact and in order");
    }
}

/// The group moves partitions away from a worker that holds their records in memory: it flushes
/// them on revocation instead of leaving them for the new owner to read again. With files that
/// otherwise stay open for 10 minutes, anything in the archive soon after the second worker joins
/// was written because of the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partitions_are_flushed_and_the_chain_stays_exact() {
    const PARTITIONS: i32 = 4;
    let topic = common::unique("revoke");
    create_topic(&topic, PARTITIONS, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}/archive", dir.path().display());
    let group = common::unique("revoke-group");
    let mut produced: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
    let produce_round = |tag: &'static str| {
        let topic = topic.clone();
        async move {
            let mut out = Vec::new();
            for partition in 0..PARTITIONS {
                let batch: Vec<Record> = (0..5)
                    .map(|i| {
                        record(
                            Some(format!("{tag}-{partition}-{i}").as_bytes()),
                            Some(b"v"),
                            vec![],
                            common::now_ms(),
                        )
                    })
                    .collect();
                out.push(produce(&topic, partition, &batch).await);
            }
            out
        }
    };

    let first = worker_with_age(&archive, &topic, &group, "10m");
    for (p, records) in produce_round("a").await.into_iter().enumerate() {
        produced[p].extend(records);
    }
    // The first worker owns every partition and holds the records in memory.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalStore::open(StorageUrl::parse(&archive).unwrap()).unwrap());
    assert!(
        store.list("data/").await.unwrap().is_empty(),
        "nothing is flushed before the rebalance"
    );

    let second = worker_with_age(&archive, &topic, &group, "10m");
    let mut flushed = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        flushed = store.list("data/").await.unwrap();
        if !flushed.is_empty() {
            break;
        }
    }
    assert!(
        !flushed.is_empty(),
        "the revoked partitions were flushed when the second worker joined"
    );
    assert!(
        flushed.len() < PARTITIONS as usize,
        "only revoked partitions were flushed: {flushed:?}"
    );

    for (p, records) in produce_round("b").await.into_iter().enumerate() {
        produced[p].extend(records);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for w in [&first, &second] {
        Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status()
            .unwrap();
    }
    for mut w in [first, second] {
        let status = tokio::task::spawn_blocking(move || w.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "a drained worker exits 0: {status:?}");
    }
    for p in 0..PARTITIONS {
        let got = common::archive::chain(&store, &topic, p).await;
        assert_eq!(
            &got, &produced[p as usize],
            "partition {p}: every record exactly once, in order"
        );
    }
}
