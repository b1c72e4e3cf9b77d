//! The HTTP/JSON API's routes (described in `openapi.json`). Writes go to
//! the writer thread and are answered when durable; reads are answered
//! from the last committed snapshot, on blocking threads when large, so
//! that neither a large batch nor a reconcile holds them up.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{
        rejection::{JsonRejection, QueryRejection},
        DefaultBodyLimit, Query, Request, State,
    },
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

use crate::{
    api::{ApiError, Batch, ErrorBody, ErrorKind, LogLevel, OPENAPI},
    desired::Write,
    gateway::{chain, GatewayError},
    logging::LogControl,
    metrics::{self, Metrics},
    model::Event,
    reads::Reads,
    trace::TraceRequest,
    tracer::{TraceError, Tracer},
    writer::Writer,
};

/// What every handler shares.
#[derive(Clone)]
pub struct Shared {
    pub writer: Writer,
    pub reads: Reads,
    /// None where the datapath's ring buffer is not available.
    pub tracer: Option<Arc<Tracer>>,
    /// `GET /metrics`, read from `reads` at each scrape.
    pub metrics: Arc<Metrics>,
    /// The log's filter; none when the process did not set up the log.
    pub log: Option<LogControl>,
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

/// `GET /v1/top`: read on a blocking thread (it ranks every association).
async fn top(
    State(api): State<Shared>,
    query: Result<Query<crate::api::TopQuery>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(query)) => read_json(move || api.reads.top(&query)).await,
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            ErrorKind::Malformed,
            format!("malformed query: {}", e.body_text()),
        ),
    }
}

#[derive(serde::Deserialize)]
struct UsageQuery {
    /// Unix time, seconds: records of periods that ended since.
    #[serde(default)]
    since: u64,
    eip: Option<std::net::Ipv4Addr>,
}

async fn usage(State(api): State<Shared>, query: Query<UsageQuery>) -> Response {
    let since_ns = query.since.saturating_mul(1_000_000_000);
    let eip = query.eip;
    read_json(move || api.reads.usage(since_ns, eip)).await
}

/// `GET /v1/trace`: the traced packets, one JSON object a line, for as
/// long as the client reads; the trace ends when it disconnects.
async fn trace(State(api): State<Shared>, query: Query<TraceRequest>) -> Response {
    let config = match query.config() {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, ErrorKind::Malformed, e),
    };
    let Some(tracer) = &api.tracer else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unavailable,
            "tracing is not available on this agent".into(),
        );
    };
    let session = match tracer.begin(config).await {
        Ok(s) => s,
        Err(e @ TraceError::Busy) => {
            return error(StatusCode::CONFLICT, ErrorKind::Refused, e.to_string())
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Unavailable,
                e.to_string(),
            )
        }
    };
    // The session lives in the stream: the body is dropped when the
    // client goes, and the trace with it.
    let lines = futures_util::stream::unfold(session, |mut session| async move {
        let record = session.records.recv().await?;
        let mut line = serde_json::to_vec(&record).expect("records serialize");
        line.push(b'\n');
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(line)),
            session,
        ))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// `GET /metrics`: read and encoded on a blocking thread (a scrape of a
/// large gateway reads every association's counters).
async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> Response {
    match blocking(move || metrics.encode()).await {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Failed,
            format!("encoding the metrics: {e}"),
        ),
    }
}

async fn get_log_level(State(api): State<Shared>) -> Response {
    match &api.log {
        Some(control) => Json(LogLevel {
            level: control.get(),
        })
        .into_response(),
        None => no_log(),
    }
}

fn no_log() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Unavailable,
        "this process has no log to set".into(),
    )
}

async fn put_log_level(
    State(api): State<Shared>,
    body: Result<Json<LogLevel>, JsonRejection>,
) -> Response {
    let Json(want) = match body {
        Ok(b) => b,
        Err(e) => return malformed(e),
    };
    let Some(control) = &api.log else {
        return no_log();
    };
    match control.set(&want.level) {
        Ok(()) => {
            log::info!("log level set to {}", control.get());
            Json(LogLevel {
                level: control.get(),
            })
            .into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, ErrorKind::Malformed, e.to_string()),
    }
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
    let timed = Arc::clone(&gw.metrics);
    Router::new()
        .route("/openapi.json", get(openapi))
        .route(
            "/metrics",
            get(metrics_text).with_state(Arc::clone(&gw.metrics)),
        )
        .route("/v1/log-level", get(get_log_level).put(put_log_level))
        .route("/v1/state", get(state))
        .route("/v1/generation", get(generation))
        .route("/v1/stats", get(stats))
        .route("/v1/top", get(top))
        .route("/v1/trace", get(trace))
        .route("/v1/usage", get(usage))
        .route("/v1/events", post(event))
        .route("/v1/batch", post(batch))
        // A resync of a large gateway is one big batch: 64 MiB holds about
        // half a million events.
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route_layer(middleware::from_fn_with_state(timed, metrics::time_request))
        .fallback(not_found)
        .with_state(gw)
}

/// The router for the `metrics_listen` address: `GET /metrics` only, read
/// only, with no token.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&metrics),
            metrics::time_request,
        ))
        .fallback(not_found)
        .with_state(metrics)
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
