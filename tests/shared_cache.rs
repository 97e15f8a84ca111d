//! The Redis cache shared by proxy instances: one lookup serves every
//! instance, the API's invalidations (key deletes) reach them, last-activity
//! updates are made once across instances, and Redis being down costs
//! nothing but the sharing. Needs `redis-server` (scripts/test installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const HOST: &str = "3000-sbx1.preview.localhost";

/// A throwaway redis-server on a free loopback port.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let redis = Redis { child, port };
        wait_for(|| async { redis.cli(&["PING"]) == "PONG" }).await;
        redis
    }

    /// One `redis-cli` command; its output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn config(&self, api: &MockApi) -> preview_proxy::config::Config {
        let mut config = api_config(api);
        config.redis = Some(("127.0.0.1".into(), self.port));
        config.cache.shared_local_ttl = Duration::from_millis(200);
        config
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn setup() -> (Redis, MockApi, App) {
    let redis = Redis::start().await;
    let api = MockApi::start().await;
    let runner = App::start().await;
    api.add("sbx1", true, Some(&runner.url()));
    (redis, api, runner)
}

#[tokio::test]
async fn one_lookup_serves_every_instance_in_daytonas_format() {
    let (redis, api, runner) = setup().await;
    let a = TestProxy::start(redis.config(&api)).await;
    let b = TestProxy::start(redis.config(&api)).await;
    assert_eq!(get(&a, HOST, "/").await.status, 200);
    // The writes are detached from the request.
    wait_for(|| async { redis.cli(&["EXISTS", "proxy:sandbox-runner-info:sbx1"]) == "1" }).await;
    wait_for(|| async { redis.cli(&["EXISTS", "proxy:sandbox-public:sbx1"]) == "1" }).await;
    assert_eq!(get(&b, HOST, "/").await.status, 200);
    assert_eq!(api.calls("public"), 1);
    assert_eq!(api.calls("runner"), 1);
    assert_eq!(runner.seen().len(), 2);

    assert_eq!(redis.cli(&["GET", "proxy:sandbox-public:sbx1"]), r#"{"value":true}"#);
    let runner_info: serde_json::Value =
        serde_json::from_str(&redis.cli(&["GET", "proxy:sandbox-runner-info:sbx1"])).unwrap();
    assert_eq!(runner_info["value"]["apiUrl"], runner.url());
    assert_eq!(runner_info["value"]["apiKey"], "runner-key-sbx1");
    let ttl: u64 = redis.cli(&["TTL", "proxy:sandbox-public:sbx1"]).parse().unwrap();
    assert!(ttl > 3500 && ttl <= 3600, "the public flag keeps its 1 h TTL in Redis: {ttl}");
}

#[tokio::test]
async fn an_api_side_invalidation_reaches_the_proxy() {
    let (redis, api, _runner) = setup().await;
    let proxy = TestProxy::start(redis.config(&api)).await;
    assert_eq!(get(&proxy, HOST, "/").await.status, 200);
    wait_for(|| async { redis.cli(&["EXISTS", "proxy:sandbox-public:sbx1"]) == "1" }).await;

    // The sandbox turns private; the API deletes the key, as Daytona's does.
    let url = api.state.sandboxes.lock().unwrap()["sbx1"].proxy_url.clone();
    api.add("sbx1", false, url.as_deref());
    assert_eq!(redis.cli(&["DEL", "proxy:sandbox-public:sbx1"]), "1");
    wait_for(|| async { get(&proxy, HOST, "/").await.status == 401 }).await;
    assert_eq!(api.calls("public"), 2);
}

#[tokio::test]
async fn credentials_are_shared_under_a_hash_never_the_secret() {
    let (redis, api, _runner) = setup().await;
    let url = api.state.sandboxes.lock().unwrap()["sbx1"].proxy_url.clone();
    api.add("sbx1", false, url.as_deref());
    api.set_token("sbx1", "tok-secret-123");
    let a = TestProxy::start(redis.config(&api)).await;
    let b = TestProxy::start(redis.config(&api)).await;
    let with_token = [("x-daytona-preview-token", "tok-secret-123")];
    assert_eq!(send(&a, "GET", HOST, "/", &with_token, empty()).await.status, 200);
    wait_for(|| async { !redis.cli(&["KEYS", "proxy:sandbox-auth-key-valid:*"]).is_empty() }).await;
    assert_eq!(send(&b, "GET", HOST, "/", &with_token, empty()).await.status, 200);
    assert_eq!(api.calls("validate"), 1);
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(!keys.contains("tok-secret-123"), "a raw secret in a key: {keys}");
    for key in keys.lines() {
        assert!(!redis.cli(&["GET", key]).contains("tok-secret-123"));
    }
}

#[tokio::test]
async fn last_activity_is_updated_once_across_instances() {
    let (redis, api, _runner) = setup().await;
    let a = TestProxy::start(redis.config(&api)).await;
    let b = TestProxy::start(redis.config(&api)).await;
    assert_eq!(get(&a, HOST, "/").await.status, 200);
    wait_for(|| async { api.activity("sbx1") == 1 }).await;
    assert_eq!(get(&b, HOST, "/").await.status, 200);
    // b's update is detached; without the shared claim it reaches the API
    // within milliseconds (its own in-process dedup does not know a's).
    let second = tokio::time::timeout(Duration::from_millis(500), async {
        while api.activity("sbx1") < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(second.is_err(), "a second last-activity update was sent");
    assert_eq!(api.calls("activity"), 1);
}

#[tokio::test]
async fn redis_down_costs_only_the_sharing() {
    let (redis, api, _runner) = setup().await;
    let config = redis.config(&api);
    drop(redis);
    let proxy = TestProxy::start(config).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy, HOST, "/").await.status, 200);
    }
    assert_eq!(api.calls("runner"), 1, "the in-process cache still works");
}
