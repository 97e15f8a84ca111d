//! The access log (SPEC 8): one line per request at `info` (target
//! `access`), written when its answer has been sent or abandoned, so it
//! has the bytes and the whole time. Never a credential, a cookie, a query
//! string, or a signed token: a host whose key is not a verified sandbox id
//! is logged as `<port>-<signed>`.

use std::cell::RefCell;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method};
use hyper::body::{Frame, SizeHint};
use tracing_appender::non_blocking::NonBlocking;

use crate::metrics::Counts;
use crate::upstream::Body;

/// Where access lines go.
#[derive(Clone)]
pub enum Lines {
    /// Formatted here, as the binary's `tracing` subscriber formats its
    /// own lines (text or JSON), and handed to its writer. A `tracing`
    /// event of thirteen fields cost 20k instructions a request, as much as
    /// 40% of the rest of the request (callgrind); this costs a tenth.
    Written { json: bool, out: NonBlocking },
    /// As `tracing` events, for a proxy run without the binary's logging
    /// (tests, embedding).
    Events,
}

/// What the line says, gathered over the request.
pub struct Record {
    pub id: HeaderValue,
    /// The client's IP address.
    pub client: HeaderValue,
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
    pub lines: Arc<Lines>,
}

impl Record {
    /// Writes the line.
    pub fn emit(&self, bytes_out: u64) {
        let elapsed = self.started.elapsed();
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let json = match &*self.lines {
            Lines::Written { json, .. } => *json,
            Lines::Events => return self.event(bytes_out, bytes_in, elapsed),
        };
        PENDING.with_borrow_mut(|pending| {
            if !pending.to.as_ref().is_some_and(|to| Arc::ptr_eq(to, &self.lines)) {
                // Another writer's lines (only ever in tests) go first.
                pending.send();
                pending.to = Some(self.lines.clone());
            }
            let first = pending.lines.is_empty();
            let mut f = Fields { line: &mut pending.lines, json };
            f.start(&mut pending.clock);
            f.text("id", self.id.as_bytes());
            f.text("client", self.client.as_bytes());
            f.text("method", self.method.as_str().as_bytes());
            f.text("path", self.path.as_bytes());
            f.number("status", self.status.into());
            f.number("bytes_in", bytes_in);
            f.number("bytes_out", bytes_out);
            f.millis("ms", Some(elapsed));
            f.millis("upstream_ms", self.upstream);
            f.text("sandbox", self.host.as_bytes());
            f.number("port", self.port.unwrap_or(0).into());
            f.text("outcome", self.outcome.as_bytes());
            f.end();
            if pending.lines.len() >= BATCH_BYTES {
                pending.send();
            } else if first {
                // The first line of a batch sets its deadline; outside a
                // runtime (shutting down) it goes at once.
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => drop(runtime.spawn(async {
                        tokio::time::sleep(BATCH_WAIT).await;
                        flush();
                    })),
                    Err(_) => pending.send(),
                }
            }
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
            sandbox = %self.host,
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
            sandbox = %self.host,
            port = self.port.unwrap_or(0),
            bytes_in = up,
            bytes_out = down,
            seconds = format_args!("{:.1}", opened.elapsed().as_secs_f64()),
            "websocket closed"
        );
    }
}

/// Access lines wait in their worker's buffer at most this long, or until
/// it holds [`BATCH_BYTES`] (nginx's `access_log ... buffer= flush=`): a
/// line at a time woke the writer's thread for each request, and the two
/// threads' futex calls took 15% of the proxy's time (perf).
const BATCH_WAIT: Duration = Duration::from_millis(100);
const BATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending {
        lines: Vec::with_capacity(BATCH_BYTES + 1024),
        clock: Clock::default(),
        to: None,
    });
}

/// A worker's access lines not yet handed to the writer.
struct Pending {
    lines: Vec<u8>,
    clock: Clock,
    /// Where they go.
    to: Option<Arc<Lines>>,
}

impl Pending {
    fn send(&mut self) {
        if let (false, Some(Lines::Written { out, .. })) = (self.lines.is_empty(), self.to.as_deref()) {
            let _ = out.clone().write_all(&self.lines);
        }
        self.lines.clear();
    }
}

/// Hands this thread's waiting access lines to the writer. A worker calls
/// it once its runtime is gone, so no line is lost at exit.
pub fn flush() {
    PENDING.with_borrow_mut(Pending::send);
}

