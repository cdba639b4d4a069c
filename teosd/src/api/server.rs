//! The public API's connections. Our own accept loop over hyper (the one warp 0.4 uses), so that
//! what a stranger can hold is bounded:
//!
//! - at most `max_connections_per_ip` from one address (not applied behind a proxy, where every
//!   connection comes from the proxy): one more is closed as soon as it is accepted, without a
//!   byte read;
//! - at most `max_connections` open at once. At the cap, a new connection takes the place of an
//!   idle one, which is closed: first of those that never completed a request (a client still
//!   dribbling its first request head), oldest first; else of the idle keep-alives, oldest first.
//!   The new one is closed instead when every connection is busy, or when its address already
//!   holds [`PENDING_PER_IP`] connections that never completed a request: attackers holding
//!   connections open from many addresses cannot churn the table (each eviction costs a task and a
//!   connection), while a client that actually uses the tower always finds a place;
//! - a connection refused because its address is over its cap, or holds [`PENDING_PER_IP`]
//!   never-served connections at the total cap, is held open unread for [`TARPIT_HOLD`] before it
//!   is closed (at most [`TARPIT_MAX`] at once; beyond that, closed at once): a client that
//!   reopens what we close would otherwise make us accept and close tens of thousands of
//!   connections a second. One refused because every connection is busy is closed at once;
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
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warp::reply::Response;
use warp::Filter;

use crate::metrics::{HttpRoute, Metrics};

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

/// At the total cap, connections from an address holding this many that never completed a request
/// are closed rather than evicting another.
pub const PENDING_PER_IP: usize = 4;

/// How long a connection refused for its address's sake is held before it is closed.
pub const TARPIT_HOLD: Duration = Duration::from_secs(1);

/// Refused connections held at once, at most (each holds a file descriptor).
pub const TARPIT_MAX: usize = 1024;

/// Why a connection gets no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Its address holds its cap of connections.
    AddressCap,
    /// At the total cap, its address holds [`PENDING_PER_IP`] never-served connections.
    AddressPending,
    /// At the total cap, every connection is busy.
    AllBusy,
}

/// What the public API sends as a body: warp's, or a stream a route asked for.
pub type ApiBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Chunks of a streamed body.
pub type BodyStream = Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, BoxError>> + Send>>;

/// A route's wish to stream its body (warp 0.4 builds no streaming JSON reply): put in the
/// response's extensions, it replaces the (empty) body when the response leaves.
#[derive(Clone)]
pub struct StreamedBody(Arc<Mutex<Option<BodyStream>>>);

impl StreamedBody {
    /// A body made of `stream`'s chunks.
    pub fn new(stream: BodyStream) -> Self {
        StreamedBody(Arc::new(Mutex::new(Some(stream))))
    }
}

impl std::fmt::Debug for StreamedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamedBody")
    }
}

/// The response as it leaves: warp's body, or the stream the route put in its extensions.
pub fn finish(response: Response) -> hyper::Response<ApiBody> {
    use futures_util::TryStreamExt;
    use http_body_util::BodyExt;
    let (mut parts, body) = response.into_parts();
    let stream = parts.extensions.remove::<StreamedBody>().and_then(|s| s.0.lock().ok()?.take());
    let body = match stream {
        Some(stream) => http_body_util::StreamBody::new(stream.map_ok(hyper::body::Frame::data)).boxed_unsync(),
        None => body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
    };
    hyper::Response::from_parts(parts, body)
}

/// The peer of a connection, put in each request's extensions for the routes to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// One open connection, as the caps see it.
#[derive(Debug)]
struct Connection {
    ip: IpAddr,
    /// Requests being answered.
    busy: usize,
    /// When it opened, or last finished a request.
    idle_since: Instant,
    /// Requests it has completed.
    served: u64,
    /// Closes it (when it is evicted).
    close: CancellationToken,
}

/// Open connections, by id and by address.
#[derive(Debug, Default)]
struct Occupancy {
    connections: HashMap<u64, Connection>,
    by_ip: HashMap<IpAddr, usize>,
    next_id: u64,
}

impl Occupancy {
    fn remove(&mut self, id: u64) -> Option<Connection> {
        let connection = self.connections.remove(&id)?;
        if let Some(count) = self.by_ip.get_mut(&connection.ip) {
            *count -= 1;
            if *count == 0 {
                self.by_ip.remove(&connection.ip);
            }
        }
        Some(connection)
    }

