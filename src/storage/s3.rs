//! The `s3://` backend (AWS S3 and S3-compatible servers such as MinIO) on aws-sdk-s3.
//!
//! Invariant: the archive's primitives map onto S3 conditional writes: create-only is
//! `If-None-Match: *`, compare-and-swap is `If-Match: <etag>`, on single puts and on multipart
//! completion alike, so a lost race is always an error value and never a silent overwrite. Retries
//! are ours (the SDK's are off) and touch transient failures only.
//!
//! Every object is sent with its CRC32C as an S3 additional checksum: S3 refuses a body that does not
//! match, and returns the checksum on `HeadObject`/`GetObject` later. Multipart uploads use the
//! full-object CRC32C type, so a large object's checksum is the same value a single put would give.
//!
//! One file of about 870 lines on purpose: it is one implementation of the `ObjectStore` contract,
//! and each operation's mapping of S3's answers onto that contract (conditional writes, retries,
//! checksums, errors) reads best next to the others.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart, Delete,
    ObjectIdentifier, StorageClass,
};
use aws_sdk_s3::Client;
use base64::Engine as _;
use bytes::Bytes;

mod lifecycle;

pub use lifecycle::{Lifecycle, Reach};

use super::{
    check_key, GetResult, ListPage, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutResult,
    RetryPolicy, StorageError, StorageResult, StorageUrl,
};

/// Server-side encryption applied to every object written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS, with the bucket's default key when `key_id` is `None`.
    Kms { key_id: Option<String> },
}

/// How to reach and write to S3. Unset fields fall back to the standard AWS chain (environment,
/// profile, web identity, container and instance metadata).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    pub region: Option<String>,
    /// Endpoint override for S3-compatible servers, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`.
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// A named profile from the AWS config files.
    pub profile: Option<String>,
    pub sse: Option<ServerSideEncryption>,
    /// e.g. `STANDARD_IA`, `INTELLIGENT_TIERING`.
    pub storage_class: Option<String>,
    pub retry: RetryPolicy,
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials never reach a log line.
        f.debug_struct("S3Options")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "<redacted>"),
            )
            .field("profile", &self.profile)
            .field("sse", &self.sse)
            .field("storage_class", &self.storage_class)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// An archive in an S3 bucket under an optional prefix.
