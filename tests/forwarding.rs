//! Forwarding: path fidelity, headers, streaming, retries, upstream errors,
//! upgrades, HTTP/2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]
#![allow(clippy::result_large_err)] // tungstenite's handshake callback signature

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A proxy whose registry has sandbox `sbx` on a runner (the given app) and
/// `demo` direct to 127.0.0.1.
async fn proxy_with_runner(runner: &App) -> (TestProxy, tempfile::TempDir) {
    let text = format!(
        "[runners.r]\nproxy_url = \"{}\"\napi_key = \"runner-key\"\n\n[[sandboxes]]\nid = \"sbx\"\npublic = true\nrunner = \"r\"\n\n[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n",
        runner.url()
    );
    let (config, dir, _) = registry_config(&text);
    (TestProxy::start(config).await, dir)
}

/// Writes a raw request and reads the whole answer (the request must ask
/// for `Connection: close`).
async fn raw(proxy: &TestProxy, request: &str) -> String {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn path_and_query_reach_the_runner_byte_for_byte() {
    let runner = App::start().await;
    let (proxy, _dir) = proxy_with_runner(&runner).await;
    let targets = [
        "/_next/static/chunks/app/(local)/%40topbar/%5B%5B...slug%5D%5D/page-x.js",
        "/files/%2Ftmp%2Ffoo.txt",
        "/static/js/main.js",
        "/search?q=a+b&x=%2F%40(y)&x=2&empty=&DAYTONA=keep",
        "/a//b/...?",
        "/%7Euser/%E2%82%AC",
    ];
    for t in targets {
        let a = get(&proxy, "3000-sbx.preview.localhost", t).await;
        assert_eq!(a.status, 200, "{t}");
        assert_eq!(runner.last().target, format!("/sandboxes/sbx/toolbox/proxy/3000{t}"));
    }
}

#[tokio::test]
async fn dot_segments_never_reach_the_runner() {
    let runner = App::start().await;
    let (proxy, _dir) = proxy_with_runner(&runner).await;
    let attacks = [
        "/../../B/toolbox/proxy/3000/x",
        "/%2e%2e/%2e%2e/B/toolbox/proxy/3000/x",
        "/%2E%2E/%2E%2E/B/toolbox/proxy/3000/x",
        "/.%2e/.%2e/B/x",
        "/..%2f..%2fB%2fx",
        "/..%5c..%5cB",
        "/x/..\\..\\..\\B",
        "/./x",
    ];
    for path in attacks {
        let answer = raw(
            &proxy,
            &format!("GET {path} HTTP/1.1\r\nHost: 3000-sbx.preview.localhost\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("BAD_PATH"), "{path}: {answer}");
    }
    assert!(runner.seen().is_empty(), "the runner saw {:?}", runner.seen());
}

#[tokio::test]
async fn headers_are_rewritten_for_the_upstream() {
    let runner = App::start().await;
    let (proxy, _dir) = proxy_with_runner(&runner).await;
    let a = send(
        &proxy,
        "GET",
        "3000-sbx.preview.localhost:4000",
        "/h",
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("te", "trailers"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-daytona-authorization", "Bearer forged"),
            ("x-custom", "kept"),
        ],
        empty(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-app"], "1", "response headers pass through");
    let h = runner.last().headers;
    for gone in ["x-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(!h.contains_key(gone), "{gone} was forwarded");
    }
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "3000-sbx.preview.localhost:4000");
    assert_eq!(h.get_all("x-daytona-authorization").iter().collect::<Vec<_>>(), ["Bearer runner-key"]);
    assert_eq!(h["host"], runner.addr.to_string().as_str());

    // A trusted front proxy's X-Forwarded-Host is kept as it is.
    send(&proxy, "GET", "3000-sbx.preview.localhost", "/h", &[("x-forwarded-host", "app.customer.com")], empty()).await;
    assert_eq!(runner.last().headers["x-forwarded-host"], "app.customer.com");
}

#[tokio::test]
async fn upstream_host_header_preview_sends_the_preview_host() {
    let app = App::start().await;
    let port = app.addr.port();
    let text = "[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n";
    let (mut config, _dir, _) = registry_config(text);
    config.upstream_host_header = preview_proxy::config::UpstreamHost::Preview;
    let proxy = TestProxy::start(config).await;
    let host = format!("{port}-demo.preview.localhost:4000");
    assert_eq!(get(&proxy, &host, "/").await.status, 200);
    assert_eq!(app.last().headers["host"], host.as_str());
}

#[tokio::test]
async fn direct_mode_reaches_the_local_port() {
    let app = App::start().await;
    let (proxy, _dir) = proxy_with_runner(&app).await;
    let port = app.addr.port();
    let a = get(&proxy, &format!("{port}-demo.preview.localhost"), "/direct?x=1").await;
    assert_eq!(a.status, 200);
    let seen = app.last();
    assert_eq!(seen.target, "/direct?x=1");
    assert_eq!(seen.headers["host"], format!("127.0.0.1:{port}").as_str());
    assert!(!seen.headers.contains_key("x-daytona-authorization"));
}

/// Every way of framing a request body, empty ones too, reaches the app
/// as the client framed it: an empty body goes on as none, any other as
/// the client's stream.
#[tokio::test]
async fn request_bodies_arrive_as_framed() {
    let runner = App::start().await;
    let (proxy, _dir) = proxy_with_runner(&runner).await;
    let head = "Host: 3000-sbx.preview.localhost\r\nConnection: close\r\n";
    let empty_sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let abc_sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let cases = [
        ("POST", "Content-Length: 0\r\n\r\n", Some("0"), None, format!("{empty_sha} 0")),
        ("PUT", "Content-Length: 3\r\n\r\nabc", Some("3"), None, format!("{abc_sha} 3")),
        ("POST", "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", None, Some("chunked"), format!("{empty_sha} 0")),
        (
            "POST",
            "Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n",
            None,
            Some("chunked"),
            format!("{abc_sha} 3"),
        ),
        ("DELETE", "\r\n", None, None, format!("{empty_sha} 0")),
    ];
    for (method, rest, length, chunked, answer) in cases {
        let a = raw(&proxy, &format!("{method} /upload HTTP/1.1\r\n{head}{rest}")).await;
        assert!(a.starts_with("HTTP/1.1 200") && a.ends_with(&answer), "{method} {rest:?}: {a}");
        let seen = runner.last();
        assert_eq!(seen.method, method);
        let header = |name: &str| seen.headers.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(header("content-length").as_deref(), length, "{method} {rest:?}");
        assert_eq!(header("transfer-encoding").as_deref(), chunked, "{method} {rest:?}");
    }
}

#[tokio::test]
async fn bodies_stream_both_ways_64_mib() {
    const SIZE: usize = 64 << 20;
    let runner = App::start().await;
    let (proxy, _dir) = proxy_with_runner(&runner).await;
    let host = "3000-sbx.preview.localhost";

    // Upload, streamed in chunks (no Content-Length).
    let chunks = pattern_chunks(SIZE);
    let want = format!("{} {SIZE}", sha256_hex(&chunks));
    let stream = futures_util::stream::iter(
        chunks.into_iter().map(|c| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(c))),
    );
    let a = send(&proxy, "POST", host, "/upload", &[], BodyExt::boxed(StreamBody::new(stream))).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), want);

    // Download.
    let a = get(&proxy, host, &format!("/download/{SIZE}")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), SIZE);
    assert_eq!(sha256_hex(&[a.body]), sha256_hex(&pattern_chunks(SIZE)));
}

