//! Hostile clients and broken peers, on raw sockets (SPEC 2, 3, 6, 7): a
//! friendly client library buffers, retries or reassembles, and hides what
//! an attacker's bytes would show.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy with public sandbox `demo` served straight from 127.0.0.1.
async fn proxy(adjust: impl FnOnce(&mut preview_proxy::config::Config)) -> (TestProxy, tempfile::TempDir) {
    let (mut config, dir, _) =
        registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    adjust(&mut config);
    (TestProxy::start(config).await, dir)
}

/// Reads until the end of a response head; returns it.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "connection closed inside the head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Sends a raw request that asks for `Connection: close`; returns the whole answer.
async fn raw(proxy: &TestProxy, request: &str) -> String {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("the proxy answers");
    String::from_utf8_lossy(&out).into_owned()
}

/// An app that accepts one WebSocket upgrade per connection and then, at
/// the same time and independently, sends `send` bytes and reads whatever
/// comes (the count is in the returned counter). It never looks at frames:
/// the proxy only moves bytes.
async fn full_duplex_app(send: usize) -> (u16, Arc<AtomicU64>) {
    let listener = app_listener().await;
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                read_head(&mut s).await;
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await
                    .unwrap();
                let (mut r, mut w) = s.into_split();
                let writer = tokio::spawn(async move {
                    let chunk = vec![b'a'; 64 * 1024];
                    let mut left = send;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if w.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::SeqCst);
                }
                writer.abort();
            });
        }
    });
    (port, received)
}

/// Opens a WebSocket through the proxy on a raw socket; returns it after
/// the 101.
async fn upgrade(proxy: &TestProxy, port: u16) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {port}-demo.preview.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

#[tokio::test]
async fn a_websocket_moves_both_ways_while_the_client_writes_without_reading() {
    const SIZE: usize = 32 * 1024 * 1024;
    let (app_port, received) = full_duplex_app(SIZE).await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let s = upgrade(&proxy, app_port).await;
    let (mut r, mut w) = s.into_split();
    let done = async {
        // All of it is written before a single byte is read: the app's
        // stream towards this client backs up meanwhile.
        let chunk = vec![b'b'; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            w.write_all(&chunk).await.unwrap();
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < SIZE {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "tunnel closed after {got} bytes");
            got += n;
        }
        wait_for(|| async { received.load(Ordering::SeqCst) == SIZE as u64 }).await;
    };
    tokio::time::timeout(Duration::from_secs(30), done).await.expect("no deadlock: both directions complete");
}

#[tokio::test]
async fn a_tunnel_blocked_on_a_client_that_never_reads_is_closed_after_the_idle_limit() {
    // The app keeps sending; the client reads nothing, ever.
    let (app_port, _) = full_duplex_app(usize::MAX).await;
    let (proxy, _dir) = proxy(|c| c.tunnel_idle_timeout = Duration::from_secs(1)).await;
    let _client = upgrade(&proxy, app_port).await;
    let tunnels = proxy.proxy.tunnels().clone();
    wait_for(|| async { tunnels.open() == 1 }).await;
    wait_for(|| async { tunnels.open() == 0 }).await;
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let (proxy, _dir) = proxy(|_| {}).await;
    let answer =
        raw(&proxy, "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 22-demo.preview.localhost\r\nConnection: close\r\n\r\n")
            .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("METHOD_NOT_ALLOWED"), "{answer}");
}

