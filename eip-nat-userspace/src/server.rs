//! The HTTP/JSON API's routes (described in `openapi.json`). Writes go to
//! the writer thread and are answered when durable; reads are answered
//! from the last committed snapshot, on blocking threads when large, so
//! that neither a large batch nor a reconcile holds them up.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{rejection::JsonRejection, DefaultBodyLimit, Query, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

use crate::{
    api::{ApiError, Batch, ErrorBody, ErrorKind, OPENAPI},
    desired::Write,
    gateway::{chain, GatewayError},
    model::Event,
    reads::Reads,
    writer::Writer,
};

/// What every handler shares.
#[derive(Clone)]
pub struct Shared {
    pub writer: Writer,
    pub reads: Reads,
}

/// Largest request body the API takes.
pub const MAX_BODY: usize = 64 << 20;

fn error(status: StatusCode, kind: ErrorKind, message: String) -> Response {
    let body = ErrorBody {
        error: ApiError {
            kind,
            rule: None,
            index: None,
            message,
        },
    };
    (status, Json(body)).into_response()
}

fn gateway_error(e: GatewayError) -> Response {
    let (status, kind) = match &e {
        GatewayError::Refused(_)
        | GatewayError::RefusedInBatch { .. }
        | GatewayError::BadLocation(_)
        | GatewayError::RouteConflict(_) => (StatusCode::CONFLICT, ErrorKind::Refused),
        GatewayError::Stale { .. } => (StatusCode::PRECONDITION_FAILED, ErrorKind::Stale),
        GatewayError::Store(_)
        | GatewayError::Datapath { .. }
        | GatewayError::Routes(_)
        | GatewayError::NewStoreOverLiveDatapath(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Failed)
        }
        GatewayError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable),
        GatewayError::Etcd(e) if e.unreachable() => {
            (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable)
        }
        GatewayError::Etcd(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Failed),
    };
    let message = chain(&e);
    if status.is_server_error() {
        log::error!("{message}");
    } else {
        log::info!("{message}");
    }
    let index = match &e {
        GatewayError::RefusedInBatch { index, .. } => Some(*index),
        _ => None,
    };
    let body = ErrorBody {
        error: ApiError {
            kind,
            rule: e.rule().map(Into::into),
            index,
            message,
        },
    };
    (status, Json(body)).into_response()
}

fn malformed(e: JsonRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        ErrorKind::Malformed,
        format!("malformed request: {}", e.body_text()),
    )
}

fn answer<T: serde::Serialize>(result: Result<T, GatewayError>) -> Response {
    match result {
        Ok(g) => Json(g).into_response(),
        Err(e) => gateway_error(e),
    }
}

/// Runs `f` on a blocking thread (parsing or serializing megabytes), so
/// that the runtime's threads stay free for the small requests.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking read does not panic")
}

async fn event(State(api): State<Shared>, body: Result<Json<Event>, JsonRejection>) -> Response {
    let Json(event) = match body {
        Ok(b) => b,
        Err(e) => return malformed(e),
    };
    log::debug!("event: {event:?}");
    answer(api.writer.write(Write::Event(event)).await)
}

async fn batch(State(api): State<Shared>, body: Bytes) -> Response {
    let batch: Batch = match blocking(move || serde_json::from_slice(&body)).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorKind::Malformed,
                format!("malformed request: {e}"),
            )
        }
    };
    log::debug!("batch of {} events", batch.events.len());
    answer(api.writer.write(Write::Batch(batch)).await)
}

/// A large JSON body, serialized on a blocking thread.
async fn read_json<T: serde::Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::reads::ReadError> + Send + 'static,
) -> Response {
    let body = blocking(move || f().map(|v| serde_json::to_vec(&v).expect("serializes"))).await;
    match body {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Failed,
            chain(&e),
        ),
    }
}

async fn state(State(api): State<Shared>) -> Response {
    read_json(move || api.reads.state()).await
}

async fn generation(State(api): State<Shared>) -> Response {
    Json(api.reads.generation()).into_response()
}

#[derive(serde::Deserialize)]
struct StatsQuery {
    eip: Option<std::net::Ipv4Addr>,
}

async fn stats(State(api): State<Shared>, query: Query<StatsQuery>) -> Response {
    read_json(move || api.reads.stats(query.eip)).await
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        ErrorKind::NotFound,
        "no such endpoint (GET /openapi.json lists them)".into(),
    )
}

/// Every route; the same for the Unix socket and the TCP listener.
pub fn router(gw: Shared) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/state", get(state))
        .route("/v1/generation", get(generation))
        .route("/v1/stats", get(stats))
        .route("/v1/events", post(event))
        .route("/v1/batch", post(batch))
        // A resync of a large gateway is one big batch: 64 MiB holds about
        // half a million events.
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .fallback(not_found)
        .with_state(gw)
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if same_secret(t.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => error(
            StatusCode::UNAUTHORIZED,
            ErrorKind::Unauthorized,
            "a valid `Authorization: Bearer <token>` header is required".into(),
        ),
    }
}

/// The router for the TCP listener: every request needs the token.
pub fn router_with_token(gw: Shared, token: Arc<String>) -> Router {
    router(gw).layer(middleware::from_fn_with_state(token, require_token))
}
