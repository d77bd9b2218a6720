//! Point-in-time restore against the test bed's real broker and S3 server. The oracle is Kafka: the
//! source broker's `offsetsForTimes` says where a window starts and ends, and a `read_committed`
//! consumer of the source says what must land, byte for byte, in the target.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{self, header, record};
use rdkafka::Timestamp;
use rewind::archive::Record;

const HOUR: i64 = 3_600_000;

/// An hour boundary well in the past, so every test timestamp is old but kept (retention.ms=-1).
fn base() -> i64 {
    (common::now_ms() / HOUR - 30) * HOUR
}

fn s3_archive_url(bucket: &str) -> String {
    format!("s3://{bucket}/pitr")
}

/// `rewind sink --once` of `topic` with small files, so windows cut through many of them.
fn backup(archive: &str, topic: &str) {
    let out = common::sink_command(archive, topic, &common::unique("g"))
        .arg("--once")
        .env("REWIND__SINK__MAX_FILE_RECORDS", "4")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sink failed: {}",
        common::text(&out.stderr)
    );
}

/// `rewind restore` against the test bed, with `args` after the archive and brokers.
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

fn ms(t: i64) -> String {
    t.to_string()
}

/// Records produced with out-of-order CreateTime, keys, null keys, tombstones, headers with
/// duplicates and null values, and an aborted and a committed transaction in the middle.
async fn varied_topic(partitions: i32) -> (String, Vec<Vec<Record>>) {
    let topic = common::unique("pitr-src");
    kafka::create_topic(&topic, partitions, &[]).await;
    let base = base();
    let make = |p: i32, i: i64| {
        // Mostly forward in 5-minute steps across five hours; every seventh is 50 minutes late.
        let ts = base + i * 5 * 60_000 + if i % 7 == 6 { -50 * 60_000 } else { 0 } + i64::from(p);
        let key = match i % 5 {
            0 => None,
            1 => Some(vec![0u8, 255, i as u8]),
            _ => Some(format!("key-{}", i % 9).into_bytes()),
        };
        let value = (i % 11 != 3).then(|| {
            format!("value {p}/{i} ")
                .repeat(1 + (i % 4) as usize)
                .into_bytes()
        });
        let headers = match i % 3 {
            0 => vec![],
            1 => vec![header("trace", Some(b"a")), header("trace", Some(b"b"))],
            _ => vec![header("null", None), header("", Some(b""))],
        };
        Record {
            key,
            value,
            headers,
            ..record(None, None, vec![], ts)
        }
    };
    for p in 0..partitions {
        if p == 0 {
            // Partition 0 has no transactions, so the broker's offsetsForTimes is the oracle as it
            // is. Transaction markers carry the time the transaction ended, and offsetsForTimes
            // stops at the first one later than the asked time, whatever the records around it.
            let all: Vec<Record> = (0..60).map(|i| make(p, i)).collect();
            kafka::produce(&topic, p, &all).await;
            continue;
        }
        let first: Vec<Record> = (0..30).map(|i| make(p, i)).collect();
        kafka::produce(&topic, p, &first).await;
        let aborted: Vec<Record> = (100..103)
            .map(|i| Record {
                value: Some(format!("aborted {i}").into_bytes()),
                ..make(p, 29)
            })
            .collect();
        kafka::produce_transaction(&topic, p, &aborted, false).await;
        let committed: Vec<Record> = (30..34).map(|i| make(p, i)).collect();
        kafka::produce_transaction(&topic, p, &committed, true).await;
        let rest: Vec<Record> = (34..60).map(|i| make(p, i)).collect();
        kafka::produce(&topic, p, &rest).await;
    }
    let source = (0..partitions)
        .map(|p| {
            kafka::read_to_end(&topic, p)
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        })
        .collect();
    (topic, source)
}

/// Where a window starts and ends on one partition of `varied_topic`: the broker's answer on the
/// partition without transactions; on the other, the first committed record at or after each time
/// (the same rule, over the records a `read_committed` backup holds), after checking that nothing
/// aborted made it into the source's committed view.
fn cuts(topic: &str, p: i32, source: &[Record], from: i64, to: i64) -> (i64, i64) {
    if p == 0 {
        return (
            kafka::offset_for_time(topic, p, from),
            kafka::offset_for_time(topic, p, to),
        );
    }
    assert!(source
        .iter()
        .all(|r| !r.value.as_ref().is_some_and(|v| v.starts_with(b"aborted"))));
    let end = source.last().unwrap().offset + 1;
    let first = |t: i64| {
        source
            .iter()
            .find(|r| r.timestamp.unwrap() >= t)
            .map_or(end, |r| r.offset)
    };
    (first(from), first(to))
}