    /// The idle connection to close first: one that never completed a request, else the one idle
    /// the longest.
    fn eviction_candidate(&self) -> Option<u64> {
        let idle = self.connections.iter().filter(|(_, c)| c.busy == 0);
        idle.min_by_key(|(_, c)| (c.served > 0, c.idle_since)).map(|(id, _)| *id)
    }
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
    id: u64,
    close: CancellationToken,
}

impl Slots {
    fn new(max_total: usize, max_per_ip: usize) -> Arc<Slots> {
        Arc::new(Slots { occupancy: Mutex::default(), max_total, max_per_ip })
    }

    fn occupancy(&self) -> std::sync::MutexGuard<'_, Occupancy> {
        self.occupancy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `ip`, evicting the longest-idle connection at the total cap;
    /// refused if `ip` is at its own cap, or every connection is busy.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut occupancy = self.occupancy();
        let from_ip = occupancy.by_ip.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip > 0 && from_ip >= self.max_per_ip {
            return Err(Refused::AddressCap);
        }
        if occupancy.connections.len() >= self.max_total {
            let pending = occupancy.connections.values().filter(|c| c.ip == ip && c.served == 0).count();
            if pending >= PENDING_PER_IP {
                return Err(Refused::AddressPending);
            }
            let victim = occupancy.eviction_candidate().ok_or(Refused::AllBusy)?;
            if let Some(evicted) = occupancy.remove(victim) {
                evicted.close.cancel();
            }
        }
        let id = occupancy.next_id;
        occupancy.next_id += 1;
        let close = CancellationToken::new();
        let connection = Connection { ip, busy: 0, idle_since: Instant::now(), served: 0, close: close.clone() };
        occupancy.connections.insert(id, connection);
        *occupancy.by_ip.entry(ip).or_default() += 1;
        Ok(Slot { slots: self.clone(), id, close })
    }

    /// Marks connection `id` busy (a request arrived) or idle again (`busy = false`).
    fn mark(&self, id: u64, busy: bool) {
        if let Some(connection) = self.occupancy().connections.get_mut(&id) {
            if busy {
                connection.busy += 1;
            } else {
                connection.busy = connection.busy.saturating_sub(1);
                connection.served += 1;
                connection.idle_since = Instant::now();
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.occupancy().remove(self.id);
    }
}

/// Serves `routes` on `listener` within `limits` until `shutdown` fires; then stops accepting
/// and waits for the requests in flight (the caller bounds that wait).
pub async fn serve<F>(
    listener: TcpListener,
    routes: F,
    limits: ConnectionLimits,
    behind_proxy: bool,
    metrics: Metrics,
    shutdown: CancellationToken,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let per_ip = if behind_proxy { 0 } else { limits.max_connections_per_ip };
    let slots = Slots::new(limits.max_connections, per_ip);
    let graceful = GracefulShutdown::new();
    let mut refused = 0u64;
    let tarpit = Arc::new(std::sync::atomic::AtomicUsize::new(0));
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
        let slot = match slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(%peer, refused, ?why, "public API: connection over the caps closed");
                }
                if why != Refused::AllBusy {
                    hold_then_close(stream, &tarpit, shutdown.clone());
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TimedService {
            inner: warp::service(routes.clone()),
            peer,
            timeout: limits.request_timeout,
            slots: slots.clone(),
            id: slot.id,
            metrics: metrics.clone(),
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                // Evicted: dropping the connection closes it.
                _ = slot.close.cancelled() => tracing::debug!(%peer, "public API: idle connection evicted"),
                ended = connection => if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "public API: connection ended with an error");
                },
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Keeps a refused connection open, unread, for [`TARPIT_HOLD`] (or until shutdown), if fewer
/// than [`TARPIT_MAX`] are held; else closes it now.
fn hold_then_close(stream: tokio::net::TcpStream, held: &Arc<std::sync::atomic::AtomicUsize>, stop: CancellationToken) {
    use std::sync::atomic::Ordering;
    if held.fetch_add(1, Ordering::Relaxed) >= TARPIT_MAX {
        held.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let held = held.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(TARPIT_HOLD) => {}
            _ = stop.cancelled() => {}
        }
        drop(stream);
        held.fetch_sub(1, Ordering::Relaxed);
    });
}

/// warp's service with the peer's address added to each request, the request timeout around each
/// answer, the connection marked busy while it answers, and each answer counted and timed (by
/// route, from a fixed set, and status).
#[derive(Debug, Clone)]
struct TimedService<S> {
    inner: S,
    peer: SocketAddr,
    timeout: Duration,
    slots: Arc<Slots>,
    id: u64,
    metrics: Metrics,
}

