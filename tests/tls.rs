//! TLS: certificates chosen by SNI, the unknown-name rule, reloads, HTTP/2
//! by ALPN, start-up errors. Certificates are generated at test time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use preview_proxy::config::Config;
use preview_proxy::config::TlsFiles;
use preview_proxy::pipeline::access_log::Lines;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes a self-signed certificate for `names` as `{dir}/{file}.crt/.key`;
/// returns the certificate's DER.
fn make_cert(dir: &Path, file: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names).unwrap();
    let (c, k) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key_pair.serialize_pem()).unwrap();
    (c, k, cert.der().to_vec())
}

/// A client that trusts `roots` and offers `alpn`.
fn connector(roots: &[&[u8]], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(CertificateDer::from(r.to_vec())).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to the proxy for `sni`, from a client that trusts
/// `roots` and offers `alpn`.
async fn connect(
    proxy: &TestProxy,
    roots: &[&[u8]],
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    connector(roots, alpn).connect(name, tcp).await
}

/// The certificate the proxy presents for `sni`, or `None` if the handshake
/// fails. Verification is done by the client against every test root.
async fn presented(proxy: &TestProxy, roots: &[&[u8]], sni: &str) -> Option<Vec<u8>> {
    let tls = connect(proxy, roots, sni, &[]).await.ok()?;
    let (_, conn) = tls.get_ref();
    Some(conn.peer_certificates()?[0].to_vec())
}

struct Setup {
    _dir: tempfile::TempDir,
    certs_dir: PathBuf,
    default: Vec<u8>,
    wildcard: Vec<u8>,
    custom: Vec<u8>,
    config: Config,
}

fn setup(with_default: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    std::fs::create_dir(&certs_dir).unwrap();
    let (dc, dk, default) = make_cert(dir.path(), "default", &["proxy.example.com"]);
    let (_, _, wildcard) = make_cert(&certs_dir, "preview", &["*.preview.example.com"]);
    let (_, _, custom) = make_cert(&certs_dir, "custom", &["app.customer.org"]);
    let reg = dir.path().join("registry.toml");
    std::fs::write(&reg, "[[sandboxes]]\nid = \"demo\"\npublic = true\nupstream = \"127.0.0.1\"\n").unwrap();
    let mut config = Config::defaults();
    config.registry_file = reg;
    config.tls = Some(TlsFiles { default: with_default.then_some((dc, dk)), dir: Some(certs_dir.clone()) });
    config.tls_reload_interval = std::time::Duration::from_millis(20);
    Setup { _dir: dir, certs_dir, default, wildcard, custom, config }
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_default() {
    let s = setup(true);
    let proxy = TestProxy::start(s.config.clone()).await;
    let roots = [s.default.as_slice(), &s.wildcard, &s.custom];
    assert_eq!(presented(&proxy, &roots, "app.customer.org").await.as_deref(), Some(s.custom.as_slice()));
    assert_eq!(presented(&proxy, &roots, "3000-sbx.preview.example.com").await.as_deref(), Some(s.wildcard.as_slice()));
    assert_eq!(presented(&proxy, &roots, "proxy.example.com").await.as_deref(), Some(s.default.as_slice()));
    // Unknown names get the default certificate, which the client rejects
    // for that name: the handshake fails rather than serving a wrong name.
    assert_eq!(presented(&proxy, &roots, "unknown.test").await, None);
    // A wildcard covers one label only.
    assert_eq!(presented(&proxy, &roots, "a.b.preview.example.com").await, None);
}

#[tokio::test]
async fn without_a_default_unknown_names_are_refused() {
    let s = setup(false);
    let proxy = TestProxy::start(s.config.clone()).await;
    // A client that accepts anything still gets no certificate.
    let roots = [s.wildcard.as_slice(), &s.custom];
    assert!(connect(&proxy, &roots, "unknown.test", &[]).await.is_err());
    assert!(presented(&proxy, &roots, "app.customer.org").await.is_some());
}

#[tokio::test]
async fn replaced_certificates_are_reloaded_without_dropping_connections() {
    let s = setup(true);
    let proxy = TestProxy::start(s.config.clone()).await;
    let roots_old = [s.default.as_slice(), &s.wildcard, &s.custom];
    // An open HTTP/1.1 connection before the reload.
    let mut open = connect(&proxy, &roots_old, "proxy.example.com", &[]).await.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let (c, k, renewed) = make_cert(tmp.path(), "custom", &["app.customer.org"]);
    std::fs::rename(&k, s.certs_dir.join("custom.key")).unwrap();
    std::fs::rename(&c, s.certs_dir.join("custom.crt")).unwrap();
    let roots = [s.default.as_slice(), &s.wildcard, &s.custom, &renewed];
    wait_for(|| async { presented(&proxy, &roots, "app.customer.org").await.as_deref() == Some(renewed.as_slice()) })
        .await;

    open.write_all(b"GET /health HTTP/1.1\r\nHost: proxy.example.com\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    open.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn an_idle_tls_connection_is_parked_and_served_again() {
    // TLS connections park in a lot of their own kind; the session (and
    // its keys) goes with the parked connection and serves on after it.
    let app = App::start().await;
    let s = setup(true);
    let proxy = TestProxy::start(s.config.clone()).await;
    let name = "3000-demo.preview.example.com";
    let tls = connect(&proxy, &[s.wildcard.as_slice()], name, &[b"http/1.1"]).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let host = format!("{}-demo.preview.example.com", app.addr.port());
    for path in ["/first", "/after-parking"] {
        let req = Request::get(path).header("host", &host).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        let resp = sender.send_request(req).await.expect("answered on the same connection");
        assert_eq!(resp.status(), 200, "{path}");
        resp.into_body().collect().await.unwrap();
        if path == "/first" {
            wait_for(|| async { parked(&proxy) == 1.0 }).await;
        }
    }
    let seen: Vec<_> = app.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(seen, ["/first", "/after-parking"]);
    assert_eq!(parked(&proxy), 0.0);
    // Parked again, then closed by its client: the lot lets it go.
    wait_for(|| async { parked(&proxy) == 1.0 }).await;
    drop(sender);
    wait_for(|| async { parked(&proxy) == 0.0 }).await;
}

#[tokio::test]
async fn http2_by_alpn_with_many_streams() {
    let app = App::start().await;
    let s = setup(true);
    let proxy = TestProxy::start(s.config.clone()).await;
    let name = "3000-demo.preview.example.com";
    let tls = connect(&proxy, &[s.wildcard.as_slice()], name, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let io = hyper_util::rt::TokioIo::new(tls);
    let (sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let port = app.addr.port();
    for i in 0..100 {
        let (mut sender, ok) = (sender.clone(), ok.clone());
        tasks.spawn(async move {
            let uri = format!("https://{port}-demo.preview.example.com/tls/{i}");
            let resp = sender.send_request(Request::builder().uri(uri).body(empty()).unwrap()).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            if body == format!("/tls/{i}").as_bytes() {
                ok.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    assert_eq!(ok.load(Ordering::SeqCst), 100);
}

#[tokio::test]
async fn http1_over_tls_when_the_client_offers_only_http1() {
    let s = setup(true);
    let proxy = TestProxy::start(s.config.clone()).await;
    let mut tls = connect(&proxy, &[s.default.as_slice()], "proxy.example.com", &[b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: proxy.example.com\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"status\":\"ok\""), "{answer}");
}

#[tokio::test]
async fn missing_or_bad_certificates_are_start_up_errors_naming_the_file() {
    let s = setup(true);
    let mut config = s.config.clone();
    config.tls =
        Some(TlsFiles { default: Some(("/nonexistent/cert.pem".into(), "/nonexistent/key.pem".into())), dir: None });
    let err = preview_proxy::server::Server::new(config, Lines::Events).err().expect("start-up fails").to_string();
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");

    std::fs::write(s.certs_dir.join("broken.crt"), "not a certificate").unwrap();
    std::fs::write(s.certs_dir.join("broken.key"), "not a key").unwrap();
    let err =
        preview_proxy::server::Server::new(s.config.clone(), Lines::Events).err().expect("start-up fails").to_string();
    assert!(err.contains("broken"), "{err}");
}

#[tokio::test]
async fn slow_handshakes_are_cut_off() {
    let s = setup(true);
    let mut config = s.config.clone();
    config.tls_handshake_timeout = std::time::Duration::from_millis(200);
    let proxy = TestProxy::start(config).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    // Say nothing: the proxy closes the connection after the timeout.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed by the proxy: {read:?}");
}

#[tokio::test]
async fn a_returning_client_resumes_its_tls_session() {
    let s = setup(true);
    let proxy = TestProxy::start(s.config.clone()).await;
    let client = connector(&[s.default.as_slice()], &[b"http/1.1"]);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let name = ServerName::try_from("proxy.example.com").unwrap();
        let mut tls = client.connect(name, tcp).await.unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        tls.write_all(b"GET /health HTTP/1.1\r\nHost: proxy.example.com\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.unwrap(); // the session tickets come with the answer
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(kinds, [Some(rustls::HandshakeKind::Full), Some(rustls::HandshakeKind::Resumed)]);
}
