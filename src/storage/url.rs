//! Archive URLs: `file:///absolute/path` or `s3://bucket[/prefix]`. Parsing is strict so that a typo
//! is reported before anything is written to the wrong place.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::StorageError;

/// Where an archive lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// A directory on local disk (or a mounted file system).
    Local { root: PathBuf },
    /// A bucket and an optional key prefix (no leading or trailing `/`; empty for the bucket root).
    S3 { bucket: String, prefix: String },
}

impl StorageUrl {
    /// Parse an archive URL, explaining what is wrong with a malformed one.
    pub fn parse(input: &str) -> Result<StorageUrl, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidUrl {
            url: input.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = input.trim();
        if let Some(rest) = trimmed.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "a file URL needs an absolute path, e.g. file:///var/lib/rewind",
                ));
            }
            let path = rest.trim_end_matches('/');
            let path = if path.is_empty() { "/" } else { path };
            if path.split('/').any(|p| p == "..") {
                return Err(invalid("the path must not contain '..'"));
            }
            return Ok(StorageUrl::Local {
                root: PathBuf::from(path),
            });
        }
        if let Some(rest) = trimmed.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_bucket(bucket).map_err(|reason| invalid(&reason))?;
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
                return Err(invalid(
                    "the prefix must not contain empty, '.' or '..' parts",
                ));
            }
            return Ok(StorageUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        Err(invalid(
            "expected file:///absolute/path or s3://bucket/prefix",
        ))
    }
}

/// S3's bucket naming rules, checked locally so a typo is named before any request.
fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket name is missing".into());
    }
    if !(3..=63).contains(&bucket.len()) {
        return Err(format!(
            "bucket name {bucket:?} must be 3 to 63 characters long"
        ));
    }
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ok_ends = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok_chars
        || !ok_ends(bucket.bytes().next())
        || !ok_ends(bucket.bytes().last())
        || bucket.contains("..")
    {
        return Err(format!(
            "bucket name {bucket:?} may only hold lowercase letters, digits, '-' and '.', and must start and end with a letter or digit"
        ));
    }
    Ok(())
}

impl FromStr for StorageUrl {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StorageUrl::parse(s)
    }
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUrl::Local { root } => write!(f, "file://{}", root.display()),
            StorageUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StorageUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_urls_parse_and_print_back() {
        let cases = [
            ("file:///var/lib/rewind", "file:///var/lib/rewind"),
            ("file:///var/lib/rewind/", "file:///var/lib/rewind"),
            ("s3://my-bucket", "s3://my-bucket"),
            ("s3://my-bucket/", "s3://my-bucket"),
            (
                "s3://my.bucket/backups/prod/",
                "s3://my.bucket/backups/prod",
            ),
        ];
        for (input, shown) in cases {
            assert_eq!(StorageUrl::parse(input).unwrap().to_string(), shown);
        }
        assert_eq!(
            StorageUrl::parse("s3://b-1/a/b").unwrap(),
            StorageUrl::S3 {
                bucket: "b-1".into(),
                prefix: "a/b".into()
            }
        );
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        let cases = [
            ("/var/lib/rewind", "expected file:///absolute/path"),
            ("file://relative/path", "absolute path"),
            ("s3://", "bucket name is missing"),
            ("s3://ab", "3 to 63"),
            ("s3://My_Bucket/x", "lowercase"),
            ("s3://bucket/a//b", "empty"),
            (
                "gs://bucket",
                "expected file:///absolute/path or s3://bucket/prefix",
            ),
            ("file:///a/../b", "'..'"),
        ];
        for (input, needle) in cases {
            let msg = StorageUrl::parse(input).unwrap_err().to_string();
            assert!(msg.contains(needle), "{input}: {msg}");
            assert!(
                msg.starts_with(&format!("invalid archive URL {input:?}")),
                "{msg}"
            );
        }
    }
}
