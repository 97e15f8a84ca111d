//! Metrics for `GET /metrics` on `METRICS_PORT`, an internal listener apart
//! from the preview traffic. Each thread (a worker is one) counts into its
//! own [`Counts`], so the hot path never writes a cache line another core
//! writes; a scrape sums every thread's counts and writes them with
//! prometheus-client's text encoder. No label takes unbounded values: no
//! sandbox ids, hosts or paths.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::{MetricEncoder, NoLabelSet};
use prometheus_client::registry::Registry;
use thread_local::ThreadLocal;

use exposition::Scrape;

mod exposition;

/// Proxy error codes, in the order of [`Counts::errors`].
pub const ERROR_CODES: [&str; 23] = [
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
    "SANDBOX_STOPPED",
    "BAD_LOGIN",
    "LOGIN_FAILED",
    "FORBIDDEN",
];

/// Histogram bucket bounds, in microseconds (0.5 ms to 30 s).
const BOUNDS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000,
];

/// Control-plane calls, by what they ask.
#[derive(Clone, Copy)]
pub enum Endpoint {
    Public,
    Runner,
    ValidateToken,
    Access,
    SignedToken,
    State,
    Start,
    LastActivity,
}

impl Endpoint {
    const ALL: [Endpoint; 8] = [
        Endpoint::Public,
        Endpoint::Runner,
        Endpoint::ValidateToken,
        Endpoint::Access,
        Endpoint::SignedToken,
        Endpoint::State,
        Endpoint::Start,
        Endpoint::LastActivity,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Public => "public",
            Endpoint::Runner => "runner",
            Endpoint::ValidateToken => "validate_token",
            Endpoint::Access => "access",
            Endpoint::SignedToken => "signed_token",
            Endpoint::State => "state",
            Endpoint::Start => "start",
            Endpoint::LastActivity => "last_activity",
        }
    }

    /// How errors name the call (its path can hold a token, so never that).
    pub fn describe(self) -> &'static str {
        match self {
            Endpoint::Public => "public-status lookup",
            Endpoint::Runner => "runner lookup",
            Endpoint::ValidateToken => "preview-token check",
            Endpoint::Access => "access check",
            Endpoint::SignedToken => "signed-token lookup",
            Endpoint::State => "sandbox state lookup",
            Endpoint::Start => "sandbox start",
            Endpoint::LastActivity => "last-activity update",
        }
    }
}

/// How a control-plane call ended: a 2xx, another definite answer (a 4xx
/// other than 408/429), or no answer after retries.
#[derive(Clone, Copy)]
pub enum CallOutcome {
    Ok,
    Refused,
    Unavailable,
}

const CALL_OUTCOMES: [&str; 3] = ["ok", "refused", "unavailable"];

/// The caches in front of the control plane.
#[derive(Clone, Copy)]
pub enum CacheName {
    Public,
    Runner,
    Token,
    Access,
    Signed,
    State,
    Start,
}

const CACHE_NAMES: [&str; 7] = ["public", "runner", "token", "access", "signed", "state", "start"];

/// What a cache lookup found: a fresh entry, nothing (the control plane was
/// asked), or an expired entry served while the control plane is down.
#[derive(Clone, Copy)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
}

const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "stale"];

