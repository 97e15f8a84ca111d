//! Login for private previews (SPEC 9), the parts that need no provider to
//! answer: who is sent to sign in, the callback's refusals, no open
//! redirect, and identity headers no client can forge. The whole flow
//! against a real provider is in `e2e/tests/oidc-*.test.mjs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use common::*;

const BROWSER: [(&str, &str); 3] = [
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36"),
    ("accept", "text/html,application/xhtml+xml"),
    ("sec-fetch-mode", "navigate"),
];

/// A proxy whose OIDC provider is at `issuer`, with a private sandbox
/// `app1` and a public `open1`, both on `app`.
async fn proxy_with_provider(issuer: &str) -> (TestProxy, tempfile::TempDir) {
    let registry = "[[sandboxes]]\nid = \"app1\"\nupstream = \"127.0.0.1\"\nviewers = [\"*\"]\n\n\
                    [[sandboxes]]\nid = \"open1\"\npublic = true\nupstream = \"127.0.0.1\"\n";
    let (mut config, dir, _) = registry_config(registry);
    config.oidc.issuer = Some(issuer.to_string());
    config.oidc.client_id = "preview-proxy".into();
    (TestProxy::start(config).await, dir)
}

/// An address nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_provider_that_is_down_is_a_503_for_a_navigation_and_fetches_still_get_401() {
    let app = App::start().await;
    let (proxy, _dir) = proxy_with_provider(&format!("http://127.0.0.1:{}", closed_port())).await;
    let host = format!("{}-app1.preview.localhost", app.addr.port());
    let nav = send(&proxy, "GET", &host, "/", &BROWSER, empty()).await;
    assert_eq!(nav.status, 503, "{}", nav.text());
    assert!(nav.text().contains("CONTROL_PLANE_UNAVAILABLE"), "{}", nav.text());
    assert!(nav.headers.get("location").is_none(), "no redirect loop");
    let fetch = [BROWSER[0], BROWSER[1], ("sec-fetch-mode", "cors")];
    assert_eq!(send(&proxy, "GET", &host, "/", &fetch, empty()).await.status, 401);
    assert_eq!(get(&proxy, &host, "/").await.status, 401, "an API client");
    let reserved = "22222-app1.preview.localhost";
    assert_eq!(send(&proxy, "GET", reserved, "/", &BROWSER, empty()).await.status, 401, "the terminal port");
    assert!(app.seen().is_empty(), "nothing reached the app");
}

#[tokio::test]
async fn the_callback_refuses_what_this_browser_did_not_start() {
    let (proxy, _dir) = proxy_with_provider(&format!("http://127.0.0.1:{}", closed_port())).await;
    let base = "preview.localhost";
    let no_cookie = get(&proxy, base, "/callback?code=abc&state=xyz").await;
    assert_eq!(no_cookie.status, 400);
    assert_eq!(no_cookie.json()["code"], "BAD_LOGIN");
    let forged = [("cookie", "preview-proxy-login-xyz=eyJ9.99999999999.AAAA")];
    assert_eq!(send(&proxy, "GET", base, "/callback?code=abc&state=xyz", &forged, empty()).await.status, 400);
    let denied = get(&proxy, base, "/callback?error=access_denied&error_description=The+user+said+no").await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["code"], "LOGIN_FAILED");
    assert!(denied.json()["message"].as_str().unwrap().contains("The user said no"));
    for evil in ["http://evil.example/", "http://3000-app1.evil.example/", "//evil.example/", "javascript:alert(1)"] {
        let answer = get(&proxy, base, &format!("/login?return={}", encode(evil))).await;
        assert_eq!(answer.status, 400, "{evil}");
        assert!(answer.headers.get("location").is_none(), "{evil}");
    }
}

#[tokio::test]
async fn identity_headers_from_clients_never_reach_the_app() {
    let app = App::start().await;
    let (proxy, _dir) = proxy_with_provider(&format!("http://127.0.0.1:{}", closed_port())).await;
    let host = format!("{}-open1.preview.localhost", app.addr.port());
    let forged = [("x-forwarded-user", "admin"), ("x-forwarded-email", "admin@example.com")];
    assert_eq!(send(&proxy, "GET", &host, "/", &forged, empty()).await.status, 200);
    let seen = app.last();
    assert!(seen.headers.get("x-forwarded-user").is_none());
    assert!(seen.headers.get("x-forwarded-email").is_none());
}

#[test]
fn an_issuer_without_a_client_id_stops_start_up() {
    let env = [("OIDC_DOMAIN".to_string(), "http://127.0.0.1:9000".to_string())].into();
    let config = preview_proxy::config::Config::from_sources(&toml::Table::new(), std::path::Path::new("."), &env);
    let err = config.expect_err("rejected");
    assert!(err.to_string().contains("OIDC_CLIENT_ID"), "{err}");
}