#[tokio::test]
async fn two_host_headers_are_a_400() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let port = app.addr.port();
    let answer = raw(
        &proxy,
        &format!(
            "GET / HTTP/1.1\r\nHost: {port}-demo.preview.localhost\r\nHost: {port}-other.preview.localhost\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(app.seen().is_empty(), "nothing reached the app");
}

#[tokio::test]
async fn an_h2c_upgrade_is_served_as_plain_http_and_never_tunnelled() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let port = app.addr.port();
    let answer = raw(
        &proxy,
        &format!(
            "GET /x HTTP/1.1\r\nHost: {port}-demo.preview.localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = app.last();
    for name in ["upgrade", "http2-settings"] {
        assert!(seen.headers.get(name).is_none(), "{name} reached the app");
    }
    assert!(!seen.headers.get("connection").is_some_and(|v| v.to_str().unwrap().contains("pgrade")));
}

#[tokio::test]
async fn an_untrusted_clients_forwarded_and_x_real_ip_never_reach_the_app() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|c| c.trusted_proxies = vec![]).await;
    let host = format!("{}-demo.preview.localhost", app.addr.port());
    let a = send(
        &proxy,
        "GET",
        &host,
        "/",
        &[("forwarded", "for=6.6.6.6;host=evil.com"), ("x-real-ip", "6.6.6.6"), ("x-forwarded-host", "evil.com")],
        empty(),
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = app.last();
    assert!(seen.headers.get("forwarded").is_none() && seen.headers.get("x-real-ip").is_none());
    assert_eq!(seen.headers["x-forwarded-host"], host);
}

#[tokio::test]
async fn same_origin_requests_get_no_cors_headers_and_preflights_vary() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let host = format!("{}-demo.preview.localhost", app.addr.port());
    let same = send(&proxy, "GET", &host, "/", &[("origin", &format!("http://{host}"))], empty()).await;
    assert_eq!(same.status, 200);
    assert!(same.headers.get("access-control-allow-origin").is_none(), "{:?}", same.headers);
    let cross = send(&proxy, "GET", &host, "/", &[("origin", "http://localhost:5173")], empty()).await;
    assert_eq!(cross.headers["access-control-allow-origin"], "http://localhost:5173");
    let preflight = send(
        &proxy,
        "OPTIONS",
        &host,
        "/",
        &[("origin", "http://localhost:5173"), ("access-control-request-method", "PUT")],
        empty(),
    )
    .await;
    assert_eq!(preflight.status, 204);
    let vary = preflight
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    assert!(vary.contains("origin") && vary.contains("access-control-request-method"), "{vary}");
}

/// Connects and returns how long the proxy took to close a connection
/// after `send` was written (the answer, if any, is read and discarded).
async fn closed_after(proxy: &TestProxy, send: &[u8]) -> Duration {
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(send).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await.expect("closed").ok();
    started.elapsed()
}

#[tokio::test]
async fn a_silent_connection_and_half_an_h2_preface_are_closed_after_the_header_limit() {
    let (proxy, _dir) = proxy(|c| c.header_read_timeout = Duration::from_secs(1)).await;
    for send in [&b""[..], b"PRI * HTTP/2.0\r\n", b"GET / HTTP/1.1\r\nHost: x"] {
        let took = closed_after(&proxy, send).await;
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{send:?}: {took:?}");
    }
}

#[tokio::test]
async fn idle_keep_alive_has_its_own_limit_apart_from_the_header_limit() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(3);
    })
    .await;
    let request = format!("GET / HTTP/1.1\r\nHost: {}-demo.preview.localhost\r\n\r\n", app.addr.port());
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().trim().parse().unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        // Idle for longer than the header limit, well inside the idle one:
        // the connection is still there for the next request.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Then idle past the idle limit: closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection is closed after IDLE_TIMEOUT_SEC");
    // A request started on a kept-alive connection still has only the
    // header limit to finish its headers.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_head(&mut s).await;
    let started = std::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await.expect("closed");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "slow headers after keep-alive: closed after {took:?}");
}

#[tokio::test]
async fn an_idle_http2_connection_gets_a_goaway() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|c| c.idle_timeout = Duration::from_secs(1)).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{}-demo.preview.localhost/", app.addr.port()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the proxy ended the idle HTTP/2 connection");
}

