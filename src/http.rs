//! The HTTP server on a site's `listen` address (what it answers is `crate::endpoints`). hyper
//! does the protocol (framing, keep-alive, limits); this module only turns its requests into
//! [`Request`]s for a [`Handler`] and writes its [`Response`]s with the headers every answer
//! carries.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Request bodies beyond this are refused (the console's bodies are a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// A request as the handlers see it: the body read whole.
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: hyper::Method,
    /// The path, without the query.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// The body (at most [`MAX_BODY`]).
    pub body: Bytes,
    /// The client's address (for the audit log).
    pub peer: SocketAddr,
}

impl Request {
    /// A header's value as text, if present and readable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An answer.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Further headers (`Set-Cookie`, `Location`).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", headers: Vec::new(), body: body.into().into_bytes() }
    }

    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let body = serde_json::to_vec(value).expect("JSON values serialize");
        Self { status, content_type: "application/json", headers: Vec::new(), body }
    }

    /// `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// With one more header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// What a server answers requests with.
pub trait Handler: Send + Sync + 'static {
    /// The answer to `request`.
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send;
}

/// Connections served at once; more wait to be accepted (the kernel's backlog holds them).
const MAX_CONNECTIONS: usize = 64;
/// A request body must arrive within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `routes` on `addr` until shutdown.
pub async fn serve<H: Handler>(addr: SocketAddr, routes: Arc<H>, shutdown: Shutdown) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz and the console at /console/");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: keep serving the others.
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(answer(routes.as_ref(), req, peer).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                // A client that never finishes its headers does not hold a connection forever.
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
}

async fn answer<H: Handler>(routes: &H, req: hyper::Request<Incoming>, peer: SocketAddr) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let response = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Response::error(408, format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs())),
        Ok(Ok(body)) => {
            let request =
                Request { method: parts.method, path: parts.uri.path().to_string(), headers: parts.headers, body: body.to_bytes(), peer };
            routes.handle(request).await
        }
        Ok(Err(_)) => Response::error(413, format!("the request body is larger than {MAX_BODY} bytes, or could not be read")),
    };
    into_hyper(response)
}

fn into_hyper(r: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(r.body)));
    *out.status_mut() = hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    // Every answer: no sniffing, no framing by other sites, no referrer leaking paths.
    headers.insert(hyper::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(hyper::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(hyper::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    for (name, value) in r.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            headers.append(name, value);
        }
    }
    if !headers.contains_key(hyper::header::CACHE_CONTROL) {
        headers.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    out
}
