//! One client connection and every wait it has (SPEC 7): the first bytes
//! and protocol detection, request headers, idle keep-alive between HTTP/1
//! requests (its own limit, longer than the header limit), an idle HTTP/2
//! connection (GOAWAY), unanswered HTTP/2 pings, and graceful shutdown.
//! An idle HTTP/1 connection is parked: its hyper state and buffers are
//! dropped until the next request arrives.

use std::convert::Infallible;
use std::future::Future;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Frame, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::client_io::{Clock, StreamExecutor, StreamWatch, Watched};
use super::head_timer::{HeadTimer, Parking};
use super::park::{Http1, Lot};
use super::{OpenConnection, Server};
use crate::clock::Turn;
use crate::pipeline::access_log::Logged;
use crate::pipeline::Peer;

/// HTTP/2 pings: one after this long without frames, and the connection is
/// closed when it is not answered within the same time.
const PING: Duration = Duration::from_secs(20);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first read of a cleartext connection: room for an ordinary request.
const FIRST_READ: usize = 4096;
/// Request headers, all of them (431 beyond, as nginx's default buffers).
const MAX_HEADERS: usize = 64 * 1024;

/// The protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Tells HTTP/1 from cleartext HTTP/2 by the first bytes, which it reads
/// (a peek would cost a system call more per connection) and hands back
/// for [`serve`] to give hyper first: an ordinary request usually arrives
/// whole in this one read. `None`: the client closed, or sent nothing (or
/// half an HTTP/2 preface) within `limit`.
pub async fn detect(stream: &mut TcpStream, limit: Duration) -> Option<(Protocol, Vec<u8>)> {
    let look = async {
        let mut first = Vec::with_capacity(FIRST_READ);
        loop {
            if stream.read_buf(&mut first).await.ok()? == 0 {
                return None;
            }
            let seen = first.len().min(H2_PREFACE.len());
            if first[..seen] != H2_PREFACE[..seen] {
                return Some((Protocol::Http1, first));
            }
            if seen == H2_PREFACE.len() {
                return Some((Protocol::Http2, first));
            }
        }
    };
    tokio::time::timeout(limit, look).await.ok().flatten()
}

/// Serves one connection until it ends, it idles out, or the worker's
/// shutdown watch (`lot`'s) turns true (then in-flight requests finish
/// first). hyper's own HTTP/1 and
/// HTTP/2 connections, not hyper-util's `auto` one: `detect` already knows
/// the protocol, and `auto`'s connection is sized for HTTP/2's state even
/// when it serves HTTP/1 (more memory per idle keep-alive connection).
/// `first`: bytes already read from `io`, served to hyper before it.
/// `held`: what counts the connection as open, dropped when it ends.
/// `lot`: where an idle HTTP/1 connection parks.
pub async fn serve<I>(
    io: I,
    (protocol, first): (Protocol, Vec<u8>),
    server: Arc<Server>,
    peer: (SocketAddr, bool),
    held: OpenConnection,
    lot: Lot<I>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(Clock::default());
    let counts = server.proxy.shared.metrics.local().clone();
    let open = counts.connection(protocol == Protocol::Http2);
    let send_limit = server.config().response_idle_timeout;
    let io = Watched::new(io, first, clock.clone(), send_limit);
    if protocol == Protocol::Http1 {
        return serve_http1(Http1 { io, server, peer, held: (open, held), lot, parking: Parking::Soon }).await;
    }
    let config = server.config();
    let (idle, streams_limit) = (config.idle_timeout, config.max_concurrent_streams);
    let streams = Arc::new(Streams { base: Instant::now(), open: AtomicUsize::new(0), idle_since: AtomicU64::new(0) });
    let service = service(server.clone(), Peer::new(peer.0, peer.1), Some(streams.clone()), clock);
    let conn = http2::Builder::new(StreamExecutor { limit: send_limit })
        .timer(TokioTimer::new())
        .max_concurrent_streams(streams_limit)
        .max_header_list_size(MAX_HEADERS as u32)
        .keep_alive_interval(PING)
        .keep_alive_timeout(PING)
        .serve_connection(TokioIo::new(io), service);
    // Boxed: HTTP/2's state would size every HTTP/1 connection's future
    // (memory per idle keep-alive connection).
    Box::pin(async move {
        let conn = std::pin::pin!(conn);
        drive(conn, |conn| conn.graceful_shutdown(), Some((&streams, idle)), None, lot.closing().clone()).await
    })
    .await;
    drop((open, held));
}