/// The restored records equal `expected` byte for byte, in order, as CreateTime.
fn assert_restored(target: &str, partition: i32, expected: &[Record]) {
    let got = kafka::read_to_end(target, partition);
    assert_eq!(
        got.len(),
        expected.len(),
        "{target}/{partition}: {} records restored, {} expected",
        got.len(),
        expected.len()
    );
    for (i, ((r, ts), e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(
            (&r.key, &r.value, &r.headers),
            (&e.key, &e.value, &e.headers),
            "{target}/{partition} record {i} (source offset {})",
            e.offset
        );
        assert_eq!(
            *ts,
            Timestamp::CreateTime(e.timestamp.unwrap()),
            "{target}/{partition} record {i}: timestamp"
        );
    }
}

#[tokio::test]
async fn a_window_restores_exactly_what_offsets_for_times_delimits() {
    let (topic, source) = varied_topic(2).await;
    let bucket = common::new_bucket().await;
    let archive = s3_archive_url(&bucket);
    backup(&archive, &topic);
    let base = base();
    let windows = [
        (base + 47 * 60_000, base + 3 * HOUR + 13 * 60_000),
        // Exactly on record timestamps and hour boundaries.
        (base + HOUR, base + 2 * HOUR),
        (
            source[0][10].timestamp.unwrap(),
            source[0][41].timestamp.unwrap(),
        ),
    ];
    for (n, (from, to)) in windows.into_iter().enumerate() {
        let target = format!("{topic}-restored-{n}");
        // The hour-aligned window is written in RFC 3339, the others in epoch milliseconds.
        let time = |t: i64| {
            if n == 1 {
                rewind::archive::time::rfc3339_millis(t)
            } else {
                ms(t)
            }
        };
        let plan = ok(restore(
            &archive,
            &[
                "--from",
                &time(from),
                "--to",
                &time(to),
                "--topics",
                &topic,
                "--rename",
                &format!("{topic}={target}"),
                "--plan",
                "--json",
            ],
        )
        .output()
        .unwrap());
        let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
        let out = ok(restore(
            &archive,
            &[
                "--from",
                &time(from),
                "--to",
                &time(to),
                "--topics",
                &topic,
                "--rename",
                &format!("{topic}={target}"),
            ],
        )
        .output()
        .unwrap());
        assert!(out.contains("restored"), "{out}");
        let mut total = 0;
        let mut total_bytes = 0;
        for p in 0..2 {
            let (start, end) = cuts(&topic, p, &source[p as usize], from, to);
            let expected: Vec<Record> = source[p as usize]
                .iter()
                .filter(|r| (start..end).contains(&r.offset))
                .cloned()
                .collect();
            assert!(
                !expected.is_empty(),
                "window {n} is not empty on partition {p}"
            );
            assert_restored(&target, p, &expected);
            let planned = &plan["partitions"][p as usize];
            assert_eq!(
                planned["records"],
                expected.len(),
                "plan of window {n}, partition {p}"
            );
            assert_eq!(planned["start"], start, "plan of window {n}, partition {p}");
            assert_eq!(planned["end"], end, "plan of window {n}, partition {p}");
            let payload: usize = expected.iter().map(Record::payload_len).sum();
            // Whole files: the plan counts bytes as the summary does, exactly; a file the window
            // cuts is counted by its share of records.
            let planned_bytes = planned["bytes"].as_u64().unwrap() as f64;
            assert!(
                (planned_bytes - payload as f64).abs() <= payload as f64 * 0.05 + 64.0,
                "plan of window {n}, partition {p}: {planned_bytes} bytes planned, {payload} restored"
            );
            total += expected.len();
            total_bytes += payload;
        }
        assert_eq!(plan["records"], total);
        assert!(
            out.contains(&format!("({total_bytes} bytes)")),
            "the summary counts the bytes the plan estimates: {out}"
        );
        assert_eq!(plan["refusals"], serde_json::json!([]), "{plan}");
        assert_eq!(
            plan["targets"][0]["action"], "create with 2 partitions, replication 1",
            "{plan}"
        );
    }

    // Strict mode: only records whose own timestamp is inside the window (late ones are dropped).
    let (from, to) = windows[0];
    let target = format!("{topic}-strict");
    ok(restore(
        &archive,
        &[
            "--from",
            &ms(from),
            "--to",
            &ms(to),
            "--topics",
            &topic,
            "--strict",
            "--rename",
            &format!("{topic}={target}"),
        ],
    )
    .output()
    .unwrap());
    for p in 0..2 {
        let (start, end) = cuts(&topic, p, &source[p as usize], from, to);
        let expected: Vec<Record> = source[p as usize]
            .iter()
            .filter(|r| {
                (start..end).contains(&r.offset) && (from..to).contains(&r.timestamp.unwrap())
            })
            .cloned()
            .collect();
        assert_restored(&target, p, &expected);
    }
}

#[tokio::test]
async fn log_append_time_topics_restore_their_timestamps_as_create_time() {
    let topic = common::unique("pitr-lat");
    kafka::create_topic(
        &topic,
        1,
        &[
            ("message.timestamp.type", "LogAppendTime"),
            ("cleanup.policy", "compact,delete"),
        ],
    )
    .await;
    let records: Vec<Record> = (0..12)
        .map(|i| {
            record(
                Some(format!("k{i}").as_bytes()),
                Some(b"v"),
                vec![],
                1_000 + i,
            )
        })
        .collect();
    kafka::produce(&topic, 0, &records).await;
    let source: Vec<Record> = kafka::read_to_end(&topic, 0)
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert!(
        source.iter().all(|r| r.timestamp.unwrap() > 1_000_000),
        "the broker stamped the records"
    );
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic);
    let target = format!("{topic}-copy");
    let out = ok(restore(
        &archive,
        &["--topics", &topic, "--rename", &format!("{topic}={target}")],
    )
    .output()
    .unwrap());
    assert!(out.contains(&format!("created topics {target}")), "{out}");
    assert_restored(&target, 0, &source);
    // The copy keeps the source's other configs.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka::config().create().unwrap();
    let configs = admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(&target)],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    let resource = configs.into_iter().next().unwrap().unwrap();
    let get = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    assert_eq!(get("cleanup.policy").as_deref(), Some("compact,delete"));
    assert_eq!(get("message.timestamp.type").as_deref(), Some("CreateTime"));

    // Provenance headers name each record's source, after its own headers.
    let traced = format!("{topic}-traced");
    ok(restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &format!("{topic}={traced}"),
            "--provenance-headers",
        ],
    )
    .output()
    .unwrap());
    let expected: Vec<Record> = source
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.headers.extend([
                header("rewind.source.topic", Some(topic.as_bytes())),
                header("rewind.source.partition", Some(b"0")),
                header(
                    "rewind.source.offset",
                    Some(r.offset.to_string().as_bytes()),
                ),
            ]);
            r
        })
        .collect();
    assert_restored(&traced, 0, &expected);
}

