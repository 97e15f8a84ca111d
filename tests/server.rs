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
    // No new connections once shutdown has started (each worker closes
    // its listener as it sees the shutdown: up to 5 s on a loaded box).
    wait_for(|| async { TcpStream::connect(proxy.addr).await.is_err() }).await;
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

/// Reads one answer with a `content-length` body; returns its status line.
async fn read_answer(s: &mut TcpStream) -> String {
    read_answer_and_body(s).await.0
}

/// Reads one answer with a `content-length` body: its status line and body.
async fn read_answer_and_body(s: &mut TcpStream) -> (String, String) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed inside a head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().trim().parse().unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (head.lines().next().unwrap().to_string(), String::from_utf8(body).unwrap())
}

/// A keep-alive `GET /` for the demo sandbox, on `app`'s port.
fn get_root(app: &App) -> String {
    format!("GET / HTTP/1.1\r\nHost: {}-demo.preview.localhost\r\n\r\n", app.addr.port())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_parked_and_keeps_its_limits() {
    // Parked (its buffers given back) after a second without a request;
    // its next requests, pipelined, are served, and the idle limit still
    // counts from the last answer.
    let app = App::start().await;
    let (mut config, _dir, _) = registry_config(DEMO);
    (config.header_read_timeout, config.idle_timeout) = (Duration::from_secs(1), Duration::from_secs(3));
    let proxy = TestProxy::start(config).await;
    let request = get_root(&app);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut s).await, "HTTP/1.1 200 OK");
    assert_eq!(parked(&proxy), 0.0);
    wait_for(|| async { parked(&proxy) == 1.0 }).await;
    s.write_all(format!("{request}{request}").as_bytes()).await.unwrap();
    for _ in 0..2 {
        assert_eq!(read_answer(&mut s).await, "HTTP/1.1 200 OK");
    }
    let seen: Vec<_> = app.seen().iter().map(|s| format!("{} {}", s.method, s.target)).collect();
    assert_eq!(seen, ["GET /", "GET /", "GET /"], "every byte reached the app as sent");
    assert_eq!(parked(&proxy), 0.0);
    let answered = std::time::Instant::now();
    wait_for(|| async { parked(&proxy) == 1.0 }).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest)).await.expect("closed").unwrap();
    let took = answered.elapsed();
    assert!(took > Duration::from_millis(2800) && took < Duration::from_millis(3600), "closed after {took:?}");
    assert!(rest.is_empty());
    wait_for(|| async { parked(&proxy) == 0.0 }).await;

    // A request that starts on a parked connection has the header limit
    // for its headers.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut s).await;
    wait_for(|| async { parked(&proxy) == 1.0 }).await;
    let started = std::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest)).await.expect("closed").unwrap();
    let took = started.elapsed();
    assert!(took > Duration::from_millis(800) && took < Duration::from_millis(2500), "closed after {took:?}");
}

#[tokio::test]
async fn an_idle_connection_parks_soon_and_late_once_its_client_came_back_soon() {
    // Parked 100 ms after its answer while its client leaves it parked
    // for more than a second; a second after each answer once its client
    // came back sooner (requests that far apart would each pay a park and
    // a resume).
    let app = App::start().await;
    let (config, _dir, _) = registry_config(DEMO);
    let proxy = TestProxy::start(config).await;
    let request = get_root(&app);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut parked_after = Vec::new();
    for pause in [Duration::ZERO, Duration::from_millis(1200), Duration::ZERO, Duration::ZERO] {
        // How long the connection stays parked before its next request.
        tokio::time::sleep(pause).await;
        s.write_all(request.as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut s).await, "HTTP/1.1 200 OK");
        let answered = std::time::Instant::now();
        assert_eq!(parked(&proxy), 0.0);
        wait_for(|| async { parked(&proxy) == 1.0 }).await;
        parked_after.push(answered.elapsed());
    }
    let [first, after_long, after_short, again] = parked_after[..] else { unreachable!() };
    assert!(first < Duration::from_millis(700), "parked {first:?} after the first answer");
    assert!(after_long < Duration::from_millis(700), "parked {after_long:?} after a long pause");
    assert!(after_short > Duration::from_millis(900), "parked {after_short:?} after a short pause");
    assert!(again > Duration::from_millis(900), "parked {again:?} after the next answer");
}

