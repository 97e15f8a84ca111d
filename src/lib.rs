//! preview-proxy: serves sandbox preview URLs (`<port>-<sandboxId>.<domain>`)
//! by routing each request to the runner or app that hosts the sandbox.
//!
//! Layers, each using only those before it (`tests/architecture.rs` checks):
//! `clock`, `http`, `file_watch`, `metrics`, `timers` (leaves) -> `config`
//! -> `control_plane` -> `error` -> `upstream` -> `pipeline` -> `server` ->
//! the binary.

pub mod clock;
pub mod config;
pub mod control_plane;
pub mod error;
pub mod file_watch;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod timers;
pub mod upstream;
