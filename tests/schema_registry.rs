//! Issue 19, part 4: a Schema Registry's own storage topic is backed up like any topic and restored
//! into a registry that comes back with every subject, version and id; and a restore into a
//! cluster whose registry numbered the same schemas differently rewrites the ids of records in the
//! Confluent wire format, by subject and version, leaving every other byte as it was archived.
//!
//! On the test bed: the real Kafka broker, and Apicurio Registry (scripts/registry.sh, whose
//! Confluent-compatible API is at `REWIND_TEST_REGISTRY_URL`), started with Kafka storage: its
//! journal topic (`REWIND_TEST_REGISTRY_KAFKASQL_TOPIC`) is the registry's `_schemas`. This test
//! starts two more registries with the same script: one on the restored journal, and an empty one
//! in memory that stands for the target cluster's own.

mod common;

use std::process::{Command, Output};

use common::http::free_addr;
use common::kafka;
use common::registry::{call, framed, register, registry_url};
use rewind::archive::Record;

/// Every version of `subject`: (version, id, schema).
fn versions(url: &str, subject: &str) -> Vec<(i64, u64, String)> {
    let (status, listed) = call(url, "GET", &format!("/subjects/{subject}/versions"), None);
    assert_eq!(status, 200, "{subject} in {url}: {listed}");
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let version = v.as_i64().unwrap();
            let (_, body) = call(
                url,
                "GET",
                &format!("/subjects/{subject}/versions/{version}"),
                None,
            );
            (
                version,
                body["id"].as_u64().unwrap(),
                body["schema"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `rewind restore` of `topic` from `archive` into `target`, with `flags`.
fn restore_renamed(archive: &str, topic: &str, target: &str, flags: &[&str]) -> Output {
    common::restore_command(archive)
        .args(["--topics", &regex::escape(topic), "--rename"])
        .arg(format!("{topic}={target}"))
        .args(flags)
        .output()
        .unwrap()
}

/// A registry this test starts with scripts/registry.sh, stopped when dropped.
struct Started {
    url: String,
    env: Vec<(&'static str, String)>,
}

impl Started {
    fn new(storage: &str, topic: &str) -> Started {
        let port = free_addr().rsplit_once(':').unwrap().1.to_string();
        let management = free_addr().rsplit_once(':').unwrap().1.to_string();
        let env = vec![
            ("REWIND_REGISTRY_PORT", port.clone()),
            ("REWIND_REGISTRY_MANAGEMENT_PORT", management),
            ("REWIND_REGISTRY_STORAGE", storage.to_string()),
            ("REWIND_REGISTRY_KAFKA_BOOTSTRAP", common::kafka_bootstrap()),
            ("REWIND_REGISTRY_KAFKASQL_TOPIC", topic.to_string()),
            (
                "REWIND_REGISTRY_KAFKASQL_SNAPSHOTS_TOPIC",
                format!("{topic}-snapshots"),
            ),
        ];
        let started = Started {
            url: format!("http://127.0.0.1:{port}/apis/ccompat/v7"),
            env,
        };
        let out = started.script("start");
        assert!(
            out.status.success(),
            "scripts/registry.sh start: {}",
            common::text(&out.stderr)
        );
        started
    }

    fn script(&self, what: &str) -> std::process::Output {
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/registry.sh"))
            .arg(what)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

/// `bytes` with the wire-format id mapped through `map` (unchanged when not framed or unmapped).
fn mapped(bytes: &Option<Vec<u8>>, map: &[(u32, u32)]) -> Option<Vec<u8>> {
    let bytes = bytes.as_ref()?;
    if bytes.len() >= 5 && bytes[0] == 0 {
        let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
        if let Some((_, to)) = map.iter().find(|(from, _)| *from == id) {
            return Some(framed(*to, &bytes[5..]));
        }
    }
    Some(bytes.clone())
}

const AVRO_V1: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}"#;
const AVRO_V2: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},{"name":"note","type":["null","string"],"default":null}]}"#;
const KEY_SCHEMA: &str = r#"{"type":"object","properties":{"id":{"type":"integer"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_comes_back_from_the_archive_and_a_restore_rewrites_schema_ids() {
    common::no_instance_metadata();
    let source = registry_url();
    let journal = std::env::var("REWIND_TEST_REGISTRY_KAFKASQL_TOPIC").unwrap();
    let topic = common::unique("orders");
    let stray = common::unique("stray");
    let longs = common::unique("longs");
    let missing = common::unique("missing");

    // The source cluster's registry numbers the schemas of `topic`'s keys and values.
    let v1 = register(&source, &format!("{topic}-value"), AVRO_V1, "AVRO");
    let v2 = register(&source, &format!("{topic}-value"), AVRO_V2, "AVRO");
    let k1 = register(&source, &format!("{topic}-key"), KEY_SCHEMA, "JSON");
    let l1 = register(&source, &format!("{longs}-value"), AVRO_V1, "AVRO");
    let m1 = register(&source, &format!("{missing}-value"), AVRO_V2, "AVRO");
    for t in [&topic, &stray, &longs, &missing] {
        kafka::create_topic(t, 1, &[]).await;
    }
    let now = common::now_ms();
    let mut records = Vec::new();
    for i in 0..40u32 {
        let id = if i < 20 { v1 } else { v2 };
        let key = framed(k1, format!("{{\"id\":{i}}}").as_bytes());
        let value = framed(id, &[i as u8, 0xff, 0, 1, 2]);
        let headers = vec![kafka::header("h", Some(&[0, 0, 0, 0, 1]))];
        records.push(kafka::record(
            Some(&key),
            Some(&value),
            headers,
            now + i64::from(i),
        ));
    }
    // Not in the wire format: restored as archived.
    records.push(kafka::record(
        Some(b"plain"),
        Some(b"{\"not\":\"framed\"}"),
        vec![],
        now + 40,
    ));
    records.push(kafka::record(None, Some(&[0, 0, 1]), vec![], now + 41));
    records.push(kafka::record(
        Some(&framed(k1, b"{\"id\":0}")),
        None,
        vec![],
        now + 42,
    ));
    let produced = kafka::produce(&topic, 0, &records).await;
    // A record framed with an id no registry assigned.
    kafka::produce(
        &stray,
        0,
        &[kafka::record(
            None,
            Some(&framed(999_999, b"x")),
            vec![],
            now,
        )],
    )
    .await;

    // Keys that are plain big-endian longs: 20000000 begins 00 00 00 00 01, as if framed with id 1.
    let long_records: Vec<Record> = (0..5i64)
        .map(|i| {
            let key = (20_000_000 + i).to_be_bytes();
            kafka::record(Some(&key), Some(&framed(l1, b"payload")), vec![], now + i)
        })
        .collect();
    let long_produced = kafka::produce(&longs, 0, &long_records).await;
    kafka::produce(
        &missing,
        0,
        &[kafka::record(None, Some(&framed(m1, b"x")), vec![], now)],
    )
    .await;

    // The sink archives the topics and the registry's journal like any other.
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    let pattern = [&topic, &stray, &longs, &missing, &journal]
        .map(|t| regex::escape(t))
        .join("|");
    let out = common::tool_command("sink", &archive)
        .args([
            "--topics",
            &pattern,
            "--group",
            &common::unique("g"),
            "--once",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));

    // The journal restored into a new topic (the target cluster's), and a registry started on it:
    // every subject, version, id and schema is back.
    let restored_journal = common::unique("journal");
    let out = restore_renamed(&archive, &journal, &restored_journal, &[]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let recovered = Started::new("kafkasql", &restored_journal);
    for subject in [format!("{topic}-value"), format!("{topic}-key")] {
        let want = versions(&source, &subject);
        assert!(!want.is_empty());
        assert_eq!(versions(&recovered.url, &subject), want, "{subject}");
    }

    // The target cluster's own registry numbered the same schemas differently: other schemas
    // came first (so every id differs), and its `<topic>-value` history diverged, with another
    // schema as version 1 (so mapping by version number alone would give that schema's id).
    let target = Started::new("mem", "unused");
    let highest = [v1, v2, k1, l1, m1].into_iter().max().unwrap();
    for i in 0.. {
        let pad = format!(
            r#"{{"type":"record","name":"Pad{i}","fields":[{{"name":"x","type":"int"}}]}}"#
        );
        if register(&target.url, "pad-value", &pad, "AVRO") > highest {
            break;
        }
    }
    register(
        &target.url,
        &format!("{topic}-value"),
        r#"{"type":"record","name":"Experiment","fields":[{"name":"y","type":"string"}]}"#,
        "AVRO",
    );
    let t_v1 = register(&target.url, &format!("{topic}-value"), AVRO_V1, "AVRO");
    let t_v2 = register(&target.url, &format!("{topic}-value"), AVRO_V2, "AVRO");
    let t_k1 = register(&target.url, &format!("{topic}-key"), KEY_SCHEMA, "JSON");
    let t_l1 = register(&target.url, &format!("{longs}-value"), AVRO_V1, "AVRO");
    let map = [(v1, t_v1), (v2, t_v2), (k1, t_k1)];
    assert!(
        map.iter().all(|(from, to)| from != to),
        "the target registry gave other ids: {map:?}"
    );
    let (_, by_version) = call(
        &target.url,
        "GET",
        &format!("/subjects/{topic}-value/versions/1"),
        None,
    );
    assert_ne!(by_version["id"].as_u64(), Some(u64::from(t_v1)));

    // The restore maps each id by subject and content, with the recovered registry as the source,
    // keys too when asked.
    let restored = common::unique("restored");
    let out = restore_renamed(
        &archive,
        &topic,
        &restored,
        &[
            "--schema-ids-from",
            &recovered.url,
            "--schema-ids-to",
            &target.url,
            "--schema-ids-keys",
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let got: Vec<Record> = kafka::read_to_end(&restored, 0)
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(got.len(), produced.len());
    for (got, want) in got.iter().zip(&produced) {
        assert_eq!(got.key, mapped(&want.key, &map), "key at {}", want.offset);
        assert_eq!(
            got.value,
            mapped(&want.value, &map),
            "value at {}",
            want.offset
        );
        assert_eq!(got.headers, want.headers, "headers are not rewritten");
        assert_eq!(got.timestamp, want.timestamp);
    }
    // Plain, short and null values went through untouched.
    assert_eq!(got[40].value.as_deref(), Some(&b"{\"not\":\"framed\"}"[..]));
    assert_eq!(got[41].value.as_deref(), Some(&[0u8, 0, 1][..]));
    assert_eq!(got[42].value, None);

    // Without --schema-ids-keys, keys are restored as archived: plain longs that look framed stay
    // whole, and the values get the target's ids.
    let restored_longs = common::unique("longs-restored");
    let out = restore_renamed(
        &archive,
        &longs,
        &restored_longs,
        &["--schema-ids-from", &source, "--schema-ids-to", &target.url],
    );
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let got: Vec<Record> = kafka::read_to_end(&restored_longs, 0)
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(got.len(), long_produced.len());
    for (got, want) in got.iter().zip(&long_produced) {
        assert_eq!(got.key, want.key, "a plain key at {}", want.offset);
        assert_eq!(got.value, Some(framed(t_l1, b"payload")));
    }

    // A schema the target does not have under the subject stops the restore, with nothing sent.
    let missing_target = common::unique("missing-restored");
    let out = restore_renamed(
        &archive,
        &missing,
        &missing_target,
        &["--schema-ids-from", &source, "--schema-ids-to", &target.url],
    );
    assert!(!out.status.success());
    let line = common::error_line(&out);
    assert!(
        line.contains(&format!("schema id {m1}"))
            && line.contains(&format!("{missing}-value"))
            && line.contains("not registered with the same content"),
        "{line}"
    );
    assert!(kafka::read_to_end(&missing_target, 0).is_empty());

    // An id the source registry does not know stops the restore, with nothing written.
    let stray_target = common::unique("stray-restored");
    let out = restore_renamed(
        &archive,
        &stray,
        &stray_target,
        &[
            "--schema-ids-from",
            &recovered.url,
            "--schema-ids-to",
            &target.url,
        ],
    );
    assert!(!out.status.success());
    let line = common::error_line(&out);
    assert!(
        line.contains("schema id 999999") && line.contains("does not know"),
        "{line}"
    );
    assert!(kafka::read_to_end(&stray_target, 0).is_empty());

    // A registry that does not answer is named before anything is written.
    let out = restore_renamed(
        &archive,
        &topic,
        &common::unique("never"),
        &[
            "--schema-ids-from",
            &recovered.url,
            "--schema-ids-to",
            "http://127.0.0.1:1/apis/ccompat/v7",
        ],
    );
    assert!(!out.status.success());
    let line = common::error_line(&out);
    assert!(
        line.contains("--schema-ids-to: http://127.0.0.1:1/apis/ccompat/v7: the schema registry does not answer"),
        "{line}"
    );
    // Half the flags is a usage error.
    let out = common::restore_command(&archive)
        .args(["--schema-ids-from", &source])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out.stderr));
}
