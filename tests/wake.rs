//! Waking stopped sandboxes: a runner that says the sandbox is not running,
//! the API's state, one start however many requests ask, and the answers
//! clients get meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    let api = MockApi::start().await;
    let running = Arc::new(AtomicBool::new(state == "started"));
    api.add("sbx1", true, Some(&runner(running.clone()).await));
    api.set_state("sbx1", state);
    let proxy = TestProxy::start(api_config(&api)).await;
    (api, running, proxy)
}

#[tokio::test]
async fn a_stopped_sandbox_is_started_once_and_clients_retry() {
    let (api, running, proxy) = setup("stopped").await;
    let proxy = Arc::new(proxy);

    // A page's worth of requests at once: one start.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let proxy = proxy.clone();
        tasks.spawn(async move { get(&proxy, HOST, &format!("/asset-{i}.js")).await });
    }
    while let Some(a) = tasks.join_next().await {
        let a = a.unwrap();
        assert_eq!(a.status, 503);
        assert_eq!(a.headers["retry-after"], "5");
        assert_eq!(a.json()["code"], "SANDBOX_STARTING");
    }
    assert_eq!(api.calls("start"), 1);
    assert_eq!(api.sandbox_state("sbx1"), "starting");

    // A browser gets a page that reloads itself.
    let a = send(&proxy, "GET", HOST, "/", &[("accept", "text/html")], empty()).await;
    assert_eq!(a.status, 503);
    assert!(a.text().contains("The sandbox is starting"), "{}", a.text());
    assert!(a.text().contains(r#"<meta http-equiv="refresh" content="5">"#));
    assert_eq!(api.calls("start"), 1, "a starting sandbox is not started again");

    // Once it runs, requests go through.
    api.set_state("sbx1", "started");
    running.store(true, Ordering::SeqCst);
    let a = get(&proxy, HOST, "/").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["hello"], "app");
}

#[tokio::test]
async fn the_runner_state_header_also_wakes() {
    let (api, _running, proxy) = setup("archived").await;
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
        let (api, _running, proxy) = setup(state).await;
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
