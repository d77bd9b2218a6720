//! `rewind run` against the real broker and S3 server: pipelines from files, the HTTP API over real
//! HTTP, pause and resume, restores started through the API, secrets kept out of output, a worker
//! killed while another shares its sink pipeline, and configuration errors reported all at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::http::{free_addr, get, post, request, request_with, wait_until};
use common::kafka::{create_topic, header, produce, read_to_end, record};
use rewind::archive::Record;
use rewind::storage::{self, ObjectStore, StorageUrl};
use serde_json::Value;

const SECRET: &str = "hunter2-not-for-logs";
/// The API token of the services that set `service.api_token = "${env:TEST_API_TOKEN}"`.
const TOKEN: &str = "test-token-0123456789abcdef";

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
        .env("TEST_API_TOKEN", TOKEN)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("RUST_LOG", "info,rdkafka=warn");
    cmd
}

/// A sink pipeline of `topic`, in a consumer group of its own (tests run side by side, and
/// pipelines of one name would otherwise share the group `rewind-<name>` across them).
fn sink_pipeline(topic: &str) -> String {
    format!(
        "kind = \"sink\"\n[sink]\ntopics = \"{}\"\ngroup = \"rewind-{topic}\"\n",
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
    let store = storage::open_writer(&StorageUrl::parse(&url).unwrap(), &common::s3_options())
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
        (
            "POST",
            "/restores",
            body(r#"{"from": "last tuesday"}"#),
            400,
        ),
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
    let store = storage::open_reader(&StorageUrl::parse(&archive).unwrap(), &Default::default())
        .await
        .unwrap();
    assert_eq!(
        content(&common::archive::chain(&store, &topic, 0).await),
        content(&produced)
    );
}

/// Issue 14: what a web page the operator visits, a DNS-rebinding page or a stranger on the network
/// sends is refused before it reaches a handler, with the right status and a JSON error, and starts
/// or stops nothing; the same request with the token, as JSON, from no foreign origin, works.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_strangers_cross_site_requests_and_rebinding_pages() {
    common::no_instance_metadata();
    let topic = common::unique("svc-guard");
    create_topic(&topic, 1, &[]).await;
    let (archive, _store) = s3_archive().await;
    let service = ServiceDir::new(
        &archive,
        "api_token = \"${env:TEST_API_TOKEN}\"\nallowed_hosts = [\"rewind.test\"]\n",
        &[("backup", sink_pipeline(&topic))],
    );
    let addr = free_addr();
    let mut child = service.start(&addr, "guard.log");
    let bearer = format!("Bearer {TOKEN}");
    let auth = ("Authorization", bearer.as_str());
    let call = |method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>| {
        request_with(&addr, method, path, headers, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer from {addr}"))
    };
    wait_until("the API answers", Duration::from_secs(30), || {
        request(&addr, "GET", "/healthz", None).is_some_and(|r| r.status == 200)
    });
    let state = || call("GET", "/pipelines/backup", &[auth], None).json()["state"].clone();
    wait_until("the sink runs", Duration::from_secs(60), || {
        state() == "running"
    });
    let restore = format!(
        r#"{{"archive": "{archive}", "topics": "{topic}", "rename": "{{topic}}-copy", "allow_non_empty": true}}"#
    );

    // What is wrong, method, path, headers, the status and words of the refusal.
    type Refusal<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        u16,
        &'a str,
    );
    let refusals: Vec<Refusal<'_>> = vec![
        (
            "no token",
            "POST",
            "/restores",
            vec![],
            401,
            "needs a token",
        ),
        (
            "no token",
            "GET",
            "/pipelines",
            vec![],
            401,
            "needs a token",
        ),
        (
            "a wrong token",
            "POST",
            "/pipelines/backup/pause",
            vec![("Authorization", "Bearer test-token-0123456789abcdeX")],
            401,
            "not this service's api_token",
        ),
        (
            "a simple cross-site form",
            "POST",
            "/restores",
            vec![auth, ("Content-Type", "text/plain")],
            415,
            "Content-Type: application/json",
        ),
        (
            "no content type",
            "POST",
            "/pipelines/backup/pause",
            vec![auth, ("Content-Type", "")],
            415,
            "Content-Type: application/json",
        ),
        (
            "a foreign origin",
            "POST",
            "/restores",
            vec![auth, ("Origin", "https://evil.example")],
            403,
            "cross-site requests are refused",
        ),
        (
            "a foreign origin",
            "POST",
            "/pipelines/backup/pause",
            vec![auth, ("Origin", "null")],
            403,
            "cross-site requests are refused",
        ),
        (
            "a rebinding host",
            "GET",
            "/restores",
            vec![auth, ("Host", "attacker.example:8080")],
            403,
            "does not answer to the host",
        ),
        (
            "a rebinding host",
            "POST",
            "/restores",
            vec![auth, ("Host", "rewind.test.attacker.example")],
            403,
            "does not answer to the host",
        ),
    ];
    for (what, method, path, headers, status, message) in &refusals {
        let body = (*method == "POST").then_some(restore.as_str());
        let answer = call(method, path, headers, body);
        assert_eq!(
            answer.status, *status,
            "{what}: {method} {path}: {}",
            answer.body
        );
        let error = answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(message), "{what}: {error}");
        assert!(
            !answer.body.contains(TOKEN),
            "{what}: the answer shows no token"
        );
        if *status == 401 {
            assert_eq!(
                answer.header("www-authenticate"),
                Some("Bearer realm=\"rewind\""),
                "{what}"
            );
        }
    }
    // Nothing started or stopped.
    assert_eq!(state(), "running");
    let restores = call("GET", "/restores", &[auth], None).json();
    assert_eq!(
        restores["restores"].as_array().map(Vec::len),
        Some(0),
        "{restores}"
    );

    // Probes and metrics need no token; the service's own names and IP addresses are answered.
    assert_eq!(call("GET", "/healthz", &[], None).status, 200);
    assert_eq!(call("GET", "/readyz", &[], None).status, 200);
    assert_eq!(call("GET", "/metrics", &[], None).status, 200);
    assert_eq!(
        call(
            "GET",
            "/pipelines",
            &[auth, ("Host", "rewind.test:8080")],
            None
        )
        .status,
        200
    );
    assert_eq!(
        call("GET", "/pipelines", &[auth, ("Host", "localhost")], None).status,
        200
    );
    // The same request done right works.
    let paused = call(
        "POST",
        "/pipelines/backup/pause",
        &[auth, ("Origin", &format!("http://{addr}"))],
        None,
    );
    assert_eq!(paused.status, 200, "{}", paused.body);
    wait_until("the sink pauses", Duration::from_secs(60), || {
        state() == "paused"
    });
    assert_eq!(
        call("POST", "/pipelines/backup/resume", &[auth], None).status,
        200
    );
    wait_until("the sink runs again", Duration::from_secs(60), || {
        state() == "running"
    });

    assert!(terminate(&mut child).success());
    let log = service.log("guard.log");
    assert!(log.contains("refused an API request"), "{log}");
    assert!(!log.contains(TOKEN), "the log shows no token");
}

