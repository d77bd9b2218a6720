//! Storage errors: each variant says what failed and whether trying again can help.

use std::io;

/// A storage result.
pub type StorageResult<T> = Result<T, StorageError>;

/// Why a storage operation failed. Messages are one sentence naming the object or bucket and, where
/// there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{url}: object {key:?} not found")]
    NotFound { url: String, key: String },
    /// A create-only put met an existing object.
    #[error("{url}: object {key:?} already exists")]
    AlreadyExists { url: String, key: String },
    /// A compare-and-swap put met a version other than the one it expected.
    #[error("{url}: object {key:?} changed since it was read (precondition failed)")]
    PreconditionFailed { url: String, key: String },
    #[error("{url}: bucket {bucket:?} not found (check --archive or REWIND__ARCHIVE)")]
    BucketNotFound { url: String, bucket: String },
    #[error("{url}: access denied{} (check the credentials and the bucket policy)", detail(.key))]
    AccessDenied { url: String, key: Option<String> },
    #[error("{url}: endpoint {endpoint} unreachable ({reason}); check storage.s3.endpoint and that the server is up")]
    Unreachable {
        url: String,
        endpoint: String,
        reason: String,
    },
    #[error("invalid archive URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid object key {key:?}: keys are relative '/'-separated paths without empty, '.' or '..' parts")]
    InvalidKey { key: String },
    #[error("{url}: range {start}..{end} of {key:?} is outside the object")]
    InvalidRange {
        url: String,
        key: String,
        start: u64,
        end: u64,
    },
    #[error("{url}: {op} failed: {source}")]
    Io {
        url: String,
        op: String,
        #[source]
        source: io::Error,
    },
    /// A failure that may succeed when tried again (timeouts, throttling, 5xx, lost connections).
    #[error("{url}: {op} failed after {attempts} attempt(s): {message}")]
    Transient {
        url: String,
        op: String,
        message: String,
        attempts: u32,
    },
    /// A write through a store opened for reading ([`super::open_reader`]): the tools that only
    /// read never change the archive, and this is how the storage layer holds them to it.
    #[error("{url}: {op} {key:?} refused: the archive was opened for reading only")]
    ReadOnly {
        url: String,
        op: String,
        key: String,
    },
    /// An object of an archive storage class (S3 Glacier Flexible Retrieval, Deep Archive, or an
    /// archive tier of Intelligent-Tiering) that has not been thawed.
    #[error("{url}: {key} is in an archive storage class and must be restored before it can be read: run `rewind lifecycle thaw --archive {url}` with the topics and window to read (or `aws s3api restore-object`), then try again once it is restored (minutes to hours)")]
    Cold { url: String, key: String },
    #[error("{url}: {op} failed: {message}")]
    Other {
        url: String,
        op: String,
        message: String,
    },
}

fn detail(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(" to {k:?}"))
        .unwrap_or_default()
}

impl StorageError {
    /// Whether retrying the same request can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Transient { .. } | StorageError::Unreachable { .. } => true,
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// Record how many attempts were made before giving up on a transient failure.
    pub(crate) fn with_attempts(self, n: u32) -> Self {
        match self {
            StorageError::Transient {
                url, op, message, ..
            } => StorageError::Transient {
                url,
                op,
                message,
                attempts: n,
            },
            other => other,
        }
    }
}
