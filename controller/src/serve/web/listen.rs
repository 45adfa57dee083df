//! How connections reach the hub: at most [`MAX_CONNECTIONS`] at once, each in a task of its
//! own with deadlines for its headers and its body, and over HTTPS each TLS handshake apart,
//! so that slow or silent clients hold up nobody else.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;

use super::held::{Held, Holdings};
use super::TrustedProxies;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's body, once its headers are in.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Middleware: the whole body of a request, read within [`BODY_TIMEOUT`] and at most
/// `max_body` bytes, before any handler sees it. The header timeout ends with the headers: a
/// client that trickles a body would otherwise hold its connection, and one of the hub's
/// [`MAX_CONNECTIONS`], for as long as it likes.
pub(super) async fn body_in_time(
    max_body: usize,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use http_body_util::{BodyExt as _, LengthLimitError, Limited};
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, max_body).collect()).await;
    let refusal = match read {
        Ok(Ok(body)) => {
            let body = axum::body::Body::from(body.to_bytes());
            return next
                .run(axum::extract::Request::from_parts(parts, body))
                .await;
        }
        Ok(Err(e)) if e.is::<LengthLimitError>() => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request's body may hold at most {} KiB", max_body / 1024),
        ),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            format!("the request's body could not be read: {e}"),
        ),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request's body did not come within {}s",
                BODY_TIMEOUT.as_secs()
            ),
        ),
    };
    super::refuse(refusal.0, &refusal.1)
}

/// How long a write to a client may wait for it to take what was sent: a client that stops
/// reading (pipelined requests whose answers it never reads, a live stream it left) would
/// otherwise hold its connection, and one of [`MAX_CONNECTIONS`], for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections the hub serves at once; the next is accepted when one ends.
const MAX_CONNECTIONS: usize = 256;

/// How many of them one address may hold (an IPv6 /64 counting as one; loopback, where a
/// reverse proxy on the same machine connects from, and trusted proxies, not at all): each
/// stalled connection is cut after its deadline, but one client that opens new ones faster
/// would hold them all.
const CONNECTIONS_PER_ADDRESS: usize = 32;

/// What a connection from `peer` counts against: its address (an IPv6 /64 as one), or
/// nothing from loopback or a trusted proxy, which serve many clients.
fn counted_address(peer: SocketAddr, proxies: &TrustedProxies) -> Option<std::net::IpAddr> {
    let proxy = peer.ip().to_canonical().is_loopback() || proxies.trusts(peer.ip());
    (!proxy).then(|| crate::serve::auth::address_key(peer.ip()))
}

/// A connection from an address that holds [`CONNECTIONS_PER_ADDRESS`] already.
struct AddressFull;

/// Counts a connection from `peer` against its address (`None`: it counts against none).
fn count_against_address(
    per_address: &Holdings<IpAddr>,
    peer: SocketAddr,
    proxies: &TrustedProxies,
) -> Result<Option<Held<IpAddr>>, AddressFull> {
    let Some(address) = counted_address(peer, proxies) else {
        return Ok(None);
    };
    match per_address.take(address, CONNECTIONS_PER_ADDRESS) {
        Some(held) => Ok(Some(held)),
        None => {
            tracing::debug!(%peer, "refused a connection: its address holds {CONNECTIONS_PER_ADDRESS} already");
            Err(AddressFull)
        }
    }
}

