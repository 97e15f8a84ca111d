//! Counters for `GET /metrics` on `METRICS_PORT` (Prometheus text format),
//! an internal listener apart from the preview traffic.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;

/// Proxy error codes, in the order of [`Metrics::errors`].
pub const ERROR_CODES: [&str; 19] = [
    "NOT_FOUND",
    "SANDBOX_NOT_FOUND",
    "UNAUTHORIZED",
    "BAD_PATH",
    "BAD_REQUEST",
    "METHOD_NOT_ALLOWED",
    "REQUEST_BODY_TIMEOUT",
    "BAD_REQUEST_BODY",
    "TOO_MANY_CONNECTIONS",
    "UPSTREAM_BUSY",
    "CONTROL_PLANE_UNAVAILABLE",
    "CONTROL_PLANE_ERROR",
    "PORT_NOT_LISTENING",
    "RUNNER_UNREACHABLE",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_ERROR",
    "SANDBOX_STARTING",
    "SANDBOX_STOPPING",
    "SANDBOX_NOT_RUNNING",
];

#[derive(Default)]
pub struct Metrics {
    /// Answers by status class, 1xx to 5xx.
    responses: [AtomicU64; 5],
    /// Answers the proxy made itself, by error code.
    errors: [AtomicU64; ERROR_CODES.len()],
}

impl Metrics {
    pub fn response(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, code: &str) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, open_tunnels: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP preview_proxy_responses_total Answers sent to clients, by status class.\n");
        out.push_str("# TYPE preview_proxy_responses_total counter\n");
        for (i, n) in self.responses.iter().enumerate() {
            let _ =
                writeln!(out, "preview_proxy_responses_total{{class=\"{}xx\"}} {}", i + 1, n.load(Ordering::Relaxed));
        }
        out.push_str("# HELP preview_proxy_errors_total Answers the proxy made itself, by error code.\n");
        out.push_str("# TYPE preview_proxy_errors_total counter\n");
        for (code, n) in ERROR_CODES.iter().zip(&self.errors) {
            let _ = writeln!(out, "preview_proxy_errors_total{{code=\"{code}\"}} {}", n.load(Ordering::Relaxed));
        }
        out.push_str("# HELP preview_proxy_tunnels_open Open WebSocket tunnels.\n");
        out.push_str("# TYPE preview_proxy_tunnels_open gauge\n");
        let _ = writeln!(out, "preview_proxy_tunnels_open {open_tunnels}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        m.response(StatusCode::OK);
        m.response(StatusCode::OK);
        m.response(StatusCode::BAD_GATEWAY);
        m.error("PORT_NOT_LISTENING");
        m.error("NO_SUCH_CODE");
        let text = m.render(3);
        assert!(text.contains("preview_proxy_responses_total{class=\"2xx\"} 2"), "{text}");
        assert!(text.contains("preview_proxy_responses_total{class=\"5xx\"} 1"));
        assert!(text.contains("preview_proxy_errors_total{code=\"PORT_NOT_LISTENING\"} 1"));
        assert!(text.contains("preview_proxy_tunnels_open 3"));
    }
}
