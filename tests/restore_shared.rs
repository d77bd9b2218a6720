//! A restore shared by several `rewind restore --shared` processes on the test bed's real broker:
//! they split its partitions through a consumer group, and a worker that dies or stalls mid-
//! transaction is taken over with no record twice and none missing. The oracle is the source
//! topic, read back `read_committed` from the target byte for byte.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::kafka::{self, record};
use common::watched::Watched;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rewind::archive::Record;

const PARTITIONS: i32 = 6;
const PER_PARTITION: i64 = 4_000;

/// A topic of `PARTITIONS` partitions of `PER_PARTITION` records of 100 bytes, archived with
/// `rewind sink --once` into a local archive; returns the topic, the archive and its records.
async fn archived(prefix: &str) -> (String, String, tempfile::TempDir, Vec<Vec<Record>>) {
    let topic = common::unique(prefix);
    kafka::create_topic(&topic, PARTITIONS, &[]).await;
    let t0 = common::now_ms() - 3_600_000;
    for p in 0..PARTITIONS {
        let records: Vec<Record> = (0..PER_PARTITION)
            .map(|i| {
                record(
                    Some(format!("k{p}-{i}").as_bytes()),
                    Some(&[b'a' + (i % 26) as u8; 100]),
                    vec![],
                    t0 + i,
                )
            })
            .collect();
        kafka::produce(&topic, p, &records).await;
    }
    let (archive, dir, source) = common::archive_once(&topic, PARTITIONS, 1000);
    (topic, archive, dir, source)
}

/// One worker of the shared restore `id` of `topic` into `target`: small transactions, one
/// partition read at a time, so that the restore lasts long enough to share.
fn worker(archive: &str, topic: &str, target: &str, id: &str, name: &str) -> Command {
    let mut cmd = common::restore_command(archive);
    cmd.args(["--topics", topic, "--rename", &format!("{topic}={target}")])
        .args([
            "--restore-id",
            id,
            "--shared",
            "--worker-id",
            name,
            "--json",
        ])
        .env("REWIND__RESTORE__TRANSACTION_MAX_BYTES", "16KiB")
        .env("REWIND__RESTORE__CONCURRENCY", "1")
        .env("RUST_LOG", "rewind=debug,librdkafka=error");
    cmd
}

