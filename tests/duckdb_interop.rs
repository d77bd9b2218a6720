//! Interoperability: DuckDB (the Python package from PyPI, installed by `scripts/duckdb.sh`) reads
//! `data/**/*.parquet` of an archive with Hive partitioning and sees exactly the produced records:
//! counts per topic and partition, and the bytes of keys, values and headers; and the README's time
//! window query, run as the README prints it, finds records that arrived late into a later day's
//! folder, which a folder filter misses.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::kafka::{create_topic, header, produce, record};
use rewind::sink;
use rewind::storage::{LocalStore, ObjectStore, StorageUrl};
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
    if let Ok(python) = std::env::var("REWIND_TEST_PYTHON") {
        return python;
    }
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/duckdb.sh"))
        .output()
        .expect("run scripts/duckdb.sh");
    assert!(
        out.status.success(),
        "scripts/duckdb.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn hex(bytes: &Option<Vec<u8>>) -> Value {
    match bytes {
        None => Value::Null,
        Some(b) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
    }
}

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

/// The README's DuckDB query of a time window (section "Query the archive"), as printed there.
fn readme_window_query() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .split("```sql\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(sql, _)| sql))
        .find(|sql| sql.contains("read_parquet('s3://kafka-backups/prod/data/topic=orders/"))
        .expect("README.md shows a DuckDB query of the orders topic")
        .to_string()
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
