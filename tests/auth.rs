//! Authentication against the mock Daytona API and the embedded registry:
//! every method, caching, signed URLs, cookies, and what never leaks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const TOKEN1: &str = "tok-one";
const BEARER1: &str = "user-api-key";
const SIGNED: &str = "abcdefghijklmnop12";

/// (what, headers, path, allowed)
type Case = (String, Vec<(&'static str, String)>, String, bool);

struct World {
    api: MockApi,
    runner: App,
    proxy: TestProxy,
}

/// `pub1` public, `priv1` and `priv2` private (tokens `tok-one`,
/// `tok-two`); bearer `user-api-key` opens `priv1`.
async fn world_with(adjust: impl FnOnce(&mut preview_proxy::config::Config)) -> World {
    let api = MockApi::start().await;
    let runner = App::start().await;
    api.add("pub1", true, Some(&runner.url()));
    api.add("priv1", false, Some(&runner.url()));
    api.add("priv2", false, Some(&runner.url()));
    api.set_token("pub1", "tok-pub");
    api.set_token("priv1", TOKEN1);
    api.set_token("priv2", "tok-two");
    api.grant_bearer(BEARER1, "priv1");
    let mut config = api_config(&api);
    adjust(&mut config);
    let proxy = TestProxy::start(config).await;
    World { api, runner, proxy }
}

async fn world() -> World {
    world_with(|_| {}).await
}

fn host(port: u16, key: &str) -> String {
    format!("{port}-{key}.preview.localhost")
}

#[tokio::test]
async fn method_matrix() {
    let w = world().await;
    // (sandbox, public?, its valid token)
    let sandboxes = [("pub1", true, "tok-pub"), ("priv1", false, TOKEN1)];
    for (id, public, token) in sandboxes {
        for port in [3000u16, 22222, 2280, 2281, 33333] {
            let reserved = port != 3000;
            let open = public && !reserved;
            let h = host(port, id);
            let bearer_ok = id == "priv1"; // the bearer only opens priv1
            let cases: Vec<Case> = vec![
                ("nothing".into(), vec![], "/".into(), open),
                ("valid header".into(), vec![("x-daytona-preview-token", token.into())], "/".into(), true),
                ("invalid header".into(), vec![("x-daytona-preview-token", "wrong".into())], "/".into(), open),
                ("valid query".into(), vec![], format!("/?DAYTONA_SANDBOX_AUTH_KEY={token}"), true),
                ("invalid query".into(), vec![], "/?DAYTONA_SANDBOX_AUTH_KEY=wrong".into(), open),
                (
                    "valid bearer".into(),
                    vec![("authorization", format!("Bearer {BEARER1}"))],
                    "/".into(),
                    open || bearer_ok,
                ),
                ("invalid bearer".into(), vec![("authorization", "Bearer nope".into())], "/".into(), open),
            ];
            for (what, headers, path, allowed) in cases {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let a = send(&w.proxy, "GET", &h, &path, &headers, empty()).await;
                let want = if allowed { 200 } else { 401 };
                assert_eq!(a.status, want, "{id} port {port}, {what}: {}", a.text());
            }
        }
    }
}

#[tokio::test]
async fn a_bad_bearer_does_not_hide_a_good_preview_token() {
    let w = world().await;
    let a = send(
        &w.proxy,
        "GET",
        &host(3000, "priv1"),
        "/",
        &[("authorization", "Bearer wrong"), ("x-daytona-preview-token", TOKEN1)],
        empty(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(w.api.calls("access"), 1);
    assert_eq!(w.api.calls("validate"), 1);
}

#[tokio::test]
async fn consumed_credentials_never_reach_the_app() {
    let w = world().await;
    let h = host(3000, "priv1");
    send(&w.proxy, "GET", &h, "/", &[("authorization", &format!("Bearer {BEARER1}"))], empty()).await;
    let seen = w.runner.last();
    assert!(!seen.headers.contains_key("authorization"), "accepted bearer forwarded");

    send(
        &w.proxy,
        "GET",
        &h,
        "/p?a=%2F&DAYTONA_SANDBOX_AUTH_KEY=tok-one&b=(x)+y",
        &[("x-daytona-preview-token", "garbage"), ("cookie", "app=1; daytona-preview-page-accepted=true")],
        empty(),
    )
    .await;
    let seen = w.runner.last();
    assert_eq!(seen.target, "/sandboxes/priv1/toolbox/proxy/3000/p?a=%2F&b=(x)+y");
    assert!(!seen.headers.contains_key("x-daytona-preview-token"));
    assert_eq!(seen.headers["cookie"], "app=1");

    // On a public sandbox too: credentials are the proxy's, not the app's.
    send(
        &w.proxy,
        "GET",
        &host(3000, "pub1"),
        "/?DAYTONA_SANDBOX_AUTH_KEY=x",
        &[("x-daytona-preview-token", "t")],
        empty(),
    )
    .await;
    let seen = w.runner.last();
    assert_eq!(seen.target, "/sandboxes/pub1/toolbox/proxy/3000/");
    assert!(!seen.headers.contains_key("x-daytona-preview-token"));
}

#[tokio::test]
async fn a_token_for_one_sandbox_never_opens_another() {
    let w = world().await;
    let token = [("x-daytona-preview-token", TOKEN1)];
    assert_eq!(send(&w.proxy, "GET", &host(3000, "priv1"), "/", &token, empty()).await.status, 200);
    assert_eq!(send(&w.proxy, "GET", &host(3000, "priv2"), "/", &token, empty()).await.status, 401);
    assert_eq!(w.api.calls("validate"), 2, "the check for priv2 was not answered from priv1's entry");
    let bearer = [("authorization", "Bearer user-api-key")];
    assert_eq!(send(&w.proxy, "GET", &host(3000, "priv2"), "/", &bearer, empty()).await.status, 401);
}

#[tokio::test]
async fn control_plane_errors_are_not_invalid_and_not_cached() {
    let w = world().await;
    let token = [("x-daytona-preview-token", TOKEN1)];
    let h = host(3000, "priv1");
    w.api.fail_next("validate", &[502]);
    assert_eq!(send(&w.proxy, "GET", &h, "/", &token, empty()).await.status, 200, "502 then 200 inside one lookup");

    let w = world().await;
    w.api.fail_next("validate", &[503, 503, 503]);
    let a = send(&w.proxy, "GET", &h, "/", &token, empty()).await;
    assert_eq!(a.status, 503, "an outage is not a 401: {}", a.text());
    assert!(a.headers.contains_key("retry-after"));
    assert_eq!(send(&w.proxy, "GET", &h, "/", &token, empty()).await.status, 200, "not negatively cached");
}

#[tokio::test]
async fn invalid_answers_expire_quickly_valid_ones_are_reused() {
    let w = world_with(|c| c.cache.invalid_credential_ttl = Duration::from_millis(300)).await;
    let h = host(3000, "priv1");
    let fresh = [("x-daytona-preview-token", "fresh-token")];
    assert_eq!(send(&w.proxy, "GET", &h, "/", &fresh, empty()).await.status, 401);
    w.api.set_token("priv1", "fresh-token");
    assert_eq!(send(&w.proxy, "GET", &h, "/", &fresh, empty()).await.status, 401, "still the cached answer");
    assert_eq!(w.api.calls("validate"), 1);
    tokio::time::sleep(Duration::from_millis(400)).await; // past the invalid TTL
    assert_eq!(send(&w.proxy, "GET", &h, "/", &fresh, empty()).await.status, 200);
    for _ in 0..10 {
        assert_eq!(send(&w.proxy, "GET", &h, "/", &fresh, empty()).await.status, 200);
    }
    assert_eq!(w.api.calls("validate"), 2, "valid answers are cached");
    // The defaults are the contract's.
    let c = preview_proxy::config::Config::defaults();
    assert_eq!(
        (c.cache.valid_credential_ttl, c.cache.invalid_credential_ttl),
        (Duration::from_secs(120), Duration::from_secs(5))
    );
}

#[tokio::test]
async fn concurrent_identical_checks_make_one_call() {
    let w = world().await;
    w.api.set_latency(Duration::from_millis(100));
    let proxy = Arc::new(w.proxy);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let proxy = proxy.clone();
        tasks.spawn(async move {
            send(&proxy, "GET", &host(3000, "priv1"), "/", &[("x-daytona-preview-token", TOKEN1)], empty()).await.status
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(w.api.calls("validate"), 1);
}

#[tokio::test]
async fn bearer_checks_use_the_callers_key_and_ip() {
    let w = world().await;
    let h = host(3000, "priv1");
    send(&w.proxy, "GET", &h, "/", &[("authorization", "Bearer user-api-key")], empty()).await;
    send(
        &w.proxy,
        "GET",
        &h,
        "/",
        &[("authorization", "Bearer other-key"), ("x-forwarded-for", "203.0.113.5")],
        empty(),
    )
    .await;
    let auths = w.api.state.authorizations.lock().unwrap().clone();
    assert!(auths.contains(&"Bearer user-api-key".to_string()));
    assert!(auths.contains(&"Bearer other-key".to_string()));
    let xff = w.api.state.access_xff.lock().unwrap().clone();
    assert_eq!(xff, ["127.0.0.1", "203.0.113.5"]);
}

fn set_cookie(a: &Answer) -> String {
    a.headers.get("set-cookie").expect("a Set-Cookie").to_str().unwrap().to_string()
}

/// `name=value` of a Set-Cookie line.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn signed_url_sets_a_cookie_that_outlives_the_token() {
    let w = world().await;
    w.api.add_signed(SIGNED, "priv1", 3000);
    let h = host(3000, SIGNED);
    let a = get(&w.proxy, &h, "/page").await;
    assert_eq!(a.status, 200);
    assert_eq!(w.runner.last().target, "/sandboxes/priv1/toolbox/proxy/3000/page", "routed to the token's sandbox");
    let sc = set_cookie(&a);
    assert!(sc.starts_with(&format!("daytona-sandbox-auth-{SIGNED}=")), "{sc}");
    for attr in ["HttpOnly", "Path=/", "Max-Age=3600", "SameSite=Lax", &format!("Domain={h}")] {
        assert!(sc.contains(attr), "{attr} missing: {sc}");
    }
    let cookie = cookie_pair(&sc);

    w.api.revoke_signed(SIGNED);
    let signed_calls = w.api.calls("signed");
    // A new visitor is refused once the cached answer is gone; the browser
    // that has the cookie keeps working without asking the API.
    let a = send(&w.proxy, "GET", &h, "/again", &[("cookie", &cookie)], empty()).await;
    assert_eq!(a.status, 200);
    assert_eq!(w.api.calls("signed"), signed_calls);
    // The cookie is bound to the token's port and name.
    assert_eq!(send(&w.proxy, "GET", &host(3001, SIGNED), "/", &[("cookie", &cookie)], empty()).await.status, 401);
    let renamed = cookie.replace(SIGNED, "priv2");
    assert_eq!(send(&w.proxy, "GET", &host(3000, "priv2"), "/", &[("cookie", &renamed)], empty()).await.status, 401);
}

#[tokio::test]
async fn revoked_signed_token_is_refused_without_a_cookie() {
    let w = world_with(|c| c.cache.valid_credential_ttl = Duration::from_millis(100)).await;
    w.api.add_signed(SIGNED, "priv1", 3000);
    assert_eq!(get(&w.proxy, &host(3000, SIGNED), "/").await.status, 200);
    assert_eq!(get(&w.proxy, &host(3001, SIGNED), "/").await.status, 401, "bound to its port");
    w.api.revoke_signed(SIGNED);
    tokio::time::sleep(Duration::from_millis(150)).await; // past the valid TTL
    assert_eq!(get(&w.proxy, &host(3000, SIGNED), "/").await.status, 401);
}

#[tokio::test]
async fn a_signed_token_is_cached_no_longer_than_an_invalid_credential() {
    // The API's answer gives no expiry: a revoked (or expired) token must
    // stop working within the invalid-credential TTL, not the valid one.
    let w = world_with(|c| c.cache.invalid_credential_ttl = Duration::from_millis(300)).await;
    w.api.add_signed(SIGNED, "priv1", 3000);
    assert_eq!(get(&w.proxy, &host(3000, SIGNED), "/").await.status, 200);
    w.api.revoke_signed(SIGNED);
    wait_for(|| async { get(&w.proxy, &host(3000, SIGNED), "/").await.status == 401 }).await;
}

#[tokio::test]
async fn query_key_sets_a_cookie_for_the_page_requests() {
    let w = world().await;
    let h = host(3000, "priv1");
    let a = get(&w.proxy, &h, "/?DAYTONA_SANDBOX_AUTH_KEY=tok-one").await;
    assert_eq!(a.status, 200);
    let cookie = cookie_pair(&set_cookie(&a));
    assert_eq!(send(&w.proxy, "GET", &h, "/app.js", &[("cookie", &cookie)], empty()).await.status, 200);
    assert_eq!(send(&w.proxy, "GET", &host(5173, "priv1"), "/", &[("cookie", &cookie)], empty()).await.status, 200);
    // Tampered, or moved to another sandbox: refused.
    let tampered = format!("{}x", cookie);
    assert_eq!(send(&w.proxy, "GET", &h, "/", &[("cookie", &tampered)], empty()).await.status, 401);
    let moved = cookie.replace("priv1", "priv2");
    assert_eq!(send(&w.proxy, "GET", &host(3000, "priv2"), "/", &[("cookie", &moved)], empty()).await.status, 401);
    // Header and bearer logins set no cookie (they are not browsers).
    let a = send(&w.proxy, "GET", &h, "/", &[("x-daytona-preview-token", TOKEN1)], empty()).await;
    assert!(a.headers.get("set-cookie").is_none());
}

#[tokio::test]
async fn https_cookies_work_in_third_party_iframes() {
    let w = world_with(|c| {
        c.https = true;
        c.cookie_domain = Some(".preview.example.com".into());
    })
    .await;
    let a = get(&w.proxy, "3000-priv1.preview.example.com", "/?DAYTONA_SANDBOX_AUTH_KEY=tok-one").await;
    let sc = set_cookie(&a);
    for attr in ["Secure", "SameSite=None", "Partitioned", "HttpOnly", "Domain=preview.example.com"] {
        assert!(sc.contains(attr), "{attr} missing: {sc}");
    }
}

#[tokio::test]
async fn refusals_name_the_methods_and_no_secret() {
    let w = world().await;
    let secrets = [("authorization", "Bearer bearer-secret-123"), ("x-daytona-preview-token", "header-secret-456")];
    for accept in ["application/json", "text/html"] {
        let mut headers = secrets.to_vec();
        headers.push(("accept", accept));
        let private = send(
            &w.proxy,
            "GET",
            &host(3000, "priv1"),
            "/?DAYTONA_SANDBOX_AUTH_KEY=query-secret-789",
            &headers,
            empty(),
        )
        .await;
        let unknown = send(
            &w.proxy,
            "GET",
            &host(3000, "nosuch"),
            "/?DAYTONA_SANDBOX_AUTH_KEY=query-secret-789",
            &headers,
            empty(),
        )
        .await;
        assert_eq!(private.status, 401);
        assert_eq!(
            private.text_without_request_id(),
            unknown.text_without_request_id(),
            "private and unknown look the same"
        );
        let text = private.text();
        for secret in ["bearer-secret-123", "header-secret-456", "query-secret-789"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        for method in [
            "Authorization: Bearer",
            "X-Daytona-Preview-Token",
            "DAYTONA_SANDBOX_AUTH_KEY",
            "auth cookie",
            "signed preview URL",
        ] {
            assert!(text.contains(method), "{method} not named in {text}");
        }
    }
}

#[tokio::test]
async fn private_websockets_authenticate_with_cookie_or_query_key() {
    let ws = ws_echo().await;
    let w = world().await;
    w.api.add("privws", false, Some(&format!("http://{ws}")));
    w.api.set_token("privws", "ws-token");
    let h = host(3000, "privws");

    // Refused upgrades get a 401, never a redirect.
    let err = ws_connect(&w.proxy, &h, "/hmr", &[("connection", "keep-alive, Upgrade")]).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected an HTTP 401, got {other:?}"),
    }

    let (mut sock, resp) =
        ws_connect(&w.proxy, &h, "/hmr?DAYTONA_SANDBOX_AUTH_KEY=ws-token", &[]).await.expect("query key opens it");
    sock.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(sock.next().await.unwrap().unwrap(), Message::Text("hello".into()));

    // The 101 carried the auth cookie; a later socket opens with it alone.
    let cookie = cookie_pair(resp.headers()["set-cookie"].to_str().unwrap());
    let (mut sock, _) = ws_connect(&w.proxy, &h, "/hmr", &[("cookie", &cookie)]).await.expect("cookie opens it");
    sock.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(sock.next().await.unwrap().unwrap(), Message::Binary(vec![1, 2, 3]));
}

#[tokio::test]
async fn registry_answers_every_method() {
    let app = App::start().await;
    let port = app.addr.port();
    let text = "api_keys = [\"org-key\"]\n\n[[sandboxes]]\nid = \"priv\"\ntoken = \"reg-token\"\nupstream = \"127.0.0.1\"\n\n[[sandboxes]]\nid = \"other\"\ntoken = \"other-token\"\nupstream = \"127.0.0.1\"\n";
    let (mut config, _dir, path) = registry_config(text);
    config.api_key = "cookie-secret".into();
    let proxy = TestProxy::start(config.clone()).await;
    let h = host(port, "priv");
    assert_eq!(get(&proxy, &h, "/").await.status, 401);
    assert_eq!(send(&proxy, "GET", &h, "/", &[("authorization", "Bearer org-key")], empty()).await.status, 200);
    assert_eq!(send(&proxy, "GET", &h, "/", &[("x-daytona-preview-token", "reg-token")], empty()).await.status, 200);
    assert_eq!(send(&proxy, "GET", &h, "/", &[("x-daytona-preview-token", "other-token")], empty()).await.status, 401);
    assert_eq!(get(&proxy, &h, "/?DAYTONA_SANDBOX_AUTH_KEY=reg-token").await.status, 200);

    // sign-url writes the registry; the running proxy picks it up.
    let now = preview_proxy::control_plane::unix_now();
    let url = preview_proxy::control_plane::signed_url::sign(&config, "priv", port, 60, now).unwrap();
    let signed_host = url.trim_start_matches("http://").trim_end_matches('/').replace(":4000", "");
    let token = signed_host.split('.').next().unwrap().split_once('-').unwrap().1.to_string();
    wait_for(|| async { get(&proxy, &signed_host, "/").await.status == 200 }).await;
    let a = get(&proxy, &signed_host, "/x").await;
    let cookie = cookie_pair(&set_cookie(&a));
    preview_proxy::control_plane::signed_url::revoke(&config, &token, now).unwrap();
    wait_for(|| async { get(&proxy, &signed_host, "/").await.status == 401 }).await;
    // Revoking means revoked: the cookie the token minted ends with it.
    assert_eq!(send(&proxy, "GET", &signed_host, "/", &[("cookie", &cookie)], empty()).await.status, 401);
    assert!(std::fs::read_to_string(&path).unwrap().contains(&token));
}

#[tokio::test]
async fn single_ports_can_be_opened_or_closed_in_the_registry() {
    let app = App::start().await;
    let (other, port) = (App::start().await, app.addr.port());
    let registry = format!(
        "[[sandboxes]]\nid = \"shy\"\nupstream = \"127.0.0.1\"\npublic_ports = [{port}]\ntoken = \"t1\"\n\n\
         [[sandboxes]]\nid = \"open\"\npublic = true\nupstream = \"127.0.0.1\"\nprivate_ports = [{port}]\ntoken = \"t2\"\n"
    );
    let (config, _dir, _) = registry_config(&registry);
    let proxy = TestProxy::start(config).await;
    let other_port = other.addr.port();
    // A private sandbox with one public port; a public one with one private port.
    assert_eq!(get(&proxy, &host(port, "shy"), "/").await.status, 200);
    assert_eq!(get(&proxy, &host(other_port, "shy"), "/").await.status, 401);
    assert_eq!(get(&proxy, &host(port, "open"), "/").await.status, 401);
    assert_eq!(get(&proxy, &host(other_port, "open"), "/").await.status, 200);
    let with_token = send(&proxy, "GET", &host(port, "open"), "/", &[("x-daytona-preview-token", "t2")], empty()).await;
    assert_eq!(with_token.status, 200);
    // Reserved ports stay authenticated whatever the lists say.
    let (config, _dir2, _) =
        registry_config("[[sandboxes]]\nid = \"shy\"\nupstream = \"127.0.0.1\"\npublic_ports = [22222]\n");
    let proxy = TestProxy::start(config).await;
    assert_eq!(get(&proxy, &host(22222, "shy"), "/").await.status, 401);
}

#[test]
fn a_port_list_on_the_wrong_kind_of_sandbox_is_a_registry_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(&path, "[[sandboxes]]\nid = \"a\"\nupstream = \"127.0.0.1\"\nprivate_ports = [3000]\n").unwrap();
    let err = preview_proxy::control_plane::Registry::open(&path).err().expect("rejected");
    assert!(err.to_string().contains("sandbox a: private_ports is for public sandboxes"), "{err}");
}
