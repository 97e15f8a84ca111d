//! The binary as a user runs it: help, configuration errors, a real run
//! stopped by SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use preview_proxy::config::SETTINGS;

const BIN: &str = env!("CARGO_BIN_EXE_preview-proxy");

fn proxy_command() -> Command {
    let mut c = Command::new(BIN);
    // Run from an empty directory so no config/proxy.toml is picked up.
    c.current_dir(std::env::temp_dir()).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn help_documents_every_setting_and_default() {
    let out = proxy_command().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for s in SETTINGS {
        assert!(text.contains(s.name), "{} missing from --help", s.name);
        if !s.default.is_empty() {
            assert!(text.contains(&format!("default: {}", s.default)), "default of {} missing", s.name);
        }
    }
    assert!(text.contains("--config"));
}

#[test]
fn bad_settings_stop_start_up_naming_each_setting() {
    let out = proxy_command()
        .env("PROXY_PORT", "99999")
        .env("PROXY_PROTOCOL", "gopher")
        .env("DAYTONA_API_URL", "http://api.internal/api")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for name in ["PROXY_PORT", "PROXY_PROTOCOL", "PROXY_API_KEY"] {
        assert!(err.contains(name), "{name} not named in: {err}");
    }
}

#[test]
fn settings_that_would_break_headers_stop_start_up_and_foreign_non_utf8_variables_do_not() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = proxy_command()
        .env("COOKIE_DOMAIN", "evil .com")
        .env("PREVIEW_WARNING_PRODUCT_NAME", "a\u{1}b")
        .env("PROXY_API_KEY", "key\nX-Injected: 1")
        .env("NOT_OURS", bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    for name in ["COOKIE_DOMAIN", "PREVIEW_WARNING_PRODUCT_NAME", "PROXY_API_KEY"] {
        assert!(err.contains(name), "{name} not named in: {err}");
    }
    assert!(!err.contains("NOT_OURS"), "{err}");
    // One of ours that is not UTF-8 is named; nothing panics.
    let out = proxy_command().env("PROXY_PORT", bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("PROXY_PORT"));
}

#[test]
fn a_certificate_that_does_not_load_is_a_configuration_error() {
    let out = proxy_command()
        .env("PROXY_PORT", "0")
        .env("ENABLE_TLS", "true")
        .env("TLS_CERT_FILE", "/nonexistent/cert.pem")
        .env("TLS_KEY_FILE", "/nonexistent/key.pem")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "exit 2, as every configuration error");
    assert!(String::from_utf8(out.stderr).unwrap().contains("/nonexistent/cert.pem"));
}

#[test]
fn a_missing_config_file_is_named() {
    let out = proxy_command().args(["--config", "/nonexistent/proxy.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("/nonexistent/proxy.toml"));
}

#[test]
fn a_broken_registry_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, "[[sandboxes]]\nid = \"a\"\n").unwrap();
    let out = proxy_command().env("PROXY_PORT", "0").env("REGISTRY_FILE", &reg).output().unwrap();
    // A registry that does not load is a configuration error: exit 2, as
    // every other one.
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("REGISTRY_FILE") && err.contains("sandbox a"), "{err}");
}

/// Starts the binary on 127.0.0.1:0 with `registry`; returns the child, its
/// address, and everything it logs (collected as it arrives).
async fn spawn_proxy(registry: &str, log_level: &str) -> (Running, String, Arc<Mutex<String>>, tempfile::TempDir) {
    spawn_with(proxy_command(), registry, log_level).await
}

