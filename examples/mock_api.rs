//! A Daytona-compatible control plane for benchmarks: every sandbox id
//! starting with `pub` is public, `priv` private (preview token
//! `bench-token`); all run on one runner. `GET /__counts` returns calls per
//! endpoint.
//!
//! `cargo run --release --example mock_api -- <listen addr> <runner url> [latency ms]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Counts = Arc<Mutex<HashMap<&'static str, u64>>>;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).map_or("127.0.0.1:18090", String::as_str).to_string();
    let runner = Arc::new(args.get(2).cloned().unwrap_or_else(|| "http://127.0.0.1:18080".into()));
    let latency = Duration::from_millis(args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0));
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    let counts: Counts = Arc::default();
    eprintln!("mock API on {listen}, runner {runner}, latency {latency:?}");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (counts, runner) = (counts.clone(), runner.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, counts.clone(), runner.clone(), latency));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    counts: Counts,
    runner: Arc<String>,
    latency: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let endpoint = match seg.as_slice() {
        ["__counts"] => {
            let body = serde_json::to_string(&*counts.lock().unwrap()).unwrap();
            return Ok(Response::new(Full::new(Bytes::from(body))));
        }
        ["preview", _, "public"] => "public",
        ["runners", "by-sandbox", _] => "runner",
        ["preview", _, "validate", _] => "validate",
        ["preview", _, "access"] => "access",
        ["preview", _, _, "sandbox-id"] => "signed",
        ["sandbox", _, "last-activity"] => "activity",
        _ => "other",
    };
    *counts.lock().unwrap().entry(endpoint).or_default() += 1;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (status, body) = match seg.as_slice() {
        ["preview", id, "public"] if id.starts_with("pub") => (200, "true".to_string()),
        ["runners", "by-sandbox", _] => (200, format!(r#"{{"proxyUrl":"{runner}","apiKey":"runner-key"}}"#)),
        ["preview", id, "validate", "bench-token"] if id.starts_with("priv") => (200, "true".into()),
        ["sandbox", _, "last-activity"] => (201, "{}".into()),
        _ => (404, r#"{"statusCode":404,"message":"not found","code":"NOT_FOUND"}"#.into()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    Ok(resp)
}
