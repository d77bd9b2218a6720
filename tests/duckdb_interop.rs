//! Interoperability: DuckDB (the Python package from PyPI, installed by `scripts/duckdb.sh`) reads
//! `data/**/*.parquet` of an archive with Hive partitioning and sees exactly the produced records:
//! counts per topic and partition, and the bytes of keys, values and headers; and the README's time
//! window query, run as the README prints it, finds records that arrived late into a later day's
//! folder, which a folder filter misses; and run on an S3 archive with the README's S3-compatible
//! secret, through the httpfs extension from PyPI (nothing downloaded from extensions.duckdb.org),
//! it returns exactly the archived records of the window.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::kafka::{create_topic, header, produce, record};
use rewind::sink;
use rewind::storage::{self, LocalStore, ObjectStore, StorageUrl};
use serde_json::{json, Value};

const QUERY: &str = r#"
import duckdb, json, sys
root, topic = sys.argv[1], sys.argv[2]
hexed = lambda b: None if b is None else b.hex()
rows = duckdb.connect().execute(
    "SELECT topic, partition, \"offset\", epoch_ms(timestamp), key, value, headers "
    "FROM read_parquet(?, hive_partitioning = true) WHERE topic = ? ORDER BY partition, \"offset\"",
    [root + "/data/**/*.parquet", topic],
).fetchall()
print(json.dumps([
    {"partition": int(p), "offset": o, "timestamp": ts, "key": hexed(k), "value": hexed(v),
     "headers": [[h["key"], hexed(h["value"])] for h in hs]}
    for (t, p, o, ts, k, v, hs) in rows
]))
"#;

fn python() -> String {
    common::venv_python("REWIND_TEST_PYTHON", "duckdb.sh")
}

