//! Typed columns benchmark (no Kafka needed): the same JSON payments archived raw and with typed
//! columns (a declared JSON Schema), 4 partitions x 6 hours of one file a minute, then each
//! compacted. Measured side by side: the encoder's time with and without decoding (alternating
//! runs), and a one-hour aggregate over `amount` by DuckDB, decoding JSON in SQL on the raw archive
//! versus reading the typed column, before and after `rewind compact` (medians of alternating
//! runs: time and bytes read).
//!
//!   cargo bench --bench typed_columns -- [--runs N]      (scripts/bench --only typed)

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/archive.rs"]
mod generated;

use std::process::Command;
use std::sync::Arc;

use generated::{bench_dir, duckdb_python, flag, hours_and_files, walk};
use rand::rngs::StdRng;
use rand::Rng;
use rewind::archive::time::HourBucket;
use rewind::archive::typed::{Codec, Decoding, SchemaText, SideDecoding};
use serde_json::Value;

const TOPIC: &str = "bench.payments";
const SCHEMA: &str = r#"{"type":"object","properties":{
    "customer":{"type":"string"},"amount":{"type":"number"},"currency":{"type":"string"},
    "items":{"type":"integer"},"paid":{"type":"boolean"},"note":{"type":"string"}}}"#;
const SHAPE: (i32, u64, u64) = (4, 360, 100);

fn payment(rng: &mut StdRng, p: i32, offset: u64) -> Vec<u8> {
    let amount = rng.random_range(100..100_000) as f64 / 100.0;
    let note: String = (0..rng.random_range(80..240))
        .map(|_| char::from(rng.random_range(b'a'..=b'z')))
        .collect();
    format!(
        r#"{{"customer":"customer-{p}-{}","amount":{amount},"currency":"EUR","items":{},"paid":{},"note":"{note}"}}"#,
        offset % 5000,
        offset % 7,
        offset.is_multiple_of(3)
    )
    .into_bytes()
}

/// The one-hour aggregate over `amount` by DuckDB on each archive, alternating (`runs` each):
/// median seconds and bytes read (rchar), and the sum it found.
const DUCKDB: &str = r#"
import duckdb, json, statistics, sys, time
date, hour, runs, archives = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
def rchar():
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"): return int(line.split()[1])
sql = {
    "raw": "SELECT count(*), sum(CAST(json_extract_string(decode(value), '$.amount') AS DOUBLE)) "
           "FROM read_parquet(?, hive_partitioning = true) WHERE date = ? AND hour = ?",
    "typed": "SELECT count(*), sum(value_decoded.amount) "
             "FROM read_parquet(?, hive_partitioning = true) WHERE date = ? AND hour = ?",
}
out = {}
for _ in range(runs):
    for name, (kind, root) in archives.items():
        con = duckdb.connect()
        r0, t0 = rchar(), time.perf_counter()
        rows, total = con.execute(sql[kind], [root + "/data/topic=bench.payments/**/*.parquet", date, hour]).fetchone()
        t = time.perf_counter() - t0
        o = out.setdefault(name, {"seconds": [], "bytes_read": [], "rows": rows, "sum": total})
        o["seconds"].append(t); o["bytes_read"].append(rchar() - r0)
        con.close()
for o in out.values():
    o["seconds"] = statistics.median(o["seconds"]); o["bytes_read"] = statistics.median(o["bytes_read"])
print(json.dumps(out))
"#;

fn files_per_hour(root: &std::path::Path) -> f64 {
    let (hours, files) = hours_and_files(root, TOPIC);
    files as f64 / hours as f64
}

fn compact(root: &std::path::Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(["compact", "--json", "--archive"])
        .arg(format!("file://{}", root.display()))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

fn main() {
    let runs: usize = flag("--runs", 5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let dir = bench_dir(&temp);
    let decoding = Decoding {
        checked: Default::default(),
        key: None,
        value: Some(SideDecoding::Declared(Arc::new(
            Codec::parse(SchemaText {
                kind: "JSON".into(),
                schema: SCHEMA.into(),
                references: Vec::new(),
            })
            .unwrap(),
        ))),
    };
    let (raw, typed) = (dir.join("raw"), dir.join("typed"));
    // The encoder, alternating: the same records with and without typed columns.
    let (mut raw_s, mut typed_s) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (root, with, times) in [
            (&raw, None, &mut raw_s),
            (&typed, Some(&decoding), &mut typed_s),
        ] {
            let _ = std::fs::remove_dir_all(root);
            let (_, seconds) =
                runtime.block_on(generated::generate(root, TOPIC, SHAPE, &payment, with));
            times.push(seconds);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (raw_s, typed_s) = (median(&mut raw_s), median(&mut typed_s));
    let (raw_bytes, typed_bytes) = (walk(&raw.join("data")), walk(&typed.join("data")));
    let (raw_after, typed_after) = (dir.join("raw-compacted"), dir.join("typed-compacted"));
    copy(&raw, &raw_after);
    copy(&typed, &typed_after);
    compact(&raw_after);
    compact(&typed_after);

    let python = duckdb_python();
    // The third hour of the history (closed and full).
    let hour =
        HourBucket::of_millis((common::now_ms() / 3_600_000 - 48) * 3_600_000 + 2 * 3_600_000);
    let archives = serde_json::json!({
        "raw, minute files": ["raw", raw],
        "typed, minute files": ["typed", typed],
        "raw, compacted": ["raw", raw_after],
        "typed, compacted": ["typed", typed_after],
    });
    let out = Command::new(&python)
        .args(["-c", DUCKDB, &hour.date(), &hour.hour(), &runs.to_string()])
        .arg(archives.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sums: Vec<f64> = found
        .as_object()
        .unwrap()
        .values()
        .map(|o| o["sum"].as_f64().unwrap())
        .collect();
    assert!(
        sums.iter()
            .all(|s| (s - sums[0]).abs() < 1e-6 * sums[0].abs().max(1.0)),
        "every query sums the same amounts: {sums:?}"
    );

    let mib = |b: f64| b / (1 << 20) as f64;
    let records = (SHAPE.0 as u64 * SHAPE.1 * SHAPE.2) as f64;
    println!();
    println!(
        "typed columns: {} records of JSON payments ({:.1} MiB raw, {:.1} MiB with typed columns on disk)",
        records,
        mib(raw_bytes as f64),
        mib(typed_bytes as f64)
    );
    println!("| encoder (median of 3, alternating) | seconds | records/s |");
    println!("|---|---:|---:|");
    println!("| raw columns only | {raw_s:.2} | {:.0} |", records / raw_s);
    println!(
        "| raw + typed columns (JSON decoded) | {typed_s:.2} | {:.0} |",
        records / typed_s
    );
    println!();
    println!("| DuckDB one-hour `sum(amount)` (median of {runs}, alternating) | files per partition-hour | time | bytes read |");
    println!("|---|---:|---:|---:|");
    for (name, root) in [
        ("raw, minute files", &raw),
        ("typed, minute files", &typed),
        ("raw, compacted", &raw_after),
        ("typed, compacted", &typed_after),
    ] {
        let o = &found[name];
        println!(
            "| {name} | {:.0} | {:.1} ms | {:.2} MiB |",
            files_per_hour(root),
            o["seconds"].as_f64().unwrap() * 1e3,
            mib(o["bytes_read"].as_f64().unwrap())
        );
    }
}
