//! Why an upstream request got no response, and what the client is told:
//! the app's port closed, the runner unreachable, a timeout, a stale pooled
//! connection (sent again), or the client's own body failing (a 4xx).

use std::io;

use http::Request;

use super::request_body::ClientBodyError;
use super::RequestBody;
use crate::error::ProxyError;
use crate::http::error_chain;
use crate::http::host::Port;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response.
pub(super) enum Failure {
    Connect(BoxError),
    /// No connection under the cap became free in time.
    Busy,
    /// No response head within the upstream timeout.
    TimedOut,
    /// The connection failed; `unsent` is the request when it provably never
    /// left.
    Request {
        error: hyper::Error,
        unsent: Option<Box<Request<RequestBody>>>,
    },
}

/// The connection broke before any response: the upstream closed it as the
/// request went out (stale in the pool, or closed at accept).
pub(super) fn is_stale(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() || err.is_canceled() {
        return true;
    }
    matches!(
        io_kind(err),
        Some(
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
        )
    )
}

fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = e.source();
    }
    None
}

/// Maps a failure to what the user is told.
pub(super) fn classify(failure: Failure, port: Port, direct: bool) -> ProxyError {
    match failure {
        Failure::Busy => ProxyError::UpstreamBusy,
        Failure::TimedOut => ProxyError::UpstreamTimeout(port),
        Failure::Connect(err) => match (io_kind(&*err), direct) {
            (Some(io::ErrorKind::TimedOut), _) => ProxyError::UpstreamTimeout(port),
            (Some(io::ErrorKind::ConnectionRefused), true) => ProxyError::PortNotListening(port),
            (_, true) => ProxyError::UpstreamFailed { port, detail: error_chain(&*err) },
            (_, false) => ProxyError::RunnerUnreachable(error_chain(&*err)),
        },
        Failure::Request { error, .. } => match client_body_error(&error) {
            Some(ClientBodyError::Stalled(_)) => ProxyError::RequestBodyTimeout,
            Some(ClientBodyError::Malformed(_)) => ProxyError::BadRequestBody,
            None => ProxyError::UpstreamFailed { port, detail: error_chain(&error) },
        },
    }
}

/// The client's body failure behind a failed request, if that was it.
fn client_body_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<ClientBodyError>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}
