//! Upgraded connections (WebSockets) after the 101: bytes copied both ways
//! until either side closes, an idle timeout, a count of open tunnels, and
//! a close for all of them at the end of graceful shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::control_plane::activity::ActivityGuard;

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

    /// Joins the client's and the upstream's upgraded connections; `guard`
    /// lives as long as the tunnel.
    pub fn spawn(
        self: &Arc<Self>,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        guard: Option<ActivityGuard>,
    ) {
        let tunnels = self.clone();
        tunnels.open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _guard = guard;
            let _count = Counted(&tunnels.open);
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
            };
            match copy(TokioIo::new(client), TokioIo::new(upstream), tunnels.idle_timeout, tunnels.close.subscribe())
                .await
            {
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

/// Copies both ways until one side closes, nothing moves for `idle`, or
/// `close` turns true. A write waits for the peer, so a slow reader slows
/// the writer instead of growing buffers.
async fn copy<A, B>(mut a: A, mut b: B, idle: Duration, mut close: watch::Receiver<bool>) -> std::io::Result<End>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Not zeroed: an idle tunnel's buffers stay untouched, so mostly not
    // resident, which is what 5,000 idle tunnels cost.
    let mut from_a = BytesMut::with_capacity(BUFFER);
    let mut from_b = BytesMut::with_capacity(BUFFER);
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    let end = loop {
        tokio::select! {
            n = a.read_buf(&mut from_a) => match n? {
                0 => break End::Closed,
                _ => {
                    b.write_all(&from_a).await?;
                    from_a.clear();
                }
            },
            n = b.read_buf(&mut from_b) => match n? {
                0 => break End::Closed,
                _ => {
                    a.write_all(&from_b).await?;
                    from_b.clear();
                }
            },
            () = &mut deadline => break End::Idle,
            () = closed(&mut close) => break End::Shutdown,
        }
        deadline.as_mut().reset(tokio::time::Instant::now() + idle);
    };
    let _ = tokio::join!(a.shutdown(), b.shutdown());
    Ok(end)
}