/// The count of 5xx answers in the proxy's metrics.
fn server_errors(proxy: &TestProxy) -> u64 {
    let text = proxy.proxy.proxy.shared.metrics.render(0);
    let line = text.lines().find(|l| l.starts_with("preview_proxy_responses_total{class=\"5xx\"}")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400_not_a_502() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let answer = raw(
        &proxy,
        &format!(
            "POST /upload HTTP/1.1\r\nHost: {}-demo.preview.localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            app.addr.port()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("BAD_REQUEST_BODY"), "{answer}");
    assert_eq!(server_errors(&proxy), 0, "a client's mistake is not a server error");
}

#[tokio::test]
async fn a_stalled_upload_gets_408() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|c| c.request_body_timeout = Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}-demo.preview.localhost\r\nContent-Length: 100\r\nConnection: close\r\n\r\n0123456789",
        app.addr.port()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("answered");
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_BODY_TIMEOUT"), "{answer}");
    assert_eq!(server_errors(&proxy), 0);
}

/// An app on a raw socket: reads a request head, writes `answer`, then
/// holds the connection open for `hold` and closes it. Returns its port.
async fn raw_app(answer: &'static [u8], hold: Duration) -> u16 {
    let listener = app_listener().await;
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_head(&mut s).await;
                let _ = s.write_all(answer).await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_stalled_download_is_aborted_never_ended_cleanly() {
    // The app sends its head and 10 of 100 bytes, then nothing.
    let port = raw_app(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", Duration::from_secs(60)).await;
    let (proxy, _dir) = proxy(|c| c.response_idle_timeout = Some(Duration::from_secs(1))).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {port}-demo.preview.localhost\r\n\r\n").as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body)).await.expect("aborted in time");
    assert!(body.len() < 100, "the client must see a truncated body, got {} bytes", body.len());
}

/// An app that answers a download that never ends; the flag turns true
/// once its writes fail (the proxy let its connection go). Returns its port.
async fn endless_download_app() -> (u16, Arc<AtomicBool>) {
    let listener = app_listener().await;
    let port = listener.local_addr().unwrap().port();
    let failed = Arc::new(AtomicBool::new(false));
    let flag = failed.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_head(&mut s).await;
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n".to_vec();
        while s.write_all(&out).await.is_ok() {
            out = vec![b'x'; 64 * 1024];
        }
        flag.store(true, Ordering::SeqCst);
    });
    (port, failed)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_response_idle_limit() {
    // Nothing else would end it: the app always has more to send, and the
    // client neither reads nor leaves.
    let (port, app_let_go) = endless_download_app().await;
    let (proxy, _dir) = proxy(|c| c.response_idle_timeout = Some(Duration::from_secs(1))).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {port}-demo.preview.localhost\r\n\r\n").as_bytes()).await.unwrap();
    wait_for(|| async { app_let_go.load(Ordering::SeqCst) }).await;
    // The client's connection is over too, short of the whole answer.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("the connection ended");
    assert!(got.starts_with(b"HTTP/1.1 200") && got.len() < 1_000_000_000, "{} bytes", got.len());
}

#[tokio::test]
async fn a_tunnel_is_bounded_by_the_tunnel_limit_not_the_response_limit() {
    // The client reads nothing for longer than the response limit while
    // the app's bytes back up towards it; the tunnel stays, and every byte
    // arrives once it reads.
    const SIZE: usize = 64 * 1024 * 1024;
    let (app_port, _) = full_duplex_app(SIZE).await;
    let (proxy, _dir) = proxy(|c| c.response_idle_timeout = Some(Duration::from_secs(1))).await;
    let mut s = upgrade(&proxy, app_port).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < SIZE {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("bytes").unwrap();
        assert!(n > 0, "tunnel closed after {got} bytes");
        got += n;
    }
}

/// Opens the app's never-ending `/stream` through the proxy; the answer's
/// head has arrived when this returns.
async fn open_stream(proxy: &TestProxy, host: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("GET /stream HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

#[tokio::test]
async fn a_sandbox_over_its_connection_limit_gets_429() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|c| c.max_connections_per_sandbox = 2).await;
    let host = format!("{}-demo.preview.localhost", app.addr.port());
    let first = open_stream(&proxy, &host).await;
    let _second = open_stream(&proxy, &host).await;
    let a = get(&proxy, &host, "/").await;
    assert_eq!(a.status, 429);
    assert_eq!(a.json()["code"], "TOO_MANY_CONNECTIONS");
    assert!(a.headers.contains_key("retry-after"));
    drop(first);
    wait_for(|| async { get(&proxy, &host, "/").await.status == 200 }).await;
}

#[tokio::test]
async fn requests_wait_a_bounded_time_under_the_upstream_connection_cap() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|c| {
        c.upstream_max_connections = 1;
        c.upstream_connect_timeout = Duration::from_secs(1);
    })
    .await;
    let host = format!("{}-demo.preview.localhost", app.addr.port());
    let stream = open_stream(&proxy, &host).await;
    let started = std::time::Instant::now();
    let a = get(&proxy, &host, "/").await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.json()["code"], "UPSTREAM_BUSY");
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited for a connection first");
    assert_eq!(app.connections(), 1, "never more than the cap");
    drop(stream);
    wait_for(|| async { get(&proxy, &host, "/").await.status == 200 }).await;
    // Kept-alive and reused, still within the cap.
    assert_eq!(get(&proxy, &host, "/").await.status, 200);
    assert_eq!(app.connections(), 2);
}

