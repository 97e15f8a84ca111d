//! Metrics (SPEC 8): what `/metrics` counts in front of the Daytona API, and
//! a real Prometheus (Debian's `prometheus`, started here) scraping the proxy
//! and answering a `histogram_quantile` query over its histogram.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts `/metrics` for `proxy` on a free port.
async fn metrics_listener(proxy: &TestProxy) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(preview_proxy::server::serve_metrics(listener, proxy.proxy.clone()));
    addr
}

async fn scrape(addr: SocketAddr) -> String {
    let req = Request::builder().uri(format!("http://{addr}/metrics")).body(empty()).unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// The value of the sample `series` (name and labels exactly as written).
fn value(text: &str, series: &str) -> f64 {
    let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
    let line = line.unwrap_or_else(|| panic!("{series} missing from:\n{text}"));
    line[series.len()..].trim().parse().unwrap()
}

#[tokio::test]
async fn control_plane_calls_cache_lookups_latency_and_bytes_are_counted() {
    let app = App::start().await;
    let api = MockApi::start().await;
    api.add("sbx-1", true, Some(&app.url()));
    let proxy = TestProxy::start(api_config(&api)).await;
    let metrics = metrics_listener(&proxy).await;

    let host = "3000-sbx-1.preview.localhost";
    for _ in 0..3 {
        assert_eq!(get(&proxy, host, "/").await.status, 200);
    }
    let posted = send(&proxy, "POST", host, "/upload", &[], full(vec![b'x'; 1000])).await;
    assert_eq!(posted.status, 200);
    // A fifth request, on a keep-alive connection that stays open over the
    // scrape (a preview host: it goes to the app).
    let mut open = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    open.write_all(format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    open.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let text = scrape(metrics).await;

    let calls = |endpoint: &str| {
        value(&text, &format!("preview_proxy_control_plane_requests_total{{endpoint=\"{endpoint}\",outcome=\"ok\"}}"))
    };
    assert_eq!((calls("public"), calls("runner")), (1.0, 1.0), "{text}");
    assert_eq!(value(&text, "preview_proxy_control_plane_request_duration_seconds_count{endpoint=\"runner\"}"), 1.0);
    let lookups = |cache: &str, result: &str| {
        value(&text, &format!("preview_proxy_cache_lookups_total{{cache=\"{cache}\",result=\"{result}\"}}"))
    };
    assert_eq!((lookups("public", "miss"), lookups("public", "hit")), (1.0, 4.0));
    assert_eq!((lookups("runner", "miss"), lookups("runner", "hit")), (1.0, 4.0));
    assert_eq!(value(&text, "preview_proxy_request_duration_seconds_count{class=\"2xx\"}"), 5.0);
    assert_eq!(value(&text, "preview_proxy_request_duration_seconds_bucket{le=\"+Inf\",class=\"2xx\"}"), 5.0);
    assert_eq!(value(&text, "preview_proxy_upstream_response_headers_seconds_count"), 5.0);
    assert!(value(&text, "preview_proxy_upstream_connect_seconds_count") >= 1.0);
    assert_eq!(value(&text, "preview_proxy_bytes_total{direction=\"in\"}"), 1000.0);
    assert!(value(&text, "preview_proxy_bytes_total{direction=\"out\"}") > 0.0);
    // The open client connection, and the proxy's connection to the app
    // idle in the pool.
    assert_eq!(value(&text, "preview_proxy_client_connections{protocol=\"h1\"}"), 1.0, "{text}");
    assert_eq!(value(&text, "preview_proxy_client_connections{protocol=\"h2\"}"), 0.0, "{text}");
    assert!(value(&text, "preview_proxy_upstream_connections{state=\"idle\"}") >= 1.0, "{text}");
    assert_eq!(value(&text, "preview_proxy_upstream_connections{state=\"busy\"}"), 0.0, "{text}");
    // No label takes a sandbox id, a host or a path.
    assert!(!text.contains("sbx-1") && !text.contains("/upload"), "{text}");
}

#[tokio::test]
async fn the_per_sandbox_limit_counts_its_429s() {
    let app = App::start().await;
    let api = MockApi::start().await;
    api.add("sbx-1", true, Some(&app.url()));
    let mut config = api_config(&api);
    config.max_connections_per_sandbox = 1;
    let proxy = TestProxy::start(config).await;
    let metrics = metrics_listener(&proxy).await;
    // A streaming answer holds the sandbox's one permit until it is read.
    let held = client()
        .request(
            Request::builder()
                .uri(proxy.url("/stream"))
                .header("host", "3000-sbx-1.preview.localhost")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(get(&proxy, "3000-sbx-1.preview.localhost", "/").await.status, 429);
    drop(held);
    let text = scrape(metrics).await;
    assert_eq!(value(&text, "preview_proxy_sandbox_limit_rejections_total"), 1.0, "{text}");
    assert_eq!(value(&text, "preview_proxy_errors_total{code=\"TOO_MANY_CONNECTIONS\"}"), 1.0);
}

/// A Prometheus server on a free port, scraping `target` every second;
/// killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: preview-proxy\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's prometheus package is installed (scripts/test installs it)");
        Prometheus { child, addr, _dir: dir }
    }

    /// Runs a PromQL instant query; the JSON answer's `data.result`.
    async fn query(&self, promql: &str) -> Option<serde_json::Value> {
        let query: String = encode(promql);
        let req =
            Request::builder().uri(format!("http://{}/api/v1/query?query={query}", self.addr)).body(empty()).unwrap();
        let resp = client().request(req).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        assert_eq!(json["status"], "success", "{json}");
        Some(json["data"]["result"].clone())
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_proxy_and_answers_a_quantile_query() {
    let app = App::start().await;
    let api = MockApi::start().await;
    api.add("sbx-1", true, Some(&app.url()));
    let proxy = TestProxy::start(api_config(&api)).await;
    let metrics = metrics_listener(&proxy).await;
    let prometheus = Prometheus::start(metrics);

    // Traffic between scrapes until the rate over them has a quantile.
    let promql = "histogram_quantile(0.99, sum(rate(preview_proxy_request_duration_seconds_bucket[1m])) by (le))";
    let deadline = Instant::now() + Duration::from_secs(60);
    let p99 = loop {
        for _ in 0..20 {
            assert_eq!(get(&proxy, "3000-sbx-1.preview.localhost", "/").await.status, 200);
        }
        let answer = prometheus.query(promql).await;
        let number = answer.as_ref().and_then(|r| r[0]["value"][1].as_str()?.parse::<f64>().ok());
        if let Some(p99) = number.filter(|n| n.is_finite()) {
            break p99;
        }
        assert!(Instant::now() < deadline, "no quantile from Prometheus in 60 s; last answer: {answer:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Local answers take well under the top finite bucket (30 s).
    assert!(p99 > 0.0 && p99 <= 30.0, "p99 {p99}");
    // The scrape itself was healthy, and the counters arrived as counters.
    let up = prometheus.query("up{job=\"preview-proxy\"}").await.unwrap();
    assert_eq!(up[0]["value"][1], "1", "{up}");
    let calls = prometheus.query("preview_proxy_control_plane_requests_total{endpoint=\"runner\",outcome=\"ok\"}");
    let calls = calls.await.unwrap();
    assert_eq!(calls[0]["value"][1], "1", "{calls}");
}