#[tokio::test]
async fn a_killed_restore_resumes_with_its_id_exactly_once() {
    let topic = common::unique("pitr-kill");
    kafka::create_topic(&topic, 2, &[]).await;
    let t0 = base();
    for p in 0..2 {
        let records: Vec<Record> = (0..20_000)
            .map(|i| {
                record(
                    Some(format!("k{i}").as_bytes()),
                    Some(&[b'x'; 100]),
                    vec![],
                    t0 + i,
                )
            })
            .collect();
        kafka::produce(&topic, p, &records).await;
    }
    let bucket = common::new_bucket().await;
    let archive = s3_archive_url(&bucket);
    let out = common::sink_command(&archive, &topic, &common::unique("g"))
        .arg("--once")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let target = format!("{topic}-copy");
    let id = common::unique("kill");
    let args = [
        "--topics",
        &topic,
        "--rename",
        &format!("{topic}={target}"),
        "--restore-id",
        &id,
        "--from",
        &ms(t0 + 1_000),
    ];
    // Kill it without warning three times, each once more records (committed or not) have
    // reached the target than before.
    let probe: rdkafka::consumer::BaseConsumer = kafka::config().create().unwrap();
    let landed = || -> i64 {
        use rdkafka::consumer::Consumer;
        (0..2)
            .map(|p| {
                // A short timeout: before the restore has created the target, each call waits
                // all of it, and a long wait could let the restore finish unseen.
                probe
                    .fetch_watermarks(&target, p, Duration::from_millis(300))
                    .map_or(0, |(_, high)| high)
            })
            .sum()
    };
    let mut kills = 0;
    for attempt in 1..=3 {
        let mut child = restore(&archive, &args)
            .env("REWIND__RESTORE__TRANSACTION_MAX_BYTES", "32KiB")
            .env("REWIND__RESTORE__CONCURRENCY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while landed() < attempt * 6_000
            && child.try_wait().unwrap().is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(
                kills > 0,
                "the restore ended ({}) before it could be killed: {}",
                out.status,
                common::text(&out.stderr)
            );
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills > 0, "the restore finished before it could be killed");
    let out = ok(restore(&archive, &args).output().unwrap());
    assert!(out.contains("(resumed)"), "{out}");
    for p in 0..2 {
        let expected: Vec<Record> = kafka::read_to_end(&topic, p)
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| r.timestamp.unwrap() >= t0 + 1_000)
            .collect();
        assert_eq!(expected.len(), 19_000);
        assert_restored(&target, p, &expected);
    }
}

#[tokio::test]
async fn a_restore_killed_in_its_first_transaction_resumes() {
    let topic = common::unique("pitr-first");
    kafka::create_topic(&topic, 1, &[]).await;
    let records: Vec<Record> = (0..500)
        .map(|i| {
            record(
                Some(b"k"),
                Some(format!("v{i}").as_bytes()),
                vec![],
                30_000 + i,
            )
        })
        .collect();
    let source = kafka::produce(&topic, 0, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic);
    let target = format!("{topic}-copy");
    let id = common::unique("first");
    let rename = format!("{topic}={target}");
    let args = ["--topics", &topic, "--rename", &rename, "--restore-id", &id];
    // Stop with every record delivered to the target in an open transaction, and kill it there.
    assert!(
        common::kill_at_failpoint(&mut restore(&archive, &args), "restore-before-commit"),
        "the restore reached its first commit"
    );
    // The target now holds the uncommitted records; the rerun must resume, not refuse it.
    let out = ok(restore(&archive, &args).output().unwrap());
    assert!(out.contains("(resumed)"), "{out}");
    assert_restored(&target, 0, &source);
}

#[tokio::test]
async fn fewer_target_partitions_need_repartition_by_key() {
    let topic = common::unique("pitr-parts");
    kafka::create_topic(&topic, 4, &[]).await;
    let mut source = Vec::new();
    for p in 0..4 {
        let records: Vec<Record> = (0..25)
            .map(|i| {
                let key = (i % 6 != 0).then(|| format!("user-{p}-{i}").into_bytes());
                Record {
                    key,
                    ..record(None, Some(format!("{p}/{i}").as_bytes()), vec![], 5_000 + i)
                }
            })
            .collect();
        source.extend(
            kafka::produce(&topic, p, &records)
                .await
                .into_iter()
                .map(|r| (p, r)),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic);
    let target = format!("{topic}-two");
    kafka::create_topic(&target, 2, &[]).await;
    let rename = format!("{topic}={target}");
    let out = restore(&archive, &["--topics", &topic, "--rename", &rename])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = common::error_line(&out);
    assert!(
        error.contains("has 2 partitions") && error.contains("--repartition-by-key"),
        "{error}"
    );
    assert!(
        kafka::read_to_end(&target, 0).is_empty(),
        "nothing was written"
    );

    ok(restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &rename,
            "--repartition-by-key",
        ],
    )
    .output()
    .unwrap());
    let mut restored = Vec::new();
    for tp in 0..2 {
        for (r, _) in kafka::read_to_end(&target, tp) {
            let expected = match &r.key {
                Some(key) => rewind::restore::partitioner::partition_for_key(key, 2),
                // Null keys keep source partition modulo the target's count.
                None => {
                    let value = String::from_utf8(r.value.clone().unwrap()).unwrap();
                    value.split('/').next().unwrap().parse::<i32>().unwrap() % 2
                }
            };
            assert_eq!(tp, expected, "record {:?} landed in partition {tp}", r.key);
            restored.push(r.value.clone().unwrap());
        }
    }
    let mut want: Vec<Vec<u8>> = source
        .iter()
        .map(|(_, r)| r.value.clone().unwrap())
        .collect();
    restored.sort();
    want.sort();
    assert_eq!(restored, want, "every record restored exactly once");
}

