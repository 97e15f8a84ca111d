//! The exposition: one scrape's totals written by prometheus-client's
//! text encoder (OpenMetrics), with the names and help operators read.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::{Counts, Endpoint, CACHE_NAMES, CACHE_RESULTS, CALL_OUTCOMES, ERROR_CODES};

/// One scrape's totals.
pub(super) struct Scrape {
    pub counts: Counts,
    pub open_tunnels: usize,
    pub idle: usize,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// A counter family with one label.
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, key: &str, values: &[(&str, u64)]) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(*n).encode(family.encode_family(&[(key, *value)])?)?;
    }
    Ok(())
}

/// A gauge family with one label.
fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, key: &str, values: &[(&str, i64)]) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, n) in values {
        ConstGauge::new(*n).encode(family.encode_family(&[(key, *value)])?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let c = &self.counts;
        let by_class: Vec<_> = CLASSES.iter().zip(&c.responses).map(|(k, n)| (*k, load(n))).collect();
        counter(&mut e, "responses", "Answers sent to clients, by status class.", "class", &by_class)?;
        let seconds = Some(&Unit::Seconds);
        let help =
            "Time from a request's arrival to its answer's head (a streamed body is not included), by status class.";
        let mut family = e.encode_descriptor("request_duration", help, seconds, MetricType::Histogram)?;
        for (class, h) in CLASSES.iter().zip(&c.duration) {
            h.encode(family.encode_family(&[("class", *class)])?)?;
        }
        let by_code: Vec<_> = ERROR_CODES.iter().zip(&c.errors).map(|(k, n)| (*k, load(n))).collect();
        counter(&mut e, "errors", "Answers the proxy made itself, by error code.", "code", &by_code)?;
        let help = "Requests refused with 429 by MAX_CONNECTIONS_PER_SANDBOX.";
        let limited = e.encode_descriptor("sandbox_limit_rejections", help, None, MetricType::Counter)?;
        ConstCounter::new(load(&c.limited)).encode(limited)?;
        for (name, help, h) in [
            ("upstream_connect", "Time to open a connection to a runner or app.", &c.upstream_connect),
            (
                "upstream_response_headers",
                "Time from sending a request upstream to its response head.",
                &c.upstream_headers,
            ),
        ] {
            h.encode(e.encode_descriptor(name, help, seconds, MetricType::Histogram)?)?;
        }
        let open = c.upstream_open.load(Ordering::Relaxed);
        let idle = i64::try_from(self.idle).unwrap_or(i64::MAX).min(open.max(0));
        let help = "Upstream connections: idle in the pool, or busy with a request or tunnel.";
        gauge(&mut e, "upstream_connections", help, "state", &[("idle", idle), ("busy", open - idle)])?;
        let mut family = e.encode_descriptor(
            "control_plane_requests",
            "Control-plane API calls, by endpoint and outcome (ok, refused: a definite 4xx, unavailable: after retries).",
            None,
            MetricType::Counter,
        )?;
        for (endpoint, outcomes) in Endpoint::ALL.iter().zip(&c.calls) {
            for (outcome, n) in CALL_OUTCOMES.iter().zip(outcomes) {
                let labels = [("endpoint", endpoint.label()), ("outcome", *outcome)];
                ConstCounter::new(load(n)).encode(family.encode_family(&labels)?)?;
            }
        }
        let help = "Control-plane API call latency (retries included), by endpoint.";
        let mut family = e.encode_descriptor("control_plane_request_duration", help, seconds, MetricType::Histogram)?;
        for (endpoint, h) in Endpoint::ALL.iter().zip(&c.call_latency) {
            h.encode(family.encode_family(&[("endpoint", endpoint.label())])?)?;
        }
        let mut family = e.encode_descriptor(
            "cache_lookups",
            "Control-plane cache lookups, by cache and result (hit, miss, stale: expired entry served while the control plane is down).",
            None,
            MetricType::Counter,
        )?;
        for (cache, results) in CACHE_NAMES.iter().zip(&c.cache) {
            for (result, n) in CACHE_RESULTS.iter().zip(results) {
                ConstCounter::new(load(n)).encode(family.encode_family(&[("cache", *cache), ("result", *result)])?)?;
            }
        }
        let [h1, h2] = [&c.connections[0], &c.connections[1]].map(|a| a.load(Ordering::Relaxed));
        let help = "Open client connections, by protocol.";
        gauge(&mut e, "client_connections", help, "protocol", &[("h1", h1), ("h2", h2)])?;
        ConstGauge::new(c.parked.load(Ordering::Relaxed)).encode(e.encode_descriptor(
            "client_connections_parked",
            "Idle HTTP/1 connections parked: their buffers given back until the next request (counted in client_connections too).",
            None,
            MetricType::Gauge,
        )?)?;
        let tunnels = i64::try_from(self.open_tunnels).unwrap_or(i64::MAX);
        ConstGauge::new(tunnels).encode(e.encode_descriptor(
            "tunnels_open",
            "Open WebSocket tunnels.",
            None,
            MetricType::Gauge,
        )?)?;
        let bytes = [("in", load(&c.bytes_in)), ("out", load(&c.bytes_out))];
        let help = "Body and tunnel bytes from clients (in) and to them (out); a tunnel counts when it closes.";
        counter(&mut e, "bytes", help, "direction", &bytes)
    }
}
