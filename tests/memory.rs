//! What the proxy holds per idle connection, counted by the allocator
//! itself: jemalloc, as in the binary, whose statistics say how many bytes
//! are allocated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use common::*;
use tikv_jemalloc_ctl::{Access, AsName};
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
async fn a_parked_connection_holds_no_buffer_of_hyper_and_is_freed_when_closed() {
    // An idle keep-alive connection is parked after a second: hyper's
    // connection and its read and write buffers (8 KiB each at least) are
    // given back, and the connection waits in its worker's lot of parked
    // connections, off tokio's driver. What stays is its slot in the lot,
    // and this side's socket: 437 bytes (this debug build). It was 856
    // while a parked connection kept its registration with tokio and its
    // clock, and 1,674 when each waited in a task of its own, with its own
    // timer and shutdown watch.
    const CONNS: usize = 200;
    // Objects the thread caches count as allocated: no cache, an exact count.
    b"thread.tcache.enabled\0".name().write(false).unwrap();
    let app = serve(|_req| async { hyper::Response::new(full("hello")) }).await;
    let (config, _dir, _) = registry_config(DEMO);
    let proxy = TestProxy::start(config).await;
    let request = format!("GET / HTTP/1.1\r\nHost: {}-demo.preview.localhost\r\n\r\n", app.port());
    let mut kept = Vec::with_capacity(CONNS + 1);
    // Warm-up: caches, the pool's connection to the app, the runtime's own.
    kept.push(one_request(&proxy, &request).await);
    wait_for(|| async { parked(&proxy) == 1.0 }).await;
    let before = allocated();
    for _ in 0..CONNS {
        kept.push(one_request(&proxy, &request).await);
    }
    wait_for(|| async { parked(&proxy) == (CONNS + 1) as f64 }).await;
    let per_connection = allocated().saturating_sub(before) / CONNS;
    eprintln!("{per_connection} bytes allocated per parked connection");
    assert!(per_connection < 640, "{per_connection} bytes allocated per parked connection");

    // Closed by their clients, parked connections leave nothing behind.
    kept.truncate(1);
    wait_for(|| async { parked(&proxy) == 1.0 }).await;
    let left = allocated().saturating_sub(before) / CONNS;
    assert!(left < 128, "{left} bytes per closed connection still allocated");
}
