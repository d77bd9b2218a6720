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
//! The three take turns `--repeat` times (default 3) and the table gives the median run of each
//! (by records/s) with the range. Then many partitions: the same bytes of 1 KiB records over 8 and
//! over 1,000 partitions (and 10,000 with `--huge`), each archived under a 64 MiB buffer budget,
//! taking turns likewise: the wide rate against the 8-partition rate, peak RSS against the budget,
//! and files written per minute with their mean size. Then small transactions: `--tx-records` records of
//! 100 B committed one per partition per transaction (a commit marker after every record) against
//! the same count of plain records, both archived by `rewind sink --once` into a local archive
//! (target: the transactional topic at 0.8 of the plain rate or better).
//!
//! `REWIND_BENCH_BASELINE=/path/to/rewind` adds another build (an earlier commit's, say) to the
//! turns, archiving to a local archive like (b), so that a change is measured side by side.

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
    let repeat = arg("--repeat", 3).max(1) as usize;
    // Another build of `rewind` (an earlier commit's, say) that takes turns with this one on the
    // local archive, so that a change is measured side by side in one run.
    let baseline = std::env::var("REWIND_BENCH_BASELINE").ok();
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

        // The kinds take turns, so that the broker's drift falls on all of them alike.
        let (mut raws, mut locals, mut s3s) = (Vec::new(), Vec::new(), Vec::new());
        let mut baselines = Vec::new();
        for round in 0..repeat {
            eprintln!("round {} of {repeat}", round + 1);
            raws.push(measure(
                format!("raw rdkafka consumer, {value_size} B"),
                Command::new(std::env::current_exe().unwrap()).args([
                    "--raw-consume",
                    &topic,
                    &count.to_string(),
                ]),
                count,
                value_bytes,
            ));
            let dir = tempfile::tempdir().unwrap();
            locals.push(measure(
                format!("rewind sink → local, {value_size} B"),
                &mut sink(&format!("file://{}/archive", dir.path().display()), &topic),
                count,
                value_bytes,
            ));
            drop(dir);
            if let Some(bin) = &baseline {
                let dir = tempfile::tempdir().unwrap();
                let archive = format!("file://{}/archive", dir.path().display());
                baselines.push(measure(
                    format!("baseline build → local, {value_size} B"),
                    &mut with_program(bin, &sink(&archive, &topic)),
                    count,
                    value_bytes,
                ));
            }
            let bucket = rt.block_on(common::new_bucket());
            s3s.push(measure(
                format!("rewind sink → S3, {value_size} B"),
                &mut sink(&format!("s3://{bucket}/archive"), &topic),
                count,
                value_bytes,
            ));
        }
        let raw = Median::of(raws);
        let raw_rate = raw.run.records_per_s();
        table.push((raw, raw_rate));
        table.push((Median::of(locals), raw_rate));
        if !baselines.is_empty() {
            table.push((Median::of(baselines), raw_rate));
        }
        table.push((Median::of(s3s), raw_rate));
    }

    // Many partitions under a small budget: the rate should stay near the 8-partition rate and
    // memory flat.
    let mut wide = Vec::new();
    if !sizes.is_empty() {
        let count = wide_mib * 1024 * 1024 / 1024;
        let mut widths = vec![PARTITIONS, 1000];
        if args.iter().any(|a| a == "--huge") {
            widths.push(10_000);
        }
        let topics: Vec<String> = widths
            .iter()
            .map(|&partitions| {
                let topic = common::unique(&format!("bench-wide-{partitions}"));
                rt.block_on(common::kafka::create_topic(&topic, partitions, &[]));
                eprintln!(
                    "producing {count} records of 1 KiB into {topic} ({partitions} partitions)"
                );
                produce(&topic, partitions, count, 1024);
                topic
            })
            .collect();
        let mut runs: Vec<Vec<(support::Run, u64, u64)>> =
            widths.iter().map(|_| Vec::new()).collect();
        for round in 0..repeat {
            eprintln!("round {} of {repeat}", round + 1);
            for (i, (&partitions, topic)) in widths.iter().zip(&topics).enumerate() {
                let dir = tempfile::tempdir().unwrap();
                let run = measure(
                    format!("rewind sink → local, 1 KiB, {partitions} partitions, 64 MiB budget"),
                    sink(&format!("file://{}/archive", dir.path().display()), topic)
                        .env("REWIND__SINK__BUFFER_BUDGET", "64MiB"),
                    count,
                    count * 1024,
                );
                let (files, bytes) = data_files(&dir.path().join("archive/data"));
                runs[i].push((run, files, bytes));
            }
        }
        for (&partitions, runs) in widths.iter().zip(runs) {
            wide.push((partitions, Median::of_files(runs)));
        }
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
        table.push((Median::of(vec![raw]), rate));
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
    table.push((Median::of(vec![plain]), plain_rate));
    table.push((Median::of(vec![tx]), plain_rate));

    println!();
    println!("median of {repeat} alternating runs each (range of records/s in brackets); the ratio is to the raw consumer, for the transaction rows to the plain sink");
    println!();
    println!("| run | records | records/s (range) | MB/s | ratio | CPU s/GB | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (median, base_rate) in &table {
        let run = &median.run;
        println!(
            "| {} | {} | {:.0} ({:.0}–{:.0}) | {:.1} | {:.2} | {:.2} | {:.0} |",
            run.what,
            run.records,
            run.records_per_s(),
            median.low,
            median.high,
            run.mb_per_s(),
            run.records_per_s() / base_rate,
            run.cpu_s / (run.value_bytes as f64 / 1e9),
            median.peak_rss as f64 / 1048576.0
        );
    }
    println!();
    println!(
        "one record per transaction: {tx_ratio:.2} of the plain rate (target ≥ 0.8: {})",
        if tx_ratio >= 0.8 { "met" } else { "NOT met" }
    );
    if wide.is_empty() {
        return;
    }
    println!();
    let narrow = wide[0].1 .0.run.records_per_s();
    println!("| partitions (1 KiB, 64 MiB budget) | records | records/s (range) | ratio to 8 | CPU s/GB | files | mean file KiB | files per minute | peak RSS MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (partitions, (median, files, bytes)) in &wide {
        let run = &median.run;
        println!(
            "| {partitions} | {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.2} | {files} | {:.0} | {:.0} | {:.0} |",
            run.records,
            run.records_per_s(),
            median.low,
            median.high,
            run.records_per_s() / narrow,
            run.cpu_s / (run.value_bytes as f64 / 1e9),
            *bytes as f64 / (*files).max(1) as f64 / 1024.0,
            *files as f64 / (median.run.wall.as_secs_f64() / 60.0),
            median.peak_rss as f64 / 1048576.0
        );
    }
    for (partitions, (median, _, _)) in &wide[1..] {
        let ratio = median.run.records_per_s() / narrow;
        let rss_mib = median.peak_rss as f64 / 1048576.0;
        let limit = if *partitions > 1000 { 192.0 } else { 128.0 };
        println!(
            "{partitions} partitions: {ratio:.2} of the 8-partition rate (target ≥ 0.5: {}), peak RSS {rss_mib:.0} MiB (target ≤ {limit:.0}: {})",
            if ratio >= 0.5 { "met" } else { "NOT met" },
            if rss_mib <= limit { "met" } else { "NOT met" }
        );
    }
}