/// An upstream that serves one request per connection and then, on the
/// same connection, reads the next request and closes without answering:
/// a pooled connection that went stale under the proxy's feet.
async fn stale_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = app_listener().await;
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = s.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                for round in 0..2 {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).await.unwrap();
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if h == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    seen.lock().unwrap().push(line.trim().to_string());
                    if round == 1 {
                        return; // close without answering
                    }
                    reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn stale_pooled_connection_is_retried_only_when_safe() {
    let (addr, seen) = stale_upstream().await;
    let (config, _dir, _) = registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    let proxy = TestProxy::start(config).await;
    let host = format!("{}-demo.preview.localhost", addr.port());
    let c = client();
    let req = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(proxy.url(path))
            .header("host", host.as_str())
            .body(full("payload"))
            .unwrap()
    };
    // Warm the pool, then a GET hits the stale connection and is retried.
    assert_eq!(c.request(req("GET", "/one")).await.unwrap().status(), 200);
    let get = Request::builder().uri(proxy.url("/two")).header("host", host.as_str()).body(empty()).unwrap();
    assert_eq!(c.request(get).await.unwrap().status(), 200);
    assert_eq!(*seen.lock().unwrap(), ["GET /one HTTP/1.1", "GET /two HTTP/1.1", "GET /two HTTP/1.1"]);

    // A POST on a stale connection is never sent twice.
    seen.lock().unwrap().clear();
    let resp = c.request(req("POST", "/pay")).await.unwrap();
    assert_eq!(resp.status(), 502);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("UPSTREAM_ERROR"));
    assert_eq!(*seen.lock().unwrap(), ["POST /pay HTTP/1.1"]);
}