/// [`spawn_proxy`] with a command of one's own (a wrapper, more settings).
async fn spawn_with(
    mut command: Command,
    registry: &str,
    log_level: &str,
) -> (Running, String, Arc<Mutex<String>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, registry).unwrap();
    let mut child = command
        .env("PROXY_LISTEN_ADDRESS", "127.0.0.1")
        .env("PROXY_PORT", "0")
        .env("PROXY_API_KEY", "proxy-secret-key")
        .env("REGISTRY_FILE", &reg)
        .env("RUST_LOG", log_level)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let addr = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = String::new();
        let addr = loop {
            let line = lines.next().expect("a listening line").unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if !line.contains("listening") {
                continue;
            }
            // Text (`address=...`) or JSON (`"address":"..."`).
            let rest = line.split("address=").nth(1).or_else(|| line.split("\"address\":\"").nth(1)).unwrap();
            break rest.split(|c: char| c.is_whitespace() || c == '"').next().unwrap().to_string();
        };
        sink.lock().unwrap().push_str(&seen);
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        addr
    })
    .await
    .unwrap();
    (Running(Some(child)), addr, log, dir)
}

/// A child proxy that is killed if a test fails before stopping it.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sigterm_and_wait(mut running: Running) -> std::process::ExitStatus {
    let mut child = running.0.take().expect("running");
    let sent = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(sent.success(), "kill -TERM failed");
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("did not exit after SIGTERM");
}

#[tokio::test]
async fn runs_for_real_and_stops_on_sigterm() {
    let app = common::App::start().await;
    let (child, addr, log, _dir) =
        spawn_proxy("[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n", "info").await;

    let client = common::client();
    let req = http::Request::builder()
        .uri(format!("http://{addr}/hello?x=1"))
        .header("host", format!("{}-demo.preview.localhost", app.addr.port()))
        .body(common::empty())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.last().target, "/hello?x=1");

    let status = tokio::task::spawn_blocking(move || sigterm_and_wait(child)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}; log: {}", log.lock().unwrap());
}

#[tokio::test]
async fn credentials_and_signed_hosts_never_reach_the_logs() {
    const SIGNED: &str = "zq8signedtokenvalue42";
    let app = common::App::start().await;
    let registry = format!(
        "api_keys = [\"org-key-secret\"]\n[[sandboxes]]\nid = \"priv\"\ntoken = \"token-secret\"\nupstream = \"127.0.0.1\"\n\n[[signed_urls]]\ntoken = \"{SIGNED}\"\nsandbox = \"priv\"\nport = 1\nexpires_at = 99999999999\n"
    );
    let (child, addr, log, _dir) = spawn_proxy(&registry, "debug").await;
    let port = app.addr.port();
    let client = common::client();
    let requests: Vec<(String, String, common::Headers)> = vec![
        (
            format!("{port}-priv.preview.localhost"),
            "/?DAYTONA_SANDBOX_AUTH_KEY=token-secret&q=query-secret".into(),
            vec![],
        ),
        (format!("{port}-priv.preview.localhost"), "/".into(), vec![("x-daytona-preview-token", "token-secret")]),
        (format!("{port}-priv.preview.localhost"), "/".into(), vec![("authorization", "Bearer org-key-secret")]),
        (format!("{port}-priv.preview.localhost"), "/".into(), vec![("authorization", "Bearer wrong-bearer-secret")]),
        (
            format!("{port}-priv.preview.localhost"),
            "/".into(),
            vec![("cookie", "daytona-sandbox-auth-priv=cookie-secret")],
        ),
        // Port 1 answers nothing: a 502 that is logged as a warning.
        (format!("1-{SIGNED}.preview.localhost"), "/".into(), vec![]),
        (format!("{port}-{SIGNED}.preview.localhost"), "/".into(), vec![]),
    ];
    for (host, path, headers) in requests {
        let mut req = http::Request::builder().uri(format!("http://{addr}{path}")).header("host", host);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        client.request(req.body(common::empty()).unwrap()).await.unwrap();
    }
    let status = tokio::task::spawn_blocking(move || sigterm_and_wait(child)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}; log: {}", log.lock().unwrap());
    let log = log.lock().unwrap().clone();
    assert!(log.contains("request failed"), "the 502 was logged: {log}");
    for secret in [
        "token-secret",
        "query-secret",
        "org-key-secret",
        "wrong-bearer-secret",
        "cookie-secret",
        SIGNED,
        "proxy-secret-key",
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log:\n{log}");
    }
    // Every request has its access line; a signed host shows as such.
    assert!(log.matches(" access: ").count() >= 7, "{log}");
    assert!(log.contains("sandbox=1-<signed>") && log.contains("sandbox=priv port="), "{log}");
    assert!(log.contains("path=/ ") && !log.contains("DAYTONA_SANDBOX_AUTH_KEY"), "{log}");
}

