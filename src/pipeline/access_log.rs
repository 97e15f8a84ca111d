//! The access log (SPEC 8): one line per request at `info` (target
//! `access`), written when its answer has been sent or abandoned, so it
//! has the bytes and the whole time. Never a credential, a cookie, a query
//! string, or a signed token: a host whose key is not a verified sandbox id
//! is logged as `<port>-<signed>`.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method};
use hyper::body::{Frame, SizeHint};

use crate::metrics::Counts;
use crate::upstream::Body;

/// What the line says, gathered over the request.
#[derive(Clone)]
pub struct Record {
    pub id: HeaderValue,
    pub client: IpAddr,
    pub method: Method,
    /// Without the query.
    pub path: String,
    pub status: u16,
    /// `<port>-<sandbox id>`, `<port>-<signed>`, or `-`.
    pub host: String,
    pub port: Option<u16>,
    /// The proxy's error code, or `-`.
    pub outcome: &'static str,
    pub started: Instant,
    /// Until the upstream's response head.
    pub upstream: Option<Duration>,
    /// Request body bytes passed on.
    pub bytes_in: Arc<AtomicU64>,
}

impl Record {
    /// Writes the line.
    pub fn emit(&self, bytes_out: u64) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            target: "access",
            id = %self.id.to_str().unwrap_or("-"),
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            ms = format_args!("{:.2}", ms(self.started.elapsed())),
            upstream_ms = format_args!("{}", self.upstream.map_or("-".to_string(), |d| format!("{:.2}", ms(d)))),
            sandbox = %self.host,
            port = self.port.unwrap_or(0),
            outcome = %self.outcome,
        );
    }

    /// The line of a WebSocket tunnel, when it closes.
    pub fn emit_tunnel(&self, opened: Instant, up: u64, down: u64) {
        tracing::info!(
            target: "access",
            id = %self.id.to_str().unwrap_or("-"),
            client = %self.client,
            path = %self.path,
            sandbox = %self.host,
            port = self.port.unwrap_or(0),
            bytes_in = up,
            bytes_out = down,
            seconds = format_args!("{:.1}", opened.elapsed().as_secs_f64()),
            "websocket closed"
        );
    }
}

/// An answer's body, logging the request once it has been sent (or the
/// client left).
pub struct Logged {
    body: Body,
    record: Option<Box<Record>>,
    bytes_out: u64,
    /// Where the bytes sent are counted.
    counts: Arc<Counts>,
}

impl Logged {
    pub fn new(body: Body, record: Option<Box<Record>>, counts: Arc<Counts>) -> Logged {
        Logged { body, record, bytes_out: 0, counts }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.counts.bytes(0, self.bytes_out);
        if let Some(record) = self.record.take() {
            record.emit(self.bytes_out);
        }
    }
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(data) = f.data_ref() {
                this.bytes_out += data.len() as u64;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The host as the log may show it: the key only when it is a verified
/// sandbox id (a signed token is a credential).
pub fn logged_host(port: Option<u16>, key: Option<&str>, verified: bool) -> String {
    match (port, key) {
        (Some(port), Some(key)) if verified => format!("{port}-{key}"),
        (Some(port), Some(_)) => format!("{port}-<signed>"),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_verified_keys_are_shown() {
        assert_eq!(logged_host(Some(3000), Some("sbx-1"), true), "3000-sbx-1");
        assert_eq!(logged_host(Some(3000), Some("k3v9tokenq2"), false), "3000-<signed>");
        assert_eq!(logged_host(None, None, false), "-");
    }
}