#[tokio::test]
async fn a_non_empty_target_is_refused_unless_allowed() {
    let topic = common::unique("pitr-full");
    kafka::create_topic(&topic, 1, &[]).await;
    let records: Vec<Record> = (0..5)
        .map(|i| record(Some(b"k"), Some(&[i as u8]), vec![], 9_000 + i))
        .collect();
    let source = kafka::produce(&topic, 0, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic);
    let target = format!("{topic}-busy");
    kafka::create_topic(&target, 1, &[]).await;
    let existing =
        kafka::produce(&target, 0, &[record(Some(b"old"), Some(b"old"), vec![], 1)]).await;
    let rename = format!("{topic}={target}");
    let out = restore(&archive, &["--topics", &topic, "--rename", &rename])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = common::error_line(&out);
    assert!(
        error.contains("is not empty: it holds 1 offsets") && error.contains("--allow-non-empty"),
        "{error}"
    );
    let summary = ok(restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &rename,
            "--allow-non-empty",
            "--json",
        ],
    )
    .output()
    .unwrap());
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["records"], 5, "{summary}");
    assert_eq!(summary["resumed"], false);
    assert_eq!(summary["topics_created"], serde_json::json!([]));
    let mut expected = existing;
    expected.extend(source);
    assert_restored(&target, 0, &expected);
}

#[tokio::test]
async fn consumer_groups_resume_at_the_counterpart_of_their_offset() {
    let topic = common::unique("pitr-group");
    kafka::create_topic(&topic, 1, &[]).await;
    let t0 = base();
    let records: Vec<Record> = (0..30)
        .map(|i| {
            record(
                Some(format!("k{i}").as_bytes()),
                Some(format!("v{i}").as_bytes()),
                vec![],
                t0 + i * 1_000,
            )
        })
        .collect();
    let source = kafka::produce(&topic, 0, &records).await;
    let group = common::unique("app");
    kafka::commit_group(&group, &topic, 0, 12);
    let behind = common::unique("late-app");
    kafka::commit_group(&behind, &topic, 0, 2);
    let done = common::unique("done-app");
    kafka::commit_group(&done, &topic, 0, 30);
    let busy = common::unique("busy-app");
    kafka::commit_group(&busy, &topic, 0, 20);
    let bucket = common::new_bucket().await;
    let archive = s3_archive_url(&bucket);
    backup(&archive, &topic);

    // `busy` has a live member in the target cluster, of the consumer protocol (KIP-848), which the
    // classic group list does not show: its offsets are the member's, and must be left alone.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (joined_tx, joined) = std::sync::mpsc::channel();
    let member = std::thread::spawn({
        let (busy, topic, stop) = (busy.clone(), topic.clone(), stop.clone());
        move || {
            use rdkafka::consumer::Consumer;
            let consumer: rdkafka::consumer::BaseConsumer = kafka::config()
                .set("group.id", &busy)
                .set("group.protocol", "consumer")
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            consumer.subscribe(&[topic.as_str()]).unwrap();
            let mut told = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = consumer.poll(Duration::from_millis(100));
                if !told && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    told = joined_tx.send(()).is_ok();
                }
            }
        }
    });
    joined
        .recv_timeout(Duration::from_secs(60))
        .expect("the KIP-848 member joined");
    let snapshots = common::s3_client()
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(format!("pitr/_groups/{group}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        snapshots.key_count(),
        Some(1),
        "the sink snapshotted the group"
    );

    let target = format!("{topic}-copy");
    let rename = format!("{topic}={target}");
    let from = ms(t0 + 5_000);
    let args = [
        "--topics", &topic, "--rename", &rename, "--from", &from, "--groups",
    ];
    // The plan says where each group goes, and moves none of them.
    let plan: serde_json::Value = serde_json::from_str(&ok(restore(
        &archive,
        &[&args[..], &["--plan", "--json"]].concat(),
    )
    .output()
    .unwrap()))
    .unwrap();
    let moved = |name: &str| {
        plan["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the plan: {plan}"))
            .clone()
    };
    // The window starts at offset 5: a group at 12 resumes after 7 restored records, one at 2
    // before the first, one at the end at the end.
    assert_eq!(moved(&group)["after_records"], 7, "{plan}");
    assert_eq!(moved(&group)["target_topic"], target.as_str(), "{plan}");
    assert_eq!(moved(&behind)["after_records"], 0, "{plan}");
    assert_eq!(
        moved(&done)["after_records"],
        serde_json::Value::Null,
        "{plan}"
    );
    // Its members use the consumer protocol, which the plan cannot see into: it says so.
    assert_eq!(
        moved(&busy)["active_members"],
        serde_json::Value::Null,
        "{plan}"
    );
    assert_eq!(moved(&group)["active_members"], false, "{plan}");
    let text = ok(restore(&archive, &[&args[..], &["--plan"]].concat())
        .output()
        .unwrap());
    assert!(text.contains("after 7 restored records"), "{text}");
    {
        use rdkafka::consumer::Consumer;
        let reader: rdkafka::consumer::BaseConsumer =
            kafka::config().set("group.id", &group).create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(&target, 0);
        let committed = reader
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            committed.elements()[0].offset(),
            rdkafka::Offset::Invalid,
            "the plan committed nothing"
        );
    }

    let out = ok(restore(&archive, &args).output().unwrap());
    assert!(out.contains("moved groups"), "{out}");
    assert!(
        out.contains(&format!("left groups with active members alone: {busy}")),
        "{out}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    member.join().unwrap();
    {
        use rdkafka::consumer::Consumer;
        let reader: rdkafka::consumer::BaseConsumer =
            kafka::config().set("group.id", &busy).create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(&target, 0);
        let committed = reader
            .committed_offsets(tpl, Duration::from_secs(30))
            .unwrap();
        assert_eq!(
            committed.elements()[0].offset(),
            rdkafka::Offset::Invalid,
            "nothing was committed for the busy group"
        );
    }
    // Each group, consuming the target from its committed offset, reads exactly what it had left.
    for (g, from) in [(&group, 12usize), (&behind, 5), (&done, 30)] {
        let consumer: rdkafka::consumer::BaseConsumer = kafka::config()
            .set("group.id", g.as_str())
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            .create()
            .unwrap();
        use rdkafka::consumer::Consumer;
        consumer.subscribe(&[target.as_str()]).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "group {g} timed out");
            match consumer.poll(Duration::from_millis(500)) {
                None => {}
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => panic!("group {g}: {e}"),
                Some(Ok(m)) => got.push(rewind::sink::to_record(&m).value.unwrap()),
            }
        }
        let want: Vec<Vec<u8>> = source[from..]
            .iter()
            .map(|r| r.value.clone().unwrap())
            .collect();
        assert_eq!(
            got, want,
            "group {g} resumes at source offset {from}'s counterpart"
        );
    }
}

