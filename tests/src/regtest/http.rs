//! The HTTP side of the JSON-RPC server: basic auth, JSON-RPC 1.0 framing and batches, status
//! codes as bitcoind sets them, and a shutdown that closes the listener and every connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::codes::*;
use super::rpc::{dispatch, RpcContext};
use super::RpcError;

/// bitcoind's limit on a request body.
const MAX_BODY_SIZE: usize = 32 * 1024 * 1024;
/// How long an in-flight request may take to finish once the server goes down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The credentials the server accepts, each as `user:password`.
#[derive(Debug)]
pub(crate) struct Credentials {
    pub accepted: Vec<String>,
}

impl Credentials {
    fn check(&self, header: Option<&HeaderValue>) -> bool {
        let Some(value) = header.and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let Some(encoded) = value.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        self.accepted.iter().any(|c| constant_time_eq(c.as_bytes(), decoded.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves JSON-RPC on `listener` until `ctx.stop` is cancelled; then stops accepting, closes
/// idle connections at once, lets in-flight requests finish (within a grace period) and returns.
pub(crate) async fn serve(listener: TcpListener, ctx: RpcContext, credentials: Arc<Credentials>) {
    let token = ctx.stop.clone();
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, ctx.clone(), credentials.clone()));
                }
                Err(error) => tracing::warn!(%error, "accept failed"),
            },
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn serve_connection(stream: TcpStream, ctx: RpcContext, credentials: Arc<Credentials>) {
    let token = ctx.stop.clone();
    let service = service_fn(move |req| handle(ctx.clone(), credentials.clone(), req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = token.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
}

fn response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

async fn handle(
    ctx: RpcContext,
    credentials: Arc<Credentials>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::POST {
        return Ok(response(StatusCode::METHOD_NOT_ALLOWED, "JSONRPC server handles only POST requests".into()));
    }
    if !credentials.check(req.headers().get(AUTHORIZATION)) {
        let mut unauthorized = response(StatusCode::UNAUTHORIZED, String::new());
        unauthorized.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"jsonrpc\""));
        return Ok(unauthorized);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY_SIZE).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(response(StatusCode::BAD_REQUEST, "Error reading request body".into())),
    };
    // Mining and reorgs are CPU work: keep them off the reactor.
    let (status, reply) = tokio::task::spawn_blocking(move || process(&ctx, &body)).await.unwrap_or_else(|_| {
        let error = RpcError::new(RPC_MISC_ERROR, "internal error");
        (StatusCode::INTERNAL_SERVER_ERROR, reply(Value::Null, Err(error)))
    });
    let mut response = response(status, format!("{reply}\n"));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// A JSON-RPC 1.0 reply, as bitcoind 27 writes them (`result`, `error`, `id`).
fn reply(id: Value, outcome: Result<Value, RpcError>) -> Value {
    match outcome {
        Ok(result) => json!({"result": result, "error": null, "id": id}),
        Err(error) => json!({
            "result": null,
            "error": {"code": error.code, "message": error.message},
            "id": id,
        }),
    }
}

fn status_for(code: i32) -> StatusCode {
    match code {
        RPC_INVALID_REQUEST => StatusCode::BAD_REQUEST,
        RPC_METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Handles a request body: one request object, or a batch (an array, answered with HTTP 200).
fn process(ctx: &RpcContext, body: &[u8]) -> (StatusCode, Value) {
    let parse_error = |message: &str| {
        let error = RpcError::new(RPC_PARSE_ERROR, message);
        (status_for(error.code), reply(Value::Null, Err(error)))
    };
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return parse_error("Parse error");
    };
    match request {
        Value::Array(batch) => {
            let replies = batch.iter().map(|r| process_one(ctx, r)).collect();
            (StatusCode::OK, Value::Array(replies))
        }
        Value::Object(_) => {
            let reply = process_one(ctx, &request);
            let status = reply["error"]["code"].as_i64().map_or(StatusCode::OK, |code| status_for(code as i32));
            (status, reply)
        }
        _ => parse_error("Top-level object parse error"),
    }
}

fn process_one(ctx: &RpcContext, request: &Value) -> Value {
    let Value::Object(fields) = request else {
        let error = RpcError::new(RPC_INVALID_REQUEST, "Invalid Request object");
        return reply(Value::Null, Err(error));
    };
    let id = fields.get("id").cloned().unwrap_or(Value::Null);
    let outcome = match fields.get("method") {
        None => Err(RpcError::new(RPC_INVALID_REQUEST, "Missing method")),
        Some(Value::String(method)) => {
            tracing::debug!(%method, "rpc");
            dispatch(ctx, method, fields.get("params"))
        }
        Some(_) => Err(RpcError::new(RPC_INVALID_REQUEST, "Method must be a string")),
    };
    reply(id, outcome)
}
