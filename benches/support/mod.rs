//! What the end-to-end benchmarks share: measuring a child process (wall time, CPU, peak RSS) and
//! producing a test topic full of generated records.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use super::common;

pub struct Run {
    pub what: String,
    pub records: u64,
    pub value_bytes: u64,
    pub wall: Duration,
    pub cpu_s: f64,
    pub peak_rss: u64,
}

impl Run {
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.wall.as_secs_f64()
    }
    pub fn mb_per_s(&self) -> f64 {
        self.value_bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }
}

/// Run a child to completion, sampling its peak RSS while it runs and its CPU time once it has
/// exited (a zombie's /proc/<pid>/stat still holds it). The child must report `expect` records.
pub fn measure(what: String, cmd: &mut Command, expect: u64, value_bytes: u64) -> Run {
    measure_all(what, vec![cmd], expect, value_bytes)
}

/// Run several children at once (the workers of one job) to completion: the wall time until the
/// last one exits, their CPU time summed, the highest peak RSS of any one of them, and the records
/// they report summed, which must be `expect`.
pub fn measure_all(what: String, cmds: Vec<&mut Command>, expect: u64, value_bytes: u64) -> Run {
    eprintln!("running: {what}");
    let started = Instant::now();
    let children: Vec<std::process::Child> = cmds
        .into_iter()
        .map(|cmd| {
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut peak_rss = 0;
    let mut cpu_s = 0.0;
    let mut running: Vec<u32> = children.iter().map(|c| c.id()).collect();
    while !running.is_empty() {
        running.retain(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // Fields after the parenthesised command name: state is the first, utime/stime
            // 12th/13th.
            let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
            if fields[0] == "Z" {
                let ticks: f64 =
                    fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
                cpu_s += ticks / 100.0;
                return false;
            }
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
                {
                    peak_rss = peak_rss.max(kb * 1024);
                }
            }
            true
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut wall = started.elapsed();
    let mut records = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // A baseline that prepares its data first reports the time of the measured part itself.
        if let Some(secs) = stdout
            .split_whitespace()
            .skip_while(|w| *w != "timed")
            .nth(1)
            .and_then(|s| s.trim_end_matches('s').parse::<f64>().ok())
        {
            wall = Duration::from_secs_f64(secs);
        }
        assert!(out.status.success(), "{what} failed: {stdout}");
        records += stdout
            .split_whitespace()
            .skip_while(|w| !["archived", "consumed", "restored", "produced"].contains(w))
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{what}: no record count in {stdout:?}"));
    }
    assert_eq!(records, expect, "{what}: every record");
    eprintln!(
        "  {:.1}s, {:.0} records/s, CPU {cpu_s:.1}s, peak RSS {} MiB",
        wall.as_secs_f64(),
        records as f64 / wall.as_secs_f64(),
        peak_rss / 1048576
    );
    Run {
        what,
        records,
        value_bytes,
        wall,
        cpu_s,
        peak_rss,
    }
}

/// Values of one size: printable text drawn from 64 symbols, about as compressible as typical JSON
/// payloads with ids. The same seed gives the same values, in every benchmark.
pub struct Values {
    x: u64,
    value: Vec<u8>,
}

impl Values {
    pub fn new(size: usize) -> Values {
        Values {
            x: 0x9E37_79B9_7F4A_7C15,
            value: vec![0u8; size],
        }
    }

    pub fn next_value(&mut self) -> &[u8] {
        const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for b in self.value.iter_mut() {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            *b = SYMBOLS[(self.x & 63) as usize];
        }
        &self.value
    }
}

/// A producer tuned for throughput, as both the data set up and the raw baseline use it.
pub fn fast_producer() -> BaseProducer {
    common::kafka::config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

/// Send one record, waiting while the producer's queue is full.
pub fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
}

/// Produce `count` records with keys `key-<i>` and [`Values`] of `size` bytes, round-robin over
/// the partitions.
pub fn produce(topic: &str, partitions: i32, count: u64, size: usize) -> Duration {
    let producer = fast_producer();
    let mut values = Values::new(size);
    let started = Instant::now();
    for i in 0..count {
        let key = format!("key-{i}");
        let record = BaseRecord::to(topic)
            .partition((i % partitions as u64) as i32)
            .key(key.as_bytes())
            .payload(values.next_value());
        send(&producer, record);
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Timeout::Never).unwrap();
    started.elapsed()
}
