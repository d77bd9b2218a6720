//! Storage throughput: create-only puts, listing and reads of archive-sized objects on the local
//! backend and, when the test bed's S3 server answers, on S3. Prints a table.
//!
//!   cargo bench --bench storage                     # local only
//!   scripts/s3.sh start && cargo bench --bench storage   # local and S3 (MinIO on 127.0.0.1:9000)
//!
//! `cargo clippy --all-targets` checks this file; `scripts/test` never runs it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use rewind::storage::{self, ObjectStore, PutMode, RetryPolicy, S3Options, StorageUrl};

const CONCURRENCY: usize = 16;

struct Row {
    backend: &'static str,
    op: &'static str,
    objects: usize,
    bytes: u64,
    took: Duration,
}

async fn measure(
    backend: &'static str,
    store: Arc<dyn ObjectStore>,
    objects: usize,
    size: usize,
    rows: &mut Vec<Row>,
) {
    let body = Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>());
    let keys: Vec<String> = (0..objects)
        .map(|i| format!("data/topic=bench/partition={}/{i:020}.parquet", i % 8))
        .collect();

    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(
        keys.iter()
            .map(|k| store.put(k, body.clone(), PutMode::Create)),
    )
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    assert!(results.iter().all(Result::is_ok), "a put failed");
    rows.push(Row {
        backend,
        op: "put (create-only)",
        objects,
        bytes: (objects * size) as u64,
        took: started.elapsed(),
    });

    let started = Instant::now();
    let listed = store.list("data/").await.expect("list");
    assert_eq!(listed.len(), objects);
    rows.push(Row {
        backend,
        op: "list",
        objects,
        bytes: 0,
        took: started.elapsed(),
    });

    let started = Instant::now();
    let read: Vec<_> = futures::stream::iter(keys.iter().map(|k| store.get(k)))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    assert!(
        read.iter()
            .all(|r| r.as_ref().is_ok_and(|g| g.body.len() == size)),
        "a get failed"
    );
    rows.push(Row {
        backend,
        op: "get",
        objects,
        bytes: (objects * size) as u64,
        took: started.elapsed(),
    });
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("storage bench: run it with `cargo bench --bench storage`");
        return;
    }
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut rows = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let url = StorageUrl::parse(&format!("file://{}/archive", dir.path().display())).unwrap();
        let local = storage::open_writer(&url, &S3Options::default()).await.unwrap();
        measure("file", local, 2_000, 256 * 1024, &mut rows).await;

        let endpoint = std::env::var("REWIND_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into());
        let opts = S3Options {
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint.clone()),
            path_style: true,
            access_key_id: Some(std::env::var("REWIND_TEST_S3_ACCESS_KEY").unwrap_or_else(|_| "rewind".into())),
            secret_access_key: Some(std::env::var("REWIND_TEST_S3_SECRET_KEY").unwrap_or_else(|_| "rewind-secret-key".into())),
            retry: RetryPolicy::default(),
            ..S3Options::default()
        };
        let bucket = format!("rewind-bench-{}", std::process::id());
        let sdk = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url(&endpoint)
                .force_path_style(true)
                .credentials_provider(aws_sdk_s3::config::Credentials::new(
                    opts.access_key_id.clone().unwrap(),
                    opts.secret_access_key.clone().unwrap(),
                    None,
                    None,
                    "bench",
                ))
                .build(),
        );
        match sdk.create_bucket().bucket(&bucket).send().await {
            Ok(_) => {
                let url = StorageUrl::parse(&format!("s3://{bucket}/bench")).unwrap();
                let s3 = storage::open_writer(&url, &opts).await.unwrap();
                measure("s3", s3, 2_000, 256 * 1024, &mut rows).await;
            }
            Err(_) => eprintln!("no S3 server at {endpoint}: measuring the local backend only (scripts/s3.sh start)"),
        }

        println!("{:<8} {:<18} {:>8} {:>10} {:>12} {:>10}", "backend", "operation", "objects", "seconds", "objects/s", "MB/s");
        for r in rows {
            let secs = r.took.as_secs_f64();
            println!(
                "{:<8} {:<18} {:>8} {:>10.3} {:>12.0} {:>10.1}",
                r.backend,
                r.op,
                r.objects,
                secs,
                r.objects as f64 / secs,
                r.bytes as f64 / secs / 1e6
            );
        }
    });
}
