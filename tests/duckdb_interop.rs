//! Interoperability: DuckDB (the Python package from PyPI, installed by `scripts/duckdb.sh`) reads
//! `data/**/*.parquet` of an archive with Hive partitioning and sees exactly the produced records:
//! counts per topic and partition, and the bytes of keys, values and headers.

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
