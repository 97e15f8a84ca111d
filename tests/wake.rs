//! Waking stopped sandboxes: a runner that says the sandbox is not running,
//! the API's state, one start however many requests ask, and the answers
//! clients get meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const HOST: &str = "3000-sbx1.preview.localhost";
const NOT_STARTED: &str =
    r#"{"statusCode":400,"message":"bad request: no IP address found. Is the Sandbox started?","code":"BAD_REQUEST"}"#;

/// A runner for one sandbox: while `running` is false it answers like a
/// Daytona runner for a stopped sandbox (400 "Is the Sandbox started?", or
/// on `.../state-header` a 503 with `X-Daytona-Sandbox-State: stopped`).
/// `.../own-404` is the app's own small JSON 404.
async fn runner(running: Arc<AtomicBool>) -> String {
    let addr = serve(move |req| {
        let running = running.load(Ordering::SeqCst);
        async move {
            let path = req.uri().path().to_string();
            if path.ends_with("/own-404") {
                return json(404, r#"{"error":"user not found"}"#);
            }
            match (running, path.ends_with("/state-header")) {
                (true, _) => json(200, r#"{"hello":"app"}"#),
                (false, false) => json(400, NOT_STARTED),
                (false, true) => http::Response::builder()
                    .status(503)
                    .header("x-daytona-sandbox-state", "stopped")
                    .body(empty())
                    .unwrap(),
            }
        }
    })
    .await;
    format!("http://{addr}")
}

async fn setup(state: &str) -> (MockApi, Arc<AtomicBool>, TestProxy) {
    setup_holding(state, Duration::from_secs(30)).await
}

/// Clients other than browsers wait up to `hold` for the sandbox.
async fn setup_holding(state: &str, hold: Duration) -> (MockApi, Arc<AtomicBool>, TestProxy) {
    let api = MockApi::start().await;
    let running = Arc::new(AtomicBool::new(state == "started"));
    api.add("sbx1", true, Some(&runner(running.clone()).await));
    api.set_state("sbx1", state);
    let mut config = api_config(&api);
    config.wake_hold = hold;
    let proxy = TestProxy::start(config).await;
    (api, running, proxy)
}

const BROWSER: [(&str, &str); 3] = [
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36"),
    ("accept", "text/html,application/xhtml+xml"),
    ("sec-fetch-mode", "navigate"),
];

#[tokio::test]
async fn curl_and_sdks_are_held_until_the_sandbox_is_up_then_get_the_apps_answer() {
    let (api, running, proxy) = setup("stopped").await;
    let proxy = Arc::new(proxy);

    // A page's worth of requests from programs at once: one start, one
    // polling loop (the state is cached), every request answered by the app.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let proxy = proxy.clone();
        tasks.spawn(async move { get(&proxy, HOST, &format!("/asset-{i}.js")).await });
    }
    wait_for(|| async { api.calls("start") == 1 }).await;
    assert_eq!(api.sandbox_state("sbx1"), "starting");
    // The sandbox comes up a moment later.
    tokio::time::sleep(Duration::from_millis(700)).await;
    api.set_state("sbx1", "started");
    running.store(true, Ordering::SeqCst);
    while let Some(a) = tasks.join_next().await {
        let a = a.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json()["hello"], "app");
    }
    assert_eq!(api.calls("start"), 1);
    assert!(api.calls("state") <= 6, "held requests share the state lookups: {}", api.calls("state"));
}

#[tokio::test]
async fn a_browser_gets_the_waiting_page_at_once_naming_the_state() {
    let (api, _running, proxy) = setup("stopped").await;
    let a = send(&proxy, "GET", HOST, "/", &BROWSER, empty()).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["retry-after"], "5");
    assert!(a.text().contains("The sandbox is starting"), "{}", a.text());
    assert!(a.text().contains("state: starting"), "{}", a.text());
    assert!(a.text().contains(r#"<meta http-equiv="refresh" content="5">"#));
    assert_eq!(api.calls("start"), 1);
    let again = send(&proxy, "GET", HOST, "/", &BROWSER, empty()).await;
    assert_eq!(again.status, 503);
    assert_eq!(api.calls("start"), 1, "a starting sandbox is not started again");
}

#[tokio::test]
async fn a_request_with_a_body_is_not_held() {
    let (api, _running, proxy) = setup("stopped").await;
    let started = std::time::Instant::now();
    let a = send(&proxy, "POST", HOST, "/api/items", &[], full("{\"name\":\"x\"}")).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["retry-after"], "5");
    assert_eq!(a.json()["code"], "SANDBOX_STARTING");
    assert!(started.elapsed() < Duration::from_secs(5), "answered at once, not held");
    assert_eq!(api.calls("start"), 1, "a POST still wakes the sandbox");
}

