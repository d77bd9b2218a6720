//! A store opened for reading: every read passes through to the backend, every write (put, delete,
//! multipart, aborting uploads) is refused with [`StorageError::ReadOnly`] before it reaches it.
//!
//! Invariant: nothing done through a `ReadOnly` store creates, changes or deletes anything in the
//! archive, whatever the backend; the tools that only read (`check`, `ls`, `verify`, `find`,
//! `restore`) open their archive through it.

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutResult,
    StorageError, StorageResult, StorageUrl,
};

/// `inner`, with its writes refused.
#[derive(Debug)]
pub struct ReadOnly<S>(pub S);

impl<S: ObjectStore> ReadOnly<S> {
    fn refuse(&self, op: &'static str, key: &str) -> StorageError {
        StorageError::ReadOnly {
            url: self.0.url().to_string(),
            op,
            key: key.to_string(),
        }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for ReadOnly<S> {
    async fn put(&self, key: &str, _body: Bytes, _mode: PutMode) -> StorageResult<PutResult> {
        Err(self.refuse("put", key))
    }
    async fn get(&self, key: &str) -> StorageResult<GetResult> {
        self.0.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes> {
        self.0.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> StorageResult<ObjectMeta> {
        self.0.head(key).await
    }
    async fn list_page(&self, prefix: &str, token: Option<String>) -> StorageResult<ListPage> {
        self.0.list_page(prefix, token).await
    }
    async fn list(&self, prefix: &str) -> StorageResult<Vec<ObjectMeta>> {
        self.0.list(prefix).await
    }
    async fn delete_many(&self, keys: &[String]) -> StorageResult<()> {
        match keys.first() {
            Some(key) => Err(self.refuse("delete", key)),
            None => Ok(()),
        }
    }
    async fn start_multipart(
        &self,
        key: &str,
        _mode: PutMode,
    ) -> StorageResult<Box<dyn MultipartUpload>> {
        Err(self.refuse("upload", key))
    }
    async fn incomplete_uploads(&self, prefix: &str) -> StorageResult<Vec<String>> {
        self.0.incomplete_uploads(prefix).await
    }
    async fn abort_incomplete_uploads(
        &self,
        prefix: &str,
        _started_before: SystemTime,
    ) -> StorageResult<Vec<String>> {
        Err(self.refuse("abort the uploads under", prefix))
    }
    fn url(&self) -> &StorageUrl {
        self.0.url()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStore;

    #[tokio::test]
    async fn reads_pass_and_writes_are_refused_leaving_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        let url = StorageUrl::parse(&format!("file://{}", root.display())).unwrap();
        let store = ReadOnly(LocalStore::open(url).unwrap());
        assert!(store.list("").await.unwrap().is_empty());
        assert!(matches!(
            store.get("a").await,
            Err(StorageError::NotFound { .. })
        ));
        let refused = [
            store
                .put("a", Bytes::from_static(b"x"), PutMode::Create)
                .await
                .map(drop),
            store.delete("a").await,
            store.start_multipart("a", PutMode::Create).await.map(drop),
            store
                .abort_incomplete_uploads("", SystemTime::now())
                .await
                .map(drop),
            store
                .put_multipart("a", Bytes::from_static(b"x"), 0, PutMode::Overwrite)
                .await
                .map(drop),
        ];
        for result in refused {
            let err = result.unwrap_err();
            assert!(matches!(err, StorageError::ReadOnly { .. }), "{err:?}");
            assert!(
                err.to_string()
                    .ends_with("refused: the archive was opened for reading only"),
                "{err}"
            );
        }
        assert!(!root.exists(), "nothing was created: {}", root.display());
    }
}
