//! Restores into a target cluster that pushes back, against the test bed's real broker: a small
//! `max.message.bytes`, a producer queue that fills up, many partitions whose transaction markers
//! land after the commit, and a broker whose transaction timeout is lower than the producer's.
//! The oracle is the source topic: a `read_committed` consumer of the target sees, byte for byte,
//! what was produced to the source, as soon as the restore command returns.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{self, record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, Timestamp, TopicPartitionList};
use rewind::archive::Record;

/// An hour boundary in the past: the records are old but kept (retention.ms=-1 on test topics).
fn base() -> i64 {
    (common::now_ms() / 3_600_000 - 30) * 3_600_000
}

/// `rewind sink --once` of `topic`, closing a file every `max_records` records.
fn backup(archive: &str, topic: &str, max_records: u32) {
    let out = common::sink_command(archive, topic, &common::unique("g"))
        .arg("--once")
        .env("REWIND__SINK__MAX_FILE_RECORDS", max_records.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sink failed: {}",
        common::text(&out.stderr)
    );
}

fn restore(archive: &str, args: &[&str]) -> Command {
    let mut cmd = common::restore_command(archive);
    cmd.args(args);
    cmd
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "restore failed ({}): {}{}",
        out.status,
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    common::text(&out.stdout)
}

/// Produce `per_partition` records to every partition of `topic` with one producer; returns each
/// partition's records with the offsets the broker assigned.
async fn produce_spread(
    topic: &str,
    partitions: i32,
    per_partition: usize,
    value: impl Fn(i32, usize) -> Vec<u8>,
) -> Vec<Vec<Record>> {
    let producer: FutureProducer = kafka::config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Batches the source topics of these tests take (one has max.message.bytes=262144).
        .set("batch.size", "100000")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for p in 0..partitions {
        for i in 0..per_partition {
            let key = format!("k{p}-{i}").into_bytes();
            let r = record(
                Some(&key),
                Some(&value(p, i)),
                vec![kafka::header("n", Some(i.to_string().as_bytes()))],
                base() + i as i64,
            );
            pending.push((p, r));
        }
    }
    let mut deliveries = Vec::with_capacity(pending.len());
    for (p, r) in &pending {
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for h in &r.headers {
            headers = headers.insert(rdkafka::message::Header {
                key: &h.key,
                value: h.value.as_deref(),
            });
        }
        let delivery = producer
            .send_result(
                FutureRecord::to(topic)
                    .partition(*p)
                    .key(r.key.as_deref().unwrap())
                    .payload(r.value.as_deref().unwrap())
                    .headers(headers)
                    .timestamp(r.timestamp.unwrap()),
            )
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        deliveries.push(delivery);
    }
    let mut out = vec![Vec::new(); partitions as usize];
    for ((p, r), delivery) in pending.into_iter().zip(deliveries) {
        let delivered = delivery
            .await
            .expect("delivery future")
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        out[p as usize].push(Record {
            offset: delivered.offset,
            ..r
        });
    }
    for records in &mut out {
        records.sort_by_key(|r| r.offset);
    }
    out
}

/// Every record of every partition of `topic` that a `read_committed` consumer sees now, read with
/// one consumer up to each partition's end (its last stable offset).
fn read_all_committed(topic: &str, partitions: i32) -> Vec<Vec<(Record, Timestamp)>> {
    let consumer: BaseConsumer = kafka::config()
        .set("group.id", common::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = vec![Vec::new(); partitions as usize];
    let mut ended = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ended.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "reading {topic} to its end timed out"
        );
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            Some(Ok(msg)) => {
                let record = rewind::sink::to_record(&msg);
                out[msg.partition() as usize].push((record, msg.timestamp()));
            }
        }
    }
    out
}

/// What a `read_committed` consumer of the target sees equals the source, partition by partition,
/// byte for byte, with the source's timestamps as CreateTime.
fn assert_restored(target: &str, source: &[Vec<Record>]) {
    let got = read_all_committed(target, source.len() as i32);
    let seen: usize = got.iter().map(Vec::len).sum();
    let expected: usize = source.iter().map(Vec::len).sum();
    assert_eq!(
        seen, expected,
        "{target}: a read_committed consumer sees {seen} of {expected} records"
    );
    for (p, (got, expected)) in got.iter().zip(source).enumerate() {
        assert_eq!(got.len(), expected.len(), "{target}/{p}: record count");
        for (i, ((r, ts), e)) in got.iter().zip(expected).enumerate() {
            assert_eq!(
                (&r.key, &r.value, &r.headers),
                (&e.key, &e.value, &e.headers),
                "{target}/{p} record {i}"
            );
            assert_eq!(
                *ts,
                Timestamp::CreateTime(e.timestamp.unwrap()),
                "{target}/{p} record {i}: timestamp"
            );
        }
    }
}

