//! The client's request body on its way upstream: bounded by
//! `REQUEST_BODY_TIMEOUT_SEC`, and its failures told apart from the app's
//! (a client's stall or bad chunk is a 4xx, never a 502).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::metrics::Counts;

/// A wait for the next body bytes, armed only when a poll finds none (a
/// small body that arrives with its head never allocates it).
pub(crate) struct IdleLimit {
    pub(crate) limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes moved since the timer was last set.
    pub(crate) moved: bool,
}

impl IdleLimit {
    pub(crate) fn new(limit: Duration) -> IdleLimit {
        IdleLimit { limit, sleep: None, moved: false }
    }

    /// Called when the body has nothing: whether the limit has passed.
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.limit;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if std::mem::take(&mut self.moved) {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// Why a client's request body failed: the client's fault, never the app's.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client sent no request body bytes for {0:?}")]
    Stalled(Duration),
    #[error("the client's request body is malformed: {0}")]
    Malformed(hyper::Error),
}

/// The client's request body as it goes upstream.
pub struct ClientBody {
    body: Incoming,
    idle: IdleLimit,
    /// Bytes passed on, when someone counts them (the access log).
    counted: Option<Arc<AtomicU64>>,
    /// The metrics' byte count.
    counts: Arc<Counts>,
}

impl ClientBody {
    pub fn new(body: Incoming, limit: Duration, counted: Option<Arc<AtomicU64>>, counts: Arc<Counts>) -> ClientBody {
        ClientBody { body, idle: IdleLimit::new(limit), counted, counts }
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending if this.idle.expired(cx) => Poll::Ready(Some(Err(ClientBodyError::Stalled(this.idle.limit)))),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Malformed(e)))),
            Poll::Ready(frame) => {
                this.idle.moved = true;
                if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
                    let n = data.len() as u64;
                    this.counts.bytes(n, 0);
                    if let Some(counted) = &this.counted {
                        counted.fetch_add(n, Ordering::Relaxed);
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(ClientBodyError::Malformed)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