/// Issue 14: an API other hosts can reach needs a token, unless the operator says otherwise.
#[test]
fn an_api_reachable_from_other_hosts_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pipelines")).unwrap();
    let config = dir.path().join("rewind.toml");
    let write = |service: &str| {
        std::fs::write(
            &config,
            format!(
                "archive = \"file://{}/archive\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n[service]\nhttp_addr = \"0.0.0.0:18080\"\n{service}",
                dir.path().display()
            ),
        )
        .unwrap();
    };
    let check = || service_command(&config).arg("--check").output().unwrap();
    write("");
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::text(&out.stderr).contains(
            "service.api_token: the API listens on 0.0.0.0:18080, which other hosts can reach"
        ),
        "{}",
        common::text(&out.stderr)
    );
    write("api_token = \"tooshort1\"\n");
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains("service.api_token: is shorter than 16 characters"),
        "{stderr}"
    );
    assert!(!stderr.contains("tooshort1"), "the token is not shown");
    write("api_token = \"${env:TEST_API_TOKEN}\"\n");
    assert!(
        check().status.success(),
        "{}",
        common::text(&check().stderr)
    );
    write("allow_unauthenticated = true\n");
    assert!(
        check().status.success(),
        "{}",
        common::text(&check().stderr)
    );
}

