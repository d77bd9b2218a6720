//! Shared helpers of the integration tests: where the test bed's services are, explicit S3
//! credentials (so no test ever reaches for the AWS credential chain or instance metadata), and
//! random names so tests never see each other's data.
#![allow(dead_code)]

pub mod archive;
pub mod http;
pub mod kafka;
pub mod registry;
pub mod watched;

use std::sync::Once;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use rand::Rng;
use rewind::storage::{RetryPolicy, S3Options, S3Store, StorageUrl};

/// The broker started by `scripts/kafka.sh`.
pub fn kafka_bootstrap() -> String {
    std::env::var("REWIND_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn s3_endpoint() -> String {
    std::env::var("REWIND_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into())
}

pub fn s3_access_key() -> String {
    std::env::var("REWIND_TEST_S3_ACCESS_KEY").unwrap_or_else(|_| "rewind".into())
}

pub fn s3_secret_key() -> String {
    std::env::var("REWIND_TEST_S3_SECRET_KEY").unwrap_or_else(|_| "rewind-secret-key".into())
}

/// Where to look when a test-bed service does not answer.
pub fn testbed_hint() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("REWIND_CACHE").unwrap_or_else(|_| format!("{home}/.cache/rewind"));
    format!(
        "is the test bed running? `scripts/test` starts it (or scripts/kafka.sh start, scripts/s3.sh start); \
         logs: {cache}/testbed/kafka/kafka.log and {cache}/testbed/s3/s3.log"
    )
}

/// Keep the AWS chain away from instance metadata in every test process.
pub fn no_instance_metadata() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var("AWS_EC2_METADATA_DISABLED", "true"));
}

/// `rewind <command> --archive <archive>` wired to the test bed: its S3 server with explicit
/// credentials (unused by a `file://` archive), and its broker for the commands that talk to one
/// (the archive tools take no Kafka flags).
fn rewind_command(command: &str, archive: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rewind"));
    cmd.args([
        command,
        "--archive",
        archive,
        "--s3-endpoint",
        &s3_endpoint(),
        "--s3-path-style",
    ]);
    if matches!(command, "sink" | "restore" | "check" | "mark" | "drill") {
        cmd.args(["--bootstrap-servers", &kafka_bootstrap()]);
    }
    cmd.env("AWS_ACCESS_KEY_ID", s3_access_key())
        .env("AWS_SECRET_ACCESS_KEY", s3_secret_key())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn");
    cmd
}

/// `rewind sink` of one topic into `archive` for consumer group `group`, on the test bed. Callers
/// add `--once`, settings and output handling on top.
pub fn sink_command(archive: &str, topic: &str, group: &str) -> std::process::Command {
    let mut cmd = rewind_command("sink", archive);
    cmd.args(["--topics", &regex::escape(topic), "--group", group]);
    cmd
}

/// `rewind restore` from `archive` into the test bed's broker. Callers add the window, topics and
/// flags.
pub fn restore_command(archive: &str) -> std::process::Command {
    rewind_command("restore", archive)
}

/// `rewind mark --archive <archive>` against the test bed's broker. Callers add the name and flags.
pub fn mark_command(archive: &str) -> std::process::Command {
    rewind_command("mark", archive)
}

/// `rewind drill --archive <archive>` into the test bed's broker. Callers add the window and flags.
pub fn drill_command(archive: &str) -> std::process::Command {
    rewind_command("drill", archive)
}

/// `rewind <tool> --archive <archive>` (verify, find, ls, retention) on the test bed.
pub fn tool_command(tool: &str, archive: &str) -> std::process::Command {
    rewind_command(tool, archive)
}

/// Run `cmd` with failpoint `name` armed and kill it (SIGKILL) as soon as it reports reaching
/// it, or after 60 s; returns whether it got there.
pub fn kill_at_failpoint(cmd: &mut std::process::Command, name: &str) -> bool {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = cmd
        .env("REWIND_FAILPOINT", name)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let needle = format!("failpoint {name} reached");
    let reached = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains(&needle))
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reached.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    reached.join().unwrap()
}