#[tokio::test]
async fn follow_mode_restores_files_written_after_it_started() {
    let topic = common::unique("pitr-follow");
    kafka::create_topic(&topic, 1, &[]).await;
    let batch = |from: i64| -> Vec<Record> {
        (from..from + 10)
            .map(|i| {
                record(
                    Some(b"k"),
                    Some(format!("v{i}").as_bytes()),
                    vec![],
                    7_000 + i,
                )
            })
            .collect()
    };
    let mut source = kafka::produce(&topic, 0, &batch(0)).await;
    let bucket = common::new_bucket().await;
    let archive = s3_archive_url(&bucket);
    backup(&archive, &topic);
    let target = format!("{topic}-standby");
    let child = restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &format!("{topic}={target}"),
            "--follow",
        ],
    )
    .env("REWIND__RESTORE__POLL_INTERVAL", "1s")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = kafka::read_to_end(&target, 0);
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    assert_eq!(wait_for(10).len(), 10);
    source.extend(kafka::produce(&topic, 0, &batch(10)).await);
    backup(&archive, &topic);
    source.extend(kafka::produce(&topic, 0, &batch(20)).await);
    backup(&archive, &topic);
    assert_eq!(wait_for(30).len(), 30);
    assert_restored(&target, 0, &source);
    // SIGTERM stops it gracefully.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
}

