//! A consumer group belongs to one archive: sinks of different archives never split partitions
//! between them, and a sink refuses a group whose commits say they belong to another archive.
//! Against the test bed's real broker.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::kafka::{create_topic, produce, record};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use rewind::archive::datafile;
use rewind::storage::{LocalStore, ObjectStore, StorageUrl};

/// `rewind sink` of one topic into `archive` with no `--group`, as an operator would start it.
fn sink(archive: &str, topic: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewind"));
    cmd.args([
        "sink",
        "--archive",
        archive,
        "--bootstrap-servers",
        &common::kafka_bootstrap(),
        "--topics",
        &regex::escape(topic),
    ])
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .env("RUST_LOG", "warn");
    cmd
}

/// Records archived per partition of a local archive.
async fn per_partition(archive: &str) -> BTreeMap<i32, usize> {
    let store = LocalStore::open(StorageUrl::parse(archive).unwrap()).unwrap();
    let mut counts = BTreeMap::new();
    for object in store.list("data/").await.unwrap() {
        let (meta, rows) = datafile::decode(store.get(&object.key).await.unwrap().body).unwrap();
        *counts.entry(meta.partition).or_default() += rows.len();
    }
    counts
}

fn stop(child: Child) -> std::process::Output {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Commit `offset` for `group` on partitions `0..partitions` with commit metadata `metadata`.
fn commit_with_metadata(group: &str, topic: &str, partitions: i32, offset: i64, metadata: &str) {
    let consumer: BaseConsumer = common::kafka::config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))
            .unwrap();
        if let Some(mut e) = tpl.find_partition(topic, p) {
            e.set_metadata(metadata);
        }
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
}

/// The committed offset and metadata of `group` on one partition.
fn committed(group: &str, topic: &str, partition: i32) -> (Option<i64>, String) {
    let consumer: BaseConsumer = common::kafka::config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let e = got.find_partition(topic, partition).unwrap();
    (e.offset().to_raw(), e.metadata().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_archives_without_a_group_each_get_every_partition() {
    let topic = common::unique("groups-split");
    // Four partitions with records and a fifth that never gets one.
    create_topic(&topic, 5, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let archives = [
        format!("file://{}/a", dir.path().display()),
        format!("file://{}/b", dir.path().display()),
    ];
    let children: Vec<Child> = archives
        .iter()
        .map(|archive| {
            sink(archive, &topic)
                .env("REWIND__SINK__MAX_FILE_AGE", "1s")
                .env("REWIND__SINK__DISCOVERY_INTERVAL", "1s")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in 0..4 {
        let records: Vec<_> = (0..10)
            .map(|i| {
                record(
                    Some(format!("k{p}-{i}").as_bytes()),
                    Some(b"v"),
                    vec![],
                    common::now_ms(),
                )
            })
            .collect();
        produce(&topic, p, &records).await;
    }
    let every: BTreeMap<i32, usize> = (0..4).map(|p| (p, 10)).collect();
    let mut counts = Vec::new();
    for _ in 0..90 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        counts = Vec::new();
        for archive in &archives {
            counts.push(per_partition(archive).await);
        }
        if counts.iter().all(|c| *c == every) {
            break;
        }
    }
    let outs: Vec<_> = children.into_iter().map(stop).collect();
    for out in &outs {
        assert!(out.status.success(), "{}", common::text(&out.stderr));
    }
    assert_eq!(
        counts,
        vec![every.clone(), every],
        "each archive holds every partition (a shared group would split them)"
    );
    // The idle partition is known to each archive (its first checkpoint), not missing.
    for archive in &archives {
        let out = Command::new(env!("CARGO_BIN_EXE_rewind"))
            .args(["verify", "--json", "--archive", archive])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["clean"], true, "{report:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_another_archive_is_refused() {
    let topic = common::unique("groups-refuse");
    create_topic(&topic, 2, &[]).await;
    let records: Vec<_> = (0..4)
        .map(|i| record(Some(b"k"), Some(b"v"), vec![], common::now_ms() - i))
        .collect();
    produce(&topic, 0, &records).await;
    produce(&topic, 1, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}/archive", dir.path().display());

    // A group another archive's sink committed to.
    let group = common::unique("groups-foreign");
    commit_with_metadata(
        &group,
        &topic,
        2,
        4,
        "rewind:0123456789ab s3://elsewhere/prod",
    );
    let out = sink(&archive, &topic)
        .args(["--once", "--group", &group])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out.stderr));
    let line = common::error_line(&out);
    for needle in [
        group.as_str(),
        "0123456789ab",
        "s3://elsewhere/prod",
        archive.as_str(),
        "--group",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    assert!(
        per_partition(&archive).await.is_empty(),
        "nothing archived into a refused run"
    );
    assert_eq!(
        committed(&group, &topic, 0),
        (
            Some(4),
            "rewind:0123456789ab s3://elsewhere/prod".to_string()
        ),
        "the other archive's commits are left alone"
    );

    // Commits without a marker (an older Rewind, another tool) are only a warning.
    let plain = common::unique("groups-plain");
    commit_with_metadata(&plain, &topic, 2, 1, "");
    let out = sink(&archive, &topic)
        .args(["--once", "--group", &plain])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert!(
        common::text(&out.stderr).contains("not marked"),
        "{}",
        common::text(&out.stderr)
    );
    assert_eq!(
        per_partition(&archive).await,
        BTreeMap::from([(0, 4), (1, 4)])
    );

    // The sink's own commits carry this archive's marker, and a second run accepts them.
    for p in 0..2 {
        let (offset, metadata) = committed(&plain, &topic, p);
        assert_eq!(offset, Some(4));
        assert!(
            metadata.starts_with("rewind:") && metadata.ends_with(&format!(" {archive}")),
            "{metadata}"
        );
    }
    let out = sink(&archive, &topic)
        .args(["--once", "--group", &plain])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert!(
        !common::text(&out.stderr).contains("not marked"),
        "{}",
        common::text(&out.stderr)
    );
}

/// Rewind's own groups are never snapshotted into `_groups/` (so `restore --groups` never moves
/// them): not a sink's default `rewind-sink-…` group, nor a group of any name whose commits carry a
/// Rewind marker. An application's group on the same topic is.
#[tokio::test]
async fn rewind_sinks_groups_are_not_snapshotted() {
    let topic = common::unique("groups-own");
    create_topic(&topic, 1, &[]).await;
    produce(
        &topic,
        0,
        &[record(Some(b"k"), Some(b"v"), vec![], 1_700_000_000_000)],
    )
    .await;
    let app = common::unique("app");
    common::kafka::commit_group(&app, &topic, 0, 1);
    let default_named = common::unique("rewind-sink-other");
    common::kafka::commit_group(&default_named, &topic, 0, 1);
    let marked = common::unique("nightly-backup");
    commit_with_metadata(&marked, &topic, 1, 1, "rewind:0123abcd s3://elsewhere/prod");

    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    let out = sink(&archive, &topic).arg("--once").output().unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let store = LocalStore::open(StorageUrl::parse(&archive).unwrap()).unwrap();
    let snapshotted: Vec<String> = store
        .list("_groups/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.split('/').nth(1).unwrap().to_string())
        .collect();
    assert!(snapshotted.contains(&app), "{snapshotted:?}");
    for own in [&default_named, &marked] {
        assert!(
            !snapshotted.contains(own),
            "{own} snapshotted: {snapshotted:?}"
        );
    }
}
