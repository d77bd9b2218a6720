//! Proof that a store honours the two conditional writes every chain rule rests on, taken before a
//! sink writes anything: a second create-only put of one key must be refused, and so must a
//! compare-and-swap against a version that is no longer current. A store or proxy that ignores
//! `If-None-Match`/`If-Match` would turn every race between workers into a silent overwrite and a
//! backwards checkpoint, so such a store is refused. The probe also tells whether the store keeps
//! the checksum it is sent.

use bytes::Bytes;

use super::{crc32c, ObjectStore, PutMode, StorageError};

/// Where the probe writes: under the archive, outside `data/`, and deleted again.
const PROBE_PREFIX: &str = "_probe/";

/// What the probe found about a store that honours conditional writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The store returned the CRC32C it was sent with the object. When it does not, integrity rests
    /// on the checksums inside each data file alone.
    pub keeps_checksums: bool,
}

/// Why a store cannot hold an archive.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{url}: the store ignores {what}: {consequence}; Rewind's chain depends on it, so it refuses this store (use AWS S3, MinIO or another server that honours conditional writes, a proxy that passes the If-None-Match and If-Match headers through, or a local directory)")]
    IgnoresConditions {
        url: String,
        what: &'static str,
        consequence: &'static str,
    },
}

/// Probe `store` with a throwaway key under `_probe/`.
pub async fn probe(store: &dyn ObjectStore) -> Result<Probed, ProbeError> {
    let key = format!(
        "{PROBE_PREFIX}{:016x}.json",
        rand::random::<u64>() ^ std::process::id() as u64
    );
    let outcome = probe_key(store, &key).await;
    if let Err(e) = store.delete(&key).await {
        tracing::debug!(key, error = %e, "could not delete the conditional-write probe");
    }
    outcome
}

async fn probe_key(store: &dyn ObjectStore, key: &str) -> Result<Probed, ProbeError> {
    let ignores = |what, consequence| ProbeError::IgnoresConditions {
        url: store.url().to_string(),
        what,
        consequence,
    };
    let first = Bytes::from_static(b"{\"probe\": 1}");
    let created = store.put(key, first.clone(), PutMode::Create).await?;
    match store
        .put(key, Bytes::from_static(b"{\"probe\": 2}"), PutMode::Create)
        .await
    {
        Err(StorageError::AlreadyExists { .. }) => {}
        Ok(_) => {
            return Err(ignores(
                "create-only puts (If-None-Match: *)",
                "a second create-only put replaced the object",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let got = store.get(key).await?;
    if got.body != first {
        return Err(ignores(
            "create-only puts (If-None-Match: *)",
            "a refused create-only put still replaced the object",
        ));
    }
    let keeps_checksums = got.meta.crc32c == Some(crc32c(&first));
    let swapped = store
        .put(
            key,
            Bytes::from_static(b"{\"probe\": 3}"),
            PutMode::Update {
                etag: created.etag.clone(),
            },
        )
        .await?;
    if swapped.etag == created.etag {
        return Err(ignores(
            "compare-and-swap puts (If-Match)",
            "a replaced object kept its version tag, so a stale writer cannot be told apart",
        ));
    }
    match store
        .put(
            key,
            Bytes::from_static(b"{\"probe\": 4}"),
            PutMode::Update { etag: created.etag },
        )
        .await
    {
        Err(StorageError::PreconditionFailed { .. }) => {}
        Ok(_) => {
            return Err(ignores(
                "compare-and-swap puts (If-Match)",
                "a put against a stale version succeeded, so checkpoints could move backwards",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Probed { keeps_checksums })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::storage::{
        GetResult, ListPage, MemoryStore, MultipartUpload, ObjectMeta, PutResult, StorageResult,
        StorageUrl,
    };

    /// A store behind a proxy that drops the conditions (`ignore`), or the checksums (`crc`).
    #[derive(Debug)]
    struct Careless {
        inner: MemoryStore,
        ignore_create: bool,
        ignore_update: bool,
        drop_crc: bool,
    }

    #[async_trait]
    impl ObjectStore for Careless {
        async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StorageResult<PutResult> {
            let mode = match mode {
                PutMode::Create if self.ignore_create => PutMode::Overwrite,
                PutMode::Update { .. } if self.ignore_update => PutMode::Overwrite,
                mode => mode,
            };
            self.inner.put(key, body, mode).await
        }
        async fn get(&self, key: &str) -> StorageResult<GetResult> {
            let mut got = self.inner.get(key).await?;
            if self.drop_crc {
                got.meta.crc32c = None;
            }
            Ok(got)
        }
        async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> StorageResult<Bytes> {
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
            self.inner.start_multipart(key, mode).await
        }
        async fn incomplete_uploads(&self, prefix: &str) -> StorageResult<Vec<String>> {
            self.inner.incomplete_uploads(prefix).await
        }
        fn url(&self) -> &StorageUrl {
            self.inner.url()
        }
    }

    fn careless(ignore_create: bool, ignore_update: bool, drop_crc: bool) -> Arc<Careless> {
        Arc::new(Careless {
            inner: MemoryStore::new(),
            ignore_create,
            ignore_update,
            drop_crc,
        })
    }

    #[tokio::test]
    async fn a_store_that_honours_conditions_passes_and_leaves_nothing() {
        let store = careless(false, false, false);
        assert_eq!(
            probe(&*store).await.unwrap(),
            Probed {
                keeps_checksums: true
            }
        );
        assert!(
            store.list("").await.unwrap().is_empty(),
            "the probe key is deleted"
        );
        let no_crc = careless(false, false, true);
        assert_eq!(
            probe(&*no_crc).await.unwrap(),
            Probed {
                keeps_checksums: false
            }
        );
    }

    #[tokio::test]
    async fn a_store_that_ignores_conditions_is_refused_naming_what_it_ignored() {
        let err = probe(&*careless(true, false, false)).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("ignores create-only puts (If-None-Match: *)"),
            "{err}"
        );
        let err = probe(&*careless(false, true, false)).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("ignores compare-and-swap puts (If-Match)"),
            "{err}"
        );
        assert!(err.to_string().starts_with("file:///memory: "), "{err}");
    }
}
