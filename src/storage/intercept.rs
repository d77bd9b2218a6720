//! A store that passes every call to another, except where its [`Hooks`] step in: the one place
//! fault-injecting and observing stores are built from (refused or lost writes, stale listings),
//! so that a test wrapper is a few lines of hooks instead of the whole trait again.
//!
//! Invariant: with the default hooks an `Intercept` behaves exactly like the store it wraps.

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutResult,
    StorageResult, StorageUrl,
};

/// Where an [`Intercept`] may change what its store does. Every method defaults to passing the
/// call through.
pub trait Hooks: Send + Sync + std::fmt::Debug {
    /// Before a write (`put`, `delete`, `multipart`, aborting the uploads under a prefix) of `key`:
    /// an error refuses it unapplied.
    fn before_write(&self, op: &str, key: &str) -> StorageResult<()> {
        let _ = (op, key);
        Ok(())
    }
    /// After a write that succeeded: an error reports it failed although it was applied (a lost
    /// reply).
    fn after_write(&self, op: &str, key: &str) -> StorageResult<()> {
        let _ = (op, key);
        Ok(())
    }
    /// A listing to answer instead of the store's (a stale one, say).
    fn listing(&self, prefix: &str) -> Option<ListPage> {
        let _ = prefix;
        None
    }
    /// Before a read (`get`, `get_range`, `head`, `list`) of `key` (a listing's prefix): an error
    /// fails it.
    fn before_read(&self, op: &str, key: &str) -> StorageResult<()> {
        let _ = (op, key);
        Ok(())
    }
}

/// `inner` with `hooks` in front of it.
#[derive(Debug)]
pub struct Intercept<S, H> {
    pub inner: S,
    pub hooks: H,
}

#[async_trait]
impl<S: ObjectStore, H: Hooks> ObjectStore for Intercept<S, H> {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StorageResult<PutResult> {
        self.hooks.before_write("put", key)?;
        let done = self.inner.put(key, body, mode).await?;
        self.hooks.after_write("put", key)?;
        Ok(done)
    }
    async fn get(&self, key: &str) -> StorageResult<GetResult> {
        self.hooks.before_read("get", key)?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes> {
        self.hooks.before_read("get_range", key)?;
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> StorageResult<ObjectMeta> {
        self.hooks.before_read("head", key)?;
        self.inner.head(key).await
    }
    async fn list_page(&self, prefix: &str, token: Option<String>) -> StorageResult<ListPage> {
        self.hooks.before_read("list", prefix)?;
        match self.hooks.listing(prefix) {
            Some(page) => Ok(page),
            None => self.inner.list_page(prefix, token).await,
        }
    }
    async fn delete_many(&self, keys: &[String]) -> StorageResult<()> {
        let Some(first) = keys.first() else {
            return Ok(());
        };
        self.hooks.before_write("delete", first)?;
        self.inner.delete_many(keys).await?;
        self.hooks.after_write("delete", first)
    }
    async fn start_multipart(
        &self,
        key: &str,
        mode: PutMode,
    ) -> StorageResult<Box<dyn MultipartUpload>> {
        self.hooks.before_write("multipart", key)?;
        self.inner.start_multipart(key, mode).await
    }
    async fn incomplete_uploads(&self, prefix: &str) -> StorageResult<Vec<String>> {
        self.inner.incomplete_uploads(prefix).await
    }
    async fn abort_incomplete_uploads(
        &self,
        prefix: &str,
        started_before: SystemTime,
    ) -> StorageResult<Vec<String>> {
        self.hooks.before_write("abort the uploads under", prefix)?;
        self.inner
            .abort_incomplete_uploads(prefix, started_before)
            .await
    }
    fn url(&self) -> &StorageUrl {
        self.inner.url()
    }
}