#[tokio::test]
async fn bad_input_gets_one_clear_sentence() {
    let topic = common::unique("pitr-bad");
    kafka::create_topic(&topic, 1, &[]).await;
    let records: Vec<Record> = (0..8)
        .map(|i| record(Some(b"k"), Some(&[i as u8; 64]), vec![], 20_000 + i * 1_000))
        .collect();
    let source = kafka::produce(&topic, 0, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic);

    let out = restore(
        &archive,
        &[
            "--from",
            "2026-11-23T10:00:00Z",
            "--to",
            "2026-11-23T09:00:00Z",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(common::error_line(&out).contains("is after --to"));

    let out = restore(&archive, &["--from", "last tuesday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(common::error_line(&out).contains("is not a time"));

    // A window with nothing in it: exit 0, nothing written (not even the target topic).
    let target = format!("{topic}-empty");
    let rename = format!("{topic}={target}");
    let empty = |from: &str, to: &str, json: &str| {
        let args = [
            "--topics", &topic, "--rename", &rename, "--from", from, "--to", to, json,
        ];
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        ok(restore(&archive, &args).output().unwrap())
    };
    let stdout = empty("1970-01-01T00:00:01Z", "1970-01-01T00:00:02Z", "");
    assert!(stdout.contains("nothing to restore"), "{stdout}");
    let admin: rdkafka::consumer::BaseConsumer = kafka::config().create().unwrap();
    use rdkafka::consumer::Consumer;
    let metadata = admin.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    assert!(
        !metadata.topics().iter().any(|t| t.name() == target),
        "no topic was created"
    );

    let out = restore(&archive, &["--topics", "no-such-topic"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = common::error_line(&out);
    assert!(
        error.contains("no archived topic matches") && error.contains(&topic),
        "{error}"
    );

    // [T, T) is an empty window like any other: exit 0, nothing written, said in JSON too.
    let summary: serde_json::Value = serde_json::from_str(&empty(
        "1970-01-01T00:00:22Z",
        "1970-01-01T00:00:22Z",
        "--json",
    ))
    .unwrap();
    assert_eq!(summary["nothing_to_restore"], true, "{summary}");
    assert_eq!(summary["records"], 0, "{summary}");
    // Negative epoch milliseconds (before 1970) are times, not flags.
    let out = restore(&archive, &["--from", "-5000", "--to", "-1000", "--plan"])
        .output()
        .unwrap();
    let plan = ok(out);
    assert!(plan.contains("[1969-12-31T23:59:55.000Z, 1969-12-31T23:59:59.000Z)"));
    assert!(
        plan.contains("nothing to restore: no archived record of the selected topics falls in"),
        "{plan}"
    );
    let metadata = admin.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    assert!(
        !metadata.topics().iter().any(|t| t.name() == target),
        "no topic was created"
    );

    // No archive there: a usage error (exit 2), and the mistyped folder is not created.
    let missing = format!("file://{}/nothing-here", dir.path().display());
    let out = restore(&missing, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        common::error_line(&out),
        format!("error: {missing}: no archive at this path (no such folder); check --archive or REWIND__ARCHIVE")
    );
    assert!(!dir.path().join("nothing-here").exists());

    // A damaged file stops the restore naming it; once repaired, the same id finishes exactly.
    let file = walk(dir.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let original = std::fs::read(&file).unwrap();
    let mut damaged = original.clone();
    damaged[original.len() / 2] ^= 0xff;
    std::fs::write(&file, &damaged).unwrap();
    let target = format!("{topic}-copy");
    let id = common::unique("damaged");
    let args = [
        "--topics",
        &topic,
        "--rename",
        &format!("{topic}={target}"),
        "--restore-id",
        &id,
    ];
    let out = restore(&archive, &args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = common::error_line(&out);
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    assert!(error.contains(&name), "{error}");
    std::fs::write(&file, &original).unwrap();
    ok(restore(&archive, &args).output().unwrap());
    assert_restored(&target, 0, &source);

    // The same id with another window is refused rather than mixed into the first.
    let mut other = args.to_vec();
    other.extend(["--from", "1970-01-01T00:00:25Z"]);
    let out = restore(&archive, &other).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let error = common::error_line(&out);
    assert!(
        error.contains("was started for [earliest, latest)"),
        "{error}"
    );
}

#[tokio::test]
async fn missing_and_pre_1970_timestamps_restore_as_they_were() {
    let topic = common::unique("pitr-ts");
    kafka::create_topic(&topic, 1, &[]).await;
    // -1 is Kafka's "no timestamp"; the others are CreateTimes before and just after the epoch.
    let stamps = [-1, -5_000, 1, -31_536_000_000, 1_000, base()];
    let records: Vec<Record> = stamps
        .iter()
        .enumerate()
        .map(|(i, ts)| record(Some(b"k"), Some(format!("v{i}").as_bytes()), vec![], *ts))
        .collect();
    kafka::produce(&topic, 0, &records).await;
    let source = kafka::read_to_end(&topic, 0);
    assert_eq!(source.len(), stamps.len());
    assert_eq!(source[0].1, Timestamp::NotAvailable, "the broker kept -1");
    assert_eq!(source[3].1, Timestamp::CreateTime(-31_536_000_000));
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic);

    let target = format!("{topic}-copy");
    ok(restore(
        &archive,
        &["--topics", &topic, "--rename", &format!("{topic}={target}")],
    )
    .output()
    .unwrap());
    assert_eq!(kafka::read_to_end(&target, 0), source);

    // A target that keeps records for an hour would soon delete these: the restore says so.
    let short = format!("{topic}-short");
    kafka::create_topic(&short, 1, &[("retention.ms", "3600000")]).await;
    let out = restore(
        &archive,
        &["--topics", &topic, "--rename", &format!("{topic}={short}")],
    )
    .output()
    .unwrap();
    let stderr = common::text(&out.stderr);
    ok(out);
    assert!(
        stderr.contains("the broker deletes them soon after they land") && stderr.contains(&short),
        "{stderr}"
    );
}

/// Every check on every target comes before anything is created: a refused restore leaves the
/// target cluster as it found it (no half of the targets, no progress topic).
#[tokio::test]
async fn a_refused_restore_creates_nothing() {
    let (a, b) = (common::unique("pitr-ra"), common::unique("pitr-rb"));
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    for topic in [&a, &b] {
        kafka::create_topic(topic, 1, &[]).await;
        let records: Vec<Record> = (0..3)
            .map(|i| record(Some(b"k"), Some(b"v"), vec![], base() + i))
            .collect();
        kafka::produce(topic, 0, &records).await;
        backup(&archive, topic);
    }
    let (ta, tb) = (format!("{a}-copy"), format!("{b}-copy"));
    kafka::create_topic(&tb, 1, &[]).await;
    kafka::produce(&tb, 0, &[record(None, Some(b"x"), vec![], base())]).await;
    let progress = common::unique("progress");
    let topics = format!("{}|{}", regex::escape(&a), regex::escape(&b));
    let run = |args: &[&str]| {
        restore(&archive, args)
            .env("REWIND__RESTORE__PROGRESS_TOPIC", &progress)
            .output()
            .unwrap()
    };
    let out = run(&[
        "--topics",
        &topics,
        "--rename",
        &format!("{a}={ta}"),
        "--rename",
        &format!("{b}={tb}"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let error = common::error_line(&out);
    assert!(
        error.contains(&tb) && error.contains("is not empty"),
        "{error}"
    );

    // A rename that renames nothing would restore a topic under its own name: refused.
    let out = run(&["--topics", &a, "--rename", &format!("{b}={tb}")]);
    assert_eq!(out.status.code(), Some(1));
    let error = common::error_line(&out);
    assert!(
        error.contains("renames nothing") && error.contains("does not select it"),
        "{error}"
    );
    let out = run(&["--rename", &format!("{a}-typo={ta}")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::error_line(&out).contains("the archive holds no such topic"));
    // Follow mode too, for a topic --topics can never select.
    let out = run(&["--topics", &a, "--follow", "--rename", &format!("{b}={tb}")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::error_line(&out).contains("does not select it"));

    let admin: rdkafka::consumer::BaseConsumer = kafka::config().create().unwrap();
    use rdkafka::consumer::Consumer;
    let metadata = admin.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert!(!names.contains(&ta.as_str()), "{ta} was not created");
    assert!(
        !names.contains(&progress.as_str()),
        "no progress topic was created"
    );
}

#[tokio::test]
async fn records_larger_than_a_megabyte_restore_where_the_target_takes_them() {
    let topic = common::unique("pitr-big");
    kafka::create_topic(&topic, 1, &[("max.message.bytes", "3000000")]).await;
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let producer: rdkafka::producer::FutureProducer = kafka::config()
        .set("message.max.bytes", "3000000")
        .create()
        .unwrap();
    let mut source = Vec::new();
    for (i, value) in [big.clone(), b"small".to_vec(), big]
        .into_iter()
        .enumerate()
    {
        let key = format!("k{i}");
        let delivered = producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .partition(0)
                    .key(key.as_bytes())
                    .payload(&value)
                    .timestamp(40_000 + i as i64),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        source.push(Record {
            offset: delivered.offset,
            ..record(
                Some(key.as_bytes()),
                Some(&value),
                vec![],
                40_000 + i as i64,
            )
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic);

    // A target created from _topics/ takes the source's limit, so everything lands.
    let created = format!("{topic}-created");
    ok(restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &format!("{topic}={created}"),
        ],
    )
    .output()
    .unwrap());
    assert_restored(&created, 0, &source);

    // An existing target with the broker's default limit refuses the big records: the restore
    // stops with a sentence that says so, and nothing becomes visible.
    let small = format!("{topic}-small");
    kafka::create_topic(&small, 1, &[]).await;
    let out = restore(
        &archive,
        &["--topics", &topic, "--rename", &format!("{topic}={small}")],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = common::error_line(&out);
    assert!(error.contains("max.message.bytes"), "{error}");
    assert!(kafka::read_to_end(&small, 0).is_empty());

    // A record larger than the producer's whole queue can never be queued: the restore stops and
    // names the setting (it used to wait for room forever).
    let queued = format!("{topic}-queued");
    let out = restore(
        &archive,
        &[
            "--topics",
            &topic,
            "--rename",
            &format!("{topic}={queued}"),
            "-X",
            "queue.buffering.max.kbytes=1024",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let error = common::error_line(&out);
    assert!(error.contains("queue.buffering.max.kbytes"), "{error}");
    assert!(kafka::read_to_end(&queued, 0).is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Without the admin API (Amazon MSK IAM), a restore makes no topic itself: a missing target or
/// progress topic is named, and with both in place the window is restored as usual.
#[tokio::test]
async fn without_the_admin_api_targets_must_exist() {
    let topic = common::unique("pitr-noadmin");
    kafka::create_topic(&topic, 2, &[]).await;
    let records: Vec<Record> = (0..6)
        .map(|i| record(Some(b"k"), Some(&[i as u8]), vec![], 9_000 + i))
        .collect();
    let source = kafka::produce(&topic, 1, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    backup(&archive, &topic);

    let target = format!("{topic}-copy");
    let progress = common::unique("progress");
    let store = rewind::storage::open_reader(
        &rewind::storage::StorageUrl::parse(&archive).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let job = rewind::config::RestoreJob {
        topics: regex::escape(&topic),
        renames: [(topic.clone(), target.clone())].into(),
        ..Default::default()
    };
    let tuning = rewind::config::RestoreConfig {
        progress_topic: progress.clone(),
        ..Default::default()
    };
    let mut opts = job
        .options(&common::unique("noadmin"), &tuning, str::to_string)
        .unwrap();
    opts.admin_api = false;
    let run = |opts: rewind::restore::RestoreOptions| {
        let store = store.clone();
        async move { rewind::restore::run(kafka::config(), store, &opts, std::future::pending()).await }
    };

    let error = run(opts.clone()).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!("the progress topic {progress} does not exist")),
        "{error}"
    );
    kafka::create_topic(&progress, 1, &[("cleanup.policy", "compact")]).await;
    let error = run(opts.clone()).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!("target topic {target} does not exist"))
            && error.contains("create it first"),
        "{error}"
    );
    kafka::create_topic(&target, 2, &[]).await;
    let report = run(opts).await.unwrap();
    assert_eq!(report.records, 6);
    assert_restored(&target, 1, &source);
}

/// A file larger than a restore's share of its memory budget is read one row group at a time (its
/// footer first, each row group checked against its own checksum), and row groups wholly outside
/// the window are not read: what lands is exactly the window, and damage is found where it is read.
#[tokio::test]
async fn a_file_larger_than_the_budget_restores_a_row_group_at_a_time() {
    let topic = common::unique("pitr-ranged");
    kafka::create_topic(&topic, 1, &[]).await;
    let base = base();
    // 2,000 values of 10 KiB that zstd cannot shrink: about 20 MiB, one file of several 5 MiB
    // row groups, larger than what a planner reads whole.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let records: Vec<Record> = (0..2_000i64)
        .map(|i| {
            let value: Vec<u8> = (0..10_240)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let key = format!("k{i}");
            record(Some(key.as_bytes()), Some(&value), vec![], base + i * 1_000)
        })
        .collect();
    kafka::produce(&topic, 0, &records).await;
    let source: Vec<Record> = kafka::read_to_end(&topic, 0)
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(source.len(), records.len());
    assert_eq!(source[0].offset, 0);

    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    let out = common::sink_command(&archive, &topic, &common::unique("g"))
        .arg("--once")
        .env("REWIND__STORAGE__S3__PART_SIZE", "5MiB")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let files: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let file = files[0].clone();
    let bytes = bytes::Bytes::from(std::fs::read(&file).unwrap());
    let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&bytes)
        .unwrap();
    assert!(
        metadata.num_row_groups() >= 4,
        "{} row groups",
        metadata.num_row_groups()
    );
    // Each row group's offsets and bytes.
    let groups: Vec<((i64, i64), std::ops::Range<usize>)> = (0..metadata.num_row_groups())
        .map(|g| {
            let offsets = match metadata.row_group(g).column(0).statistics() {
                Some(parquet::file::statistics::Statistics::Int64(s)) => {
                    (*s.min_opt().unwrap(), *s.max_opt().unwrap())
                }
                other => panic!("offset statistics: {other:?}"),
            };
            let range =
                rewind::archive::datafile::integrity::row_group_range(&metadata, g).unwrap();
            (offsets, range.start as usize..range.end as usize)
        })
        .collect();
    let restore_window = |name: &str, from: i64, to: i64| {
        let target = format!("{topic}-{name}");
        let out = restore(
            &archive,
            &[
                "--topics",
                &topic,
                "--rename",
                &format!("{topic}={target}"),
                "--from",
                &ms(base + from * 1_000),
                "--to",
                &ms(base + to * 1_000),
            ],
        )
        // An 8 MiB budget lets files of up to 2 MiB be read whole: this one is read in row groups.
        .env("REWIND__RESTORE__BUFFER_BUDGET", "8MiB")
        .output()
        .unwrap();
        (target, out)
    };

    // A window across row groups, and the whole file.
    let (target, out) = restore_window("across", 300, 1_100);
    ok(out);
    assert_restored(&target, 0, &source[300..1_100]);
    let (target, out) = restore_window("all", 0, 2_000);
    ok(out);
    assert_restored(&target, 0, &source);

    // Damage in the last row group: a window inside the second reads it neither to plan (the cuts
    // read row groups in order up to the one that holds them, the count only the row groups the
    // window's offsets need and their neighbours) nor to restore, and lands exactly its records.
    let ((lo, hi), second) = groups[1].clone();
    let last = groups[groups.len() - 1].1.clone();
    let mut damaged = bytes.to_vec();
    damaged[last.end - 1_000] ^= 0x10;
    std::fs::write(&file, &damaged).unwrap();
    let (target, out) = restore_window("second", lo, hi + 1);
    ok(out);
    assert_restored(&target, 0, &source[lo as usize..hi as usize + 1]);
    // Damage in a row group a window needs is found where it is read and named, and nothing of
    // the window lands: by the plan (a cut inside it) ...
    damaged[second.start + 1_000] ^= 0x10;
    std::fs::write(&file, &damaged).unwrap();
    // ... and by the restore's reader (whole hours: the plan reads no records).
    for (name, from, to) in [("cut-in-damage", lo + 10, hi), ("whole-hour", 0, 3_600)] {
        let (target, out) = restore_window(name, from, to);
        assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stderr));
        let error = common::error_line(&out);
        assert!(
            error.contains("row group 1") && error.contains("CRC32C"),
            "{name}: {error}"
        );
        assert_nothing_landed(&target);
    }
}

/// `target` was not created, or holds no record.
fn assert_nothing_landed(target: &str) {
    use rdkafka::consumer::Consumer;
    let admin: rdkafka::consumer::BaseConsumer = kafka::config().create().unwrap();
    let metadata = admin.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    if metadata.topics().iter().any(|t| t.name() == target) {
        assert!(
            kafka::read_to_end(target, 0).is_empty(),
            "{target} holds records"
        );
    }
}

/// Issue 19: `rewind compact` merges and deletes the files a running restore planned to read. The
/// restore goes on from the compacted file that replaced them (the claims of their starts name it)
/// and lands every record once; before, it stopped on the first file that was gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_reads_on_from_files_compacted_after_its_plan() {
    let topic = common::unique("pitr-compacted");
    kafka::create_topic(&topic, 1, &[]).await;
    let records: Vec<Record> = (0..60)
        .map(|i| {
            record(
                Some(format!("k{i}").as_bytes()),
                Some(format!("v{i}").as_bytes()),
                vec![header("h", Some(b"x"))],
                base() + i * 1000,
            )
        })
        .collect();
    let source = kafka::produce(&topic, 0, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    // 15 files of 4 records in one closed hour.
    backup(&archive, &topic);
    // Every file the restore listed but the newest (which compaction keeps) is merged into one.
    restore_while_compacting(&archive, dir.path(), &topic, &[], 2, &source);
}

/// As above, with the gone files read a row group at a time (larger than their share of a small
/// buffer budget) and a file of an earlier hour, which compaction leaves alone, just before them:
/// that file, fetched ahead when the next file's footer is found gone, is still restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_keeps_the_file_it_fetched_before_the_one_compaction_took() {
    let topic = common::unique("pitr-compacted-large");
    kafka::create_topic(&topic, 1, &[]).await;
    // Values that do not compress, so that the files are as large as their records.
    let noise = |seed: u64| -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let mut records: Vec<Record> = (0..5)
        .map(|i| record(Some(b"early"), Some(b"v"), vec![], base() + i))
        .collect();
    records.extend((0..45).map(|i| {
        record(
            Some(b"k"),
            Some(&noise(i as u64)),
            vec![],
            base() + HOUR + i,
        )
    }));
    records.push(record(Some(b"k"), Some(b"last"), vec![], base() + 2 * HOUR));
    let source = kafka::produce(&topic, 0, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    // [0, 5) in one hour, [5, 20), [20, 35), [35, 50) of 3 MB each in the next (row groups are
    // read one at a time above 2 MiB with an 8 MiB budget), [50, 51) after.
    let out = common::sink_command(&archive, &topic, &common::unique("g"))
        .arg("--once")
        .env("REWIND__SINK__MAX_FILE_RECORDS", "15")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    // The early file, the compacted hour and the newest file remain.
    let budget = [("REWIND__RESTORE__BUFFER_BUDGET", "8MiB")];
    restore_while_compacting(&archive, dir.path(), &topic, &budget, 3, &source);
}

/// Restore `topic` into `<topic>-copy`, stalled after its plan while `rewind compact` merges the
/// archive's closed hours (leaving `files` data files), and check it read on from the compacted
/// files and restored `source` whole.
fn restore_while_compacting(
    archive: &str,
    root: &std::path::Path,
    topic: &str,
    env: &[(&str, &str)],
    files: usize,
    source: &[Record],
) {
    let target = format!("{topic}-copy");
    let rename = format!("{topic}={target}");
    let mut cmd = restore(archive, &["--topics", topic, "--rename", &rename]);
    // A progress topic of its own: one another test creates meanwhile would make this restore set
    // up again, planning after the compaction.
    cmd.envs(env.iter().copied())
        .env(
            "REWIND__RESTORE__PROGRESS_TOPIC",
            common::unique("progress"),
        )
        .env("REWIND_FAILPOINT", "restore-stall-after-fence")
        .env("REWIND_FAILPOINT_STALL_MS", "8000")
        .env("RUST_LOG", "info");
    let mut running = common::watched::Watched::start(&mut cmd);
    assert!(
        running.wait_for(
            "failpoint restore-stall-after-fence reached",
            Duration::from_secs(60)
        ),
        "{}",
        running.stderr()
    );
    let out = common::tool_command("compact", archive)
        .args(["--settle", "0s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let left = walk(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert_eq!(left, files, "data files after the compaction");
    let out = running.finish();
    let log = common::text(&out.stderr);
    ok(out);
    assert!(log.contains("reading on from that one"), "{log}");
    assert_restored(&target, 0, source);
}
