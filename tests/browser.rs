//! Browser behaviour: the warning page and its accept endpoint, CORS on
//! every answer, control headers, last-activity updates, the toolbox route.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use preview_proxy::config::Branding;
use preview_proxy::config::Config;
use tokio_tungstenite::tungstenite::Message;

const CHROME: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";
const SAFARI: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15";
const EDGE: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36 Edg/156.0.0.0";
const NAV: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const HOST: &str = "3000-pub1.preview.localhost";

struct World {
    api: MockApi,
    runner: App,
    proxy: TestProxy,
}

/// `pub1` public and `priv1` private (token `tok-one`), both on `runner`.
async fn world(adjust: impl FnOnce(&mut Config)) -> World {
    let api = MockApi::start().await;
    let runner = App::start().await;
    api.add("pub1", true, Some(&runner.url()));
    api.add("pub2", true, Some(&runner.url()));
    api.add("priv1", false, Some(&runner.url()));
    api.set_token("priv1", "tok-one");
    let mut config = api_config(&api);
    adjust(&mut config);
    let proxy = TestProxy::start(config).await;
    World { api, runner, proxy }
}

fn warning_on(c: &mut Config) {
    c.warning = Some(Branding {
        product: "Acme Sandboxes".into(),
        logo_url: String::new(),
        accent: "#123456".into(),
        support_url: "https://help.acme.test/".into(),
    });
}

fn is_warning(a: &Answer) -> bool {
    a.status == 200 && a.text().contains("You are about to open a sandbox preview")
}