/// The proxy as hyper calls it, for one connection.
fn service(
    server: Arc<Server>,
    peer: Peer,
    streams: Option<Arc<Streams>>,
    clock: Arc<Clock>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Counted>,
    Error = Infallible,
    Future: Send + Unpin,
> + Send
       + Unpin
       + 'static {
    service_fn(move |req| {
        let (server, peer, upgrades) = (server.clone(), peer.clone(), clock.clone());
        let open = streams.as_ref().map(|streams| StreamGuard::new(streams.clone()));
        // Boxed here, with the request in it: hyper keeps room for this
        // future on each connection while it idles, and moves it into
        // place for each request; this way both are a pointer's worth.
        // (A box is also what lets an idle connection be parked: hyper's
        // connection must be `Unpin` to be taken apart.)
        boxed_in_place(move || async move {
            let resp = server.proxy.handle(req, &peer).await;
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                upgrades.tunnel.store(true, Ordering::Relaxed);
            }
            Ok::<_, Infallible>(resp.map(|body| Counted { body, watch: None, open }))
        })
    })
}

/// A boxed future, its box allocated first: `Box::pin(future)` builds the
/// future on the stack and copies all of it (4 KB, its largest state, for
/// a request's) into the box.
fn boxed_in_place<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    // A request's future is 4,080 bytes: jemalloc serves up to 4 KiB from
    // its fast path, and anything larger from a slower one and a 5 KiB
    // size class (BENCHMARKS.md, sixteenth round). A rare path that grows
    // it past that belongs in a box of its own where it is awaited.
    debug_assert!(
        std::mem::size_of::<F>() <= 4096,
        "a request's future grew to {} bytes (4,096 at most): box the rare path that grew it",
        std::mem::size_of::<F>()
    );
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Serves a parked connection again, in a task of its own.
pub fn resume<I>(conn: Http1<I>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(serve_http1(conn));
}

/// Serves HTTP/1 requests until the connection ends or has idled for its
/// [`Parking`] delay. Then it is parked: hyper's connection, with its read
/// and write buffers (16 KiB), is dropped, and the connection waits for
/// its next request in its worker's [`Lot`], which serves it again in a
/// new task. It still closes `IDLE_TIMEOUT_SEC` after its last request.
/// A boxed future, not an `async fn`: it may start itself.
fn serve_http1<I>(conn: Http1<I>) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Each poll is one turn of `clock::now` (a request's clock readings are
    // one). Written into its box: `Box::pin` built it (hyper's connection
    // in it) on the stack and copied it twice, about 200 instructions a copy.
    let serving = Box::write(
        Box::new_uninit(),
        Turn::new(async move {
            let Http1 { io, server, peer, held, lot, parking } = conn;
            let clock = io.clock().clone();
            let config = server.config();
            let (header_read, idle) = (config.header_read_timeout, config.idle_timeout);
            let timer = HeadTimer::new(header_read, idle, parking, clock.clone());
            let service = service(server.clone(), Peer::new(peer.0, peer.1), None, clock.clone());
            let mut hyper_conn = http1::Builder::new()
                .timer(timer)
                .header_read_timeout(header_read)
                .max_header_size(MAX_HEADERS)
                .max_buf_size(MAX_HEADERS)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let parked = drive(
                Pin::new(&mut hyper_conn),
                |conn| conn.graceful_shutdown(),
                None,
                Some(&clock),
                lot.closing().clone(),
            )
            .await;
            if !parked {
                return;
            }
            let Some(parts) = hyper_conn.into_parts() else { return };
            let mut conn = Http1 { io: parts.io.into_inner(), server, peer, held, lot, parking };
            match parts.read_buf.is_empty() && !conn.io.has_unread() {
                true => Lot::park(conn),
                // Not idle after all (a byte came as it parked): served on.
                false => {
                    conn.io.unpark(parts.read_buf.to_vec());
                    resume(conn);
                }
            }
        }),
    );
    Box::into_pin(serving)
}

/// Runs a connection to its end; shuts it down gracefully when `closing`
/// turns true or, for HTTP/2, when no stream has been open for `idle`.
/// An HTTP/1 connection whose header timer asks to `park` it is ended the
/// same way, its socket left open: true then.
async fn drive<C>(
    mut conn: Pin<&mut C>,
    shutdown: fn(Pin<&mut C>),
    idle: Option<(&Streams, Duration)>,
    park: Option<&Clock>,
    closing: watch::Receiver<bool>,
) -> bool
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let closed = closed(closing);
    tokio::pin!(closed);
    let mut ending = false;
    let mut parked = false;
    // After an idle GOAWAY: when the connection is dropped if it has not
    // ended (the client may hold it open with pings while h2 still buffers
    // the end of an answer it opens no window for).
    let mut idled: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            // In order, the connection first: no random start to draw on
            // each of the two polls a request makes.
            biased;
            result = conn.as_mut() => {
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "connection closed with an error");
                }
                return parked && result.is_ok();
            }
            () = park_asked(park), if park.is_some() && !ending => {
                if park.is_some_and(Clock::start_parking) {
                    shutdown(conn.as_mut());
                    (ending, parked) = (true, true);
                }
            }
            () = idle_out(idle), if idle.is_some() && !ending => {
                tracing::debug!("idle HTTP/2 connection closed");
                shutdown(conn.as_mut());
                ending = true;
                idled = idle.map(|(_, idle)| tokio::time::Instant::now() + idle);
            }
            () = tokio::time::sleep_until(idled.unwrap_or_else(tokio::time::Instant::now)), if idled.is_some() => {
                tracing::debug!("idle HTTP/2 connection dropped: it did not end after its GOAWAY");
                return false;
            }
            () = &mut closed, if !ending => {
                shutdown(conn.as_mut());
                ending = true;
            }
        }
    }
}

