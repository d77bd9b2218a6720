//! The HTTP API's router called in-process (no socket, no Kafka, no store): the middle test tier
//! between the guard's unit tests and the service's end-to-end tests over real HTTP. Each request
//! is refused or answered with the status and JSON the contract names, in milliseconds.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use rewind::config::pipeline::Service;
use rewind::config::Config;
use rewind::service::{api, guard::Guard, Registry};
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "rt-7f3c9a1e5b2d";

fn router() -> axum::Router {
    let mut config = Config::default();
    config.service.api_token = Some(TOKEN.to_string());
    let guard = Guard::new(&config.service);
    let service = Service {
        config,
        pipelines: Vec::new(),
        pipelines_dir: std::env::temp_dir(),
    };
    let (_shutdown, shutting_down) = tokio::sync::watch::channel(false);
    let registry: Arc<Registry> = Registry::start(service, shutting_down, None);
    api::router(registry, guard)
}

fn request(method: Method, path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1:8080")
}

fn authorized(method: Method, path: &str) -> axum::http::request::Builder {
    request(method, path).header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

async fn send(request: Request<Body>) -> (StatusCode, Value) {
    let response = router().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn probes_answer_without_a_token() {
    let (status, _) = send(
        request(Method::GET, "/healthz")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn everything_else_needs_the_whole_token() {
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer rt-7f3c9a1e5b2"),
        Some(TOKEN),
    ] {
        let mut builder = request(Method::GET, "/pipelines");
        if let Some(auth) = auth {
            builder = builder.header(header::AUTHORIZATION, auth);
        }
        let (status, body) = send(builder.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let (status, body) = send(
        authorized(Method::GET, "/pipelines")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["pipelines"], Value::Array(Vec::new()));
}

#[tokio::test]
async fn state_changes_refuse_foreign_requests_and_start_nothing() {
    let refused = [
        // A cross-site "simple" request: no preflight for text/plain.
        (
            authorized(Method::POST, "/restores").header(header::CONTENT_TYPE, "text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        // A page of another origin.
        (
            authorized(Method::POST, "/restores")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ORIGIN, "https://attacker.example"),
            StatusCode::FORBIDDEN,
        ),
        // DNS rebinding: the browser sends the attacker's name as Host.
        (
            Request::builder()
                .method(Method::POST)
                .uri("/restores")
                .header(header::HOST, "rebind.attacker.example:8080")
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .header(header::CONTENT_TYPE, "application/json"),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (builder, expected) in refused {
        let (status, body) = send(builder.body(Body::from("{}")).unwrap()).await;
        assert_eq!(status, expected, "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, body) = send(
        authorized(Method::GET, "/restores")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["restores"], Value::Array(Vec::new()), "{body}");
}

#[tokio::test]
async fn unknown_paths_and_pipelines_are_json_404s() {
    for path in ["/nope", "/pipelines/nope"] {
        let (status, body) = send(authorized(Method::GET, path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn a_restore_request_is_checked_field_by_field() {
    for (body, names) in [
        ("{not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        (r#"{"cluster": 5}"#, "cluster: expected a string"),
        (r#"{"bogus": 1}"#, "bogus"),
        (
            r#"{"from": "last tuesday"}"#,
            "from: \"last tuesday\" is not a time",
        ),
        (
            r#"{"to": "now-1x"}"#,
            "to: \"now-1x\": \"1x\" is not a duration",
        ),
        (r#"{"cluster": "mars"}"#, "mars"),
        // Secrets would be kept with the restore and shown by GET /restores.
        (
            r#"{"schema_ids_from": "https://key:secret@registry:8081", "schema_ids_to": "http://r:8081"}"#,
            "schema_ids_from: credentials in the URL",
        ),
        (
            r#"{"schema_ids_from": "http://registry:8081"}"#,
            "schema_ids_from: and schema_ids_to go together",
        ),
        // Relative times are taken (and resolved): what is refused here is the topics alone.
        (
            r#"{"from": "yesterday", "to": "2h ago", "topics": "("}"#,
            "topics: \"(\" is not a valid regular expression",
        ),
    ] {
        let (status, reply) = send(
            authorized(Method::POST, "/restores")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(names), "{body}: {error}");
        // A position helps in a syntax error only; a field is named by its path.
        if !body.starts_with("{not") {
            assert!(!error.contains(" at line "), "{body}: {error}");
        }
        if body.contains("yesterday") {
            assert!(error.starts_with("topics:"), "one problem only: {error}");
        }
    }
}
