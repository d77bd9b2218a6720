//! `rewind lifecycle` against real S3 servers. On the test bed's MinIO: the rules Rewind wants for an
//! archive are shown against the bucket's, applying keeps the bucket's other rules, a rule that
//! would delete the archive's objects by age is called out, and what the server refuses (MinIO
//! implements neither AbortIncompleteMultipartUpload nor transitions to AWS storage classes) is one
//! sentence that leaves the bucket as it was. On moto's S3 server, which implements both and the
//! Glacier classes: the rules applied read back as intended, and an archive whose data files moved
//! to Glacier is refused naming the thaw, thawed by `rewind lifecycle thaw`, then verified and
//! restored.

mod common;

use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleFilter,
};
use serde_json::Value;

fn lifecycle(archive: &str, args: &[&str]) -> std::process::Output {
    common::tool_command("lifecycle", archive)
        .args(args)
        .output()
        .unwrap()
}

fn expiry(id: &str, prefix: &str) -> LifecycleRule {
    LifecycleRule::builder()
        .id(id)
        .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
        .status(ExpirationStatus::Enabled)
        .expiration(LifecycleExpiration::builder().days(3).build())
        .build()
        .unwrap()
}

async fn rule_ids(bucket: &str) -> Vec<String> {
    common::s3_client()
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
        .map(|o| {
            o.rules()
                .iter()
                .filter_map(|r| r.id().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn lifecycle_shows_the_archives_rules_keeps_the_buckets_others_and_names_hazards() {
    common::no_instance_metadata();
    let topic = common::unique("lc");
    common::kafka::create_topic(&topic, 1, &[]).await;
    common::kafka::produce(
        &topic,
        0,
        &[common::kafka::record(
            Some(b"k"),
            Some(b"v"),
            vec![],
            common::now_ms(),
        )],
    )
    .await;
    let bucket = common::new_bucket().await;
    let archive = format!("s3://{bucket}/arch");
    let out = common::sink_command(&archive, &topic, &common::unique("g"))
        .arg("--once")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let raw = common::s3_client();
    raw.put_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(expiry("logs-expiry", "logs/"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    // Shown: both of Rewind's rules missing, on arch/data/ only; the bucket's own rule listed.
    let shown = lifecycle(&archive, &["--json"]);
    assert!(shown.status.success(), "{}", common::text(&shown.stderr));
    let doc: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(doc["data_prefix"], "arch/data/");
    let rules = doc["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{doc}");
    assert!(rules.iter().all(|r| r["state"] == "missing"), "{doc}");
    assert!(rules[0]["wanted"]
        .as_str()
        .unwrap()
        .contains("abort unfinished uploads after 7 days"));
    assert!(rules[1]["wanted"]
        .as_str()
        .unwrap()
        .contains("move to STANDARD_IA after 30 days, move to GLACIER_IR after 90 days"));
    assert_eq!(doc["other_rules"].as_array().unwrap().len(), 1);
    assert_eq!(doc["hazards"].as_array().unwrap().len(), 0);

    // MinIO refuses the rules it does not implement: one sentence, and the bucket unchanged.
    let refused = lifecycle(&archive, &["--apply"]);
    assert_eq!(refused.status.code(), Some(1));
    let line = common::error_line(&refused);
    assert!(
        line.contains("put lifecycle failed") && line.contains("rules are unchanged"),
        "{line}"
    );
    assert_eq!(rule_ids(&bucket).await, vec!["logs-expiry"]);

    // What MinIO takes is applied with the bucket's other rules kept.
    let applied = lifecycle(
        &archive,
        &[
            "--apply",
            "--abort-uploads-after",
            "none",
            "--transition",
            "none",
        ],
    );
    assert!(
        applied.status.success(),
        "{}",
        common::text(&applied.stderr)
    );
    assert_eq!(rule_ids(&bucket).await, vec!["logs-expiry"]);

    // A rule deleting the archive's objects by age is called out.
    raw.put_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(expiry("logs-expiry", "logs/"))
                .rules(expiry("cleanup", "arch/"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let warned = lifecycle(&archive, &[]);
    assert!(warned.status.success());
    let stderr = common::text(&warned.stderr);
    assert!(
        stderr.contains("cleanup") && stderr.contains("cuts chains"),
        "{stderr}"
    );

    // Mistakes, each one sentence with exit 2.
    let dir = tempfile::tempdir().unwrap();
    let local = format!("file://{}", dir.path().display());
    for (archive, args, says) in [
        (local.as_str(), vec![], "local archive has neither"),
        (
            archive.as_str(),
            vec!["--transition", "30d=GLACIER"],
            "--allow-cold",
        ),
        (
            archive.as_str(),
            vec!["--transition", "0d=STANDARD_IA"],
            "at least 1",
        ),
        (
            archive.as_str(),
            vec!["--abort-uploads-after", "soon"],
            "not a number of days",
        ),
    ] {
        let out = lifecycle(archive, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            common::text(&out.stderr)
        );
        assert!(
            common::error_line(&out).contains(says),
            "{args:?}: {}",
            common::text(&out.stderr)
        );
    }
}

/// A private moto S3 server (`scripts/s3.sh moto`), killed on drop.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Moto {
        let bin = std::env::var("REWIND_TEST_MOTO").unwrap_or_else(|_| {
            panic!("REWIND_TEST_MOTO is not set: run the tests with scripts/test, or export REWIND_TEST_MOTO=$(scripts/s3.sh moto)")
        });
        let addr = common::http::free_addr();
        let port = addr.rsplit(':').next().unwrap().to_string();
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let endpoint = format!("http://{addr}");
        common::http::wait_until("moto answers", std::time::Duration::from_secs(60), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        Moto { child, endpoint }
    }

    fn client(&self) -> aws_sdk_s3::Client {
        common::s3_client_at(&self.endpoint)
    }

    /// `rewind <command> --archive <archive>` against this server (and the test bed's broker).
    fn rewind(&self, command: &str, archive: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rewind"));
        // `lifecycle thaw`: the subcommand's words come before the flags.
        cmd.args(command.split(' '));
        cmd.args([
            "--archive",
            archive,
            "--s3-endpoint",
            &self.endpoint,
            "--s3-path-style",
        ]);
        if matches!(command, "sink" | "restore") {
            cmd.args(["--bootstrap-servers", &common::kafka_bootstrap()]);
        }
        cmd.env("AWS_ACCESS_KEY_ID", common::s3_access_key())
            .env("AWS_SECRET_ACCESS_KEY", common::s3_secret_key())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn");
        cmd
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn done(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    common::text(&out.stdout)
}

#[tokio::test]
async fn on_a_server_with_lifecycle_and_glacier_the_rules_read_back_and_cold_files_are_thawed() {
    common::no_instance_metadata();
    let moto = Moto::start();
    let raw = moto.client();
    let bucket = common::unique("lc-moto");
    raw.create_bucket().bucket(&bucket).send().await.unwrap();
    let topic = common::unique("lc-cold");
    common::kafka::create_topic(&topic, 1, &[]).await;
    let now = common::now_ms();
    let produced = common::kafka::produce(
        &topic,
        0,
        &(0..12)
            .map(|i| {
                common::kafka::record(
                    Some(format!("k{i}").as_bytes()),
                    Some(b"v"),
                    vec![],
                    now + i,
                )
            })
            .collect::<Vec<_>>(),
    )
    .await;
    let archive = format!("s3://{bucket}/arch");
    done(
        moto.rewind("sink", &archive)
            .args([
                "--topics",
                &regex::escape(&topic),
                "--group",
                &common::unique("g"),
                "--once",
            ])
            .env("REWIND__SINK__MAX_FILE_RECORDS", "4")
            .output()
            .unwrap(),
    );

    // The rules, applied and read back.
    done(
        moto.rewind("lifecycle", &archive)
            .arg("--apply")
            .output()
            .unwrap(),
    );
    let rules = raw
        .get_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .send()
        .await
        .unwrap()
        .rules()
        .to_vec();
    assert_eq!(rules.len(), 2, "{rules:?}");
    for rule in &rules {
        assert_eq!(
            rule.filter().and_then(|f| f.prefix()),
            Some("arch/data/"),
            "{rule:?}"
        );
        assert_eq!(rule.status(), &ExpirationStatus::Enabled);
        assert!(rule.expiration().is_none(), "nothing expires: {rule:?}");
    }
    let abort = rules
        .iter()
        .find(|r| r.id().unwrap().ends_with("-abort-uploads"))
        .unwrap();
    assert_eq!(
        abort
            .abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation()),
        Some(7)
    );
    let tiering = rules
        .iter()
        .find(|r| r.id().unwrap().ends_with("-data-tiering"))
        .unwrap();
    let moves: Vec<(i32, String)> = tiering
        .transitions()
        .iter()
        .map(|t| {
            (
                t.days().unwrap(),
                t.storage_class().unwrap().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            (30, "STANDARD_IA".to_string()),
            (90, "GLACIER_IR".to_string())
        ]
    );
    let shown: Value = serde_json::from_str(&done(
        moto.rewind("lifecycle", &archive)
            .arg("--json")
            .output()
            .unwrap(),
    ))
    .unwrap();
    assert!(
        shown["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "in place"),
        "{shown}"
    );

    // The data files move to Glacier (as the rules would, in time): reads are refused, naming the thaw.
    let listed = raw
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("arch/data/")
        .send()
        .await
        .unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert!(keys.len() >= 3, "{keys:?}");
    for key in &keys {
        raw.copy_object()
            .bucket(&bucket)
            .key(key)
            .copy_source(format!("{bucket}/{key}"))
            .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
            .send()
            .await
            .unwrap();
    }
    let refused = moto.rewind("verify", &archive).output().unwrap();
    assert!(!refused.status.success());
    let said = common::text(&refused.stderr) + &common::text(&refused.stdout);
    assert!(
        said.contains("archive storage class") && said.contains("rewind lifecycle thaw"),
        "{said}"
    );

    // Thawed (moto restores at once), then sound and restorable.
    let thawed: Value = serde_json::from_str(&done(
        moto.rewind("lifecycle thaw", &archive)
            .args(["--topics", &regex::escape(&topic), "--days", "1", "--json"])
            .output()
            .unwrap(),
    ))
    .unwrap();
    assert_eq!(
        thawed["requested"].as_array().unwrap().len(),
        keys.len(),
        "{thawed}"
    );
    done(
        moto.rewind("verify", &archive)
            .arg("--deep")
            .output()
            .unwrap(),
    );
    let again: Value = serde_json::from_str(&done(
        moto.rewind("lifecycle thaw", &archive)
            .args(["--topics", &regex::escape(&topic), "--json"])
            .output()
            .unwrap(),
    ))
    .unwrap();
    assert_eq!(again["requested"].as_array().unwrap().len(), 0, "{again}");
    let target = common::unique("lc-restored");
    done(
        moto.rewind("restore", &archive)
            .args([
                "--topics",
                &regex::escape(&topic),
                "--rename",
                &format!("{topic}={target}"),
            ])
            .output()
            .unwrap(),
    );
    let back: Vec<Option<Vec<u8>>> = common::kafka::read_to_end(&target, 0)
        .into_iter()
        .map(|(r, _)| r.key)
        .collect();
    assert_eq!(
        back,
        produced.iter().map(|r| r.key.clone()).collect::<Vec<_>>()
    );
}
