//! A client of a Confluent-compatible Schema Registry's REST API (Confluent Schema Registry,
//! Karapace, Apicurio's `/apis/ccompat/v7`, Redpanda): the few reads Rewind needs to follow the
//! wire format's schema ids, where a record's key or value is a zero byte, the schema id as a
//! big-endian 32-bit integer, then the encoded data.
//!
//! Basic-auth credentials may be given in the URL (`https://KEY:SECRET@host`); they are sent as an
//! `Authorization` header and never printed.

use std::time::Duration;

use serde::Deserialize;

/// Requests to the registry give up after this long.
const TIMEOUT: Duration = Duration::from_secs(15);

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

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url}: {message}")]
    Refused { url: String, message: String },
}

/// A Schema Registry at one base URL.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The base URL without credentials, for messages.
    shown: String,
    base: reqwest::Url,
    credentials: Option<(String, String)>,
    client: reqwest::Client,
}

impl Registry {
    /// A registry at `url` (http or https); its credentials, if any, move out of the URL.
    pub fn new(url: &str) -> Result<Registry, String> {
        let mut base = reqwest::Url::parse(url)
            .map_err(|e| format!("{url:?} is not a URL of a schema registry ({e})"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(format!(
                "{url:?} is not an http:// or https:// URL of a schema registry"
            ));
        }
        let credentials = (!base.username().is_empty()).then(|| {
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
        })
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
        self.get_found(&["schemas", "ids", &id.to_string(), "versions"])
            .await
    }

    /// The id of `subject`'s `version` (`None`: no such subject or version).
    pub async fn id_of(&self, version: &SubjectVersion) -> Result<Option<u32>, RegistryError> {
        #[derive(Deserialize)]
        struct Schema {
            id: u32,
        }
        let found: Option<Schema> = self
            .get_found(&[
                "subjects",
                &version.subject,
                "versions",
                &version.version.to_string(),
            ])
            .await?;
        Ok(found.map(|s| s.id))
    }

    async fn get_found<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<Option<T>, RegistryError> {
        match self.get(segments).await {
            Ok(found) => Ok(Some(found)),
            Err(RegistryError::Refused { message, .. }) if message.starts_with("404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<T, RegistryError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked to be a base")
            .pop_if_empty()
            .extend(segments);
        let unreachable = |message: String| RegistryError::Unreachable {
            url: self.shown.clone(),
            message,
        };
        let mut request = self.client.get(url).header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
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
            return Err(RegistryError::Refused {
                url: self.shown.clone(),
                message: format!(
                    "{} from GET /{}: {detail}",
                    status.as_u16(),
                    segments.join("/")
                ),
            });
        }
        serde_json::from_slice(&body).map_err(|e| RegistryError::Refused {
            url: self.shown.clone(),
            message: format!(
                "GET /{} answered something that is not a schema registry's JSON ({e})",
                segments.join("/")
            ),
        })
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
    }
}
