//! The client's side of a connection as hyper reads and writes it: the
//! bytes protocol detection already read come first, reads are counted for
//! the header timer, and a write the client takes nothing of is bounded
//! (`RESPONSE_IDLE_TIMEOUT_SEC`: a client that stops reading a download
//! must not hold the app's connection, and keep its sandbox awake, forever).
//! An HTTP/2 client can stop taking one stream's answer while the
//! connection stays busy (it opens no window for it): [`StreamExecutor`]
//! bounds that stream the same way.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock::Turn;
use crate::upstream::request_body::IdleLimit;

/// What the connection's parts share: how many reads brought bytes (the
/// header timer, which hyper polls after every read, notices the first one
/// of a request by the count changing: cheaper than taking the time on
/// every read), and whether the connection became a WebSocket tunnel
/// (whose writes `TUNNEL_IDLE_TIMEOUT_SEC` bounds instead).
///
/// An idle HTTP/1 connection is parked (its hyper state and buffers
/// dropped) once the header timer has waited a while for a next request:
/// the timer asks for it, noting the read count, and the connection's
/// driver parks it if no byte came since.
#[derive(Default)]
pub struct Clock {
    reads: AtomicU64,
    pub tunnel: AtomicBool,
    /// The read count plus one when the header timer asked to park (0: not
    /// asked).
    park: AtomicU64,
    /// Parking: hyper ends the connection, but the socket stays open.
    parking: AtomicBool,
}

impl Clock {
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The header timer has waited a while for a request, the read count
    /// at `reads` when it began.
    pub fn ask_park(&self, reads: u64) {
        self.park.store(reads + 1, Ordering::Relaxed);
    }

    /// Completes once parking has been asked for.
    pub fn park_asked(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|_| match self.park.load(Ordering::Relaxed) {
            0 => Poll::Pending,
            _ => Poll::Ready(()),
        })
    }

    /// Takes the request to park: true when no byte has come since it was
    /// made (hyper's connection is then idle with nothing read), and from
    /// then on the connection's end leaves the socket open.
    pub fn start_parking(&self) -> bool {
        let asked = self.park.swap(0, Ordering::Relaxed);
        let idle = asked != 0 && asked - 1 == self.reads();
        self.parking.store(idle, Ordering::Relaxed);
        idle
    }
}

/// The client's stream, after the bytes `detect` read from it.
pub struct Watched<I> {
    inner: I,
    /// Boxed: a parked connection keeps its stream, and the box is a
    /// pointer where a vector and its offset were 32 bytes.
    first: Option<Box<First>>,
    clock: Arc<Clock>,
    /// A write the client takes nothing of for this long fails (`None`: off).
    send: Option<IdleLimit>,
}

impl<I> Watched<I> {
    pub fn new(inner: I, first: Vec<u8>, clock: Arc<Clock>, send_limit: Option<Duration>) -> Watched<I> {
        Watched { inner, first: First::boxed(first), clock, send: send_limit.map(IdleLimit::new) }
    }

    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// Whether bytes read before the stream are still to be served.
    pub fn has_unread(&self) -> bool {
        self.first.is_some()
    }

    /// The stream as it parks, with its write limit: the rest is made
    /// again when it is served (a new clock; nothing unread, or it would
    /// not park). A parked connection then holds no small allocation of its
    /// own, which would keep a page of the crowd it came with resident.
    pub fn into_parked(self) -> (I, Option<Duration>) {
        (self.inner, self.send.map(|send| send.limit))
    }

    /// Not parked after all: `read` (what hyper had read) is served again
    /// before the stream, ahead of anything still unread.
    pub fn unpark(&mut self, mut read: Vec<u8>) {
        if let Some(rest) = self.first.take() {
            read.extend_from_slice(&rest.bytes[rest.at..]);
        }
        self.first = First::boxed(read);
        self.clock.parking.store(false, Ordering::Relaxed);
    }

    /// Notes a write's progress; fails one the client has not taken any
    /// of for the limit.
    fn sent<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let Some(limit) = &mut self.send else { return polled };
        match polled {
            Poll::Pending if !self.clock.tunnel.load(Ordering::Relaxed) && limit.expired(cx) => {
                let message = format!("the client read nothing for {:?}; the connection is closed", limit.limit);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)))
            }
            Poll::Pending => Poll::Pending,
            polled => {
                limit.moved = true;
                polled
            }
        }
    }
}