#[derive(Clone)]
pub struct S3Store {
    url: StorageUrl,
    url_text: String,
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: String,
    sse: Option<ServerSideEncryption>,
    storage_class: Option<StorageClass>,
    retry: RetryPolicy,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("url", &self.url_text)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// What a failed request was trying to do, so a 412 can be told apart by mode.
#[derive(Clone, Copy)]
enum Intent<'a> {
    Read(&'a str),
    Write(&'a str, &'a PutMode),
    Bucket,
}

impl S3Store {
    /// Build a client for `url`. No request is made: errors such as a missing bucket surface on the
    /// first operation.
    pub async fn open(url: StorageUrl, opts: &S3Options) -> StorageResult<S3Store> {
        let StorageUrl::S3 { bucket, prefix } = &url else {
            return Err(StorageError::InvalidUrl {
                url: url.to_string(),
                reason: "not an s3:// URL".into(),
            });
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(opts.connect_timeout.unwrap_or(Duration::from_secs(5)))
                    .operation_attempt_timeout(
                        opts.request_timeout.unwrap_or(Duration::from_secs(300)),
                    )
                    .build(),
            );
        if let Some(region) = &opts.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(profile) = &opts.profile {
            loader = loader.profile_name(profile);
        }
        if let (Some(id), Some(secret)) = (&opts.access_key_id, &opts.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.clone(),
                opts.session_token.clone(),
                None,
                "rewind-config",
            ));
        }
        let shared = loader.load().await;
        let Some(region) = shared.region().map(|r| r.to_string()) else {
            return Err(StorageError::Other {
                url: url.to_string(),
                op: "configure S3".into(),
                message: "storage.s3.region: missing (set it in the config file, REWIND__STORAGE__S3__REGION or AWS_REGION)".into(),
            });
        };
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(opts.path_style)
            // Checksums only where S3 requires them: the widest compatibility with S3-compatible servers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        if let Some(endpoint) = &opts.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        let endpoint = opts
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        Ok(S3Store {
            url_text: url.to_string(),
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            url,
            client: Client::from_conf(conf.build()),
            endpoint,
            sse: opts.sse.clone(),
            storage_class: opts.storage_class.as_deref().map(StorageClass::from),
            retry: opts.retry,
        })
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn full_prefix(&self, prefix: &str) -> String {
        if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        }
    }

    fn relative(&self, full: &str) -> String {
        if self.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&self.prefix)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(full)
                .to_string()
        }
    }

    /// Translate an SDK failure into the storage error the trait promises.
    fn classify<E>(
        &self,
        op: &str,
        intent: Intent<'_>,
        err: SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let url = self.url_text.clone();
        let key = match intent {
            Intent::Read(k) | Intent::Write(k, _) => Some(k.to_string()),
            Intent::Bucket => None,
        };
        let message = DisplayErrorContext(&err).to_string();
        let transient = |message: String| StorageError::Transient {
            url: url.clone(),
            op: op.to_string(),
            message,
            attempts: 1,
        };
        match &err {
            SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
                StorageError::Unreachable {
                    url: url.clone(),
                    endpoint: self.endpoint.clone(),
                    reason: connect_reason(&message),
                }
            }
            SdkError::TimeoutError(_)
            | SdkError::ResponseError(_)
            | SdkError::DispatchFailure(_) => transient(message),
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = err.code().unwrap_or_default();
                match (status, code) {
                    (_, "NoSuchBucket") => StorageError::BucketNotFound {
                        url,
                        bucket: self.bucket.clone(),
                    },
                    (412, _) | (_, "PreconditionFailed") => match intent {
                        Intent::Write(key, PutMode::Create) => StorageError::AlreadyExists {
                            url,
                            key: key.to_string(),
                        },
                        _ => StorageError::PreconditionFailed {
                            url,
                            key: key.unwrap_or_default(),
                        },
                    },
                    (404, _) | (_, "NoSuchKey") => StorageError::NotFound {
                        url,
                        key: key.unwrap_or_default(),
                    },
                    // GLACIER or DEEP_ARCHIVE (or an archive tier), not restored: 403 too.
                    (_, "InvalidObjectState") if key.is_some() && op != "restore" => {
                        StorageError::Cold {
                            url,
                            key: key.unwrap_or_default(),
                        }
                    }
                    (403, _)
                    | (_, "AccessDenied")
                    | (_, "InvalidAccessKeyId")
                    | (_, "SignatureDoesNotMatch") => StorageError::AccessDenied { url, key },
                    (416, _) | (_, "InvalidRange") => StorageError::InvalidRange {
                        url,
                        key: key.unwrap_or_default(),
                        start: 0,
                        end: 0,
                    },
                    // A concurrent conditional write on the same key: S3 asks the loser to try again.
                    (409, "ConditionalRequestConflict") | (429, _) | (500..=599, _) => {
                        transient(message)
                    }
                    (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
                        transient(message)
                    }
                    // What the server said, not the SDK's whole context (one sentence).
                    (_, code) if !code.is_empty() => StorageError::Other {
                        url,
                        op: op.to_string(),
                        message: format!(
                            "{code}: {}",
                            err.message().unwrap_or("no message").trim_end_matches('.')
                        ),
                    },
                    _ => StorageError::Other {
                        url,
                        op: op.to_string(),
                        message,
                    },
                }
            }
            _ => StorageError::Other {
                url,
                op: op.to_string(),
                message,
            },
        }
    }
}

/// The useful part of a connector error: a known cause, or a plain statement.
fn connect_reason(message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    for (needle, reason) in [
        ("connection refused", "connection refused"),
        ("connection reset", "connection reset"),
        ("dns error", "the host name does not resolve"),
        ("timed out", "timed out"),
        ("timeout", "timed out"),
        ("certificate", "TLS certificate rejected"),
    ] {
        if lower.contains(needle) {
            return reason.to_string();
        }
    }
    "the connection failed".to_string()
}

