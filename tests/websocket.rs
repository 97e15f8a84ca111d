//! WebSocket tunnels and streaming: messages both ways, close codes, the
//! tunnel count, idle timeout, graceful shutdown, client disconnects and
//! slow clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use preview_proxy::config::Config;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const DEMO: &str = "[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n";

/// A WebSocket app that echoes, closes with 4002 "done" when told
/// `close-me`, and records the close frame it receives.
async fn ws_app() -> (u16, Arc<Mutex<Option<(u16, String)>>>) {
    let listener = app_listener().await;
    let port = listener.local_addr().unwrap().port();
    let closed = Arc::new(Mutex::new(None));
    let c = closed.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Close(frame) => {
                            *c.lock().unwrap() = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                            break;
                        }
                        Message::Text(t) if t == "close-me" => {
                            let frame = CloseFrame { code: CloseCode::from(4002), reason: "done".into() };
                            let _ = ws.close(Some(frame)).await;
                        }
                        Message::Ping(_) | Message::Pong(_) => {}
                        other => {
                            if ws.send(other).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, closed)
}

async fn proxy(adjust: impl FnOnce(&mut Config)) -> (TestProxy, tempfile::TempDir) {
    let (mut config, dir, _) = registry_config(DEMO);
    adjust(&mut config);
    (TestProxy::start(config).await, dir)
}

#[tokio::test]
async fn messages_flow_both_ways_in_order() {
    let (port, closed) = ws_app().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let host = format!("{port}-demo.preview.localhost");
    let (mut ws, _) = ws_connect(&proxy, &host, "/", &[]).await.unwrap();
    for i in 0..1000 {
        ws.feed(Message::Text(format!("message {i}"))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..1000 {
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text(format!("message {i}")));
    }
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::Binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(big));
    ws.send(Message::Ping(b"are you there".to_vec())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong(b"are you there".to_vec()));

    ws.close(Some(CloseFrame { code: CloseCode::from(4001), reason: "bye".into() })).await.unwrap();
    while ws.next().await.is_some() {}
    wait_for(|| async { closed.lock().unwrap().is_some() }).await;
    assert_eq!(*closed.lock().unwrap(), Some((4001, "bye".to_string())), "the client's close reached the app");
}

#[tokio::test]
async fn the_apps_close_code_reaches_the_client() {
    let (port, _) = ws_app().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let (mut ws, _) = ws_connect(&proxy, &format!("{port}-demo.preview.localhost"), "/", &[]).await.unwrap();
    ws.send(Message::Text("close-me".into())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4002);
            assert_eq!(frame.reason, "done");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn tunnels_are_counted_and_idle_ones_closed() {
    let (port, _) = ws_app().await;
    let (proxy, _dir) = proxy(|c| c.tunnel_idle_timeout = Duration::from_millis(300)).await;
    let host = format!("{port}-demo.preview.localhost");
    let tunnels = proxy.proxy.tunnels().clone();
    assert_eq!(tunnels.open(), 0);
    let (mut ws, _) = ws_connect(&proxy, &host, "/", &[]).await.unwrap();
    wait_for(|| async { tunnels.open() == 1 }).await;
    // Traffic keeps it open past the idle timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ws.send(Message::Text("keep".into())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("keep".into()));
    }
    // Silence closes it.
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("closed by the proxy");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    wait_for(|| async { tunnels.open() == 0 }).await;
}

#[tokio::test]
async fn shutdown_waits_for_tunnels_then_closes_them() {
    let (port, _) = ws_app().await;
    let host = format!("{port}-demo.preview.localhost");

    // Within the timeout: shutdown waits until the client closes.
    let (mut proxy_a, _dir) = proxy(|_| {}).await;
    let (mut ws, _) = ws_connect(&proxy_a, &host, "/", &[]).await.unwrap();
    proxy_a.shutdown();
    ws.send(Message::Text("still open".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("still open".into()));
    assert!(!proxy_a.done.is_finished(), "the server waits for the tunnel");
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(5), &mut proxy_a.done)
        .await
        .expect("stops once the tunnel closed")
        .unwrap()
        .unwrap();

    // Past the timeout: the proxy closes the tunnel and stops.
    let (mut proxy_b, _dir) = proxy(|c| c.shutdown_timeout = Duration::from_millis(200)).await;
    let (mut ws, _) = ws_connect(&proxy_b, &host, "/", &[]).await.unwrap();
    proxy_b.shutdown();
    tokio::time::timeout(Duration::from_secs(5), &mut proxy_b.done)
        .await
        .expect("stops after the timeout")
        .unwrap()
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("tunnel closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))));
}

/// An app that streams 64 KiB chunks for as long as anyone reads, counting
/// what it managed to hand over and noticing when the reader is gone.
async fn endless_app() -> (u16, Arc<AtomicU64>, Arc<AtomicBool>) {
    let sent = Arc::new(AtomicU64::new(0));
    let gone = Arc::new(AtomicBool::new(false));
    let (s, g) = (sent.clone(), gone.clone());
    let addr = serve(move |_req| {
        let (sent, gone) = (s.clone(), g.clone());
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                while tx.send(chunk.clone()).await.is_ok() {
                    sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
                gone.store(true, Ordering::SeqCst);
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)), rx))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
    })
    .await;
    (addr.port(), sent, gone)
}

#[tokio::test]
async fn a_slow_client_slows_the_app_and_a_gone_client_stops_it() {
    let (port, sent, gone) = endless_app().await;
    let (proxy, _dir) = proxy(|_| {}).await;
    let req = Request::builder()
        .uri(proxy.url("/endless"))
        .header("host", format!("{port}-demo.preview.localhost"))
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    // The client stops reading: what the app can hand over is bounded by
    // socket and protocol buffers, not by the proxy's memory.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
        assert!(now < 64 << 20, "the app pushed {now} bytes into a client that reads nothing");
    }
    assert!(last < 32 << 20, "stalled after {last} bytes");
    assert!(!gone.load(Ordering::SeqCst));
    // The client leaves: the upstream request is cancelled.
    drop(body);
    wait_for(|| async { gone.load(Ordering::SeqCst) }).await;
}
