//! End-to-end restore throughput against the test bed's real broker and S3 server, side by side with
//! a plain rdkafka producer sending the same records from memory. Prints a table.
//!
//!   scripts/bench                                     # builds in release, starts the test bed
//!   cargo bench --bench restore_throughput -- --mib 256 [--repeat 3]
//!
//! For each value size (100 B and 1 KiB) it produces `--mib` MiB of values into a topic of 8
//! partitions and archives it (`rewind sink --once`) into a local directory and into S3. Then, one
//! after the other and each as its own process: (a) a plain idempotent rdkafka producer that first
//! generates the same keys and values in memory and then sends them into a fresh topic (only the
//! sending is timed), (b) `rewind restore` of the whole archive from the local directory into a
//! new topic, (c) the same from S3, (d) the restore from the local archive with two transactional
//! producers that commit in turn (`restore.producers = 2`). They take turns
//! `--repeat` times (each run into a fresh topic, deleted after it), each round followed by (e) the
//! restore from S3 shared by 2 and by 3 workers (`--shared`, each its own process; wall time until
//! the last exits, CPU summed, the highest peak RSS of one worker; `--no-shared` leaves them out). For each kind: the median records/s with its range, MB/s of values, the
//! ratio of medians to (a), CPU seconds per GB and the highest peak RSS.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::util::Timeout;
use support::{fast_producer, measure, measure_all, produce, send, Run, Values};

const PARTITIONS: i32 = 8;

