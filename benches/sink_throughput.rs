//! End-to-end sink throughput against the test bed's real broker and S3 server, side by side with a
//! plain rdkafka consumer reading the same data. Prints a table.
//!
//!   scripts/bench                                  # builds in release, starts the test bed, runs this
//!   cargo bench --bench sink_throughput -- --mib 512
//!
//! For each value size (100 B and 1 KiB) it produces `--mib` MiB of values into a fresh topic of
//! 8 partitions, then runs, one after the other and each as its own process: (a) a plain rdkafka
//! consumer that reads every record and discards it, (b) `rewind sink --once` into a local archive,
//! (c) `rewind sink --once` into S3. For every run: records/s, MB/s of values, the ratio to (a), CPU
//! seconds per GB and peak RSS, read from /proc (CPU from the exited process before it is reaped).
//! Then the memory case: 1,000 partitions archived under a 64 MiB buffer budget, whose peak RSS
//! should stay within the budget plus 64 MiB. Then small transactions: `--tx-records` records of
//! 100 B committed one per partition per transaction (a commit marker after every record) against
//! the same count of plain records, both archived by `rewind sink --once` into a local archive
//! (target: the transactional topic at 0.8 of the plain rate or better).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use support::{measure, produce};

const PARTITIONS: i32 = 8;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--raw-consume") {
        raw_consume(&args[i + 1], args[i + 2].parse().unwrap());
        return;
    }
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let mib = arg("--mib", 256);
    let wide_mib = arg("--wide-mib", 128);
    let tx_records = arg("--tx-records", 8_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    common::no_instance_metadata();

    let mut table = Vec::new();
    // `--tx-only`: just the small-transactions comparison.
    let sizes: &[usize] = if args.iter().any(|a| a == "--tx-only") {
        &[]
    } else {
        &[100, 1024]
    };
    for &value_size in sizes {
        let count = mib * 1024 * 1024 / value_size as u64;
        let topic = common::unique(&format!("bench-{value_size}"));
        rt.block_on(common::kafka::create_topic(&topic, PARTITIONS, &[]));
        eprintln!(
            "producing {count} records of {value_size} B into {topic} ({PARTITIONS} partitions)"
        );
        let took = produce(&topic, PARTITIONS, count, value_size);
        eprintln!(
            "  produced in {:.1}s ({:.0} records/s)",
            took.as_secs_f64(),
            count as f64 / took.as_secs_f64()
        );
        let value_bytes = count * value_size as u64;

        let raw = measure(
            format!("raw rdkafka consumer, {value_size} B"),
            Command::new(std::env::current_exe().unwrap()).args([
                "--raw-consume",
                &topic,
                &count.to_string(),
            ]),
            count,
            value_bytes,
        );
        let dir = tempfile::tempdir().unwrap();
        let local = measure(
            format!("rewind sink → local, {value_size} B"),
            &mut sink(&format!("file://{}/archive", dir.path().display()), &topic),
            count,
            value_bytes,
        );
        drop(dir);
        let bucket = rt.block_on(common::new_bucket());
        let s3 = measure(
            format!("rewind sink → S3, {value_size} B"),
            &mut sink(&format!("s3://{bucket}/archive"), &topic),
            count,
            value_bytes,
        );
        let raw_rate = raw.records_per_s();
        table.push((raw, raw_rate));
        table.push((local, raw_rate));
        table.push((s3, raw_rate));
    }

    // Many partitions under a small budget: memory must stay flat.
    let mut wide_rss = 0;
    if !sizes.is_empty() {
        let topic = common::unique("bench-wide");
        let wide_partitions = 1000;
        rt.block_on(common::kafka::create_topic(&topic, wide_partitions, &[]));
        let count = wide_mib * 1024 * 1024 / 1024;
        eprintln!("producing {count} records of 1 KiB into {topic} ({wide_partitions} partitions)");
        produce(&topic, wide_partitions, count, 1024);
        let dir = tempfile::tempdir().unwrap();
        let wide = measure(
            format!("rewind sink → local, 1 KiB, {wide_partitions} partitions, 64 MiB budget"),
            sink(&format!("file://{}/archive", dir.path().display()), &topic)
                .env("REWIND__SINK__BUFFER_BUDGET", "64MiB"),
            count,
            count * 1024,
        );
        wide_rss = wide.peak_rss;
        let raw_rate = wide.records_per_s();
        table.push((wide, raw_rate));
    }

    // Small transactions against plain records of the same size and count.
    let plain_topic = common::unique("bench-plain");
    let tx_topic = common::unique("bench-tx");
    rt.block_on(common::kafka::create_topic(&plain_topic, PARTITIONS, &[]));
    rt.block_on(common::kafka::create_topic(&tx_topic, PARTITIONS, &[]));
    eprintln!("producing {tx_records} records of 100 B, plain and one per transaction");
    produce(&plain_topic, PARTITIONS, tx_records, 100);
    produce_transactions(&tx_topic, PARTITIONS, tx_records, 100);
    // The plain consumer on both topics first: what reading transactional data costs librdkafka.
    for (what, topic) in [("plain", &plain_topic), ("one per transaction", &tx_topic)] {
        let raw = measure(
            format!("raw rdkafka consumer, 100 B, {what}"),
            Command::new(std::env::current_exe().unwrap()).args([
                "--raw-consume",
                topic,
                &tx_records.to_string(),
            ]),
            tx_records,
            tx_records * 100,
        );
        let rate = raw.records_per_s();
        table.push((raw, rate));
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = measure(
        "rewind sink → local, 100 B, plain records".to_string(),
        &mut sink(
            &format!("file://{}/plain", dir.path().display()),
            &plain_topic,
        ),
        tx_records,
        tx_records * 100,
    );
    let tx = measure(
        "rewind sink → local, 100 B, one record per transaction".to_string(),
        &mut sink(&format!("file://{}/tx", dir.path().display()), &tx_topic),
        tx_records,
        tx_records * 100,
    );
    let plain_rate = plain.records_per_s();
    let tx_ratio = tx.records_per_s() / plain_rate;
    table.push((plain, plain_rate));
    table.push((tx, plain_rate));

    println!();
    println!("| run | records | records/s | MB/s | ratio to raw | CPU s/GB | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (run, raw_rate) in &table {
        let ratio = if run.what.contains("1000 partitions") {
            "–".to_string()
        } else {
            format!("{:.2}", run.records_per_s() / raw_rate)
        };
        println!(
            "| {} | {} | {:.0} | {:.1} | {} | {:.2} | {:.0} |",
            run.what,
            run.records,
            run.records_per_s(),
            run.mb_per_s(),
            ratio,
            run.cpu_s / (run.value_bytes as f64 / 1e9),
            run.peak_rss as f64 / 1048576.0
        );
    }
    println!();
    println!(
        "one record per transaction: {tx_ratio:.2} of the plain rate (target ≥ 0.8: {}); the ratio column of the last two rows is to the plain run",
        if tx_ratio >= 0.8 { "met" } else { "NOT met" }
    );
    if sizes.is_empty() {
        return;
    }
    println!(
        "1,000 partitions, 64 MiB budget: peak RSS {:.0} MiB (target ≤ 128 MiB: {})",
        wide_rss as f64 / 1048576.0,
        if wide_rss <= 128 * 1048576 {
            "met"
        } else {
            "NOT met"
        }
    );
}

/// `rewind sink --once` of one topic into `archive`, with a fresh group.
fn sink(archive: &str, topic: &str) -> Command {
    let mut cmd = common::sink_command(archive, topic, &common::unique("bench-sink"));
    cmd.arg("--once");
    cmd
}

/// The baseline: a plain consumer that reads `count` records of every partition and discards them.
fn raw_consume(topic: &str, count: u64) {
    let consumer: BaseConsumer = common::kafka::config()
        .set("group.id", common::unique("bench-raw"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        // The same prefetch tuning the sink applies, so the two differ only in what they do with
        // the records.
        .set("fetch.queue.backoff.ms", "20")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut n, mut bytes) = (0u64, 0usize);
    while n < count {
        if let Some(msg) = consumer.poll(Duration::from_secs(10)) {
            let msg = msg.unwrap();
            bytes += msg.payload().map_or(0, <[u8]>::len) + msg.key().map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    println!("consumed {n} records ({bytes} bytes)");
}

/// Produce `count` records like [`produce`], but each partition's records one per transaction: a
/// transactional producer sends one record to every partition and commits, so every record is
/// followed by a commit marker in its partition (what Kafka Streams, Flink and Debezium
/// exactly-once sinks leave behind when they commit often).
pub fn produce_transactions(topic: &str, partitions: i32, count: u64, size: usize) -> Duration {
    use rdkafka::producer::Producer;
    let producer: rdkafka::producer::BaseProducer = common::kafka::config()
        .set("transactional.id", common::unique("bench-tx"))
        .set("linger.ms", "0")
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    let mut values = support::Values::new(size);
    let started = std::time::Instant::now();
    let mut i = 0;
    while i < count {
        producer.begin_transaction().unwrap();
        for p in 0..partitions {
            if i == count {
                break;
            }
            let key = format!("key-{i}");
            support::send(
                &producer,
                rdkafka::producer::BaseRecord::to(topic)
                    .partition(p)
                    .key(key.as_bytes())
                    .payload(values.next_value()),
            );
            i += 1;
        }
        producer
            .commit_transaction(Duration::from_secs(30))
            .unwrap();
    }
    started.elapsed()
}