#[tokio::test]
async fn warning_page_matrix() {
    let w = world(warning_on).await;
    let nav = |ua: &'static str| vec![("user-agent", ua), ("accept", NAV), ("sec-fetch-mode", "navigate")];
    for ua in [CHROME, FIREFOX, SAFARI, EDGE] {
        let a = send(&w.proxy, "GET", HOST, "/page?x=1", &nav(ua), empty()).await;
        assert!(is_warning(&a), "{ua}: {}", a.text());
        assert_eq!(
            a.headers["content-security-policy"],
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
        );
        assert_eq!(a.headers["x-content-type-options"], "nosniff");
        assert!(a.text().contains("http://3000-pub1.preview.localhost/page?x=1"));
        assert!(a.text().contains("Acme Sandboxes"));
    }
    assert!(w.runner.seen().is_empty(), "no page load reached the app");

    let not_shown: Vec<(&str, Headers, &str)> = vec![
        ("curl", vec![("user-agent", "curl/8.5.0"), ("accept", "*/*")], "GET"),
        ("python-requests", vec![("user-agent", "python-requests/2.32"), ("accept", NAV)], "GET"),
        ("axios", vec![("user-agent", "axios/1.7.2"), ("accept", NAV)], "GET"),
        ("Go", vec![("user-agent", "Go-http-client/1.1"), ("accept", NAV)], "GET"),
        ("fetch", vec![("user-agent", CHROME), ("accept", "*/*"), ("sec-fetch-mode", "cors")], "GET"),
        ("POST", vec![("user-agent", CHROME), ("accept", NAV), ("sec-fetch-mode", "navigate")], "POST"),
        (
            "accepted",
            vec![("user-agent", CHROME), ("accept", NAV), ("cookie", "daytona-preview-page-accepted=true")],
            "GET",
        ),
        (
            "skip header",
            vec![("user-agent", CHROME), ("accept", NAV), ("x-daytona-skip-preview-warning", "true")],
            "GET",
        ),
    ];
    for (what, headers, method) in not_shown {
        let before = w.runner.seen().len();
        let a = send(&w.proxy, method, HOST, "/", &headers, empty()).await;
        assert_eq!(a.status, 200, "{what}");
        assert!(!is_warning(&a), "{what} got the warning page");
        assert_eq!(w.runner.seen().len(), before + 1, "{what} reached the app");
    }
    // The accept cookie is the proxy's: the app never sees it.
    let seen = w.runner.seen();
    let accepted =
        seen.iter().find(|s| s.headers.get("user-agent").is_some_and(|u| u == CHROME) && s.method == "GET").unwrap();
    assert!(!accepted.headers.get("cookie").is_some_and(|c| c.to_str().unwrap().contains("daytona")));

    // Reserved ports never show it (they need credentials instead).
    let a = send(&w.proxy, "GET", "2280-pub1.preview.localhost", "/", &nav(CHROME), empty()).await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn websocket_upgrades_skip_the_warning() {
    let ws = ws_echo().await;
    let w = world(warning_on).await;
    w.api.add("wsapp", true, Some(&format!("http://{ws}")));
    let headers = [("user-agent", FIREFOX), ("connection", "keep-alive, Upgrade"), ("accept", NAV)];
    let (mut sock, _) = ws_connect(&w.proxy, "3000-wsapp.preview.localhost", "/", &headers).await.expect("upgrade");
    sock.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(sock.next().await.unwrap().unwrap(), Message::Text("hi".into()));
}

#[tokio::test]
async fn accept_endpoint_sets_the_cookie_and_redirects_safely() {
    let w = world(warning_on).await;
    let proxy = &w.proxy;
    let accept = |redirect: &'static str| async move {
        let path = format!("/accept-daytona-preview-warning?redirect={redirect}");
        send(proxy, "POST", "3000-pub1.preview.localhost:4000", &path, &[], empty()).await
    };
    let a = accept("http%3A%2F%2F3000-pub1.preview.localhost%3A4000%2Fpage%3Fx%3D1").await;
    assert_eq!(a.status, 302);
    assert_eq!(a.headers["location"], "http://3000-pub1.preview.localhost:4000/page?x=1");
    let c = a.headers["set-cookie"].to_str().unwrap();
    for attr in [
        "daytona-preview-page-accepted=true",
        "Max-Age=86400",
        "Path=/",
        "HttpOnly",
        "SameSite=Lax",
        "Domain=3000-pub1.preview.localhost",
    ] {
        assert!(c.contains(attr), "{attr}: {c}");
    }
    for evil in [
        "https%3A%2F%2Fevil.com%2Fx",
        "%2F%2Fevil.com%2Fx",
        "%2F%5Cevil.com",
        "%5C%5Cevil.com",
        "https%3A%2F%2F3000-pub1.preview.localhost%3A4000%40evil.com",
        "https%3A%2F%2F3000-pub1.preview.localhost.evil.com",
        "javascript%3Aalert(1)",
        "data%3Atext%2Fhtml%2Cx",
        "%2Fok%0D%0ASet-Cookie%3A%20x%3D1",
        "%252F%252Fevil.com",
    ] {
        let a = accept(evil).await;
        assert_eq!(a.headers["location"], "/", "{evil}");
    }
    assert_eq!(accept("%2Fdashboard%3Fa%3Db").await.headers["location"], "/dashboard?a=b");
    // The endpoint answers on non-preview hosts too.
    let a =
        send(&w.proxy, "POST", "proxy.localhost", "/accept-daytona-preview-warning?redirect=%2Fx", &[], empty()).await;
    assert_eq!(a.headers["location"], "/x");
    assert!(w.runner.seen().is_empty());
}

#[tokio::test]
async fn accept_cookie_is_secure_under_https() {
    let w = world(|c| {
        warning_on(c);
        c.https = true;
    })
    .await;
    let a = send(&w.proxy, "POST", HOST, "/accept-daytona-preview-warning?redirect=%2F", &[], empty()).await;
    let c = a.headers["set-cookie"].to_str().unwrap();
    assert!(c.contains("Secure") && c.contains("SameSite=None"), "{c}");
}

#[tokio::test]
async fn warning_page_escapes_the_url() {
    let w = world(warning_on).await;
    let headers = [("user-agent", CHROME), ("accept", NAV)];
    let a = send(
        &w.proxy,
        "GET",
        HOST,
        "/%22%3E%3Cscript%3Ealert(1)%3C/script%3E?q=%22%3E%3Cimg%20src=x%3E",
        &headers,
        empty(),
    )
    .await;
    assert!(is_warning(&a));
    let text = a.text();
    assert!(!text.contains("<script>") && !text.contains("<img src=x"), "{text}");
    // A raw quote in the query (browsers send some characters unencoded).
    let raw = "GET /x?a=\"><b>bold</b> HTTP/1.1\r\nHost: 3000-pub1.preview.localhost\r\nUser-Agent: Mozilla/5.0 Chrome/156.0\r\nAccept: text/html\r\nConnection: close\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(w.proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, raw.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out).await.unwrap();
    assert!(!out.contains("<b>bold</b>"), "{out}");
}

