//! The storage layer's failures are distinct, one-sentence errors: a missing bucket, refused
//! credentials, an endpoint nobody listens on, a malformed URL, an unwritable directory.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use rewind::storage::{
    LocalStore, ObjectStore, PutMode, RetryPolicy, S3Store, StorageError, StorageUrl,
};

fn one_sentence(err: &StorageError) -> String {
    let text = err.to_string();
    assert!(!text.contains('\n'), "errors are one line: {text}");
    text
}

#[tokio::test]
async fn a_missing_bucket_is_named() {
    let bucket = common::unique("rewind-missing");
    let store = S3Store::open(
        StorageUrl::parse(&format!("s3://{bucket}/p")).unwrap(),
        &common::s3_options(),
    )
    .await
    .unwrap();
    let err = store.list_page("", None).await.unwrap_err();
    assert!(
        matches!(err, StorageError::BucketNotFound { .. }),
        "{err:?}"
    );
    assert_eq!(
        one_sentence(&err),
        format!(
            "s3://{bucket}/p: bucket \"{bucket}\" not found (check --archive or REWIND__ARCHIVE)"
        )
    );
    let put = store
        .put("k", Bytes::from_static(b"x"), PutMode::Create)
        .await
        .unwrap_err();
    assert!(
        matches!(put, StorageError::BucketNotFound { .. }),
        "{put:?}"
    );
}

#[tokio::test]
async fn wrong_credentials_are_access_denied() {
    let bucket = common::new_bucket().await;
    let mut opts = common::s3_options();
    opts.secret_access_key = Some("not-the-secret".into());
    let store = S3Store::open(StorageUrl::parse(&format!("s3://{bucket}")).unwrap(), &opts)
        .await
        .unwrap();
    let err = store
        .put("k", Bytes::from_static(b"x"), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::AccessDenied { .. }), "{err:?}");
    assert!(!err.is_transient(), "refused credentials are not retried");
    assert_eq!(
        one_sentence(&err),
        format!(
            "s3://{bucket}: access denied to \"k\" (check the credentials and the bucket policy)"
        )
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_reported() {
    let mut opts = common::s3_options();
    opts.endpoint = Some("http://127.0.0.1:1".into());
    opts.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
    };
    let store = S3Store::open(StorageUrl::parse("s3://some-bucket").unwrap(), &opts)
        .await
        .unwrap();
    let started = Instant::now();
    let err = store.head("k").await.unwrap_err();
    assert!(matches!(err, StorageError::Unreachable { .. }), "{err:?}");
    let text = one_sentence(&err);
    assert!(
        text.starts_with("s3://some-bucket: endpoint http://127.0.0.1:1 unreachable (connection refused); check storage.s3.endpoint and that the server is up"),
        "{text}"
    );
    assert!(
        text.ends_with("check storage.s3.endpoint and that the server is up"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn malformed_urls_are_refused_before_any_request() {
    let err = StorageUrl::parse("s3:/bucket").unwrap_err();
    assert_eq!(
        one_sentence(&err),
        "invalid archive URL \"s3:/bucket\": expected file:///absolute/path or s3://bucket/prefix"
    );
}

#[tokio::test]
async fn an_unwritable_directory_is_reported() {
    let err =
        LocalStore::create(StorageUrl::parse("file:///proc/rewind-archive").unwrap()).unwrap_err();
    let text = one_sentence(&err);
    assert!(
        text.starts_with("file:///proc/rewind-archive: create the archive directory failed: "),
        "{text}"
    );
}

#[tokio::test]
async fn a_file_where_the_archive_should_be_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("taken"), b"x").unwrap();
    let url = StorageUrl::parse(&format!("file://{}/taken", dir.path().display())).unwrap();
    let err = LocalStore::create(url).unwrap_err();
    assert!(
        one_sentence(&err).contains("create the archive directory failed"),
        "{err}"
    );
}

#[tokio::test]
async fn a_read_only_object_store_refuses_writes_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = StorageUrl::parse(&format!("file://{}/a", dir.path().display())).unwrap();
    let store = LocalStore::open(url).unwrap();
    // A directory squatting on the key's name makes the publish step fail like a full or broken disk.
    std::fs::create_dir_all(dir.path().join("a/k/inner")).unwrap();
    let err = store
        .put("k", Bytes::from_static(b"x"), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
    assert!(one_sentence(&err).contains("publish \"k\" failed"), "{err}");
    assert!(
        store.incomplete_uploads("").await.unwrap().is_empty(),
        "the temporary file is gone"
    );
}

/// Encryption and storage-class settings reach S3 on single and multipart puts alike.
#[tokio::test]
async fn server_side_encryption_and_storage_class_are_applied() {
    use rewind::storage::{ServerSideEncryption, MIN_PART_SIZE};
    let bucket = common::new_bucket().await;
    let raw = common::s3_client();
    for (sse, expected) in [
        (
            ServerSideEncryption::S3,
            aws_sdk_s3::types::ServerSideEncryption::Aes256,
        ),
        (
            ServerSideEncryption::Kms {
                key_id: Some("rewind-test-key".into()),
            },
            aws_sdk_s3::types::ServerSideEncryption::AwsKms,
        ),
    ] {
        let mut opts = common::s3_options();
        opts.sse = Some(sse.clone());
        opts.storage_class = Some("STANDARD".into());
        let store = S3Store::open(
            StorageUrl::parse(&format!("s3://{bucket}/enc")).unwrap(),
            &opts,
        )
        .await
        .unwrap();
        let small = format!("small-{expected}");
        let large = format!("large-{expected}");
        store
            .put(&small, Bytes::from_static(b"secret data"), PutMode::Create)
            .await
            .unwrap();
        store
            .put_multipart(
                &large,
                Bytes::from(vec![7u8; MIN_PART_SIZE + 10]),
                MIN_PART_SIZE,
                PutMode::Create,
            )
            .await
            .unwrap();
        for key in [&small, &large] {
            let head = raw
                .head_object()
                .bucket(&bucket)
                .key(format!("enc/{key}"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                head.server_side_encryption(),
                Some(&expected),
                "{key} with {sse:?}"
            );
        }
        assert_eq!(
            store.get(&small).await.unwrap().body,
            Bytes::from_static(b"secret data"),
            "decrypted on read"
        );
    }
}

/// A stand-in for S3 holding one object in Glacier Flexible Retrieval: `HEAD` says its class (and,
/// once a restore was asked for, that it is under way), `POST ?restore` accepts a restore request,
/// `GET` refuses it as S3 does. Returns its endpoint and the requests it saw.
async fn cold_s3() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).to_string();
                let line = text.lines().next().unwrap_or_default().to_string();
                let length: usize = text
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let mut body = request.len() - head_end;
                while body < length {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body += n,
                    }
                }
                let restored = log
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l: &String| l.starts_with("POST"));
                log.lock().unwrap().push(line.clone());
                let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidObjectState</Code><Message>The operation is not valid for the object's storage class</Message><StorageClass>GLACIER</StorageClass></Error>";
                let response = if line.starts_with("HEAD") {
                    let restore = if restored {
                        "x-amz-restore: ongoing-request=\"true\"\r\n"
                    } else {
                        ""
                    };
                    format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: \"e\"\r\nx-amz-storage-class: GLACIER\r\n{restore}Connection: close\r\n\r\n")
                } else if line.starts_with("POST") {
                    "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                } else {
                    format!(
                        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                        xml.len()
                    )
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (endpoint, seen)
}

