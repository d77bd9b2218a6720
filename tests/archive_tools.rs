//! The archive tools against real archives: written by the sink from the test bed's Kafka broker,
//! on local disk and on the S3 server. `verify` must pass a clean archive and name the key of each
//! planted defect; `find` must return exactly what a full scan of the produced records returns,
//! while reading a small part of the archive; `ls` must count what was produced (and agree with
//! DuckDB); `retention` must keep a contiguous suffix that verifies and restores.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{create_topic, header, produce, read_to_end, record};
use rewind::archive::datafile;
use rewind::archive::paths::DataFileKey;
use rewind::archive::Record;
use rewind::sink;
use rewind::storage::{LocalStore, ObjectStore, PutMode, StorageUrl};
use serde_json::Value;

const PARTITIONS: i32 = 3;
const PER_PARTITION: usize = 120;
const HOUR: i64 = 3_600_000;

/// A topic whose records span five hours, ending an hour ago: keys unique per record, repeated
/// (`user-N`), null and binary; headers with duplicates and null values; tombstones.
struct History {
    topic: String,
    /// Produced records per partition, with their offsets.
    records: Vec<Vec<Record>>,
    /// The first record's timestamp (the start of an hour).
    base: i64,
}

fn key_of(p: i32, i: usize) -> Option<Vec<u8>> {
    match i % 8 {
        0 | 4 => Some(format!("user-{}", i % 5).into_bytes()),
        1 => None,
        5 => Some(vec![0xff, 0x00, (i % 3) as u8]),
        _ => Some(format!("order-{p}-{i}").into_bytes()),
    }
}

async fn history(prefix: &str) -> History {
    let topic = common::unique(prefix);
    create_topic(&topic, PARTITIONS, &[]).await;
    let now = common::now_ms();
    let base = (now / HOUR - 6) * HOUR;
    let mut records = Vec::new();
    for p in 0..PARTITIONS {
        let batch: Vec<Record> = (0..PER_PARTITION)
            .map(|i| {
                // Five hours, with one late record (an earlier timestamp) now and then.
                let late = if i % 13 == 7 { HOUR / 2 } else { 0 };
                let ts = base + (i as i64) * (5 * HOUR) / PER_PARTITION as i64 - late + p as i64;
                let value = (i % 11 != 3).then(|| format!("value {p}/{i}").into_bytes());
                let mut headers = vec![header("trace", Some(format!("t{}", i % 4).as_bytes()))];
                if i % 6 == 0 {
                    headers.push(header("trace", None));
                    headers.push(header("bin", Some(&[0xc3, 0x28])));
                }
                record(
                    key_of(p, i).as_deref(),
                    value.as_deref(),
                    headers,
                    ts.max(0),
                )
            })
            .collect();
        records.push(produce(&topic, p, &batch).await);
    }
    History {
        topic,
        records,
        base,
    }
}

/// Back the topic up once into `store`, 15 records per file at most (and a file per hour).
async fn back_up(h: &History, store: Arc<dyn ObjectStore>) {
    let opts = common::once_sink_options(&h.topic, 15);
    let report = sink::run(common::kafka::config(), store, opts, std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.records, (PARTITIONS as u64) * PER_PARTITION as u64);
}

fn local(root: &Path) -> (String, Arc<dyn ObjectStore>) {
    let url = format!("file://{}", root.display());
    let store = Arc::new(LocalStore::open(StorageUrl::parse(&url).unwrap()).unwrap());
    (url, store)
}

fn tool(tool: &str, archive: &str, args: &[&str]) -> Output {
    common::tool_command(tool, archive)
        .args(args)
        .output()
        .expect("run rewind")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            common::text(&out.stdout),
            common::text(&out.stderr)
        )
    })
}

