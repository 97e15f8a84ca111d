//! The binary as a user runs it: help, configuration errors, a real run
//! stopped by SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
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
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("REGISTRY_FILE") && err.contains("sandbox a"), "{err}");
}

#[tokio::test]
async fn runs_for_real_and_stops_on_sigterm() {
    let app = common::App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, "[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n").unwrap();
    let mut child = proxy_command()
        .env("PROXY_LISTEN_ADDRESS", "127.0.0.1")
        .env("PROXY_PORT", "0")
        .env("REGISTRY_FILE", &reg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let addr = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("listening"))).expect("listening line").unwrap();
        let addr = line.rsplit("address=").next().unwrap().trim().to_string();
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        addr
    })
    .await
    .unwrap();

    let client = common::client();
    let req = http::Request::builder()
        .uri(format!("http://{addr}/hello?x=1"))
        .header("host", format!("{}-demo.preview.localhost", app.addr.port()))
        .body(common::empty())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.last().target, "/hello?x=1");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        panic!("did not exit after SIGTERM");
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
}
