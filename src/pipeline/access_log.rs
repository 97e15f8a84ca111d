//! The access log (SPEC 8): one line per request at `info` (target
//! `access`), written when its answer has been sent or abandoned, so it
//! has the bytes and the whole time. Never a credential, a cookie, a query
//! string, or a signed token: the `sandbox` field is the sandbox id when the
//! control plane vouched for it, and a host whose key is not a verified
//! sandbox id is logged as `<port>-<signed>`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method};
use hyper::body::{Frame, SizeHint};

use super::log_line::{self, Millis};
pub use super::log_line::{flush, Lines};
use crate::metrics::Counts;
use crate::upstream::Body;

/// What the line says, gathered over the request.
pub struct Record {
    pub id: HeaderValue,
    /// The client's IP address.
    pub client: HeaderValue,
    pub method: Method,
    /// Without the query.
    pub path: String,
    pub status: u16,
    /// The sandbox id, `<port>-<signed>`, or `-`.
    pub sandbox: String,
    pub port: Option<u16>,
    /// The proxy's error code, or `-`.
    pub outcome: &'static str,
    pub started: Instant,
    /// Until the upstream's response head.
    pub upstream: Option<Duration>,
    /// Request body bytes passed on.
    pub bytes_in: Arc<AtomicU64>,
    pub lines: Arc<Lines>,
}

impl Record {
    /// Writes the line.
    pub fn emit(&self, bytes_out: u64) {
        let elapsed = self.started.elapsed();
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        if let Lines::Events = *self.lines {
            return self.event(bytes_out, bytes_in, elapsed);
        }
        log_line::write(&self.lines, |f| {
            f.text("id", self.id.as_bytes());
            f.text("client", self.client.as_bytes());
            f.text("method", self.method.as_str().as_bytes());
            f.text("path", self.path.as_bytes());
            f.number("status", self.status.into());
            f.number("bytes_in", bytes_in);
            f.number("bytes_out", bytes_out);
            f.millis("ms", Some(elapsed));
            f.millis("upstream_ms", self.upstream);
            f.text("sandbox", self.sandbox.as_bytes());
            f.number("port", self.port.unwrap_or(0).into());
            f.text("outcome", self.outcome.as_bytes());
        });
    }

    /// The same line as a `tracing` event.
    fn event(&self, bytes_out: u64, bytes_in: u64, elapsed: Duration) {
        tracing::info!(
            target: "access",
            id = %self.id.to_str().unwrap_or("-"),
            client = %self.client.to_str().unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes_in,
            bytes_out,
            ms = %Millis(Some(elapsed)),
            upstream_ms = %Millis(self.upstream),
            sandbox = %self.sandbox,
            port = self.port.unwrap_or(0),
            outcome = %self.outcome,
        );
    }

    /// The line of a WebSocket tunnel, when it closes (one a tunnel: it
    /// stays a `tracing` event).
    pub fn emit_tunnel(&self, opened: Instant, up: u64, down: u64) {
        tracing::info!(
            target: "access",
            id = %self.id.to_str().unwrap_or("-"),
            client = %self.client.to_str().unwrap_or("-"),
            path = %self.path,
            sandbox = %self.sandbox,
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

/// The `sandbox` field: the key only when it is a sandbox id the control
/// plane vouched for; any other key of a preview host may be a signed
/// token (a credential), shown as `<port>-<signed>`.
pub fn logged_sandbox(port: Option<u16>, key: Option<&str>, verified: bool) -> String {
    match (key, port) {
        (Some(key), _) if verified => key.to_string(),
        (Some(_), Some(port)) => format!("{port}-<signed>"),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn record(path: &str, upstream: Option<Duration>, lines: Lines) -> Record {
        Record {
            id: HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
            client: HeaderValue::from_static("2001:db8::1"),
            method: Method::POST,
            path: path.to_string(),
            status: 502,
            sandbox: "sbx-1".to_string(),
            port: Some(3000),
            outcome: "UPSTREAM_UNAVAILABLE",
            started: Instant::now(),
            upstream,
            bytes_in: Arc::new(AtomicU64::new(1234)),
            lines: Arc::new(lines),
        }
    }

    /// The line as the proxy writes it, and as the binary's subscriber
    /// writes the same record as an event.
    fn both(json: bool, path: &str, upstream: Option<Duration>) -> (String, String) {
        let written = Captured::default();
        let (out, guard) = tracing_appender::non_blocking(written.clone());
        record(path, upstream, Lines::Written { json, out }).emit(99);
        flush();
        drop(guard);
        let event = Captured::default();
        let sink = event.clone();
        let fmt = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false);
        let record = record(path, upstream, Lines::Events);
        match json {
            true => tracing::subscriber::with_default(
                fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).finish(),
                || record.emit(99),
            ),
            false => tracing::subscriber::with_default(fmt.finish(), || record.emit(99)),
        }
        (written.text(), event.text())
    }

    #[test]
    fn written_lines_read_as_the_subscribers_own() {
        for upstream in [None, Some(Duration::from_micros(1_234_567))] {
            let (written, event) = both(false, "/a/b%20c", upstream);
            // The time and the duration differ between the two; the rest
            // is the same, field for field.
            let fields = |line: &str| -> Vec<String> {
                assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "one line: {line:?}");
                line.split_whitespace().skip(1).filter(|f| !f.starts_with("ms=")).map(String::from).collect()
            };
            assert_eq!(fields(&written), fields(&event), "{written}{event}");
            let stamp = |line: &str| line.split(' ').next().unwrap().len();
            assert_eq!(stamp(&written), stamp(&event), "{written}{event}");
            assert!(written.contains(" ms=0.") || written.contains(" ms=1."), "{written}");

            let (written, event) = both(true, "/quote\"and\\back", upstream);
            let parse = |line: &str| -> Vec<(String, serde_json::Value)> {
                let value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
                value.into_iter().filter(|(k, _)| k != "timestamp" && k != "ms").collect()
            };
            assert_eq!(parse(&written), parse(&event), "{written}{event}");
            assert!(written.starts_with("{\"timestamp\":\"20") && written.ends_with("}\n"), "{written}");
        }
    }

    #[test]
    fn control_characters_are_escaped_in_text() {
        let (written, _) = both(false, "/a\u{1b}[31mred", None);
        assert!(written.contains("path=/a\\u{1b}[31mred "), "{written}");
        let (written, _) = both(true, "/a\u{1b}", None);
        assert!(written.contains(r#""path":"/a\u001b""#), "{written}");
    }

    #[test]
    fn only_verified_keys_are_shown() {
        assert_eq!(logged_sandbox(Some(3000), Some("sbx-1"), true), "sbx-1");
        assert_eq!(logged_sandbox(None, Some("sbx-1"), true), "sbx-1");
        assert_eq!(logged_sandbox(Some(3000), Some("k3v9tokenq2"), false), "3000-<signed>");
        assert_eq!(logged_sandbox(None, Some("sbx-1"), false), "-");
        assert_eq!(logged_sandbox(None, None, false), "-");
    }
}