/// The time as `tracing-subscriber` prints it (`2026-11-23T20:01:20.490342Z`),
/// the date and second formatted once a second, as nginx does.
#[derive(Default)]
struct Clock {
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS.` of `second`.
    prefix: Vec<u8>,
}

impl Clock {
    fn write(&mut self, out: &mut Vec<u8>, now: SystemTime) {
        let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        if self.prefix.is_empty() || since.as_secs() != self.second {
            self.second = since.as_secs();
            self.prefix.clear();
            let t = i64::try_from(self.second)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let _ = write!(
                self.prefix,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
        }
        out.extend_from_slice(&self.prefix);
        let micros = since.subsec_micros();
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(micros);
        out.extend(std::iter::repeat_n(b'0', 6 - digits.len()));
        out.extend_from_slice(digits.as_bytes());
        out.push(b'Z');
    }
}

/// Writes one line's fields, in the text or the JSON form of the
/// subscriber's other lines.
struct Fields<'a> {
    line: &'a mut Vec<u8>,
    json: bool,
}

impl Fields<'_> {
    fn start(&mut self, clock: &mut Clock) {
        if self.json {
            self.line.extend_from_slice(b"{\"timestamp\":\"");
            clock.write(self.line, SystemTime::now());
            self.line.extend_from_slice(b"\",\"level\":\"INFO\"");
        } else {
            clock.write(self.line, SystemTime::now());
            self.line.extend_from_slice(b"  INFO access:");
        }
    }

    fn name(&mut self, name: &str) {
        if self.json {
            self.line.extend_from_slice(b",\"");
            self.line.extend_from_slice(name.as_bytes());
            self.line.extend_from_slice(b"\":");
        } else {
            self.line.push(b' ');
            self.line.extend_from_slice(name.as_bytes());
            self.line.push(b'=');
        }
    }

    /// A string: quoted and escaped in JSON; in text as it is, but with
    /// control characters escaped (no terminal escapes from a client).
    fn text(&mut self, name: &str, value: &[u8]) {
        self.name(name);
        // The usual value, printable ASCII with nothing to escape, is
        // copied; anything else goes the long way.
        let plain = value.iter().all(|&b| (0x20..0x7f).contains(&b) && !(self.json && (b == b'"' || b == b'\\')));
        if plain {
            if self.json {
                self.line.push(b'"');
            }
            self.line.extend_from_slice(value);
            if self.json {
                self.line.push(b'"');
            }
            return;
        }
        let value = String::from_utf8_lossy(value);
        if self.json {
            let _ = serde_json::to_writer(&mut *self.line, &*value);
            return;
        }
        for c in value.chars() {
            if c.is_control() {
                let _ = write!(self.line, "\\u{{{:x}}}", u32::from(c));
            } else {
                let mut utf8 = [0; 4];
                self.line.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }

    fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        self.line.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Milliseconds with two decimals (a string in JSON, as before), or `-`.
    fn millis(&mut self, name: &str, value: Option<Duration>) {
        self.name(name);
        if self.json {
            self.line.push(b'"');
        }
        match value {
            Some(d) => {
                let hundredths = hundredths_of_ms(d);
                self.line.extend_from_slice(itoa::Buffer::new().format(hundredths / 100).as_bytes());
                let cents = (hundredths % 100) as u8;
                self.line.extend_from_slice(&[b'.', b'0' + cents / 10, b'0' + cents % 10]);
            }
            None => self.line.push(b'-'),
        }
        if self.json {
            self.line.push(b'"');
        }
    }

    fn end(&mut self) {
        if self.json {
            self.line.extend_from_slice(b",\"target\":\"access\"}");
        }
        self.line.push(b'\n');
    }
}

/// A duration in milliseconds with two decimals, or `-`.
struct Millis(Option<Duration>);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(d) = self.0 else { return f.write_str("-") };
        let hundredths = hundredths_of_ms(d);
        write!(f, "{}.{:02}", hundredths / 100, hundredths % 100)
    }
}

/// Hundredths of a millisecond, rounded: integer arithmetic, where `{:.2}`
/// of a float cost a thousand instructions a field.
fn hundredths_of_ms(d: Duration) -> u64 {
    u64::try_from((d.as_nanos() + 5_000) / 10_000).unwrap_or(u64::MAX)
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
            host: "3000-sbx-1".to_string(),
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
    fn milliseconds_have_two_decimals_rounded() {
        let ms = |d| {
            let mut line = Vec::new();
            Fields { line: &mut line, json: false }.millis("ms", Some(d));
            let written = String::from_utf8(line).unwrap();
            assert_eq!(written, format!(" ms={}", Millis(Some(d))));
            written[4..].to_string()
        };
        assert_eq!(ms(Duration::from_nanos(0)), "0.00");
        assert_eq!(ms(Duration::from_nanos(4_999)), "0.00");
        assert_eq!(ms(Duration::from_nanos(5_000)), "0.01");
        assert_eq!(ms(Duration::from_micros(1_995)), "2.00");
        assert_eq!(ms(Duration::from_millis(61_234)), "61234.00");
        assert_eq!(Millis(None).to_string(), "-");
    }

    #[test]
    fn the_clock_writes_microseconds_after_the_cached_second() {
        let mut clock = Clock::default();
        let mut out = Vec::new();
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_464_080, 42_000);
        clock.write(&mut out, t);
        assert_eq!(String::from_utf8_lossy(&out), "2026-11-23T20:01:20.000042Z");
        out.clear();
        clock.write(&mut out, t + Duration::from_millis(999));
        assert_eq!(String::from_utf8_lossy(&out), "2026-11-23T20:01:20.999042Z");
        out.clear();
        clock.write(&mut out, t + Duration::from_secs(86_400 * 40));
        assert_eq!(String::from_utf8_lossy(&out), "2027-01-02T20:01:20.000042Z");
    }

    #[test]
    fn only_verified_keys_are_shown() {
        assert_eq!(logged_host(Some(3000), Some("sbx-1"), true), "3000-sbx-1");
        assert_eq!(logged_host(Some(3000), Some("k3v9tokenq2"), false), "3000-<signed>");
        assert_eq!(logged_host(None, None, false), "-");
    }
}