impl<S> Service<hyper::Request<Incoming>> for TimedService<S>
where
    S: Service<hyper::Request<Incoming>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = hyper::Response<ApiBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(PeerAddr(self.peer));
        let (route, started) = (HttpRoute::of_path(request.uri().path()), Instant::now());
        let answer = self.inner.call(request);
        let (timeout, peer, slots, id) = (self.timeout, self.peer, self.slots.clone(), self.id);
        let metrics = self.metrics.clone();
        slots.mark(id, true);
        Box::pin(async move {
            let answer = match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    tracing::debug!(%peer, ?timeout, "public API: request timed out");
                    super::http::request_timeout_reply()
                }
            };
            slots.mark(id, false);
            metrics.http_request(route, answer.status().as_u16(), started.elapsed());
            Ok(finish(answer))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_connection_over_its_address_cap_is_refused_and_places_come_back_when_dropped() {
        let slots = Slots::new(10, 2);
        let a1 = slots.take(ip("10.0.0.1")).expect("first from a");
        let _a2 = slots.take(ip("10.0.0.1")).expect("second from a");
        assert_eq!(slots.take(ip("10.0.0.1")).err(), Some(Refused::AddressCap), "a third from one address");
        drop(a1);
        let _a3 = slots.take(ip("10.0.0.1")).expect("a place came back");
        assert_eq!(slots.occupancy().by_ip.get(&ip("10.0.0.1")), Some(&2));
    }

    #[test]
    fn at_the_total_cap_an_idle_connection_makes_room_and_busy_ones_are_kept() {
        let slots = Slots::new(4, 0);
        let served = slots.take(ip("10.0.0.1")).unwrap();
        slots.mark(served.id, true);
        slots.mark(served.id, false);
        let oldest = slots.take(ip("10.0.0.2")).unwrap();
        let busy = slots.take(ip("10.0.0.3")).unwrap();
        let newer = slots.take(ip("10.0.0.4")).unwrap();
        slots.mark(busy.id, true);
        // Never-served connections go first, however recently a served one was active.
        let _fifth = slots.take(ip("10.0.0.5")).expect("room made");
        assert!(oldest.close.is_cancelled(), "the oldest never-served connection is closed");
        assert!(!served.close.is_cancelled() && !busy.close.is_cancelled() && !newer.close.is_cancelled());
        let _sixth = slots.take(ip("10.0.0.6")).expect("room made");
        assert!(newer.close.is_cancelled());
        let _seventh = slots.take(ip("10.0.0.7")).expect("room made");
        assert!(_fifth.close.is_cancelled(), "then the next never-served one, before the served keep-alive");
        assert!(!served.close.is_cancelled());
        let slots = Slots::new(3, 0);
        let oldest = slots.take(ip("10.0.0.1")).unwrap();
        let _b = slots.take(ip("10.0.0.2")).unwrap();
        let _c = slots.take(ip("10.0.0.3")).unwrap();
        let _fourth = slots.take(ip("10.0.0.4")).expect("room made");
        assert_eq!(slots.occupancy().connections.len(), 3);
        drop(oldest); // its task ends: nothing is counted twice
        assert_eq!(slots.occupancy().connections.len(), 3);
        // Everyone busy: the newcomer is refused instead.
        // At the cap, an address already holding PENDING_PER_IP connections that never completed
        // a request does not get to evict.
        let slots = Slots::new(PENDING_PER_IP + 1, 0);
        let held: Vec<Slot> = (0..PENDING_PER_IP).map(|_| slots.take(ip("10.0.9.9")).unwrap()).collect();
        let _other = slots.take(ip("10.0.0.1")).unwrap();
        assert_eq!(slots.take(ip("10.0.9.9")).err(), Some(Refused::AddressPending));
        assert!(slots.take(ip("10.0.0.2")).is_ok(), "another address evicts one of them");
        assert!(held[0].close.is_cancelled());
        let slots = Slots::new(1, 0);
        let only = slots.take(ip("10.0.0.1")).unwrap();
        slots.mark(only.id, true);
        assert_eq!(slots.take(ip("10.0.0.2")).err(), Some(Refused::AllBusy));
        slots.mark(only.id, false);
        assert!(slots.take(ip("10.0.0.2")).is_ok(), "idle again: it can be evicted");
    }
}