/// `GET path` with `host` on a fresh connection; the status and body.
async fn get_raw(addr: &str, host: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn access_lines_as_json_with_request_ids_and_one_shutdown_for_all_workers() {
    let app = common::App::start().await;
    let registry = "[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n";
    let mut command = proxy_command();
    command.env("LOG_FORMAT", "json").env("PROXY_WORKERS", "2");
    let (child, addr, log, _dir) = spawn_with(command, registry, "info").await;
    let host = format!("{}-demo.preview.localhost", app.addr.port());
    let (status, answer) = get_raw(&addr, &host, "/page?secret-query=1").await;
    assert_eq!(status, 200);
    let id = answer.lines().find_map(|l| l.strip_prefix("x-request-id: ")).expect("an X-Request-Id").trim().to_string();
    assert_eq!(app.last().headers["x-request-id"], id.as_str(), "the app sees the same id");
    let (status, answer) = get_raw(&addr, "9-nosuch.preview.localhost", "/").await;
    assert_eq!(status, 401);
    let id401 = answer.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap().trim().to_string();
    assert!(answer.contains(&format!("\"requestId\":\"{id401}\"")), "the error names its id: {answer}");
    get_raw(&addr, "localhost", "/health").await;
    let status = tokio::task::spawn_blocking(move || sigterm_and_wait(child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let log = log.lock().unwrap().clone();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let access: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] == "access").collect();
    assert_eq!(access.len(), 2, "one line per request, none for /health: {log}");
    let ok = access.iter().find(|l| l["id"] == id.as_str()).expect("the 200's line");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["path"], "/page");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["outcome"], "-");
    assert!(ok["bytes_out"].as_u64().unwrap() > 0);
    let refused = access.iter().find(|l| l["id"] == id401.as_str()).expect("the 401's line");
    assert_eq!(refused["outcome"], "UNAUTHORIZED");
    assert_eq!(refused["sandbox"], "9-<signed>", "an unverified key is not logged");
    assert!(!log.contains("secret-query"));
    assert_eq!(log.matches("preview-proxy stopped").count(), 1, "{log}");
    assert_eq!(log.matches("no longer accepting").count(), 1, "{log}");
}

