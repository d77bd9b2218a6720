//! Writing one data file into the store while it is being encoded.
//!
//! The encoder runs on a blocking thread and hands the file over in parts of the upload part size
//! through a channel that holds one part; the uploading side sends a file that fits in one part with
//! a single create-only put, and a larger one as a create-only multipart upload whose parts go out as
//! they are produced. Memory for the encoded file therefore stays at about four parts (the one being
//! filled, one in the channel, one held back until the next shows it is not the last, one being
//! uploaded) plus the row group being built, whatever the file's size. Nothing becomes visible unless the whole file was encoded and uploaded: a failure on
//! either side aborts the upload.

use std::io::{self, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::archive::datafile::{self, DataFileError, FileMeta};
use crate::archive::typed::{Decoding, Prepared};
use crate::archive::Record;
use crate::failpoint;
use crate::storage::{MultipartUpload, ObjectStore, PutMode, StorageError, MIN_PART_SIZE};

/// Why a file could not be written.
#[derive(Debug)]
pub enum UploadError {
    Encode(DataFileError),
    Store(StorageError),
}

/// Encode `records` as the data file `key` and create it in the store. The records are handed back
/// whatever happens, so a failed upload can be retried from them. Returns the file's size.
pub async fn create(
    store: &dyn ObjectStore,
    key: &str,
    meta: FileMeta,
    records: Vec<Record>,
    decoding: Option<std::sync::Arc<Decoding>>,
    part_size: usize,
) -> (Vec<Record>, Result<u64, UploadError>) {
    let part_size = part_size.max(MIN_PART_SIZE);
    let topic = meta.topic.clone();
    let (tx, mut parts) = mpsc::channel::<Bytes>(1);
    let encoder = tokio::task::spawn_blocking(move || {
        // A part's buffer is allocated once at the size it will reach (a part, or the whole file
        // when that is smaller: at most the records' own bytes plus the footer), never grown by
        // doubling, which copied each part about once more and touched twice its memory.
        let estimate = records.iter().map(Record::size).sum::<u64>() as usize + (64 << 10);
        let capacity = estimate.min(part_size + PART_SLACK);
        let writer = PartWriter {
            tx,
            buf: Vec::with_capacity(capacity),
            capacity,
            part_size,
        };
        let result =
            datafile::encode_decoded_to(&meta, &records, decoding.as_deref(), writer, part_size)
                .and_then(|(w, typed)| {
                    w.finish()
                        .map_err(|e| DataFileError::Format(e.to_string()))?;
                    Ok(typed)
                });
        (records, result)
    });

    let mut upload: Option<Box<dyn MultipartUpload>> = None;
    let mut pending: Option<Bytes> = None;
    let mut size = 0u64;
    let mut failed = None;
    while let Some(part) = parts.recv().await {
        size += part.len() as u64;
        // A part goes out only once the next one exists: the last part decides between a single
        // put and completing a multipart upload.
        let Some(ready) = pending.replace(part) else {
            continue;
        };
        if upload.is_none() {
            match store.start_multipart(key, PutMode::Create).await {
                Ok(started) => upload = Some(started),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(u) = upload.as_mut() {
            if let Err(e) = u.put_part(ready).await {
                failed = Some(e);
                break;
            }
            failpoint::hit(failpoint::MID_MULTIPART).await;
        }
    }
    // Closing the channel stops an encoder that is still running after an upload failure.
    drop(parts);
    let (records, encoded) = match encoder.await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => {
            // Cancelled: the runtime is shutting down. The records are gone with the task; Kafka
            // still has them and the next start reads them again.
            if let Some(u) = upload {
                let _ = u.abort().await;
            }
            let gone = StorageError::Other {
                url: store.url().to_string(),
                op: format!("upload {key:?}"),
                message: "the encoder was cancelled".into(),
            };
            return (Vec::new(), Err(UploadError::Store(gone)));
        }
    };

    let mut typed: Option<Prepared> = None;
    let result = match (failed, encoded) {
        (Some(e), _) => Err(UploadError::Store(e)),
        (None, Err(e)) => Err(UploadError::Encode(e)),
        (None, Ok(prepared)) => {
            typed = prepared;
            let last = pending.unwrap_or_default();
            match upload.take() {
                None => store.put(key, last, PutMode::Create).await,
                Some(mut u) => match u.put_part(last).await {
                    // A refused completion aborts by itself.
                    Ok(()) => u.complete().await,
                    Err(e) => {
                        upload = Some(u);
                        Err(e)
                    }
                },
            }
            .map(|_| size)
            .map_err(UploadError::Store)
        }
    };
    if let (Err(_), Some(u)) = (&result, upload) {
        // Best effort: the failure itself is what the caller needs to see.
        if let Err(abort) = u.abort().await {
            tracing::warn!(key, error = %abort, "aborting a failed multipart upload failed");
        }
    }
    if let (Ok(_), Some(typed)) = (&result, typed) {
        crate::metrics::decoded(&topic, &typed);
    }
    (records, result)
}

/// What a part may exceed the part size by: the encoder writes a page or a footer at a time.
const PART_SLACK: usize = 1 << 20;

/// The encoder's output: bytes collect until a part is full, then go to the uploading side.
struct PartWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    /// What each part's buffer is allocated with.
    capacity: usize,
    part_size: usize,
}

impl PartWriter {
    fn send(&self, part: Vec<u8>) -> io::Result<()> {
        self.tx
            .blocking_send(Bytes::from(part))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Hand over what is left: the file's last part.
    fn finish(mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let last = std::mem::take(&mut self.buf);
        self.send(last)
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.part_size {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.capacity));
            self.send(full)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::archive::datafile::file_meta;
    use crate::archive::TimestampType;
    use crate::storage::{
        GetResult, ListPage, LocalStore, ObjectMeta, PutResult, StorageResult, StorageUrl,
    };

    /// A local store whose multipart uploads fail at one part, counting the uploads started.
    #[derive(Debug)]
    struct Flaky {
        inner: LocalStore,
        fail_at_part: Option<usize>,
        multipart_started: AtomicUsize,
    }

    struct FlakyUpload {
        inner: Box<dyn MultipartUpload>,
        parts: usize,
        fail_at_part: Option<usize>,
    }

    #[async_trait]
    impl MultipartUpload for FlakyUpload {
        async fn put_part(&mut self, data: Bytes) -> StorageResult<()> {
            self.parts += 1;
            if Some(self.parts) == self.fail_at_part {
                return Err(StorageError::Transient {
                    url: "file:///flaky".into(),
                    op: "upload part".into(),
                    message: "injected".into(),
                    attempts: 1,
                });
            }
            self.inner.put_part(data).await
        }
        async fn complete(self: Box<Self>) -> StorageResult<PutResult> {
            self.inner.complete().await
        }
        async fn abort(self: Box<Self>) -> StorageResult<()> {
            self.inner.abort().await
        }
    }

    #[async_trait]
    impl ObjectStore for Flaky {
        async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StorageResult<PutResult> {
            self.inner.put(key, body, mode).await
        }
        async fn get(&self, key: &str) -> StorageResult<GetResult> {
            self.inner.get(key).await
        }
        async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes> {
            self.inner.get_range(key, range).await
        }
        async fn head(&self, key: &str) -> StorageResult<ObjectMeta> {
            self.inner.head(key).await
        }
        async fn list_page(&self, prefix: &str, token: Option<String>) -> StorageResult<ListPage> {
            self.inner.list_page(prefix, token).await
        }
        async fn delete_many(&self, keys: &[String]) -> StorageResult<()> {
            self.inner.delete_many(keys).await
        }
        async fn start_multipart(
            &self,
            key: &str,
            mode: PutMode,
        ) -> StorageResult<Box<dyn MultipartUpload>> {
            self.multipart_started.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FlakyUpload {
                inner: self.inner.start_multipart(key, mode).await?,
                parts: 0,
                fail_at_part: self.fail_at_part,
            }))
        }
        async fn incomplete_uploads(&self, prefix: &str) -> StorageResult<Vec<String>> {
            self.inner.incomplete_uploads(prefix).await
        }
        fn url(&self) -> &StorageUrl {
            self.inner.url()
        }
    }

    fn flaky(dir: &tempfile::TempDir, fail_at_part: Option<usize>) -> Flaky {
        let url = StorageUrl::parse(&format!("file://{}/archive", dir.path().display())).unwrap();
        Flaky {
            inner: LocalStore::open(url).unwrap(),
            fail_at_part,
            multipart_started: AtomicUsize::new(0),
        }
    }

    /// `count` records of `size` incompressible bytes.
    fn records(count: i64, size: usize) -> Vec<Record> {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        (0..count)
            .map(|i| Record {
                offset: i,
                timestamp: Some(1_795_428_900_000 + i),
                timestamp_type: Some(TimestampType::Create),
                key: Some(i.to_be_bytes().to_vec()),
                value: Some(
                    (0..size)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect(),
                ),
                headers: vec![],
            })
            .collect()
    }

    const KEY: &str =
        "data/topic=t/partition=0/date=2026-11-24/hour=00/00000000000000000000.parquet";

    #[tokio::test]
    async fn a_large_file_goes_up_in_parts_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = flaky(&dir, None);
        let recs = records(48, 256 * 1024);
        let meta = file_meta("t", 0, 0, 48, &recs, "c", 0);
        let (back, result) =
            create(&store, KEY, meta.clone(), recs.clone(), None, MIN_PART_SIZE).await;
        let size = result.unwrap();
        assert!(back == recs, "the records are handed back");
        assert_eq!(store.multipart_started.load(Ordering::SeqCst), 1);
        let got = store.get(KEY).await.unwrap();
        assert_eq!(got.body.len() as u64, size);
        assert!(
            size > 2 * MIN_PART_SIZE as u64,
            "{size} bytes: several parts"
        );
        assert_eq!(got.meta.crc32c, Some(crate::storage::crc32c(&got.body)));
        let (got_meta, rows) = datafile::decode(got.body).unwrap();
        assert_eq!(got_meta, meta);
        assert!(rows == recs, "streamed file differs");
    }

    #[tokio::test]
    async fn a_small_file_is_one_create_only_put() {
        let dir = tempfile::tempdir().unwrap();
        let store = flaky(&dir, None);
        let recs = records(100, 100);
        let meta = file_meta("t", 0, 0, 100, &recs, "c", 0);
        let (_, result) =
            create(&store, KEY, meta.clone(), recs.clone(), None, MIN_PART_SIZE).await;
        result.unwrap();
        assert_eq!(store.multipart_started.load(Ordering::SeqCst), 0);
        let (_, again) = create(&store, KEY, meta, recs, None, MIN_PART_SIZE).await;
        assert!(
            matches!(
                again,
                Err(UploadError::Store(StorageError::AlreadyExists { .. }))
            ),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_part_leaves_nothing_behind_and_keeps_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = flaky(&dir, Some(2));
        let recs = records(48, 256 * 1024);
        let meta = file_meta("t", 0, 0, 48, &recs, "c", 0);
        let (back, result) = create(&store, KEY, meta, recs.clone(), None, MIN_PART_SIZE).await;
        assert!(
            matches!(
                result,
                Err(UploadError::Store(StorageError::Transient { .. }))
            ),
            "{result:?}"
        );
        assert!(back == recs, "the records survive for a retry");
        assert!(matches!(
            store.get(KEY).await,
            Err(StorageError::NotFound { .. })
        ));
        assert!(
            store.incomplete_uploads("").await.unwrap().is_empty(),
            "the upload was aborted"
        );
    }
}
