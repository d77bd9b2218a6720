//! The encode path: records → Parquet bytes of one data file (format v1: zstd, statistics, page
//! index, key bloom filter), single-threaded, so the throughput criterion prints is MB/s per core.
//!
//!   cargo bench --bench encode

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rewind::archive::datafile::{encode, file_meta};
use rewind::archive::{Header, Record, TimestampType};

/// `count` records with `size`-byte values of printable text from 64 symbols (about as compressible
/// as JSON payloads with ids), a key and one header each.
fn records(count: usize, size: usize) -> Vec<Record> {
    const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|i| {
            let value = (0..size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    SYMBOLS[(x & 63) as usize]
                })
                .collect();
            Record {
                offset: i as i64,
                timestamp: Some(1_795_428_900_000 + i as i64),
                timestamp_type: Some(TimestampType::Create),
                key: Some(format!("key-{i}").into_bytes()),
                value: Some(value),
                headers: vec![Header {
                    key: "trace".into(),
                    value: Some(i.to_le_bytes().to_vec()),
                }],
            }
        })
        .collect()
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.sample_size(20);
    for (size, count) in [(100usize, 100_000usize), (1024, 20_000)] {
        let recs = records(count, size);
        // Throughput counts the records' own bytes: key, value and headers.
        let bytes: u64 = recs
            .iter()
            .map(|r| {
                let headers: usize = r
                    .headers
                    .iter()
                    .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len))
                    .sum();
                (r.key.as_ref().map_or(0, Vec::len)
                    + r.value.as_ref().map_or(0, Vec::len)
                    + headers) as u64
            })
            .sum();
        let meta = file_meta("bench", 0, 0, count as i64, &recs, "cluster", 0);
        group.throughput(Throughput::Bytes(bytes));
        let file = encode(&meta, &recs).unwrap().len();
        eprintln!(
            "{size}-byte values: {bytes} record bytes encode to {file} bytes ({:.0} %)",
            file as f64 * 100.0 / bytes as f64
        );
        group.bench_with_input(BenchmarkId::new("value_bytes", size), &recs, |b, recs| {
            b.iter(|| encode(&meta, recs).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