#[tokio::test]
async fn an_object_in_glacier_is_named_with_the_command_that_thaws_it_and_can_be_thawed() {
    common::no_instance_metadata();
    let (endpoint, seen) = cold_s3().await;
    let mut opts = common::s3_options();
    opts.endpoint = Some(endpoint);
    opts.retry.max_attempts = 1;
    let store = S3Store::open(StorageUrl::parse("s3://cold/archive").unwrap(), &opts)
        .await
        .unwrap();
    let key = "data/topic=t/partition=0/date=2026-01-01/hour=00/00000000000000000000.parquet";
    let err = store.get(key).await.unwrap_err();
    assert!(matches!(err, StorageError::Cold { .. }), "{err:?}");
    let text = one_sentence(&err);
    assert!(
        text.contains(key) && text.contains("rewind lifecycle thaw --archive s3://cold/archive"),
        "{text}"
    );
    let ranged = store.get_range(key, 0..10).await.unwrap_err();
    assert!(matches!(ranged, StorageError::Cold { .. }), "{ranged:?}");

    use rewind::storage::Reach;
    assert_eq!(
        store.reach(key).await.unwrap(),
        Reach::Cold {
            class: "GLACIER".into()
        }
    );
    store.thaw(key, "GLACIER", 7, "Bulk").await.unwrap();
    assert_eq!(
        store.reach(key).await.unwrap(),
        Reach::Thawing {
            class: "GLACIER".into()
        }
    );
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("POST /cold/archive/data/") && r.contains("?restore")),
        "{requests:?}"
    );
}
