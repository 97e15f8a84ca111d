//! Parked HTTP/1 connections: idle keep-alive connections whose hyper
//! state and buffers were dropped, waiting for their next request's first
//! byte. One lot per worker holds them all, in one task: a parked
//! connection costs its own state and an entry in the lot's set (0.25
//! KB), not a task of its own with a timer and a shutdown watch (1 KB). The
//! lot closes connections idle past their limit on a shared sweep, and all
//! of them when the worker shuts down.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::client_io::Watched;
use super::{OpenConnection, Server};
use crate::metrics::{Counts, Open};

/// An HTTP/1 connection between hyper's connections: what lasts while it
/// is served, parked, and served again.
pub struct Http1<I> {
    pub io: Watched<I>,
    pub server: Arc<Server>,
    /// The client's address, and whether it is a trusted front proxy: a
    /// `Peer` is made from them each time the connection is served, so a
    /// parked one does not keep the peer's header value.
    pub peer: (SocketAddr, bool),
    /// What counts the connection as open.
    pub held: (Open, OpenConnection),
    /// Where it parks when idle.
    pub lot: Lot<I>,
}

/// Where one worker's HTTP/1 connections of one kind (cleartext or TLS)
/// park; it also holds their shutdown watch (so a parked connection does
/// not).
pub struct Lot<I>(Arc<(mpsc::UnboundedSender<Http1<I>>, watch::Receiver<bool>)>);

impl<I> Clone for Lot<I> {
    fn clone(&self) -> Lot<I> {
        Lot(self.0.clone())
    }
}

/// Serves a connection again once its next request's first byte came.
pub type Resume<I> = fn(Http1<I>);

impl<I> Lot<I>
where
    I: AsyncRead + Unpin + Send + 'static,
{
    /// Starts the lot's task. A connection stays parked up to `idle`, and
    /// none once `closing` turns true. `counts`: the worker's, whose
    /// parked-connection gauge the lot keeps.
    pub fn start(idle: Duration, closing: watch::Receiver<bool>, counts: Arc<Counts>, resume: Resume<I>) -> Lot<I> {
        let (arrivals, arrived) = mpsc::unbounded_channel();
        tokio::spawn(keep(arrived, closing.clone(), counts, resume, idle));
        Lot(Arc::new((arrivals, closing)))
    }

    /// Turns true when the worker shuts down.
    pub fn closing(&self) -> &watch::Receiver<bool> {
        &self.0 .1
    }

    /// Parks `conn`, or closes it if the worker is shutting down.
    pub fn park(conn: Http1<I>) {
        let lot = conn.lot.0.clone();
        // Refused once the lot has closed: the connection closes with it.
        let _ = lot.0.send(conn);
    }
}

/// How often the lot looks for connections past their limit: a connection
/// closes at most this much after it (1/16 of the idle time, 1 s at most).
fn sweep_every(idle: Duration) -> Duration {
    (idle / 16).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The lot's task: takes in parked connections, serves again those whose
/// client sends, closes those idle past their deadline.
async fn keep<I>(
    mut arrived: mpsc::UnboundedReceiver<Http1<I>>,
    mut closing: watch::Receiver<bool>,
    counts: Arc<Counts>,
    resume: Resume<I>,
    idle: Duration,
) where
    I: AsyncRead + Unpin + Send + 'static,
{
    let every = sweep_every(idle);
    // Deadlines in milliseconds since the lot started (4 bytes, not 16).
    let base = Instant::now();
    let millis = |at: Instant| u32::try_from(at.duration_since(base).as_millis()).unwrap_or(u32::MAX);
    let mut parked = FuturesUnordered::new();
    let sweep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sweep);
    let mut sweeping = false;
    loop {
        tokio::select! {
            conn = arrived.recv() => {
                let Some(conn) = conn else { break };
                let deadline = Instant::now() + idle;
                if !sweeping {
                    sweep.as_mut().reset(deadline);
                    sweeping = true;
                }
                parked.push(Parked { conn: Some(conn), deadline: millis(deadline), waker: None });
                counts.parked(1);
            }
            Some(woke) = parked.next(), if !parked.is_empty() => {
                counts.parked(-1);
                if let Some(conn) = woke {
                    resume(conn);
                }
            }
            () = &mut sweep, if sweeping => {
                let now = Instant::now();
                match parked.iter_mut().filter_map(|conn| conn.expire(millis(now))).min() {
                    Some(next) => sweep.as_mut().reset((base + Duration::from_millis(next.into())).max(now + every)),
                    None => sweeping = false,
                }
            }
            _ = closing.wait_for(|c| *c) => break,
        }
    }
    counts.parked(-(parked.len() as i64));
}

/// One parked connection: completes with it when a byte came, with
/// nothing when the client closed or the lot expired it.
struct Parked<I> {
    conn: Option<Http1<I>>,
    /// In milliseconds since the lot started.
    deadline: u32,
    /// Has the lot poll this connection again (to end it).
    waker: Option<Waker>,
}

impl<I> Parked<I> {
    /// Closes the connection if its deadline has passed; otherwise its
    /// deadline.
    fn expire(&mut self, now: u32) -> Option<u32> {
        if self.deadline > now {
            return Some(self.deadline);
        }
        if self.conn.take().is_some() {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
        None
    }
}

impl<I: AsyncRead + Unpin> Future for Parked<I> {
    type Output = Option<Http1<I>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = &mut this.conn else { return Poll::Ready(None) };
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match Pin::new(&mut conn.io).poll_read(cx, &mut buf) {
            Poll::Pending => {
                if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    this.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Poll::Ready(Ok(())) if buf.filled().len() == 1 => {
                conn.io.unpark(vec![byte[0]]);
                Poll::Ready(this.conn.take())
            }
            // Closed by the client, or failed.
            Poll::Ready(_) => Poll::Ready(None),
        }
    }
}
