//! A store opened for reading: every read passes through to the backend, every write (put, delete,
//! multipart, aborting uploads) is refused with [`StorageError::ReadOnly`] before it reaches it.
//!
//! Invariant: nothing done through a `ReadOnly` store creates, changes or deletes anything in the
//! archive, whatever the backend; the tools that only read (`check`, `ls`, `verify`, `find`,
//! `restore`) open their archive through it.

use super::{Hooks, Intercept, ObjectStore, StorageError, StorageResult};

/// `inner`, with its writes refused.
pub type ReadOnly<S> = Intercept<S, RefuseWrites>;

/// `inner` opened for reading only.
pub fn read_only<S: ObjectStore>(inner: S) -> ReadOnly<S> {
    let url = inner.url().to_string();
    Intercept {
        inner,
        hooks: RefuseWrites { url },
    }
}

/// The hooks of a [`ReadOnly`] store: every write is refused before it reaches the store.
#[derive(Debug)]
pub struct RefuseWrites {
    url: String,
}

impl Hooks for RefuseWrites {
    fn before_write(&self, op: &str, key: &str) -> StorageResult<()> {
        Err(StorageError::ReadOnly {
            url: self.url.clone(),
            op: op.to_string(),
            key: key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;

    use super::*;
    use crate::storage::{LocalStore, PutMode, StorageUrl};

    #[tokio::test]
    async fn reads_pass_and_writes_are_refused_leaving_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        let url = StorageUrl::parse(&format!("file://{}", root.display())).unwrap();
        let store = read_only(LocalStore::open(url).unwrap());
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
