//! Iceberg tables over the archive, read by pyiceberg (PyPI, installed by `scripts/pyiceberg.sh`)
//! the way analysts open them: from the metadata location `rewind tables sync` prints, or from the
//! table's folder through `version-hint.text`, on the test bed's S3 server. A scan equals the
//! produced records byte for byte, a scan filtered by time and key equals the matching records,
//! a second sync appends, retention removes what it deletes with a delete snapshot before the
//! files go, and syncs racing from several processes lose no file.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::kafka::{create_topic, header, produce, read_to_end, record};
use rewind::archive::Record;
use rewind::storage::{self, ObjectStore, StorageUrl};
use serde_json::{json, Value};

const SCAN: &str = r#"
import json, sys
import pyarrow as pa, pyarrow.compute as pc
from pyiceberg.table import StaticTable
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual
location, props, since, key = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
table = StaticTable.from_metadata(location, properties=props)
def rows(scan):
    t = scan.to_arrow()
    ts = pc.cast(t["timestamp"], pa.int64()).to_pylist()
    hexed = lambda b: None if b is None else b.hex()
    out = [
        {"partition": p, "offset": o, "timestamp": None if s is None else s // 1000,
         "key": hexed(k), "value": hexed(v), "headers": [[h["key"], hexed(h["value"])] for h in hs]}
        for p, o, s, k, v, hs in zip(t["partition"].to_pylist(), t["offset"].to_pylist(), ts,
                                     t["key"].to_pylist(), t["value"].to_pylist(), t["headers"].to_pylist())
    ]
    return sorted(out, key=lambda r: (r["partition"], r["offset"]))
window = And(GreaterThanOrEqual("timestamp", since), EqualTo("key", bytes.fromhex(key)))
files = [task.file.file_path for task in table.scan().plan_files()]
print(json.dumps({
    "all": rows(table.scan()),
    "window": rows(table.scan(row_filter=window)),
    "window_files": len(list(table.scan(row_filter=window).plan_files())),
    "files": files,
    "operations": [s.summary.operation.value for s in table.snapshots()],
}))
"#;

const DUCKDB: &str = r#"
import duckdb, json, sys
location, endpoint, key_id, secret = sys.argv[1:5]
c = duckdb.connect()
c.execute("LOAD httpfs; LOAD iceberg")
c.execute(f"CREATE SECRET s (TYPE s3, KEY_ID '{key_id}', SECRET '{secret}', REGION 'us-east-1', "
          f"ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)")
hexed = lambda b: None if b is None else b.hex()
rows = c.execute(
    "SELECT partition, \"offset\", epoch_ms(timestamp), key, value, headers FROM iceberg_scan(?) "
    "ORDER BY partition, \"offset\"", [location]).fetchall()
print(json.dumps([
    {"partition": p, "offset": o, "timestamp": ts, "key": hexed(k), "value": hexed(v),
     "headers": [[h["key"], hexed(h["value"])] for h in hs]}
    for (p, o, ts, k, v, hs) in rows
]))
"#;

/// DuckDB's `iceberg_scan` of the table at `location` (extensions from PyPI, `scripts/duckdb.sh`).
fn duckdb_scan(location: &str) -> Value {
    let python = common::venv_python("REWIND_TEST_PYTHON", "duckdb.sh");
    let endpoint = common::s3_endpoint();
    let endpoint = endpoint.trim_start_matches("http://");
    let (key, secret) = (common::s3_access_key(), common::s3_secret_key());
    common::python_json(&python, DUCKDB, &[location, endpoint, &key, &secret])
}

fn python() -> String {
    common::venv_python("REWIND_TEST_PYICEBERG", "pyiceberg.sh")
}

fn row(partition: i32, r: &Record) -> Value {
    json!({
        "partition": partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": common::hex(&r.key),
        "value": common::hex(&r.value),
        "headers": r.headers.iter().map(|h| json!([h.key, common::hex(&h.value)])).collect::<Vec<_>>(),
    })
}

