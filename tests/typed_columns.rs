//! Issue 19, part 2: typed columns. A sink with `[sink.decode]` rules decodes keys and values with
//! the test bed's Schema Registry (Apicurio, Confluent-compatible API) — Avro, JSON Schema and
//! Protobuf in the wire format — and plain JSON with a declared JSON Schema, into `key_decoded` and
//! `value_decoded` beside the raw bytes. Checked on the real broker:
//!
//! - DuckDB (PyPI) reads each data file's typed columns, equal to the values the test encoded;
//!   pyiceberg reads them through the topic's Iceberg table, equal too;
//! - a compatible schema change (a new field, `int` to `long`) joins one file; an incompatible one
//!   (a field's type changed) opens a new file, and the table drops that field and stays readable;
//! - records that do not decode (not framed, an unknown id, broken bytes) are archived raw and
//!   counted in the file's footer;
//! - `rewind compact` keeps the typed columns (decoded again from the schemas in the footers);
//! - a restore of the archive lands every byte as it was produced.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use apache_avro::types::Value as Avro;
use common::kafka;
use common::registry::{framed, register, registry_url};
use rewind::archive::Record;
use rewind::storage::{LocalStore, ObjectStore, StorageUrl};
use serde_json::{json, Value};

const ORDER_V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"long"},{"name":"amount","type":"int"},
    {"name":"tags","type":{"type":"array","items":"string"}},
    {"name":"note","type":["null","string"],"default":null}]}"#;
const ORDER_V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"long"},{"name":"amount","type":"long"},
    {"name":"tags","type":{"type":"array","items":"string"}},
    {"name":"note","type":["null","string"],"default":null},
    {"name":"currency","type":["null","string"],"default":null}]}"#;
/// `amount` changed to a string: incompatible with the others.
const ORDER_TEXT: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"long"},{"name":"amount","type":"string"}]}"#;
const KEY_SCHEMA: &str = r#"{"type":"object","properties":{"id":{"type":"integer"}}}"#;
const PROTO: &str = r#"syntax = "proto3";
package shop;
message Line { string sku = 1; repeated int32 qty = 2; Status status = 3; optional string note = 4; }
enum Status { NEW = 0; PAID = 1; }
"#;
const DECLARED: &str = r#"{"type":"object","properties":{
    "user":{"type":"string"},"score":{"type":"number"},"at":{"type":"string","format":"date-time"}}}"#;

/// Each data file's typed columns, by offset: `{offset: [{"file", "key", "value"}, ...]}`.
const DUCKDB: &str = r#"
import duckdb, glob, json, sys
root = sys.argv[1]
c = duckdb.connect()
out = {}
for f in sorted(glob.glob(root + "/**/*.parquet", recursive=True)):
    cols = [r[0] for r in c.execute("DESCRIBE SELECT * FROM read_parquet(?)", [f]).fetchall()]
    k = "to_json(key_decoded)" if "key_decoded" in cols else "NULL"
    v = "to_json(value_decoded)" if "value_decoded" in cols else "NULL"
    for o, kd, vd in c.execute(f'SELECT "offset", {k}, {v} FROM read_parquet(?)', [f]).fetchall():
        out.setdefault(str(o), []).append({
            "file": f, "key": None if kd is None else json.loads(kd),
            "value": None if vd is None else json.loads(vd)})
print(json.dumps(out))
"#;

/// The topic's Iceberg table as pyiceberg reads it: typed columns by offset, and the schema.
const PYICEBERG: &str = r#"
import json, sys
from pyiceberg.table import StaticTable
table = StaticTable.from_metadata(sys.argv[1])
t = table.scan().to_arrow()
names = t.column_names
col = lambda n: t[n].to_pylist() if n in names else [None] * t.num_rows
rows = {str(o): {"key": k, "value": v}
        for o, k, v in zip(t["offset"].to_pylist(), col("key_decoded"), col("value_decoded"))}
print(json.dumps({"rows": rows, "schema": str(table.schema()),
                  "properties": dict(table.properties)}, default=str))
"#;

fn avro(schema: &str, fields: Vec<(&str, Avro)>) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(schema).unwrap();
    let value = Avro::Record(fields.into_iter().map(|(k, v)| (k.into(), v)).collect());
    apache_avro::to_avro_datum(&schema, value).unwrap()
}

