//! A client of a Confluent-compatible Schema Registry's REST API (Confluent Schema Registry,
//! Karapace, Apicurio's `/apis/ccompat/v7`, Redpanda): the few reads Rewind needs to follow the
//! wire format's schema ids, where a record's key or value is a zero byte, the schema id as a
//! big-endian 32-bit integer, then the encoded data.
//!
//! Basic-auth credentials may be given in the URL (`https://KEY:SECRET@host`); they are sent as an
//! `Authorization` header and never printed (nor in `Debug`).
//!
//! A request that fails for a reason that may pass (no connection, a timeout, 429, 5xx) is tried
//! again with backoff, up to [`ATTEMPTS`] times.

use std::time::Duration;

use serde::Deserialize;

use crate::backoff::Backoff;

/// Each request to the registry gives up after this long...
const TIMEOUT: Duration = Duration::from_secs(15);
/// ...and is tried this many times when the failure may pass.
const ATTEMPTS: usize = 4;

/// The schema id a record's bytes carry in the Confluent wire format, if they are in it.
pub fn wire_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// `bytes` (in the wire format) with its schema id replaced by `id`.
pub fn with_wire_id(bytes: &[u8], id: u32) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[1..5].copy_from_slice(&id.to_be_bytes());
    out
}

/// A subject and one of its versions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
}

/// A schema as the registry serves it by id: its text, type (absent for Avro) and references.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Schema {
    pub schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url}: {message}")]
    Refused { url: String, message: String },
}

/// A Schema Registry at one base URL.
#[derive(Clone)]
pub struct Registry {
    /// The base URL without credentials, for messages.
    shown: String,
    base: reqwest::Url,
    credentials: Option<(String, String)>,
    client: reqwest::Client,
    attempts: usize,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.shown)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Whether `url` carries credentials (a user or a password before its host).
pub fn has_credentials(url: &str) -> bool {
    reqwest::Url::parse(url)
        .map(|u| !u.username().is_empty() || u.password().is_some())
        .unwrap_or_else(|_| url.contains('@'))
}

impl Registry {
    /// A registry at `url` (http or https); its credentials, if any, move out of the URL. An error
    /// never repeats a URL that holds credentials.
    pub fn new(url: &str) -> Result<Registry, String> {
        let shown_given = if has_credentials(url) {
            "the URL given (credentials not shown)".to_string()
        } else {
            format!("{url:?}")
        };
        let mut base = reqwest::Url::parse(url)
            .map_err(|e| format!("{shown_given} is not a URL of a schema registry ({e})"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(format!(
                "{shown_given} is not an http:// or https:// URL of a schema registry"
            ));
        }
        let credentials = (!base.username().is_empty() || base.password().is_some()).then(|| {
            let user = decode(base.username());
            let password = base.password().map(decode).unwrap_or_default();
            (user, password)
        });
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let shown = base.as_str().trim_end_matches('/').to_string();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("{shown}: {e}"))?;
        Ok(Registry {
            shown,
            base,
            credentials,
            client,
            attempts: ATTEMPTS,
        })
    }

    /// The same registry, whose requests each give up after `timeout` and are tried `attempts`
    /// times: for a caller that must not wait long (the sink, which reads on without a schema).
    pub fn with_patience(mut self, timeout: Duration, attempts: usize) -> Registry {
        if let Ok(client) = reqwest::Client::builder().timeout(timeout).build() {
            self.client = client;
        }
        self.attempts = attempts.max(1);
        self
    }

    /// The URL, without credentials.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Whether the registry answers (its subjects can be listed).
    pub async fn check(&self) -> Result<(), RegistryError> {
        self.get::<serde_json::Value>(&["subjects"]).await.map(drop)
    }

    /// The subjects and versions that register the schema `id` (`None`: no such schema).
    pub async fn versions_of(&self, id: u32) -> Result<Option<Vec<SubjectVersion>>, RegistryError> {
        let segments = ["schemas", "ids", &id.to_string(), "versions"];
        self.call_found(reqwest::Method::GET, &segments, None).await
    }

    /// The schema registered with `id` (`None`: no such schema).
    pub async fn schema(&self, id: u32) -> Result<Option<Schema>, RegistryError> {
        self.call_found(
            reqwest::Method::GET,
            &["schemas", "ids", &id.to_string()],
            None,
        )
        .await
    }

    /// Version `version` of `subject` (`None`: no such subject or version): how a schema's
    /// references are read.
    pub async fn subject_version(
        &self,
        subject: &str,
        version: i32,
    ) -> Result<Option<Schema>, RegistryError> {
        let version = version.to_string();
        let segments = ["subjects", subject, "versions", &version];
        self.call_found(reqwest::Method::GET, &segments, None).await
    }