#[tokio::test]
async fn parked_connections_close_each_at_its_own_idle_limit() {
    // A worker's parked connections wait in one lot, swept for those past
    // their limit: each closes its idle limit after its own last answer,
    // not with the first one due.
    let app = App::start().await;
    let (mut config, _dir, _) = registry_config(DEMO);
    config.idle_timeout = Duration::from_secs(3);
    let proxy = TestProxy::start(config).await;
    let request = get_root(&app);
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    first.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut first).await;
    let first_answered = std::time::Instant::now();
    wait_for(|| async { parked(&proxy) == 1.0 }).await;
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    second.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut second).await;
    let second_answered = std::time::Instant::now();
    wait_for(|| async { parked(&proxy) == 2.0 }).await;
    for (mut s, answered) in [(first, first_answered), (second, second_answered)] {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut rest)).await.expect("closed").unwrap();
        let took = answered.elapsed();
        assert!(took > Duration::from_millis(2800) && took < Duration::from_millis(3600), "closed after {took:?}");
    }
    wait_for(|| async { parked(&proxy) == 0.0 }).await;
}

#[tokio::test]
async fn a_connection_parked_late_closes_at_its_limit_behind_one_parked_soon() {
    // A connection that parks late (a second after its answer) can be due
    // before one that parked soon just before it: the lot sweeps at the
    // earliest deadline all the same.
    let app = App::start().await;
    let (mut config, _dir, _) = registry_config(DEMO);
    config.idle_timeout = Duration::from_secs(2);
    let proxy = TestProxy::start(config).await;
    let request = get_root(&app);
    // Back within a second of its first parking, so it parks late; then
    // busy (a request every 0.5 s) until the lot, empty, stops sweeping.
    let mut late = TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..6 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        late.write_all(request.as_bytes()).await.unwrap();
        read_answer(&mut late).await;
        if i == 0 {
            wait_for(|| async { parked(&proxy) == 1.0 }).await;
        }
    }
    let late_answered = std::time::Instant::now();
    assert_eq!(parked(&proxy), 0.0);
    // Answered 0.7 s later and parked 0.1 s after that: before `late`
    // parks, and due 0.7 s after it (had it parked after `late`, `late`'s
    // deadline would have set the sweep anyway).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut soon = TcpStream::connect(proxy.addr).await.unwrap();
    soon.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut soon).await;
    wait_for(|| async { parked(&proxy) == 2.0 }).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(6), late.read_to_end(&mut rest)).await.expect("closed").unwrap();
    let took = late_answered.elapsed();
    assert!(took > Duration::from_millis(1800) && took < Duration::from_millis(2450), "closed after {took:?}");
}

#[tokio::test]
async fn parked_connections_are_told_apart_as_they_come_and_go() {
    // The lot watches its connections by slot, and a slot is taken again
    // as connections leave and come: each connection's next request is
    // still its own. A connection its client resets leaves like one it
    // closes.
    let app = App::start().await;
    let (config, _dir, _) = registry_config(DEMO);
    let proxy = TestProxy::start(config).await;
    let get = |path: String| format!("GET {path} HTTP/1.1\r\nHost: {}-demo.preview.localhost\r\n\r\n", app.addr.port());
    let mut conns: Vec<(usize, TcpStream)> = Vec::new();
    for i in 0..60 {
        if i == 40 {
            // Every other one leaves: a quarter closed, a quarter reset.
            wait_for(|| async { parked(&proxy) == 40.0 }).await;
            for (n, s) in std::mem::take(&mut conns) {
                match n % 4 {
                    1 => drop(s),
                    3 => {
                        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
                        drop(s);
                    }
                    _ => conns.push((n, s)),
                }
            }
            wait_for(|| async { parked(&proxy) == 20.0 }).await;
        }
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(get(format!("/first/{i}")).as_bytes()).await.unwrap();
        assert_eq!(read_answer_and_body(&mut s).await.1, format!("/first/{i}"));
        conns.push((i, s));
    }
    wait_for(|| async { parked(&proxy) == 40.0 }).await;
    for (i, s) in &mut conns {
        s.write_all(get(format!("/again/{i}")).as_bytes()).await.unwrap();
    }
    for (i, s) in &mut conns {
        assert_eq!(read_answer_and_body(s).await, ("HTTP/1.1 200 OK".into(), format!("/again/{i}")));
    }
    wait_for(|| async { parked(&proxy) == 40.0 }).await;
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_once_when_the_proxy_shuts_down() {
    let app = App::start().await;
    let (mut config, _dir, _) = registry_config(DEMO);
    config.idle_timeout = Duration::from_secs(30);
    let mut proxy = TestProxy::start(config).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let request = get_root(&app);
    s.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut s).await;
    wait_for(|| async { parked(&proxy) == 1.0 }).await;
    proxy.shutdown();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.expect("closed").unwrap();
    assert!(rest.is_empty());
    tokio::time::timeout(Duration::from_secs(5), &mut proxy.done).await.expect("the proxy stopped").unwrap().unwrap();
}