/// The header form of a CRC32C: base64 of its four big-endian bytes.
fn crc32c_header(crc: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// A full-object CRC32C from a response; composite (`...-N`) checksums of old multipart uploads
/// are not a checksum of the object's bytes and count as none.
fn parse_crc32c(header: Option<&str>, kind: Option<&ChecksumType>) -> Option<u32> {
    if kind == Some(&ChecksumType::Composite) {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(header?)
        .ok()?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

/// Apply the store's write options (encryption, storage class) to a request builder.
macro_rules! with_write_options {
    ($store:expr, $req:expr) => {{
        let mut req = $req;
        match &$store.sse {
            Some(ServerSideEncryption::S3) => {
                req = req.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256);
            }
            Some(ServerSideEncryption::Kms { key_id }) => {
                req = req
                    .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                    .set_ssekms_key_id(key_id.clone());
            }
            None => {}
        }
        req.set_storage_class($store.storage_class.clone())
    }};
}

/// Apply a put mode's precondition to a request builder.
macro_rules! with_precondition {
    ($mode:expr, $req:expr) => {{
        match $mode {
            PutMode::Overwrite => $req,
            PutMode::Create => $req.if_none_match("*"),
            PutMode::Update { etag } => $req.if_match(etag.clone()),
        }
    }};
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StorageResult<PutResult> {
        check_key(key)?;
        let full = self.full_key(key);
        let checksum = crc32c_header(super::crc32c(&body));
        self.retry
            .run("put", || async {
                let req = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .checksum_crc32_c(&checksum)
                    .body(ByteStream::from(body.clone()));
                let req = with_precondition!(&mode, with_write_options!(self, req));
                let out = req
                    .send()
                    .await
                    .map_err(|e| self.classify("put", Intent::Write(key, &mode), e))?;
                Ok(PutResult {
                    etag: out.e_tag.unwrap_or_default(),
                })
            })
            .await
    }

    async fn get(&self, key: &str) -> StorageResult<GetResult> {
        check_key(key)?;
        let full = self.full_key(key);
        self.retry
            .run("get", || async {
                let out = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await
                    .map_err(|e| self.classify("get", Intent::Read(key), e))?;
                let meta = ObjectMeta {
                    key: key.to_string(),
                    size: out.content_length.unwrap_or_default().max(0) as u64,
                    etag: out.e_tag.clone().unwrap_or_default(),
                    last_modified: to_system_time(out.last_modified.as_ref()),
                    crc32c: parse_crc32c(out.checksum_crc32_c(), out.checksum_type()),
                };
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| StorageError::Transient {
                        url: self.url_text.clone(),
                        op: format!("read {key:?}"),
                        message: e.to_string(),
                        attempts: 1,
                    })?;
                Ok(GetResult {
                    meta,
                    body: body.into_bytes(),
                })
            })
            .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes> {
        check_key(key)?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let full = self.full_key(key);
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let result = self
            .retry
            .run("get range", || async {
                let out = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .range(&header)
                    .send()
                    .await
                    .map_err(|e| self.classify("get range", Intent::Read(key), e))?;
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| StorageError::Transient {
                        url: self.url_text.clone(),
                        op: format!("read {key:?}"),
                        message: e.to_string(),
                        attempts: 1,
                    })?;
                Ok(body.into_bytes())
            })
            .await;
        result.map_err(|e| match e {
            StorageError::InvalidRange { url, key, .. } => StorageError::InvalidRange {
                url,
                key,
                start: range.start,
                end: range.end,
            },
            other => other,
        })
    }

    async fn head(&self, key: &str) -> StorageResult<ObjectMeta> {
        check_key(key)?;
        let full = self.full_key(key);
        self.retry
            .run("head", || async {
                let out = self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await
                    .map_err(|e| self.classify("head", Intent::Read(key), e))?;
                Ok(ObjectMeta {
                    key: key.to_string(),
                    size: out.content_length.unwrap_or_default().max(0) as u64,
                    crc32c: parse_crc32c(out.checksum_crc32_c(), out.checksum_type()),
                    etag: out.e_tag.unwrap_or_default(),
                    last_modified: to_system_time(out.last_modified.as_ref()),
                })
            })
            .await
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> StorageResult<ListPage> {
        let full = self.full_prefix(prefix);
        self.retry
            .run("list", || async {
                let out = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&full)
                    .set_continuation_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| self.classify("list", Intent::Bucket, e))?;
                let objects = out
                    .contents()
                    .iter()
                    .filter_map(|o| {
                        Some(ObjectMeta {
                            key: self.relative(o.key()?),
                            size: o.size.unwrap_or_default().max(0) as u64,
                            etag: o.e_tag.clone().unwrap_or_default(),
                            last_modified: to_system_time(o.last_modified.as_ref()),
                            crc32c: None,
                        })
                    })
                    .collect();
                let next = if out.is_truncated == Some(true) {
                    out.next_continuation_token.clone()
                } else {
                    None
                };
                Ok(ListPage { objects, next })
            })
            .await
    }

    async fn delete_many(&self, keys: &[String]) -> StorageResult<()> {
        for key in keys {
            check_key(key)?;
        }
        // DeleteObjects takes at most 1,000 keys per request.
        for chunk in keys.chunks(1000) {
            let ids = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.full_key(k)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError::Other {
                    url: self.url_text.clone(),
                    op: "delete".into(),
                    message: e.to_string(),
                })?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::Other {
                    url: self.url_text.clone(),
                    op: "delete".into(),
                    message: e.to_string(),
                })?;
            let out = self
                .retry
                .run("delete", || async {
                    self.client
                        .delete_objects()
                        .bucket(&self.bucket)
                        .delete(delete.clone())
                        .send()
                        .await
                        .map_err(|e| self.classify("delete", Intent::Bucket, e))
                })
                .await?;
            if let Some(failed) = out.errors().first() {
                let key = failed.key().map(|k| self.relative(k));
                return Err(match failed.code() {
                    Some("AccessDenied") => StorageError::AccessDenied {
                        url: self.url_text.clone(),
                        key,
                    },
                    code => StorageError::Other {
                        url: self.url_text.clone(),
                        op: format!("delete {:?}", key.unwrap_or_default()),
                        message: format!(
                            "{}: {}",
                            code.unwrap_or("error"),
                            failed.message().unwrap_or_default()
                        ),
                    },
                });
            }
        }
        Ok(())
    }

    async fn start_multipart(
        &self,
        key: &str,
        mode: PutMode,
    ) -> StorageResult<Box<dyn MultipartUpload>> {
        check_key(key)?;
        let full = self.full_key(key);
        let upload_id = self
            .retry
            .run("start multipart upload", || async {
                let req = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .checksum_type(ChecksumType::FullObject);
                let out = with_write_options!(self, req).send().await.map_err(|e| {
                    self.classify("start multipart upload", Intent::Write(key, &mode), e)
                })?;
                out.upload_id.ok_or_else(|| StorageError::Other {
                    url: self.url_text.clone(),
                    op: "start multipart upload".into(),
                    message: "the server returned no upload id".into(),
                })
            })
            .await?;
        Ok(Box::new(S3Upload {
            store: self.clone(),
            key: key.to_string(),
            full,
            mode,
            upload_id,
            parts: Vec::new(),
            crc: 0,
        }))
    }

    async fn incomplete_uploads(&self, prefix: &str) -> StorageResult<Vec<String>> {
        Ok(self
            .multipart_uploads(prefix)
            .await?
            .into_iter()
            .map(|u| self.relative(&u.key))
            .collect())
    }

    async fn abort_incomplete_uploads(
        &self,
        prefix: &str,
        started_before: std::time::SystemTime,
    ) -> StorageResult<Vec<String>> {
        let old: Vec<(String, String)> = self
            .multipart_uploads(prefix)
            .await?
            .into_iter()
            .filter(|u| u.initiated.is_some_and(|t| t < started_before))
            .map(|u| (u.key, u.upload_id))
            .collect();
        let mut keys = Vec::new();
        for (key, upload_id) in old {
            let aborted = self
                .retry
                .run("abort an abandoned multipart upload", || async {
                    self.client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .send()
                        .await
                        .map_err(|e| {
                            self.classify(
                                "abort an abandoned multipart upload",
                                Intent::Read(&key),
                                e,
                            )
                        })
                })
                .await;
            match aborted {
                Ok(_) => keys.push(self.relative(&key)),
                // Completed or aborted by someone else meanwhile.
                Err(StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(keys)
    }

    fn url(&self) -> &StorageUrl {
        &self.url
    }
}

/// An unfinished multipart upload, as S3 lists it.
struct ListedUpload {
    /// Full key (with the store's prefix).
    key: String,
    upload_id: String,
    initiated: Option<std::time::SystemTime>,
}

impl S3Store {
    /// Every unfinished multipart upload under `prefix`, all pages.
    async fn multipart_uploads(&self, prefix: &str) -> StorageResult<Vec<ListedUpload>> {
        let full = self.full_prefix(prefix);
        let mut uploads = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let out = self
                .retry
                .run("list multipart uploads", || async {
                    self.client
                        .list_multipart_uploads()
                        .bucket(&self.bucket)
                        .prefix(&full)
                        .set_key_marker(markers.0.clone())
                        .set_upload_id_marker(markers.1.clone())
                        .send()
                        .await
                        .map_err(|e| self.classify("list multipart uploads", Intent::Bucket, e))
                })
                .await?;
            uploads.extend(out.uploads().iter().filter_map(|u| {
                Some(ListedUpload {
                    key: u.key()?.to_string(),
                    upload_id: u.upload_id()?.to_string(),
                    initiated: u
                        .initiated()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                })
            }));
            if out.is_truncated != Some(true) {
                return Ok(uploads);
            }
            markers = (
                out.next_key_marker.clone(),
                out.next_upload_id_marker.clone(),
            );
        }
    }
}

/// One S3 multipart upload; parts are numbered from 1 in the order they are put.
struct S3Upload {
    store: S3Store,
    key: String,
    full: String,
    mode: PutMode,
    upload_id: String,
    parts: Vec<CompletedPart>,
    /// CRC32C of the parts uploaded so far.
    crc: u32,
}

impl S3Upload {
    async fn abort_inner(&self) -> StorageResult<()> {
        let store = &self.store;
        store
            .retry
            .run("abort multipart upload", || async {
                match store
                    .client
                    .abort_multipart_upload()
                    .bucket(&store.bucket)
                    .key(&self.full)
                    .upload_id(&self.upload_id)
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        match store.classify("abort multipart upload", Intent::Read(&self.key), e) {
                            // NoSuchUpload: already gone, which is what abort wants.
                            StorageError::NotFound { .. } => Ok(()),
                            other => Err(other),
                        }
                    }
                }
            })
            .await
    }
}