#[tokio::test]
async fn access_lines_are_written_while_the_proxy_runs_not_only_at_exit() {
    // Lines wait in a worker's buffer for a batch, but not past its
    // deadline: a quiet proxy still shows its last request.
    let app = common::App::start().await;
    let registry = "[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n";
    let (child, addr, log, _dir) = spawn_with(proxy_command(), registry, "info").await;
    let host = format!("{}-demo.preview.localhost", app.addr.port());
    assert_eq!(get_raw(&addr, &host, "/quiet").await.0, 200);
    let shown = || async { log.lock().unwrap().contains(" access: ") };
    common::wait_for(shown).await;
    assert!(log.lock().unwrap().contains("path=/quiet status=200"), "{}", log.lock().unwrap());
    let status = tokio::task::spawn_blocking(move || sigterm_and_wait(child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(log.lock().unwrap().matches(" access: ").count(), 1, "written once");
}

#[tokio::test]
async fn a_failed_request_names_its_id_at_warn_too() {
    // At `RUST_LOG=warn` the request's span is off; the warning carries
    // the id itself, so it can be matched with what the client saw.
    let registry = "[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n";
    // (The start-up line, which says the address, is let through.)
    let level = "warn,preview_proxy::server::workers=info";
    let (child, addr, log, _dir) = spawn_with(proxy_command(), registry, level).await;
    // Port 1 answers nothing: a 502.
    let (status, answer) = get_raw(&addr, "1-demo.preview.localhost", "/").await;
    assert_eq!(status, 502, "{answer}");
    let id = answer.lines().find_map(|l| l.strip_prefix("x-request-id: ")).expect("an X-Request-Id").trim().to_string();
    let status = tokio::task::spawn_blocking(move || sigterm_and_wait(child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let log = log.lock().unwrap().clone();
    let line = log.lines().find(|l| l.contains("request failed")).unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(line.contains(&format!("id={id}")), "{line}");
    assert_eq!(line.matches(&id).count(), 1, "named once: {line}");
}

#[tokio::test]
async fn draining_answers_503_on_health_while_previews_still_work() {
    let app = common::App::start().await;
    let registry = "[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n";
    let mut command = proxy_command();
    command.env("SHUTDOWN_DELAY_SEC", "2").env("ACCESS_LOG", "off");
    let (child, addr, log, _dir) = spawn_with(command, registry, "info").await;
    assert_eq!(get_raw(&addr, "localhost", "/health").await.0, 200);
    let pid = child.0.as_ref().unwrap().id();
    let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(sent.success());
    common::wait_for(|| async { get_raw(&addr, "localhost", "/health").await.0 == 503 }).await;
    let (_, health) = get_raw(&addr, "localhost", "/health").await;
    assert!(health.contains(r#"{"status":"draining"}"#), "{health}");
    let host = format!("{}-demo.preview.localhost", app.addr.port());
    assert_eq!(get_raw(&addr, &host, "/").await.0, 200, "previews still served during the delay");
    let status = tokio::task::spawn_blocking(move || sigterm_and_wait(child)).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let log = log.lock().unwrap().clone();
    assert!(!log.contains(" access: "), "ACCESS_LOG=off: {log}");
    assert!(log.contains("control_plane=registry") && log.contains("1 sandboxes"), "{log}");
    assert!(log.contains("http://8000-demo.preview.localhost:"), "the demo URL to try: {log}");
}

#[test]
fn sign_url_and_revoke_url_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, "[[sandboxes]]\nid = \"demo\"\nupstream = \"127.0.0.1\"\n").unwrap();
    let run = |args: &[&str]| {
        proxy_command()
            .env("REGISTRY_FILE", &reg)
            .env("PROXY_PROTOCOL", "https")
            .env("PROXY_DOMAIN", "preview.example.com")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["sign-url", "--sandbox", "demo", "--port", "5173", "--expires-in", "600"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let token = url.strip_prefix("https://5173-").and_then(|r| r.strip_suffix(".preview.example.com/")).expect(&url);
    assert!(token.len() >= 16 && token.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{token}");
    assert!(std::fs::read_to_string(&reg).unwrap().contains(token));

    let out = run(&["revoke-url", token]);
    assert!(out.status.success());
    let out = run(&["sign-url", "--sandbox", "nosuch", "--port", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
}

/// User plus system CPU time of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

#[tokio::test]
async fn out_of_descriptors_it_neither_spins_nor_dies_and_recovers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut command = Command::new("prlimit");
    command
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PROXY_WORKERS", "1")
        .env("HEADER_READ_TIMEOUT_SEC", "1")
        .args(["--nofile=48:48", BIN]);
    let (running, addr, _log, _dir) = spawn_with(command, "", "info").await;
    let pid = running.0.as_ref().unwrap().id();
    // More silent connections than the proxy has descriptors.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_time(pid) - before;
    assert!(spent < Duration::from_millis(500), "the accept loop spun: {spent:?} of CPU in 2 s");
    // The silent connections time out, descriptors come back, and the
    // proxy answers again while the clients still hold their sockets.
    let health = async {
        loop {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            if out.starts_with(b"HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), health).await.expect("the proxy recovered");
    drop(held);
    assert!(sigterm_and_wait(running).success());
}