/// A latency histogram: a count per bucket and the sum.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn add_to(&self, total: &Histogram) {
        for (a, b) in self.buckets.iter().chain([&self.sum_us]).zip(total.buckets.iter().chain([&total.sum_us])) {
            b.fetch_add(a.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    fn encode(&self, encoder: MetricEncoder) -> std::fmt::Result {
        let mut encoder = encoder;
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let bounds = BOUNDS_US.iter().map(|us| *us as f64 / 1e6).chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(counts.iter().copied()).collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }
}

/// One thread's counts. Gauges are counted up and down by whoever opens
/// and closes the thing, on the thread that does.
#[derive(Default)]
pub struct Counts {
    /// Answers by status class, 1xx to 5xx.
    responses: [AtomicU64; 5],
    /// Time from a request's arrival to its answer's head, by status class.
    duration: [Histogram; 5],
    /// Answers the proxy made itself, by error code.
    errors: [AtomicU64; ERROR_CODES.len()],
    limited: AtomicU64,
    upstream_connect: Histogram,
    upstream_headers: Histogram,
    upstream_open: AtomicI64,
    calls: [[AtomicU64; CALL_OUTCOMES.len()]; Endpoint::ALL.len()],
    call_latency: [Histogram; Endpoint::ALL.len()],
    cache: [[AtomicU64; CACHE_RESULTS.len()]; CACHE_NAMES.len()],
    /// Open client connections: HTTP/1, HTTP/2.
    connections: [AtomicI64; 2],
    /// Idle HTTP/1 connections parked, without buffers.
    parked: AtomicI64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// Counts a gauge down when dropped.
pub struct Open {
    counts: Arc<Counts>,
    gauge: fn(&Counts) -> &AtomicI64,
}

impl Open {
    fn new(counts: &Arc<Counts>, gauge: fn(&Counts) -> &AtomicI64) -> Open {
        gauge(counts).fetch_add(1, Ordering::Relaxed);
        Open { counts: counts.clone(), gauge }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        (self.gauge)(&self.counts).fetch_sub(1, Ordering::Relaxed);
    }
}

impl Counts {
    /// An answer's head is ready, `elapsed` after the request arrived.
    pub fn response(&self, status: StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.duration[class].observe(elapsed);
    }

    pub fn error(&self, code: &str) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request refused by `MAX_CONNECTIONS_PER_SANDBOX` (429).
    pub fn limited(&self) {
        self.limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_connect(&self, d: Duration) {
        self.upstream_connect.observe(d);
    }

    /// From sending a request upstream to its response head.
    pub fn upstream_headers(&self, d: Duration) {
        self.upstream_headers.observe(d);
    }

    /// An upstream connection, open until the guard drops.
    pub fn upstream_open(self: &Arc<Self>) -> Open {
        Open::new(self, |c| &c.upstream_open)
    }

    pub fn call(&self, endpoint: Endpoint, outcome: CallOutcome, d: Duration) {
        self.calls[endpoint as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.call_latency[endpoint as usize].observe(d);
    }

    pub fn cache(&self, cache: CacheName, result: CacheResult) {
        self.cache[cache as usize][result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection, open until the guard drops.
    pub fn connection(self: &Arc<Self>, h2: bool) -> Open {
        match h2 {
            false => Open::new(self, |c| &c.connections[0]),
            true => Open::new(self, |c| &c.connections[1]),
        }
    }

    /// Idle HTTP/1 connections parked (`change` more, or fewer).
    pub fn parked(&self, change: i64) {
        self.parked.fetch_add(change, Ordering::Relaxed);
    }

    /// Body bytes (and tunnel bytes) from clients and to them.
    pub fn bytes(&self, bytes_in: u64, bytes_out: u64) {
        if bytes_in > 0 {
            self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        }
        if bytes_out > 0 {
            self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        }
    }

    /// Adds these counts to `total`.
    fn add_to(&self, total: &Counts) {
        for (a, b) in self.counters().zip(total.counters()) {
            b.fetch_add(a.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (a, b) in self.gauges().zip(total.gauges()) {
            b.fetch_add(a.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (a, b) in self.histograms().zip(total.histograms()) {
            a.add_to(b);
        }
    }

    fn counters(&self) -> impl Iterator<Item = &AtomicU64> {
        let lists = self.responses.iter().chain(&self.errors).chain(self.calls.iter().flatten());
        lists.chain(self.cache.iter().flatten()).chain([&self.limited, &self.bytes_in, &self.bytes_out])
    }

    fn gauges(&self) -> impl Iterator<Item = &AtomicI64> {
        self.connections.iter().chain([&self.upstream_open, &self.parked])
    }

    fn histograms(&self) -> impl Iterator<Item = &Histogram> {
        let pairs = [&self.upstream_connect, &self.upstream_headers];
        self.duration.iter().chain(&self.call_latency).chain(pairs)
    }
}

/// Counts idle upstream connections of one pool, at a scrape.
type IdleSource = Box<dyn Fn() -> usize + Send + Sync>;

#[derive(Default)]
pub struct Metrics {
    threads: ThreadLocal<Arc<Counts>>,
    idle_sources: Mutex<Vec<IdleSource>>,
}

impl Metrics {
    /// This thread's counts.
    pub fn local(&self) -> &Arc<Counts> {
        self.threads.get_or_default()
    }

    /// Adds a pool whose idle connections a scrape counts.
    pub fn idle_source(&self, source: IdleSource) {
        self.idle_sources.lock().unwrap_or_else(|e| e.into_inner()).push(source);
    }

    /// Every thread's counts, summed.
    fn total(&self) -> Counts {
        let total = Counts::default();
        for counts in self.threads.iter() {
            counts.add_to(&total);
        }
        total
    }

    /// The Prometheus text exposition.
    pub fn render(&self, open_tunnels: usize) -> String {
        let idle: usize = self.idle_sources.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|f| f()).sum();
        let mut registry = Registry::with_prefix("preview_proxy");
        registry.register_collector(Box::new(Scrape { counts: self.total(), open_tunnels, idle }));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_summed_at_a_scrape() {
        let m = Arc::new(Metrics::default());
        m.local().response(StatusCode::OK, Duration::from_millis(3));
        m.local().response(StatusCode::BAD_GATEWAY, Duration::from_secs(60));
        m.local().error("PORT_NOT_LISTENING");
        m.local().error("NO_SUCH_CODE");
        let other = m.clone();
        std::thread::spawn(move || {
            other.local().response(StatusCode::OK, Duration::from_micros(400));
            other.local().cache(CacheName::Runner, CacheResult::Stale);
            other.local().call(Endpoint::Runner, CallOutcome::Unavailable, Duration::from_millis(20));
        })
        .join()
        .unwrap();
        let open = m.local().connection(true);
        let text = m.render(3);
        assert!(text.contains("preview_proxy_responses_total{class=\"2xx\"} 2\n"), "{text}");
        assert!(text.contains("preview_proxy_responses_total{class=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("preview_proxy_errors_total{code=\"PORT_NOT_LISTENING\"} 1\n"));
        assert!(text.contains("preview_proxy_tunnels_open 3\n"), "{text}");
        assert!(text.contains("preview_proxy_client_connections{protocol=\"h2\"} 1\n"), "{text}");
        assert!(text.contains("preview_proxy_cache_lookups_total{cache=\"runner\",result=\"stale\"} 1\n"), "{text}");
        let call = "preview_proxy_control_plane_requests_total{endpoint=\"runner\",outcome=\"unavailable\"} 1\n";
        assert!(text.contains(call), "{text}");
        // Buckets are cumulative: 0.4 ms is under 0.5 ms, 3 ms under 5 ms.
        let bucket = |le: &str| format!("preview_proxy_request_duration_seconds_bucket{{le=\"{le}\",class=\"2xx\"}}");
        assert!(text.contains(&format!("{} 1\n", bucket("0.0005"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", bucket("0.0025"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", bucket("0.005"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", bucket("+Inf"))), "{text}");
        assert!(text.contains("preview_proxy_request_duration_seconds_count{class=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("preview_proxy_request_duration_seconds_sum{class=\"2xx\"} 0.0034\n"), "{text}");
        drop(open);
        assert!(m.render(0).contains("preview_proxy_client_connections{protocol=\"h2\"} 0\n"));
    }

    #[test]
    fn bucket_bounds_are_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_secs(3600));
        assert_eq!(h.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[BOUNDS_US.len()].load(Ordering::Relaxed), 1);
    }
}