#[tokio::test]
async fn a_request_arriving_in_pieces_across_the_first_read_is_read_whole() {
    // The proxy's first read of a connection takes up to 4 KiB to tell
    // HTTP/1 from HTTP/2; the rest must follow it to hyper, in order, however
    // the bytes arrive: one byte, then the rest, with a header that goes on
    // past the first read.
    let app = App::start().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let long = "b".repeat(6000);
    let request = format!(
        "GET /in/pieces?x=1 HTTP/1.1\r\nHost: {}-demo.preview.localhost\r\nX-Long: {long}\r\nConnection: close\r\n\r\n",
        app.addr.port()
    );
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&request.as_bytes()[..1]).await.unwrap();
    s.flush().await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(&request.as_bytes()[1..]).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("the proxy answers").unwrap();
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 200"), "{}", &answer[..answer.len().min(200)]);
    let seen = app.last();
    assert_eq!(seen.target, "/in/pieces?x=1");
    assert_eq!(seen.headers["x-long"], long.as_str());
}

#[tokio::test]
async fn request_headers_over_64_kib_get_431() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let big = "a".repeat(70 * 1024);
    let answer = raw(
        &proxy,
        &format!(
            "GET / HTTP/1.1\r\nHost: {}-demo.preview.localhost\r\nX-Big: {big}\r\nConnection: close\r\n\r\n",
            app.addr.port()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{}", &answer[..answer.len().min(200)]);
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn an_http_1_0_app_still_gives_the_client_http_1_1_keep_alive_and_chunks() {
    // Python's http.server: HTTP/1.0, no Content-Length; its body ends
    // when it closes.
    let port = raw_app(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from 1.0", Duration::ZERO).await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {port}-demo.preview.localhost\r\n\r\n").as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
        // Read the chunked body to its last chunk: the connection stays open.
        let mut body = Vec::new();
        while !body.ends_with(b"0\r\n\r\n") {
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed the client's connection");
            body.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&body).contains("hello from 1.0"));
    }
}

#[tokio::test]
async fn an_http_1_0_client_that_asks_for_keep_alive_keeps_its_connection() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        let req = format!(
            "GET / HTTP/1.0\r\nHost: {}-demo.preview.localhost\r\nConnection: keep-alive\r\n\r\n",
            app.addr.port()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.contains(" 200 "), "{head}");
        assert!(head.to_ascii_lowercase().contains("connection: keep-alive"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().to_string()))
            .expect("a length, as HTTP/1.0 keep-alive needs")
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
    }
}

