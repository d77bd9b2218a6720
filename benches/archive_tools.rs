//! Archive tools benchmark (no Kafka needed): on a generated archive of at least 1 GiB (8
//! partitions of 32 MiB files of 1 KiB records, the shape a busy sink writes), the time and bytes
//! of a key look-up by `rewind find` versus DuckDB's `SELECT … WHERE key = …` over the same files,
//! in one run; and `rewind verify` (metadata mode) throughput in files/s, on that archive and on
//! one of many small files; `rewind tables sync` on 20,000 files; and `rewind compact` on six hours
//! of one-minute files, with DuckDB's one-hour aggregate before and after.
//!
//!   cargo bench --bench archive_tools -- [--mib N]      (scripts/bench --only tools)

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/archive.rs"]
mod generated;

use std::process::Command;
use std::time::Instant;

use generated::{bench_dir, duckdb_python, flag, generate, hours_and_files, key, walk};
use rand::{Rng, RngCore, SeedableRng};
use rewind::archive::time::HourBucket;
use serde_json::Value;

const TOPIC: &str = "bench.orders";
const VALUE_BYTES: usize = 1024;

/// Values of `bytes` random bytes.
fn random(bytes: usize) -> impl Fn(&mut rand::rngs::StdRng, i32, u64) -> Vec<u8> {
    move |rng, _, _| {
        let mut v = vec![0u8; bytes];
        rng.fill_bytes(&mut v);
        v
    }
}

fn rewind(args: &[&str]) -> (f64, std::process::Output) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "rewind {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, out)
}

const DUCKDB: &str = r#"
import time
started = time.perf_counter()
import duckdb, json, sys
root, key, runs = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
def rchar():
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"): return int(line.split()[1])
con = duckdb.connect()
ready = time.perf_counter() - started
best, rows, read = None, None, None
first = None
for _ in range(runs):
    r0, t0 = rchar(), time.perf_counter()
    rows = con.execute(
        "SELECT \"offset\", key, value FROM read_parquet(?, hive_partitioning = true) WHERE key = ?",
        [root + "/data/topic=bench.orders/**/*.parquet", key]).fetchall()
    t = time.perf_counter() - t0
    if first is None: first, first_read = t, rchar() - r0
    if best is None or t < best: best, read = t, rchar() - r0
print(json.dumps({"version": duckdb.__version__, "seconds": best, "rows": len(rows), "bytes_read": read,
                  "first_seconds": first, "first_bytes_read": first_read, "process_seconds": ready + first}))
"#;

/// A one-hour aggregate by DuckDB over `data/**` of two archives, alternating between them
/// (`runs` each): median seconds and bytes read (rchar) per archive.
const DUCKDB_HOUR: &str = r#"
import duckdb, json, statistics, sys, time
a, b, date, hour, runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def rchar():
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"): return int(line.split()[1])
out = {}
for _ in range(runs):
    for name, root in (("before", a), ("after", b)):
        con = duckdb.connect()
        r0, t0 = rchar(), time.perf_counter()
        rows, total = con.execute(
            "SELECT count(*), sum(octet_length(value)) FROM read_parquet(?, hive_partitioning = true) "
            "WHERE date = ? AND hour = ?",
            [root + "/data/topic=bench.orders/**/*.parquet", date, hour]).fetchone()
        t = time.perf_counter() - t0
        o = out.setdefault(name, {"seconds": [], "bytes_read": [], "rows": rows})
        o["seconds"].append(t); o["bytes_read"].append(rchar() - r0)
        con.close()
for o in out.values():
    o["seconds"] = statistics.median(o["seconds"]); o["bytes_read"] = statistics.median(o["bytes_read"])
print(json.dumps(out))
"#;