    /// The id under which `subject` registers `schema`, compared by content as the registry
    /// compares it (`None`: the subject does not have it).
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &Schema,
    ) -> Result<Option<u32>, RegistryError> {
        #[derive(Deserialize)]
        struct Found {
            id: u32,
        }
        let body = serde_json::to_value(schema).expect("a schema serializes");
        let found: Option<Found> = self
            .call_found(reqwest::Method::POST, &["subjects", subject], Some(&body))
            .await?;
        Ok(found.map(|f| f.id))
    }

    async fn call_found<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        body: Option<&serde_json::Value>,
    ) -> Result<Option<T>, RegistryError> {
        match self.call(method, segments, body).await {
            Ok(found) => Ok(Some(found)),
            Err(RegistryError::Refused { message, .. }) if message.starts_with("404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<T, RegistryError> {
        self.call(reqwest::Method::GET, segments, None).await
    }

    /// One request, tried again while its failure may pass.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        body: Option<&serde_json::Value>,
    ) -> Result<T, RegistryError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        let mut attempt = 1;
        loop {
            match self.call_once(method.clone(), segments, body).await {
                Err(e) if e.may_pass() && attempt < self.attempts => {
                    tracing::debug!(error = %e, attempt, "schema registry request failed; trying again");
                    tokio::time::sleep(backoff.next_delay()).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn call_once<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        body: Option<&serde_json::Value>,
    ) -> Result<T, RegistryError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked to be a base")
            .pop_if_empty()
            .extend(segments);
        let what = format!("{method} /{}", segments.join("/"));
        let unreachable = |message: String| RegistryError::Unreachable {
            url: self.shown.clone(),
            message,
        };
        let mut request = self.client.request(method, url).header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .body(body.to_string());
        }
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| {
            unreachable(format!(
                "the schema registry does not answer ({})",
                std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string())
            ))
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable(format!("the schema registry's answer broke off ({e})")))?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            let message = format!("{} from {what}: {detail}", status.as_u16());
            let passing =
                status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
            return Err(if passing {
                unreachable(message)
            } else {
                RegistryError::Refused {
                    url: self.shown.clone(),
                    message,
                }
            });
        }
        serde_json::from_slice(&body).map_err(|e| RegistryError::Refused {
            url: self.shown.clone(),
            message: format!(
                "{what} answered something that is not a schema registry's JSON ({e})"
            ),
        })
    }
}

impl RegistryError {
    /// Whether the same request may succeed later (no answer, a timeout, 429, 5xx).
    pub fn may_pass(&self) -> bool {
        matches!(self, RegistryError::Unreachable { .. })
    }
}

/// A percent-decoded part of a URL's user information.
fn decode(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_carries_a_big_endian_id_after_a_zero_byte() {
        assert_eq!(wire_id(&[0, 0, 0, 1, 2, 9, 9]), Some(258));
        assert_eq!(wire_id(&[0, 0, 0, 1, 2]), Some(258));
        assert_eq!(wire_id(&[0, 0, 0, 1]), None, "too short");
        assert_eq!(wire_id(&[1, 0, 0, 1, 2]), None, "another magic byte");
        assert_eq!(wire_id(b"{\"a\":1}"), None);
        assert_eq!(
            with_wire_id(&[0, 0, 0, 1, 2, 9, 9], 7),
            vec![0, 0, 0, 0, 7, 9, 9]
        );
    }

    #[test]
    fn credentials_leave_the_url_and_bad_urls_are_refused() {
        let registry =
            Registry::new("https://key:s%40cret@registry.example.com/apis/ccompat/v7").unwrap();
        assert_eq!(
            registry.url(),
            "https://registry.example.com/apis/ccompat/v7"
        );
        assert_eq!(
            registry.credentials,
            Some(("key".to_string(), "s@cret".to_string()))
        );
        assert_eq!(
            registry.base.as_str(),
            "https://registry.example.com/apis/ccompat/v7/"
        );
        for bad in ["registry:8081", "ftp://host/", "not a url"] {
            assert!(Registry::new(bad).is_err(), "{bad}");
        }
        // Credentials never show: not in errors, not in Debug.
        let error = Registry::new("htps://key:s3cret@registry").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(!format!("{registry:?}").contains("cret"));
        assert!(has_credentials("https://:token@registry"));
        assert!(has_credentials("https://key@registry"));
        assert!(!has_credentials("https://registry/apis/ccompat/v7"));
    }
}