/// An upstream over its connection limit (nginx past `worker_connections`)
/// closes new connections at once. A request handed back unsent goes again
/// on a new connection, with its target intact.
#[tokio::test]
async fn a_connection_closed_at_accept_costs_no_request() {
    let listener = app_listener().await;
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (a, s) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            if a.fetch_add(1, Ordering::SeqCst) == 0 {
                drop(stream);
                continue;
            }
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).await.unwrap();
                if h == "\r\n" {
                    break;
                }
                headers.push(h.trim().to_ascii_lowercase());
            }
            s.lock().unwrap().push((line.trim().to_string(), headers));
            reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
        }
    });
    let (config, _dir, _) = registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    let proxy = TestProxy::start(config).await;
    let host = format!("{}-demo.preview.localhost", addr.port());
    let a = get(&proxy, &host, "/p%2Fq?x=1").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "sent once: {seen:?}");
    assert_eq!(seen[0].0, "GET /p%2Fq?x=1 HTTP/1.1");
    assert!(seen[0].1.contains(&format!("host: 127.0.0.1:{}", addr.port())), "{:?}", seen[0].1);
}

#[tokio::test]
async fn upstream_connections_are_reused_once_a_response_is_read() {
    let runner = App::start().await;
    let (proxy, _dir) = proxy_with_runner(&runner).await;
    let host = "3000-sbx.preview.localhost";
    for _ in 0..5 {
        assert_eq!(get(&proxy, host, "/a").await.status, 200);
        let a = get(&proxy, host, "/download/100000").await;
        assert_eq!(a.body.len(), 100_000);
        let a = send(&proxy, "HEAD", host, "/b", &[], empty()).await;
        assert_eq!(a.status, 200);
    }
    assert_eq!(runner.seen().len(), 15);
    assert_eq!(runner.connections(), 1, "one upstream connection carried every request");

    // A response the client abandons mid-stream takes its connection with it;
    // the next requests open one new connection and keep it.
    let req = Request::builder().uri(proxy.url("/stream")).header("host", host).body(empty()).unwrap();
    let mut body = client().request(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: hello\n\n");
    drop(body);
    for _ in 0..5 {
        assert_eq!(get(&proxy, host, "/c").await.status, 200);
    }
    assert_eq!(runner.connections(), 2);
}

/// A burst opens as many upstream connections as it has requests at once;
/// a few seconds after it, the pool keeps a page's worth (8 per host and
/// worker) and closes the rest, which would each hold about 42 KiB.
#[tokio::test]
async fn the_upstream_connections_a_burst_opened_are_closed_soon_after_it() {
    const BURST: usize = 20;
    let barrier = Arc::new(tokio::sync::Barrier::new(BURST));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (addr, accepted) = serve_counted(move |_req| {
        let (barrier, arrived) = (barrier.clone(), arrived.clone());
        async move {
            // Every request of the burst is in flight before any is answered.
            if arrived.fetch_add(1, Ordering::SeqCst) < BURST {
                barrier.wait().await;
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let (mut config, _dir, _) =
        registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    config.workers = 1;
    let proxy = TestProxy::start(config).await;
    let host = format!("{}-demo.preview.localhost", addr.port());
    let answers = futures_util::future::join_all((0..BURST).map(|_| get(&proxy, &host, "/"))).await;
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(accepted.load(Ordering::SeqCst), BURST);
    let idle = || gauge(&proxy, "preview_proxy_upstream_connections{state=\"idle\"}");
    assert_eq!(idle(), BURST as f64);

    // Surplus connections wait 5 s, and the pool looks every 2.5 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    while idle() > 8.0 {
        assert!(Instant::now() < deadline, "still {} idle upstream connections", idle());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(idle(), 8.0, "a page's worth stays");
    // And is used: the next requests open no connection.
    for _ in 0..3 {
        assert_eq!(get(&proxy, &host, "/").await.status, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), BURST);
}

#[tokio::test]
async fn upstream_errors_are_clear_and_never_empty() {
    let runner = App::start().await;
    let (proxy, _dir) = proxy_with_runner(&runner).await;

    // Nothing listens on the port (direct mode).
    let port = app_listener().await.local_addr().unwrap().port(); // closed again at once
    let a = get(&proxy, &format!("{port}-demo.preview.localhost"), "/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["code"], "PORT_NOT_LISTENING");
    assert!(a.json()["message"].as_str().unwrap().contains(&port.to_string()));

    // The same as a browser page.
    let a =
        send(&proxy, "GET", &format!("{port}-demo.preview.localhost"), "/", &[("accept", "text/html")], empty()).await;
    assert_eq!(a.status, 502);
    assert!(a.text().contains(&format!("Nothing is listening on port {port}")));

    // A runner's empty 502 means the app's port is not answering.
    let a = get(&proxy, "3000-sbx.preview.localhost", "/empty-502").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["code"], "PORT_NOT_LISTENING");

    // The runner itself is down.
    let text = "[runners.r]\nproxy_url = \"http://127.0.0.1:1\"\napi_key = \"k\"\n[[sandboxes]]\nid = \"sbx\"\npublic = true\nrunner = \"r\"\n";
    let (config, _dir2, _) = registry_config(text);
    let down = TestProxy::start(config).await;
    let a = get(&down, "3000-sbx.preview.localhost", "/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["code"], "RUNNER_UNREACHABLE");
}

#[tokio::test]
async fn upstream_timeout_is_504() {
    let app = serve(|_req| async {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await;
    let (mut config, _dir, _) =
        registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    config.upstream_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start(config).await;
    let a = get(&proxy, &format!("{}-demo.preview.localhost", app.port()), "/").await;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["code"], "UPSTREAM_TIMEOUT");
}

/// The pool keeps each request's response-head timer for later requests:
/// a kept one waits its full time again, after an answer and after a
/// timeout alike (an old deadline left in place would end it at once).
#[tokio::test]
async fn a_kept_upstream_timer_waits_its_full_time_again() {
    let app = serve(|req| async move {
        if req.uri().path() == "/slow" {
            std::future::pending::<()>().await;
        }
        Response::new(full("fast"))
    })
    .await;
    let (mut config, _dir, _) =
        registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    let limit = Duration::from_millis(400);
    config.upstream_timeout = limit;
    let proxy = TestProxy::start(config).await;
    let host = format!("{}-demo.preview.localhost", app.port());
    for path in ["/fast", "/slow", "/slow", "/fast", "/slow"] {
        let started = std::time::Instant::now();
        let a = get(&proxy, &host, path).await;
        let took = started.elapsed();
        match path {
            "/fast" => assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "fast")),
            _ => {
                assert_eq!(a.status, 504, "{path}");
                assert!(took >= limit && took < limit * 5, "{path}: answered after {took:?}");
            }
        }
    }
}

/// An app that sends headers and part of the body, then drops the connection.
async fn truncating_app(head: &'static str) -> u16 {
    let listener = app_listener().await;
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                s.write_all(head.as_bytes()).await.unwrap();
                // Dropping the socket ends the body early.
            });
        }
    });
    port
}