/// An HTTP/2 connection to the proxy (prior knowledge, cleartext).
async fn h2(proxy: &TestProxy) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn one_http2_connection_cannot_fan_out_past_its_stream_limit() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|c| c.max_concurrent_streams = 4).await;
    let sender = h2(&proxy).await;
    let host = format!("{}-demo.preview.localhost", app.addr.port());
    // Ten never-ending streams asked for at once: only four may be open.
    let mut pending = Vec::new();
    for _ in 0..10 {
        let mut sender = sender.clone();
        let req = http::Request::builder()
            .uri(format!("http://{host}/stream"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        pending.push(tokio::spawn(async move { sender.send_request(req).await }));
    }
    wait_for(|| async { app.connections() == 4 }).await;
    // Give the other six every chance to get through, then look again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.connections(), 4, "streams past the limit reached the app");
    for p in pending {
        p.abort();
    }
}

#[tokio::test]
async fn an_http2_host_header_that_disagrees_with_authority_is_a_400() {
    let app = App::start().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let mut sender = h2(&proxy).await;
    let req = http::Request::builder()
        .uri(format!("http://{}-demo.preview.localhost/", app.addr.port()))
        .header("host", "3000-other.preview.localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn an_http2_stream_the_client_opens_no_window_for_is_reset_after_the_response_idle_limit() {
    // The client keeps its connection (it answers pings) but never reads
    // the download, so the stream's window stays shut: hyper then polls
    // neither the socket nor the body, and nothing else would end it.
    use http_body_util::BodyExt;
    let (port, app_let_go) = endless_download_app().await;
    let app = App::start().await;
    let (proxy, _dir) = proxy(|c| c.response_idle_timeout = Some(Duration::from_secs(1))).await;
    let mut sender = h2(&proxy).await;
    let get = |port: u16| {
        http::Request::builder()
            .uri(format!("http://{port}-demo.preview.localhost/"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let stalled = sender.send_request(get(port)).await.unwrap();
    assert_eq!(stalled.status(), 200);
    wait_for(|| async { app_let_go.load(Ordering::SeqCst) }).await;
    // The stream was reset, never ended cleanly; the connection goes on.
    let body =
        tokio::time::timeout(Duration::from_secs(5), stalled.into_body().collect()).await.expect("the stream ended");
    assert!(body.is_err(), "a stalled download ended as if complete");
    let resp = sender.send_request(get(app.addr.port())).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn an_http2_client_that_takes_its_download_in_bursts_gets_all_of_it() {
    // Each pause is under the response limit and their sum is over it:
    // the limit is on one wait with nothing taken, not on the download.
    use http_body_util::BodyExt;
    const SIZE: usize = 6 * 1024 * 1024;
    let app = App::start().await;
    let (proxy, _dir) = proxy(|c| c.response_idle_timeout = Some(Duration::from_secs(1))).await;
    let mut sender = h2(&proxy).await;
    let req = http::Request::builder()
        .uri(format!("http://{}-demo.preview.localhost/download/{SIZE}", app.addr.port()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let (mut got, mut paused) = (0, 0);
    while let Some(frame) = body.frame().await {
        got += frame.expect("the download goes on").data_ref().map_or(0, |d| d.len());
        if got / (1024 * 1024) > paused {
            paused += 1;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    assert_eq!(got, SIZE);
}

#[tokio::test]
async fn an_idle_http2_connection_that_does_not_end_after_its_goaway_is_dropped() {
    // The client never reads an answer whose end h2 still holds for its
    // shut window, and it answers pings: after the idle GOAWAY the
    // connection would wait for that stream forever.
    // The answer arrives in one piece, handed to h2 whole while the
    // client's window has room for a fifth of it: h2 holds the rest.
    let answer = [b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".as_slice(), &[b'x'; 5000]].concat();
    let port = raw_app(answer.leak(), Duration::from_secs(60)).await;
    let (proxy, _dir) = proxy(|c| {
        c.idle_timeout = Duration::from_secs(1);
        c.response_idle_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(1_000)
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{port}-demo.preview.localhost/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let unread = sender.send_request(req).await.unwrap();
    assert_eq!(unread.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the connection was still open 5 s after it went idle");
    drop(unread);
}
