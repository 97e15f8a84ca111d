//! Test harness: the proxy in-process on 127.0.0.1:0, a mock Daytona API that
//! counts calls per endpoint, and a recording app that also plays a runner.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use preview_proxy::config::Config;
use preview_proxy::http::host::RESERVED_PORTS;
use preview_proxy::pipeline::access_log::Lines;
use preview_proxy::server::Server;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Extra request headers.
pub type Headers = Vec<(&'static str, &'static str)>;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// Serves `handler` on 127.0.0.1:0 (HTTP/1.1 and h2c) until the test ends.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    serve_counted(handler).await.0
}

/// A listener on 127.0.0.1:0 whose port may stand in a preview host. The
/// OS can hand out a reserved port (33333 is inside Linux's ephemeral
/// range), which always needs credentials: a public sandbox's 200 would be
/// a 401 about once in 7,000 binds.
pub async fn app_listener() -> TcpListener {
    let mut held = Vec::new();
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        match RESERVED_PORTS.contains(&listener.local_addr().unwrap().port()) {
            // Kept open until we return, so the next bind gets another port.
            true => held.push(listener),
            false => return listener,
        }
    }
}

/// [`serve`], also counting the connections accepted.
pub async fn serve_counted<F, Fut>(handler: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = app_listener().await;
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

// ---------------------------------------------------------------- proxy

pub struct TestProxy {
    pub addr: SocketAddr,
    pub proxy: Arc<Server>,
    shutdown: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestProxy {
    pub async fn start(config: Config) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Arc::new(Server::new(config, Lines::Events).expect("proxy starts"));
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(preview_proxy::server::run(listener, proxy.clone(), async move {
            let _ = rx.await;
        }));
        TestProxy { addr, proxy, shutdown: Some(tx), done }
    }

    /// Starts graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Config for a proxy in front of the mock API.
pub fn api_config(api: &MockApi) -> Config {
    let mut c = Config::defaults();
    c.api_url = Some(format!("http://{}", api.addr));
    c.api_key = "proxy-secret".into();
    c.api_client_timeout = Duration::from_secs(5);
    c
}

/// Config for a proxy using a registry file with `text`; the file stays
/// alive as long as the returned guard.
pub fn registry_config(text: &str) -> (Config, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, text).unwrap();
    let mut c = Config::defaults();
    c.registry_file = path.clone();
    c.registry_reload_interval = Duration::from_millis(20);
    (c, dir, path)
}

// ---------------------------------------------------------------- client

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body with this answer's own request id taken out, to compare
    /// answers that must otherwise be identical.
    pub fn text_without_request_id(&self) -> String {
        let id = self.headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("\u{0}");
        self.text().replace(id, "")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends a request through the proxy with the given Host and extra headers.
pub async fn send(
    proxy: &TestProxy,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: TestBody,
) -> Answer {
    let mut req = Request::builder().method(method).uri(proxy.url(path)).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(body).unwrap()).await.expect("proxy answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("complete body").to_bytes();
    Answer { status: parts.status, headers: parts.headers, body }
}

pub async fn get(proxy: &TestProxy, host: &str, path: &str) -> Answer {
    send(proxy, "GET", host, path, &[], empty()).await
}

// ---------------------------------------------------------------- mock API

#[derive(Clone)]
pub struct MockSandbox {
    pub public: bool,
    /// `proxyUrl` of its runner; `None` answers 404 "Runner not found".
    pub proxy_url: Option<String>,
    pub runner_key: String,
    /// `state` of `GET /sandbox/{id}`; a start turns `stopped` into `starting`.
    pub state: String,
}

#[derive(Default)]
pub struct ApiState {
    pub sandboxes: Mutex<HashMap<String, MockSandbox>>,
    calls: Mutex<HashMap<String, u64>>,
    /// Statuses to answer next, per endpoint, before normal behaviour.
    failures: Mutex<HashMap<String, VecDeque<u16>>>,
    /// Extra latency before every answer, in milliseconds.
    pub latency_ms: AtomicU64,
    /// Never answer while set.
    pub stall: AtomicBool,
    /// Every `Authorization` header the API received.
    pub authorizations: Mutex<Vec<String>>,
    /// `X-Forwarded-For` of access checks.
    pub access_xff: Mutex<Vec<String>>,
    /// Preview token per sandbox.
    pub tokens: Mutex<HashMap<String, String>>,
    /// Bearer -> sandboxes it may open.
    pub bearers: Mutex<HashMap<String, Vec<String>>>,
    /// Signed token -> (sandbox, port); removed = revoked.
    pub signed: Mutex<HashMap<String, (String, u16)>>,
    /// Last-activity updates per sandbox.
    pub activity: Mutex<HashMap<String, u64>>,
    /// Calls being answered now, and the most at once.
    in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

pub struct MockApi {
    pub addr: SocketAddr,
    pub state: Arc<ApiState>,
}

impl MockApi {
    pub async fn start() -> MockApi {
        let state = Arc::new(ApiState::default());
        let s = state.clone();
        let addr = serve(move |req| mock_api(s.clone(), req)).await;
        MockApi { addr, state }
    }

    pub fn add(&self, id: &str, public: bool, proxy_url: Option<&str>) {
        self.state.sandboxes.lock().unwrap().insert(
            id.to_string(),
            MockSandbox {
                public,
                proxy_url: proxy_url.map(str::to_string),
                runner_key: format!("runner-key-{id}"),
                state: "started".into(),
            },
        );
    }

    pub fn set_token(&self, id: &str, token: &str) {
        self.state.tokens.lock().unwrap().insert(id.into(), token.into());
    }

    pub fn grant_bearer(&self, bearer: &str, id: &str) {
        self.state.bearers.lock().unwrap().entry(bearer.into()).or_default().push(id.into());
    }

    pub fn add_signed(&self, token: &str, id: &str, port: u16) {
        self.state.signed.lock().unwrap().insert(token.into(), (id.into(), port));
    }

    pub fn revoke_signed(&self, token: &str) {
        self.state.signed.lock().unwrap().remove(token);
    }

    pub fn set_state(&self, id: &str, state: &str) {
        self.state.sandboxes.lock().unwrap().get_mut(id).expect("known sandbox").state = state.into();
    }

    pub fn sandbox_state(&self, id: &str) -> String {
        self.state.sandboxes.lock().unwrap()[id].state.clone()
    }

    /// Last-activity updates received for one sandbox.
    pub fn activity(&self, id: &str) -> u64 {
        self.state.activity.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// Calls received on an endpoint: `public`, `runner`, `validate`,
    /// `access`, `signed`.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.state.calls.lock().unwrap().get(endpoint).copied().unwrap_or(0)
    }

    /// The next `statuses.len()` calls to `endpoint` answer these statuses.
    pub fn fail_next(&self, endpoint: &str, statuses: &[u16]) {
        self.state.failures.lock().unwrap().entry(endpoint.to_string()).or_default().extend(statuses);
    }

    pub fn set_latency(&self, d: Duration) {
        self.state.latency_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

async fn mock_api(state: Arc<ApiState>, req: Request<Incoming>) -> Response<TestBody> {
    let segments: Vec<String> = req.uri().path().trim_start_matches('/').split('/').map(str::to_string).collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let endpoint = match seg.as_slice() {
        ["preview", _, "public"] => "public",
        ["runners", "by-sandbox", _] => "runner",
        ["preview", _, "validate", _] => "validate",
        ["preview", _, "access"] => "access",
        ["preview", _, _, "sandbox-id"] => "signed",
        ["sandbox", _, "last-activity"] => "activity",
        ["sandbox", _, "start"] => "start",
        ["sandbox", _] => "state",
        _ => "other",
    };
    *state.calls.lock().unwrap().entry(endpoint.to_string()).or_default() += 1;
    let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    state.authorizations.lock().unwrap().push(auth.clone());
    if endpoint == "access" {
        let xff = req.headers().get("x-forwarded-for").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        state.access_xff.lock().unwrap().push(xff);
    }
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _answering = Answering(&state.in_flight);
    let latency = state.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if state.stall.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let failure = state.failures.lock().unwrap().get_mut(endpoint).and_then(VecDeque::pop_front);
    if let Some(status) = failure {
        return json(status, &format!(r#"{{"statusCode":{status},"message":"injected failure","code":"X"}}"#));
    }
    let sandbox = |id: &str| state.sandboxes.lock().unwrap().get(id).cloned();
    match seg.as_slice() {
        ["preview", id, "public"] => match sandbox(id) {
            Some(s) if s.public => json(200, "true"),
            _ => json(404, r#"{"statusCode":404,"message":"Sandbox not found","code":"NOT_FOUND"}"#),
        },
        ["runners", "by-sandbox", id] => match sandbox(id) {
            Some(MockSandbox { proxy_url: Some(url), runner_key, .. }) if url == "missing" => {
                json(200, &format!(r#"{{"id":"r1","apiKey":"{runner_key}"}}"#))
            }
            Some(MockSandbox { proxy_url: Some(url), runner_key, .. }) => json(
                200,
                &format!(r#"{{"id":"r1","proxyUrl":"{url}","apiUrl":"http://ignored","apiKey":"{runner_key}"}}"#),
            ),
            _ => json(404, r#"{"statusCode":404,"message":"Runner not found","code":"NOT_FOUND"}"#),
        },
        ["sandbox", id, "last-activity"] if req.method() == http::Method::POST => {
            *state.activity.lock().unwrap().entry(id.to_string()).or_default() += 1;
            json(201, "{}")
        }
        ["sandbox", id, "start"] if req.method() == http::Method::POST => {
            match state.sandboxes.lock().unwrap().get_mut(*id) {
                Some(s) if s.state == "stopped" || s.state == "archived" => {
                    s.state = "starting".into();
                    json(200, "{}")
                }
                Some(s) => json(
                    400,
                    &format!(r#"{{"statusCode":400,"message":"Sandbox is {}","code":"BAD_REQUEST"}}"#, s.state),
                ),
                None => json(404, r#"{"statusCode":404,"message":"Sandbox not found","code":"NOT_FOUND"}"#),
            }
        }
        ["sandbox", id] => match sandbox(id) {
            Some(s) => json(200, &format!(r#"{{"id":"{id}","state":"{}","runnerId":"r1"}}"#, s.state)),
            None => json(404, r#"{"statusCode":404,"message":"Sandbox not found","code":"NOT_FOUND"}"#),
        },
        ["preview", id, "validate", token] => match state.tokens.lock().unwrap().get(*id) {
            Some(t) if t == token => json(200, "true"),
            _ => json(404, r#"{"statusCode":404,"message":"Invalid token","code":"NOT_FOUND"}"#),
        },
        ["preview", id, "access"] => {
            let bearer = auth.strip_prefix("Bearer ").unwrap_or_default();
            let ok = state.bearers.lock().unwrap().get(bearer).is_some_and(|ids| ids.iter().any(|i| i == id));
            if ok {
                json(200, "true")
            } else {
                json(403, r#"{"statusCode":403,"message":"Forbidden","code":"FORBIDDEN"}"#)
            }
        }
        ["preview", token, port, "sandbox-id"] => match state.signed.lock().unwrap().get(*token) {
            Some((id, p)) if p.to_string() == *port => {
                Response::builder().header("content-type", "text/plain").body(full(id.clone())).unwrap()
            }
            _ => json(403, r#"{"statusCode":403,"message":"Invalid or expired token","code":"FORBIDDEN"}"#),
        },
        _ => json(404, r#"{"statusCode":404,"message":"no such endpoint","code":"NOT_FOUND"}"#),
    }
}

/// Counts a call as in flight until its answer is made.
struct Answering<'a>(&'a AtomicU64);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn json(status: u16, body: &str) -> Response<TestBody> {
    Response::builder().status(status).header("content-type", "application/json").body(full(body.to_string())).unwrap()
}

// ---------------------------------------------------------------- app / runner

/// What an app or runner received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
}

/// A recording app. Paths (matched anywhere, so it can play a runner):
/// `/upload` answers the body's sha256 and length; `/download/<n>` streams
/// n bytes; `/empty-502` answers an empty 502; anything else answers 200
/// with the received target as body.
pub struct App {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
}

impl App {
    pub async fn start() -> App {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let (addr, accepted) = serve_counted(move |req| app(s.clone(), req)).await;
        App { addr, seen, accepted }
    }

    /// Connections the app has accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the app received a request")
    }
}

async fn app(seen: Arc<Mutex<Vec<Seen>>>, req: Request<Incoming>) -> Response<TestBody> {
    let target = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        target: target.clone(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    if path.ends_with("/upload") {
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("upload body").into_data() {
                len += data.len() as u64;
                hasher.update(&data);
            }
        }
        return Response::new(full(format!("{:x} {len}", hasher.finalize())));
    }
    if let Some(n) = path.rsplit_once("/download/").and_then(|(_, n)| n.parse::<usize>().ok()) {
        let chunks = pattern_chunks(n);
        let stream = futures_util::stream::iter(
            chunks.into_iter().map(|c| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(c))),
        );
        return Response::new(BodyExt::boxed(StreamBody::new(stream)));
    }
    if path.ends_with("/stream") {
        // One event, then the stream stays open until the client leaves.
        let first = futures_util::stream::once(async {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(b"data: hello\n\n")))
        });
        let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    if path.ends_with("/redirect") {
        return Response::builder().status(302).header("location", "/files/").body(empty()).unwrap();
    }
    if path.ends_with("/own-cors") {
        return Response::builder()
            .header("access-control-allow-origin", "http://localhost:8082")
            .header("x-app-method", seen.lock().unwrap().last().unwrap().method.as_str())
            .body(full("app cors"))
            .unwrap();
    }
    if path.ends_with("/empty-502") {
        return Response::builder().status(502).body(empty()).unwrap();
    }
    Response::builder().header("x-app", "1").body(full(target)).unwrap()
}

/// Deterministic download content: n bytes in 64 KiB chunks.
pub fn pattern_chunks(n: usize) -> Vec<Bytes> {
    let block: Vec<u8> = (0..65536u32).map(|i| (i.wrapping_mul(31) % 251) as u8).collect();
    let block = Bytes::from(block);
    let mut out = Vec::new();
    let mut left = n;
    while left > 0 {
        let take = left.min(block.len());
        out.push(block.slice(..take));
        left -= take;
    }
    out
}

pub fn sha256_hex(chunks: &[Bytes]) -> String {
    let mut h = Sha256::new();
    for c in chunks {
        h.update(c);
    }
    format!("{:x}", h.finalize())
}

/// Percent-encodes a query value (everything but letters and digits).
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The value `/metrics` gives `series` (name and labels exactly as written).
pub fn gauge(proxy: &TestProxy, series: &str) -> f64 {
    let text = proxy.proxy.proxy.shared.metrics.render(0);
    let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
    line.unwrap_or_else(|| panic!("{series} missing")).rsplit(' ').next().unwrap().parse().unwrap()
}

/// Idle HTTP/1 connections parked, as `/metrics` counts them.
pub fn parked(proxy: &TestProxy) -> f64 {
    gauge(proxy, "preview_proxy_client_connections_parked")
}

/// Polls `check` until it holds, for at most five seconds.
pub async fn wait_for<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "condition not reached in 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A WebSocket echo app on 127.0.0.1:0 (any path); returns its address.
pub async fn ws_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = app_listener().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub type WsResponse = tokio_tungstenite::tungstenite::handshake::client::Response;

/// Opens a WebSocket through the proxy to `host` with extra headers.
pub async fn ws_connect(
    proxy: &TestProxy,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(WsStream, WsResponse), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}{}", proxy.addr, path).into_client_request().unwrap();
    req.headers_mut().insert("host", host.parse().unwrap());
    for (k, v) in headers {
        req.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await
}