/// Data file keys of a partition in chain order.
async fn files_of(store: &Arc<dyn ObjectStore>, topic: &str, p: i32) -> Vec<String> {
    common::archive::data_keys(store, topic, p)
        .await
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Store a JSON document (replacing what is there).
async fn put_json(store: &Arc<dyn ObjectStore>, key: &str, doc: &Value) {
    store
        .put(
            key,
            serde_json::to_vec(doc).unwrap().into(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
}

/// Rewrite a partition's checkpoint with `end` (a hand-planted defect or a tail gap).
async fn set_checkpoint_end(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    p: i32,
    end: impl Fn(i64) -> i64,
) {
    let key = rewind::archive::paths::checkpoint_key(topic, p);
    let mut checkpoint: Value =
        serde_json::from_slice(&store.get(&key).await.unwrap().body).unwrap();
    checkpoint["end"] = end(checkpoint["end"].as_i64().unwrap()).into();
    put_json(store, &key, &checkpoint).await;
}

/// A `_retention/` chain start document.
fn chain_start(topic: &str, p: i32, start: i64) -> Value {
    serde_json::json!({"topic": topic, "partition": p, "start": start,
        "cutoff": "2026-11-24T00:00:00.000Z", "updated_at": "2026-11-24T00:00:00.000Z"})
}

/// (partition, offset) of every produced record `pred` picks.
fn expected(h: &History, pred: impl Fn(&Record) -> bool) -> BTreeSet<(i64, i64)> {
    h.records
        .iter()
        .enumerate()
        .flat_map(|(p, rs)| {
            rs.iter()
                .filter(|r| pred(r))
                .map(move |r| (p as i64, r.offset))
        })
        .collect()
}

/// Run `rewind find` and return the (partition, offset) of every line, and the stats.
fn find(archive: &str, args: &[&str]) -> (BTreeSet<(i64, i64)>, Vec<Value>, Value) {
    let mut all = vec!["--stats"];
    all.extend_from_slice(args);
    let out = tool("find", archive, &all);
    assert!(
        out.status.success(),
        "find {args:?}: {}",
        common::text(&out.stderr)
    );
    let lines: Vec<Value> = common::text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got = lines
        .iter()
        .map(|l| {
            (
                l["partition"].as_i64().unwrap(),
                l["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let stats: Value = common::text(&out.stderr)
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .expect("--stats prints a JSON line");
    (got, lines, stats["stats"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_ls_and_find_on_a_local_archive() {
    let h = history("tools.local").await;
    let dir = tempfile::tempdir().unwrap();
    let (archive, store) = local(&dir.path().join("archive"));
    back_up(&h, store.clone()).await;
    let mut total_files = 0;
    for p in 0..PARTITIONS {
        total_files += files_of(&store, &h.topic, p).await.len();
    }
    assert!(
        total_files >= 8 * PARTITIONS as usize,
        "many files: {total_files}"
    );

    // verify: clean, in both modes, and it saw every file.
    for deep in [false, true] {
        let args: &[&str] = if deep {
            &["--json", "--deep"]
        } else {
            &["--json"]
        };
        let out = tool("verify", &archive, args);
        let report = json_of(&out);
        assert!(out.status.success(), "{report:#}");
        assert_eq!(report["clean"], true);
        assert_eq!(report["files"], total_files);
        assert_eq!(report["records"], PARTITIONS as u64 * PER_PARTITION as u64);
        assert_eq!(report["problems"].as_array().unwrap().len(), 0);
    }
    let out = tool("verify", &archive, &[]);
    assert!(
        common::text(&out.stdout).contains(": clean"),
        "{}",
        common::text(&out.stdout)
    );

    // ls: the numbers are what was produced.
    let out = tool("ls", &archive, &["--json"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let ls = json_of(&out);
    let topic = &ls["topics"][0];
    assert_eq!(topic["topic"], h.topic.as_str());
    assert_eq!(topic["records"], PARTITIONS as u64 * PER_PARTITION as u64);
    assert_eq!(topic["files"], total_files);
    for (p, records) in h.records.iter().enumerate() {
        let part = &topic["partitions"][p];
        assert_eq!(part["partition"], p);
        assert_eq!(part["records"], records.len());
        assert_eq!(part["start"], records[0].offset);
        assert_eq!(part["end"], records.last().unwrap().offset + 1);
        assert_eq!(part["checkpoint_end"], records.last().unwrap().offset + 1);
        assert!(part["checkpoint_age_seconds"].as_f64().unwrap() < 600.0);
        let min = records.iter().filter_map(|r| r.timestamp).min().unwrap();
        assert_eq!(
            part["min_timestamp"],
            rewind::archive::time::rfc3339_millis(min)
        );
    }
    let table = common::text(&tool("ls", &archive, &[]).stdout);
    assert!(
        table.contains(&h.topic) && table.contains("CHECKPOINT AGE"),
        "{table}"
    );

    // DuckDB over the same files counts the same per partition.
    let counts = duckdb_counts(dir.path().join("archive").to_str().unwrap(), &h.topic);
    for (p, records) in h.records.iter().enumerate() {
        assert_eq!(counts[p], records.len() as u64, "partition {p}");
    }

    // find by a unique key: exactly one record, and only a file or two is read.
    let (got, lines, stats) = find(&archive, &["--topic", &h.topic, "--key", "order-1-42"]);
    assert_eq!(
        got,
        expected(&h, |r| r.key.as_deref() == Some(b"order-1-42"))
    );
    assert_eq!(got.len(), 1);
    assert_eq!(lines[0]["key"], "order-1-42");
    assert_eq!(lines[0]["value"], "value 1/42");
    assert_eq!(stats["files_total"], total_files);
    assert!(stats["files_scanned"].as_u64().unwrap() <= 2, "{stats}");
    // These files are a few KB, so the one read of a footer's tail is the whole file: no byte is
    // read twice (the benchmark measures the fraction on large files).
    assert!(
        stats["bytes_read"].as_u64().unwrap() <= stats["archive_bytes"].as_u64().unwrap(),
        "{stats}"
    );
    // A repeated key, in every partition.
    let (got, _, _) = find(&archive, &["--topic", &h.topic, "--key", "user-3"]);
    assert_eq!(got, expected(&h, |r| r.key.as_deref() == Some(b"user-3")));
    assert!(got.len() > 3);
    // Binary keys, given in hex, come back as base64.
    let (got, lines, _) = find(&archive, &["--topic", &h.topic, "--key-hex", "ff0002"]);
    assert_eq!(
        got,
        expected(&h, |r| r.key.as_deref() == Some(&[0xff, 0, 2]))
    );
    assert!(!got.is_empty());
    assert_eq!(lines[0]["key"]["base64"], "/wAC");
    // Null keys.
    let (got, lines, _) = find(&archive, &["--topic", &h.topic, "--key-null"]);
    assert_eq!(got, expected(&h, |r| r.key.is_none()));
    assert!(lines.iter().all(|l| l["key"].is_null()));
    // A time window: exactly the records whose own timestamp is in it; files of other hours unread.
    let (from, to) = (h.base + HOUR + HOUR / 3, h.base + 2 * HOUR + HOUR / 2);
    let (got, _, stats) = find(
        &archive,
        &[
            "--topic",
            &h.topic,
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
        ],
    );
    assert_eq!(
        got,
        expected(&h, |r| r.timestamp.is_some_and(|t| t >= from && t < to))
    );
    assert!(
        stats["files_scanned"].as_u64().unwrap() < total_files as u64 / 2,
        "{stats}"
    );
    // Headers, including a null value and a binary one, with a key and a window at once.
    let (got, lines, _) = find(&archive, &["--topic", &h.topic, "--header", "trace=t2"]);
    let has = |r: &Record, k: &str, v: Option<&[u8]>| {
        r.headers
            .iter()
            .any(|x| x.key == k && x.value.as_deref() == v)
    };
    assert_eq!(got, expected(&h, |r| has(r, "trace", Some(b"t2"))));
    assert!(lines.iter().all(|l| l["headers"][0]["value"] == "t2"));
    let (got, lines, _) = find(
        &archive,
        &[
            "--topic",
            &h.topic,
            "--header",
            "trace",
            "--key",
            "user-0",
            "--from",
            &h.base.to_string(),
            "--to",
            &to.to_string(),
        ],
    );
    assert_eq!(
        got,
        expected(&h, |r| has(r, "trace", None)
            && r.key.as_deref() == Some(b"user-0")
            && r.timestamp.is_some_and(|t| t < to))
    );
    assert!(!got.is_empty());
    assert_eq!(lines[0]["headers"][2]["value"]["base64"], "wyg=");
    // Tombstones come back as null values, and --limit stops early.
    let (got, lines, _) = find(
        &archive,
        &["--topic", &h.topic, "--partition", "2", "--limit", "4"],
    );
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|(p, _)| *p == 2));
    assert!(
        lines[3]["value"].is_null(),
        "offset 3 is a tombstone: {}",
        lines[3]
    );
    // A key nobody wrote: nothing, and no data page read.
    let (got, _, stats) = find(&archive, &["--topic", &h.topic, "--key", "nobody"]);
    assert!(got.is_empty());
    assert!(stats["files_scanned"].as_u64().unwrap() <= 2, "{stats}");
}

fn duckdb_counts(root: &str, topic: &str) -> Vec<u64> {
    let python = std::env::var("REWIND_TEST_PYTHON").unwrap_or_else(|_| {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/duckdb.sh"))
            .output()
            .expect("run scripts/duckdb.sh");
        assert!(out.status.success(), "{}", common::text(&out.stderr));
        common::text(&out.stdout).trim().to_string()
    });
    let query = r#"
import duckdb, json, sys
rows = duckdb.connect().execute(
    "SELECT partition, count(*) FROM read_parquet(?, hive_partitioning = true) "
    "WHERE topic = ? GROUP BY partition ORDER BY partition",
    [sys.argv[1] + "/data/**/*.parquet", sys.argv[2]]).fetchall()
print(json.dumps([c for (_, c) in rows]))
"#;
    let out = Command::new(python)
        .args(["-c", query, root, topic])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A copy of the archive directory with its extended attributes (the stored checksums).
fn copy_archive(from: &Path, to: &Path) -> (String, Arc<dyn ObjectStore>) {
    let status = Command::new("cp")
        .args(["-a", from.to_str().unwrap(), to.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    local(to)
}

/// A copy of the archive directory made the ordinary way (`cp -r`, no `-a`): the extended
/// attributes that hold the stored checksums are left behind.
fn plain_copy(from: &Path, to: &Path) -> (String, Arc<dyn ObjectStore>) {
    let status = Command::new("cp")
        .args(["-r", from.to_str().unwrap(), to.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let (archive, store) = local(to);
    let some_file = walk(to)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"));
    assert!(
        xattr::get(some_file.unwrap(), "user.rewind.crc32c")
            .unwrap()
            .is_none(),
        "a plain copy has no stored checksum"
    );
    (archive, store)
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Flip one bit of the first stored copy of `text` in the data file at `path`, so that the file
/// still decodes, to a wrong value.
fn flip_inside(path: &Path, text: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(text.len())
        .position(|w| w == text)
        .unwrap_or_else(|| {
            panic!(
                "{} does not hold {:?} as it is",
                path.display(),
                common::text(text)
            )
        });
    bytes[at] ^= 0x20;
    std::fs::write(path, &bytes).unwrap();
}

/// `verify` (with `extra` flags) fails with exit 1, and names `key` as a problem.
fn assert_named(archive: &str, extra: &[&str], key: &str, kind: &str) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = tool("verify", archive, &args);
    let report = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["key"] == key && p["kind"] == kind),
        "expected a {kind} problem on {key}: {report:#}"
    );
    assert!(common::error_line(&out).contains("problem"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_names_each_planted_defect() {
    let h = history("tools.defects").await;
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    let (_, store) = local(&clean);
    back_up(&h, store.clone()).await;
    let files = files_of(&store, &h.topic, 1).await;
    assert!(files.len() >= 8);
    let n = std::sync::atomic::AtomicUsize::new(0);
    let copy = || {
        copy_archive(
            &clean,
            &dir.path().join(format!(
                "copy{}",
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )),
        )
    };

    // A flipped byte in a data page: the footer still reads, --deep catches it by its checksum.
    let (archive, _) = copy();
    let path = Path::new(&archive["file://".len()..]).join(&files[2]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    assert!(
        tool("verify", &archive, &[]).status.success(),
        "metadata mode checks footers, not bytes (a lib test counts what it reads)"
    );
    assert_named(&archive, &["--deep"], &files[2], "checksum");

    // A truncated file.
    let (archive, _) = copy();
    let path = Path::new(&archive["file://".len()..]).join(&files[3]);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_named(&archive, &[], &files[3], "unreadable");

    // A file deleted from the middle of a chain: the file after the hole is named.
    let (archive, copy_store) = copy();
    copy_store.delete(&files[4]).await.unwrap();
    assert_named(&archive, &[], &files[5], "hole");

    // An extra file overlapping another's range.
    let (archive, copy_store) = copy();
    let victim = DataFileKey::parse(&files[5]).unwrap();
    let extra = DataFileKey {
        start: victim.start + 1,
        ..victim.clone()
    }
    .to_string();
    let body = copy_store.get(&files[5]).await.unwrap().body;
    copy_store.put(&extra, body, PutMode::Create).await.unwrap();
    assert_named(&archive, &[], &extra, "overlap");

    // A footer whose metadata disagrees with its rows (one record too many).
    let (archive, copy_store) = copy();
    let (mut meta, rows) = datafile::decode(copy_store.get(&files[6]).await.unwrap().body).unwrap();
    meta.record_count += 1;
    let lying = datafile::encode(&meta, &rows).unwrap();
    copy_store
        .put(&files[6], lying, PutMode::Overwrite)
        .await
        .unwrap();
    assert_named(&archive, &[], &files[6], "footer");

    // A checkpoint ahead of the chain.
    let (archive, copy_store) = copy();
    set_checkpoint_end(&copy_store, &h.topic, 1, |end| end + 100).await;
    let key = rewind::archive::paths::checkpoint_key(&h.topic, 1);
    assert_named(&archive, &[], &key, "checkpoint");

    // A temporary file a killed writer left: a warning naming the key it was for, not a problem.
    let (archive, _) = copy();
    let folder = Path::new(&archive["file://".len()..]).join(&files[1]);
    let name = folder.file_name().unwrap().to_str().unwrap().to_string();
    let temp = folder.with_file_name(format!(".{name}.1a2b3c.rewind-tmp"));
    std::fs::write(&temp, b"half a file").unwrap();
    let out = tool("verify", &archive, &["--json"]);
    let report = json_of(&out);
    assert!(out.status.success(), "{report:#}");
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "incomplete_upload" && w["key"] == files[1].as_str()),
        "{report:#}"
    );
    // Retention aborts it once it is older than --abandoned-after (24 h by default), not before.
    let out = tool("retention", &archive, &["--older-than", "3650d", "--json"]);
    assert!(temp.exists(), "a young temporary file may still be written");
    assert_eq!(json_of(&out)["abandoned_uploads"], serde_json::json!([]));
    let out = tool(
        "retention",
        &archive,
        &["--older-than", "3650d", "--abandoned-after", "1m"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a live upload could be that young"
    );
    let touched = Command::new("touch")
        .args(["-d", "2 days ago", temp.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(touched.success());
    let out = tool("retention", &archive, &["--older-than", "3650d", "--json"]);
    assert_eq!(
        json_of(&out)["abandoned_uploads"],
        serde_json::json!([files[1]])
    );
    assert!(!temp.exists());
    assert_eq!(
        json_of(&tool("verify", &archive, &["--json"]))["warnings"],
        serde_json::json!([])
    );

    // Gaps are reasons, not defects: a hole a gap records, and a gap at the chain's end that the
    // checkpoint moved past (the sink found those offsets deleted by the broker).
    let (archive, copy_store) = copy();
    copy_store.delete(&files[4]).await.unwrap();
    let hole = (
        DataFileKey::parse(&files[4]).unwrap().start,
        DataFileKey::parse(&files[5]).unwrap().start,
    );
    let end = h.records[1].last().unwrap().offset + 1;
    for (start, stop) in [hole, (end, end + 40)] {
        let gap = rewind::archive::documents::Gap {
            topic: h.topic.clone(),
            partition: 1,
            start,
            end: stop,
            reason: "retention".into(),
            detected_at: "2026-11-24T00:00:00.000Z".into(),
        };
        rewind::archive::documents::record_gap(&*copy_store, &gap)
            .await
            .unwrap();
    }
    set_checkpoint_end(&copy_store, &h.topic, 1, |_| end + 40).await;
    let out = tool("verify", &archive, &["--json"]);
    assert!(out.status.success(), "{:#}", json_of(&out));

    // A retention run that stopped half-way: the start is recorded, one old file of two is gone.
    // Verify warns about the other; find and restore ignore it; the next run deletes it.
    let (archive, copy_store) = copy();
    let start = DataFileKey::parse(&files[2]).unwrap().start;
    put_json(
        &copy_store,
        &format!("_retention/{}/1.json", h.topic),
        &chain_start(&h.topic, 1, start),
    )
    .await;
    copy_store.delete(&files[1]).await.unwrap();
    let report = json_of(&tool("verify", &archive, &["--json"]));
    assert_eq!(report["clean"], true, "{report:#}");
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "leftover" && w["key"] == files[0].as_str()),
        "{report:#}"
    );
    let (got, _, _) = find(&archive, &["--topic", &h.topic, "--partition", "1"]);
    assert_eq!(
        got,
        expected(&h, |_| true)
            .into_iter()
            .filter(|(p, o)| *p == 1 && *o >= start)
            .collect()
    );
    let ls = json_of(&tool("ls", &archive, &["--json"]));
    assert_eq!(ls["topics"][0]["partitions"][1]["start"], start);
    let out = tool("retention", &archive, &["--older-than", "3650d", "--json"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let deleted = json_of(&out)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert_eq!(deleted, vec![files[0].clone()], "only the left-over goes");
    let report = json_of(&tool("verify", &archive, &["--json"]));
    assert_eq!(
        report["warnings"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );

    // A start recorded past every file (stale, or hand-made) is a problem for verify, and
    // retention deletes nothing of that partition.
    let (archive, copy_store) = copy();
    let start_key = format!("_retention/{}/1.json", h.topic);
    put_json(
        &copy_store,
        &start_key,
        &chain_start(&h.topic, 1, 1_000_000),
    )
    .await;
    assert_named(&archive, &[], &start_key, "start");
    let out = tool("retention", &archive, &["--older-than", "1s"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert_eq!(files_of(&copy_store, &h.topic, 1).await, files);

    // The original is still clean, deep.
    let out = tool(
        "verify",
        &format!("file://{}", clean.display()),
        &["--deep"],
    );
    assert!(out.status.success(), "{}", common::text(&out.stdout));
}

/// Retention on `store`: a dry run deletes nothing; the real run deletes only old files from the
/// start of each chain, keeps the newest file, prunes old group snapshots; the archive then
/// verifies clean and restores exactly from its new start.
async fn retention_round(h: &History, archive: &str, store: &Arc<dyn ObjectStore>) {
    let before: Vec<Vec<String>> =
        futures::future::join_all((0..PARTITIONS).map(|p| files_of(store, &h.topic, p))).await;
    // Group snapshots: three old ones, one recent.
    let now = common::now_ms();
    for t in [
        now - 30 * HOUR,
        now - 20 * HOUR,
        now - 10 * HOUR,
        now - 60_000,
    ] {
        let key = rewind::archive::documents::group_snapshot_key("billing", t);
        let doc = serde_json::json!({"group": "billing", "taken_at_ms": t, "taken_at": "x", "offsets": {}});
        put_json(store, &key, &doc).await;
    }
    let older_than = "3h";
    let cutoff = now - 3 * HOUR;
    let out = tool(
        "retention",
        archive,
        &["--older-than", older_than, "--dry-run", "--json"],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let dry = json_of(&out);
    let listed = dry["files"].as_array().unwrap().len();
    assert!(listed > 0, "{dry:#}");
    for p in 0..PARTITIONS {
        assert_eq!(
            files_of(store, &h.topic, p).await,
            before[p as usize],
            "dry run deletes nothing"
        );
    }
    let out = tool(
        "retention",
        archive,
        &["--older-than", older_than, "--json"],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let report = json_of(&out);
    assert_eq!(report["files"].as_array().unwrap().len(), listed);
    assert_eq!(report["group_snapshots"], 2, "{report:#}");
    for file in report["files"].as_array().unwrap() {
        let newest = file["max_timestamp"].as_str().unwrap();
        let newest = rewind::archive::time::parse_rfc3339_millis(newest).unwrap();
        assert!(
            newest < cutoff + 60_000,
            "{file} is younger than the cutoff"
        );
    }
    let snapshots = store.list("_groups/billing/").await.unwrap();
    assert_eq!(
        snapshots.len(),
        2,
        "the newest before the cutoff and the later one stay"
    );
    for p in 0..PARTITIONS {
        let after = files_of(store, &h.topic, p).await;
        let old = &before[p as usize];
        assert!(!after.is_empty() && after.len() < old.len());
        // A suffix of the chain is left.
        assert_eq!(&old[old.len() - after.len()..], &after[..]);
        // What is left starts with a file holding a record at or after the cutoff.
        let first = datafile::decode(store.get(&after[0]).await.unwrap().body)
            .unwrap()
            .0;
        assert!(first.max_timestamp.unwrap() >= cutoff);
    }
    let out = tool("verify", archive, &["--json"]);
    assert!(out.status.success(), "{:#}", json_of(&out));
    let ls = json_of(&tool("ls", archive, &["--json"]));
    // Restore from the new start: exactly the records from there on.
    for p in 0..PARTITIONS {
        let start = ls["topics"][0]["partitions"][p as usize]["start"]
            .as_i64()
            .unwrap();
        let first = DataFileKey::parse(&files_of(store, &h.topic, p).await[0])
            .unwrap()
            .start;
        assert_eq!(start, first);
    }
    let target = common::unique("tools.retained");
    let out = common::restore_command(archive)
        .args([
            "--topics",
            &regex::escape(&h.topic),
            "--rename",
            &format!("{}={target}", h.topic),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    for p in 0..PARTITIONS {
        let start = ls["topics"][0]["partitions"][p as usize]["start"]
            .as_i64()
            .unwrap();
        let want: Vec<_> = h.records[p as usize]
            .iter()
            .filter(|r| r.offset >= start)
            .map(|r| (r.key.clone(), r.value.clone(), r.timestamp))
            .collect();
        let got: Vec<_> = read_to_end(&target, p)
            .into_iter()
            .map(|(r, _)| (r.key, r.value, r.timestamp))
            .collect();
        assert_eq!(got, want, "partition {p}");
    }
    // Retention never deletes a partition's newest file, however short the period.
    let out = tool("retention", archive, &["--older-than", "1s"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    for p in 0..PARTITIONS {
        let left = files_of(store, &h.topic, p).await;
        assert_eq!(left.len(), 1);
        assert_eq!(Some(&left[0]), before[p as usize].last());
    }
    assert!(tool("verify", archive, &[]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_on_a_local_archive_keeps_a_suffix_that_verifies_and_restores() {
    let h = history("tools.retention").await;
    let dir = tempfile::tempdir().unwrap();
    let (archive, store) = local(&dir.path().join("archive"));
    back_up(&h, store.clone()).await;
    retention_round(&h, &archive, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tools_work_on_an_s3_archive() {
    let h = history("tools.s3").await;
    let s3 = common::s3_store().await;
    let archive = s3.url().to_string();
    let store: Arc<dyn ObjectStore> = Arc::new(s3);
    back_up(&h, store.clone()).await;
    let report = json_of(&tool("verify", &archive, &["--json", "--deep"]));
    assert_eq!(report["clean"], true, "{report:#}");
    let ls = json_of(&tool("ls", &archive, &["--json"]));
    assert_eq!(
        ls["topics"][0]["records"],
        PARTITIONS as u64 * PER_PARTITION as u64
    );
    let (got, _, stats) = find(&archive, &["--topic", &h.topic, "--key", "order-2-99"]);
    assert_eq!(
        got,
        expected(&h, |r| r.key.as_deref() == Some(b"order-2-99"))
    );
    assert!(stats["files_scanned"].as_u64().unwrap() <= 2, "{stats}");
    retention_round(&h, &archive, &store).await;
    // A deleted file in the middle of what is left would now be a hole... there is one file per
    // partition left, so plant the defect on a checkpoint instead.
    set_checkpoint_end(&store, &h.topic, 0, |end| end + 1).await;
    let key = rewind::archive::paths::checkpoint_key(&h.topic, 0);
    assert_named(&archive, &[], &key, "checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_one_clear_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("file://{}", dir.path().join("nowhere").display());
    for t in ["verify", "ls"] {
        let out = tool(t, &missing, &[]);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            common::error_line(&out),
            format!("error: {missing}: no archive at this path (no such folder); check --archive or REWIND__ARCHIVE")
        );
        assert!(
            !dir.path().join("nowhere").exists(),
            "a read-only tool creates nothing"
        );
    }
    let out = tool("find", &missing, &["--topic", "t", "--key", "k"]);
    assert_eq!(out.status.code(), Some(2));
    let bucket = common::unique("rewind-missing");
    let out = tool("verify", &format!("s3://{bucket}/x"), &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        common::error_line(&out).contains(&bucket),
        "{}",
        common::text(&out.stderr)
    );

    // An archive of a format this build does not know.
    let (archive, store) = local(&dir.path().join("future"));
    let identity = serde_json::json!({"format_version": 99, "created_at": "2030-01-01T00:00:00.000Z", "cluster_id": "x", "writer": "rewind 9"});
    put_json(&store, "_archive.json", &identity).await;
    for (t, args) in [
        ("verify", vec![]),
        ("ls", vec![]),
        ("retention", vec!["--older-than", "1d"]),
        ("find", vec!["--topic", "t"]),
    ] {
        let out = tool(t, &archive, &args);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            common::error_line(&out).contains("format version 99"),
            "{t}: {}",
            common::text(&out.stderr)
        );
    }

    let (archive, store) = local(&dir.path().join("empty"));
    let identity = serde_json::json!({"format_version": 1, "created_at": "2030-01-01T00:00:00.000Z", "cluster_id": "x", "writer": "rewind 0.1.0"});
    put_json(&store, "_archive.json", &identity).await;
    for (args, needle) in [
        (
            vec!["retention", "--older-than", "7 fortnights"],
            "duration",
        ),
        (vec!["retention", "--older-than=-1d"], "duration"),
        (
            vec!["find", "--topic", "t", "--key-hex", "zz"],
            "hexadecimal",
        ),
        (
            vec!["find", "--topic", "t", "--key-hex", "abc"],
            "odd number",
        ),
        (
            vec!["find", "--topic", "t", "--key", "a", "--key-null"],
            "cannot be used with",
        ),
        (
            vec!["find", "--topic", "t", "--from", "last tuesday"],
            "is not a time",
        ),
        (vec!["find", "--topic", "t", "--header", "=v"], "K=V"),
        (vec!["verify", "--topics", "("], "regular expression"),
    ] {
        let out = tool(args[0], &archive, &args[1..]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            common::text(&out.stderr)
        );
        assert!(
            common::text(&out.stderr).contains(needle),
            "{args:?}: {}",
            common::text(&out.stderr)
        );
    }
    // A topic with nothing archived is a finding, not a crash.
    let out = tool("find", &archive, &["--topic", "orders", "--key", "k"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        common::error_line(&out),
        format!(
            "error: {archive}: topic orders has no archived files; the archive holds: nothing yet"
        )
    );
    // A reader that goes away (`rewind ls | head -1`) ends the command quietly, as SIGPIPE would.
    for t in ["ls", "verify"] {
        let mut child = common::tool_command(t, &archive)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(141),
            "{t}: {}",
            common::text(&out.stderr)
        );
        assert!(!common::text(&out.stderr).contains("panicked"), "{t}");
    }
    // An empty archive verifies clean and lists nothing.
    assert!(tool("verify", &archive, &[]).status.success());
    assert_eq!(
        json_of(&tool("ls", &archive, &["--json"]))["topics"],
        serde_json::json!([])
    );
}

/// A partition of `files` old files of 10 records each, written directly (no Kafka), with its
/// checkpoint at the end of file `checkpointed` (none when `None`).
async fn old_partition(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
    p: i32,
    files: i64,
    checkpointed: Option<i64>,
) {
    use rewind::archive::documents::{self, Checkpoint};
    use rewind::archive::time::{rfc3339_millis, HourBucket};
    let old = common::now_ms() - 48 * HOUR;
    let _ = documents::ensure_identity(&**store, "cluster", false, old).await;
    for f in 0..files {
        let records: Vec<Record> = (0..10)
            .map(|i| Record {
                offset: f * 10 + i,
                ..record(Some(b"k"), Some(b"v"), vec![], old + f * 60_000 + i)
            })
            .collect();
        let meta = datafile::file_meta(topic, p, f * 10, f * 10 + 10, &records, "cluster", old);
        let key = DataFileKey {
            topic: topic.to_string(),
            partition: p,
            bucket: HourBucket::of_millis(old + f * 60_000),
            start: f * 10,
            end: None,
        };
        store
            .put(
                &key.to_string(),
                datafile::encode(&meta, &records).unwrap(),
                PutMode::Create,
            )
            .await
            .unwrap();
        if checkpointed == Some(f) {
            let checkpoint = Checkpoint {
                format_version: 1,
                topic: topic.to_string(),
                partition: p,
                end: f * 10 + 10,
                last_file: key.to_string(),
                max_timestamp: None,
                updated_at: rfc3339_millis(old),
            };
            documents::advance_checkpoint(&**store, &checkpoint, f * 10, None)
                .await
                .unwrap();
        }
    }
}

/// Issue 16: `find` on a misspelt topic names the topics the archive holds (as `restore` does),
/// and on a partition the topic lacks, the partitions it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_names_what_the_archive_holds_when_nothing_matches() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, store) = local(&dir.path().join("archive"));
    old_partition(&store, "orders", 0, 1, None).await;
    old_partition(&store, "orders", 2, 1, None).await;
    old_partition(&store, "payments", 0, 1, None).await;
    let out = tool("find", &archive, &["--topic", "ordres", "--key", "k"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        common::error_line(&out),
        format!("error: {archive}: topic ordres has no archived files; the archive holds: orders, payments")
    );
    let out = tool("find", &archive, &["--topic", "orders", "--partition", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        common::error_line(&out),
        format!("error: {archive}: topic orders has no archived files in partition 1; its archived partitions: 0, 2")
    );
    let (got, _, _) = find(&archive, &["--topic", "orders", "--partition", "2"]);
    assert_eq!(got.len(), 10, "the right name finds the records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_passes_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, store) = local(&dir.path().join("archive"));
    // Partition 0: the checkpoint lags two files behind (a sink crashed after uploading them);
    // partition 1: no checkpoint at all; partition 2: checkpointed to the end.
    old_partition(&store, "orders", 0, 5, Some(2)).await;
    old_partition(&store, "orders", 1, 3, None).await;
    old_partition(&store, "orders", 2, 4, Some(3)).await;
    // Partition 3: a gap between its first two files, the checkpoint at the first file's end.
    old_partition(&store, "orders", 3, 3, Some(0)).await;
    let second = files_of(&store, "orders", 3).await[1].clone();
    store.delete(&second).await.unwrap();
    let gap = rewind::archive::documents::Gap {
        topic: "orders".into(),
        partition: 3,
        start: 10,
        end: 20,
        reason: "retention".into(),
        detected_at: "2026-11-24T00:00:00.000Z".into(),
    };
    rewind::archive::documents::record_gap(&*store, &gap)
        .await
        .unwrap();
    // Partition 4: a recorded start no file begins at (stale): left alone, and named by verify.
    old_partition(&store, "orders", 4, 4, Some(3)).await;
    put_json(
        &store,
        "_retention/orders/4.json",
        &chain_start("orders", 4, 15),
    )
    .await;
    // This hand-made archive has no _topics/ document to say the topic is not compacted.
    let out = tool(
        "retention",
        &archive,
        &["--older-than", "1h", "--include-compacted"],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let starts = |files: Vec<String>| -> Vec<i64> {
        files
            .iter()
            .map(|k| DataFileKey::parse(k).unwrap().start)
            .collect()
    };
    // Files up to the checkpoint go; the ones after it, which a restarted sink would walk, stay.
    assert_eq!(starts(files_of(&store, "orders", 0).await), vec![30, 40]);
    assert_eq!(starts(files_of(&store, "orders", 1).await), vec![0, 10, 20]);
    // Never the newest file.
    assert_eq!(starts(files_of(&store, "orders", 2).await), vec![30]);
    // The gap that ends at the new start stays: those offsets were never archived.
    assert_eq!(starts(files_of(&store, "orders", 3).await), vec![20]);
    assert!(store
        .head(&rewind::archive::documents::gap_key("orders", 3, 10))
        .await
        .is_ok());
    assert_eq!(
        starts(files_of(&store, "orders", 4).await),
        vec![0, 10, 20, 30]
    );
    let ls = json_of(&tool("ls", &archive, &["--json"]));
    assert_eq!(ls["topics"][0]["partitions"][3]["start"], 20);
    assert_eq!(
        ls["topics"][0]["partitions"][4]["start"], 0,
        "a stale start is ignored"
    );
    let out = tool("verify", &archive, &["--json"]);
    let report = json_of(&out);
    let problems: Vec<(String, String)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The missing _topics/ document of this hand-made archive, and the stale start.
    assert_eq!(
        problems,
        vec![
            ("topic".to_string(), "_topics/orders.json".to_string()),
            ("start".to_string(), "_retention/orders/4.json".to_string()),
        ],
        "{report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_overtaken_by_retention_stops_with_the_lost_range() {
    let h = history("tools.overtaken").await;
    let dir = tempfile::tempdir().unwrap();
    let (archive, store) = local(&dir.path().join("archive"));
    back_up(&h, store).await;
    let target = common::unique("tools.overtaken-copy");
    let id = common::unique("overtaken");
    let rename = format!("{}={target}", h.topic);
    let args = [
        "--topics",
        &h.topic,
        "--rename",
        &rename,
        "--restore-id",
        &id,
    ];
    // Killed inside its first transaction: its plan (from offset 0) is committed, no record is.
    assert!(
        common::kill_at_failpoint(
            common::restore_command(&archive).args(args),
            "restore-before-commit"
        ),
        "the restore reached its first commit"
    );
    // Retention deletes the oldest files under it; resuming must not skip them silently.
    let out = tool("retention", &archive, &["--older-than", "3h"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let out = common::restore_command(&archive)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stderr));
    let error = common::error_line(&out);
    assert!(
        error.contains("are no longer in the archive") && error.contains("[0, "),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_is_clean_while_a_sink_writes() {
    let topic = common::unique("tools.live");
    create_topic(&topic, 2, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (archive, _) = local(&dir.path().join("archive"));
    let mut sink = common::sink_command(&archive, &topic, &common::unique("live"))
        .env("REWIND__SINK__MAX_FILE_RECORDS", "5")
        .env("REWIND__SINK__MAX_FILE_AGE", "1s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Traffic for the whole test, so files and checkpoints move while verify reads.
    let producing = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            let until = std::time::Instant::now() + Duration::from_secs(8);
            while std::time::Instant::now() < until {
                for p in 0..2 {
                    let batch: Vec<Record> = (0..7)
                        .map(|i| record(Some(b"k"), Some(b"v"), vec![], common::now_ms() + i))
                        .collect();
                    produce(&topic, p, &batch).await;
                    sent += 7;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !dir.path().join("archive/_archive.json").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut runs = 0;
    while !producing.is_finished() {
        let archive = archive.clone();
        let out = tokio::task::spawn_blocking(move || tool("verify", &archive, &["--json"]))
            .await
            .unwrap();
        let report = json_of(&out);
        assert!(
            out.status.success(),
            "verify during a live backup: {report:#}"
        );
        runs += 1;
    }
    let sent = producing.await.unwrap();
    assert!(runs >= 3, "{runs} verify runs");
    // The sink drains what it has consumed when stopped; give it time to consume the last batch
    // (files close after a second), so that stopping it does not race the last records.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while json_of(&tool("verify", &archive, &["--json"]))["records"] != sent
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &sink.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(sink.wait().unwrap().success());
    let report = json_of(&tool("verify", &archive, &["--json", "--deep"]));
    assert_eq!(report["clean"], true, "{report:#}");
    assert_eq!(report["records"], sent, "everything sent is archived once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plain_copy_is_still_checked_by_verify_deep() {
    let h = history("tools.plaincopy").await;
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    let (_, store) = local(&clean);
    back_up(&h, store.clone()).await;
    let files = files_of(&store, &h.topic, 1).await;

    // Unharmed, a plain copy verifies clean: every file is checked by the checksum inside it.
    let (archive, _) = plain_copy(&clean, &dir.path().join("copy"));
    let out = tool("verify", &archive, &["--deep", "--json"]);
    let report = json_of(&out);
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report:#}");
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["kind"] != "checksum"),
        "{report:#}"
    );

    // One flipped bit inside a value of a plain copy: the file still decodes, but --deep names it.
    let (archive, _) = plain_copy(&clean, &dir.path().join("flipped"));
    flip_inside(
        &Path::new(&archive["file://".len()..]).join(&files[0]),
        b"value 1/",
    );
    assert_named(&archive, &["--deep"], &files[0], "checksum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn find_refuses_a_damaged_file() {
    let h = history("tools.finddamage").await;
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    let (_, store) = local(&clean);
    back_up(&h, store.clone()).await;
    let files = files_of(&store, &h.topic, 1).await;
    let key = String::from_utf8(key_of(1, 2).unwrap()).unwrap();

    // A plain copy (no stored checksums) with a flipped bit inside a value of the file that holds
    // the record looked up.
    let (archive, _) = plain_copy(&clean, &dir.path().join("flipped"));
    let (want, _, _) = find(
        &archive,
        &["--topic", &h.topic, "--partition", "1", "--key", &key],
    );
    assert_eq!(
        want,
        expected(&h, |r| r.key.as_deref() == Some(key.as_bytes()))
            .into_iter()
            .filter(|(p, _)| *p == 1)
            .collect()
    );
    flip_inside(
        &Path::new(&archive["file://".len()..]).join(&files[0]),
        b"value 1/",
    );
    let out = tool(
        "find",
        &archive,
        &["--topic", &h.topic, "--partition", "1", "--key", &key],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "find returned {}",
        common::text(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "{}", common::text(&out.stdout));
    let error = common::error_line(&out);
    assert!(
        error.contains(&files[0]) && error.contains("damaged"),
        "{error}"
    );
    // The same with the stored checksums kept (cp -a): the store's checksum refuses it too.
    let (archive, _) = copy_archive(&clean, &dir.path().join("kept"));
    flip_inside(
        &Path::new(&archive["file://".len()..]).join(&files[0]),
        b"value 1/",
    );
    let out = tool(
        "find",
        &archive,
        &["--topic", &h.topic, "--partition", "1", "--key", &key],
    );
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stdout));
    assert!(common::error_line(&out).contains(&files[0]));
}

/// A local archive made by hand (no Kafka): for each (topic, cleanup.policy), three files of
/// partition 0, ten records each, all ten days old, and a checkpoint past them.
async fn old_archive(root: &Path, topics: &[(&str, &str)]) -> (String, Arc<dyn ObjectStore>) {
    let (archive, store) = local(root);
    let identity = serde_json::json!({"format_version": 1, "created_at": "2026-11-24T00:00:00.000Z",
        "cluster_id": "c", "writer": "test"});
    put_json(&store, "_archive.json", &identity).await;
    let old = (common::now_ms() / HOUR - 240) * HOUR;
    for (topic, policy) in topics {
        let doc = serde_json::json!({"topic": topic, "partitions": 1, "replication_factor": 1,
            "configs": {"cleanup.policy": policy}, "updated_at": "2026-11-24T00:00:00.000Z"});
        put_json(&store, &rewind::archive::paths::topic_key(topic), &doc).await;
        let mut last = String::new();
        for f in 0..3i64 {
            let records: Vec<Record> = (f * 10..f * 10 + 10)
                .map(|o| Record {
                    offset: o,
                    timestamp: Some(old + o),
                    timestamp_type: Some(rewind::archive::TimestampType::Create),
                    key: Some(format!("k{o}").into_bytes()),
                    value: Some(b"v".to_vec()),
                    headers: vec![],
                })
                .collect();
            let meta = datafile::file_meta(topic, 0, f * 10, f * 10 + 10, &records, "c", old);
            let key = DataFileKey {
                topic: topic.to_string(),
                partition: 0,
                bucket: rewind::archive::time::HourBucket::of_millis(old),
                start: f * 10,
                end: None,
            }
            .to_string();
            store
                .put(
                    &key,
                    datafile::encode(&meta, &records).unwrap(),
                    PutMode::Create,
                )
                .await
                .unwrap();
            last = key;
        }
        let checkpoint = serde_json::json!({"format_version": 1, "topic": topic, "partition": 0,
            "end": 30, "last_file": last, "max_timestamp": old + 29,
            "updated_at": "2026-11-24T00:00:00.000Z"});
        put_json(
            &store,
            &rewind::archive::paths::checkpoint_key(topic, 0),
            &checkpoint,
        )
        .await;
    }
    (archive, store)
}

#[tokio::test]
async fn retention_leaves_compacted_topics_alone_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, store) = old_archive(
        dir.path(),
        &[("plain", "delete"), ("compacted", "compact,delete")],
    )
    .await;
    let deleted = |report: &Value| -> BTreeSet<String> {
        report["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["topic"].as_str().unwrap().to_string())
            .collect()
    };
    // A dry run says what it leaves out, in JSON and in text.
    let out = tool(
        "retention",
        &archive,
        &["--older-than", "1d", "--dry-run", "--json"],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let dry = json_of(&out);
    assert_eq!(
        deleted(&dry),
        BTreeSet::from(["plain".to_string()]),
        "{dry:#}"
    );
    assert_eq!(
        dry["skipped_compacted"],
        serde_json::json!(["compacted"]),
        "{dry:#}"
    );
    let out = tool("retention", &archive, &["--older-than", "1d", "--dry-run"]);
    let text = common::text(&out.stdout);
    assert!(
        text.contains("compacted") && text.contains("--include-compacted"),
        "{text}"
    );
    // The real run deletes from the other topic only.
    let out = tool("retention", &archive, &["--older-than", "1d", "--json"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert_eq!(files_of(&store, "compacted", 0).await.len(), 3);
    assert_eq!(files_of(&store, "plain", 0).await.len(), 1);
    // Asked for, compacted topics get retention like any other.
    let out = tool(
        "retention",
        &archive,
        &["--older-than", "1d", "--include-compacted", "--json"],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let report = json_of(&out);
    assert_eq!(deleted(&report), BTreeSet::from(["compacted".to_string()]));
    assert_eq!(report["skipped_compacted"], serde_json::json!([]));
    assert_eq!(files_of(&store, "compacted", 0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_and_ls_name_a_partition_the_archive_lacks() {
    // Four partitions, the last never written to: an empty partition is not a missing one.
    let topic = common::unique("tools.missing");
    create_topic(&topic, 4, &[]).await;
    for p in 0..3 {
        let batch: Vec<Record> = (0..5)
            .map(|i| record(Some(b"k"), Some(b"v"), vec![], common::now_ms() - i))
            .collect();
        produce(&topic, p, &batch).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (archive, store) = local(&dir.path().join("archive"));
    let out = common::sink_command(&archive, &topic, &common::unique("missing"))
        .arg("--once")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let out = tool("verify", &archive, &["--json"]);
    let report = json_of(&out);
    assert_eq!(report["clean"], true, "{report:#}");
    let ls = json_of(&tool("ls", &archive, &["--json"]));
    assert_eq!(
        ls["topics"][0]["missing_partitions"],
        serde_json::json!([]),
        "{ls:#}"
    );

    // Partition 1 as a sink of another archive in the same group would have left it: never
    // archived here (no file, no checkpoint), though `_topics/` says the topic has it.
    for key in files_of(&store, &topic, 1).await {
        store.delete(&key).await.unwrap();
    }
    store
        .delete(&format!("_checkpoints/{topic}/1.json"))
        .await
        .unwrap();
    let out = tool("verify", &archive, &["--json"]);
    let report = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report:#}");
    assert_eq!(problems[0]["kind"], "missing_partition", "{report:#}");
    assert_eq!(problems[0]["topic"], topic.as_str(), "{report:#}");
    assert_eq!(problems[0]["partition"], 1, "{report:#}");
    assert_eq!(
        problems[0]["key"],
        format!("_topics/{topic}.json"),
        "{report:#}"
    );

    let ls = json_of(&tool("ls", &archive, &["--json"]));
    assert_eq!(
        ls["topics"][0]["missing_partitions"],
        serde_json::json!([1]),
        "{ls:#}"
    );
    let out = tool("ls", &archive, &[]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let table = common::text(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&topic) && l.contains(" 1 ") && l.contains("missing")),
        "{table}"
    );
}

/// Issue 19, from an adversarial review: `rewind compact` runs while `rewind retention` holds its
/// plan. The compaction merges the files retention is about to cut through into one that holds
/// the new start, and hands it the claims of their starts; retention then records its start and
/// deletes what it planned, but keeps those claims, so no late worker can claim a start the
/// compacted file holds. The archive verifies, and restores from the compacted file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_claims_of_a_compaction_that_ran_meanwhile() {
    let topic = common::unique("race");
    create_topic(&topic, 1, &[]).await;
    // An hour 30 hours ago, a record a minute, then one record now (the chain's newest file).
    let hour = (common::now_ms() / HOUR - 30) * HOUR;
    let mut records: Vec<Record> = (0..60)
        .map(|i| {
            record(
                Some(b"k"),
                Some(format!("v{i}").as_bytes()),
                vec![],
                hour + i * 60_000,
            )
        })
        .collect();
    records.push(record(Some(b"k"), Some(b"now"), vec![], common::now_ms()));
    produce(&topic, 0, &records).await;
    let dir = tempfile::tempdir().unwrap();
    let (archive, store) = local(dir.path());
    let out = common::sink_command(&archive, &topic, &common::unique("g"))
        .arg("--once")
        .env("REWIND__SINK__MAX_FILE_RECORDS", "5")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert_eq!(files_of(&store, &topic, 0).await.len(), 13);
    // Retention cuts the hour in the middle: its files up to the one ending with minute 29.
    let older = (common::now_ms() - (hour + 30 * 60_000)) / 1000;
    let mut retention = common::tool_command("retention", &archive);
    retention
        .args(["--older-than", &format!("{older}s"), "--include-compacted"])
        .env("REWIND_FAILPOINT", "retention-stall-after-plan")
        .env("REWIND_FAILPOINT_STALL_MS", "6000");
    let mut running = common::watched::Watched::start(&mut retention);
    assert!(
        running.wait_for(
            "failpoint retention-stall-after-plan reached",
            Duration::from_secs(60)
        ),
        "{}",
        running.stderr()
    );
    let out = tool("compact", &archive, &["--settle", "0s", "--json"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let out = running.finish();
    assert!(out.status.success(), "{}", common::text(&out.stderr));

    // The compacted file holds [0, 60) and the recorded start (30); its claim stayed with it.
    let keys = files_of(&store, &topic, 0).await;
    let merged = DataFileKey::parse(&keys[0]).unwrap();
    assert_eq!((merged.start, merged.end), (0, Some(60)), "{keys:?}");
    let claim = rewind::archive::documents::read_claim(&*store, &topic, 0, 0)
        .await
        .unwrap()
        .expect("the claim of the compacted file's start is kept");
    assert_eq!(claim.key, keys[0]);
    let out = tool("verify", &archive, &["--json"]);
    assert!(
        out.status.success(),
        "{}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    let offsets: Vec<i64> = common::archive::chain(&store, &topic, 0)
        .await
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(offsets, (0..61).collect::<Vec<_>>());
}
