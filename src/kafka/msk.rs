//! Amazon MSK IAM authentication: SASL/OAUTHBEARER with tokens signed by the standard AWS credential
//! chain (environment, profile, web identity, container and instance roles), as the
//! `aws-msk-iam-sasl-signer` library makes them.
//!
//! A cluster with `aws_msk_iam = true` gets `sasl.mechanism=OAUTHBEARER` and a
//! `sasl.oauthbearer.config` naming the region; every Rewind client context answers librdkafka's
//! token-refresh requests through [`token`]. Each token lives 15 minutes and is handed over with its
//! real expiry, so librdkafka asks for the next one at 80% of its life, well before it expires.
//! Verified against the signer's format in unit tests; against a real MSK cluster only by users.

use std::error::Error;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::Region;
use rdkafka::client::OAuthToken;

/// Marks a `sasl.oauthbearer.config` written by Rewind for MSK IAM.
pub const CONFIG_PREFIX: &str = "rewind-aws-msk-iam";

/// The `sasl.oauthbearer.config` value for a region (`None`: the AWS chain's region).
pub fn oauthbearer_config(region: Option<&str>) -> String {
    match region {
        Some(region) => format!("{CONFIG_PREFIX} region={region}"),
        None => CONFIG_PREFIX.to_string(),
    }
}

/// The region a `sasl.oauthbearer.config` written by [`oauthbearer_config`] names; `Ok(None)`
/// when it leaves the region to the AWS chain, `Err` when the config is not Rewind's.
fn region_of(config: Option<&str>) -> Result<Option<String>, String> {
    let config = config.unwrap_or_default().trim();
    let Some(rest) = config.strip_prefix(CONFIG_PREFIX) else {
        return Err("no OAUTHBEARER token source is configured: set aws_msk_iam = true for Amazon MSK IAM, or sasl.oauthbearer.method = oidc".into());
    };
    Ok(rest
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("region="))
        .map(str::to_string))
}

/// The last token signed, by region: every client of the process shares it while more than a
/// fifth of its life is left, so many clients (one per consumer-group snapshot, for one) do not
/// each walk the AWS credential chain.
static CACHE: Mutex<Option<(Option<String>, String, i64)>> = Mutex::new(None);

/// A token is reused while at least this much of its life is left.
const REUSE_MARGIN_MS: i64 = 180_000;

/// A token for librdkafka: the cached one while it has life left, else a fresh one. Signing runs
/// on a thread of its own, so this can be called from librdkafka's threads and from inside the
/// async runtime alike.
pub fn token(config: Option<&str>) -> Result<OAuthToken, Box<dyn Error>> {
    let region = region_of(config)?;
    {
        let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached_region, token, expires)) = &*cache {
            if *cached_region == region
                && expires - crate::archive::time::now_ms() > REUSE_MARGIN_MS
            {
                return Ok(OAuthToken {
                    token: token.clone(),
                    principal_name: String::new(),
                    lifetime_ms: *expires,
                });
            }
        }
    }
    let asked = region.clone();
    let signed = std::thread::spawn(move || -> Result<(String, i64), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let region = match region {
                Some(region) => Region::new(region),
                None => aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .load()
                    .await
                    .region()
                    .cloned()
                    .ok_or("no AWS region: set the cluster's aws_region or AWS_REGION")?,
            };
            tokio::time::timeout(
                Duration::from_secs(10),
                aws_msk_iam_sasl_signer::generate_auth_token(region),
            )
            .await
            .map_err(|_| "signing the MSK IAM token took longer than 10s".to_string())?
            .map_err(|e| format!("cannot sign an MSK IAM token: {e}"))
        })
    })
    .join()
    .map_err(|_| "the MSK IAM token signer panicked".to_string())??;
    tracing::debug!(expires_at_ms = signed.1, "signed a new MSK IAM token");
    *CACHE.lock().unwrap_or_else(|e| e.into_inner()) = Some((asked, signed.0.clone(), signed.1));
    Ok(OAuthToken {
        token: signed.0,
        principal_name: String::new(),
        lifetime_ms: signed.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
    use base64::Engine;

    #[test]
    fn a_token_with_life_left_is_shared() {
        let far = crate::archive::time::now_ms() + 600_000;
        *CACHE.lock().unwrap() = Some((Some("eu-north-1".into()), "cached-token".into(), far));
        // No AWS call is made: the cached token is handed out with its real expiry.
        let token = token(Some("rewind-aws-msk-iam region=eu-north-1")).unwrap();
        assert_eq!(
            (token.token.as_str(), token.lifetime_ms),
            ("cached-token", far)
        );
    }

    #[test]
    fn only_rewinds_own_config_is_answered() {
        assert_eq!(
            region_of(Some("rewind-aws-msk-iam region=eu-west-1")).unwrap(),
            Some("eu-west-1".into())
        );
        assert_eq!(region_of(Some(CONFIG_PREFIX)).unwrap(), None);
        assert!(region_of(None).is_err());
        assert!(region_of(Some("principal=admin")).is_err());
        assert_eq!(
            oauthbearer_config(Some("us-east-2")),
            "rewind-aws-msk-iam region=us-east-2"
        );
    }

    /// The signer's token is a base64url presigned URL for `kafka-cluster:Connect`, valid 15
    /// minutes; its expiry is what librdkafka is told, so the refresh at 80% of the lifetime
    /// comes about three minutes before it runs out.
    #[tokio::test]
    async fn tokens_are_presigned_connect_urls_that_expire_in_fifteen_minutes() {
        let credentials = Credentials::new("AKIDEXAMPLE", "secret-example", None, None, "test");
        let before = crate::archive::time::now_ms();
        let (token, expires_ms) =
            aws_msk_iam_sasl_signer::generate_auth_token_from_credentials_provider(
                Region::new("eu-west-1"),
                SharedCredentialsProvider::new(credentials),
            )
            .await
            .unwrap();
        let url = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&token)
                .unwrap(),
        )
        .unwrap();
        let url = url::Url::parse(&url).unwrap();
        assert_eq!(url.host_str(), Some("kafka.eu-west-1.amazonaws.com"));
        let query: std::collections::BTreeMap<String, String> =
            url.query_pairs().into_owned().collect();
        assert_eq!(query["Action"], "kafka-cluster:Connect");
        assert_eq!(query["X-Amz-Expires"], "900");
        assert!(query["X-Amz-Credential"].starts_with("AKIDEXAMPLE/"));
        assert!(query["X-Amz-Credential"].contains("/eu-west-1/kafka-cluster/aws4_request"));
        assert!(!query["X-Amz-Signature"].is_empty());
        assert!(!url.as_str().contains("secret-example"));
        // The expiry is the signing time (whole seconds) plus 900 s.
        let lifetime = expires_ms - before;
        assert!(
            (899_000..=901_000).contains(&lifetime),
            "lifetime {lifetime} ms"
        );
    }
}
