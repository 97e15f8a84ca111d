//! Access lines as text: formatted by the proxy in the same text and JSON
//! forms as the binary's `tracing` subscriber writes its own lines, and
//! handed to its writer in batches per worker.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing_appender::non_blocking::NonBlocking;

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

/// Writes one line to `to`: the time and level, the fields `fill` writes,
/// the end. `to` is [`Lines::Written`].
pub fn write(to: &Arc<Lines>, fill: impl FnOnce(&mut Fields<'_>)) {
    let Lines::Written { json, .. } = **to else { return };
    // `try_with`: a thread being torn down has no buffer left, and a line
    // dropped then must not panic.
    let _ = PENDING.try_with(|pending| {
        let pending = &mut *pending.borrow_mut();
        if !pending.to.as_ref().is_some_and(|current| Arc::ptr_eq(current, to)) {
            // Another writer's lines (only ever in tests) go first.
            pending.send();
            pending.to = Some(to.clone());
        }
        let first = pending.lines.is_empty();
        let mut f = Fields { line: &mut pending.lines, json };
        f.start(&mut pending.clock);
        fill(&mut f);
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
    let _ = PENDING.try_with(|pending| pending.borrow_mut().send());
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
pub struct Fields<'a> {
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
    pub fn text(&mut self, name: &str, value: &[u8]) {
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

    pub fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        self.line.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Milliseconds with two decimals (a string in JSON, as before), or `-`.
    pub fn millis(&mut self, name: &str, value: Option<Duration>) {
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
pub struct Millis(pub Option<Duration>);

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
