//! Cold-cache storm: N concurrent first requests (one connection each) to
//! each of S new sandboxes at once. Prints latency percentiles and errors.
//!
//! `cargo run --release --example storm -- <proxy addr> <sandboxes> <per sandbox> <id prefix>`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:18084".into());
    let sandboxes: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let per: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let prefix = args.get(4).cloned().unwrap_or_else(|| "pubstorm".into());
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Connect everything first, then fire every request at once.
    let mut streams = Vec::with_capacity(sandboxes * per);
    for s in 0..sandboxes {
        for _ in 0..per {
            streams.push((s, tokio::net::TcpStream::connect(&addr).await.expect("connect")));
        }
    }
    let start = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (s, mut stream) in streams {
        let mut go = start.1.clone();
        let req = format!("GET / HTTP/1.1\r\nHost: 3000-{prefix}{s}.preview.localhost\r\nConnection: close\r\n\r\n");
        tasks.spawn(async move {
            go.wait_for(|g| *g).await.unwrap();
            let t = Instant::now();
            stream.write_all(req.as_bytes()).await.ok()?;
            let mut out = Vec::new();
            stream.read_to_end(&mut out).await.ok()?;
            out.starts_with(b"HTTP/1.1 200").then(|| t.elapsed())
        });
    }
    let started = Instant::now();
    start.0.send(true).unwrap();
    let mut times: Vec<Duration> = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        match r.ok().flatten() {
            Some(t) => times.push(t),
            None => errors += 1,
        }
    }
    times.sort();
    let pct = |p: f64| {
        times.get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    println!(
        "requests={} ok={} errors={errors} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} wall_ms={:.0}",
        sandboxes * per,
        times.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
}