/// Workers of the shared restores measured beside the single process.
const WORKERS: [usize; 2] = [2, 3];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--raw-produce") {
        raw_produce(
            &args[i + 1],
            args[i + 2].parse().unwrap(),
            args[i + 3].parse().unwrap(),
        );
        return;
    }
    let mib = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<u64>().expect("a number"))
        .unwrap_or(256);
    let rt = tokio::runtime::Runtime::new().unwrap();
    common::no_instance_metadata();

    let repeat = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<usize>().expect("a number"))
        .unwrap_or(3)
        .max(1);
    // `--no-shared` leaves the shared restores out (a quicker run of the single-process rows).
    let workers: &[usize] = if args.iter().any(|a| a == "--no-shared") {
        &[]
    } else {
        &WORKERS
    };

    // Rows of the table: every run of one kind, in order.
    let mut rows: Vec<Vec<Run>> = Vec::new();
    for value_size in [100usize, 1024] {
        let count = mib * 1024 * 1024 / value_size as u64;
        let topic = common::unique(&format!("bench-restore-{value_size}"));
        rt.block_on(common::kafka::create_topic(&topic, PARTITIONS, &[]));
        eprintln!("producing {count} records of {value_size} B into {topic}");
        produce(&topic, PARTITIONS, count, value_size);
        let dir = tempfile::tempdir().unwrap();
        let local = format!("file://{}/archive", dir.path().display());
        let bucket = rt.block_on(common::new_bucket());
        let s3 = format!("s3://{bucket}/archive");
        for archive in [&local, &s3] {
            eprintln!("archiving into {archive}");
            let out = common::sink_command(archive, &topic, &common::unique("bench-sink"))
                .arg("--once")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        rt.block_on(delete_topic(&topic));
        let value_bytes = count * value_size as u64;

        // The three kinds take turns, `repeat` times, so that the broker's drift (its disk and
        // page cache filling) falls on all of them alike; every run writes into a fresh topic that
        // is deleted right after it.
        let first = rows.len();
        rows.extend((0..4 + workers.len()).map(|_| Vec::new()));
        for round in 0..repeat {
            eprintln!("round {} of {repeat}", round + 1);
            let raw_topic = format!("{topic}-raw-{round}");
            rt.block_on(common::kafka::create_topic(&raw_topic, PARTITIONS, &[]));
            rows[first].push(measure(
                format!("raw rdkafka producer, {value_size} B"),
                Command::new(std::env::current_exe().unwrap()).args([
                    "--raw-produce",
                    &raw_topic,
                    &count.to_string(),
                    &value_size.to_string(),
                ]),
                count,
                value_bytes,
            ));
            rt.block_on(delete_topic(&raw_topic));
            for (row, (name, archive)) in [("local", &local), ("S3", &s3)].into_iter().enumerate() {
                let target = format!("{topic}-from-{}-{round}", name.to_lowercase());
                rows[first + 1 + row].push(measure(
                    format!("rewind restore ← {name}, {value_size} B"),
                    &mut restore(archive, &topic, &target),
                    count,
                    value_bytes,
                ));
                rt.block_on(delete_topic(&target));
            }
            // The same restore from the local archive with two transactional producers that commit
            // in turn (`restore.producers = 2`), beside the default one.
            let target = format!("{topic}-two-producers-{round}");
            rows[first + 3].push(measure(
                format!("rewind restore ← local, two producers, {value_size} B"),
                restore(&local, &topic, &target).env("REWIND__RESTORE__PRODUCERS", "2"),
                count,
                value_bytes,
            ));
            rt.block_on(delete_topic(&target));
            // One restore from S3 shared by several workers (`--shared`), each its own process.
            for (row, &workers) in workers.iter().enumerate() {
                let target = format!("{topic}-shared-{workers}-{round}");
                let id = common::unique("bench-shared");
                let mut cmds: Vec<Command> = (0..workers)
                    .map(|w| {
                        let mut cmd = restore(&s3, &topic, &target);
                        cmd.args(["--restore-id", &id, "--shared"])
                            .args(["--worker-id", &format!("w{w}")]);
                        cmd
                    })
                    .collect();
                rows[first + 4 + row].push(measure_all(
                    format!("rewind restore ← S3, {workers} workers, {value_size} B"),
                    cmds.iter_mut().collect(),
                    count,
                    value_bytes,
                ));
                rt.block_on(delete_topic(&target));
            }
        }
        drop(dir);
    }

    println!();
    println!("median of {repeat} alternating runs each (range of records/s in brackets)");
    println!();
    println!("| run | records | records/s | MB/s | ratio to raw | CPU s/GB | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut raw_rate = 0.0;
    for runs in &rows {
        let rate = median(runs.iter().map(Run::records_per_s));
        if runs[0].what.starts_with("raw") {
            raw_rate = rate;
        }
        let (low, high) = runs
            .iter()
            .map(Run::records_per_s)
            .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
        let run = &runs[0];
        println!(
            "| {} | {} | {:.0} ({:.0}–{:.0}) | {:.1} | {:.2} | {:.2} | {:.0} |",
            run.what,
            run.records,
            rate,
            low,
            high,
            median(runs.iter().map(Run::mb_per_s)),
            rate / raw_rate,
            median(runs.iter().map(|r| r.cpu_s / (r.value_bytes as f64 / 1e9))),
            runs.iter().map(|r| r.peak_rss).max().unwrap_or(0) as f64 / 1048576.0
        );
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Delete a topic, so that runs do not pile their logs up on the broker's disk.
async fn delete_topic(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        common::kafka::config().create().unwrap();
    admin
        .delete_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
}

/// `rewind restore` of the whole archive of `topic` into `target`.
fn restore(archive: &str, topic: &str, target: &str) -> Command {
    let mut cmd = common::restore_command(archive);
    cmd.args([
        "--topics",
        &regex::escape(topic),
        "--rename",
        &format!("{topic}={target}"),
    ]);
    cmd
}

/// The baseline: generate `count` records in memory (keys `key-<i>`, the same values the archive
/// holds), then send them with a plain idempotent producer, round-robin over the partitions, and
/// report the time from creating the producer to the last acknowledgement.
fn raw_produce(topic: &str, count: u64, size: usize) {
    let mut values = Values::new(size);
    let mut data = Vec::with_capacity(count as usize * size);
    for _ in 0..count {
        data.extend_from_slice(values.next_value());
    }
    // Timed from the producer's creation: connecting is part of sending, for both sides.
    let started = Instant::now();
    let producer = fast_producer();
    for (i, value) in data.chunks(size).enumerate() {
        let key = format!("key-{i}");
        let record = BaseRecord::to(topic)
            .partition((i as u64 % PARTITIONS as u64) as i32)
            .key(key.as_bytes())
            .payload(value);
        send(&producer, record);
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Timeout::Never).unwrap();
    println!(
        "produced {count} records timed {:.3}s",
        started.elapsed().as_secs_f64()
    );
}
