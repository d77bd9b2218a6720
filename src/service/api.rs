//! The HTTP API of `rewind run` (reference: docs/api.md). JSON in and out; every error is a 4xx or
//! 5xx with a body `{"error": "one sentence"}`. Nothing here shows a secret: pipelines are shown by
//! their names, topics and settings, never by cluster properties or credentials. Every request
//! passes the [`Guard`] (host, origin, token, JSON body) before a handler sees it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Request, State as Shared};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::guard::Guard;
use super::restores::StartRestore;
use super::{pipeline_json, restore_json, ControlError, Registry};

/// The API's routes over the service's registry, behind `guard`.
pub fn router(registry: Arc<Registry>, guard: Guard) -> Router {
    Router::new()
        .route("/pipelines", get(pipelines))
        .route("/pipelines/{name}", get(pipeline))
        .route("/pipelines/{name}/pause", post(pause))
        .route("/pipelines/{name}/resume", post(resume))
        .route("/restores", get(restores).post(start_restore))
        .route("/restores/{id}", get(restore))
        .route("/restores/{id}/stop", post(stop_restore))
        .route("/restores/{id}/resume", post(resume_restore))
        .route("/marks", get(marks).post(take_mark))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(registry)
        .layer(middleware::from_fn_with_state(Arc::new(guard), admit))
}

/// Refuse what the guard refuses before any handler (or the 404 fallback) sees it.
async fn admit(Shared(guard): Shared<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(request.method(), request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            tracing::warn!(
                method = %request.method(),
                path = request.uri().path(),
                status = refusal.status.as_u16(),
                reason = refusal.message,
                "refused an API request"
            );
            let mut response = ApiError(refusal.status, refusal.message).into_response();
            if refusal.status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"rewind\""),
                );
            }
            response
        }
    }
}

/// Serve the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    guard: Guard,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, guard))
        .with_graceful_shutdown(shutdown)
        .await
}

/// An error response: status and one sentence.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let status = match e {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

type Reply = Result<Json<Value>, ApiError>;

/// A path segment, or axum's reason it is not one, as a JSON error.
fn segment(segment: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    segment
        .map(|Path(s)| s)
        .map_err(|e| ApiError(e.status(), e.body_text()))
}

async fn pipelines(Shared(registry): Shared<Arc<Registry>>) -> Json<Value> {
    let list: Vec<Value> = registry
        .pipelines
        .values()
        .map(|p| pipeline_json(p, false))
        .collect();
    Json(json!({ "pipelines": list }))
}

async fn pipeline(
    Shared(registry): Shared<Arc<Registry>>,
    name: Result<Path<String>, PathRejection>,
) -> Reply {
    let name = segment(name)?;
    let pipeline = registry
        .pipelines
        .get(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no pipeline named {name:?}")))?;
    Ok(Json(pipeline_json(pipeline, true)))
}

async fn pause(
    Shared(registry): Shared<Arc<Registry>>,
    name: Result<Path<String>, PathRejection>,
) -> Reply {
    let name = segment(name)?;
    let state = registry.pause(&name).await?;
    Ok(Json(json!({ "name": name, "state": state })))
}

async fn resume(
    Shared(registry): Shared<Arc<Registry>>,
    name: Result<Path<String>, PathRejection>,
) -> Reply {
    let name = segment(name)?;
    let state = registry.resume(&name).await?;
    Ok(Json(json!({ "name": name, "state": state })))
}

async fn restores(Shared(registry): Shared<Arc<Registry>>) -> Json<Value> {
    let restores = registry
        .restores
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|r| restore_json(r))
        .collect::<Vec<_>>();
    Json(json!({ "restores": restores }))
}

async fn start_restore(
    Shared(registry): Shared<Arc<Registry>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: StartRestore = json_body(body)?;
    let restore = registry.start_restore(request).await?;
    Ok(accepted(&restore))
}

/// A JSON request body (empty reads as `{}`), or why it is not the one wanted.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
    serde_json::from_slice(body).map_err(|e| {
        let message = match e.classify() {
            // What the body says is wrong, without serde_json's position in a one-line body.
            serde_json::error::Category::Data => {
                let text = e.to_string();
                let position = format!(" at line {} column {}", e.line(), e.column());
                text.strip_suffix(&position).unwrap_or(&text).to_string()
            }
            _ => format!("the body is not valid JSON: {e}"),
        };
        ApiError(StatusCode::BAD_REQUEST, message)
    })
}

async fn marks(Shared(registry): Shared<Arc<Registry>>) -> Reply {
    Ok(Json(registry.marks().await?))
}

async fn take_mark(
    Shared(registry): Shared<Arc<Registry>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: super::marks::TakeMark = json_body(body)?;
    let mark = registry.take_mark(request).await?;
    Ok((StatusCode::CREATED, Json(mark)))
}

/// `202 Accepted` for a restore that started, with where to follow it.
fn accepted(restore: &super::ApiRestore) -> (StatusCode, Json<Value>) {
    (
        StatusCode::ACCEPTED,
        Json(json!({
            "id": restore.id,
            "state": restore.lifecycle().state,
            "status": format!("/restores/{}", restore.id),
        })),
    )
}

fn find_restore(registry: &Registry, id: &str) -> Result<Arc<super::ApiRestore>, ApiError> {
    Ok(registry.restore(id)?)
}

async fn restore(
    Shared(registry): Shared<Arc<Registry>>,
    id: Result<Path<String>, PathRejection>,
) -> Reply {
    let id = segment(id)?;
    let restore = find_restore(&registry, &id)?;
    Ok(Json(restore_json(&restore)))
}

async fn stop_restore(
    Shared(registry): Shared<Arc<Registry>>,
    id: Result<Path<String>, PathRejection>,
) -> Reply {
    let id = segment(id)?;
    let restore = find_restore(&registry, &id)?;
    restore.request_stop();
    Ok(Json(
        json!({ "id": id, "state": restore.lifecycle().state }),
    ))
}

async fn resume_restore(
    Shared(registry): Shared<Arc<Registry>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = segment(id)?;
    let restore = registry.resume_restore(&id).await?;
    Ok(accepted(&restore))
}

async fn metrics(Shared(registry): Shared<Arc<Registry>>) -> Response {
    match &registry.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not recorded in this process".into(),
        )
        .into_response(),
    }
}

async fn healthz(Shared(registry): Shared<Arc<Registry>>) -> Json<Value> {
    Json(json!({ "status": "ok", "started_at": registry.started_at }))
}

async fn readyz(Shared(registry): Shared<Arc<Registry>>) -> (StatusCode, Json<Value>) {
    let waiting: Vec<Value> = registry
        .pipelines
        .values()
        .filter(|p| !p.ready())
        .map(|p| json!({ "name": p.spec.name, "state": p.lifecycle().state }))
        .collect();
    let status = if waiting.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": waiting.is_empty(), "waiting": waiting })),
    )
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {} (see docs/api.md)", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
