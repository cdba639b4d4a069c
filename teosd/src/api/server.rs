//! The public API's connections. Our own accept loop over hyper (the one warp 0.4 uses), so that
//! what a stranger can hold is bounded:
//!
//! - at most `max_connections` open at once, and `max_connections_per_ip` from one address (not
//!   applied behind a proxy, where every connection comes from the proxy); a connection over a cap
//!   is closed as soon as it is accepted, without a byte read;
//! - a request head must arrive within `header_timeout` of the connection opening or of its last
//!   answer (hyper's header-read timer also runs while a keep-alive connection idles), else the
//!   connection is closed;
//! - a whole request (head, body, answer) must finish within `request_timeout`, else it is
//!   answered 408 and the connection closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warp::reply::Response;
use warp::Filter;

/// The connection limits of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Of those, from one address (0: no cap).
    pub max_connections_per_ip: usize,
    /// Time to send a request head, once open or after the last answer.
    pub header_timeout: Duration,
    /// Time a whole request may take.
    pub request_timeout: Duration,
}

/// The peer of a connection, put in each request's extensions for the routes to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Open connections, in all and by address.
#[derive(Debug, Default)]
struct Occupancy {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Hands out a [`Slot`] per connection while the caps allow.
#[derive(Debug)]
struct Slots {
    occupancy: Mutex<Occupancy>,
    max_total: usize,
    max_per_ip: usize,
}

/// One connection's place, given back when it is dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut occupancy = self.occupancy.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = occupancy.by_ip.get(&ip).copied().unwrap_or(0);
        if occupancy.total >= self.max_total || (self.max_per_ip > 0 && from_ip >= self.max_per_ip) {
            return None;
        }
        occupancy.total += 1;
        occupancy.by_ip.insert(ip, from_ip + 1);
        Some(Slot { slots: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut occupancy = self.slots.occupancy.lock().unwrap_or_else(|p| p.into_inner());
        occupancy.total -= 1;
        if let Some(count) = occupancy.by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                occupancy.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves `routes` on `listener` within `limits` until `shutdown` fires; then stops accepting
/// and waits for the requests in flight (the caller bounds that wait).
pub async fn serve<F>(
    listener: TcpListener,
    routes: F,
    limits: ConnectionLimits,
    behind_proxy: bool,
    shutdown: CancellationToken,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let per_ip = if behind_proxy { 0 } else { limits.max_connections_per_ip };
    let slots = Arc::new(Slots { occupancy: Mutex::default(), max_total: limits.max_connections, max_per_ip: per_ip });
    let graceful = GracefulShutdown::new();
    let mut refused = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: back off rather than spin.
                    tracing::warn!(error = %e, "public API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = slots.take(peer.ip()) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, "public API: connection over the caps closed");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TimedService { inner: warp::service(routes.clone()), peer, timeout: limits.request_timeout };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "public API: connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// warp's service with the peer's address added to each request and the request timeout around
/// each answer.
#[derive(Debug, Clone)]
struct TimedService<S> {
    inner: S,
    peer: SocketAddr,
    timeout: Duration,
}

impl<S> Service<hyper::Request<Incoming>> for TimedService<S>
where
    S: Service<hyper::Request<Incoming>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(PeerAddr(self.peer));
        let answer = self.inner.call(request);
        let (timeout, peer) = (self.timeout, self.peer);
        Box::pin(async move {
            match tokio::time::timeout(timeout, answer).await {
                Ok(answer) => answer,
                Err(_) => {
                    tracing::debug!(%peer, ?timeout, "public API: request timed out");
                    Ok(super::http::request_timeout_reply())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_connections_in_all_and_per_address_and_come_back_when_dropped() {
        let slots = Arc::new(Slots { occupancy: Mutex::default(), max_total: 3, max_per_ip: 2 });
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let a1 = slots.take(a).expect("first from a");
        let _a2 = slots.take(a).expect("second from a");
        assert!(slots.take(a).is_none(), "a third from one address");
        let _b1 = slots.take(b).expect("first from b");
        assert!(slots.take(c).is_none(), "over the total");
        drop(a1);
        let _c1 = slots.take(c).expect("a place came back");
        let occupancy = slots.occupancy.lock().unwrap();
        assert_eq!((occupancy.total, occupancy.by_ip.get(&a)), (3, Some(&1)));
    }
}
