//! Load clients for the scenarios of `bench/run.sh` that wrk cannot drive.
//! Each prints one line of `key=value` results.
//!
//! ```text
//! bench_client pageload <addr> <host> <loads> <assets> <conns> <parallel>
//!     browser-like page loads: GET / then <assets> GETs over <conns> new
//!     keep-alive connections; <parallel> sandboxes load at once ("{i}" in
//!     <host> becomes the sandbox's number). Page-load time percentiles.
//! bench_client ws-idle <addr> <host> <tunnels> <pid>...
//!     opens <tunnels> idle WebSockets; RSS growth of the pids per tunnel.
//! bench_client ka-idle <addr> <host> <conns> <pid>...
//!     opens <conns> keep-alive connections, one GET on each, and keeps
//!     them open; RSS growth of the pids per connection.
//! bench_client ka-idle-trickle <addr> <host> <conns> <batch> <pid>...
//!     the same, opened <batch> at a time 1.5 s apart (clients arriving
//!     over time rather than in one burst).
//! bench_client ws-echo <addr> <host> <conns> <seconds>
//!     <conns> WebSockets each echoing 32-byte messages one at a time.
//! bench_client sse <addr> <host> <events>
//!     reads server-sent events whose data is their send time (bench_app);
//!     delivery latency percentiles.
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let arg =
        |i: usize| args.get(i).unwrap_or_else(|| panic!("missing argument {i}; see the header of bench_client.rs"));
    let num = |i: usize| arg(i).parse::<usize>().expect("a number");
    match arg(0).as_str() {
        "pageload" => pageload(arg(1), arg(2), num(3), num(4), num(5), num(6)).await,
        "ws-idle" => ws_idle(arg(1), arg(2), num(3), &args[4..]).await,
        "ka-idle" => ka_idle(arg(1), arg(2), num(3), 0, &args[4..]).await,
        "ka-idle-trickle" => ka_idle(arg(1), arg(2), num(3), num(4), &args[5..]).await,
        "ws-echo" => ws_echo(arg(1), arg(2), num(3), Duration::from_secs(num(4) as u64)).await,
        "sse" => sse(arg(1), arg(2), num(3)).await,
        other => panic!("unknown mode {other}"),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn connect(addr: &str) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, host: &str, path: &str) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let req = Request::builder().uri(path).header("host", host).body(Empty::new()).unwrap();
    match sender.send_request(req).await {
        Ok(resp) => resp.status().is_success() && resp.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

async fn pageload(addr: &str, host: &str, loads: usize, assets: usize, conns: usize, parallel: usize) {
    let errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for sandbox in 0..parallel {
        let (addr, host, errors) = (addr.to_string(), host.replace("{i}", &sandbox.to_string()), errors.clone());
        tasks.spawn(async move {
            let mut times = Vec::with_capacity(loads);
            for _ in 0..loads {
                let start = Instant::now();
                let mut first = connect(&addr).await;
                if !get(&mut first, &host, "/").await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let next = Arc::new(AtomicUsize::new(0));
                let mut workers = tokio::task::JoinSet::new();
                let mut first = Some(first);
                for _ in 0..conns {
                    let (addr, host, next, errors) = (addr.clone(), host.clone(), next.clone(), errors.clone());
                    let reuse = first.take();
                    workers.spawn(async move {
                        let mut sender = match reuse {
                            Some(s) => s,
                            None => connect(&addr).await,
                        };
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= assets {
                                return;
                            }
                            if !get(&mut sender, &host, &format!("/assets/chunk-{i}.js")).await {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                while workers.join_next().await.is_some() {}
                times.push(millis(start.elapsed()));
            }
            times
        });
    }
    let mut times = Vec::new();
    while let Some(t) = tasks.join_next().await {
        times.extend(t.expect("page loads"));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "loads={} errors={} p50_ms={:.2} p99_ms={:.2}",
        times.len(),
        errors.load(Ordering::Relaxed),
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_open(addr: &str, host: &str) -> Option<Ws> {
    let mut req = format!("ws://{addr}/ws").into_client_request().ok()?;
    req.headers_mut().insert("host", host.parse().ok()?);
    let open = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req));
    open.await.ok()?.ok().map(|(ws, _)| ws)
}

fn rss_kib(pids: &[String]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .filter_map(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Opens `n` connections with `open` (`batch` at a time 1.5 s apart, or
/// all at once for 0) and keeps them; RSS growth per connection.
async fn idle<T, F, Fut>(n: usize, batch: usize, pids: &[String], open: F) -> Idle
where
    T: Send + 'static,
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<T>> + Send,
{
    let before = rss_kib(pids);
    let opened = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(n)));
    let batch = if batch == 0 { n } else { batch };
    let mut done = 0;
    while done < n {
        let upto = (done + batch).min(n);
        let next = Arc::new(AtomicUsize::new(done));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..128 {
            let (open, opened, next) = (open.clone(), opened.clone(), next.clone());
            tasks.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < upto {
                    if let Some(conn) = open().await {
                        opened.lock().await.push(conn);
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        done = upto;
        if done < n {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    // Let every connection settle into its idle state: RSS after 2 s, and
    // after 12 s, once an allocator that returns freed pages has done so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let early = rss_kib(pids);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss_kib(pids);
    let open = opened.lock().await.len();
    let per = |rss: u64| rss.saturating_sub(before) as f64 / open.max(1) as f64;
    Idle { open, before, after, per: per(after), per_early: per(early) }
}

/// What `idle` saw: connections opened, RSS before and 12 s after (KiB),
/// KiB per connection 12 s and 2 s after the last opened.
struct Idle {
    open: usize,
    before: u64,
    after: u64,
    per: f64,
    per_early: f64,
}

async fn ws_idle(addr: &str, host: &str, tunnels: usize, pids: &[String]) {
    let (addr, host) = (addr.to_string(), host.to_string());
    let Idle { open, before, after, per, per_early } = idle(tunnels, 0, pids, move || {
        let (addr, host) = (addr.clone(), host.clone());
        async move { ws_open(&addr, &host).await }
    })
    .await;
    println!(
        "tunnels={open} errors={} rss_before_kib={before} rss_after_kib={after} kib_per_tunnel={per:.2} kib_per_tunnel_2s={per_early:.2}",
        tunnels - open
    );
}

async fn ka_idle(addr: &str, host: &str, conns: usize, batch: usize, pids: &[String]) {
    let (addr, host) = (addr.to_string(), host.to_string());
    let Idle { open, before, after, per, per_early } = idle(conns, batch, pids, move || {
        let (addr, host) = (addr.clone(), host.clone());
        async move {
            let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr)).await.ok()?.ok()?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
            tokio::spawn(conn);
            get(&mut sender, &host, "/").await.then_some(sender)
        }
    })
    .await;
    println!(
        "conns={open} errors={} rss_before_kib={before} rss_after_kib={after} kib_per_conn={per:.2} kib_per_conn_2s={per_early:.2}",
        conns - open
    );
}

async fn ws_echo(addr: &str, host: &str, conns: usize, secs: Duration) {
    let deadline = Instant::now() + secs;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (addr, host) = (addr.to_string(), host.to_string());
        tasks.spawn(async move {
            let Some(mut ws) = ws_open(&addr, &host).await else { return (0u64, 1u64) };
            let payload = Bytes::from_static(&[7u8; 32]);
            let mut n = 0;
            while Instant::now() < deadline {
                if ws.send(Message::Binary(payload.to_vec())).await.is_err() {
                    return (n, 1);
                }
                match ws.next().await {
                    Some(Ok(m)) if m.len() == 32 => n += 1,
                    _ => return (n, 1),
                }
            }
            let _ = ws.close(None).await;
            (n, 0)
        });
    }
    let start = Instant::now();
    let (mut total, mut errors) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (n, e) = r.unwrap_or((0, 1));
        total += n;
        errors += e;
    }
    println!("messages={total} errors={errors} msgs_per_s={:.0}", total as f64 / start.elapsed().as_secs_f64());
}

async fn sse(addr: &str, host: &str, events: usize) {
    let mut sender = connect(addr).await;
    let req = Request::builder().uri("/sse").header("host", host).body(Empty::new()).unwrap();
    let resp = sender.send_request(req).await.expect("sse response");
    assert!(resp.status().is_success(), "sse answered {}", resp.status());
    let mut body = resp.into_body();
    let mut latencies = Vec::with_capacity(events);
    let mut pending = String::new();
    while latencies.len() < events {
        let Some(Ok(frame)) = body.frame().await else { break };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let Ok(data) = frame.into_data() else { continue };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            if let Some(sent) = event.trim().strip_prefix("data: ").and_then(|v| v.parse::<u128>().ok()) {
                latencies.push(now.saturating_sub(sent) as f64 / 1e6);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "events={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
}
