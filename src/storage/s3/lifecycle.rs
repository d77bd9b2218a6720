//! What the bucket does with an archive's objects over time: its lifecycle rules (read and
//! replaced whole, as S3 stores them), and the objects that a storage class of the archive tier
//! keeps out of reach until a restore request thaws them.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, GlacierJobParameters, LifecycleRule, RestoreRequest, Tier,
    TransitionDefaultMinimumObjectSize,
};

use super::{Intent, S3Store};
use crate::storage::{check_key, StorageError, StorageResult};

/// Whether an object can be read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A storage class read directly (Standard, Intelligent-Tiering's frequent tiers, Standard-IA,
    /// One Zone-IA, Glacier Instant Retrieval…).
    Readable,
    /// Glacier Flexible Retrieval or Deep Archive (or an archive tier of Intelligent-Tiering): a
    /// restore request must thaw it first.
    Cold { class: String },
    /// A restore request is under way.
    Thawing { class: String },
    /// Thawed: readable until the restored copy expires.
    Thawed { class: String },
}

/// A bucket's lifecycle configuration: its rules, and the bucket-wide minimum size of objects
/// that transitions move (kept as it is when the rules are replaced).
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    pub rules: Vec<LifecycleRule>,
    pub minimum_size: Option<TransitionDefaultMinimumObjectSize>,
}

impl Reach {
    /// An archive tier of Intelligent-Tiering (thawed without a number of days).
    fn intelligent(class: &str) -> bool {
        class == "INTELLIGENT_TIERING"
    }
}

impl S3Store {
    /// Where the archive's data files begin in the bucket (`<prefix>/data/`).
    pub fn data_prefix(&self) -> String {
        self.full_key(crate::archive::paths::DATA_PREFIX)
    }

    /// The archive's own prefix in the bucket (empty at the bucket's root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The bucket's lifecycle configuration (empty when it has none).
    pub async fn lifecycle(&self) -> StorageResult<Lifecycle> {
        let got = self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        match got {
            Ok(out) => Ok(Lifecycle {
                minimum_size: out.transition_default_minimum_object_size.clone(),
                rules: out.rules.unwrap_or_default(),
            }),
            Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") => Ok(Lifecycle::default()),
            Err(e) => Err(self.classify("get lifecycle", Intent::Bucket, e)),
        }
    }

    /// Replace the bucket's lifecycle configuration (no rules: delete it).
    pub async fn set_lifecycle(&self, lifecycle: Lifecycle) -> StorageResult<()> {
        let Lifecycle {
            rules,
            minimum_size,
        } = lifecycle;
        if rules.is_empty() {
            return self
                .client
                .delete_bucket_lifecycle()
                .bucket(&self.bucket)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.classify("delete lifecycle", Intent::Bucket, e));
        }
        let config = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(|e| StorageError::Other {
                url: self.url_text.clone(),
                op: "put lifecycle".into(),
                message: e.to_string(),
            })?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(config)
            .set_transition_default_minimum_object_size(minimum_size)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify("put lifecycle", Intent::Bucket, e))
    }

    /// Whether `key` can be read now, from its storage class and restore status.
    pub async fn reach(&self, key: &str) -> StorageResult<Reach> {
        check_key(key)?;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.classify("head", Intent::Read(key), e))?;
        let class = out
            .storage_class()
            .map_or("STANDARD".to_string(), |c| c.as_str().to_string());
        let archived_tier = out.archive_status().is_some();
        let cold = matches!(class.as_str(), "GLACIER" | "DEEP_ARCHIVE") || archived_tier;
        Ok(match (cold, out.restore()) {
            (false, _) => Reach::Readable,
            (true, None) => Reach::Cold { class },
            (true, Some(r)) if r.contains("ongoing-request=\"true\"") => Reach::Thawing { class },
            (true, Some(_)) => Reach::Thawed { class },
        })
    }

    /// Ask S3 to thaw `key` (of storage class `class`) for `days` days at `tier` (`Standard`,
    /// `Bulk`, `Expedited`), or to keep a thawed copy that long. A request already under way counts
    /// as made. An archive tier of Intelligent-Tiering takes no number of days (the object moves
    /// back to a frequent tier) and is thawed at Standard or Bulk.
    pub async fn thaw(&self, key: &str, class: &str, days: i32, tier: &str) -> StorageResult<()> {
        check_key(key)?;
        let job = |tier: &str| {
            GlacierJobParameters::builder()
                .tier(Tier::from(tier))
                .build()
                .map_err(|e| StorageError::Other {
                    url: self.url_text.clone(),
                    op: "restore".into(),
                    message: e.to_string(),
                })
        };
        let request = if Reach::intelligent(class) {
            let tier = if tier == "Expedited" {
                "Standard"
            } else {
                tier
            };
            RestoreRequest::builder()
                .glacier_job_parameters(job(tier)?)
                .build()
        } else {
            RestoreRequest::builder()
                .days(days)
                .glacier_job_parameters(job(tier)?)
                .build()
        };
        match self
            .client
            .restore_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .restore_request(request)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("RestoreAlreadyInProgress") => Ok(()),
            Err(e) => Err(self.classify("restore", Intent::Read(key), e)),
        }
    }
}
