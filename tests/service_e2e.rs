//! `rewind run` against the real broker and S3 server: pipelines from files, the HTTP API over real
//! HTTP, pause and resume, restores started through the API, secrets kept out of output, a worker
//! killed while another shares its sink pipeline, and configuration errors reported all at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::http::{free_addr, get, post, request, wait_until};
use common::kafka::{create_topic, header, produce, read_to_end, record};
use rewind::archive::Record;
use rewind::storage::{self, ObjectStore, StorageUrl};
use serde_json::Value;

const SECRET: &str = "hunter2-not-for-logs";

/// A service directory: `rewind.toml` and a `pipelines/` directory.
struct ServiceDir {
    dir: tempfile::TempDir,
}

impl ServiceDir {
    fn new(archive: &str, extra: &str, pipelines: &[(&str, String)]) -> ServiceDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pipelines")).unwrap();
        let config = format!(
            r#"archive = "{archive}"

[storage.s3]
endpoint = "{endpoint}"
path_style = true
region = "us-east-1"
access_key_id = "{access}"
secret_access_key = "${{env:TEST_S3_SECRET}}"

[kafka]
bootstrap_servers = "{kafka}"

[kafka.properties]
"ssl.key.password" = "${{env:TEST_KAFKA_SECRET}}"

[sink]
max_file_age = "1s"
discovery_interval = "1s"
drain_timeout = "20s"
group_snapshot_interval = "0s"

[restore]
poll_interval = "1s"
transaction_interval = "1s"

[service]
restart_backoff = "1s"
restart_backoff_max = "5s"
{extra}
"#,
            endpoint = common::s3_endpoint(),
            access = common::s3_access_key(),
            kafka = common::kafka_bootstrap(),
        );
        std::fs::write(dir.path().join("rewind.toml"), config).unwrap();
        for (name, text) in pipelines {
            std::fs::write(
                dir.path().join("pipelines").join(format!("{name}.toml")),
                text,
            )
            .unwrap();
        }
        ServiceDir { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("rewind.toml")
    }

    /// `rewind run` on `addr`, its stderr in a log file of the directory.
    fn start(&self, addr: &str, log: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        service_command(&self.config())
            .args(["--http-addr", addr])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default()
    }
}

fn service_command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewind"));
    cmd.args(["run", "--config"])
        .arg(config)
        .env("TEST_S3_SECRET", common::s3_secret_key())
        .env("TEST_KAFKA_SECRET", SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("RUST_LOG", "info,rdkafka=warn");
    cmd
}

fn sink_pipeline(topic: &str) -> String {
    format!(
        "kind = \"sink\"\n[sink]\ntopics = \"{}\"\n",
        regex::escape(topic).replace('\\', "\\\\")
    )
}

fn pipeline(addr: &str, name: &str) -> Value {
    get(addr, &format!("/pipelines/{name}")).json()
}

/// Wait until pipeline `name` satisfies `check`; on timeout, show what it last said.
fn wait_for_pipeline(addr: &str, name: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let now = pipeline(addr, name);
        if check(&now) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}; pipeline {name} says {now}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGKILL: no drain, no goodbye.
