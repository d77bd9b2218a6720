//! `rewind lifecycle` against the test bed's S3 server (MinIO): the rules Rewind wants for an
//! archive are shown against the bucket's, applying keeps the bucket's other rules, a rule that
//! would delete the archive's objects by age is called out, and what the server refuses is one
//! sentence that leaves the bucket as it was. (MinIO implements neither AbortIncompleteMultipartUpload
//! nor transitions to AWS storage classes, so the rules themselves are applied on AWS only; their
//! shape is checked in the unit tests of `ops::lifecycle`, reading an object in Glacier in
//! `storage_errors`.)

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