/// Issue 14: a pipeline is one thing across its workers. A pause through one worker's API pauses
/// the pipeline on every worker (the others do not take over its partitions) and survives a
/// restart; a resume through any worker resumes all. A restore started through the API is
/// remembered in its archive across a kill of its service, and resumes from the restarted
/// service's API exactly where its committed progress left it.
#[tokio::test(flavor = "multi_thread")]
async fn a_pause_holds_on_every_worker_and_restores_outlive_their_service() {
    common::no_instance_metadata();
    let topic = common::unique("svc-one");
    let standby = format!("{topic}-standby");
    create_topic(&topic, 2, &[]).await;
    let (archive, store) = s3_archive().await;
    let service = ServiceDir::new(
        &archive,
        "control_interval = \"1s\"\n",
        &[("backup", sink_pipeline(&topic))],
    );
    let ready = |addr: &str| {
        wait_until("the worker is ready", Duration::from_secs(60), || {
            request(addr, "GET", "/readyz", None).is_some_and(|r| r.status == 200)
        });
    };
    let state = |addr: &str| pipeline(addr, "backup")["state"].clone();
    let (a, b) = (free_addr(), free_addr());
    let mut first = service.start(&a, "a.log");
    let mut second = service.start(&b, "b.log");
    ready(&a);
    ready(&b);
    let mut produced: Vec<Vec<Record>> = vec![Vec::new(); 2];
    produce_round(&topic, &mut produced, 0, 100).await;
    wait_until(
        "the workers archived 200 records",
        Duration::from_secs(90),
        || archived_records(&archive) == 200,
    );

    // Paused through A: B follows, and nobody archives.
    let paused = post(&a, "/pipelines/backup/pause", "");
    assert_eq!(paused.status, 200, "{}", paused.body);
    for addr in [&a, &b] {
        wait_until("both workers pause", Duration::from_secs(30), || {
            state(addr) == "paused"
        });
    }
    produce_round(&topic, &mut produced, 100, 50).await;
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        archived_records(&archive),
        200,
        "a paused pipeline archives nothing anywhere"
    );

    // B restarts paused.
    kill_hard(&mut second);
    let b = free_addr();
    let mut second = service.start(&b, "b2.log");
    wait_until(
        "the restarted worker answers",
        Duration::from_secs(30),
        || request(&b, "GET", "/healthz", None).is_some_and(|r| r.status == 200),
    );
    wait_until(
        "the restarted worker is paused",
        Duration::from_secs(30),
        || state(&b) == "paused",
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        archived_records(&archive),
        200,
        "the restart kept the pause"
    );

    // Resumed through B: both run, and the records produced meanwhile are archived.
    assert_eq!(post(&b, "/pipelines/backup/resume", "").status, 200);
    for addr in [&a, &b] {
        wait_until("both workers run", Duration::from_secs(60), || {
            state(addr) == "running"
        });
    }
    wait_until(
        "the workers archived 300 records",
        Duration::from_secs(90),
        || archived_records(&archive) == 300,
    );

    // A restore started through A's API, then A killed in the middle of it.
    let body = serde_json::json!({
        "topics": regex::escape(&topic),
        "renames": { topic.clone(): standby.clone() },
        "restore_id": standby.clone(),
        "follow": true,
    });
    let started = post(&a, "/restores", &body.to_string());
    assert_eq!(started.status, 202, "{}", started.body);
    wait_until(
        "the standby holds 300 records",
        Duration::from_secs(90),
        || (0..2).all(|p| restored(&standby, p).len() == 150),
    );
    kill_hard(&mut first);
    produce_round(&topic, &mut produced, 150, 20).await;
    wait_for_pipeline(&b, "backup", "B archived 340 records", |_| {
        archived_records(&archive) == 340
    });

    // The restarted service (the same host and address) remembers it, and resumes it exactly.
    let mut first = service.start(&a, "a2.log");
    let path = format!("/restores/{standby}");
    wait_until(
        "the restarted service lists the restore",
        Duration::from_secs(60),
        || {
            request(&a, "GET", &path, None)
                .is_some_and(|r| r.status == 200 && r.json()["state"] == "interrupted")
        },
    );
    let listed = get(&a, "/restores").json();
    assert_eq!(listed["restores"][0]["request"]["follow"], true, "{listed}");
    // Its id takes no other request: the record and the listing keep the original.
    let other = serde_json::json!({
        "topics": regex::escape(&topic),
        "renames": { topic.clone(): format!("{standby}-other") },
        "restore_id": standby.clone(),
        "follow": true,
    });
    let refused = post(&a, "/restores", &other.to_string());
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("was used for another request"),
        "{}",
        refused.body
    );
    assert_eq!(get(&a, &path).json()["state"], "interrupted");
    let resumed = post(&a, &format!("{path}/resume"), "");
    assert_eq!(resumed.status, 202, "{}", resumed.body);
    assert_eq!(
        post(&a, &format!("{path}/resume"), "").status,
        409,
        "it runs already"
    );
    wait_until(
        "the standby holds all 340 records",
        Duration::from_secs(90),
        || (0..2).all(|p| restored(&standby, p).len() >= 170),
    );
    for p in 0..2 {
        assert_eq!(
            content(&restored(&standby, p)),
            content(&produced[p as usize]),
            "partition {p}: every record once"
        );
    }

    assert!(terminate(&mut first).success(), "{}", service.log("a2.log"));
    assert!(
        terminate(&mut second).success(),
        "{}",
        service.log("b2.log")
    );
    // Stopped with its service, the restore is remembered as stopped.
    let doc = store
        .get(&format!("_control/restores/{standby}.json"))
        .await
        .unwrap()
        .body;
    let doc: Value = serde_json::from_slice(&doc).unwrap();
    assert_eq!(doc["state"], "stopped", "{doc}");
    verify_clean(&archive);
}