#[async_trait]
impl MultipartUpload for S3Upload {
    async fn put_part(&mut self, data: Bytes) -> StorageResult<()> {
        let number = self.parts.len() as i32 + 1;
        let checksum = crc32c_header(super::crc32c(&data));
        let store = &self.store;
        let etag = store
            .retry
            .run("upload part", || async {
                let out = store
                    .client
                    .upload_part()
                    .bucket(&store.bucket)
                    .key(&self.full)
                    .upload_id(&self.upload_id)
                    .part_number(number)
                    .checksum_crc32_c(&checksum)
                    .body(ByteStream::from(data.clone()))
                    .send()
                    .await
                    .map_err(|e| {
                        store.classify("upload part", Intent::Write(&self.key, &self.mode), e)
                    })?;
                Ok(out.e_tag.unwrap_or_default())
            })
            .await?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(etag)
                .checksum_crc32_c(checksum)
                .build(),
        );
        self.crc = ::crc32c::crc32c_append(self.crc, &data);
        Ok(())
    }

    async fn complete(self: Box<Self>) -> StorageResult<PutResult> {
        let store = &self.store;
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(self.parts.clone()))
            .build();
        let result = store
            .retry
            .run("complete multipart upload", || async {
                let req = store
                    .client
                    .complete_multipart_upload()
                    .bucket(&store.bucket)
                    .key(&self.full)
                    .upload_id(&self.upload_id)
                    .checksum_crc32_c(crc32c_header(self.crc))
                    .checksum_type(ChecksumType::FullObject)
                    .multipart_upload(parts.clone());
                let out = with_precondition!(&self.mode, req)
                    .send()
                    .await
                    .map_err(|e| {
                        store.classify(
                            "complete multipart upload",
                            Intent::Write(&self.key, &self.mode),
                            e,
                        )
                    })?;
                Ok(PutResult {
                    etag: out.e_tag.unwrap_or_default(),
                })
            })
            .await;
        // A retried completion whose first attempt succeeded finds the upload gone: the object is
        // there, so report what a create-only or compare-and-swap caller expects to handle.
        let result = match result {
            Err(StorageError::NotFound { url, key }) => Err(match self.mode {
                PutMode::Create => StorageError::AlreadyExists { url, key },
                _ => StorageError::PreconditionFailed { url, key },
            }),
            other => other,
        };
        if result.is_err() {
            // A refused completion (the key exists, the precondition failed) must not leave parts behind.
            if let Err(abort) = self.abort_inner().await {
                tracing::warn!(key = %self.key, error = %abort, "aborting a failed multipart upload failed");
            }
        }
        result
    }

    async fn abort(self: Box<Self>) -> StorageResult<()> {
        self.abort_inner().await
    }
}