/// `rewind tables sync --json` of `archive`; the reports.
fn sync(archive: &str, topic: &str) -> Vec<Value> {
    sync_with(archive, topic, &[])
}

/// `rewind tables sync --json` of `archive` with `extra` flags; the reports.
fn sync_with(archive: &str, topic: &str, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(["tables", "sync", "--archive", archive, "--json", "--topics"])
        .arg(regex::escape(topic))
        .args(extra)
        .args(["--s3-endpoint", &common::s3_endpoint(), "--s3-path-style"])
        .env("AWS_ACCESS_KEY_ID", common::s3_access_key())
        .env("AWS_SECRET_ACCESS_KEY", common::s3_secret_key())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// pyiceberg's view of the table at `location`.
fn scan(location: &str, since_ms: i64, key: &[u8]) -> Value {
    let props = json!({
        "s3.endpoint": common::s3_endpoint(),
        "s3.access-key-id": common::s3_access_key(),
        "s3.secret-access-key": common::s3_secret_key(),
        "s3.region": "us-east-1",
    });
    // pyiceberg takes an offset, not Z.
    let since = rewind::archive::time::rfc3339_millis(since_ms).replace('Z', "+00:00");
    let hexkey: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let props = props.to_string();
    common::python_json(&python(), SCAN, &[location, &props, &since, &hexkey])
}

fn sink_once(archive: &str, topic: &str) {
    let out = common::sink_command(archive, topic, &common::unique("g"))
        .arg("--once")
        .env("REWIND__SINK__MAX_FILE_RECORDS", "6")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
}

/// What the archive holds of `topic`, as table rows, read back from its chains.
async fn archived(store: &Arc<dyn ObjectStore>, topic: &str, partitions: i32) -> Vec<Value> {
    let mut rows = Vec::new();
    for p in 0..partitions {
        for r in common::archive::chain(store, topic, p).await {
            rows.push(row(p, &r));
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyiceberg_reads_the_archive_as_a_table_through_appends_and_retention() {
    let topic = common::unique("tables.orders");
    let partitions = 3;
    create_topic(&topic, partitions, &[]).await;
    let now = common::now_ms();
    let old = now - 3 * 24 * 3600 * 1000;
    let batch = |base: i64, from: usize| -> Vec<Record> {
        (from..from + 20)
            .map(|i| {
                let key = format!("k-{}", i % 5);
                let key: Option<&[u8]> = if i % 11 == 0 {
                    None
                } else {
                    Some(key.as_bytes())
                };
                let value = format!("{{\"n\":{i}}}");
                let value: Option<&[u8]> = if i % 13 == 0 {
                    None
                } else {
                    Some(value.as_bytes())
                };
                let headers = vec![
                    header("trace", Some(&[i as u8, 0xff])),
                    header("empty", None),
                ];
                record(key, value, headers, base + i as i64 * 1000)
            })
            .collect()
    };
    for p in 0..partitions {
        produce(&topic, p, &batch(old, 0)).await;
    }
    let bucket = common::new_bucket().await;
    let archive = format!("s3://{bucket}/arch");
    sink_once(&archive, &topic);
    let first = sync(&archive, &topic);
    assert_eq!(first.len(), 1, "{first:?}");
    // A new table is committed empty (version 1), then filled (2).
    assert_eq!(first[0]["version"], 2);
    assert_eq!(first[0]["records"], 60);
    let metadata = first[0]["metadata"].as_str().unwrap().to_string();
    assert_eq!(
        metadata,
        format!("{archive}/_tables/{topic}/metadata/v2.metadata.json")
    );
    // Up to date: a second sync commits nothing.
    let again = sync(&archive, &topic);
    assert_eq!(again[0]["committed"], false, "{again:?}");

    for p in 0..partitions {
        produce(&topic, p, &batch(now - 60_000, 20)).await;
    }
    sink_once(&archive, &topic);
    let second = sync(&archive, &topic);
    assert_eq!(second[0]["version"], 3, "{second:?}");
    assert_eq!(second[0]["records"], 120);

    let produced: Vec<Value> = (0..partitions)
        .flat_map(|p| {
            read_to_end(&topic, p)
                .into_iter()
                .map(move |(r, _)| row(p, &r))
        })
        .collect();
    assert_eq!(produced.len(), 120);
    let since = now - 30_000;
    let key = b"k-2";
    let window: Vec<Value> = produced
        .iter()
        .filter(|r| {
            r["timestamp"].as_i64().unwrap() >= since
                && r["key"] == json!(common::hex(&Some(key.to_vec())))
        })
        .cloned()
        .collect();
    assert!(!window.is_empty());

    // By the metadata location sync printed, and by the table's folder (version-hint.text).
    let folder = format!("{archive}/_tables/{topic}");
    for location in [second[0]["metadata"].as_str().unwrap(), folder.as_str()] {
        let table = scan(location, since, key);
        assert_eq!(table["all"], json!(produced), "{location}");
        assert_eq!(table["window"], json!(window), "{location}");
        assert_eq!(table["operations"], json!(["append", "append"]));
        // The file statistics let the time filter skip the old files.
        let files = table["files"].as_array().unwrap().len();
        assert!(
            table["window_files"].as_u64().unwrap() < files as u64,
            "{} of {files} files planned for the window",
            table["window_files"]
        );
    }

    // DuckDB opens the same table, by metadata location and by folder.
    assert_eq!(
        duckdb_scan(second[0]["metadata"].as_str().unwrap()),
        json!(produced)
    );
    assert_eq!(duckdb_scan(&folder), json!(produced));

    // Retention deletes the old files; the table drops them first, and equals the archive after.
    let url = StorageUrl::parse(&archive).unwrap();
    let store: Arc<dyn ObjectStore> = storage::open_reader(&url, &common::s3_options())
        .await
        .unwrap();
    let before = store.list("data/").await.unwrap().len();
    let out = common::tool_command("retention", &archive)
        .args(["--older-than", "2d"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let after = store.list("data/").await.unwrap().len();
    assert!(after < before, "retention deleted nothing ({before} files)");
    let table = scan(&folder, since, key);
    assert_eq!(table["operations"], json!(["append", "append", "delete"]));
    assert_eq!(
        table["all"],
        json!(archived(&store, &topic, partitions).await)
    );
    assert_eq!(table["window"], json!(window));
    for file in table["files"].as_array().unwrap() {
        let key = file
            .as_str()
            .unwrap()
            .strip_prefix(&format!("{archive}/"))
            .unwrap();
        store
            .head(key)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    let last = sync(&archive, &topic);
    assert_eq!(last[0]["committed"], false, "{last:?}");
    assert_eq!(last[0]["files"].as_u64().unwrap() as usize, after);
}

/// Three `rewind tables sync` processes at once, round after round, while a sink writes files of
/// five records into S3 and producers keep going: the conditional put of the next metadata file
/// decides each commit, and when everything has settled the table holds every archived record,
/// each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn syncs_racing_from_several_processes_lose_no_file() {
    let topic = common::unique("tables.race");
    let partitions = 4;
    create_topic(&topic, partitions, &[]).await;
    let bucket = common::new_bucket().await;
    let archive = format!("s3://{bucket}/arch");
    let mut sink = common::sink_command(&archive, &topic, &common::unique("g"))
        .env("REWIND__SINK__MAX_FILE_RECORDS", "5")
        .env("REWIND__SINK__MAX_FILE_AGE", "1s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let now = common::now_ms();
    let mut attempts = 0;
    for round in 0..4 {
        for p in 0..partitions {
            let records: Vec<Record> = (0..12)
                .map(|i| {
                    let value = format!("{round}-{p}-{i}");
                    record(Some(b"k"), Some(value.as_bytes()), vec![], now + i)
                })
                .collect();
            produce(&topic, p, &records).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let racers: Vec<_> = (0..3)
            .map(|_| {
                let (archive, topic) = (archive.clone(), topic.clone());
                std::thread::spawn(move || sync(&archive, &topic))
            })
            .collect();
        for r in racers {
            let reports = r.join().unwrap();
            attempts += reports[0]["attempts"].as_u64().unwrap();
        }
    }
    Command::new("kill")
        .args(["-TERM", &sink.id().to_string()])
        .status()
        .unwrap();
    assert!(sink.wait().unwrap().success());
    let last = sync(&archive, &topic);
    let url = StorageUrl::parse(&archive).unwrap();
    let store: Arc<dyn ObjectStore> = storage::open_reader(&url, &common::s3_options())
        .await
        .unwrap();
    let archived = archived(&store, &topic, partitions).await;
    assert_eq!(archived.len(), 4 * 4 * 12, "the sink archived everything");
    assert_eq!(last[0]["records"], json!(archived.len()), "{last:?}");
    let table = scan(last[0]["metadata"].as_str().unwrap(), now, b"k");
    assert_eq!(table["all"], json!(archived));
    eprintln!("{attempts} commit attempts by 12 racing syncs");
}

/// Mistakes get one sentence and exit 2, and nothing is written.
/// `rewind <command> <args>` exits 2 with a one-sentence error holding `says`, for each case.
fn refused(command: &[&str], cases: &[(Vec<&str>, &str)]) {
    for (args, says) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_rewind"))
            .args(command)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command:?} {args:?}: {}",
            common::text(&out.stderr)
        );
        let err = common::error_line(&out);
        assert!(err.contains(says), "{command:?} {args:?}: {err}");
    }
}

#[test]
fn mistakes_are_refused_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let empty = format!("file://{}", dir.path().display());
    let empty = empty.as_str();
    let missing = vec!["--archive", "file:///nonexistent/rewind"];
    let bad_regex = vec!["--archive", empty, "--topics", "("];
    refused(
        &["tables", "sync"],
        &[
            (missing.clone(), "no archive at this path"),
            (vec!["--archive", empty], "is not a Rewind archive"),
            (bad_regex.clone(), "not a valid regular expression"),
            (
                vec!["--archive", empty, "--min-snapshots", "0"],
                "--min-snapshots",
            ),
            (
                vec!["--archive", empty, "--max-snapshot-age", "soon"],
                "--max-snapshot-age",
            ),
            (vec!["--archive", empty, "--catalog-uri"], "--catalog-uri"),
        ],
    );
    refused(
        &["compact"],
        &[
            (missing, "no archive at this path"),
            (vec!["--archive", empty], "no Rewind archive there"),
            (bad_regex, "not a valid regular expression"),
            (vec!["--archive", empty, "--settle", "soon"], "--settle"),
            (
                vec!["--archive", empty, "--max-file-size", "64KiB"],
                "--max-file-size must be at least 1MiB",
            ),
            (
                vec!["--archive", empty, "--max-file-size", "huge"],
                "--max-file-size",
            ),
        ],
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing is written"
    );
}

const REST_SCAN: &str = r#"
import json, sys
from pyiceberg.catalog.rest import RestCatalog
uri, identifier = sys.argv[1], sys.argv[2]
table = RestCatalog("rewind", uri=uri).load_table(identifier)
t = table.scan().to_arrow()
hexed = lambda b: None if b is None else b.hex()
rows = sorted(({"partition": p, "offset": o, "value": hexed(v)}
               for p, o, v in zip(t["partition"].to_pylist(), t["offset"].to_pylist(), t["value"].to_pylist())),
              key=lambda r: (r["partition"], r["offset"]))
print(json.dumps({"rows": rows, "operations": [s.summary.operation.value for s in table.snapshots()],
                  "location": table.metadata_location}))
"#;

/// `rewind tables sync --catalog-uri` registers each table with Apache Iceberg's own REST catalog
/// server (Maven Central, `scripts/iceberg-rest.sh`), then commits each new version to it, and
/// pyiceberg finds the topic by name through the catalog, equal to the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rest_catalog_serves_the_tables_by_name() {
    let catalog = std::env::var("REWIND_TEST_ICEBERG_REST_URI")
        .unwrap_or_else(|_| "http://127.0.0.1:8181".into());
    let topic = common::unique("tables.rest-orders");
    create_topic(&topic, 2, &[]).await;
    let now = common::now_ms();
    let round = |from: usize| -> Vec<Record> {
        (from..from + 15)
            .map(|i| {
                record(
                    Some(b"k"),
                    Some(format!("v{i}").as_bytes()),
                    vec![],
                    now + i as i64,
                )
            })
            .collect()
    };
    for p in 0..2 {
        produce(&topic, p, &round(0)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    sink_once(&archive, &topic);
    let namespace = common::unique("ns").replace('-', "_");
    let catalog_flags = ["--catalog-uri", &catalog, "--catalog-namespace", &namespace];
    let sync = |archive: &str| sync_with(archive, &topic, &catalog_flags);
    let scan = || -> Value {
        let table = format!(
            "{namespace}.{}",
            rewind::tables::catalog::table_name(&topic)
        );
        common::python_json(&python(), REST_SCAN, &[&catalog, &table])
    };
    let expected = |topic: &str| -> Value {
        let rows: Vec<Value> = (0..2)
            .flat_map(|p| {
                read_to_end(topic, p).into_iter().map(move |(r, _)| {
                    json!({"partition": p, "offset": r.offset, "value": common::hex(&r.value)})
                })
            })
            .collect();
        json!(rows)
    };

    let first = sync(&archive);
    assert_eq!(first[0]["catalog"], "registered", "{first:?}");
    let table = scan();
    assert_eq!(table["rows"], expected(&topic));
    assert_eq!(table["location"], first[0]["metadata"]);

    for p in 0..2 {
        produce(&topic, p, &round(15)).await;
    }
    sink_once(&archive, &topic);
    let second = sync(&archive);
    assert_eq!(second[0]["catalog"], "committed", "{second:?}");
    // The catalog wrote the commit as a metadata file of its own, beside Rewind's.
    let table = scan();
    assert_eq!(table["rows"], expected(&topic));
    assert_eq!(table["rows"].as_array().unwrap().len(), 60);
    assert_eq!(table["operations"], json!(["append", "append"]));
    let committed = table["location"].clone();

    let third = sync(&archive);
    assert_eq!(third[0]["catalog"], "up_to_date", "{third:?}");

    // Another archive's table under the same name is not touched: the sync says so, exit 1.
    let other = tempfile::tempdir().unwrap();
    let other_archive = format!("file://{}", other.path().display());
    sink_once(&other_archive, &topic);
    let out = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(["tables", "sync", "--archive", &other_archive, "--topics"])
        .arg(regex::escape(&topic))
        .args(["--catalog-uri", &catalog, "--catalog-namespace", &namespace])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stderr));
    assert!(
        common::text(&out.stderr).contains("is another table"),
        "{}",
        common::text(&out.stderr)
    );
    assert_eq!(scan()["location"], committed);
}

/// `rewind compact` on an S3 archive with an Iceberg table (issue 19, part 3): each partition's
/// files of a closed hour become one, the table takes one `replace` snapshot and still equals the
/// archive (pyiceberg and DuckDB), no part is left, `verify --deep` is clean, a second run finds
/// nothing, and a restore of the compacted archive lands exactly the produced records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_keeps_the_table_equal_to_the_archive_and_restores_byte_for_byte() {
    let topic = common::unique("tables.compact");
    let partitions = 2;
    create_topic(&topic, partitions, &[]).await;
    let now = common::now_ms();
    // 30 records of an hour that ended long ago (five files of six per partition), then ten of
    // this minute.
    let hour = (now / 3_600_000 - 5) * 3_600_000;
    let batch = |base: i64, from: usize, n: usize| -> Vec<Record> {
        (from..from + n)
            .map(|i| {
                let key = format!("k-{}", i % 4);
                let value = format!("{{\"n\":{i}}}");
                let value: Option<&[u8]> = (i % 9 != 0).then_some(value.as_bytes());
                let headers = vec![header("h", Some(&[i as u8]))];
                record(Some(key.as_bytes()), value, headers, base + i as i64 * 1000)
            })
            .collect()
    };
    for p in 0..partitions {
        produce(&topic, p, &batch(hour + 60_000, 0, 30)).await;
        produce(&topic, p, &batch(now - 30_000, 30, 10)).await;
    }
    let bucket = common::new_bucket().await;
    let archive = format!("s3://{bucket}/arch");
    sink_once(&archive, &topic);
    sync(&archive, &topic);
    let url = StorageUrl::parse(&archive).unwrap();
    let store: Arc<dyn ObjectStore> = storage::open_reader(&url, &common::s3_options())
        .await
        .unwrap();
    let folder = |p: i32| {
        let b = rewind::archive::time::HourBucket::of_millis(hour);
        format!(
            "data/topic={topic}/partition={p}/date={}/hour={}/",
            b.date(),
            b.hour()
        )
    };
    for p in 0..partitions {
        assert_eq!(store.list(&folder(p)).await.unwrap().len(), 5);
    }

    let out = common::tool_command("compact", &archive)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["compacted"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["deleted"], 10, "{report}");
    for c in report["compacted"].as_array().unwrap() {
        assert_eq!(
            (c["parts"].as_u64(), c["records"].as_u64()),
            (Some(5), Some(30))
        );
        assert_eq!(
            (c["start"].as_i64(), c["end"].as_i64()),
            (Some(0), Some(30))
        );
    }
    // One file per partition in the hour, named by its range; the archive says format 2.
    for p in 0..partitions {
        let keys: Vec<String> = store
            .list(&folder(p))
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(
            keys,
            vec![format!(
                "{}00000000000000000000-00000000000000000030.parquet",
                folder(p)
            )]
        );
    }
    let identity: Value =
        serde_json::from_slice(&store.get("_archive.json").await.unwrap().body).unwrap();
    assert_eq!(identity["format_version"], 2);

    // The table: one replace snapshot, every file it names exists, and it equals the archive and
    // what was produced.
    let produced: Vec<Value> = (0..partitions)
        .flat_map(|p| {
            read_to_end(&topic, p)
                .into_iter()
                .map(move |(r, _)| row(p, &r))
        })
        .collect();
    assert_eq!(produced.len(), 80);
    let location = format!("{archive}/_tables/{topic}");
    let table = scan(&location, now - 30_000, b"k-1");
    assert_eq!(table["operations"], json!(["append", "replace"]));
    assert_eq!(table["all"], json!(produced));
    assert_eq!(
        table["all"],
        json!(archived(&store, &topic, partitions).await)
    );
    for file in table["files"].as_array().unwrap() {
        let key = file
            .as_str()
            .unwrap()
            .strip_prefix(&format!("{archive}/"))
            .unwrap();
        store
            .head(key)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    assert_eq!(duckdb_scan(&location), json!(produced));

    // verify --deep is clean and warns of nothing; a second compaction finds nothing to do.
    let out = common::tool_command("verify", &archive)
        .args(["--deep", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified["clean"], true, "{verified}");
    assert_eq!(verified["warnings"], json!([]), "{verified}");
    let out = common::tool_command("compact", &archive)
        .arg("--json")
        .output()
        .unwrap();
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["compacted"], json!([]), "{again}");

    // A restore of the compacted archive: the produced records, byte for byte, in order.
    let target = common::unique("tables.compacted");
    let out = common::restore_command(&archive)
        .args([
            "--topics",
            &regex::escape(&topic),
            "--rename",
            &format!("{topic}={target}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    for p in 0..partitions {
        let restored: Vec<Value> = read_to_end(&target, p)
            .into_iter()
            .map(|(r, _)| row(p, &r))
            .map(|mut r| {
                r["offset"] = json!(null);
                r
            })
            .collect();
        let want: Vec<Value> = produced
            .iter()
            .filter(|r| r["partition"] == p)
            .cloned()
            .map(|mut r| {
                r["offset"] = json!(null);
                r
            })
            .collect();
        assert_eq!(restored, want, "partition {p}");
    }
}