/// Produce `count` records of `traffic` from `from` into both partitions of `topic`.
async fn produce_round(topic: &str, produced: &mut [Vec<Record>], from: usize, count: usize) {
    for p in 0..2 {
        let more = produce(topic, p, &traffic(p, from, count)).await;
        produced[p as usize].extend(more);
    }
}

/// The sum of a counter's samples in a `/metrics` page (0 when it has none yet).
fn counter(addr: &str, name: &str) -> f64 {
    get(addr, "/metrics")
        .body
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn sinks_take_each_scheduled_mark_once_and_the_api_takes_and_lists_marks() {
    common::no_instance_metadata();
    let topic = common::unique("svc-marks");
    create_topic(&topic, 2, &[]).await;
    for p in 0..2 {
        produce(&topic, p, &traffic(p, 0, 50)).await;
    }
    let (archive, store) = s3_archive().await;
    // The [sink] section is the pipeline's last: the schedule goes into it.
    let backup = format!("{}marks = \"hourly\"\n", sink_pipeline(&topic));
    // Both workers also keep the topic's Iceberg table, syncing every second.
    let tables = format!(
        "[tables]\nevery = \"1s\"\ntopics = \"{}\"\n",
        regex::escape(&topic).replace('\\', "\\\\")
    );
    let service = ServiceDir::new(&archive, &tables, &[("backup", backup)]);
    let (a, b) = (free_addr(), free_addr());
    let mut first = service.start(&a, "a.log");
    let mut second = service.start(&b, "b.log");
    for addr in [&a, &b] {
        wait_until("both workers are ready", Duration::from_secs(60), || {
            request(addr, "GET", "/readyz", None).is_some_and(|r| r.status == 200)
        });
    }
    // The hour's mark, taken by one of the two workers, becomes complete as the sink archives.
    let hourly = |addr: &str| -> Vec<Value> {
        get(addr, "/marks").json()["marks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"].as_str().unwrap().starts_with("hourly-"))
            .cloned()
            .collect()
    };
    wait_until(
        "the hour's mark is archived",
        Duration::from_secs(90),
        || {
            let marks = hourly(&a);
            !marks.is_empty() && marks.iter().all(|m| m["status"] == "complete")
        },
    );
    let taken = counter(&a, "rewind_marks_taken_total") + counter(&b, "rewind_marks_taken_total");
    assert_eq!(
        taken,
        hourly(&a).len() as f64,
        "each hour's mark is taken by one worker: {:?}",
        hourly(&a)
    );

    // Through the API: taken once, listed with its status; mistakes are one-sentence errors.
    let body = format!(r#"{{"name": "api-mark", "topics": "{}"}}"#, topic);
    let created = post(&a, "/marks", &body);
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.json()["partitions"], 2);
    for (body, status, says) in [
        (body.as_str(), 409, "already exists"),
        (r#"{"name": "a/b"}"#, 400, "may only hold letters"),
        (
            r#"{"name": "x", "cluster": "nope"}"#,
            404,
            "no cluster named",
        ),
        (
            r#"{"name": "x", "archive": "nope"}"#,
            404,
            "no archive named",
        ),
        (r#"{"nme": "x"}"#, 400, "unknown field"),
        (r#"{"name": "x", "topics": "("}"#, 400, "unclosed group"),
    ] {
        let refused = post(&b, "/marks", body);
        assert_eq!(refused.status, status, "{body}: {}", refused.body);
        assert!(
            refused.json()["error"].as_str().unwrap().contains(says),
            "{body}: {}",
            refused.body
        );
    }
    wait_until(
        "the API's mark is archived",
        Duration::from_secs(60),
        || {
            get(&b, "/marks").json()["marks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "api-mark" && m["status"] == "complete")
        },
    );
    // The table, synced by both workers at once, holds every record archived.
    let table_records = || async {
        let prefix = format!("{}metadata/", rewind::tables::table_prefix(&topic));
        let hint = store
            .get(&format!("{prefix}version-hint.text"))
            .await
            .ok()?;
        let version = String::from_utf8_lossy(&hint.body).to_string();
        let meta = store
            .get(&format!("{prefix}v{version}.metadata.json"))
            .await
            .ok()?;
        let meta: rewind::tables::metadata::TableMetadata =
            serde_json::from_slice(&meta.body).unwrap();
        meta.current()?
            .summary
            .get("total-records")?
            .parse::<u64>()
            .ok()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while table_records().await != Some(100) {
        assert!(
            std::time::Instant::now() < deadline,
            "the table did not reach the 100 records archived: {:?}",
            table_records().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let commits =
        counter(&a, "rewind_table_commits_total") + counter(&b, "rewind_table_commits_total");
    assert!(commits >= 1.0, "no table commit was counted");
    for child in [&mut first, &mut second] {
        assert!(terminate(child).success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_drill_runs_once_per_period_across_workers_and_exports_its_result() {
    common::no_instance_metadata();
    let topic = common::unique("svc-drill");
    create_topic(&topic, 2, &[]).await;
    for p in 0..2 {
        produce(&topic, p, &traffic(p, 0, 30)).await;
    }
    let (archive, store) = s3_archive().await;
    let out = common::sink_command(&archive, &topic, &common::unique("g"))
        .arg("--once")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let drill = format!(
        "\n[drill]\nevery = \"hourly\"\nsample = \"3h\"\ntopics = \"{}\"\n",
        regex::escape(&topic).replace('\\', "\\\\")
    );
    let service = ServiceDir::new(&archive, &drill, &[]);
    let (a, b) = (free_addr(), free_addr());
    let mut first = service.start(&a, "a.log");
    let mut second = service.start(&b, "b.log");
    let runs = |result: &str| {
        [&a, &b]
            .iter()
            .map(|addr| counter(addr, &format!("rewind_drills_total{{result=\"{result}\"}}")))
            .sum::<f64>()
    };
    wait_until("the hour's drill passed", Duration::from_secs(120), || {
        [&a, &b]
            .iter()
            .all(|addr| request(addr, "GET", "/healthz", None).is_some_and(|r| r.status == 200))
            && runs("passed") >= 1.0
    });
    // One worker ran it; the other found the period claimed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        runs("passed"),
        1.0,
        "{}{}",
        service.log("a.log"),
        service.log("b.log")
    );
    assert_eq!(runs("failed") + runs("error"), 0.0);
    let reports = store.list("_drills/").await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report: Value =
        serde_json::from_slice(&store.get(&reports[0].key).await.unwrap().body).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["records"], 60, "{report}");
    let ran_on = if counter(&a, "rewind_drills_total") > 0.0 {
        &a
    } else {
        &b
    };
    let metrics = get(ran_on, "/metrics").body;
    assert!(
        metrics.contains("rewind_drill_last_success_timestamp_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "rewind_drill_estimated_restore_seconds{{topic=\"{topic}\"}}"
        )),
        "{metrics}"
    );
    for child in [&mut first, &mut second] {
        assert!(terminate(child).success());
    }
    // A worker that starts later exports when the last drill passed, read from the archive.
    let c = free_addr();
    let mut third = service.start(&c, "c.log");
    wait_until(
        "the third worker read the last drill",
        Duration::from_secs(60),
        || {
            request(&c, "GET", "/metrics", None).is_some_and(|r| {
                r.body
                    .contains("rewind_drill_last_success_timestamp_seconds")
            })
        },
    );
    assert_eq!(counter(&c, "rewind_drills_total"), 0.0);
    assert!(terminate(&mut third).success());
}

/// `[compact] every` on two workers of `rewind run` while their sink pipeline keeps archiving:
/// the closed hour's small files of each partition become one (both workers compacting at once),
/// the counters say so, and the archive holds every produced record once and verifies clean.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_compaction_merges_closed_hours_while_the_sink_runs() {
    common::no_instance_metadata();
    let topic = common::unique("svc-compact");
    create_topic(&topic, 2, &[]).await;
    let old = (common::now_ms() / 3_600_000 - 4) * 3_600_000 + 60_000;
    let mut produced: Vec<Vec<Record>> = vec![Vec::new(), Vec::new()];
    for p in 0..2 {
        let records: Vec<Record> = traffic(p, 0, 24)
            .into_iter()
            .enumerate()
            .map(|(i, r)| Record {
                timestamp: Some(old + i as i64 * 1000),
                ..r
            })
            .collect();
        produced[p as usize].extend(produce(&topic, p, &records).await);
    }
    let (archive, store) = s3_archive().await;
    // Four files of six records per partition in the old hour.
    let out = common::sink_command(&archive, &topic, &format!("rewind-{topic}"))
        .arg("--once")
        .env("REWIND__SINK__MAX_FILE_RECORDS", "6")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let hour_folder = |p: i32| {
        let b = rewind::archive::time::HourBucket::of_millis(old);
        format!(
            "data/topic={topic}/partition={p}/date={}/hour={}/",
            b.date(),
            b.hour()
        )
    };
    for p in 0..2 {
        assert_eq!(store.list(&hour_folder(p)).await.unwrap().len(), 4);
    }
    let compact = format!(
        "[compact]\nevery = \"1s\"\ntopics = \"{}\"\n",
        regex::escape(&topic).replace('\\', "\\\\")
    );
    let service = ServiceDir::new(&archive, &compact, &[("backup", sink_pipeline(&topic))]);
    let (a, b) = (free_addr(), free_addr());
    let mut first = service.start(&a, "a.log");
    let mut second = service.start(&b, "b.log");
    for addr in [&a, &b] {
        wait_until("both workers are ready", Duration::from_secs(60), || {
            request(addr, "GET", "/readyz", None).is_some_and(|r| r.status == 200)
        });
    }
    produce_round(&topic, &mut produced, 100, 40).await;
    let mut merged = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !merged {
        assert!(
            std::time::Instant::now() < deadline,
            "the old hour was not compacted: {}",
            service.log("a.log")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut one_each = true;
        for p in 0..2 {
            let keys = store.list(&hour_folder(p)).await.unwrap();
            one_each &= keys.len() == 1 && keys[0].key.ends_with("-00000000000000000024.parquet");
        }
        merged = one_each;
    }
    produce_round(&topic, &mut produced, 200, 20).await;
    let files =
        counter(&a, "rewind_compact_files_total") + counter(&b, "rewind_compact_files_total");
    let parts =
        counter(&a, "rewind_compact_parts_total") + counter(&b, "rewind_compact_parts_total");
    // At least each partition's hour (twice when the hour's last file, the chain's last at
    // first, is merged in later; a run both workers compacted at once counts for both).
    assert!(
        files >= 2.0 && parts >= 8.0,
        "{files} files from {parts} parts"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = true;
        for p in 0..2 {
            all &=
                common::archive::chain(&store, &topic, p).await.len() == produced[p as usize].len();
        }
        if all {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sink did not archive every record"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for child in [&mut first, &mut second] {
        assert!(terminate(child).success());
    }
    for p in 0..2 {
        assert_eq!(
            content(&common::archive::chain(&store, &topic, p).await),
            content(&produced[p as usize]),
            "partition {p}: every record once"
        );
    }
    verify_clean(&archive);
}