/// An `ORDER_V1` value.
fn order_v1(id: i64, amount: i32, tags: &[&str], note: Option<&str>) -> Vec<u8> {
    let tags = tags.iter().map(|t| Avro::String(t.to_string())).collect();
    let note = note.map_or_else(none, |n| some(Avro::String(n.into())));
    avro(
        ORDER_V1,
        vec![
            ("id", Avro::Long(id)),
            ("amount", Avro::Int(amount)),
            ("tags", Avro::Array(tags)),
            ("note", note),
        ],
    )
}

fn some(v: Avro) -> Avro {
    Avro::Union(1, Box::new(v))
}

fn none() -> Avro {
    Avro::Union(0, Box::new(Avro::Null))
}

fn duckdb(dir: &std::path::Path, topic: &str) -> BTreeMap<i64, Vec<Value>> {
    let python = common::venv_python("REWIND_TEST_PYTHON", "duckdb.sh");
    let root = dir.join("data").join(format!("topic={topic}"));
    let found = common::python_json(&python, DUCKDB, &[root.to_str().unwrap()]);
    found
        .as_object()
        .unwrap()
        .iter()
        .map(|(o, rows)| (o.parse().unwrap(), rows.as_array().unwrap().clone()))
        .collect()
}

fn pyiceberg(location: &str) -> Value {
    let python = common::venv_python("REWIND_TEST_PYICEBERG", "pyiceberg.sh");
    common::python_json(&python, PYICEBERG, &[location])
}

/// Whether `actual` (a decoded struct as an engine shows it) holds `expected`: the same value in
/// every field `expected` names, and nothing but nulls in fields it does not (fields a file or
/// table has for other schemas).
fn holds(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            e.iter()
                .all(|(k, v)| holds(a.get(k).unwrap_or(&Value::Null), v))
                && a.iter().all(|(k, v)| e.contains_key(k) || v.is_null())
        }
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(a, e)| holds(a, e))
        }
        (Value::Number(a), Value::Number(e)) => a.as_f64() == e.as_f64(),
        (a, e) => a == e,
    }
}

fn sink(archive: &str, topics: &[&str], config: &str) {
    sink_closing_after(archive, topics, config, 4);
}

