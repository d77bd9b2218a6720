//! The test bed's Schema Registry (Apicurio, scripts/registry.sh) through its Confluent-compatible
//! API, and the Confluent wire format.

use serde_json::{json, Value};

use super::http::request_with;

const SCHEMA_JSON: &str = "application/vnd.schemaregistry.v1+json";

pub fn registry_url() -> String {
    std::env::var("REWIND_TEST_REGISTRY_URL")
        .expect("REWIND_TEST_REGISTRY_URL: run scripts/test (it starts scripts/registry.sh)")
}

/// `http://127.0.0.1:PORT/base/path` → (`127.0.0.1:PORT`, `/base/path`).
pub fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    (addr.to_string(), format!("/{path}"))
}

pub fn call(url: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (addr, base) = split(url);
    let body = body.map(Value::to_string);
    let response = request_with(
        &addr,
        method,
        &format!("{base}{path}"),
        &[("Content-Type", SCHEMA_JSON), ("Accept", SCHEMA_JSON)],
        body.as_deref(),
    )
    .unwrap_or_else(|| panic!("{method} {url}{path}: no answer"));
    let parsed = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    (response.status, parsed)
}

/// Register `schema` under `subject`; returns its id.
pub fn register(url: &str, subject: &str, schema: &str, kind: &str) -> u32 {
    let (status, body) = call(
        url,
        "POST",
        &format!("/subjects/{subject}/versions"),
        Some(&json!({ "schema": schema, "schemaType": kind })),
    );
    assert_eq!(status, 200, "registering {subject}: {body}");
    body["id"].as_u64().unwrap() as u32
}

/// `payload` in the wire format: a zero byte, the schema id (big-endian), the payload.
pub fn framed(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}