#[tokio::test]
async fn truncated_upstream_body_aborts_the_client() {
    let (config, _dir, _) = registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    let proxy = TestProxy::start(config).await;
    for head in [
        "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly-some-bytes",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ] {
        let port = truncating_app(head).await;
        let req = Request::builder()
            .uri(proxy.url("/"))
            .header("host", format!("{port}-demo.preview.localhost"))
            .body(empty())
            .unwrap();
        let resp = client().request(req).await.expect("headers arrive");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await;
        assert!(body.is_err(), "a truncated body must not end cleanly ({head:?})");
    }
}

#[tokio::test]
async fn server_sent_events_arrive_as_written() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let app = serve(move |_req| {
        let rx = rx.clone();
        async move {
            let rx = rx.lock().await.take().unwrap();
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)), rx))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
    })
    .await;
    let (config, _dir, _) = registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    let proxy = TestProxy::start(config).await;
    let req = Request::builder()
        .uri(proxy.url("/events"))
        .header("host", format!("{}-demo.preview.localhost", app.port()))
        .body(empty())
        .unwrap();
    let mut body = client().request(req).await.unwrap().into_body();
    for i in 0..3 {
        // The next event is written only after the previous one arrived.
        let event = format!("data: event {i}\n\n");
        tx.send(Bytes::from(event.clone())).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("event arrives while the stream is open");
        let data = frame.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data, event.as_bytes());
    }
}

