//! Who may talk to the API, checked before any handler runs: the request must name a host this
//! service answers to (DNS rebinding), come from no foreign origin (cross-site requests), carry
//! the bearer token when one is configured, and send a state-changing body as JSON (a browser
//! sends `text/plain` cross-site without asking first).
//!
//! Invariant: a refused request reaches no handler, so it starts, stops and reveals nothing; and
//! no answer or log line shows the token.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, Method, StatusCode};

use crate::config::ServiceConfig;

/// The API's admission rules, from `[service]`.
#[derive(Debug, Clone)]
pub struct Guard {
    token: Option<String>,
    metrics_token: bool,
    any_host: bool,
    /// Lower case, without a trailing dot.
    hosts: Vec<String>,
    /// Lower case.
    origins: Vec<String>,
}

/// Why a request is refused: status and one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

impl Guard {
    pub fn new(config: &ServiceConfig) -> Guard {
        Guard {
            token: config.api_token.clone(),
            metrics_token: config.metrics_token,
            any_host: config.allowed_hosts.iter().any(|h| h == "*"),
            hosts: config
                .allowed_hosts
                .iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            origins: config
                .allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Admit a request, or say why not.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = self.host(headers)?;
        self.origin(headers, host)?;
        let open =
            matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && !self.metrics_token);
        if !open {
            self.token(headers)?;
        }
        if !matches!(*method, Method::GET | Method::HEAD) {
            json_body(headers)?;
        }
        Ok(())
    }

    /// The `Host` the request names, if this service answers to it: an IP address, `localhost`,
    /// or a name in `service.allowed_hosts`. A page of an attacker's domain that rebinds the name
    /// to this address still sends its own name.
    fn host<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, Refusal> {
        let Some(value) = headers.get(header::HOST) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "the request has no Host header",
            ));
        };
        let host = value
            .to_str()
            .map_err(|_| refuse(StatusCode::BAD_REQUEST, "the Host header is not text"))?;
        let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
        let allowed = self.any_host
            || name == "localhost"
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok()
            || self.hosts.contains(&name);
        if allowed {
            Ok(host)
        } else {
            Err(refuse(
                StatusCode::FORBIDDEN,
                format!("this API does not answer to the host {name:?}: add it to service.allowed_hosts if it is this service's name"),
            ))
        }
    }

    /// A browser names the page's origin on cross-site requests: only the API's own origin and
    /// `service.allowed_origins` may send one.
    fn origin(&self, headers: &HeaderMap, host: &str) -> Result<(), Refusal> {
        let Some(value) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = value.to_str().unwrap_or("").to_ascii_lowercase();
        let host = host.to_ascii_lowercase();
        // With any host answered, the Host header is the rebinding page's to choose: it proves no
        // origin is this API's own, so only the listed origins count.
        let own = !self.any_host
            && (origin == format!("http://{host}") || origin == format!("https://{host}"));
        if own || self.origins.contains(&origin) {
            Ok(())
        } else {
            Err(refuse(
                StatusCode::FORBIDDEN,
                format!("cross-site requests are refused: the origin {origin:?} is not in service.allowed_origins"),
            ))
        }
    }

    fn token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        match given {
            None => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "this API needs a token: send Authorization: Bearer <service.api_token>",
            )),
            Some(given) if same(given.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "the bearer token is not this service's api_token",
            )),
        }
    }
}

/// A state-changing request must say its body is JSON: forms and `text/plain` are what a page of
/// another site can send without the browser asking first.
fn json_body(headers: &HeaderMap) -> Result<(), Refusal> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match media.as_deref() {
        Some("application/json") => Ok(()),
        Some(other) => Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("requests that change something must be sent as Content-Type: application/json, not {other:?}"),
        )),
        None => Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "requests that change something must be sent as Content-Type: application/json (even with an empty body)",
        )),
    }
}

