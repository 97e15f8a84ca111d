//! The upstream side: the connection pool to runners and apps, the request
//! and response rewrites, streamed bodies, WebSocket tunnels, and waking a
//! sandbox that a runner says is not running.

pub mod body;
mod failure;
pub mod limit;
pub mod pool;
pub mod request_body;
pub mod rewrite;
pub mod tunnel;
pub mod wake;

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};

/// Response body: the upstream's streamed body, or one the proxy made.
pub type Body = Either<Box<body::UpstreamBody>, Full<Bytes>>;

/// Request body upstream: the client's, or none (an empty one, or a
/// replayed head).
pub type RequestBody = Either<Box<request_body::ClientBody>, Empty<Bytes>>;