#[tokio::test]
async fn websocket_is_tunnelled() {
    let ws_app = app_listener().await;
    let port = ws_app.local_addr().unwrap().port();
    let protocols = Arc::new(Mutex::new(None));
    let p = protocols.clone();
    tokio::spawn(async move {
        let (stream, _) = ws_app.accept().await.unwrap();
        let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                        mut resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
            *p.lock().unwrap() = req.headers().get("sec-websocket-protocol").cloned();
            resp.headers_mut().insert("sec-websocket-protocol", "chat".parse().unwrap());
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            ws.send(msg).await.unwrap();
        }
    });
    let (config, _dir, _) = registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    let proxy = TestProxy::start(config).await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws",
        proxy.addr
    ))
    .unwrap();
    req.headers_mut().insert("host", format!("{port}-demo.preview.localhost").parse().unwrap());
    req.headers_mut().insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("upgrade through the proxy");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert_eq!(protocols.lock().unwrap().as_ref().unwrap(), "chat, superchat");
    for i in 0..100 {
        let msg = tokio_tungstenite::tungstenite::Message::Text(format!("m{i}"));
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), msg);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn h2c_prior_knowledge_with_concurrent_streams() {
    let runner = App::start().await;
    let (proxy, _dir) = proxy_with_runner(&runner).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let mut sender = sender.clone();
        let ok = ok.clone();
        tasks.spawn(async move {
            let req =
                Request::builder().uri(format!("http://3000-sbx.preview.localhost/h2/{i}")).body(empty()).unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            if status == 200 && body == format!("/sandboxes/sbx/toolbox/proxy/3000/h2/{i}").as_bytes() {
                ok.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(ok.load(Ordering::SeqCst), 100);
    let seen = runner.last();
    assert_eq!(seen.headers["x-forwarded-host"], "3000-sbx.preview.localhost", ":authority is the host");
}

#[tokio::test]
async fn an_absolute_form_target_names_the_sandbox_over_the_host_header() {
    // RFC 9112 3.2.2: the target's authority wins; the Host header names a
    // sandbox that does not exist.
    let runner = App::start().await;
    let (proxy, _dir) = proxy_with_runner(&runner).await;
    let answer = raw(
        &proxy,
        "GET http://3000-sbx.preview.localhost/a/%2F?q=1 HTTP/1.1\r\nHost: 3000-nothere.preview.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = runner.last();
    assert_eq!(seen.target, "/sandboxes/sbx/toolbox/proxy/3000/a/%2F?q=1");
    assert_eq!(seen.headers["x-forwarded-host"], "3000-sbx.preview.localhost");
}
