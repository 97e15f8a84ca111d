//! The upstream's response body on its way to the client: bounded by
//! `RESPONSE_IDLE_TIMEOUT_SEC`, holding the pooled connection until read to
//! the end and the sandbox's activity keep-alive while it streams.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};

use super::limit::Holds;
use super::pool::Lease;
use super::request_body::IdleLimit;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The app stopped sending its answer's body.
#[derive(Debug, thiserror::Error)]
#[error("the app sent no body bytes for {0:?}; the answer is aborted")]
pub struct ResponseStalled(Duration);

/// The upstream's response body, holding what must live as long as it
/// streams (the sandbox's activity keep-alive) and the connection it came
/// on, which goes back to the pool once the body has been read to its end.
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
    idle: Option<IdleLimit>,
    _holds: Holds,
}

impl UpstreamBody {
    /// `idle`: abort when the app sends nothing for this long (`None`: never).
    pub fn new(body: Incoming, lease: Option<Lease>, holds: Holds, idle: Option<Duration>) -> UpstreamBody {
        let mut body = UpstreamBody { body, lease, idle: idle.map(IdleLimit::new), _holds: holds };
        if body.body.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Pending => {
                if let Some(idle) = &mut this.idle {
                    if idle.expired(cx) {
                        // The connection is mid-body: it cannot be reused.
                        this.lease = None;
                        return Poll::Ready(Some(Err(Box::new(ResponseStalled(idle.limit)))));
                    }
                }
            }
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) => {
                if let Some(idle) = &mut this.idle {
                    idle.moved = true;
                }
                if this.body.is_end_stream() {
                    this.release();
                }
            }
            Poll::Ready(Some(Err(_))) => this.lease = None,
        }
        frame.map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether a response streams for an unknown time (no `Content-Length`:
/// server-sent events, chunked streams). The body knows its length from
/// the head hyper parsed, which saves looking the header up again.
pub fn is_streaming(body: &Incoming) -> bool {
    body.size_hint().exact().is_none() && !body.is_end_stream()
}