/// Serves `app` on what `listener` accepts, each connection in a task of its own. Clients
/// that trickle their headers are cut off after [`HEADER_TIMEOUT`], those that stop reading
/// after [`WRITE_TIMEOUT`], and at most [`MAX_CONNECTIONS`] are served at once,
/// [`CONNECTIONS_PER_ADDRESS`] of them for one address: without
/// these, slow, idle or stalled clients could hold the hub's connections for ever
/// (`axum::serve` sets no timer, so hyper's own header timeout never applies).
pub(super) async fn serve_on<L>(mut listener: L, app: Router, proxies: TrustedProxies)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = Holdings::default();
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (io, peer) = listener.accept().await;
        let Ok(counted) = count_against_address(&per_address, peer, &proxies) else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _counted = counted;
            let service = hyper::service::service_fn(
                move |request: axum::http::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    request.extensions_mut().insert(ConnectInfo(Peer(peer)));
                    tower::ServiceExt::oneshot(app.clone(), request)
                },
            );
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let mut io = tokio_io_timeout::TimeoutStream::new(io);
            io.set_write_timeout(Some(WRITE_TIMEOUT));
            let io = hyper_util::rt::TokioIo::new(Box::pin(io));
            match builder.serve_connection(io, service).await {
                Err(e) if timed_out(&e) => {
                    let after = WRITE_TIMEOUT.as_secs();
                    tracing::info!(%peer, "cut off a client that took none of its answers for {after}s");
                }
                Err(e) => tracing::debug!(%peer, error = %e, "a connection ended"),
                Ok(()) => {}
            }
            drop(slot);
        });
    }
}

/// Whether a connection ended because a write to its client timed out.
fn timed_out(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = cause.source();
    }
    false
}

/// The address a request came from, for the login limit.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer(pub(super) SocketAddr);

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTPS: connections accepted on a TCP listener, each handshake in a task of its own (a
/// slow or silent client holds up nobody else), the finished ones handed to axum. An address
/// holds at most [`CONNECTIONS_PER_ADDRESS`] handshakes too: one client must not take every
/// handshake's place with connections that never say a word.
pub(super) struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub(super) fn new(
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        proxies: TrustedProxies,
    ) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (done, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        // As many handshakes at once as connections are served: each holds a file descriptor.
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let per_address = Holdings::default();
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                    return;
                };
                let (stream, from) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, typically: wait rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(counted) = count_against_address(&per_address, from, &proxies) else {
                    continue;
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let _held = (permit, counted);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        // While every connection is taken, a finished handshake waits as long
                        // as one may take, then goes.
                        Ok(Ok(tls)) => {
                            let handed = done.send((tls, from));
                            if tokio::time::timeout(HANDSHAKE_TIMEOUT, handed)
                                .await
                                .is_err()
                            {
                                tracing::debug!(%from, "every connection taken: closed");
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(%from, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%from, "TLS handshake timed out"),
                    }
                });
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_a_bounded_share_of_the_connections() {
        let per_address = Holdings::default();
        let nobody = TrustedProxies::default();
        let address =
            |text: &str| counted_address(text.parse().unwrap(), &nobody).expect("counted");
        let peer = address("192.0.2.7:40000");
        let held: Vec<_> = (0..CONNECTIONS_PER_ADDRESS)
            .map(|_| {
                per_address
                    .take(peer, CONNECTIONS_PER_ADDRESS)
                    .expect("a place")
            })
            .collect();
        assert!(
            per_address.take(peer, CONNECTIONS_PER_ADDRESS).is_none(),
            "one more"
        );
        // Another address, and one of the same IPv6 /64 counted together.
        let other = per_address.take(address("192.0.2.8:1"), CONNECTIONS_PER_ADDRESS);
        assert!(other.is_some());
        let v6_held: Vec<_> = (0..CONNECTIONS_PER_ADDRESS)
            .map(|_| {
                let v6 = address("[2001:db8::1]:1");
                per_address
                    .take(v6, CONNECTIONS_PER_ADDRESS)
                    .expect("a place")
            })
            .collect();
        let same_64 = address("[2001:db8::2]:1");
        assert!(per_address.take(same_64, CONNECTIONS_PER_ADDRESS).is_none());
        // Loopback, where a proxy on this machine connects from, is not counted.
        assert_eq!(
            counted_address("127.0.0.1:1".parse().unwrap(), &nobody),
            None
        );
        assert_eq!(
            counted_address("[::ffff:127.0.0.1]:1".parse().unwrap(), &nobody),
            None
        );
        // Nor is a trusted proxy elsewhere.
        let proxy = TrustedProxies(vec!["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(
            counted_address("192.0.2.7:1".parse().unwrap(), &proxy),
            None
        );
        drop(held);
        assert!(
            per_address.take(peer, CONNECTIONS_PER_ADDRESS).is_some(),
            "freed when they end"
        );
        drop(v6_held);
    }
}