/// A full local producer queue is backpressure, for the records and for the progress written with
/// them: a restore with a queue of a few messages waits for room and restores everything.
#[tokio::test]
async fn a_full_producer_queue_is_waited_for() {
    let topic = common::unique("pitr-queue");
    let partitions = 24;
    kafka::create_topic(&topic, partitions, &[]).await;
    let source = produce_spread(&topic, partitions, 12, |p, i| {
        format!("value {p}/{i}").into_bytes()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic, 5);

    let target = format!("{topic}-copy");
    ok(restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &format!("{topic}={target}"),
            "-X",
            "queue.buffering.max.messages=4",
        ],
    )
    .output()
    .unwrap());
    assert_restored(&target, &source);
}

/// The broker applies `max.message.bytes` to whole batches: a target created with the source's
/// 262144 takes every record of about 10 KiB, batched below its limit.
#[tokio::test]
async fn a_target_with_a_small_max_message_bytes_takes_every_batch() {
    let topic = common::unique("pitr-small-batches");
    kafka::create_topic(&topic, 2, &[("max.message.bytes", "262144")]).await;
    let source = produce_spread(&topic, 2, 150, |p, i| {
        (0..10_000 + i)
            .map(|j| (j as u32 * 7 + i as u32 + p as u32) as u8)
            .collect()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic, 100);

    let target = format!("{topic}-copy");
    let stdout = ok(restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &format!("{topic}={target}"),
            "--json",
        ],
    )
    .output()
    .unwrap());
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["topics_created"][0], target.as_str(), "{summary}");
    assert_restored(&target, &source);
}

/// When the restore command returns, a `read_committed` consumer of the target sees every record
/// at once: the restore waits until every partition's last stable offset has passed what it wrote.
/// The commit itself returns before the transaction markers reach the partitions, and another
/// producer's open transaction holds a partition's last stable offset back until it ends.
#[tokio::test]
async fn a_finished_restore_is_visible_to_read_committed_consumers() {
    let topic = common::unique("pitr-visible");
    let partitions = 200;
    kafka::create_topic(&topic, partitions, &[]).await;
    let source = produce_spread(&topic, partitions, 5, |p, i| {
        format!("value {p}/{i}").into_bytes()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic, 1000);

    // A target the restore creates: visible as soon as the command returns, and said so.
    let target = format!("{topic}-created");
    let stdout = ok(restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &format!("{topic}={target}"),
            "--json",
        ],
    )
    .output()
    .unwrap());
    assert_restored(&target, &source);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["records"], 1000, "{summary}");
    assert_eq!(summary["visible"], true, "{summary}");

    // An existing target where another producer's transaction is open in partition 0: the
    // restore's records there stay hidden until it ends, and the restore waits for that (here the
    // other transaction is aborted once the restore says it is waiting).
    let target = format!("{topic}-busy");
    kafka::create_topic(&target, partitions, &[]).await;
    let other: FutureProducer = kafka::config()
        .set("transactional.id", common::unique("other"))
        .create()
        .unwrap();
    other.init_transactions(Duration::from_secs(30)).unwrap();
    other.begin_transaction().unwrap();
    other
        .send(
            FutureRecord::to(&target)
                .partition(0)
                .key("other")
                .payload("left open"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let mut child = restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &format!("{topic}={target}"),
            "--allow-non-empty",
            "--json",
        ],
    )
    .env("RUST_LOG", "info")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (waiting_tx, waiting_rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("waiting for read_committed consumers") {
                let _ = waiting_tx.send(());
            }
            seen.push(line);
        }
        seen
    });
    // Until the restore says it waits (then the other transaction ends), or exits without waiting
    // (then what it restored must be visible as it is).
    let waited = waiting_rx.recv().is_ok();
    if waited {
        other.abort_transaction(Duration::from_secs(30)).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = lines.join().unwrap().join("\n");
    assert!(out.status.success(), "restore failed: {stderr}");
    assert_restored(&target, &source);
    assert!(waited, "the restore did not wait for the other transaction");
    let summary: serde_json::Value =
        serde_json::from_str(common::text(&out.stdout).trim()).unwrap();
    assert_eq!(summary["visible"], true, "{summary}");
}

/// A producer transaction timeout above the broker's `transaction.max.timeout.ms` (Kafka's default
/// is 15 minutes) is refused before anything is written, with the setting to change.
#[tokio::test]
async fn a_transaction_timeout_above_the_brokers_maximum_is_refused_up_front() {
    let topic = common::unique("pitr-txn-timeout");
    kafka::create_topic(&topic, 1, &[]).await;
    let source = produce_spread(&topic, 1, 3, |_, i| vec![i as u8; 8]).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic, 100);

    let target = format!("{topic}-copy");
    let rename = format!("{topic}={target}");
    let out = restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &rename,
            "-X",
            "transaction.timeout.ms=1000000",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = common::error_line(&out);
    assert!(
        error.contains("transaction.max.timeout.ms")
            && error.contains("900000")
            && error.contains("-X transaction.timeout.ms="),
        "{error}"
    );
    let probe: BaseConsumer = kafka::config().create().unwrap();
    let metadata = probe.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    assert!(
        !metadata.topics().iter().any(|t| t.name() == target),
        "nothing was created"
    );

    // Within the broker's maximum, the same restore goes through.
    ok(restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &rename,
            "-X",
            "transaction.timeout.ms=900000",
        ],
    )
    .output()
    .unwrap());
    assert_restored(&target, &source);
}

