//! The upstream's response body on its way to the client: it holds the
//! pooled connection until read to the end, and the sandbox's activity
//! keep-alive while it streams.

use bytes::Bytes;
use hyper::body::{Body as _, Incoming};

use super::pool::Lease;
use crate::control_plane::activity::ActivityGuard;

/// The upstream's response body, holding what must live as long as it
/// streams (the sandbox's activity keep-alive) and the connection it came
/// on, which goes back to the pool once the body has been read to its end.
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
    _guard: Option<ActivityGuard>,
}

impl UpstreamBody {
    pub fn new(body: Incoming, lease: Option<Lease>, guard: Option<ActivityGuard>) -> UpstreamBody {
        let mut body = UpstreamBody { body, lease, _guard: guard };
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
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            std::task::Poll::Ready(None) => this.release(),
            std::task::Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            std::task::Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether a response streams for an unknown time (no `Content-Length`:
/// server-sent events, chunked streams).
pub fn is_streaming(headers: &http::HeaderMap, body: &Incoming) -> bool {
    !headers.contains_key(http::header::CONTENT_LENGTH) && !body.is_end_stream()
}
