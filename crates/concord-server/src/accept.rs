//! Accepting connections and serving HTTP on them: the caps on connections served at once
//! (in all and per source address), the request-head timeout, and an accept loop that backs
//! off when the process runs out of file descriptors instead of spinning. `axum::serve`
//! has none of these, so the router is served here with hyper's HTTP/1 (with upgrades, for
//! the WebSocket endpoint).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long accepting pauses after an error that is not the peer's (out of file
/// descriptors or memory): long enough not to spin, short enough to catch the first
/// descriptor a closing connection frees.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Log lines about refused connections or failed accepts come at most this often, each
/// with the count since the last one.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How many connections are served at once, in all and per source address.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_source: usize,
    served: Mutex<Served>,
}

#[derive(Debug, Default)]
struct Served {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Total,
    PerSource,
}

/// A connection's place under the caps, given back when the last clone is dropped: the
/// HTTP connection holds one, and a WebSocket upgraded from it another, for its session.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    _place: Arc<Place>,
}

#[derive(Debug)]
struct Place {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut served = self.admission.served();
        served.total -= 1;
        if let Some(count) = served.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                served.per_source.remove(&self.source);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Arc<Admission> {
        Arc::new(Admission { max_total, max_per_source, served: Mutex::default() })
    }

    fn served(&self) -> std::sync::MutexGuard<'_, Served> {
        // Counts only change together under the lock; a panic elsewhere cannot split them.
        self.served.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `peer`, if both caps allow one more.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refusal> {
        let source = source_of(peer);
        let mut served = self.served();
        if served.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let count = served.per_source.entry(source).or_default();
        if *count >= self.max_per_source {
            return Err(Refusal::PerSource);
        }
        *count += 1;
        served.total += 1;
        Ok(Admitted { _place: Arc::new(Place { admission: self.clone(), source }) })
    }
}

/// What a per-address cap counts: an IPv4 address (also when mapped into IPv6), or an
/// IPv6 /64 network, since one host is usually given a whole /64.
fn source_of(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(octets.into())
        }
        v4 => v4,
    }
}

/// Counts events for a log line at most every [`REPORT_EVERY`].
#[derive(Debug, Default)]
struct Tally {
    total: u64,
    unreported: u64,
    reported_at: Option<Instant>,
}

impl Tally {
    /// Counts one; `Some(since the last line)` when a line is due.
    fn count(&mut self) -> Option<u64> {
        self.total += 1;
        self.unreported += 1;
        let now = Instant::now();
        if self.reported_at.is_some_and(|at| now.duration_since(at) < REPORT_EVERY) {
            return None;
        }
        self.reported_at = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// The HTTP side of the server: serves the router on each accepted connection.
#[derive(Debug)]
pub(crate) struct Http {
    router: Router,
    builder: http1::Builder,
    /// Every HTTP connection's task (an upgraded WebSocket lives on in its own task).
    pub(crate) tasks: TaskTracker,
    /// Cancelled to close HTTP connections gracefully (requests in progress finish).
    pub(crate) closing: CancellationToken,
}

impl Http {
    pub(crate) fn new(router: Router, header_read_timeout: Duration) -> Http {
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
        Http { router, builder, tasks: TaskTracker::new(), closing: CancellationToken::new() }
    }

    /// Serves HTTP on `tcp` in a task of its own; every request carries `admitted`, so that
    /// an upgrade can keep the connection's place for its session.
    fn serve(&self, tcp: TcpStream, admitted: Admitted) {
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(admitted.clone());
            router.clone().oneshot(request.map(Body::new))
        });
        let connection = self.builder.serve_connection(TokioIo::new(tcp), service).with_upgrades();
        let closing = self.closing.clone();
        self.tasks.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                // Timed-out request heads, malformed requests, peers that left.
                tracing::debug!(%error, "an HTTP connection ended with an error");
            }
        });
    }
}

/// Accepts connections until `stop` is cancelled: each one the caps admit is served, each
/// other one closed at once (counted in a log line). When accepting fails for a reason that
/// is not the peer's — most likely no file descriptor is left (EMFILE, ENFILE) — it waits
/// [`ACCEPT_BACKOFF`] and tries again: the connection stays in the listen queue, and
/// connections closing (timed-out request heads among them) free descriptors.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    http: &Http,
    admission: &Arc<Admission>,
    stop: &CancellationToken,
) {
    let mut refused = Tally::default();
    let mut failed = Tally::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((tcp, peer)) => admit(tcp, peer, http, admission, &mut refused),
            Err(error) if is_the_peers(&error) => {}
            Err(error) => {
                if let Some(since) = failed.count() {
                    tracing::warn!(
                        %error,
                        failures = since,
                        total = failed.total,
                        "cannot accept connections; retrying in {} ms",
                        ACCEPT_BACKOFF.as_millis()
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

fn admit(
    tcp: TcpStream,
    peer: SocketAddr,
    http: &Http,
    admission: &Arc<Admission>,
    refused: &mut Tally,
) {
    match admission.admit(peer.ip()) {
        Ok(admitted) => {
            // Small frames (acks, one-character edits) must not wait for Nagle's algorithm.
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            http.serve(tcp, admitted);
        }
        Err(refusal) => {
            drop(tcp);
            if let Some(since) = refused.count() {
                let cap = match refusal {
                    Refusal::Total => "max_connections",
                    Refusal::PerSource => "max_connections_per_address",
                };
                tracing::warn!(
                    %peer,
                    refused = since,
                    total = refused.total,
                    "refused connections over {cap}"
                );
            }
        }
    }
}

/// Errors about the one connection being accepted (it was reset or aborted before we took
/// it): the next accept is unaffected.
fn is_the_peers(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_places_until_they_are_given_back() {
        let admission = Admission::new(3, 2);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let a = admission.admit(one).unwrap();
        let b = admission.admit(one).unwrap();
        assert_eq!(admission.admit(one).unwrap_err(), Refusal::PerSource);
        let c = admission.admit(two).unwrap();
        assert_eq!(admission.admit(two).unwrap_err(), Refusal::Total);
        // A place held by a clone (a WebSocket session) lasts until the last one goes.
        let a_session = a.clone();
        drop(a);
        assert_eq!(admission.admit(one).unwrap_err(), Refusal::Total);
        drop(a_session);
        let d = admission.admit(one).unwrap();
        drop((b, c, d));
        assert_eq!(admission.served().total, 0);
        assert!(admission.served().per_source.is_empty());
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_of(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