/// Bytes read before the stream, and how many of them have been read.
struct First {
    bytes: Vec<u8>,
    at: usize,
}

impl First {
    fn boxed(bytes: Vec<u8>) -> Option<Box<First>> {
        (!bytes.is_empty()).then(|| Box::new(First { bytes, at: 0 }))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(first) = &mut this.first {
            let n = buf.remaining().min(first.bytes.len() - first.at);
            buf.put_slice(&first.bytes[first.at..first.at + n]);
            first.at += n;
            if first.at == first.bytes.len() {
                this.first = None;
            }
            this.clock.reads.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.sent(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.sent(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.sent(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.clock.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

tokio::task_local! {
    /// The HTTP/2 stream this task serves.
    static STREAM: Arc<StreamWatch>;
}

/// One HTTP/2 stream's answer as the client takes it, reported by the
/// answer's body.
#[derive(Default)]
pub struct StreamWatch {
    /// Chunks handed to hyper.
    given: AtomicU64,
    /// A chunk was handed over and hyper has not asked for the next one
    /// since: it waits for the client to open a window.
    waiting: AtomicBool,
}

impl StreamWatch {
    /// The watch of the HTTP/2 stream served on this task, if it has one.
    pub fn current() -> Option<Arc<StreamWatch>> {
        STREAM.try_with(Arc::clone).ok()
    }

    /// hyper asks the body for its next chunk.
    pub fn asked(&self) {
        self.waiting.store(false, Ordering::Relaxed);
    }

    /// The body handed hyper a chunk.
    pub fn gave(&self) {
        self.given.fetch_add(1, Ordering::Relaxed);
        self.waiting.store(true, Ordering::Relaxed);
    }
}

/// Spawns the HTTP/2 streams hyper hands over, as `TokioExecutor` does,
/// and ends one that has waited `limit` for the client to take any of its
/// answer (`RESPONSE_IDLE_TIMEOUT_SEC`). Dropped, the stream is reset
/// (`CANCEL`: an abort, never a clean end) and the app's connection let go;
/// the connection's other streams go on. `None`: no limit.
#[derive(Clone)]
pub struct StreamExecutor {
    pub limit: Option<Duration>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    /// Each poll of a stream's task is one turn of [`crate::clock::now`].
    fn execute(&self, stream: F) {
        match self.limit {
            Some(limit) => tokio::spawn(Turn::new(Bounded { stream, watch: Arc::default(), limit, timer: None })),
            None => tokio::spawn(Turn::new(stream)),
        };
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 stream that ends once its answer has waited `limit` for
    /// the client with no chunk taken.
    struct Bounded<F> {
        #[pin]
        stream: F,
        watch: Arc<StreamWatch>,
        limit: Duration,
        // The wait's timer, and the chunk count when it was set.
        timer: Option<(u64, Pin<Box<tokio::time::Sleep>>)>,
    }
}

impl<F: Future<Output = ()>> Future for Bounded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let (stream, watch) = (this.stream, this.watch);
        if STREAM.sync_scope(watch.clone(), || stream.poll(cx)).is_ready() {
            return Poll::Ready(());
        }
        if !watch.waiting.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let given = watch.given.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + *this.limit;
        let sleep = match this.timer {
            Some((at, sleep)) if *at == given => sleep,
            Some((at, sleep)) => {
                *at = given;
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => &mut this.timer.insert((given, Box::pin(tokio::time::sleep_until(deadline)))).1,
        };
        if sleep.as_mut().poll(cx).is_ready() {
            tracing::debug!("the client took nothing of an HTTP/2 answer for {:?}; the stream is reset", this.limit);
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn bytes_served_again_come_before_those_still_unread() {
        // "GET /" came with the protocol's detection; hyper read "GE"
        // and handed it back as the connection was not parked after all.
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = Watched::new(server, b"GET /".to_vec(), Arc::new(Clock::default()), None);
        let mut two = [0u8; 2];
        io.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"GE");
        io.unpark(two.to_vec());
        assert!(io.has_unread());
        tokio::io::AsyncWriteExt::write_all(&mut client, b" HTTP/1.1").await.unwrap();
        drop(client);
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1");
        assert!(!io.has_unread());
    }
}
