//! Lookups through the Daytona API and the embedded registry: caching,
//! coalescing, retries, stale-if-error, reloads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use preview_proxy::config::Config;

const HOST: &str = "3000-sbx1.preview.localhost";

async fn setup() -> (MockApi, App) {
    let api = MockApi::start().await;
    let runner = App::start().await;
    api.add("sbx1", true, Some(&runner.url()));
    (api, runner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_first_requests_make_one_lookup_each() {
    let (api, runner) = setup().await;
    api.set_latency(Duration::from_millis(200));
    let proxy = Arc::new(TestProxy::start(api_config(&api)).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let proxy = proxy.clone();
        tasks.spawn(async move {
            // One connection per request: 1,000 concurrent first requests.
            let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
            let req = format!("GET /r{i} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut stream, req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut out).await.unwrap();
            String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200")
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        ok += r.unwrap() as usize;
    }
    assert_eq!(ok, 1000);
    assert_eq!(api.calls("public"), 1);
    assert_eq!(api.calls("runner"), 1);
    assert_eq!(runner.seen().len(), 1000);
}

#[tokio::test]
async fn warm_cache_makes_no_further_calls() {
    let (api, _runner) = setup().await;
    let proxy = TestProxy::start(api_config(&api)).await;
    for _ in 0..20 {
        assert_eq!(get(&proxy, HOST, "/").await.status, 200);
    }
    assert_eq!((api.calls("public"), api.calls("runner")), (1, 1));
    // The API is called with the proxy's key.
    assert!(api.state.authorizations.lock().unwrap().iter().all(|a| a == "Bearer proxy-secret"));
}

#[tokio::test]
async fn private_and_unknown_sandboxes_look_the_same_without_credentials() {
    let (api, runner) = setup().await;
    api.add("secret", false, Some(&runner.url()));
    let proxy = TestProxy::start(api_config(&api)).await;
    let private = get(&proxy, "3000-secret.preview.localhost", "/").await;
    let unknown = get(&proxy, "3000-nosuch.preview.localhost", "/").await;
    assert_eq!(private.status, 401);
    assert_eq!(unknown.status, 401);
    assert_eq!(private.text_without_request_id(), unknown.text_without_request_id());
    assert_eq!(private.json()["code"], "UNAUTHORIZED");
    assert_eq!(api.calls("runner"), 0, "no runner lookup before authorisation");
    assert!(runner.seen().is_empty());
}

#[tokio::test]
async fn a_cold_sandbox_id_asks_for_its_flag_and_its_runner_at_once() {
    let (api, runner) = setup().await;
    let id = "3a828150-1573-42e3-bf9f-9793a2c2c0c2";
    api.add(id, true, Some(&runner.url()));
    api.set_latency(Duration::from_millis(100));
    let proxy = TestProxy::start(api_config(&api)).await;
    let host = format!("3000-{id}.preview.localhost");
    assert_eq!(get(&proxy, &host, "/").await.status, 200);
    assert_eq!((api.calls("public"), api.calls("runner")), (1, 1));
    assert_eq!(api.state.max_in_flight.load(Ordering::SeqCst), 2, "both lookups were in flight together");

    // A private one refused without credentials: its runner is never used,
    // and the answer is the unknown sandbox's.
    let secret = "5b6c7d8e-0000-4000-8000-000000000001";
    api.add(secret, false, Some(&runner.url()));
    let private = get(&proxy, &format!("3000-{secret}.preview.localhost"), "/").await;
    let unknown = get(&proxy, "3000-5b6c7d8e-0000-4000-8000-000000000002.preview.localhost", "/").await;
    assert_eq!((private.status.as_u16(), unknown.status.as_u16()), (401, 401));
    assert_eq!(private.text_without_request_id(), unknown.text_without_request_id());
    assert_eq!(runner.seen().len(), 1, "only the public sandbox's request reached the runner");
    // Once the flag is cached, nothing is looked up ahead of the credentials.
    let runner_calls = api.calls("runner");
    get(&proxy, &format!("3000-{secret}.preview.localhost"), "/").await;
    assert_eq!(api.calls("runner"), runner_calls);
}

#[tokio::test]
async fn public_sandbox_without_runner_is_404() {
    let api = MockApi::start().await;
    api.add("archived", true, None);
    let proxy = TestProxy::start(api_config(&api)).await;
    let a = get(&proxy, "3000-archived.preview.localhost", "/").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["code"], "SANDBOX_NOT_FOUND");
    assert_eq!(a.json()["statusCode"], 404);
}

#[tokio::test]
async fn reserved_ports_need_credentials_on_public_sandboxes() {
    let (api, runner) = setup().await;
    let proxy = TestProxy::start(api_config(&api)).await;
    for port in ["22222", "2280", "2281", "33333"] {
        let a = get(&proxy, &format!("{port}-sbx1.preview.localhost"), "/").await;
        assert_eq!(a.status, 401, "port {port}");
    }
    // A zero-padded port is not a port at all: no way around the rule.
    let a = get(&proxy, "02280-sbx1.preview.localhost", "/").await;
    assert_eq!(a.status, 404);
    assert!(runner.seen().is_empty());
}

#[tokio::test]
async fn transient_errors_are_retried_and_not_cached() {
    let (api, _runner) = setup().await;
    let proxy = TestProxy::start(api_config(&api)).await;
    // Two failures then success: one request, three calls, allowed.
    api.fail_next("public", &[502, 503]);
    assert_eq!(get(&proxy, HOST, "/").await.status, 200);
    assert_eq!(api.calls("public"), 3);

    // Three failures exhaust the retries: 503 with Retry-After, nothing cached.
    let other = MockApi::start().await;
    let runner = App::start().await;
    other.add("sbx1", true, Some(&runner.url()));
    let proxy = TestProxy::start(api_config(&other)).await;
    other.fail_next("runner", &[500, 429, 408]);
    let a = get(&proxy, HOST, "/").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["retry-after"], "5");
    assert_eq!(a.json()["code"], "CONTROL_PLANE_UNAVAILABLE");
    assert_eq!(other.calls("runner"), 3);
    assert_eq!(get(&proxy, HOST, "/").await.status, 200);
    assert_eq!(other.calls("runner"), 4, "the error was not cached");
}

#[tokio::test]
async fn definite_4xx_is_not_retried() {
    let (api, _runner) = setup().await;
    let proxy = TestProxy::start(api_config(&api)).await;
    api.fail_next("runner", &[403]);
    let a = get(&proxy, HOST, "/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["code"], "CONTROL_PLANE_ERROR");
    assert_eq!(api.calls("runner"), 1);
}

#[tokio::test]
async fn runner_without_proxy_url_is_a_clear_error() {
    let api = MockApi::start().await;
    api.add("sbx1", true, Some("missing"));
    let proxy = TestProxy::start(api_config(&api)).await;
    let a = get(&proxy, HOST, "/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["code"], "CONTROL_PLANE_ERROR");
}

#[tokio::test]
async fn an_api_answer_without_end_is_refused_not_buffered() {
    // Every endpoint answers 200 with a body that never ends.
    let api = serve(|_| async {
        let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        let endless = futures_util::stream::repeat_with(move || {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(chunk.clone()))
        });
        http::Response::new(http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(endless)))
    })
    .await;
    let mut config = Config::defaults();
    (config.api_url, config.api_key) = (Some(format!("http://{api}")), "proxy-secret".into());
    config.api_client_timeout = Duration::from_secs(30);
    let proxy = TestProxy::start(config).await;
    let started = Instant::now();
    let a = get(&proxy, HOST, "/").await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.json()["code"], "CONTROL_PLANE_ERROR");
    assert!(started.elapsed() < Duration::from_secs(10), "refused at the cap, not at the client timeout");
}

#[tokio::test]
async fn stalled_api_gives_503_within_the_client_timeout() {
    let (api, _runner) = setup().await;
    let mut config = api_config(&api);
    config.api_client_timeout = Duration::from_millis(500);
    let proxy = TestProxy::start(config).await;
    api.state.stall.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let a = get(&proxy, HOST, "/").await;
    assert_eq!(a.status, 503);
    assert!(started.elapsed() < Duration::from_secs(3), "bounded by the client timeout");
}

#[tokio::test]
async fn expired_runner_entry_serves_while_api_is_down() {
    let (api, runner) = setup().await;
    api.add("fresh", true, Some(&runner.url()));
    let mut config = api_config(&api);
    config.cache.runner_ttl = Duration::from_millis(100);
    config.api_client_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start(config).await;
    assert_eq!(get(&proxy, HOST, "/").await.status, 200);
    api.state.stall.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await; // let the runner entry expire
    let a = get(&proxy, HOST, "/after-expiry").await;
    assert_eq!(a.status, 200, "served from the expired entry: {}", a.text());
    assert!(api.calls("runner") >= 2, "the expired entry was refreshed first");
    assert_eq!(runner.last().target, "/sandboxes/sbx1/toolbox/proxy/3000/after-expiry");
    // A sandbox never seen has nothing to fall back on.
    let a = get(&proxy, "3000-fresh.preview.localhost", "/").await;
    assert_eq!(a.status, 503);
    assert!(a.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn stale_window_is_bounded() {
    let (api, _runner) = setup().await;
    let mut config = api_config(&api);
    config.cache.runner_ttl = Duration::from_millis(50);
    config.stale_if_error = Duration::ZERO;
    config.api_client_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start(config).await;
    assert_eq!(get(&proxy, HOST, "/").await.status, 200);
    api.state.stall.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(80)).await; // past the TTL, no stale window
    assert_eq!(get(&proxy, HOST, "/").await.status, 503);
}

#[tokio::test]
async fn registry_edits_apply_without_restart() {
    let app = App::start().await;
    let (config, _dir, path) =
        registry_config("[[sandboxes]]\nid = \"one\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    let proxy = TestProxy::start(config).await;
    let port = app.addr.port();
    let one = format!("{port}-one.preview.localhost");
    let two = format!("{port}-two.preview.localhost");
    assert_eq!(get(&proxy, &one, "/").await.status, 200);
    assert_eq!(get(&proxy, &two, "/").await.status, 401);

    std::fs::write(&path, "[[sandboxes]]\nid = \"two\"\npublic = true\nupstream = \"127.0.0.1\"\n# longer file\n")
        .unwrap();
    wait_for(|| async { get(&proxy, &two, "/").await.status == 200 }).await;
    assert_eq!(get(&proxy, &one, "/").await.status, 401);

    // A broken edit is reported and the last good registry keeps serving.
    std::fs::write(&path, "[[sandboxes]\nthis is not toml\n").unwrap();
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        assert_eq!(get(&proxy, &two, "/").await.status, 200);
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn registry_runner_mode_uses_runner_path_and_key() {
    let runner = App::start().await;
    let text = format!(
        "[runners.r1]\nproxy_url = \"{}/base/\"\napi_key = \"rk\"\n\n[[sandboxes]]\nid = \"3a828150-1573-42e3-bf9f-9793a2c2c0c2\"\npublic = true\nrunner = \"r1\"\n",
        runner.url()
    );
    let (config, _dir, _path) = registry_config(&text);
    let proxy = TestProxy::start(config).await;
    let a = get(&proxy, "5173-3A828150-1573-42E3-BF9F-9793A2C2C0C2.Preview.Example.com.:443", "/x?y=1").await;
    assert_eq!(a.status, 200);
    let seen = runner.last();
    assert_eq!(seen.target, "/base/sandboxes/3a828150-1573-42e3-bf9f-9793a2c2c0c2/toolbox/proxy/5173/x?y=1");
    assert_eq!(seen.headers["x-daytona-authorization"], "Bearer rk");
}
