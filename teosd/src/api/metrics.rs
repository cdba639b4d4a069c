//! `GET /metrics`: the Prometheus text exposition of the tower's metrics, on a listener of its
//! own (`metrics_addr`, loopback by default), apart from the public API so that it is never
//! exposed with it. Any other path is 404, any other method 405. A scrape sets the state gauges
//! from what the tower keeps in memory ([`Tower::state_gauges`]) and encodes the registry: no
//! store read, nothing that blocks.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::tower::Tower;

/// Scrapers served at once (more wait for a place): the listener is for the operator's
/// Prometheus, not for crowds.
const MAX_CONNECTIONS: usize = 8;
/// A request head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer to one request.
pub fn answer(tower: &Tower, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if path != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n".into());
    }
    if method != Method::GET && method != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into());
    }
    let metrics = tower.metrics();
    metrics.set_state(&tower.state_gauges());
    match metrics.encode() {
        Ok(text) => {
            let mut response = reply(StatusCode::OK, text);
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(TEXT_FORMAT));
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "encoding the metrics failed");
            reply(StatusCode::INTERNAL_SERVER_ERROR, "the metrics could not be encoded\n".into())
        }
    }
}

/// Serves `/metrics` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, tower: Tower, shutdown: CancellationToken) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    loop {
        let place = tokio::select! {
            _ = shutdown.cancelled() => break,
            place = places.clone().acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let tower = tower.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let response = answer(&tower, request.method(), request.uri().path());
            async move { Ok::<_, Infallible>(response) }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection ended with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    // Scrapes are quick; the caller bounds this wait anyway.
    graceful.shutdown().await;
    tracing::info!("metrics endpoint closed");
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