fn main() {
    let mib: u64 = flag("--mib", 1024);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let dir = bench_dir(&temp);
    let root = dir.join(format!("big-{mib}"));
    // 8 partitions of 32 MiB files of 1 KiB values.
    let per_file = (32 << 20) / VALUE_BYTES as u64;
    let files = (mib / 32).div_ceil(8).max(1);
    eprintln!(
        "generating {} MiB: 8 partitions x {files} files x {per_file} records",
        8 * files * 32
    );
    let t = Instant::now();
    if !root.join("_archive.json").exists() {
        runtime.block_on(generate(
            &root,
            TOPIC,
            (8, files, per_file),
            &random(VALUE_BYTES),
            None,
        ));
    }
    eprintln!("generated in {:.1}s", t.elapsed().as_secs_f64());
    let archive = format!("file://{}", root.display());
    let size: u64 = walk(&root.join("data"));

    let python = duckdb_python();
    // A key in one partition, in the middle of its history.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let p = rng.random_range(0..8);
    let i = rng.random_range(0..files * per_file);
    let wanted = String::from_utf8(key(p, i)).unwrap();
    let runs = 3;
    let mut find_best = f64::MAX;
    let mut stats = Value::Null;
    for _ in 0..runs {
        let (secs, out) = rewind(&[
            "find",
            "--archive",
            &archive,
            "--topic",
            TOPIC,
            "--key",
            &wanted,
            "--stats",
        ]);
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        assert_eq!(lines, 1, "find returns the one record");
        if secs < find_best {
            find_best = secs;
            stats = serde_json::from_str::<Value>(
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap(),
            )
            .unwrap()["stats"]
                .clone();
        }
    }
    let out = Command::new(&python)
        .args([
            "-c",
            DUCKDB,
            root.to_str().unwrap(),
            &wanted,
            &runs.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duck: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(duck["rows"], 1, "DuckDB finds the one record");
    let duck_s = duck["seconds"].as_f64().unwrap();

    // verify, metadata mode: on the big archive, and on one of 4,000 small files.
    let (verify_big, _) = rewind(&["verify", "--archive", &archive]);
    let big_files = 8 * files;
    let small = dir.join("small");
    if !small.join("_archive.json").exists() {
        runtime.block_on(generate(&small, TOPIC, (40, 100, 100), &random(100), None));
    }
    let (verify_small, _) = rewind(&[
        "verify",
        "--archive",
        &format!("file://{}", small.display()),
    ]);
    let (deep_big, _) = rewind(&["verify", "--deep", "--archive", &archive]);

    // tables sync: the first (every file's footer read, one manifest written) and one with
    // nothing new, on an archive of 20,000 small files (40 partitions), with peak RSS.
    let tables = dir.join("tables");
    if !tables.join("_archive.json").exists() {
        runtime.block_on(generate(&tables, TOPIC, (40, 500, 10), &random(100), None));
    }
    let _ = std::fs::remove_dir_all(tables.join("_tables"));
    let tables_url = format!("file://{}", tables.display());
    let timed = |what: &str| -> (f64, Option<u64>) {
        let out = Command::new("/usr/bin/time")
            .args([
                "-f",
                "%e %M",
                env!("CARGO_BIN_EXE_rewind"),
                "tables",
                "sync",
                "--archive",
            ])
            .arg(&tables_url)
            .env("RUST_LOG", "warn")
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let err = String::from_utf8_lossy(&out.stderr);
                let mut last = err.lines().last().unwrap_or("").split_whitespace();
                let secs = last.next().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
                (secs, last.next().and_then(|k| k.parse::<u64>().ok()))
            }
            // No GNU time: the time alone.
            _ => {
                let (secs, _) = rewind(&["tables", "sync", "--archive", &tables_url]);
                eprintln!("{what}: /usr/bin/time unavailable, no peak RSS");
                (secs, None)
            }
        }
    };
    let (sync_first, rss_first) = timed("first sync");
    let (sync_idle, rss_idle) = timed("idle sync");

    // Compaction: 4 partitions x 6 hours of one file a minute (100 records of 1 KiB each), copied
    // aside, then compacted; DuckDB's one-hour aggregate on both, alternating.
    let minutes = dir.join("minutes");
    let _ = std::fs::remove_dir_all(&minutes);
    runtime.block_on(generate(
        &minutes,
        TOPIC,
        (4, 360, 100),
        &random(1000),
        None,
    ));
    let before_dir = dir.join("minutes-before");
    let _ = std::fs::remove_dir_all(&before_dir);
    assert!(Command::new("cp")
        .args(["-a"])
        .arg(&minutes)
        .arg(&before_dir)
        .status()
        .unwrap()
        .success());
    let minutes_url = format!("file://{}", minutes.display());
    let folders = |root: &std::path::Path| hours_and_files(root, TOPIC);
    let (hours_before, files_before) = folders(&minutes);
    let compact = Command::new("/usr/bin/time")
        .args([
            "-f",
            "%e %U %S %M",
            env!("CARGO_BIN_EXE_rewind"),
            "compact",
            "--json",
            "--archive",
        ])
        .arg(&minutes_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        compact.status.success(),
        "{}",
        String::from_utf8_lossy(&compact.stderr)
    );
    let err = String::from_utf8_lossy(&compact.stderr);
    let t: Vec<f64> = err
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let (hours_after, files_after) = folders(&minutes);
    let minutes_bytes = walk(&before_dir.join("data"));
    // The third hour of partition 0's history (closed, full).
    let hour =
        HourBucket::of_millis((common::now_ms() / 3_600_000 - 48) * 3_600_000 + 2 * 3_600_000);
    let out = Command::new(&python)
        .args(["-c", DUCKDB_HOUR])
        .arg(&before_dir)
        .arg(&minutes)
        .args([hour.date(), hour.hour(), "5".into()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hourly: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hourly["before"]["rows"], hourly["after"]["rows"]);

    let mib_of = |b: f64| b / (1 << 20) as f64;
    println!();
    println!(
        "compaction of {:.0} MiB (4 partitions x 6 hours x 60 files of 100 records):",
        mib_of(minutes_bytes as f64)
    );
    println!("| | files per partition-hour | DuckDB one-hour aggregate (median of 5, alternating) | bytes read |");
    println!("|---|---:|---:|---:|");
    for (name, files, hours) in [
        ("before", files_before, hours_before),
        ("after", files_after, hours_after),
    ] {
        println!(
            "| {name} | {:.0} | {:.1} ms | {:.2} MiB |",
            files as f64 / hours as f64,
            hourly[name]["seconds"].as_f64().unwrap() * 1e3,
            mib_of(hourly[name]["bytes_read"].as_f64().unwrap())
        );
    }
    if let [wall, user, sys, rss] = t[..] {
        println!(
            "rewind compact: {wall:.2} s, {:.1} CPU s per GB, peak RSS {:.0} MiB",
            (user + sys) / (minutes_bytes as f64 / 1e9),
            rss / 1024.0
        );
    }
    println!();
    println!(
        "key look-up in a {:.0} MiB archive ({} files of ~32 MiB, 8 partitions), best of {runs}:",
        mib_of(size as f64),
        big_files
    );
    let find_query = stats["seconds"].as_f64().unwrap();
    let duck_process = duck["process_seconds"].as_f64().unwrap();
    println!("| tool | look-up | whole process | bytes read | files read |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| rewind find --key | {:.1} ms | {:.1} ms | {:.2} MiB ({:.2} % of the archive) | {} of {} |",
        find_query * 1e3,
        find_best * 1e3,
        mib_of(stats["bytes_read"].as_f64().unwrap()),
        100.0 * stats["bytes_read"].as_f64().unwrap() / size as f64,
        stats["files_scanned"],
        stats["files_total"]
    );
    let duck_first = duck["first_seconds"].as_f64().unwrap();
    println!(
        "| DuckDB {} `WHERE key = …`, first query of a connection | {:.1} ms | {:.1} ms | {:.2} MiB (rchar) | |",
        duck["version"].as_str().unwrap(),
        duck_first * 1e3,
        duck_process * 1e3,
        mib_of(duck["first_bytes_read"].as_f64().unwrap())
    );
    println!(
        "| DuckDB, best of {runs} queries on one connection (its caches warm) | {:.1} ms | | | |",
        duck_s * 1e3,
    );
    println!(
        "| DuckDB / find | {:.1}x (first), {:.1}x (best) | {:.1}x | | |",
        duck_first / find_query,
        duck_s / find_query,
        duck_process / find_best
    );
    println!();
    println!("| verify | files | time | files/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| metadata, {:.0} MiB archive | {} | {:.2} s | {:.0} |",
        mib_of(size as f64),
        big_files,
        verify_big,
        big_files as f64 / verify_big
    );
    println!(
        "| metadata, 4,000 small files | 4000 | {:.2} s | {:.0} |",
        verify_small,
        4000.0 / verify_small
    );
    println!(
        "| --deep, {:.0} MiB archive | {} | {:.2} s | {:.0} MiB/s |",
        mib_of(size as f64),
        big_files,
        deep_big,
        mib_of(size as f64) / deep_big
    );
    let rss =
        |kib: Option<u64>| kib.map_or("n/a".to_string(), |k| format!("{:.0}", k as f64 / 1024.0));
    println!();
    println!("| tables sync, 20,000 small files, 40 partitions | time | files/s | peak RSS MiB |");
    println!("|---|---:|---:|---:|");
    println!(
        "| first (every footer read, all files added) | {sync_first:.2} s | {:.0} | {} |",
        20000.0 / sync_first,
        rss(rss_first)
    );
    println!(
        "| nothing new (chains and manifests read, no commit) | {sync_idle:.2} s | | {} |",
        rss(rss_idle)
    );
}
