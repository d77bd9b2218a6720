//! Writing one data file into the store while it is being encoded.
//!
//! The encoder runs on a blocking thread and hands the file over in parts of the upload part size
//! through a channel that holds one part; the uploading side sends a file that fits in one part with
//! a single create-only put, and a larger one as a create-only multipart upload whose parts go out as
//! they are produced. Memory for the encoded file therefore stays at about two parts, whatever the
//! file's size. Nothing becomes visible unless the whole file was encoded and uploaded: a failure on
//! either side aborts the upload.

use std::io::{self, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::archive::datafile::{self, DataFileError, FileMeta};
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
    part_size: usize,
) -> (Vec<Record>, Result<u64, UploadError>) {
    let part_size = part_size.max(MIN_PART_SIZE);
    let (tx, mut parts) = mpsc::channel::<Bytes>(1);
    let encoder = tokio::task::spawn_blocking(move || {
        let writer = PartWriter {
            tx,
            buf: Vec::new(),
            part_size,
        };
        let result = datafile::encode_to(&meta, &records, writer, part_size)
            .and_then(|w| w.finish().map_err(|e| DataFileError::Format(e.to_string())));
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
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };

    let result = match (failed, encoded) {
        (Some(e), _) => Err(UploadError::Store(e)),
        (None, Err(e)) => Err(UploadError::Encode(e)),
        (None, Ok(())) => {
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
    (records, result)
}

/// The encoder's output: bytes collect until a part is full, then go to the uploading side.
struct PartWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    part_size: usize,
}

impl PartWriter {
    fn send(&mut self) -> io::Result<()> {
        let part = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(part)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Hand over what is left: the file's last part.
    fn finish(mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

impl Write for PartWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.part_size {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
