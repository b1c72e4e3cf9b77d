//! A client of the agent's API over its Unix socket: what the CLI and the
//! tests use.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, client::conn::http1::SendRequest, header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

use crate::{
    api::{ApiError, Batch, ErrorBody, Generation, LogLevel, StateView, Stats, Top, TopQuery},
    model::Event,
};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path} (is `eip-nat agent` running, and are you root?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent")]
    Io(#[from] std::io::Error),
    #[error("talking to the agent")]
    Http(#[from] hyper::Error),
    #[error("the agent's answer is not understood")]
    Protocol(#[from] serde_json::Error),
    /// The agent answered with an error.
    #[error("{}: {}", .error.kind, .error.message)]
    Api { status: u16, error: ApiError },
}

impl ClientError {
    /// The API's error, when the agent gave one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api { error, .. } => Some(error),
            _ => None,
        }
    }
}

pub struct Client {
    socket: PathBuf,
    /// For the blocking calls: one runtime, and one connection kept open
    /// between calls (HTTP/1.1 keep-alive), made again if the agent
    /// closed it.
    runtime: std::sync::OnceLock<tokio::runtime::Runtime>,
    connection: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_path_buf(),
            runtime: std::sync::OnceLock::new(),
            connection: tokio::sync::Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// One request on the kept connection.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut kept = self.connection.lock().await;
        let reusable = match kept.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            *kept = Some(self.connect().await?);
        }
        let sender = kept.as_mut().expect("connected just above");
        let response = sender.send_request(request).await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                *kept = None;
                return Err(e.into());
            }
        };
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// One request; returns the status and the body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "eip-nat")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("a valid request");
        self.send(request).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let (status, bytes) = self.raw(method, path, body).await?;
        if status.is_success() {
            Ok(serde_json::from_slice(&bytes)?)
        } else {
            let e: ErrorBody = serde_json::from_slice(&bytes)?;
            Err(ClientError::Api {
                status: status.as_u16(),
                error: e.error,
            })
        }
    }

    fn blocking<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let runtime = match self.runtime.get() {
            Some(r) => r,
            None => {
                let r = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                self.runtime.get_or_init(|| r)
            }
        };
        runtime.block_on(f)
    }

    pub fn event(&self, event: &Event) -> Result<Generation, ClientError> {
        self.blocking(self.call(Method::POST, "/v1/events", Some(event)))
    }

    pub fn batch(&self, batch: &Batch) -> Result<Generation, ClientError> {
        self.blocking(self.call(Method::POST, "/v1/batch", Some(batch)))
    }

    pub fn state(&self) -> Result<StateView, ClientError> {
        self.blocking(self.call(Method::GET, "/v1/state", None::<&()>))
    }

    pub fn generation(&self) -> Result<Generation, ClientError> {
        self.blocking(self.call(Method::GET, "/v1/generation", None::<&()>))
    }

    pub fn stats(&self) -> Result<Stats, ClientError> {
        self.blocking(self.call(Method::GET, "/v1/stats", None::<&()>))
    }

    /// GETs `path`, a stream of lines (`GET /v1/trace`), on a connection of
    /// its own, and hands each line to `on_line` until it returns false,
    /// the stream ends or `until` passes; then disconnects, which ends the
    /// stream on the agent's side.
    pub fn stream_lines(
        &self,
        path: &str,
        until: Option<std::time::Instant>,
        mut on_line: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        self.blocking(async {
            let mut sender = self.connect().await?;
            let request = Request::builder()
                .method(Method::GET)
                .uri(path)
                .header(header::HOST, "eip-nat")
                .body(Full::new(Bytes::new()))
                .expect("a valid request");
            let response = sender.send_request(request).await?;
            let status = response.status();
            let mut body = response.into_body();
            if !status.is_success() {
                let bytes = body.collect().await?.to_bytes();
                let e: ErrorBody = serde_json::from_slice(&bytes)?;
                return Err(ClientError::Api {
                    status: status.as_u16(),
                    error: e.error,
                });
            }
            let mut pending = Vec::new();
            loop {
                let frame = match until {
                    Some(t) => {
                        let left = t.saturating_duration_since(std::time::Instant::now());
                        match tokio::time::timeout(left, body.frame()).await {
                            Ok(f) => f,
                            Err(_) => return Ok(()),
                        }
                    }
                    None => body.frame().await,
                };
                let Some(frame) = frame else {
                    return Ok(());
                };
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if !on_line(&line[..end]) {
                        return Ok(());
                    }
                }
            }
        })
    }

    /// Usage records of periods that ended at or after `since` (Unix
    /// seconds), of `eip` only if given.
    pub fn usage(
        &self,
        since: u64,
        eip: Option<std::net::Ipv4Addr>,
    ) -> Result<Vec<crate::usage::UsageRecord>, ClientError> {
        let mut path = format!("/v1/usage?since={since}");
        if let Some(eip) = eip {
            path.push_str(&format!("&eip={eip}"));
        }
        self.blocking(self.call(Method::GET, &path, None::<&()>))
    }

    /// The verdict counters, and the counters of `eip` only.
    pub fn stats_of(&self, eip: std::net::Ipv4Addr) -> Result<Stats, ClientError> {
        let path = format!("/v1/stats?eip={eip}");
        self.blocking(self.call(Method::GET, &path, None::<&()>))
    }

    /// `GET /v1/top`: the EIPs with the largest counters, the verdict
    /// counters and the generations, read together.
    pub fn top(&self, query: &TopQuery) -> Result<Top, ClientError> {
        let query = serde_urlencoded::to_string(query).expect("a query encodes");
        self.blocking(self.call(Method::GET, &format!("/v1/top?{query}"), None::<&()>))
    }

    /// The agent's log filter.
    pub fn log_level(&self) -> Result<LogLevel, ClientError> {
        self.blocking(self.call(Method::GET, "/v1/log-level", None::<&()>))
    }

    /// Sets the agent's log filter; answers the filter now in effect.
    pub fn set_log_level(&self, level: &str) -> Result<LogLevel, ClientError> {
        let body = LogLevel {
            level: level.into(),
        };
        self.blocking(self.call(Method::PUT, "/v1/log-level", Some(&body)))
    }

    /// `GET /metrics`: the exposition text.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let (status, bytes) = self.blocking(self.raw(Method::GET, "/metrics", None))?;
        if !status.is_success() {
            let e: ErrorBody = serde_json::from_slice(&bytes)?;
            return Err(ClientError::Api {
                status: status.as_u16(),
                error: e.error,
            });
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Any request, blocking: the status and the body as they came.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.blocking(self.raw(method, path, body))
    }

    /// Any GET, as JSON (the OpenAPI document, say).
    pub fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.blocking(self.call(Method::GET, path, None::<&()>))
    }
}
