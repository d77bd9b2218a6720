//! `rewind sink` as operators run it: snapshot and continuous modes through the binary, graceful
//! drain on SIGTERM, and one-sentence errors with the right exit code for bad input.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{create_topic, produce, record};
use rewind::archive::datafile;
use rewind::storage::{LocalStore, ObjectStore, StorageUrl};

fn rewind() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewind"));
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("RUST_LOG");
    cmd
}

async fn archived_records(archive: &str) -> usize {
    let store = LocalStore::open(StorageUrl::parse(archive).unwrap()).unwrap();
    let mut n = 0;
    for object in store.list("data/").await.unwrap() {
        let (_, rows) = datafile::decode(store.get(&object.key).await.unwrap().body).unwrap();
        n += rows.len();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_archives_and_reports() {
    let topic = common::unique("cli-once");
    create_topic(&topic, 2, &[]).await;
    let records: Vec<_> = (0..50)
        .map(|i| {
            record(
                Some(format!("k{i}").as_bytes()),
                Some(b"v"),
                vec![],
                common::now_ms() - i,
            )
        })
        .collect();
    produce(&topic, 0, &records[..30]).await;
    produce(&topic, 1, &records[30..]).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}/archive", dir.path().display());
    let out = rewind()
        .args([
            "sink",
            "--once",
            "--archive",
            &archive,
            "--bootstrap-servers",
            &common::kafka_bootstrap(),
            "--topics",
            &regex::escape(&topic),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    // The end of a partition is how a snapshot knows it is done, never an error line.
    let stderr = common::text(&out.stderr);
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("Partition EOF"),
        "{stderr}"
    );
    assert_eq!(
        common::text(&out.stdout).trim(),
        format!(
            "archived 50 records in 2 files ({} bytes) from 2 partitions to {archive}",
            {
                let store = LocalStore::open(StorageUrl::parse(&archive).unwrap()).unwrap();
                store
                    .list("data/")
                    .await
                    .unwrap()
                    .iter()
                    .map(|o| o.size)
                    .sum::<u64>()
            }
        )
    );
    assert_eq!(archived_records(&archive).await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_buffered_records_and_exits_zero() {
    let topic = common::unique("cli-drain");
    create_topic(&topic, 1, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}/archive", dir.path().display());
    // Files stay open for an hour: only the drain can make these records durable.
    let child = rewind()
        .args([
            "sink",
            "--archive",
            &archive,
            "--bootstrap-servers",
            &common::kafka_bootstrap(),
            "--topics",
            &regex::escape(&topic),
        ])
        .env("REWIND__SINK__MAX_FILE_AGE", "1h")
        .env("REWIND__SINK__DISCOVERY_INTERVAL", "1s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let records: Vec<_> = (0..20)
        .map(|i| {
            record(
                Some(b"k"),
                Some(format!("v{i}").as_bytes()),
                vec![],
                common::now_ms(),
            )
        })
        .collect();
    produce(&topic, 0, &records).await;
    // Give the sink time to consume (it is polling the partition from offset 0).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        archived_records(&archive).await,
        0,
        "nothing is durable before the drain"
    );
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        common::text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        archived_records(&archive).await,
        20,
        "every buffered record made durable"
    );
    assert!(
        common::text(&out.stdout).starts_with("archived 20 records in 1 files"),
        "{}",
        common::text(&out.stdout)
    );
}

#[test]
fn bad_input_is_one_sentence_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}/archive", dir.path().display());
    let bootstrap = common::kafka_bootstrap();

    let out = rewind()
        .args([
            "sink",
            "--once",
            "--archive",
            &archive,
            "--bootstrap-servers",
            &bootstrap,
            "--topics",
            "orders(",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::error_line(&out).starts_with(
            "error: invalid configuration: sink.topics: invalid regular expression \"orders(\""
        ),
        "{}",
        common::text(&out.stderr)
    );

    let out = rewind()
        .args([
            "sink",
            "--once",
            "--archive",
            &archive,
            "--bootstrap-servers",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        common::error_line(&out),
        "error: kafka 127.0.0.1:1: no broker answered within 10s (check --bootstrap-servers or kafka.bootstrap_servers, and that the cluster is up)"
    );

    let out = rewind()
        .args([
            "sink",
            "--once",
            "--archive",
            "file:///proc/rewind-archive",
            "--bootstrap-servers",
            &bootstrap,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::error_line(&out)
            .starts_with("error: file:///proc/rewind-archive: create the archive directory failed"),
        "{}",
        common::text(&out.stderr)
    );

    let bucket = common::unique("rewind-absent");
    let out = rewind()
        .args([
            "sink",
            "--once",
            "--archive",
            &format!("s3://{bucket}"),
            "--s3-endpoint",
            &common::s3_endpoint(),
            "--s3-path-style",
            "--bootstrap-servers",
            &bootstrap,
        ])
        .env("AWS_ACCESS_KEY_ID", common::s3_access_key())
        .env("AWS_SECRET_ACCESS_KEY", common::s3_secret_key())
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(common::error_line(&out), format!("error: s3://{bucket}: bucket \"{bucket}\" not found (check --archive or REWIND__ARCHIVE)"));

    let out = rewind()
        .args([
            "sink",
            "--once",
            "--archive",
            &archive,
            "--bootstrap-servers",
            &bootstrap,
            "--topics",
            "no-topic-is-called-this",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(common::error_line(&out), "error: no topic matches --topics \"^(?:no-topic-is-called-this)$\" (after --exclude); nothing to back up");
}

/// GET a URL path from a loopback HTTP server and return the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of one sample line `name{labels} value` in Prometheus exposition text.
fn sample(body: &str, name: &str, topic: &str) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("topic=\"{topic}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_what_was_archived() {
    let topic = common::unique("cli-metrics");
    create_topic(&topic, 2, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = format!("file://{}/archive", dir.path().display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = rewind()
        .args([
            "sink",
            "--archive",
            &archive,
            "--bootstrap-servers",
            &common::kafka_bootstrap(),
            "--topics",
            &regex::escape(&topic),
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("REWIND__SINK__MAX_FILE_AGE", "1s")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let records: Vec<_> = (0..30)
        .map(|i| {
            record(
                Some(b"k"),
                Some(format!("v{i}").as_bytes()),
                vec![],
                common::now_ms(),
            )
        })
        .collect();
    produce(&topic, 0, &records[..20]).await;
    produce(&topic, 1, &records[20..]).await;

    let mut body = String::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        body = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
            .await
            .unwrap();
        if sample(&body, "rewind_sink_records_archived_total", &topic) == Some(30.0)
            && sample(&body, "rewind_sink_lag_records", &topic) == Some(0.0)
        {
            break;
        }
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert_eq!(
        sample(&body, "rewind_sink_records_archived_total", &topic),
        Some(30.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "rewind_sink_lag_records", &topic),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "rewind_sink_recovery_point_age_seconds", &topic),
        Some(0.0),
        "{body}"
    );
    assert!(
        sample(&body, "rewind_sink_bytes_archived_total", &topic).is_some_and(|b| b > 0.0),
        "{body}"
    );
    assert!(body.contains("rewind_sink_upload_seconds"), "{body}");
    assert_eq!(archived_records(&archive).await, 30);
}
