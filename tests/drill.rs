//! Restore drills against the test bed's real broker: a clean drill restores into scratch topics,
//! compares every record with the archive, deletes the scratch topics and keeps a signed report
//! that `verify-report` accepts, and rejects once altered; drills over an archive with a flipped
//! byte or a missing file fail and name it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::kafka::{self, header, record};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rewind::archive::Record;
use serde_json::Value;

fn drill(archive: &str) -> std::process::Command {
    common::drill_command(archive)
}

/// Write an Ed25519 key pair as PEM files (what `openssl genpkey -algorithm ed25519` and
/// `openssl pkey -pubout` make); returns (private, public) paths.
fn key_pair(dir: &Path, seed: u8) -> (String, String) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let private = dir.join(format!("key-{seed}.pem"));
    let public = dir.join(format!("key-{seed}.pub"));
    std::fs::write(
        &private,
        key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    std::fs::write(
        &public,
        key.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    (private.display().to_string(), public.display().to_string())
}

async fn archived_topic(partitions: i32) -> (String, tempfile::TempDir, String, u64) {
    let topic = common::unique("drill-src");
    kafka::create_topic(&topic, partitions, &[]).await;
    let now = common::now_ms();
    let mut count = 0;
    for p in 0..partitions {
        let records: Vec<Record> = (0..40)
            .map(|i| Record {
                key: (i % 3 != 0).then(|| format!("k{i}").into_bytes()),
                value: (i % 7 != 4)
                    .then(|| format!("value {p}/{i}").repeat(1 + i % 5).into_bytes()),
                headers: if i % 2 == 1 {
                    vec![header("h", Some(b"1")), header("h", None)]
                } else {
                    vec![]
                },
                ..record(None, None, vec![], now - 1000 + i as i64)
            })
            .collect();
        kafka::produce(&topic, p, &records[..20]).await;
        kafka::produce_transaction(&topic, p, &records[20..25], false).await;
        kafka::produce_transaction(&topic, p, &records[25..], true).await;
        count += 35;
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    let out = common::sink_command(&archive, &topic, &common::unique("g"))
        .arg("--once")
        .env("REWIND__SINK__MAX_FILE_RECORDS", "6")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    (topic, dir, archive, count)
}

fn topic_exists(name: &str) -> bool {
    let consumer: BaseConsumer = kafka::config().create().unwrap();
    consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap()
        .topics()
        .iter()
        .any(|t| t.name() == name)
}

#[tokio::test]
async fn a_clean_drill_passes_with_exact_counts_and_a_signature_an_auditor_can_check() {
    common::no_instance_metadata();
    let (topic, dir, archive, count) = archived_topic(2).await;
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = key_pair(keys.path(), 7);
    let out = drill(&archive)
        .args([
            "--topics",
            &topic,
            "--from",
            "earliest",
            "--sign-key",
            &private,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["records"], count, "{report}");
    let t = &report["topics"][0];
    assert_eq!(t["topic"], topic.as_str());
    assert_eq!(t["records"], count);
    assert_eq!(t["archived_records"], count);
    assert!(
        t["estimated_full_restore_seconds"].as_u64().unwrap() >= 1,
        "{report}"
    );
    for p in t["partitions"].as_array().unwrap() {
        assert_eq!(p["archived"], 35, "{report}");
        assert_eq!(p["restored"], 35, "{report}");
        assert_eq!(p["archive_sha256"], p["restored_sha256"]);
    }
    // The drill's restore progress is tombstoned: nothing of it is left to read.
    let left = rewind::restore::progress::read(
        &kafka::config(),
        "__rewind_restores",
        report["id"].as_str().unwrap(),
        Duration::from_secs(30),
        false,
    )
    .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let scratch = t["scratch_topic"].as_str().unwrap();
    assert!(scratch.starts_with("__rewind-drill-") && scratch.ends_with(&format!(".{topic}")));
    assert_eq!(report["scratch_topics_deleted"], true);
    assert!(!topic_exists(scratch), "scratch topic {scratch} is left");

    // The report kept in the archive verifies with the signer's public key, by id or as a file.
    let id = report["id"].as_str().unwrap();
    let verify = |what: &str, key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rewind"))
            .args(["drill", "verify-report", what, "--public-key", key])
            .args(["--archive", &archive])
            .output()
            .unwrap()
    };
    let ok = verify(id, &public);
    assert!(ok.status.success(), "{}", common::text(&ok.stderr));
    assert!(common::text(&ok.stdout).contains("unaltered"));
    let kept = dir.path().join(format!("_drills/{id}.json"));
    let saved: Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(saved, report);
    // Altered after signing: refused. Another key: refused.
    let mut altered = saved.clone();
    altered["records"] = Value::from(count + 1);
    let forged = keys.path().join("forged.json");
    std::fs::write(&forged, serde_json::to_vec_pretty(&altered).unwrap()).unwrap();
    let bad = verify(&forged.display().to_string(), &public);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        common::error_line(&bad).contains("does not match"),
        "{}",
        common::text(&bad.stderr)
    );
    let (_, other) = key_pair(keys.path(), 9);
    let wrong = verify(&kept.display().to_string(), &other);
    assert_eq!(wrong.status.code(), Some(1));

    // A sampled window over the same archive passes too.
    let sampled = drill(&archive)
        .args(["--topics", &topic, "--sample", "2h", "--json"])
        .output()
        .unwrap();
    assert!(
        sampled.status.success(),
        "{}",
        common::text(&sampled.stderr)
    );
    let sampled: Value = serde_json::from_slice(&sampled.stdout).unwrap();
    assert_eq!(sampled["passed"], true);
    assert_eq!(sampled["signature"], Value::Null);
    // An empty window proves nothing: refused in one sentence.
    let empty = drill(&archive)
        .args([
            "--topics",
            &topic,
            "--from",
            "2001-01-01T00:00:00Z",
            "--to",
            "2001-01-02T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(1));
    assert!(common::error_line(&empty).contains("holds no archived records"));
}

/// The data files of `dir`'s archive, in order.
fn data_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_drill_over_a_damaged_archive_fails_and_names_the_damage() {
    common::no_instance_metadata();
    let (topic, dir, archive, _) = archived_topic(1).await;
    let files = data_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");

    // A flipped byte in a file's first data page (right after the magic `PAR1` and the page
    // header): the offsets every reader decodes.
    let victim = &files[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = 24;
    bytes[at] ^= 0x5a;
    // The local store checks a file against the checksum recorded beside it: replace the file
    // (a new inode, no recorded checksum) so the data file's own checksums must catch it.
    std::fs::remove_file(victim).unwrap();
    std::fs::write(victim, &bytes).unwrap();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let out = drill(&archive)
        .args(["--topics", &topic, "--from", "earliest", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", common::text(&out.stdout), common::text(&out.stderr)));
    assert_eq!(report["passed"], false);
    let failures = report["failures"].to_string();
    assert!(failures.contains(&name), "{failures}");
    assert!(common::error_line(&out).contains(&name));

    // A missing file.
    let (topic, dir, archive, _) = archived_topic(1).await;
    let files = data_files(dir.path());
    std::fs::remove_file(&files[1]).unwrap();
    let out = drill(&archive)
        .args(["--topics", &topic, "--from", "earliest", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], false);
    assert!(
        report["failures"].to_string().contains("broken"),
        "{report}"
    );
    assert!(dir
        .path()
        .join(format!("_drills/{}.json", report["id"].as_str().unwrap()))
        .exists());
}