/// Archive `topic` with `rewind sink --once` into a new local archive, closing a file every
/// `max_file_records` records; returns the archive's URL, its folder (deleted on drop) and every
/// partition's records as a `read_committed` consumer sees them.
pub fn archive_once(
    topic: &str,
    partitions: i32,
    max_file_records: u32,
) -> (String, tempfile::TempDir, Vec<Vec<rewind::archive::Record>>) {
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", dir.path().display());
    let out = sink_command(&archive, topic, &unique("g"))
        .arg("--once")
        .env(
            "REWIND__SINK__MAX_FILE_RECORDS",
            max_file_records.to_string(),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let source = (0..partitions)
        .map(|p| {
            kafka::read_to_end(topic, p)
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        })
        .collect();
    (archive, dir, source)
}

/// Options of a `--once` sink of one topic that closes a file every `max_records` records.
pub fn once_sink_options(topic: &str, max_records: u64) -> rewind::sink::SinkOptions {
    rewind::sink::SinkOptions {
        topics: rewind::kafka::topics::TopicSelector::exactly(topic),
        group: Some(unique("once")),
        once: true,
        policy: rewind::archive::rotation::RollingPolicy {
            max_records,
            ..Default::default()
        },
        buffer_budget: 64 << 20,
        part_size: 5 << 20,
        uploads_in_flight: rewind::sink::default_uploads_in_flight(),
        discovery_interval: std::time::Duration::from_secs(30),
        allow_cluster_change: false,
        drain_timeout: std::time::Duration::from_secs(30),
        progress: false,
        group_snapshot_interval: std::time::Duration::ZERO,
        live: None,
        admin_api: true,
        decoders: None,
    }
}

/// A random lowercase name, valid as a bucket, topic or group name.
pub fn unique(prefix: &str) -> String {
    let suffix: u64 = rand::rng().random();
    format!("{prefix}-{suffix:016x}")
}

/// S3 options for the test bed: explicit endpoint, region and credentials.
pub fn s3_options() -> S3Options {
    no_instance_metadata();
    S3Options {
        region: Some("us-east-1".into()),
        endpoint: Some(s3_endpoint()),
        path_style: true,
        access_key_id: Some(s3_access_key()),
        secret_access_key: Some(s3_secret_key()),
        retry: RetryPolicy {
            max_attempts: 4,
            ..RetryPolicy::default()
        },
        ..S3Options::default()
    }
}

/// A raw S3 client for what the storage trait does not do (creating buckets).
pub fn s3_client() -> aws_sdk_s3::Client {
    s3_client_at(&s3_endpoint())
}

/// A raw S3 client for a test-bed server at `endpoint` (a private server of a fault test).
pub fn s3_client_at(endpoint: &str) -> aws_sdk_s3::Client {
    no_instance_metadata();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            s3_access_key(),
            s3_secret_key(),
            None,
            None,
            "rewind-tests",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Create a fresh bucket on the test bed's S3 server.
pub async fn new_bucket() -> String {
    let bucket = unique("rewind-test");
    s3_client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "creating bucket {bucket} failed: {}; {}",
                aws_sdk_s3::error::DisplayErrorContext(&e),
                testbed_hint()
            )
        });
    bucket
}

/// A store on a fresh bucket, under a prefix so that prefix handling is exercised too.
pub async fn s3_store() -> S3Store {
    let bucket = new_bucket().await;
    let url = StorageUrl::parse(&format!("s3://{bucket}/archive/prod")).unwrap();
    S3Store::open(url, &s3_options())
        .await
        .expect("open the S3 store")
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Lossy UTF-8 of process output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The single `error: …` line a failed command prints.
pub fn error_line(out: &std::process::Output) -> String {
    let stderr = text(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {stderr}");
    errors[0].to_string()
}

/// The `python` of a test-bed virtual environment: `$env_var` (set by `scripts/test`), else what
/// `scripts/<script>` installs and prints.
pub fn venv_python(env_var: &str, script: &str) -> String {
    if let Ok(python) = std::env::var(env_var) {
        return python;
    }
    let path = format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(&path)
        .output()
        .unwrap_or_else(|e| panic!("run {path}: {e}"));
    assert!(out.status.success(), "{path} failed: {}", text(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Run `python -c script args…`, a script that prints JSON, and parse what it printed.
pub fn python_json(python: &str, script: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python {args:?} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Bytes as lowercase hex, as the Python scripts print them; `None` as null.
pub fn hex(bytes: &Option<Vec<u8>>) -> serde_json::Value {
    match bytes {
        None => serde_json::Value::Null,
        Some(b) => serde_json::Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
    }
}
