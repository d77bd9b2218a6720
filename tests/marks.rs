//! Named restore points against the test bed's real broker: `rewind mark` takes the cluster's
//! offsets at one moment while producers keep writing, the mark stays pending until the sink has
//! archived it, and a restore to it (or between two marks) lands exactly the records below the
//! marked offsets, byte for byte, including partitions whose tail is a transaction marker.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{self, header, record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rewind::archive::Record;
use serde_json::Value;

const PARTITIONS: i32 = 3;

fn run(cmd: &mut std::process::Command) -> std::process::Output {
    cmd.output().unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}{}",
        out.status,
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    common::text(&out.stdout)
}

/// The last stable offset of each partition, as a `read_committed` client is told it.
fn stable_ends(topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = kafka::config()
        .set("group.id", common::unique("ends"))
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

fn rec(p: i32, i: usize) -> Record {
    let now = common::now_ms();
    Record {
        key: (!i.is_multiple_of(4)).then(|| format!("k{p}-{i}").into_bytes()),
        value: (i % 9 != 5).then(|| format!("value {p}/{i} ").repeat(1 + i % 3).into_bytes()),
        headers: if i.is_multiple_of(2) {
            vec![]
        } else {
            vec![header("h", Some(b"x")), header("h", None)]
        },
        ..record(None, None, vec![], now)
    }
}

/// The mark's `(offset, records_end)` per partition, from `rewind mark --json`.
fn cut_of(doc: &Value) -> Vec<(i64, i64)> {
    let mut cut = vec![(-1, -1); PARTITIONS as usize];
    for p in doc["mark"]["partitions"].as_array().unwrap() {
        cut[p["partition"].as_i64().unwrap() as usize] = (
            p["offset"].as_i64().unwrap(),
            p["records_end"].as_i64().unwrap(),
        );
    }
    cut
}

fn mark_status(archive: &str, name: &str) -> String {
    let ls: Value =
        serde_json::from_str(&ok(run(common::tool_command("ls", archive).arg("--json")))).unwrap();
    ls["marks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("mark {name} not listed: {ls}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every record of `target`'s partitions as a `read_committed` consumer sees them.
fn restored(target: &str) -> Vec<Vec<Record>> {
    (0..PARTITIONS)
        .map(|p| {
            kafka::read_to_end(target, p)
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        })
        .collect()
}

/// The source's records of partition `p` with offsets in `[from, to)`, compared by content.
fn expected(source: &[Vec<Record>], from: &[i64], to: &[i64]) -> Vec<Vec<Record>> {
    (0..PARTITIONS as usize)
        .map(|p| {
            source[p]
                .iter()
                .filter(|r| r.offset >= from[p] && r.offset < to[p])
                .cloned()
                .collect()
        })
        .collect()
}

/// What a restore must bring back of each record: key, value, headers and timestamp.
type Content = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<rewind::archive::Header>,
    Option<i64>,
);

fn content(rs: &[Record]) -> Vec<Content> {
    rs.iter()
        .map(|r| {
            (
                r.key.clone(),
                r.value.clone(),
                r.headers.clone(),
                r.timestamp,
            )
        })
        .collect()
}

fn same_content(got: &[Vec<Record>], want: &[Vec<Record>]) {
    for p in 0..PARTITIONS as usize {
        assert_eq!(
            got[p].len(),
            want[p].len(),
            "partition {p}: {} records restored, {} below the mark",
            got[p].len(),
            want[p].len()
        );
        assert_eq!(content(&got[p]), content(&want[p]), "partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_a_mark_is_exactly_the_records_below_it_while_producers_keep_writing() {
    common::no_instance_metadata();
    let topic = common::unique("mark-src");
    kafka::create_topic(&topic, PARTITIONS, &[]).await;
    // Partition 0 plain records; 1 plain, an aborted and a committed transaction; 2 only a
    // committed transaction, so its log ends with a commit marker.
    kafka::produce(&topic, 0, &(0..40).map(|i| rec(0, i)).collect::<Vec<_>>()).await;
    kafka::produce(&topic, 1, &(0..20).map(|i| rec(1, i)).collect::<Vec<_>>()).await;
    kafka::produce_transaction(
        &topic,
        1,
        &(20..23).map(|i| rec(1, i)).collect::<Vec<_>>(),
        false,
    )
    .await;
    kafka::produce_transaction(
        &topic,
        1,
        &(23..27).map(|i| rec(1, i)).collect::<Vec<_>>(),
        true,
    )
    .await;
    kafka::produce_transaction(
        &topic,
        2,
        &(0..5).map(|i| rec(2, i)).collect::<Vec<_>>(),
        true,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    // The archive exists (a first snapshot) before anything is marked.
    ok(run(common::sink_command(
        &archive,
        &topic,
        &common::unique("g"),
    )
    .arg("--once")
    .env("REWIND__SINK__MAX_FILE_RECORDS", "7")));

    // The first mark, with nothing written since: complete at once, the commit marker of
    // partition 2 included.
    let before = stable_ends(&topic);
    let first: Value = serde_json::from_str(&ok(run(
        common::mark_command(&archive).args(["first", "--json", "--topics", &topic])
    )))
    .unwrap();
    let first_cut = cut_of(&first);
    assert_eq!(first_cut.iter().map(|c| c.0).collect::<Vec<_>>(), before);
    assert_eq!(
        first_cut[2],
        (6, 5),
        "partition 2 ends with a commit marker: {first}"
    );
    assert_eq!(first_cut[1].1, first_cut[1].0 - 1, "{first}");
    assert_eq!(first["status"], "complete", "{first}");

    // The second mark is taken while producers write to every partition.
    let writing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (topic, writing) = (topic.clone(), writing.clone());
        tokio::spawn(async move {
            let mut i = 1000;
            while writing.load(Ordering::Relaxed) {
                for p in 0..PARTITIONS {
                    let batch: Vec<_> = (i..i + 5).map(|i| rec(p, i)).collect();
                    if p == 2 {
                        kafka::produce_transaction(&topic, p, &batch, true).await;
                    } else {
                        kafka::produce(&topic, p, &batch).await;
                    }
                }
                i += 5;
            }
        })
    };
    // Until every partition has moved past the first mark.
    while stable_ends(&topic)
        .iter()
        .zip(&first_cut)
        .any(|(end, cut)| *end <= cut.0)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let low = stable_ends(&topic);
    let out = run(common::mark_command(&archive).args(["second", "--json"]));
    let high = stable_ends(&topic);
    let second: Value = serde_json::from_str(&ok(out)).unwrap();
    let second_cut = cut_of(&second);
    for p in 0..PARTITIONS as usize {
        assert!(
            low[p] <= second_cut[p].0 && second_cut[p].0 <= high[p],
            "partition {p}: the cut {} is not between {} and {}, the ends before and after",
            second_cut[p].0,
            low[p],
            high[p]
        );
        assert!(
            second_cut[p].0 > first_cut[p].0,
            "producers wrote meanwhile"
        );
    }
    assert_eq!(
        second["status"], "pending",
        "nothing archived past the first mark: {second}"
    );
    assert_eq!(mark_status(&archive, "second"), "pending");
    // A restore to a mark the archive has not reached is refused, and writes nothing.
    let target = common::unique("mark-dst");
    let refused = run(common::restore_command(&archive).args([
        "--to-mark",
        "second",
        "--rename",
        &format!("{topic}={target}"),
    ]));
    assert!(!refused.status.success());
    assert!(
        common::error_line(&refused).contains("mark second is not archived yet"),
        "{}",
        common::text(&refused.stderr)
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    writing.store(false, Ordering::Relaxed);
    producer.await.unwrap();
    ok(run(common::sink_command(
        &archive,
        &topic,
        &common::unique("g"),
    )
    .arg("--once")
    .env("REWIND__SINK__MAX_FILE_RECORDS", "7")));
    assert_eq!(mark_status(&archive, "second"), "complete");
    // `--wait` on a complete mark returns at once; a name is taken once.
    let again = run(common::mark_command(&archive).args(["second"]));
    assert_eq!(again.status.code(), Some(2));
    assert!(common::error_line(&again).contains("already exists"));

    let source: Vec<Vec<Record>> = (0..PARTITIONS)
        .map(|p| {
            kafka::read_to_end(&topic, p)
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        })
        .collect();
    let ends = |cut: &[(i64, i64)]| cut.iter().map(|c| c.0).collect::<Vec<_>>();
    let zero = vec![0; PARTITIONS as usize];
    // Records past the second mark exist in the archive: the restore must stop at the mark.
    for p in 0..PARTITIONS as usize {
        assert!(source[p].last().unwrap().offset >= second_cut[p].0);
    }

    ok(run(common::restore_command(&archive).args([
        "--to-mark",
        "second",
        "--rename",
        &format!("{topic}={target}"),
    ])));
    same_content(
        &restored(&target),
        &expected(&source, &zero, &ends(&second_cut)),
    );

    // Between the two marks.
    let between = common::unique("mark-mid");
    ok(run(common::restore_command(&archive).args([
        "--from-mark",
        "first",
        "--to-mark",
        "second",
        "--rename",
        &format!("{topic}={between}"),
    ])));
    same_content(
        &restored(&between),
        &expected(&source, &ends(&first_cut), &ends(&second_cut)),
    );
}

#[tokio::test]
async fn marks_and_restores_at_marks_refuse_bad_input_in_one_sentence() {
    common::no_instance_metadata();
    let topic = common::unique("mark-bad");
    kafka::create_topic(&topic, 1, &[]).await;
    kafka::produce(&topic, 0, &[rec(0, 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    // No archive yet.
    let none = run(common::mark_command(&archive).arg("m"));
    assert_eq!(
        none.status.code(),
        Some(2),
        "{}",
        common::text(&none.stderr)
    );
    assert!(common::error_line(&none).contains("no Rewind archive"));
    ok(run(common::sink_command(
        &archive,
        &topic,
        &common::unique("g"),
    )
    .arg("--once")));
    for (args, says) in [
        (vec!["a/b"], "may only hold letters"),
        (
            vec!["m", "--topics", "no-such-topic-at-all"],
            "no topic of the cluster matches",
        ),
        (
            vec!["m", "--topics", "("],
            "--topics \"(\" is not a valid regular expression: unclosed group",
        ),
    ] {
        let out = run(common::mark_command(&archive).args(&args));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            common::text(&out.stderr)
        );
        assert!(
            common::error_line(&out).contains(says),
            "{args:?}: {}",
            common::text(&out.stderr)
        );
    }
    ok(run(
        common::mark_command(&archive).args(["m", "--topics", &topic, "--wait", "30s"])
    ));
    for (args, code, says) in [
        (vec!["--to-mark", "nope"], 1, "no mark named \"nope\""),
        (
            vec!["--to-mark", "m", "--to", "now"],
            2,
            "--to-mark cannot be combined with --to",
        ),
        (
            vec!["--to-mark", "m", "--follow"],
            2,
            "--follow keeps restoring new records",
        ),
        (
            vec!["--to-mark", "m", "--strict"],
            2,
            "--strict cuts by the records' own timestamps",
        ),
        (vec!["--to-mark", "a/b"], 2, "is not a mark name"),
    ] {
        let out = run(common::restore_command(&archive).args(&args));
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            common::text(&out.stderr)
        );
        assert!(
            common::error_line(&out).contains(says),
            "{args:?}: {}",
            common::text(&out.stderr)
        );
    }
}

/// Move the broker's log start of `topic`/0 to `offset` (DeleteRecords).
async fn delete_records(topic: &str, offset: i64) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = kafka::config().create().unwrap();
    let mut cut = rdkafka::TopicPartitionList::new();
    cut.add_partition_offset(topic, 0, rdkafka::Offset::Offset(offset))
        .unwrap();
    admin
        .delete_records(&cut, &AdminOptions::new())
        .await
        .unwrap();
}

fn retention(archive: &str, args: &[&str]) -> Value {
    let mut cmd = common::tool_command("retention", archive);
    cmd.args(["--older-than", "7d", "--json"]).args(args);
    serde_json::from_str(&ok(run(&mut cmd))).unwrap()
}

#[tokio::test]
async fn retention_keeps_what_a_kept_mark_needs_says_what_it_costs_and_expires_the_rest() {
    common::no_instance_metadata();
    let topic = common::unique("mark-ret");
    kafka::create_topic(&topic, 1, &[]).await;
    // Thirty records from forty days ago, archived in files of five.
    let old = common::now_ms() - 40 * 86_400_000;
    let first: Vec<Record> = (0..30)
        .map(|i| Record {
            timestamp: Some(old + i as i64),
            ..rec(0, i)
        })
        .collect();
    let first = kafka::produce(&topic, 0, &first).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    let sink = || {
        ok(run(common::sink_command(
            &archive,
            &topic,
            &common::unique("g"),
        )
        .arg("--once")
        .env("REWIND__SINK__MAX_FILE_RECORDS", "5")));
    };
    sink();
    // Kafka's own retention moves on: a mark records where the log began then.
    delete_records(&topic, 10).await;
    ok(run(
        common::mark_command(&archive).args(["keep-me", "--topics", &topic])
    ));
    delete_records(&topic, 20).await;
    ok(run(
        common::mark_command(&archive).args(["daily-1", "--topics", &topic])
    ));
    let recent = kafka::produce(&topic, 0, &(30..40).map(|i| rec(0, i)).collect::<Vec<_>>()).await;
    sink();

    // With no rule, both marks are kept; the older log start decides: files [0, 10) go, the four
    // old files from 10 stay, counted for keep-me.
    let plan = retention(&archive, &["--dry-run"]);
    let deleted: Vec<&str> = plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(deleted.len(), 2, "{plan}");
    let kept = plan["kept_marks"].as_array().unwrap();
    assert_eq!(kept.len(), 2, "{plan}");
    assert_eq!(kept[0]["name"], "keep-me");
    assert_eq!(kept[0]["files_held"], 4, "{plan}");
    assert_eq!(kept[0]["rule"], Value::Null);
    assert_eq!(kept[1]["files_held"], 0, "{plan}");

    // A rule that expires daily marks at once: daily-1 goes, keep-me (no rule matches) stays.
    let done = retention(&archive, &["--keep-marks", "daily-.*=1ms"]);
    assert_eq!(
        done["expired_marks"],
        serde_json::json!(["daily-1"]),
        "{done}"
    );
    assert_eq!(done["files"].as_array().unwrap().len(), 2, "{done}");
    assert_eq!(done["kept_marks"][0]["restorable_in_full"], true, "{done}");
    assert!(
        done["documents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "_marks/daily-1.json"),
        "{done}"
    );
    assert_eq!(mark_status(&archive, "keep-me"), "complete");
    let ls: Value =
        serde_json::from_str(&ok(run(common::tool_command("ls", &archive).arg("--json")))).unwrap();
    assert_eq!(ls["marks"].as_array().unwrap().len(), 1, "{ls}");
    assert_eq!(ls["topics"][0]["partitions"][0]["start"], 10, "{ls}");
    ok(run(common::tool_command("verify", &archive).arg("--deep")));

    // A restore to the kept mark still gives every record the cluster held at it.
    let target = common::unique("mark-ret-dst");
    ok(run(common::restore_command(&archive).args([
        "--to-mark",
        "keep-me",
        "--rename",
        &format!("{topic}={target}"),
    ])));
    let got: Vec<Vec<Record>> = vec![kafka::read_to_end(&target, 0)
        .into_iter()
        .map(|(r, _)| r)
        .collect()];
    let want: Vec<Record> = first.iter().filter(|r| r.offset >= 10).cloned().collect();
    assert_eq!(content(&got[0]), content(&want));
    assert!(recent.iter().all(|r| r.offset >= 30));

    // A rule that keeps keep-me for a year holds the same; one that expires it lets the files go.
    let year = retention(&archive, &["--dry-run", "--keep-marks", "keep-.*=365d"]);
    assert_eq!(year["kept_marks"][0]["rule"], "keep-.*=365d", "{year}");
    assert!(year["files"].as_array().unwrap().is_empty(), "{year}");
    // Deleted by hand: gone from the inventory; a second delete says there is none.
    ok(run(
        common::mark_command(&archive).args(["keep-me", "--delete"])
    ));
    let twice = run(common::mark_command(&archive).args(["keep-me", "--delete"]));
    assert_eq!(twice.status.code(), Some(1));
    assert!(common::error_line(&twice).contains("no mark named"));
    ok(run(
        common::mark_command(&archive).args(["keep-me", "--topics", &topic])
    ));
    let gone = retention(&archive, &["--keep-marks", "keep-.*=1ms"]);
    assert_eq!(
        gone["expired_marks"],
        serde_json::json!(["keep-me"]),
        "{gone}"
    );
    assert_eq!(gone["files"].as_array().unwrap().len(), 4, "{gone}");
    let bad = run(common::tool_command("retention", &archive).args([
        "--older-than",
        "7d",
        "--keep-marks",
        "daily",
    ]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(common::error_line(&bad).contains("is not PATTERN=AGE"));
}

#[tokio::test]
async fn a_mark_of_a_topic_deleted_and_created_again_is_refused() {
    common::no_instance_metadata();
    let topic = common::unique("mark-again");
    kafka::create_topic(&topic, 1, &[]).await;
    kafka::produce(&topic, 0, &(0..20).map(|i| rec(0, i)).collect::<Vec<_>>()).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    ok(run(common::sink_command(
        &archive,
        &topic,
        &common::unique("g"),
    )
    .arg("--once")));
    {
        use rdkafka::admin::{AdminClient, AdminOptions};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = kafka::config().create().unwrap();
        admin
            .delete_topics(&[&topic], &AdminOptions::new())
            .await
            .unwrap();
    }
    // The broker forgets a deleted topic asynchronously: create it again until it takes.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = kafka::config().create().unwrap();
        let created = admin
            .create_topics(
                &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        if created[0].is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{created:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    kafka::produce(&topic, 0, &(0..5).map(|i| rec(0, i)).collect::<Vec<_>>()).await;
    let out = run(common::mark_command(&archive).args(["again", "--topics", &topic]));
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stderr));
    assert!(
        common::error_line(&out).contains("deleted and created again"),
        "{}",
        common::text(&out.stderr)
    );
}
