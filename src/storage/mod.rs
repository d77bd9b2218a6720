//! Object storage for the archive: one small trait, a local-disk and an S3 backend.
//!
//! Invariant: a reader never observes a partial object. Create-only puts either make the whole object
//! appear at once or fail with [`StorageError::AlreadyExists`]; compare-and-swap puts either replace
//! the exact version the caller read or fail with [`StorageError::PreconditionFailed`]. Everything the
//! chain rules of the archive rely on is built from these two primitives.
//!
//! A store is opened either for reading ([`open_reader`]: every write refused, nothing created) or
//! for writing ([`open_writer`]: the sink, the service, retention and the demo); the caller says
//! which, so a tool that only reads cannot leave a folder, a lock or a probe key behind.

mod error;
pub mod intercept;
mod local;
mod memory;
mod probe;
mod read_only;
mod retry;
mod s3;
mod url;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::{StorageError, StorageResult};
pub use intercept::{Hooks, Intercept};
pub use local::LocalStore;
pub use memory::MemoryStore;
pub use probe::{probe, ProbeError, Probed};
pub use read_only::{read_only, ReadOnly, RefuseWrites};
pub use retry::RetryPolicy;
pub use s3::{Lifecycle, Reach, S3Options, S3Store, ServerSideEncryption};
pub use url::StorageUrl;

/// How a put treats an object that may already exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Create the object only if the key is free (S3 `If-None-Match: *`); otherwise
    /// [`StorageError::AlreadyExists`].
    Create,
    /// Replace the object only if its current ETag is this one (S3 `If-Match`); otherwise
    /// [`StorageError::PreconditionFailed`], or [`StorageError::NotFound`] when it is gone.
    Update { etag: String },
}

/// What a successful put produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// The ETag of the new object version, for a later [`PutMode::Update`].
    pub etag: String,
}

/// Metadata of one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store's root.
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: Option<SystemTime>,
    /// CRC32C (Castagnoli) of the whole object, recorded by the store when the object was written
    /// and checked against the bytes it received. `None` in listings, and for objects written
    /// without one (by another tool, or on a filesystem without extended attributes).
    pub crc32c: Option<u32>,
}

/// An object's bytes together with the metadata of the version that was read.
#[derive(Debug, Clone)]
pub struct GetResult {
    pub meta: ObjectMeta,
    pub body: Bytes,
}

/// One page of a prefix listing, in ascending key order.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// Pass back to [`ObjectStore::list_page`] for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// An upload in parts, for objects too large to hold in memory at once.
///
/// Parts are written in order. [`MultipartUpload::complete`] makes the whole object appear at once
/// (honouring the [`PutMode`] it was started with); [`MultipartUpload::abort`] removes every part.
/// A backend aborts by itself when completing fails, so a failed upload leaves no parts behind.
#[async_trait]
pub trait MultipartUpload: Send {
    /// Upload the next part. Every part but the last must be at least [`MIN_PART_SIZE`] bytes.
    async fn put_part(&mut self, data: Bytes) -> StorageResult<()>;
    /// Assemble the parts into the object.
    async fn complete(self: Box<Self>) -> StorageResult<PutResult>;
    /// Drop every uploaded part.
    async fn abort(self: Box<Self>) -> StorageResult<()>;
}

/// The CRC32C (Castagnoli) of `data`, the checksum every object is stored with.
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