/// The records a finished worker says it restored (its `--json` summary).
fn restored_by(out: &Output) -> u64 {
    assert!(
        out.status.success(),
        "worker failed ({}): {}{}",
        out.status,
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(common::text(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", common::text(&out.stdout)));
    summary["records"].as_u64().unwrap()
}

/// Offsets (records committed or not, and transaction markers) in the target so far (0 before it
/// exists).
fn landed(target: &str) -> i64 {
    thread_local! {
        // read_uncommitted: the high watermark, not the last stable offset.
        static PROBE: BaseConsumer = kafka::config()
            .set("isolation.level", "read_uncommitted")
            .create()
            .unwrap();
    }
    PROBE.with(|probe| {
        (0..PARTITIONS)
            .map(
                |p| match probe.fetch_watermarks(target, p, Duration::from_secs(2)) {
                    Ok((_, high)) => high,
                    Err(e) => {
                        eprintln!("watermarks of {target}/{p}: {e}");
                        0
                    }
                },
            )
            .sum()
    })
}

/// Every partition of `target` holds exactly its source's records, in order, byte for byte.
fn assert_restored(target: &str, source: &[Vec<Record>]) {
    for (p, expected) in source.iter().enumerate() {
        let got = kafka::read_to_end(target, p as i32);
        assert_eq!(
            got.len(),
            expected.len(),
            "{target}/{p}: {} records restored, {} expected",
            got.len(),
            expected.len()
        );
        for (i, ((r, _), e)) in got.iter().zip(expected).enumerate() {
            assert_eq!(
                (&r.key, &r.value),
                (&e.key, &e.value),
                "{target}/{p} record {i}"
            );
        }
    }
}

/// Three workers: the first is killed (SIGKILL) in its first transaction that holds records,
/// after everything in it was delivered and its progress written, while it owns every partition;
/// the two others, started while it hangs there, split the partitions, wait for its transaction
/// to be aborted, and restore everything exactly once between them.
#[tokio::test]
async fn workers_share_a_restore_and_take_over_one_killed_mid_transaction() {
    let (topic, archive, _dir, source) = archived("shared-kill").await;
    let target = format!("{topic}-copy");
    let id = common::unique("shared");
    let total = (PARTITIONS as i64 * PER_PARTITION) as u64;

    // The first worker alone owns every partition when it hangs in its first transaction that
    // holds records, its progress written and its offsets sent, and keeps its place in the group
    // (librdkafka heartbeats from its own threads).
    let mut first = worker(&archive, &topic, &target, &id, "w1");
    first
        .env("REWIND_FAILPOINT", "restore-before-commit")
        // Short, so that the broker aborts the hung worker's transaction soon.
        .args(["-X", "transaction.timeout.ms=10000"]);
    let mut first = Watched::start(&mut first);
    assert!(
        first.wait_for(
            "failpoint restore-before-commit reached",
            Duration::from_secs(60)
        ),
        "the first worker never reached its first commit: {}",
        first.stderr()
    );
    assert!(landed(&target) > 0, "the first worker delivered records");

    // Two more workers set up (their reads of the progress wait until the broker aborts the hung
    // transaction) and join the group, whose rebalance waits for the hung worker; it is killed
    // once both are in, so that the group gives them its partitions together.
    let mut others: Vec<Watched> = ["w2", "w3"]
        .iter()
        .map(|name| Watched::start(&mut worker(&archive, &topic, &target, &id, name)))
        .collect();
    for other in &mut others {
        assert!(
            other.wait_for("joined the shared restore's group", Duration::from_secs(60)),
            "{}",
            other.stderr()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    first.kill();

    let outs: Vec<Output> = others.into_iter().map(Watched::finish).collect();
    let counts: Vec<u64> = outs.iter().map(restored_by).collect();
    // The killed worker committed no record: the two others restored all of them, each a part.
    assert_eq!(counts.iter().sum::<u64>(), total, "{counts:?}");
    assert!(
        counts.iter().all(|c| *c > 0),
        "both workers restored some partitions: {counts:?}"
    );
    assert_restored(&target, &source);
    // The aborted records of the killed worker take offsets, never places among the records.
    assert!(landed(&target) > total as i64);

    // The same id without --shared is another restore's command, and is refused (a usage error).
    let out = common::restore_command(&archive)
        .args(["--topics", &topic, "--rename", &format!("{topic}={target}")])
        .args(["--restore-id", &id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::error_line(&out).contains("--shared"),
        "{}",
        common::error_line(&out)
    );
}

/// A worker whose set-up is fenced by another's (it fenced, then the other did before it committed
/// the plan) tries again: the restore is exact, and the expected race
/// shows no librdkafka fatal error on the operator's screen (before, the fenced set-up printed five
/// ERROR lines saying the instance had been fenced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_up_fenced_by_another_worker_tries_again_without_alarming_errors() {
    let (topic, archive, _dir, source) = archived("shared-fenced").await;
    let target = format!("{topic}-copy");
    let id = common::unique("fenced");
    let mut first = worker(&archive, &topic, &target, &id, "f1");
    first
        .env("REWIND_FAILPOINT", "restore-stall-after-fence")
        .env("REWIND_FAILPOINT_STALL_MS", "6000");
    let mut first = Watched::start(&mut first);
    assert!(
        first.wait_for(
            "failpoint restore-stall-after-fence reached",
            Duration::from_secs(60)
        ),
        "{}",
        first.stderr()
    );
    // The second fences the first within those 6 s (it starts now; planning and asking the
    // cluster take about a second), then waits twice as long: the first commits its plan with a
    // fenced producer, sets up again and commits it before the second wakes.
    let second = Watched::start(
        worker(&archive, &topic, &target, &id, "f2")
            .env("REWIND_FAILPOINT", "restore-stall-after-fence")
            .env("REWIND_FAILPOINT_STALL_MS", "12000"),
    );
    let outs = [first.finish(), second.finish()];
    let counts: Vec<u64> = outs.iter().map(restored_by).collect();
    assert_eq!(
        counts.iter().sum::<u64>(),
        (PARTITIONS as i64 * PER_PARTITION) as u64,
        "{counts:?}"
    );
    assert_restored(&target, &source);
    let first_log = common::text(&outs[0].stderr);
    assert!(
        first_log.contains("setting up again"),
        "the first worker's set-up was fenced: {first_log}"
    );
    for out in &outs {
        let log = common::text(&out.stderr);
        assert!(
            !log.lines()
                .any(|l| l.contains("ERROR") && l.to_lowercase().contains("fenc")),
            "{log}"
        );
    }
}

/// Two plain (not shared) runs of one restore id: the second fences the first while the first's
/// transaction holds records. The first exits 1 and its error says that its producer was fenced
/// and by what (librdkafka's own lines about the fence are debug lines, and the failure the first
/// meets is a purged queue that does not say it); the second restores every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_fenced_by_another_run_of_its_restore_says_so() {
    let (topic, archive, _dir, source) = archived("plain-fenced").await;
    let target = format!("{topic}-copy");
    let id = common::unique("plain-fenced");
    let run = || {
        let mut cmd = common::restore_command(&archive);
        cmd.args(["--topics", &topic, "--rename", &format!("{topic}={target}")])
            .args(["--restore-id", &id])
            .env("REWIND__RESTORE__TRANSACTION_MAX_BYTES", "64MiB");
        cmd
    };
    let mut first = run();
    first
        .env("REWIND_FAILPOINT", "restore-stall-before-progress")
        .env("REWIND_FAILPOINT_STALL_MS", "10000");
    let mut first = Watched::start(&mut first);
    assert!(
        first.wait_for(
            "failpoint restore-stall-before-progress reached",
            Duration::from_secs(60)
        ),
        "{}",
        first.stderr()
    );
    let second = run().output().unwrap();
    assert!(second.status.success(), "{}", common::text(&second.stderr));
    let out = first.finish();
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stderr));
    assert!(
        common::error_line(&out).contains("transactional producer was fenced"),
        "{}",
        common::text(&out.stderr)
    );
    assert_restored(&target, &source);
}

/// A worker frozen (SIGSTOP) with a transaction open that holds records, long enough for the group
/// to give its partitions to another, then let go before that transaction times out: the group
/// coordinator refuses its commit (the generation that gave it the partitions is gone), so
/// nothing it wrote becomes visible, and the other worker's restore is exact. Without the
/// generation check it would commit every record a second time.
#[tokio::test]
async fn a_stalled_worker_that_lost_its_partitions_cannot_commit() {
    let (topic, archive, _dir, source) = archived("shared-stall").await;
    let target = format!("{topic}-copy");
    let id = common::unique("stall");
    let total = (PARTITIONS as i64 * PER_PARTITION) as u64;

    let mut stalled = worker(&archive, &topic, &target, &id, "slow");
    stalled
        // Long enough to outlive the stall, so that only the group can stop its commit; one
        // transaction holds everything.
        .args(["-X", "transaction.timeout.ms=120000"])
        .env("REWIND__RESTORE__TRANSACTION_MAX_BYTES", "64MiB")
        .env("REWIND__RESTORE__TRANSACTION_INTERVAL", "60s")
        .env("REWIND_FAILPOINT", "restore-stall-before-progress")
        .env("REWIND_FAILPOINT_STALL_MS", "3000");
    let mut stalled = Watched::start(&mut stalled);
    let pid = stalled.pid();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    assert!(
        stalled.wait_for(
            "failpoint restore-stall-before-progress reached",
            Duration::from_secs(60)
        ),
        "the worker never held a transaction of records: {}",
        stalled.stderr()
    );
    signal("-STOP");
    assert_eq!(
        landed(&target),
        total as i64,
        "the frozen transaction holds every record"
    );
    // Its session (10 s) expires; the other worker gets every partition and restores them from
    // the committed progress, which the frozen transaction has not touched.
    let other = Watched::start(&mut worker(&archive, &topic, &target, &id, "fast"));
    let deadline = Instant::now() + Duration::from_secs(90);
    while landed(&target) < 2 * total as i64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let wrote = landed(&target) - total as i64;
    signal("-CONT");
    assert!(
        wrote >= total as i64,
        "the other worker wrote {wrote} of {total} records"
    );
    let out = stalled.finish();
    let log = common::text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the stalled worker cannot commit: {log}"
    );
    assert!(
        log.contains("refused by the shared restore's group"),
        "{log}"
    );
    assert_eq!(restored_by(&other.finish()), total);
    assert_restored(&target, &source);
}

/// `--shared` needs a named restore, and is refused with what it cannot do yet.
#[test]
fn shared_needs_an_id_and_refuses_what_it_cannot_share() {
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    for (args, says) in [
        (vec!["--shared"], "--restore-id"),
        (
            vec!["--shared", "--restore-id", "r1", "--follow"],
            "--shared cannot be combined with --follow",
        ),
        (
            vec!["--shared", "--restore-id", "r1", "--repartition-by-key"],
            "--shared cannot be combined with --repartition-by-key",
        ),
        (vec!["--worker-id", "w1"], "--shared"),
        (
            vec!["--shared", "--restore-id", "r1", "--worker-id", "a b"],
            "--worker-id \"a b\" may only hold",
        ),
    ] {
        let out = common::restore_command(&archive)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = common::text(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
