//! preview-proxy: serves sandbox preview URLs (`<port>-<sandboxId>.<domain>`)
//! by routing each request to the runner or app that hosts the sandbox.

pub mod activity;
pub mod auth;
pub mod auth_cookie;
pub mod cache;
pub mod config;
pub mod control_plane;
pub mod cors;
pub mod error;
pub mod file_stamp;
pub mod forward;
pub mod host;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod shared_cache;
pub mod signed_url;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod wake;
pub mod warning_page;

use bytes::Bytes;
use http_body_util::{Either, Full};

/// Response body: the upstream's streamed body, or one the proxy made.
pub type Body = Either<forward::UpstreamBody, Full<Bytes>>;
