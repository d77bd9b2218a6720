//! The chaos test's producer: seeded records to every partition until told to stop, plain batches
//! and single-record transactions (committed or aborted, so commit and abort markers leave holes in
//! the offsets), with timestamps that straddle whole hours (just before, just after, and some hours
//! late) on a clock that sweeps through past hours, so files rotate on buckets all the time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rewind::archive::time::HourBucket;
use rewind::archive::{Header, Record, TimestampType};

use crate::common;

/// What was produced, per partition.
#[derive(Debug, Default, Clone)]
pub struct Produced {
    /// Records a `read_committed` consumer must see (plain and committed).
    pub visible: Vec<u64>,
    /// Of those, records of committed transactions.
    pub committed: Vec<u64>,
    /// Records of aborted transactions.
    pub aborted: Vec<u64>,
    /// The latest whole hour the timestamps straddled.
    pub last_boundary: i64,
}

impl Produced {
    pub fn total(&self) -> (u64, u64, u64) {
        (
            self.visible.iter().sum(),
            self.committed.iter().sum(),
            self.aborted.iter().sum(),
        )
    }
}

/// The header that tells what kind of record this is; aborted records carry `abort`.
pub const KIND: &str = "chaos-kind";

fn to_kafka<'a>(topic: &'a str, partition: i32, r: &'a Record) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new();
    for h in &r.headers {
        headers = headers.insert(KafkaHeader {
            key: &h.key,
            value: h.value.as_deref(),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
        .partition(partition)
        .headers(headers);
    if let Some(ts) = r.timestamp {
        record = record.timestamp(ts);
    }
    if let Some(k) = &r.key {
        record = record.key(k.as_slice());
    }
    if let Some(v) = &r.value {
        record = record.payload(v.as_slice());
    }
    record
}

fn bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let mut b = vec![0; rng.random_range(0..=max)];
    rng.fill_bytes(&mut b);
    b
}

/// Record number `n`, of `kind`, stamped around the whole hour `boundary`.
fn chaos_record(rng: &mut StdRng, boundary: i64, n: u64, kind: &str) -> Record {
    const HOUR: i64 = 3_600_000;
    let timestamp = if rng.random_ratio(1, 10) {
        // Late: hours before the boundary; it stays in the open file.
        boundary - rng.random_range(HOUR..5 * HOUR)
    } else if n.is_multiple_of(2) {
        boundary - rng.random_range(1..=2_000)
    } else {
        boundary + rng.random_range(0..2_000)
    };
    let key = match rng.random_range(0..10) {
        0 => None,
        1 => Some(Vec::new()),
        2 => Some(bytes(rng, 40)),
        _ => Some(format!("key-{n}").into_bytes()),
    };
    let value = match rng.random_range(0..20) {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(bytes(rng, 400)),
    };
    let mut headers = vec![Header {
        key: KIND.into(),
        value: Some(kind.as_bytes().to_vec()),
    }];
    for _ in 0..rng.random_range(0..3) {
        // Repeated keys and null values must survive in order.
        let key = ["a", "b", "a"][rng.random_range(0..3)];
        let value = (!rng.random_ratio(1, 5)).then(|| bytes(rng, 16));
        headers.push(Header {
            key: key.into(),
            value,
        });
    }
    Record {
        offset: -1,
        timestamp: Some(timestamp),
        timestamp_type: Some(TimestampType::Create),
        key,
        value,
        headers,
    }
}

/// Produce to `partitions` partitions of `topic` until `stop` is set.
pub async fn run(topic: String, partitions: i32, seed: u64, stop: Arc<AtomicBool>) -> Produced {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00c0_ffee);
    let plain: FutureProducer = common::kafka::config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let txn: FutureProducer = common::kafka::config()
        .set("transactional.id", common::unique("chaos-tx"))
        .create()
        .unwrap();
    let timeout = Duration::from_secs(30);
    tokio::task::block_in_place(|| txn.init_transactions(timeout)).unwrap();
    let mut produced = Produced {
        visible: vec![0; partitions as usize],
        committed: vec![0; partitions as usize],
        aborted: vec![0; partitions as usize],
        last_boundary: 0,
    };
    // A clock that sweeps through the hours of the last months, never into the future.
    let now_hour = HourBucket::of_millis(common::now_ms()).0;
    let mut hour = now_hour - 24 * 120;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if rng.random_ratio(1, 12) && hour < now_hour - 2 {
            hour += 1;
        }
        let boundary = HourBucket(hour).start_millis();
        produced.last_boundary = boundary;
        let p = rng.random_range(0..partitions);
        if rng.random_ratio(3, 4) {
            let len = rng.random_range(1..=6);
            let batch: Vec<Record> = (0..len)
                .map(|_| {
                    n += 1;
                    chaos_record(&mut rng, boundary, n, "plain")
                })
                .collect();
            let pending: Vec<_> = batch
                .iter()
                .map(|r| {
                    plain
                        .send_result(to_kafka(&topic, p, r))
                        .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"))
                })
                .collect();
            for delivery in pending {
                delivery
                    .await
                    .expect("delivery future")
                    .unwrap_or_else(|(e, _)| panic!("produce to {topic}/{p}: {e}"));
            }
            produced.visible[p as usize] += len;
        } else {
            let commit = rng.random_bool(0.6);
            n += 1;
            let kind = if commit { "commit" } else { "abort" };
            let r = chaos_record(&mut rng, boundary, n, kind);
            tokio::task::block_in_place(|| txn.begin_transaction()).unwrap();
            txn.send(to_kafka(&topic, p, &r), timeout)
                .await
                .unwrap_or_else(|(e, _)| panic!("produce a transaction to {topic}/{p}: {e}"));
            tokio::task::block_in_place(|| {
                if commit {
                    txn.commit_transaction(timeout)
                } else {
                    txn.abort_transaction(timeout)
                }
            })
            .unwrap_or_else(|e| panic!("end a transaction on {topic}/{p}: {e}"));
            if commit {
                produced.visible[p as usize] += 1;
                produced.committed[p as usize] += 1;
            } else {
                produced.aborted[p as usize] += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
    produced
}
