//! Upgraded connections (WebSockets) after the 101: each direction copied
//! on its own until either side closes, an idle limit that also ends a
//! write blocked on a peer that does not read, a count of open tunnels, and
//! a close for all of them at the end of graceful shutdown.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::limit::Holds;

/// Per direction. Small, because thousands of mostly idle tunnels are
/// normal (every open preview tab holds an HMR socket).
const BUFFER: usize = 8 * 1024;

/// The open tunnels of a proxy.
pub struct Tunnels {
    open: AtomicUsize,
    idle_timeout: Duration,
    /// Set to `true` to close every tunnel.
    close: watch::Sender<bool>,
}

impl Tunnels {
    pub fn new(idle_timeout: Duration) -> Arc<Tunnels> {
        Arc::new(Tunnels { open: AtomicUsize::new(0), idle_timeout, close: watch::channel(false).0 })
    }

    /// How many tunnels are open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until no tunnel is open.
    pub async fn drained(&self) {
        while self.open() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes every open tunnel (the end of graceful shutdown).
    pub fn close_all(&self) {
        let _ = self.close.send(true);
    }

    /// Joins the client's and the upstream's upgraded connections; `holds`
    /// live as long as the tunnel.
    pub fn spawn(
        self: &Arc<Self>,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        holds: Holds,
    ) {
        let tunnels = self.clone();
        tunnels.open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let Holds { activity: _activity, permit: _permit, on_close } = holds;
            let _count = Counted(&tunnels.open);
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
            };
            let clock = Clock {
                base: Instant::now(),
                last: AtomicU64::new(1),
                writing_since: Default::default(),
                moved: Default::default(),
            };
            let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let end = copy(client, upstream, tunnels.idle_timeout, tunnels.close.subscribe(), &clock).await;
            if let Some(on_close) = on_close {
                on_close(clock.moved[0].load(Ordering::Relaxed), clock.moved[1].load(Ordering::Relaxed));
            }
            match end {
                Ok(End::Closed) => {}
                Ok(End::Idle) => tracing::debug!("tunnel closed after the idle timeout"),
                Ok(End::Shutdown) => tracing::debug!("tunnel closed at shutdown"),
                Err(e) => tracing::debug!(error = %e, "tunnel closed with an error"),
            }
        });
    }
}

/// Decrements the open count when the tunnel task ends, however it ends.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Completes when `close` turns true (or its sender is gone).
async fn closed(close: &mut watch::Receiver<bool>) {
    let _ = close.wait_for(|c| *c).await;
}

enum End {
    Closed,
    Idle,
    Shutdown,
}

/// When a tunnel last moved bytes, and since when each direction has been
/// waiting to write: milliseconds since `base` (0 = not waiting). Shared
/// by the two directions and the watchdog of one tunnel.
struct Clock {
    base: Instant,
    last: AtomicU64,
    writing_since: [AtomicU64; 2],
    /// Bytes moved each way (client to app, app to client).
    moved: [AtomicU64; 2],
}

impl Clock {
    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    fn moved(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    fn writing(&self, dir: usize, waiting: bool) {
        self.writing_since[dir].store(if waiting { self.now() } else { 0 }, Ordering::Relaxed);
    }

    /// Completes once nothing moved for `idle`, or a write has waited that
    /// long for a peer that does not read.
    async fn expired(&self, idle: Duration) {
        let idle = idle.as_millis() as u64;
        loop {
            let mut deadline = self.last.load(Ordering::Relaxed) + idle;
            for since in &self.writing_since {
                let since = since.load(Ordering::Relaxed);
                if since != 0 {
                    deadline = deadline.min(since + idle);
                }
            }
            let now = self.now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
        }
    }
}

/// One direction: reads from `from` and writes to `to` until `from` ends.
async fn pump<R, W>(from: &mut R, to: &mut W, dir: usize, clock: &Clock) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Not zeroed: an idle tunnel's buffers stay untouched, so mostly not
    // resident, which is what 5,000 idle tunnels cost.
    let mut buf = BytesMut::with_capacity(BUFFER);
    loop {
        if from.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        clock.moved();
        clock.writing(dir, true);
        to.write_all(&buf).await?;
        clock.writing(dir, false);
        clock.moved[dir].fetch_add(buf.len() as u64, Ordering::Relaxed);
        clock.moved();
        buf.clear();
    }
}

/// Copies both ways, each direction on its own, until one side closes,
/// nothing moves (or a write waits) for `idle`, or `close` turns true. A
/// slow reader slows only the direction that writes to it; the other
/// direction, the idle deadline and the shutdown signal keep going.
async fn copy<A, B>(a: A, b: B, idle: Duration, mut close: watch::Receiver<bool>, clock: &Clock) -> io::Result<End>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let end = tokio::select! {
        r = pump(&mut a_read, &mut b_write, 0, clock) => r.map(|()| End::Closed),
        r = pump(&mut b_read, &mut a_write, 1, clock) => r.map(|()| End::Closed),
        () = clock.expired(idle) => Ok(End::Idle),
        () = closed(&mut close) => Ok(End::Shutdown),
    };
    // A peer that does not read must not hold the close up either.
    let _ =
        tokio::time::timeout(Duration::from_secs(1), async { tokio::join!(a_write.shutdown(), b_write.shutdown()) })
            .await;
    end
}
