//! The "sandbox app" for the streaming and WebSocket scenarios of
//! `bench/run.sh`. Every path is matched by its ending, so it answers the
//! runner form (`/sandboxes/{id}/toolbox/proxy/{port}/...`) too:
//!
//! - a WebSocket upgrade on any path: echoes every message;
//! - `.../sse`: an event every 10 ms whose data is the send time (Unix
//!   nanoseconds), with `X-Accel-Buffering: no` so nginx streams it;
//! - `.../upload`: reads the body and answers its length;
//! - `.../download/<bytes>`: streams that many bytes in 64 KiB chunks.
//!
//! `cargo run --release --example bench_app -- <listen addr>`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Infallible>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18088".into());
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    eprintln!("bench app on {listen}");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) {
        let accept = derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(io) = upgrade.await else { return };
            let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(empty());
        return Ok(resp.unwrap());
    }
    let path = req.uri().path().to_string();
    if path.ends_with("/sse") {
        let ticks = tokio_stream_interval(Duration::from_millis(10)).map(|_| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {now}\n\n"))))
        });
        let resp = Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-accel-buffering", "no")
            .body(BodyExt::boxed(StreamBody::new(ticks)));
        return Ok(resp.unwrap());
    }
    if path.ends_with("/upload") {
        let mut len = 0u64;
        let mut body = req.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            len += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        return Ok(Response::new(Full::new(Bytes::from(len.to_string())).boxed()));
    }
    if let Some(n) = path.rsplit_once("/download/").and_then(|(_, n)| n.parse::<u64>().ok()) {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = n.div_ceil(chunk.len() as u64);
        let stream = futures_util::stream::iter(0..chunks).map(move |i| {
            let left = n - i * chunk.len() as u64;
            Ok::<_, Infallible>(Frame::data(chunk.slice(..(left as usize).min(chunk.len()))))
        });
        let resp = Response::builder().header(header::CONTENT_LENGTH, n).body(BodyExt::boxed(StreamBody::new(stream)));
        return Ok(resp.unwrap());
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"bench app\n")).boxed()))
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

/// A stream that yields every `period`.
fn tokio_stream_interval(period: Duration) -> impl futures_util::Stream<Item = ()> {
    futures_util::stream::unfold(tokio::time::interval(period), |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    })
}
