//! An object store in memory, for tests and simulations: the same contract as the real backends
//! (create-only and compare-and-swap puts, ordered listings, whole objects appearing at once), so
//! the storage conformance suite runs against it and protocol tests can drive the real sink code
//! through thousands of interleavings without touching a disk.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    check_key, crc32c, GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutResult, StorageError, StorageResult, StorageUrl,
};

/// Objects listed per page, small enough that tests page through listings.
const PAGE: usize = 1000;

#[derive(Debug, Default)]
struct Objects {
    objects: BTreeMap<String, (Bytes, String)>,
    /// Every put bumps it; an object's ETag is the version that wrote it.
    version: u64,
    uploads: BTreeMap<String, usize>,
}

/// The store. Clones share the objects.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    url: StorageUrl,
    inner: Arc<Mutex<Objects>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            url: StorageUrl::parse("file:///memory").expect("a valid URL"),
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn meta(&self, key: &str, body: &Bytes, etag: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: body.len() as u64,
            etag: etag.to_string(),
            last_modified: None,
            crc32c: Some(crc32c(body)),
        }
    }

    fn not_found(&self, key: &str) -> StorageError {
        StorageError::NotFound {
            url: self.url.to_string(),
            key: key.to_string(),
        }
    }

    fn store(&self, key: &str, body: Bytes, mode: &PutMode) -> StorageResult<PutResult> {
        check_key(key)?;
        let mut objects = self.lock();
        match (mode, objects.objects.get(key)) {
            (PutMode::Overwrite, _) | (PutMode::Create, None) => {}
            (PutMode::Create, Some(_)) => {
                return Err(StorageError::AlreadyExists {
                    url: self.url.to_string(),
                    key: key.to_string(),
                })
            }
            (PutMode::Update { .. }, None) => return Err(self.not_found(key)),
            (PutMode::Update { etag }, Some((_, current))) if current != etag => {
                return Err(StorageError::PreconditionFailed {
                    url: self.url.to_string(),
                    key: key.to_string(),
                })
            }
            (PutMode::Update { .. }, Some(_)) => {}
        }
        objects.version += 1;
        let etag = format!("\"{}\"", objects.version);
        objects
            .objects
            .insert(key.to_string(), (body, etag.clone()));
        Ok(PutResult { etag })
    }
}

struct Upload {
    store: MemoryStore,
    key: String,
    mode: PutMode,
    parts: Vec<Bytes>,
}

#[async_trait]
impl MultipartUpload for Upload {
    async fn put_part(&mut self, data: Bytes) -> StorageResult<()> {
        self.parts.push(data);
        Ok(())
    }

    async fn complete(self: Box<Self>) -> StorageResult<PutResult> {
        let body: Vec<u8> = self.parts.iter().flat_map(|p| p.iter().copied()).collect();
        self.store.lock().uploads.remove(&self.key);
        self.store.store(&self.key, Bytes::from(body), &self.mode)
    }

    async fn abort(self: Box<Self>) -> StorageResult<()> {
        self.store.lock().uploads.remove(&self.key);
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StorageResult<PutResult> {
        self.store(key, body, &mode)
    }

    async fn get(&self, key: &str) -> StorageResult<GetResult> {
        check_key(key)?;
        let objects = self.lock();
        let (body, etag) = objects
            .objects
            .get(key)
            .ok_or_else(|| self.not_found(key))?;
        Ok(GetResult {
            meta: self.meta(key, body, etag),
            body: body.clone(),
        })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes> {
        let got = self.get(key).await?;
        let size = got.body.len() as u64;
        if range.start > range.end || (range.start >= size && range.end > range.start) {
            return Err(StorageError::InvalidRange {
                url: self.url.to_string(),
                key: key.to_string(),
                start: range.start,
                end: range.end,
            });
        }
        Ok(got
            .body
            .slice(range.start as usize..range.end.min(size) as usize))
    }

    async fn head(&self, key: &str) -> StorageResult<ObjectMeta> {
        Ok(self.get(key).await?.meta)
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> StorageResult<ListPage> {
        let objects = self.lock();
        let after = token.unwrap_or_default();
        let mut page: Vec<ObjectMeta> = objects
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| after.is_empty() || k.as_str() > after.as_str())
            .take(PAGE + 1)
            .map(|(k, (body, etag))| ObjectMeta {
                crc32c: None,
                ..self.meta(k, body, etag)
            })
            .collect();
        let next = (page.len() > PAGE).then(|| {
            page.truncate(PAGE);
            page.last().map(|m| m.key.clone()).unwrap_or_default()
        });
        Ok(ListPage {
            objects: page,
            next,
        })
    }

    async fn delete_many(&self, keys: &[String]) -> StorageResult<()> {
        let mut objects = self.lock();
        for key in keys {
            objects.objects.remove(key);
        }
        Ok(())
    }

    async fn start_multipart(
        &self,
        key: &str,
        mode: PutMode,
    ) -> StorageResult<Box<dyn MultipartUpload>> {
        check_key(key)?;
        *self.lock().uploads.entry(key.to_string()).or_default() += 1;
        Ok(Box::new(Upload {
            store: self.clone(),
            key: key.to_string(),
            mode,
            parts: Vec::new(),
        }))
    }

    async fn incomplete_uploads(&self, prefix: &str) -> StorageResult<Vec<String>> {
        Ok(self
            .lock()
            .uploads
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn abort_incomplete_uploads(
        &self,
        prefix: &str,
        _started_before: SystemTime,
    ) -> StorageResult<Vec<String>> {
        let mut objects = self.lock();
        let keys: Vec<String> = objects
            .uploads
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for key in &keys {
            objects.uploads.remove(key);
        }
        Ok(keys)
    }

    fn url(&self) -> &StorageUrl {
        &self.url
    }
}