/// Completes once `closing` turns true (or its worker is gone). The wait
/// is registered with the channel at the first poll; later polls look at
/// the channel's version (one atomic load) rather than polling the wait
/// again, which takes the channel's lock: a connection's task is polled
/// twice a request. Polled with another waker, it registers again.
async fn closed(closing: watch::Receiver<bool>) {
    let seen = closing.clone();
    let wait = async move {
        let mut closing = closing;
        let _ = closing.wait_for(|c| *c).await;
    };
    tokio::pin!(wait);
    let mut registered: Option<std::task::Waker> = None;
    std::future::poll_fn(move |cx| {
        let same_waker = registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if same_waker && matches!(seen.has_changed(), Ok(false)) {
            return Poll::Pending;
        }
        registered = Some(cx.waker().clone());
        wait.as_mut().poll(cx)
    })
    .await
}

/// Completes once the header timer asks to park the connection; never
/// for HTTP/2.
async fn park_asked(park: Option<&Clock>) {
    match park {
        Some(clock) => clock.park_asked().await,
        None => std::future::pending().await,
    }
}

/// Completes once an HTTP/2 connection has had no open stream for its
/// idle time; never for HTTP/1 (hyper's timer covers keep-alive).
async fn idle_out(idle: Option<(&Streams, Duration)>) {
    match idle {
        Some((streams, idle)) => streams.idle_for(idle).await,
        None => std::future::pending().await,
    }
}

/// Open streams of an HTTP/2 connection, and since when it has had none.
struct Streams {
    base: Instant,
    open: AtomicUsize,
    /// Milliseconds since `base` when the last stream ended.
    idle_since: AtomicU64,
}

impl Streams {
    /// Completes once no stream has been open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let wait = match self.open.load(Ordering::Relaxed) {
                0 => {
                    let since = Duration::from_millis(self.idle_since.load(Ordering::Relaxed));
                    let idle_so_far = self.base.elapsed().saturating_sub(since);
                    match idle.checked_sub(idle_so_far) {
                        Some(left) if !left.is_zero() => left,
                        _ => return,
                    }
                }
                _ => idle,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One open HTTP/2 stream, from the request until its answer's body ends.
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn new(streams: Arc<Streams>) -> StreamGuard {
        streams.open.fetch_add(1, Ordering::Relaxed);
        StreamGuard(streams)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let streams = &self.0;
        streams.idle_since.store(streams.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        streams.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body, holding its stream open while it is sent.
struct Counted {
    body: Logged,
    /// An HTTP/2 stream's report of what the client takes, found when hyper
    /// first asks for the body (on the stream's task).
    watch: Option<Arc<StreamWatch>>,
    open: Option<StreamGuard>,
}

impl hyper::body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = <Logged as hyper::body::Body>::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.open.is_none() {
            return Pin::new(&mut this.body).poll_frame(cx);
        }
        if this.watch.is_none() {
            this.watch = StreamWatch::current();
        }
        let Some(watch) = &this.watch else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        watch.asked();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_data()) {
            watch.gave();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `fut` once without waiting.
    fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        Pin::new(fut).poll(&mut Context::from_waker(waker))
    }

    #[tokio::test]
    async fn closed_wakes_its_task_when_closing_turns_true() {
        let (tx, rx) = watch::channel(false);
        let mut waiting = Box::pin(closed(rx));
        // Registered at its first poll; the next polls take the short way.
        assert!(poll_once(&mut waiting).is_pending());
        assert!(poll_once(&mut waiting).is_pending());
        let woken = tokio::spawn(waiting);
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), woken).await.expect("woken when closing").unwrap();
    }

    #[tokio::test]
    async fn closed_completes_when_its_worker_is_gone() {
        let (tx, rx) = watch::channel(false);
        let mut waiting = Box::pin(closed(rx));
        assert!(poll_once(&mut waiting).is_pending());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("done when the sender is gone");
    }
}
