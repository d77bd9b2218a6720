//! Retries with capped exponential backoff and full jitter, for transient failures only: a
//! permanent error (not found, precondition failed, access denied) returns at once.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::StorageResult;

/// How often and how patiently to retry a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Backoff ceiling before the first retry; doubles on each further retry.
    pub initial_backoff: Duration,
    /// Upper bound of any single backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The jittered pause before retry number `retry` (1-based): uniform in `[0, min(max, base·2^(retry-1))]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(30);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// Run `op` until it succeeds, fails permanently, or the attempts are used up.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> StorageResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StorageResult<T>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(err) if err.is_transient() && attempt < self.max_attempts.max(1) => {
                    let pause = self.backoff(attempt);
                    tracing::debug!(what, attempt, error = %err, pause_ms = pause.as_millis() as u64, "retrying a transient storage failure");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(err) => return Err(err.with_attempts(attempt)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use proptest::prelude::*;

    use super::*;
    use crate::storage::StorageError;

    fn transient() -> StorageError {
        StorageError::Transient {
            url: "u".into(),
            op: "put".into(),
            message: "503".into(),
            attempts: 1,
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let out = fast()
            .run("op", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(transient())
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(out, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let err = fast()
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(StorageError::AlreadyExists {
                    url: "u".into(),
                    key: "k".into(),
                })
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::AlreadyExists { .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn attempts_are_bounded_and_reported() {
        let calls = AtomicU32::new(0);
        let err = fast()
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(transient())
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(
            matches!(err, StorageError::Transient { attempts: 4, .. }),
            "{err:?}"
        );
    }

    proptest! {
        #[test]
        fn backoff_stays_under_the_exponential_ceiling(retry in 1u32..64, base in 1u64..1000, max in 1u64..60_000) {
            let policy = RetryPolicy {
                max_attempts: 10,
                initial_backoff: Duration::from_millis(base),
                max_backoff: Duration::from_millis(max),
            };
            let ceiling = base.saturating_mul(1u64 << (retry - 1).min(30)).min(max);
            prop_assert!(policy.backoff(retry) <= Duration::from_millis(ceiling));
        }
    }
}
