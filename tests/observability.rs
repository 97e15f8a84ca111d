//! Request ids and trace context (SPEC 8), in-process; the access log and
//! draining on the real binary are in tests/cli.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use common::*;

async fn proxy(trusted: bool) -> (TestProxy, App, tempfile::TempDir) {
    let app = App::start().await;
    let (mut config, dir, _) =
        registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    if !trusted {
        config.trusted_proxies = vec![];
    }
    (TestProxy::start(config).await, app, dir)
}

#[tokio::test]
async fn a_request_id_is_made_sent_upstream_and_returned() {
    let (proxy, app, _dir) = proxy(true).await;
    let host = format!("{}-demo.preview.localhost", app.addr.port());
    let a = get(&proxy, &host, "/").await;
    let id = a.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(app.last().headers["x-request-id"], id.as_str());
    let b = get(&proxy, &host, "/").await;
    assert_ne!(b.headers["x-request-id"], id.as_str(), "one id per request");
}

#[tokio::test]
async fn a_trusted_front_proxys_id_is_kept_and_an_untrusted_clients_is_replaced() {
    for trusted in [true, false] {
        let (proxy, app, _dir) = proxy(trusted).await;
        let host = format!("{}-demo.preview.localhost", app.addr.port());
        let a = send(&proxy, "GET", &host, "/", &[("x-request-id", "lb-1234")], empty()).await;
        let seen = app.last().headers["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(seen, a.headers["x-request-id"].to_str().unwrap());
        assert_eq!(seen == "lb-1234", trusted, "trusted: {trusted}");
    }
}

#[tokio::test]
async fn trace_context_passes_through_unchanged() {
    let (proxy, app, _dir) = proxy(true).await;
    let host = format!("{}-demo.preview.localhost", app.addr.port());
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    send(&proxy, "GET", &host, "/", &[("traceparent", parent), ("tracestate", "vendor=x")], empty()).await;
    let seen = app.last();
    assert_eq!(seen.headers["traceparent"], parent);
    assert_eq!(seen.headers["tracestate"], "vendor=x");
}

#[tokio::test]
async fn the_proxys_own_errors_carry_the_id() {
    let (proxy, _app, _dir) = proxy(true).await;
    let a = get(&proxy, "3000-nosuch.preview.localhost", "/").await;
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["requestId"], a.headers["x-request-id"].to_str().unwrap());
}
