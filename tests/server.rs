//! The server: the proxy's own routes, HTTP/1.1 limits, graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::TcpStream;

const DEMO: &str = "[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n";

#[tokio::test]
async fn health_answers_on_non_preview_hosts() {
    let (config, _dir, _) = registry_config(DEMO);
    let proxy = TestProxy::start(config).await;
    for host in ["proxy.localhost:4000", "localhost", "daytona-proxy:4000", "my-proxy.example.com", "02280-x.proxy.io"]
    {
        let a = get(&proxy, host, "/health").await;
        assert_eq!(a.status, 200, "{host}");
        assert_eq!(a.json()["status"], "ok");
        assert_eq!(a.json()["version"], env!("CARGO_PKG_VERSION"));
    }
    let a = send(&proxy, "HEAD", "localhost", "/health", &[], empty()).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn other_paths_on_non_preview_hosts_are_404_with_a_message() {
    let (config, _dir, _) = registry_config(DEMO);
    let proxy = TestProxy::start(config).await;
    let a = get(&proxy, "proxy.localhost", "/anything").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["code"], "NOT_FOUND");
    assert!(a.json()["message"].as_str().unwrap().contains("<port>-<sandboxId>"));
    let a = send(&proxy, "GET", "proxy.localhost", "/anything", &[("accept", "text/html,*/*")], empty()).await;
    assert_eq!(a.status, 404);
    assert!(a.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(a.text().contains("No preview at this address"));
}

#[tokio::test]
async fn health_on_a_preview_host_belongs_to_the_app() {
    let app = App::start().await;
    let (config, _dir, _) = registry_config(DEMO);
    let proxy = TestProxy::start(config).await;
    let a = get(&proxy, &format!("{}-demo.preview.localhost", app.addr.port()), "/health").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "/health", "the app answered, not the proxy");
}

#[tokio::test]
async fn allowed_base_domains_restrict_preview_hosts() {
    let app = App::start().await;
    let (mut config, _dir, _) = registry_config(DEMO);
    config.allowed_base_domains = vec!["preview.example.com".into()];
    let proxy = TestProxy::start(config).await;
    let port = app.addr.port();
    assert_eq!(get(&proxy, &format!("{port}-demo.preview.example.com"), "/").await.status, 200);
    assert_eq!(get(&proxy, &format!("{port}-demo.evil.com"), "/").await.status, 404);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    // The app holds its answer until the test releases it.
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let wait = std::sync::Arc::new(tokio::sync::Mutex::new(Some(wait)));
    let app = serve(move |_req| {
        let wait = wait.clone();
        async move {
            let wait = wait.lock().await.take().unwrap();
            let stream = futures_util::stream::once(async move {
                let _ = wait.await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(b"finished")))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
    })
    .await;
    let (config, _dir, _) = registry_config(DEMO);
    let mut proxy = TestProxy::start(config).await;
    let req = Request::builder()
        .uri(proxy.url("/slow"))
        .header("host", format!("{}-demo.preview.localhost", app.port()))
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);

    proxy.shutdown();
    // No new connections once shutdown has started.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(proxy.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "the listener was closed");
    assert!(!proxy.done.is_finished());

    release.send(()).unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "finished");
    tokio::time::timeout(Duration::from_secs(5), &mut proxy.done).await.expect("server stops").unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_wait() {
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<()>();
    let app = serve(move |_req| {
        let arrived = arrived.clone();
        async move {
            arrived.send(()).unwrap();
            std::future::pending::<()>().await;
            unreachable!()
        }
    })
    .await;
    let (mut config, _dir, _) = registry_config(DEMO);
    config.shutdown_timeout = Duration::from_millis(200);
    let mut proxy = TestProxy::start(config).await;
    let req = Request::builder()
        .uri(proxy.url("/hang"))
        .header("host", format!("{}-demo.preview.localhost", app.port()))
        .body(empty())
        .unwrap();
    let pending = tokio::spawn(client().request(req));
    arrivals.recv().await.unwrap(); // the request is in flight at the app
    proxy.shutdown();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), &mut proxy.done)
        .await
        .expect("stops after the shutdown timeout")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200), "waited for the in-flight request");
    pending.abort();
}

#[tokio::test]
async fn slow_header_senders_are_cut_off() {
    let (mut config, _dir, _) = registry_config(DEMO);
    config.header_read_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start(config).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: loc").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the proxy closed the connection");
}

#[tokio::test]
async fn metrics_count_answers_by_class_and_error_code() {
    let app = App::start().await;
    let (config, _dir, _) = registry_config(DEMO);
    let proxy = TestProxy::start(config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    tokio::spawn(preview_proxy::server::serve_metrics(listener, proxy.proxy.clone()));

    let host = format!("{}-demo.preview.localhost", app.addr.port());
    for _ in 0..3 {
        assert_eq!(get(&proxy, &host, "/").await.status, 200);
    }
    assert_eq!(get(&proxy, "proxy.localhost", "/nothing").await.status, 404);
    assert_eq!(get(&proxy, "3000-nosuch.preview.localhost", "/").await.status, 401);

    let req = Request::builder().uri(format!("http://{metrics_addr}/metrics")).body(empty()).unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for line in [
        "preview_proxy_responses_total{class=\"2xx\"} 3",
        "preview_proxy_responses_total{class=\"4xx\"} 2",
        "preview_proxy_errors_total{code=\"NOT_FOUND\"} 1",
        "preview_proxy_errors_total{code=\"UNAUTHORIZED\"} 1",
        "preview_proxy_tunnels_open 0",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}
