//! The HTTP/JSON API's routes (described in `openapi.json`).

use std::sync::{Arc, Mutex};

use axum::{
    extract::{rejection::JsonRejection, DefaultBodyLimit, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

use crate::{
    api::{ApiError, Batch, EniView, ErrorBody, ErrorKind, StateView, OPENAPI},
    gateway::{chain, Gateway, GatewayError},
    model::Event,
};

pub type Shared = Arc<Mutex<Gateway>>;

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

fn lock(gw: &Shared) -> std::sync::MutexGuard<'_, Gateway> {
    // A panic while holding the lock cannot leave the model half-changed
    // (every handler checks before it changes), so carry on.
    gw.lock().unwrap_or_else(|p| p.into_inner())
}

async fn event(State(gw): State<Shared>, body: Result<Json<Event>, JsonRejection>) -> Response {
    let Json(event) = match body {
        Ok(b) => b,
        Err(e) => return malformed(e),
    };
    log::debug!("event: {event:?}");
    match lock(&gw).apply(&event) {
        Ok(g) => Json(g).into_response(),
        Err(e) => gateway_error(e),
    }
}

async fn batch(State(gw): State<Shared>, body: Result<Json<Batch>, JsonRejection>) -> Response {
    let Json(batch) = match body {
        Ok(b) => b,
        Err(e) => return malformed(e),
    };
    log::debug!("batch of {} events", batch.events.len());
    match lock(&gw).apply_batch(&batch.events, batch.if_generation) {
        Ok(g) => Json(g).into_response(),
        Err(e) => gateway_error(e),
    }
}

async fn state(State(gw): State<Shared>) -> Response {
    let gw = lock(&gw);
    let s = gw.state();
    Json(StateView {
        generation: gw.generation(),
        enis: s
            .enis()
            .map(|(id, eni)| EniView {
                id: id.clone(),
                eni: eni.clone(),
            })
            .collect(),
        associations: s.associations().cloned().collect(),
    })
    .into_response()
}

async fn generation(State(gw): State<Shared>) -> Response {
    Json(lock(&gw).generation()).into_response()
}

async fn stats(State(gw): State<Shared>) -> Response {
    match lock(&gw).stats() {
        Ok(s) => Json(s).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Failed,
            chain(&e),
        ),
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