#[tokio::test]
async fn link_preview_bots_never_start_a_sandbox() {
    let (api, _running, proxy) = setup("stopped").await;
    for bot in
        ["Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "Mozilla/5.0 (compatible; Discordbot/2.0)"]
    {
        let a = send(&proxy, "GET", HOST, "/", &[("user-agent", bot)], empty()).await;
        assert_eq!(a.status, 503, "{bot}");
        assert_eq!(a.json()["code"], "SANDBOX_STOPPED", "{bot}");
        assert!(a.json()["message"].as_str().unwrap().contains("do not start sandboxes"));
    }
    assert_eq!(api.calls("start"), 0);
    assert_eq!(api.sandbox_state("sbx1"), "stopped");
}

#[tokio::test]
async fn a_sandbox_that_does_not_come_up_in_time_is_a_503_after_the_hold() {
    let (api, _running, proxy) = setup_holding("stopped", Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let a = get(&proxy, HOST, "/").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["code"], "SANDBOX_STARTING");
    assert!(started.elapsed() >= Duration::from_millis(500), "held first: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(api.calls("start"), 1);
}

#[tokio::test]
async fn the_runner_state_header_also_wakes() {
    let (api, _running, proxy) = setup_holding("archived", Duration::ZERO).await;
    let a = get(&proxy, HOST, "/state-header").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["code"], "SANDBOX_STARTING");
    assert_eq!(api.calls("start"), 1);
}

#[tokio::test]
async fn states_that_cannot_start_now_are_explained() {
    for (state, status, code) in [
        ("stopping", 503, "SANDBOX_STOPPING"),
        ("restoring", 503, "SANDBOX_STARTING"),
        ("error", 409, "SANDBOX_NOT_RUNNING"),
        ("destroyed", 409, "SANDBOX_NOT_RUNNING"),
    ] {
        let (api, _running, proxy) = setup_holding(state, Duration::ZERO).await;
        let a = get(&proxy, HOST, "/").await;
        assert_eq!(a.status, status, "{state}");
        assert_eq!(a.json()["code"], code, "{state}");
        assert!(a.json()["message"].as_str().unwrap().len() > 20);
        assert_eq!(api.calls("start"), 0, "{state}");
    }
}

#[tokio::test]
async fn requests_that_skip_activity_do_not_wake() {
    let (api, _running, proxy) = setup("stopped").await;
    let a = send(&proxy, "GET", HOST, "/", &[("x-daytona-skip-last-activity-update", "true")], empty()).await;
    assert_eq!(a.status, 409);
    assert_eq!(a.json()["code"], "SANDBOX_NOT_RUNNING");
    assert!(a.json()["message"].as_str().unwrap().contains("stopped"));
    assert_eq!(api.calls("start"), 0);
}

#[tokio::test]
async fn an_apps_own_errors_pass_unchanged() {
    let (api, _running, proxy) = setup("started").await;
    let a = get(&proxy, HOST, "/own-404").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.text(), r#"{"error":"user not found"}"#);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(api.calls("state"), 0, "no state lookup for an app's own error");

    // A runner that says "not started" while the API says started: the
    // runner's answer goes through.
    let (api, running, proxy) = setup("started").await;
    running.store(false, Ordering::SeqCst);
    let a = get(&proxy, HOST, "/").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.text(), NOT_STARTED);
    assert_eq!(api.calls("state"), 1);
    assert_eq!(api.calls("start"), 0);
}