/// The smallest part S3 accepts for all but the last part of a multipart upload.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// The object store the archive lives in. Keys are `/`-separated paths relative to the store root.
///
/// Every object is written with its CRC32C: the store computes it over the bytes it is given, has
/// the server check it against the bytes that arrive (S3 additional checksums), and keeps it with the
/// object (S3 checksum, or the `user.rewind.crc32c` extended attribute of a local file), so that a
/// later reader can tell a damaged object from a sound one ([`ObjectMeta::crc32c`]).
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Store `body` under `key` according to `mode`.
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StorageResult<PutResult>;
    /// Read a whole object.
    async fn get(&self, key: &str) -> StorageResult<GetResult>;
    /// Read the bytes `range` of an object; the end is clamped to the object's size.
    async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes>;
    /// Size and ETag of an object.
    async fn head(&self, key: &str) -> StorageResult<ObjectMeta>;
    /// One page of the objects whose key starts with `prefix`, in ascending key order.
    async fn list_page(&self, prefix: &str, token: Option<String>) -> StorageResult<ListPage>;
    /// Delete objects; keys that do not exist are ignored.
    async fn delete_many(&self, keys: &[String]) -> StorageResult<()>;
    /// Start a multipart upload that will store the object according to `mode` on completion.
    async fn start_multipart(
        &self,
        key: &str,
        mode: PutMode,
    ) -> StorageResult<Box<dyn MultipartUpload>>;
    /// Multipart uploads that were started under `prefix` and neither completed nor aborted
    /// (parts that cost storage and that nobody will read).
    async fn incomplete_uploads(&self, prefix: &str) -> StorageResult<Vec<String>>;
    /// Abort the unfinished uploads under `prefix` started before `started_before` (a writer
    /// killed mid-upload left them), freeing their parts; returns their keys. Backends that
    /// cannot tell abort nothing.
    async fn abort_incomplete_uploads(
        &self,
        prefix: &str,
        started_before: SystemTime,
    ) -> StorageResult<Vec<String>> {
        let _ = (prefix, started_before);
        Ok(Vec::new())
    }
    /// The URL this store was opened from, for messages.
    fn url(&self) -> &StorageUrl;

    /// Every object under `prefix`, in ascending key order.
    async fn list(&self, prefix: &str) -> StorageResult<Vec<ObjectMeta>> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let page = self.list_page(prefix, token).await?;
            all.extend(page.objects);
            match page.next {
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Delete one object; a missing object is not an error.
    async fn delete(&self, key: &str) -> StorageResult<()> {
        self.delete_many(&[key.to_string()]).await
    }

    /// Store `body` in parts of `part_size` bytes (a single put when it fits in one part). On any
    /// failure the upload is aborted so that no parts are left behind.
    async fn put_multipart(
        &self,
        key: &str,
        body: Bytes,
        part_size: usize,
        mode: PutMode,
    ) -> StorageResult<PutResult> {
        let part_size = part_size.max(MIN_PART_SIZE);
        if body.len() <= part_size {
            return self.put(key, body, mode).await;
        }
        let mut upload = self.start_multipart(key, mode).await?;
        let mut rest = body;
        while !rest.is_empty() {
            let part = rest.split_to(part_size.min(rest.len()));
            if let Err(err) = upload.put_part(part).await {
                // The abort is best effort: the original failure is what the caller needs to see.
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(key, error = %abort, "aborting a failed multipart upload failed");
                }
                return Err(err);
            }
        }
        upload.complete().await
    }
}

/// Open the store an archive URL names for reading: nothing is created (a local folder that does
/// not exist reads as empty) and every write is refused with [`StorageError::ReadOnly`].
pub async fn open_reader(url: &StorageUrl, s3: &S3Options) -> StorageResult<Arc<dyn ObjectStore>> {
    Ok(match url {
        StorageUrl::Local { .. } => Arc::new(read_only(LocalStore::open(url.clone())?)),
        StorageUrl::S3 { .. } => Arc::new(read_only(S3Store::open(url.clone(), s3).await?)),
    })
}

/// Open the store an archive URL names for writing: a local archive's folder is created at once,
/// so that a writer pointed at a place it cannot write learns it before it starts.
pub async fn open_writer(url: &StorageUrl, s3: &S3Options) -> StorageResult<Arc<dyn ObjectStore>> {
    Ok(match url {
        StorageUrl::Local { .. } => Arc::new(LocalStore::create(url.clone())?),
        StorageUrl::S3 { .. } => Arc::new(S3Store::open(url.clone(), s3).await?),
    })
}

/// Reject keys that could escape the root or collide with the backends' own bookkeeping.
fn check_key(key: &str) -> StorageResult<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.ends_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        || key.starts_with(local::RESERVED_PREFIX)
        || key.ends_with(local::TMP_SUFFIX);
    if bad {
        return Err(StorageError::InvalidKey {
            key: key.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_the_root_are_refused() {
        for key in ["", "/a", "a/", "a//b", "../a", "a/./b", ".rewind/x"] {
            assert!(check_key(key).is_err(), "{key:?} should be refused");
        }
        for key in [
            "_archive.json",
            "data/topic=a.b/partition=0/x.parquet",
            "_checkpoints/.t/0.json",
        ] {
            assert!(check_key(key).is_ok(), "{key:?} should be accepted");
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A store wrapper for tests that counts what is read.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// Counts the reads of each key and the bytes read, delegating everything to a real store.
    #[derive(Debug)]
    pub struct Counting {
        inner: Arc<dyn ObjectStore>,
        pub reads: Mutex<BTreeMap<String, usize>>,
        pub bytes: std::sync::atomic::AtomicU64,
    }

    impl Counting {
        pub fn new(inner: Arc<dyn ObjectStore>) -> Counting {
            Counting {
                inner,
                reads: Mutex::default(),
                bytes: Default::default(),
            }
        }

        fn count(&self, key: &str, bytes: usize) {
            *self
                .reads
                .lock()
                .unwrap()
                .entry(key.to_string())
                .or_default() += 1;
            self.bytes
                .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[async_trait]
    impl ObjectStore for Counting {
        async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StorageResult<PutResult> {
            self.inner.put(key, body, mode).await
        }
        async fn get(&self, key: &str) -> StorageResult<GetResult> {
            let got = self.inner.get(key).await?;
            self.count(key, got.body.len());
            Ok(got)
        }
        async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes> {
            let got = self.inner.get_range(key, range).await?;
            self.count(key, got.len());
            Ok(got)
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
            self.inner.start_multipart(key, mode).await
        }
        async fn incomplete_uploads(&self, prefix: &str) -> StorageResult<Vec<String>> {
            self.inner.incomplete_uploads(prefix).await
        }
        fn url(&self) -> &StorageUrl {
            self.inner.url()
        }
    }
}
