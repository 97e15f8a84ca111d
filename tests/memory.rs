//! What the proxy holds per idle connection, counted by the allocator
//! itself: jemalloc, as in the binary, whose statistics say how many bytes
//! are allocated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DEMO: &str = "[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n";

/// Bytes allocated in the whole process now.
fn allocated() -> usize {
    tikv_jemalloc_ctl::epoch::advance().unwrap();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap()
}

/// Opens a connection, asks for one page and reads all of it.
async fn one_request(proxy: &TestProxy, request: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"hello") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer ended: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{answer:?}");
    s
}

#[tokio::test]
async fn a_parked_connection_holds_no_buffer_of_hyper() {
    // An idle keep-alive connection is parked after a second: hyper's
    // connection and its read and write buffers (8 KiB each at least) are
    // given back, and the connection waits in a task the size of what it
    // keeps. What stays is that task, its socket's registration and its
    // state: about 2.7 KiB in this (debug) build; 4.2 KiB when it waited
    // in the task that had served it, sized for hyper's connection, and
    // 13 KiB when hyper's read buffer was kept.
    const CONNS: usize = 200;
    let app = serve(|_req| async { hyper::Response::new(full("hello")) }).await;
    let (config, _dir, _) = registry_config(DEMO);
    let proxy = TestProxy::start(config).await;
    let request = format!("GET / HTTP/1.1\r\nHost: {}-demo.preview.localhost\r\n\r\n", app.port());
    // Warm-up: caches, the pool's connection to the app, the runtime's own.
    let mut kept = vec![one_request(&proxy, &request).await];
    wait_for(|| async { parked(&proxy) == 1.0 }).await;
    let before = allocated();
    for _ in 0..CONNS {
        kept.push(one_request(&proxy, &request).await);
    }
    wait_for(|| async { parked(&proxy) == (CONNS + 1) as f64 }).await;
    let per_connection = allocated().saturating_sub(before) / CONNS;
    eprintln!("{per_connection} bytes allocated per parked connection");
    assert!(per_connection < 3584, "{per_connection} bytes allocated per parked connection");
    drop(kept);
}