/// `restore --plan` runs every check the restore runs against the target, read-only: a target with
/// fewer partitions, one that holds records or stamps LogAppendTime is refused (exit 1, every
/// reason listed) exactly as the run refuses it, a retention that would delete the restored records
/// is a warning, and a plan creates nothing. Without a reachable cluster the plan still shows the
/// archive's side and fails saying the target was not checked.
#[tokio::test]
async fn a_plan_runs_every_check_of_the_run_and_writes_nothing() {
    let topic = common::unique("pitr-plan");
    kafka::create_topic(&topic, 2, &[]).await;
    let source = produce_spread(&topic, 2, 4, |_, i| vec![i as u8; 10]).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic, 100);
    let progress_topic = common::unique("plan-progress");
    let plan = |target: &str, extra: &[&str]| {
        let rename = format!("{topic}={target}");
        let mut args = vec!["--topics", &topic, "--rename", &rename];
        args.extend_from_slice(extra);
        restore(&archive, &args)
            .env("REWIND__RESTORE__PROGRESS_TOPIC", &progress_topic)
            .output()
            .unwrap()
    };

    let fewer = format!("{topic}-fewer");
    kafka::create_topic(&fewer, 1, &[]).await;
    let full = format!("{topic}-full");
    kafka::create_topic(&full, 2, &[]).await;
    kafka::produce(&full, 1, &source[1][..1]).await;
    // Records only in a transaction still open (another restore writing, say) are invisible to
    // read_committed clients, but the topic is not empty.
    let pending = format!("{topic}-pending");
    kafka::create_topic(&pending, 2, &[]).await;
    let _open = kafka::open_transaction(&pending, 0, &source[0][..1]).await;
    let stamped = format!("{topic}-stamped");
    kafka::create_topic(&stamped, 2, &[("message.timestamp.type", "LogAppendTime")]).await;
    for (target, reason) in [
        (
            &fewer,
            format!("target topic {fewer} has 1 partitions but the archive of {topic} has 2"),
        ),
        (
            &full,
            format!("target topic {full} is not empty: it holds 1 offsets"),
        ),
        (
            &pending,
            format!("target topic {pending} is not empty: it holds 1 offsets"),
        ),
        (
            &stamped,
            format!("target topic {stamped} uses message.timestamp.type=LogAppendTime"),
        ),
    ] {
        let planned = plan(target, &["--plan"]);
        assert_eq!(
            planned.status.code(),
            Some(1),
            "{}",
            common::text(&planned.stderr)
        );
        let stdout = common::text(&planned.stdout);
        assert!(stdout.contains("RECORDS"), "the plan is printed: {stdout}");
        assert!(stdout.contains(&format!("refused: {reason}")), "{stdout}");
        assert!(
            common::error_line(&planned).contains(&reason),
            "{}",
            common::error_line(&planned)
        );
        // The run refuses for the same reason, before it writes anything.
        let run = plan(target, &[]);
        assert_eq!(run.status.code(), Some(1));
        assert!(
            common::error_line(&run).contains(&reason),
            "{}",
            common::error_line(&run)
        );
    }

    // Records 30 hours old into a target that keeps them for an hour: a warning, not a refusal.
    let short = format!("{topic}-short");
    kafka::create_topic(&short, 2, &[("retention.ms", "3600000")]).await;
    let planned = plan(&short, &["--plan"]);
    let stdout = ok(planned);
    assert!(
        stdout.contains(&format!(
            "warning: target topic {short} keeps records for 1h"
        )),
        "{stdout}"
    );

    // A new target: created by the run, not by the plan; nor is the progress topic.
    let fresh = format!("{topic}-fresh");
    let planned: serde_json::Value =
        serde_json::from_str(&ok(plan(&fresh, &["--plan", "--json"]))).unwrap();
    assert_eq!(planned["records"], 8, "{planned}");
    assert_eq!(planned["refusals"], serde_json::json!([]), "{planned}");
    assert_eq!(
        planned["targets"],
        serde_json::json!([{"topic": fresh, "partitions": null, "action": "create with 2 partitions, replication 1"}]),
        "{planned}"
    );
    let probe: BaseConsumer = kafka::config().create().unwrap();
    let metadata = probe.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    for name in [&fresh, &progress_topic] {
        assert!(
            !metadata.topics().iter().any(|t| t.name() == name.as_str()),
            "the plan created {name}"
        );
    }

    // No cluster: the archive's plan, and a failure that says the target was not checked.
    let out = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args([
            "restore",
            "--archive",
            &archive,
            "--bootstrap-servers",
            "127.0.0.1:1",
        ])
        .args(["--topics", &topic, "--plan"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::text(&out.stdout).contains("total: 8 records"),
        "{}",
        common::text(&out.stdout)
    );
    assert!(
        common::error_line(&out).contains("the target cluster was not checked"),
        "{}",
        common::error_line(&out)
    );
}
