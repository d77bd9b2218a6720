//! End-to-end restore throughput against the test bed's real broker and S3 server, side by side with
//! a plain rdkafka producer sending the same records from memory. Prints a table.
//!
//!   scripts/bench                                     # builds in release, starts the test bed
//!   cargo bench --bench restore_throughput -- --mib 256
//!
//! For each value size (100 B and 1 KiB) it produces `--mib` MiB of values into a topic of 8
//! partitions and archives it (`rewind sink --once`) into a local directory and into S3. Then, one
//! after the other and each as its own process: (a) a plain idempotent rdkafka producer that first
//! generates the same keys and values in memory and then sends them into a fresh topic (only the
//! sending is timed), (b) `rewind restore` of the whole archive from the local directory into a
//! new topic, (c) the same from S3. For every run: records/s, MB/s of values, the ratio to (a), CPU
//! seconds per GB and peak RSS.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::util::Timeout;
use support::{fast_producer, measure, produce, send, Run, Values};

const PARTITIONS: i32 = 8;

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

    let mut table: Vec<(Run, f64)> = Vec::new();
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
        let value_bytes = count * value_size as u64;

        let raw_topic = format!("{topic}-raw");
        rt.block_on(common::kafka::create_topic(&raw_topic, PARTITIONS, &[]));
        let raw = measure(
            format!("raw rdkafka producer, {value_size} B"),
            Command::new(std::env::current_exe().unwrap()).args([
                "--raw-produce",
                &raw_topic,
                &count.to_string(),
                &value_size.to_string(),
            ]),
            count,
            value_bytes,
        );
        let raw_rate = raw.records_per_s();
        table.push((raw, raw_rate));
        for (name, archive) in [("local", &local), ("S3", &s3)] {
            let target = format!("{topic}-from-{}", name.to_lowercase());
            let run = measure(
                format!("rewind restore ← {name}, {value_size} B"),
                &mut restore(archive, &topic, &target),
                count,
                value_bytes,
            );
            table.push((run, raw_rate));
        }
        drop(dir);
    }

    println!();
    println!("| run | records | records/s | MB/s | ratio to raw | CPU s/GB | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (run, raw_rate) in &table {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.0} |",
            run.what,
            run.records,
            run.records_per_s(),
            run.mb_per_s(),
            run.records_per_s() / raw_rate,
            run.cpu_s / (run.value_bytes as f64 / 1e9),
            run.peak_rss as f64 / 1048576.0
        );
    }
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