#[tokio::test]
async fn preflights_are_answered_before_auth_and_warning() {
    let w = world(warning_on).await;
    let preflight = [
        ("origin", "https://random.example"),
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "x-custom, content-type"),
        ("user-agent", CHROME),
        ("accept", NAV),
    ];
    let a = send(&w.proxy, "OPTIONS", "3000-priv1.preview.localhost", "/api", &preflight, empty()).await;
    assert_eq!(a.status, 204);
    assert_eq!(a.headers["access-control-allow-origin"], "https://random.example");
    assert_eq!(a.headers["access-control-allow-credentials"], "true");
    assert_eq!(a.headers["access-control-allow-headers"], "x-custom, content-type");
    assert!(a.headers["access-control-allow-methods"].to_str().unwrap().contains("PUT"));
    assert!(w.runner.seen().is_empty());
    assert_eq!(w.api.calls("public") + w.api.calls("validate"), 0, "no lookups for a preflight");
}

#[tokio::test]
async fn proxy_answers_carry_cors_headers() {
    let w = world(|_| {}).await;
    let origin = [("origin", "https://app.example")];
    let a = send(&w.proxy, "GET", "3000-priv1.preview.localhost", "/", &origin, empty()).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(a.headers["access-control-allow-credentials"], "true");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    w.api.add("dead", true, Some(&format!("http://{dead}")));
    let a = send(&w.proxy, "GET", "3000-dead.preview.localhost", "/", &origin, empty()).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["access-control-allow-origin"], "https://app.example");

    let a = send(&w.proxy, "GET", "proxy.localhost", "/nothing", &origin, empty()).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.headers["access-control-allow-origin"], "https://app.example");

    // The app's own value is replaced, never duplicated.
    let a = send(&w.proxy, "GET", HOST, "/own-cors", &origin, empty()).await;
    assert_eq!(a.headers.get_all("access-control-allow-origin").iter().collect::<Vec<_>>(), ["https://app.example"]);
    // Without Origin nothing is added.
    let a = get(&w.proxy, HOST, "/").await;
    assert!(a.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn disable_cors_hands_cors_to_the_app() {
    let w = world(|_| {}).await;
    let headers = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "PUT"),
        ("x-daytona-disable-cors", "true"),
    ];
    let a = send(&w.proxy, "OPTIONS", HOST, "/own-cors", &headers, empty()).await;
    assert_eq!(a.status, 200, "the preflight reached the app");
    assert_eq!(a.headers["x-app-method"], "OPTIONS");
    assert_eq!(a.headers.get_all("access-control-allow-origin").iter().collect::<Vec<_>>(), ["http://localhost:8082"]);
    assert!(a.headers.get("access-control-allow-credentials").is_none());
    assert!(!w.runner.last().headers.contains_key("x-daytona-disable-cors"));
}

#[tokio::test]
async fn quick_requests_make_one_activity_update() {
    let w = world(|_| {}).await;
    for _ in 0..100 {
        assert_eq!(get(&w.proxy, HOST, "/").await.status, 200);
    }
    wait_for(|| async { w.api.activity("pub1") == 1 }).await;
    // Skipped, refused and unknown requests do not count. A later update
    // for another sandbox shows the earlier ones had their chance.
    for _ in 0..10 {
        send(
            &w.proxy,
            "GET",
            "3000-pub2.preview.localhost",
            "/",
            &[("x-daytona-skip-last-activity-update", "true")],
            empty(),
        )
        .await;
        assert_eq!(get(&w.proxy, "3000-priv1.preview.localhost", "/").await.status, 401);
    }
    assert!(!w.runner.last().headers.contains_key("x-daytona-skip-last-activity-update"));
    let w2 = (w.api.activity("pub2"), w.api.activity("priv1"));
    send(&w.proxy, "GET", "3000-priv1.preview.localhost", "/", &[("x-daytona-preview-token", "tok-one")], empty())
        .await;
    wait_for(|| async { w.api.activity("priv1") == 1 }).await;
    assert_eq!(w2, (0, 0));
    assert_eq!(w.api.activity("pub2"), 0);
    assert_eq!(w.api.activity("pub1"), 1);
}