fn kill_hard(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rewind run did not stop within 60s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Records with unique keys, a null key, a tombstone and headers (a duplicate, a null value).
fn traffic(partition: i32, from: usize, count: usize) -> Vec<Record> {
    let now = common::now_ms();
    (from..from + count)
        .map(|i| {
            let key = format!("k{partition}-{i}");
            let value = format!("value {i} of partition {partition}");
            match i % 10 {
                3 => record(None, Some(value.as_bytes()), vec![], now + i as i64),
                7 => record(Some(key.as_bytes()), None, vec![], now + i as i64),
                _ => record(
                    Some(key.as_bytes()),
                    Some(value.as_bytes()),
                    vec![
                        header("h", Some(b"1")),
                        header("h", Some(b"2")),
                        header("n", None),
                    ],
                    now + i as i64,
                ),
            }
        })
        .collect()
}

/// What a restore must reproduce: key, value, headers and timestamp (offsets and the timestamp
/// type are the target's own).
fn content(records: &[Record]) -> Vec<Record> {
    records
        .iter()
        .map(|r| Record {
            offset: 0,
            timestamp_type: None,
            ..r.clone()
        })
        .collect()
}

fn restored(topic: &str, partition: i32) -> Vec<Record> {
    read_to_end(topic, partition)
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

async fn s3_archive() -> (String, Arc<dyn ObjectStore>) {
    let bucket = common::new_bucket().await;
    let url = format!("s3://{bucket}/service");
    let store = storage::open(&StorageUrl::parse(&url).unwrap(), &common::s3_options())
        .await
        .unwrap();
    (url, store)
}

fn verify_clean(archive: &str) {
    let out = common::tool_command("verify", archive)
        .args(["--deep"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify: {}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn service_runs_a_sink_and_a_following_restore_steered_over_http() {
    common::no_instance_metadata();
    let topic = common::unique("svc-src");
    let standby = format!("{topic}-standby");
    let adhoc = format!("{topic}-adhoc");
    create_topic(&topic, 2, &[]).await;
    let (archive, store) = s3_archive().await;
    let service = ServiceDir::new(
        &archive,
        "",
        &[
            ("backup", sink_pipeline(&topic)),
            (
                "standby",
                format!(
                    "kind = \"restore\"\n[restore]\nfollow = true\nrestore_id = \"{standby}\"\ntopics = \"{}\"\nrenames = {{ \"{topic}\" = \"{standby}\" }}\n",
                    regex::escape(&topic).replace('\\', "\\\\")
                ),
            ),
        ],
    );
    let mut produced: Vec<Vec<Record>> = Vec::new();
    for p in 0..2 {
        produced.push(produce(&topic, p, &traffic(p, 0, 150)).await);
    }

    let addr = free_addr();
    let mut child = service.start(&addr, "run.log");
    wait_until("the API answers", Duration::from_secs(30), || {
        request(&addr, "GET", "/healthz", None).is_some_and(|r| r.status == 200)
    });
    wait_until("every pipeline is ready", Duration::from_secs(60), || {
        get(&addr, "/readyz").status == 200
    });

    // The sink archives everything, and says so.
    wait_for_pipeline(&addr, "backup", "the sink archived 300 records", |p| {
        p["records"] == 300 && p["lag_records"] == 0
    });
    let backup = pipeline(&addr, "backup");
    assert_eq!(backup["state"], "running", "{backup}");
    assert_eq!(backup["kind"], "sink");
    let partitions = backup["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2, "{backup}");
    for p in partitions {
        assert_eq!(p["position"], 150, "{backup}");
        assert_eq!(p["end"], 150, "{backup}");
    }
    assert!(backup["recovery_point_age_seconds"].as_f64().unwrap() < 5.0);

    // The following restore feeds the standby topic, byte for byte.
    wait_for_pipeline(&addr, "standby", "the standby holds 300 records", |p| {
        p["records"] == 300 && p["lag_records"] == 0
    });
    for p in 0..2 {
        assert_eq!(
            content(&restored(&standby, p)),
            content(&produced[p as usize])
        );
    }

    // Paused, the restore stops feeding the standby; resumed, it continues without a gap.
    let paused = post(&addr, "/pipelines/standby/pause", "");
    assert_eq!(paused.status, 200, "{}", paused.body);
    wait_for_pipeline(&addr, "standby", "the restore is paused", |p| {
        p["state"] == "paused"
    });
    for p in 0..2 {
        let more = produce(&topic, p, &traffic(p, 150, 50)).await;
        produced[p as usize].extend(more);
    }
    wait_for_pipeline(&addr, "backup", "the sink archived the new records", |p| {
        p["records"] == 400 && p["lag_records"] == 0
    });
    std::thread::sleep(Duration::from_secs(3));
    for p in 0..2 {
        assert_eq!(
            restored(&standby, p).len(),
            150,
            "a paused restore writes nothing"
        );
    }
    assert_eq!(post(&addr, "/pipelines/standby/resume", "").status, 200);
    wait_until(
        "the resumed restore caught up",
        Duration::from_secs(60),
        || (0..2).all(|p| restored(&standby, p).len() == 200),
    );
    for p in 0..2 {
        assert_eq!(
            content(&restored(&standby, p)),
            content(&produced[p as usize])
        );
    }

    // Paused, the sink archives nothing more; resumed, it picks up where it left off.
    assert_eq!(post(&addr, "/pipelines/backup/pause", "").status, 200);
    wait_for_pipeline(&addr, "backup", "the sink is paused", |p| {
        p["state"] == "paused"
    });
    let archived_before = archived_records(&archive);
    for p in 0..2 {
        let more = produce(&topic, p, &traffic(p, 200, 20)).await;
        produced[p as usize].extend(more);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(archived_records(&archive), archived_before);
    assert_eq!(archived_before, 400);
    assert_eq!(post(&addr, "/pipelines/backup/resume", "").status, 200);
    wait_until(
        "the standby has everything",
        Duration::from_secs(90),
        || (0..2).all(|p| restored(&standby, p).len() == 220),
    );
    for p in 0..2 {
        assert_eq!(
            content(&restored(&standby, p)),
            content(&produced[p as usize])
        );
    }

    // A point-in-time restore through the API: from the 100th record of each partition's window.
    let from = produced[0][100]
        .timestamp
        .unwrap()
        .max(produced[1][100].timestamp.unwrap());
    let body = serde_json::json!({
        "topics": regex::escape(&topic),
        "from": from.to_string(),
        "renames": { topic.clone(): adhoc.clone() },
        "restore_id": adhoc.clone(),
    });
    let started = post(&addr, "/restores", &body.to_string());
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(started.json()["id"], adhoc.as_str());
    let status_path = format!("/restores/{adhoc}");
    wait_until("the API restore completed", Duration::from_secs(60), || {
        get(&addr, &status_path).json()["state"] == "completed"
    });
    let done = get(&addr, &status_path).json();
    let expected: Vec<Vec<Record>> = produced
        .iter()
        .map(|records| {
            let start = records
                .iter()
                .position(|r| r.timestamp.unwrap() >= from)
                .unwrap();
            records[start..].to_vec()
        })
        .collect();
    let total: usize = expected.iter().map(Vec::len).sum();
    assert_eq!(done["records"], total, "{done}");
    assert_eq!(done["planned_records"], total, "{done}");
    for p in 0..2 {
        assert_eq!(
            content(&restored(&adhoc, p)),
            content(&expected[p as usize])
        );
    }

    // Bad requests get a 4xx and a JSON error.
    let taken = format!(r#"{{"restore_id": "{standby}"}}"#);
    let body = |text: &str| Some(text.to_string());
    for (method, path, body, status) in [
        ("GET", "/pipelines/nope", None, 404),
        ("POST", "/pipelines/nope/pause", None, 404),
        ("GET", "/restores/nope", None, 404),
        ("GET", "/nowhere", None, 404),
        ("DELETE", "/pipelines", None, 405),
        ("POST", "/restores", body("{not json"), 400),
        ("POST", "/restores", body(r#"{"from": "yesterday"}"#), 400),
        ("POST", "/restores", body(r#"{"bogus": 1}"#), 400),
        ("POST", "/restores", body(r#"{"cluster": "mars"}"#), 400),
        ("POST", "/restores", Some(taken.clone()), 409),
    ] {
        let response = request(&addr, method, path, body.as_deref()).unwrap();
        assert_eq!(
            response.status, status,
            "{method} {path}: {}",
            response.body
        );
        let error = response.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!error.is_empty(), "{method} {path}: {}", response.body);
    }

    // Metrics, on the same address.
    let metrics = get(&addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains("rewind_pipeline_up{pipeline=\"backup\"} 1"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("rewind_sink_records_archived_total"));
    assert!(metrics.body.contains("rewind_restore_records_total"));

    // Secrets from the environment were used (the S3 secret) and shown nowhere.
    let everything = [
        get(&addr, "/pipelines").body,
        get(&addr, "/pipelines/backup").body,
        get(&addr, "/pipelines/standby").body,
        get(&addr, "/restores").body,
    ]
    .join("\n");
    let status = terminate(&mut child);
    assert!(
        status.success(),
        "rewind run exited with {status}: {}",
        service.log("run.log")
    );
    let log = service.log("run.log");
    for secret in [SECRET, &common::s3_secret_key()] {
        assert!(!everything.contains(secret), "the API showed a secret");
        assert!(!log.contains(secret), "the log showed a secret");
    }
    assert!(log.contains("every pipeline stopped"), "{log}");

    verify_clean(&archive);
    for p in 0..2 {
        assert_eq!(
            content(&common::archive::chain(&store, &topic, p).await),
            content(&produced[p as usize])
        );
    }
}

/// Records in the archive, by `rewind ls --json`.
fn archived_records(archive: &str) -> u64 {
    let out = common::tool_command("ls", archive)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["records"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_survivor_takes_over_the_partitions_of_a_killed_worker() {
    common::no_instance_metadata();
    let topic = common::unique("svc-takeover");
    create_topic(&topic, 4, &[]).await;
    let (archive, store) = s3_archive().await;
    let service = ServiceDir::new(&archive, "", &[("backup", sink_pipeline(&topic))]);
    // Short sessions, so the group notices the killed worker quickly.
    let config = std::fs::read_to_string(service.config()).unwrap().replace(
        "[kafka.properties]\n",
        "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
    );
    std::fs::write(service.config(), config).unwrap();

    let (a, b) = (free_addr(), free_addr());
    // Killed and waited for in round 3, which clippy cannot see through the loop.
    #[allow(clippy::zombie_processes)]
    let mut first = service.start(&a, "a.log");
    let mut second = service.start(&b, "b.log");
    for addr in [&a, &b] {
        wait_until("both workers are ready", Duration::from_secs(60), || {
            request(addr, "GET", "/readyz", None).is_some_and(|r| r.status == 200)
        });
    }
    let mut produced: Vec<Vec<Record>> = vec![Vec::new(); 4];
    for round in 0..6 {
        if round == 3 {
            // Both hold partitions by now; one dies without a word, mid-stream.
            wait_until(
                "both workers hold partitions",
                Duration::from_secs(60),
                || {
                    [&a, &b].iter().all(|addr| {
                        !pipeline(addr, "backup")["partitions"]
                            .as_array()
                            .unwrap()
                            .is_empty()
                    })
                },
            );
            kill_hard(&mut first);
        }
        for p in 0..4 {
            let more = produce(&topic, p, &traffic(p, round * 100, 100)).await;
            produced[p as usize].extend(more);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until(
        "the survivor archived everything",
        Duration::from_secs(120),
        || archived_records(&archive) == 2400,
    );
    let survivor = pipeline(&b, "backup");
    assert_eq!(
        survivor["partitions"].as_array().unwrap().len(),
        4,
        "{survivor}"
    );
    let status = terminate(&mut second);
    assert!(status.success(), "{}", service.log("b.log"));

    verify_clean(&archive);
    for p in 0..4 {
        let chain = common::archive::chain(&store, &topic, p).await;
        let offsets: Vec<i64> = chain.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..600).collect::<Vec<i64>>(), "partition {p}");
        assert_eq!(content(&chain), content(&produced[p as usize]));
    }
}

/// `rewind run` refuses the configuration with exit 2 and an error naming each of `expected`.
fn refused(config: &Path, expected: &[&str]) {
    let out = service_command(config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = common::text(&out.stderr);
    for expected in expected {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn configuration_mistakes_are_all_reported_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    let addr = free_addr();
    std::fs::write(
        dir.path().join("rewind.toml"),
        format!(
            r#"archive = "file://{}"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
[service]
http_addr = "{addr}"
"#,
            archive_dir.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pipelines/backup.toml"),
        "kind = \"sink\"\ncluster = \"nowhere\"\n[sink]\nmax_file_age = \"soon\"\ntopicz = \"x\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pipelines/dr.toml"),
        "kind = \"restore\"\n[restore]\nfollow = true\nto = \"2026-01-01T00:00:00Z\"\nconcurrency = 0\n",
    )
    .unwrap();
    refused(
        &dir.path().join("rewind.toml"),
        &[
            "invalid configuration (5 problems)",
            "backup.toml: cluster: no cluster named \"nowhere\"",
            "backup.toml: sink.max_file_age: expected a duration",
            "backup.toml: sink.topicz: unknown key",
            "dr.toml: restore.concurrency: must be at least 1",
            "dr.toml: restore.follow: keeps restoring new records, so it takes no restore.to",
        ],
    );
    assert!(
        request(&addr, "GET", "/healthz", None).is_none(),
        "nothing listens"
    );
    assert!(!archive_dir.exists(), "nothing was written");

    // Mistakes of the service configuration are reported together with those of the pipelines.
    std::fs::write(
        dir.path().join("rewind.toml"),
        "archive = \"ftp://x\"\n[clusters.standby]\nbootstrap_servers = \"nohost\"\n[service]\nhttp_addr = \"everywhere\"\nrestart_backoff = \"0s\"\n",
    )
    .unwrap();
    refused(
        &dir.path().join("rewind.toml"),
        &[
            "invalid configuration (9 problems)",
            "backup.toml: cluster: no cluster named \"nowhere\"",
            "dr.toml: restore.concurrency: must be at least 1",
            "archive:",
            "clusters.standby.bootstrap_servers:",
            "service.http_addr:",
            "service.restart_backoff:",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_pipeline_is_restarted_with_backoff_while_the_others_run() {
    common::no_instance_metadata();
    let topic = common::unique("svc-backoff");
    create_topic(&topic, 1, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().join("archive").display());
    // A cluster nothing listens on: its pipeline can never start.
    let dead = free_addr();
    let service = ServiceDir::new(
        &archive,
        &format!("\n[clusters.dead]\nbootstrap_servers = \"{dead}\"\n"),
        &[
            ("backup", sink_pipeline(&topic)),
            (
                "broken",
                format!(
                    "kind = \"sink\"\ncluster = \"dead\"\n[sink]\ntopics = \"{}\"\n",
                    regex::escape(&topic).replace('\\', "\\\\")
                ),
            ),
        ],
    );
    let produced = produce(&topic, 0, &traffic(0, 0, 50)).await;
    let addr = free_addr();
    let mut child = service.start(&addr, "run.log");
    wait_until("the API answers", Duration::from_secs(30), || {
        request(&addr, "GET", "/healthz", None).is_some_and(|r| r.status == 200)
    });

    // The healthy pipeline archives while the broken one fails and is started again.
    wait_for_pipeline(&addr, "backup", "the sink archived 50 records", |p| {
        p["records"] == 50 && p["lag_records"] == 0
    });
    wait_for_pipeline(&addr, "broken", "the broken pipeline was restarted", |p| {
        p["restarts"].as_u64().unwrap_or_default() >= 2
    });
    let broken = pipeline(&addr, "broken");
    let error = broken["last_error"]["message"].as_str().unwrap_or_default();
    assert!(error.contains("no broker answered"), "{broken}");
    assert!(
        ["backing_off", "starting"].contains(&broken["state"].as_str().unwrap()),
        "{broken}"
    );
    // Not ready while a pipeline cannot run; the API kept answering quickly all along.
    let started = std::time::Instant::now();
    let ready = get(&addr, "/readyz");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(
        ready.json()["waiting"][0]["name"],
        "broken",
        "{}",
        ready.body
    );
    let metrics = get(&addr, "/metrics").body;
    assert!(
        metrics.contains("rewind_pipeline_restarts_total{pipeline=\"broken\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("rewind_pipeline_up{pipeline=\"backup\"} 1"));

    let status = terminate(&mut child);
    assert!(status.success(), "{}", service.log("run.log"));
    let store = storage::open(&StorageUrl::parse(&archive).unwrap(), &Default::default())
        .await
        .unwrap();
    assert_eq!(
        content(&common::archive::chain(&store, &topic, 0).await),
        content(&produced)
    );
}