/// `rewind sink --once` of `topics` with `config`, closing a file every `max_records` records.
fn sink_closing_after(archive: &str, topics: &[&str], config: &str, max_records: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rewind.toml");
    std::fs::write(&path, config).unwrap();
    let pattern = topics
        .iter()
        .map(|t| regex::escape(t))
        .collect::<Vec<_>>()
        .join("|");
    let out = common::tool_command("sink", archive)
        .args([
            "--topics",
            &pattern,
            "--group",
            &common::unique("g"),
            "--once",
        ])
        .arg("--config")
        .arg(&path)
        .env("REWIND__SINK__MAX_FILE_RECORDS", max_records.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
}

fn tables_sync(archive: &str, topic: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(["tables", "sync", "--archive", archive, "--json", "--topics"])
        .arg(regex::escape(topic))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    reports[0]["metadata"].as_str().unwrap().to_string()
}

/// The `rewind.decoded` footers of a topic's data files, in key order.
async fn specs(
    store: &Arc<dyn ObjectStore>,
    topic: &str,
) -> Vec<(String, rewind::archive::typed::Spec)> {
    let mut out = Vec::new();
    for key in store
        .list(&format!("data/topic={topic}/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
    {
        let body = store.get(&key).await.unwrap().body;
        let spec = rewind::archive::datafile::typed_spec(&body).unwrap();
        out.push((key, spec.unwrap_or_default()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_columns_equal_the_decoded_values_in_duckdb_and_pyiceberg() {
    common::no_instance_metadata();
    let url = registry_url();
    let prefix = common::unique("typed");
    let orders = format!("{prefix}-orders");
    let changes = format!("{prefix}-changes");
    let lines = format!("{prefix}-lines");
    let plain = format!("{prefix}-plain");
    for t in [&orders, &changes, &lines, &plain] {
        kafka::create_topic(t, 1, &[]).await;
    }
    let v1 = register(&url, &format!("{orders}-value"), ORDER_V1, "AVRO");
    let v2 = register(&url, &format!("{orders}-value"), ORDER_V2, "AVRO");
    let k1 = register(&url, &format!("{orders}-key"), KEY_SCHEMA, "JSON");
    let c1 = register(&url, &format!("{changes}-value"), ORDER_V1, "AVRO");
    let c2 = register(&url, &format!("{changes}-value-text"), ORDER_TEXT, "AVRO");
    let p1 = register(&url, &format!("{lines}-value"), PROTO, "PROTOBUF");

    // `orders`: two hours ago, Avro v1 then v2 (a new field, int widened to long), with JSON
    // Schema keys, and four values that do not decode; then one record now, which closes the hour
    // for compaction.
    let hour_ago = common::now_ms() - 2 * 3_600_000;
    let mut records = Vec::new();
    let mut expected: BTreeMap<i64, (Value, Value)> = BTreeMap::new();
    for i in 0..10i64 {
        let key = framed(k1, format!("{{\"id\":{i}}}").as_bytes());
        let (value, decoded) = if i < 5 {
            let v = order_v1(i, i as i32 * 10, &[&format!("t{i}")], None);
            let d = json!({"id": i, "amount": i * 10, "tags": [format!("t{i}")], "note": null});
            (framed(v1, &v), d)
        } else {
            let v = avro(
                ORDER_V2,
                vec![
                    ("id", Avro::Long(i)),
                    ("amount", Avro::Long((1 << 33) + i)),
                    ("tags", Avro::Array(vec![])),
                    ("note", some(Avro::String(format!("n{i}")))),
                    ("currency", some(Avro::String("EUR".into()))),
                ],
            );
            let d = json!({"id": i, "amount": (1i64 << 33) + i, "tags": [], "note": format!("n{i}"), "currency": "EUR"});
            (framed(v2, &v), d)
        };
        records.push(kafka::record(
            Some(&key),
            Some(&value),
            vec![],
            hour_ago + i,
        ));
        expected.insert(i, (json!({"id": i}), decoded));
    }
    let undecodable = [
        None,                                 // a tombstone: null, and no failure
        Some(b"not framed".to_vec()),         // not_framed
        Some(framed(2_000_000_000, &[2, 4])), // unknown_schema
        Some(framed(v1, &[0xff, 0xff])),      // undecodable
    ];
    for (i, value) in undecodable.iter().enumerate() {
        let key = framed(k1, b"{\"id\":-1}");
        records.push(kafka::record(
            Some(&key),
            value.as_deref(),
            vec![],
            hour_ago + 10 + i as i64,
        ));
        expected.insert(10 + i as i64, (json!({"id": -1}), Value::Null));
    }
    let last = order_v1(14, 140, &[], Some("now"));
    records.push(kafka::record(
        None,
        Some(&framed(v1, &last)),
        vec![],
        common::now_ms(),
    ));
    expected.insert(
        14,
        (
            Value::Null,
            json!({"id": 14, "amount": 140, "tags": [], "note": "now"}),
        ),
    );
    let produced = kafka::produce(&orders, 0, &records).await;

    // `changes`: v1, then `amount` as a string, then v1 again: three files.
    let now = common::now_ms();
    let mut change_records = Vec::new();
    for i in 0..7i64 {
        let value = if (3..5).contains(&i) {
            framed(
                c2,
                &avro(
                    ORDER_TEXT,
                    vec![
                        ("id", Avro::Long(i)),
                        ("amount", Avro::String(format!("{i}.50"))),
                    ],
                ),
            )
        } else {
            framed(c1, &order_v1(i, i as i32, &[], None))
        };
        // In the closed hour, so that compaction considers them (and must leave them apart).
        change_records.push(kafka::record(None, Some(&value), vec![], hour_ago + i));
    }
    // One more now, which closes the hour.
    let closing = framed(
        c2,
        &avro(
            ORDER_TEXT,
            vec![
                ("id", Avro::Long(7)),
                ("amount", Avro::String("7.50".into())),
            ],
        ),
    );
    change_records.push(kafka::record(None, Some(&closing), vec![], now));
    kafka::produce(&changes, 0, &change_records).await;

    // `lines`: Protobuf, the file's first message (the single index byte 0).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("line.proto"), PROTO).unwrap();
    let mut compiler = protox::Compiler::new([dir.path()]).unwrap();
    compiler.open_file("line.proto").unwrap();
    let line = compiler
        .descriptor_pool()
        .get_message_by_name("shop.Line")
        .unwrap();
    let mut proto_records = Vec::new();
    for i in 0..3i32 {
        use prost::Message as _;
        let mut m = prost_reflect::DynamicMessage::new(line.clone());
        m.set_field_by_name("sku", prost_reflect::Value::String(format!("s{i}")));
        m.set_field_by_name(
            "qty",
            prost_reflect::Value::List(vec![
                prost_reflect::Value::I32(i),
                prost_reflect::Value::I32(7),
            ]),
        );
        m.set_field_by_name("status", prost_reflect::Value::EnumNumber(i % 2));
        if i == 2 {
            m.set_field_by_name("note", prost_reflect::Value::String("x".into()));
        }
        let mut body = vec![0u8];
        body.extend(m.encode_to_vec());
        proto_records.push(kafka::record(
            None,
            Some(&framed(p1, &body)),
            vec![],
            now + i64::from(i),
        ));
    }
    kafka::produce(&lines, 0, &proto_records).await;

    // `plain`: JSON without framing, with a declared JSON Schema.
    let plain_records = vec![
        kafka::record(
            None,
            Some(br#"{"user":"ann","score":1.5,"at":"2026-12-05T10:00:00.250Z"}"#),
            vec![],
            now,
        ),
        kafka::record(
            None,
            Some(br#"{"user":"bob","score":3,"extra":true}"#),
            vec![],
            now + 1,
        ),
        kafka::record(None, Some(b"{broken"), vec![], now + 2),
    ];
    kafka::produce(&plain, 0, &plain_records).await;

    let archive_dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", archive_dir.path().display());
    let config = format!(
        "[sink.decode]\nregistry = \"{url}\"\n\n[[sink.decode.topics]]\ntopics = '{}'\nvalue = \"registry\"\nkey = \"registry\"\n\n[[sink.decode.topics]]\ntopics = '{}'\nvalue = \"json\"\nvalue_schema = '''{DECLARED}'''\n",
        [&orders, &changes, &lines].map(|t| regex::escape(t)).join("|"),
        regex::escape(&plain),
    );
    sink(&archive, &[&orders, &changes, &lines, &plain], &config);
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalStore::open(StorageUrl::parse(&archive).unwrap()).unwrap());

    // DuckDB, file by file: every typed key and value as encoded.
    let check_orders = |found: &BTreeMap<i64, Vec<Value>>| {
        assert_eq!(found.len(), expected.len(), "{found:?}");
        for (offset, (key, value)) in &expected {
            let rows = &found[offset];
            assert_eq!(rows.len(), 1, "offset {offset} in one file: {rows:?}");
            assert!(
                holds(&rows[0]["key"], key),
                "key at {offset}: {} vs {key}",
                rows[0]["key"]
            );
            assert!(
                holds(&rows[0]["value"], value),
                "value at {offset}: {} vs {value}",
                rows[0]["value"]
            );
        }
    };
    check_orders(&duckdb(archive_dir.path(), &orders));
    // What did not decode is counted in the footers; the tombstone is not a failure.
    let footers = specs(&store, &orders).await;
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut decoded = 0;
    for (_, spec) in &footers {
        let value = spec
            .value
            .as_ref()
            .expect("every file has the value column");
        decoded += value.decoded;
        for (why, n) in &value.failed {
            *failed.entry(why.clone()).or_default() += n;
        }
    }
    assert_eq!(decoded, 11);
    assert_eq!(
        failed,
        BTreeMap::from([
            ("not_framed".to_string(), 1),
            ("undecodable".to_string(), 1),
            ("unknown_schema".to_string(), 1)
        ])
    );

    // A field's changed type opened a new file each time; each file is typed as its records.
    let changed = duckdb(archive_dir.path(), &changes);
    let file_of = |o: i64| changed[&o][0]["file"].as_str().unwrap().to_string();
    assert_eq!(file_of(0), file_of(2));
    assert_ne!(file_of(2), file_of(3));
    assert_eq!(file_of(3), file_of(4));
    assert_ne!(file_of(4), file_of(5));
    assert_eq!(changed[&3][0]["value"], json!({"id": 3, "amount": "3.50"}));
    assert!(holds(
        &changed[&5][0]["value"],
        &json!({"id": 5, "amount": 5, "tags": [], "note": null})
    ));

    let lines_found = duckdb(archive_dir.path(), &lines);
    for i in 0..3i64 {
        let note = if i == 2 { json!("x") } else { Value::Null };
        let status = if i % 2 == 1 { "PAID" } else { "NEW" };
        let want = json!({"sku": format!("s{i}"), "qty": [i, 7], "status": status, "note": note});
        assert!(
            holds(&lines_found[&i][0]["value"], &want),
            "{}",
            lines_found[&i][0]["value"]
        );
    }
    let plain_found = duckdb(archive_dir.path(), &plain);
    // DuckDB prints the timestamp the declared `date-time` became in its own form.
    assert_eq!(
        plain_found[&0][0]["value"],
        json!({"user": "ann", "score": 1.5, "at": "2026-12-05 10:00:00.25+00"})
    );
    assert!(holds(
        &plain_found[&1][0]["value"],
        &json!({"user": "bob", "score": 3.0, "at": null})
    ));
    assert_eq!(plain_found[&2][0]["value"], Value::Null);

    // pyiceberg, through the table: the same values.
    let check_table = |table: &Value| {
        let rows = table["rows"].as_object().unwrap();
        assert_eq!(rows.len(), expected.len());
        for (offset, (key, value)) in &expected {
            let row = &rows[&offset.to_string()];
            assert!(
                holds(&row["key"], key),
                "key at {offset}: {} vs {key}",
                row["key"]
            );
            assert!(
                holds(&row["value"], value),
                "value at {offset}: {} vs {value}",
                row["value"]
            );
        }
    };
    let location = tables_sync(&archive, &orders);
    check_table(&pyiceberg(&location));

    // The table of `changes` dropped `amount` (it changed type) and reads the rest.
    let changes_table = pyiceberg(&tables_sync(&archive, &changes));
    let dropped: Value = serde_json::from_str(
        changes_table["properties"]["rewind.typed.dropped"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(dropped.get("value_decoded.amount").is_some(), "{dropped}");
    for i in 0..7i64 {
        let row = &changes_table["rows"][&i.to_string()]["value"];
        assert_eq!(row["id"], json!(i), "{row}");
        assert!(row.get("amount").is_none(), "{row}");
    }

    // Compaction merges the closed hour of `orders` and keeps every typed value and count.
    let out = common::tool_command("compact", &archive)
        .args(["--settle", "0s", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    // The hour of `changes` holds files typed differently: compaction leaves them as they are.
    let changes_after = duckdb(archive_dir.path(), &changes);
    assert_eq!(
        changes_after, changed,
        "the hour of differently typed files was not merged"
    );
    let after = specs(&store, &orders).await;
    assert_eq!(
        after.len(),
        2,
        "the hour became one file: {:?}",
        after.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let compacted = after[0].1.value.as_ref().unwrap();
    assert_eq!(compacted.decoded, 10);
    assert_eq!(compacted.failed.values().sum::<u64>(), 3);
    check_orders(&duckdb(archive_dir.path(), &orders));
    check_table(&pyiceberg(&tables_sync(&archive, &orders)));

    // The raw columns stay the source of truth: a restore lands every byte as produced.
    let target = format!("{orders}-restored");
    let out = common::restore_command(&archive)
        .args(["--topics", &regex::escape(&orders), "--rename"])
        .arg(format!("{orders}={target}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let restored: Vec<Record> = kafka::read_to_end(&target, 0)
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(restored.len(), produced.len());
    for (r, p) in restored.iter().zip(&produced) {
        assert_eq!(
            (&r.key, &r.value, &r.headers, r.timestamp),
            (&p.key, &p.value, &p.headers, p.timestamp)
        );
    }
}

/// A registry that does not answer never holds the backup up: every record is archived raw,
/// counted as `unknown_schema`, and restores byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_registry_the_sink_archives_every_record_raw() {
    common::no_instance_metadata();
    let topic = common::unique("typed-down");
    kafka::create_topic(&topic, 1, &[]).await;
    let now = common::now_ms();
    let records: Vec<Record> = (0..20u32)
        .map(|i| {
            let value = framed(1000 + i % 3, format!("payload {i}").as_bytes());
            kafka::record(Some(b"k"), Some(&value), vec![], now + i64::from(i))
        })
        .collect();
    let produced = kafka::produce(&topic, 0, &records).await;
    let archive_dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", archive_dir.path().display());
    let nobody = common::http::free_addr();
    let config = format!(
        "[sink.decode]\nregistry = \"http://{nobody}/apis/ccompat/v7\"\n\n[[sink.decode.topics]]\ntopics = '{}'\nvalue = \"registry\"\n",
        regex::escape(&topic)
    );
    sink(&archive, &[&topic], &config);
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalStore::open(StorageUrl::parse(&archive).unwrap()).unwrap());
    let archived = common::archive::chain(&store, &topic, 0).await;
    assert_eq!(archived, produced);
    let mut unknown = 0;
    for (_, spec) in specs(&store, &topic).await {
        let value = spec.value.unwrap();
        assert_eq!(value.decoded, 0);
        unknown += value.failed["unknown_schema"];
    }
    assert_eq!(unknown, 20);
}

/// Decode settings that cannot work are refused before anything runs, in one sentence each.
#[test]
fn decode_settings_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (config, says) in [
        (
            "[[sink.decode.topics]]\ntopics = 'orders'\nvalue = \"registry\"\n",
            "sink.decode.registry",
        ),
        (
            "[[sink.decode.topics]]\ntopics = 'orders'\nvalue = \"json\"\n",
            "value_schema",
        ),
        (
            "[[sink.decode.topics]]\ntopics = 'orders'\nvalue = \"json\"\nvalue_schema = \"/nonexistent/schema.json\"\n",
            "/nonexistent/schema.json",
        ),
        (
            "[[sink.decode.topics]]\ntopics = 'orders'\nvalue = \"json\"\nvalue_schema = '{not json'\n",
            "not a JSON Schema",
        ),
        (
            "[sink.decode]\nregistry = \"ftp://registry\"\n",
            "sink.decode.registry",
        ),
        (
            "[[sink.decode.topics]]\ntopics = 'orders('\nvalue = \"json\"\nvalue_schema = '{}'\n",
            "sink.decode.topics[0].topics",
        ),
        (
            "[[sink.decode.topics]]\ntopics = 'orders'\nvalue = \"avro\"\n",
            "sink.decode",
        ),
    ] {
        let path = dir.path().join("rewind.toml");
        std::fs::write(&path, format!("archive = \"file:///tmp/none\"\n{config}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rewind"))
            .args(["sink", "--once", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = common::text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config}: {err}");
        assert!(err.contains(says), "{config}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Schemas that alternate (two event types sharing a field name of different types) open new files
/// only a few times: after that, records join the open file, and those that cannot join its columns
/// are archived raw and counted `incompatible`. Nothing is lost either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_schemas_roll_a_few_files_then_join_untyped() {
    common::no_instance_metadata();
    let url = registry_url();
    let topic = common::unique("typed-flip");
    kafka::create_topic(&topic, 1, &[]).await;
    let a = register(&url, &format!("{topic}-value"), ORDER_V1, "AVRO");
    let b = register(&url, &format!("{topic}-other"), ORDER_TEXT, "AVRO");
    let now = common::now_ms();
    let records: Vec<Record> = (0..20i64)
        .map(|i| {
            let value = if i % 2 == 0 {
                framed(a, &order_v1(i, 1, &[], None))
            } else {
                framed(
                    b,
                    &avro(
                        ORDER_TEXT,
                        vec![("id", Avro::Long(i)), ("amount", Avro::String("x".into()))],
                    ),
                )
            };
            kafka::record(None, Some(&value), vec![], now + i)
        })
        .collect();
    let produced = kafka::produce(&topic, 0, &records).await;
    let archive_dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", archive_dir.path().display());
    let config = format!(
        "[sink.decode]\nregistry = \"{url}\"\n\n[[sink.decode.topics]]\ntopics = '{}'\nvalue = \"registry\"\n",
        regex::escape(&topic)
    );
    sink_closing_after(&archive, &[&topic], &config, 1000);
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalStore::open(StorageUrl::parse(&archive).unwrap()).unwrap());
    assert_eq!(common::archive::chain(&store, &topic, 0).await, produced);
    let files = specs(&store, &topic).await;
    // Three schema rolls (the burst), then the rest in the fourth file.
    assert_eq!(
        files.len(),
        4,
        "{:?}",
        files.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let (mut decoded, mut incompatible) = (0, 0);
    for (_, spec) in &files {
        let value = spec.value.as_ref().unwrap();
        decoded += value.decoded;
        incompatible += value.failed.get("incompatible").copied().unwrap_or(0);
    }
    assert_eq!((decoded, incompatible), (12, 8));
}

/// The typed schema's evolution reaches a REST catalog (Apache Iceberg's own, on the test bed) as
/// `add-schema` and `set-current-schema` commits: pyiceberg, finding the topic by name, reads the
/// typed columns after a new field, a widened one, and a dropped one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_catalog_follows_the_typed_schema() {
    common::no_instance_metadata();
    let catalog = std::env::var("REWIND_TEST_ICEBERG_REST_URI")
        .unwrap_or_else(|_| "http://127.0.0.1:8181".into());
    let url = registry_url();
    let topic = common::unique("typed-rest");
    kafka::create_topic(&topic, 1, &[]).await;
    let v1 = register(&url, &format!("{topic}-value"), ORDER_V1, "AVRO");
    let v2 = register(&url, &format!("{topic}-value"), ORDER_V2, "AVRO");
    let text = register(&url, &format!("{topic}-text"), ORDER_TEXT, "AVRO");
    let archive_dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", archive_dir.path().display());
    let config = format!(
        "[sink.decode]\nregistry = \"{url}\"\n\n[[sink.decode.topics]]\ntopics = '{}'\nvalue = \"registry\"\n",
        regex::escape(&topic)
    );
    let namespace = common::unique("ns").replace('-', "_");
    let identifier = format!(
        "{namespace}.{}",
        rewind::tables::catalog::table_name(&topic)
    );
    const REST: &str = r#"
import json, sys
from pyiceberg.catalog.rest import RestCatalog
table = RestCatalog("rewind", uri=sys.argv[1]).load_table(sys.argv[2])
t = table.scan().to_arrow()
rows = {str(o): v for o, v in zip(t["offset"].to_pylist(), t["value_decoded"].to_pylist())}
print(json.dumps({"rows": rows, "fields": [f.name for f in table.schema().find_field("value_decoded").field_type.fields]}))
"#;
    let python = common::venv_python("REWIND_TEST_PYICEBERG", "pyiceberg.sh");
    let now = common::now_ms();
    let mut offset = 0i64;
    // Each round: the schema id, its values by offset, and what the sync tells of the catalog.
    type Values = Box<dyn Fn(i64) -> Vec<u8>>;
    let rounds: [(u32, Values, &str); 3] = [
        (v1, Box::new(|i| order_v1(i, 1, &[], None)), "registered"),
        (
            v2,
            Box::new(|i| {
                avro(
                    ORDER_V2,
                    vec![
                        ("id", Avro::Long(i)),
                        ("amount", Avro::Long(2)),
                        ("tags", Avro::Array(vec![])),
                        ("note", none()),
                        ("currency", some(Avro::String("EUR".into()))),
                    ],
                )
            }),
            "committed",
        ),
        (
            text,
            Box::new(|i| {
                avro(
                    ORDER_TEXT,
                    vec![("id", Avro::Long(i)), ("amount", Avro::String("3".into()))],
                )
            }),
            "committed",
        ),
    ];
    let mut fields_seen = Vec::new();
    for (id, encode, outcome) in rounds {
        let records: Vec<Record> = (0..3)
            .map(|j| {
                kafka::record(
                    None,
                    Some(&framed(id, &encode(offset + j))),
                    vec![],
                    now + offset + j,
                )
            })
            .collect();
        kafka::produce(&topic, 0, &records).await;
        offset += 3;
        sink(&archive, &[&topic], &config);
        let out = Command::new(env!("CARGO_BIN_EXE_rewind"))
            .args([
                "tables",
                "sync",
                "--archive",
                &archive,
                "--json",
                "--topics",
            ])
            .arg(regex::escape(&topic))
            .args(["--catalog-uri", &catalog, "--catalog-namespace", &namespace])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::text(&out.stderr));
        let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reports[0]["catalog"], outcome, "{reports:?}");
        let table = common::python_json(&python, REST, &[&catalog, &identifier]);
        let rows = table["rows"].as_object().unwrap();
        assert_eq!(rows.len() as i64, offset);
        for (o, v) in rows {
            assert_eq!(v["id"].as_i64(), Some(o.parse::<i64>().unwrap()), "{v}");
        }
        fields_seen.push(table["fields"].clone());
    }
    assert_eq!(
        fields_seen,
        vec![
            json!(["id", "amount", "tags", "note"]),
            json!(["id", "amount", "tags", "note", "currency"]),
            json!(["id", "tags", "note", "currency"]),
        ]
    );
}
