//! The upstream side: the connection pool to runners and apps, the request
//! and response rewrites, streamed bodies, WebSocket tunnels, and waking a
//! sandbox that a runner says is not running.

pub mod body;
mod failure;
mod idle;
pub mod limit;
pub mod pool;
pub mod request_body;
pub mod rewrite;
pub mod tunnel;
pub mod wake;

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};

/// Response body: the upstream's streamed body, or one the proxy made.
/// Boxed: the answer is moved several times on its way to hyper, and with
/// the body inline (216 bytes) each move was a 352-byte copy.
pub type Body = Either<Box<body::UpstreamBody>, Full<Bytes>>;

/// Request body upstream: the client's, or none (a request without a body,
/// or a replayed head). Boxed for the same reason as [`Body`]; most
/// requests have none, and pay nothing for it.
pub type RequestBody = Either<Box<request_body::ClientBody>, Empty<Bytes>>;