/// `host` without its port: `name:8080` → `name`, `[::1]:8080` → `[::1]`.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Compare in time that depends on the lengths only, not on where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(token: Option<&str>) -> Guard {
        Guard::new(&ServiceConfig {
            api_token: token.map(str::to_string),
            allowed_hosts: vec!["rewind.ops.svc".into()],
            allowed_origins: vec!["https://ops.example.com".into()],
            ..ServiceConfig::default()
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn hosts_this_service_answers_to() {
        let g = guard(None);
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "10.1.2.3",
            "rewind.ops.svc:8080",
            "REWIND.ops.svc.",
        ] {
            assert_eq!(
                g.check(&Method::GET, "/pipelines", &headers(&[("host", host)])),
                Ok(()),
                "{host}"
            );
        }
        for host in [
            "evil.example:8080",
            "rewind.ops.svc.evil.example",
            "localhost.evil.example",
        ] {
            let refused = g
                .check(&Method::GET, "/pipelines", &headers(&[("host", host)]))
                .unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{host}");
        }
        assert_eq!(
            g.check(&Method::GET, "/healthz", &HeaderMap::new())
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        let any = Guard::new(&ServiceConfig {
            allowed_hosts: vec!["*".into()],
            ..ServiceConfig::default()
        });
        assert_eq!(
            any.check(
                &Method::GET,
                "/pipelines",
                &headers(&[("host", "whatever:1")])
            ),
            Ok(())
        );
        // A rebinding page names its own host and origin alike: with any host answered, that is
        // no longer the API's own origin.
        let rebinding = headers(&[("host", "evil.example"), ("origin", "http://evil.example")]);
        assert_eq!(
            any.check(&Method::GET, "/pipelines", &rebinding)
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn origins_other_than_its_own_and_the_allowed_are_refused() {
        let g = guard(None);
        let ok = |origin: &str| {
            g.check(
                &Method::GET,
                "/pipelines",
                &headers(&[("host", "127.0.0.1:8080"), ("origin", origin)]),
            )
        };
        assert_eq!(ok("http://127.0.0.1:8080"), Ok(()));
        assert_eq!(ok("https://ops.example.com"), Ok(()));
        for origin in [
            "https://evil.example",
            "null",
            "http://127.0.0.1:9999",
            "https://ops.example.com.evil",
        ] {
            assert_eq!(
                ok(origin).unwrap_err().status,
                StatusCode::FORBIDDEN,
                "{origin}"
            );
        }
    }

    #[test]
    fn the_token_guards_everything_but_the_probes_and_metrics() {
        let g = guard(Some(TOKEN));
        let host = ("host", "127.0.0.1:8080");
        let bearer = format!("Bearer {TOKEN}");
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(
                g.check(&Method::GET, path, &headers(&[host])),
                Ok(()),
                "{path}"
            );
        }
        let refused = g
            .check(&Method::GET, "/pipelines", &headers(&[host]))
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let wrong = g
            .check(
                &Method::GET,
                "/pipelines",
                &headers(&[host, ("authorization", "Bearer 0123456789abcdef0124")]),
            )
            .unwrap_err();
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(!wrong.message.contains(TOKEN));
        assert_eq!(
            g.check(
                &Method::GET,
                "/pipelines",
                &headers(&[host, ("authorization", &bearer)])
            ),
            Ok(())
        );
        assert_eq!(
            g.check(
                &Method::GET,
                "/pipelines",
                &headers(&[host, ("authorization", &format!("bearer  {TOKEN}"))])
            ),
            Ok(())
        );
        let strict = Guard::new(&ServiceConfig {
            api_token: Some(TOKEN.into()),
            metrics_token: true,
            ..ServiceConfig::default()
        });
        assert_eq!(
            strict
                .check(&Method::GET, "/metrics", &headers(&[host]))
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn state_changes_need_a_json_body() {
        let g = guard(None);
        let host = ("host", "127.0.0.1:8080");
        for media in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let refused = g
                .check(
                    &Method::POST,
                    "/restores",
                    &headers(&[host, ("content-type", media)]),
                )
                .unwrap_err();
            assert_eq!(
                refused.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{media}"
            );
        }
        assert_eq!(
            g.check(&Method::POST, "/restores", &headers(&[host]))
                .unwrap_err()
                .status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            g.check(
                &Method::POST,
                "/restores",
                &headers(&[host, ("content-type", "Application/JSON; charset=utf-8")])
            ),
            Ok(())
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