/// The median run of several (by records/s), with the range of records/s and the highest peak RSS.
struct Median {
    run: support::Run,
    low: f64,
    high: f64,
    peak_rss: u64,
}

impl Median {
    fn of(mut runs: Vec<support::Run>) -> Median {
        runs.sort_by(|a, b| a.records_per_s().total_cmp(&b.records_per_s()));
        let low = runs[0].records_per_s();
        let high = runs[runs.len() - 1].records_per_s();
        let peak_rss = runs.iter().map(|r| r.peak_rss).max().unwrap_or(0);
        let run = runs.swap_remove(runs.len() / 2);
        Median {
            run,
            low,
            high,
            peak_rss,
        }
    }

    /// [`Median::of`] runs that wrote `(files, bytes)`, with the median run's files.
    fn of_files(mut runs: Vec<(support::Run, u64, u64)>) -> (Median, u64, u64) {
        runs.sort_by(|a, b| a.0.records_per_s().total_cmp(&b.0.records_per_s()));
        let (_, files, bytes) = runs[runs.len() / 2];
        let median = Median::of(runs.into_iter().map(|(run, _, _)| run).collect());
        (median, files, bytes)
    }
}

/// Data files under `dir` and their total size.
fn data_files(dir: &std::path::Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            let (f, b) = data_files(&path);
            files += f;
            bytes += b;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            files += 1;
            bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    (files, bytes)
}

/// `rewind sink --once` of one topic into `archive`, with a fresh group.
fn sink(archive: &str, topic: &str) -> Command {
    let mut cmd = common::sink_command(archive, topic, &common::unique("bench-sink"));
    cmd.arg("--once");
    // Without the consumer-group snapshot a snapshot takes at its end: it asks every group of the
    // cluster with a client of its own, which on the shared test broker (thousands of groups left
    // by tests) costs seconds that have nothing to do with the records (see docs/benchmarks.md).
    cmd.env("REWIND__SINK__GROUP_SNAPSHOT_INTERVAL", "0s");
    cmd
}

/// `cmd` with another program: the same arguments and environment.
fn with_program(program: &str, cmd: &Command) -> Command {
    let mut other = Command::new(program);
    other.args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => other.env(key, value),
            None => other.env_remove(key),
        };
    }
    other
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