#[tokio::test]
async fn open_websockets_keep_the_sandbox_awake_until_closed() {
    let ws = ws_echo().await;
    let w = world(|c| {
        c.activity_dedup = Duration::from_millis(50);
        c.activity_keepalive = Duration::from_millis(80);
    })
    .await;
    w.api.add("wsapp", true, Some(&format!("http://{ws}")));
    let (mut sock, _) = ws_connect(&w.proxy, "3000-wsapp.preview.localhost", "/", &[]).await.unwrap();
    wait_for(|| async { w.api.activity("wsapp") >= 4 }).await;
    sock.send(Message::Text("still here".into())).await.unwrap();
    sock.next().await.unwrap().unwrap();
    sock.close(None).await.unwrap();
    while sock.next().await.is_some() {}
    // The test keeps its TCP socket open: the app's close alone must end
    // the tunnel. Give the proxy a moment to notice, then no more updates.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_close = w.api.activity("wsapp");
    tokio::time::sleep(Duration::from_millis(400)).await; // five keep-alive intervals
    assert!(w.api.activity("wsapp") <= after_close + 1, "updates stopped after close");
}

#[tokio::test]
async fn streaming_responses_keep_the_sandbox_awake() {
    let w = world(|c| {
        c.activity_dedup = Duration::from_millis(50);
        c.activity_keepalive = Duration::from_millis(80);
    })
    .await;
    let req = http::Request::builder().uri(w.proxy.url("/stream")).header("host", HOST).body(empty()).unwrap();
    let resp = client().request(req).await.unwrap();
    wait_for(|| async { w.api.activity("pub1") >= 3 }).await;
    drop(resp);
    // A plain request with a known length counts once, not on a timer.
    let before = w.api.activity("pub2");
    get(&w.proxy, "3000-pub2.preview.localhost", "/").await;
    wait_for(|| async { w.api.activity("pub2") == before + 1 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // several keep-alive intervals
    assert_eq!(w.api.activity("pub2"), before + 1);
}

#[tokio::test]
async fn registry_exposes_last_activity() {
    let app = App::start().await;
    let (mut config, _dir, _) =
        registry_config("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n");
    config.api_key = "operator-key".into();
    let proxy = TestProxy::start(config).await;
    let route = "/sandboxes/demo/last-activity";
    let auth = [("authorization", "Bearer operator-key")];
    let a = send(&proxy, "GET", "proxy.localhost", route, &auth, empty()).await;
    assert_eq!(a.json()["lastActivityAt"], serde_json::Value::Null);
    get(&proxy, &format!("{}-demo.preview.localhost", app.addr.port()), "/").await;
    wait_for(|| async {
        send(&proxy, "GET", "proxy.localhost", route, &auth, empty()).await.json()["lastActivityAt"].is_u64()
    })
    .await;
    assert_eq!(get(&proxy, "proxy.localhost", route).await.status, 404, "operator key required");
}

#[tokio::test]
async fn toolbox_route_is_authenticated_and_rewrites_redirects() {
    let w = world(|_| {}).await;
    let a = get(&w.proxy, "proxy.localhost", "/toolbox/pub1/files?path=%2Ftmp").await;
    assert_eq!(a.status, 401, "always authenticated, even for a public sandbox");
    let token = [("x-daytona-preview-token", "tok-one")];
    let a = send(&w.proxy, "GET", "proxy.localhost:4000", "/toolbox/priv1/files?path=%2Ftmp", &token, empty()).await;
    assert_eq!(a.status, 200);
    assert_eq!(w.runner.last().target, "/sandboxes/priv1/toolbox/files?path=%2Ftmp");
    let a = send(&w.proxy, "GET", "proxy.localhost", "/toolbox/priv1/redirect", &token, empty()).await;
    assert_eq!(a.status, 302);
    assert_eq!(a.headers["location"], "/toolbox/priv1/files/");
    let a = send(&w.proxy, "GET", "proxy.localhost", "/toolbox/priv1/../priv2/x", &token, empty()).await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn toolbox_only_mode_refuses_other_ports() {
    let w = world(|c| c.toolbox_only = true).await;
    let a = get(&w.proxy, HOST, "/").await;
    assert_eq!(a.status, 404);
    let a = send(
        &w.proxy,
        "GET",
        "2280-priv1.preview.localhost",
        "/version",
        &[("x-daytona-preview-token", "tok-one")],
        empty(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(w.runner.last().target, "/sandboxes/priv1/toolbox/proxy/2280/version");
}