use common::hex;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duckdb_reads_exactly_what_was_produced() {
    let topic = common::unique("duckdb.orders-v1");
    create_topic(&topic, 2, &[]).await;
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    let mut produced = Vec::new();
    for partition in 0..2 {
        let records: Vec<_> = (0..25)
            .map(|i| {
                let key: Option<Vec<u8>> = match i % 5 {
                    0 => None,
                    1 => Some(vec![0xff, 0x00, i as u8]),
                    _ => Some(format!("key-{i}").into_bytes()),
                };
                let value: Option<Vec<u8>> = if i % 7 == 3 {
                    None
                } else {
                    Some(vec![i as u8; 10 + i])
                };
                record(
                    key.as_deref(),
                    value.as_deref(),
                    vec![header("h", Some(b"1")), header("h", None)],
                    base + i as i64,
                )
            })
            .collect();
        produced.push((partition, produce(&topic, partition, &records).await));
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let store: Arc<dyn ObjectStore> = Arc::new(
        LocalStore::open(StorageUrl::parse(&format!("file://{}", root.display())).unwrap())
            .unwrap(),
    );
    let opts = common::once_sink_options(&topic, 10);
    let report = sink::run(common::kafka::config(), store, opts, std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.files, 6, "several files per partition");

    let out = Command::new(python())
        .args(["-c", QUERY, root.to_str().unwrap(), &topic])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb query failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<Value> = produced
        .iter()
        .flat_map(|(partition, records)| {
            records.iter().map(move |r| {
                json!({
                    "partition": partition,
                    "offset": r.offset,
                    "timestamp": r.timestamp,
                    "key": hex(&r.key),
                    "value": hex(&r.value),
                    "headers": r.headers.iter().map(|h| json!([h.key, hex(&h.value)])).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    assert_eq!(got.as_array().unwrap().len(), 50);
    assert_eq!(got, Value::Array(want));
}

/// Runs the SQL in argv[1] and prints the `offset` column of its rows, sorted (only that column
/// comes to Python: a TIMESTAMPTZ would need `pytz`).
const OFFSETS: &str = r#"
import duckdb, json, sys
sql = sys.argv[1].strip().rstrip(";")
rows = duckdb.connect().execute(f'SELECT "offset" FROM ({sql})').fetchall()
print(json.dumps(sorted(row[0] for row in rows)))
"#;

/// The README's first SQL block (section "Query the archive") that contains `marker`, as printed.
fn readme_sql(marker: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .split("```sql\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(sql, _)| sql))
        .find(|sql| sql.contains(marker))
        .unwrap_or_else(|| panic!("README.md shows no SQL with {marker:?}"))
        .to_string()
}

/// The README's DuckDB query of a time window, as printed there.
fn readme_window_query() -> String {
    readme_sql("read_parquet('s3://kafka-backups/prod/data/topic=orders/")
}

/// `text` with `from` replaced by `to`, when it is there (a README that changes shape fails here,
/// not in a query that silently runs against something else).
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "no {from:?} in:\n{text}");
    text.replace(from, to)
}

fn offsets_of(sql: &str) -> Vec<i64> {
    let out = Command::new(python())
        .args(["-c", OFFSETS, sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb query failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_window_query_finds_records_that_arrived_late_into_a_later_folder() {
    // The README's window: 2026-11-24 10:00 to 11:00 UTC.
    let at = |rfc3339: &str| rewind::archive::time::parse_rfc3339_millis(rfc3339).unwrap();
    let topic = common::unique("duckdb.late");
    create_topic(&topic, 1, &[]).await;
    let stamps = [
        "2026-11-24T09:30:00Z", // 0: before the window
        "2026-11-24T10:15:00Z", // 1: in the window, in its own hour's folder (a later hour)
        "2026-11-25T08:00:00Z", // 2: the next day: closes the file, opens one in date=2026-11-25
        "2026-11-24T10:45:00Z", // 3: in the window, late: stays in the 2026-11-25 file
        "2026-11-24T11:30:00Z", // 4: late too, after the window
    ];
    let records: Vec<_> = stamps
        .iter()
        .map(|t| record(Some(b"k"), Some(t.as_bytes()), vec![], at(t)))
        .collect();
    produce(&topic, 0, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let store: Arc<dyn ObjectStore> = Arc::new(
        LocalStore::open(StorageUrl::parse(&format!("file://{}", root.display())).unwrap())
            .unwrap(),
    );
    let report = sink::run(
        common::kafka::config(),
        store.clone(),
        common::once_sink_options(&topic, 1000),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!((report.records, report.files), (5, 3));
    let folders: Vec<(String, i64)> = common::archive::data_keys(&store, &topic, 0)
        .await
        .iter()
        .map(|k| {
            (
                k.to_string().split('/').nth(3).unwrap().to_string(),
                k.start,
            )
        })
        .collect();
    assert_eq!(
        folders,
        [
            ("date=2026-11-24".to_string(), 0),
            ("date=2026-11-24".to_string(), 1),
            ("date=2026-11-25".to_string(), 2)
        ],
        "the late records are in the next day's folder"
    );

    let query = readme_window_query()
        .replace("s3://kafka-backups/prod", root.to_str().unwrap())
        .replace("topic=orders", &format!("topic={topic}"));
    assert_eq!(offsets_of(&query), [1, 3], "{query}");

    // The folder filter the README used to show (one day's folder) misses the late record.
    let folder_bound = "date >= DATE '2026-11-24'";
    assert!(query.contains(folder_bound), "{query}");
    let one_folder = query.replace(folder_bound, "date = DATE '2026-11-24'");
    assert_eq!(offsets_of(&one_folder), [1], "{one_folder}");
}

/// Runs argv[1] (DuckDB's settings and the README's httpfs and secret statements) and then the
/// query in argv[2] on one connection, and prints where the loaded httpfs came from and the query's
/// rows (timestamps as epoch milliseconds, bytes as hex).
const S3_ROWS: &str = r#"
import duckdb, json, sys
setup, sql = sys.argv[1], sys.argv[2].strip().rstrip(";")
con = duckdb.connect()
con.execute(setup)
httpfs = con.execute(
    "SELECT loaded, installed_from FROM duckdb_extensions() WHERE extension_name = 'httpfs'"
).fetchone()
hexed = lambda b: None if b is None else b.hex()
rows = con.execute(
    f'SELECT partition, "offset", epoch_ms(timestamp), key, value FROM ({sql}) ORDER BY 1, 2'
).fetchall()
print(json.dumps({
    "httpfs": {"loaded": httpfs[0], "from": httpfs[1]},
    "rows": [[int(p), o, ts, hexed(k), hexed(v)] for (p, o, ts, k, v) in rows],
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_s3_query_reads_an_s3_archive_with_httpfs_from_pypi() {
    // The README's window, 2026-11-24 10:00 to 11:00 UTC, with records around it on both sides.
    let at = |rfc3339: &str| rewind::archive::time::parse_rfc3339_millis(rfc3339).unwrap();
    let (from, to) = (at("2026-11-24T10:00:00Z"), at("2026-11-24T11:00:00Z"));
    let topic = common::unique("duckdb.s3");
    create_topic(&topic, 2, &[]).await;
    let stamps: [&[&str]; 2] = [
        &[
            "2026-11-24T09:59:59.999Z", // before the window
            "2026-11-24T10:00:00Z",     // its first instant
            "2026-11-24T10:20:00Z",
            "2026-11-24T10:59:59.999Z", // its last instant
            "2026-11-24T11:00:00Z",     // after it
            "2026-11-24T10:30:00Z",     // late: in the 11:00 folder, in the window
        ],
        &[
            "2026-11-24T10:05:00Z",
            "2026-11-24T10:06:00Z",
            "2026-11-25T00:00:00Z",
        ],
    ];
    let mut produced = Vec::new();
    for (partition, stamps) in stamps.iter().enumerate() {
        let records: Vec<_> = stamps
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let key: Option<Vec<u8>> = match i % 3 {
                    0 => None,
                    1 => Some(vec![0xff, 0x00, i as u8]),
                    _ => Some(format!("key-{i}").into_bytes()),
                };
                let value = (i != 3).then(|| format!("{partition}/{i} at {t}").into_bytes());
                record(key.as_deref(), value.as_deref(), vec![], at(t))
            })
            .collect();
        produced.push((partition, produce(&topic, partition as i32, &records).await));
    }
    let bucket = common::new_bucket().await;
    let archive = format!("s3://{bucket}/prod");
    let store = storage::open_writer(&StorageUrl::parse(&archive).unwrap(), &common::s3_options())
        .await
        .unwrap();
    let report = sink::run(
        common::kafka::config(),
        store,
        common::once_sink_options(&topic, 1000),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(report.records, 9);

    // The README's statements for an S3-compatible server, pointed at the test bed's, and its
    // window query pointed at this archive and topic.
    let endpoint = common::s3_endpoint();
    let secret = readme_sql("ENDPOINT '");
    let secret = substitute(
        &secret,
        "ENDPOINT '127.0.0.1:9000'",
        &format!(
            "ENDPOINT '{}'",
            endpoint.trim_start_matches("http://").trim_end_matches('/')
        ),
    );
    let secret = substitute(
        &secret,
        "KEY_ID 'rewind'",
        &format!("KEY_ID '{}'", common::s3_access_key()),
    );
    let secret = substitute(
        &secret,
        "SECRET 'rewind-secret-key'",
        &format!("SECRET '{}'", common::s3_secret_key()),
    );
    assert!(secret.contains("INSTALL httpfs;") && secret.contains("LOAD httpfs;"));
    let query = substitute(&readme_window_query(), "s3://kafka-backups/prod", &archive);
    let query = substitute(&query, "topic=orders", &format!("topic={topic}"));
    // Nothing may come from extensions.duckdb.org: no automatic install, and an `INSTALL` that
    // would download fails (the repository is a closed port) instead of passing where there is
    // internet access.
    let setup = format!(
        "SET autoinstall_known_extensions = false;\n\
         SET custom_extension_repository = 'http://127.0.0.1:9/no-downloads';\n{secret}"
    );

    let out = Command::new(python())
        .args(["-c", S3_ROWS, &setup, &query])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb query failed: {}\n{setup}\n{query}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["httpfs"]["loaded"], true, "{got}");
    let installed_from = got["httpfs"]["from"].as_str().unwrap();
    assert!(
        installed_from.contains("/site-packages/duckdb_extension_httpfs/extensions/"),
        "httpfs comes from the PyPI package, not a download: {installed_from}"
    );
    let want: Vec<Value> = produced
        .iter()
        .flat_map(|(partition, records)| {
            records
                .iter()
                .filter(|r| (from..to).contains(&r.timestamp.unwrap()))
                .map(move |r| json!([partition, r.offset, r.timestamp, hex(&r.key), hex(&r.value)]))
        })
        .collect();
    assert_eq!(want.len(), 6, "the window holds 4 + 2 records");
    assert_eq!(got["rows"], Value::Array(want), "{query}");
}
