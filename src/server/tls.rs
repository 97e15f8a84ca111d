//! TLS with rustls: certificates chosen by SNI (exact names, then
//! wildcards, then the default pair), reloaded when their files change
//! without touching open connections, and ALPN for h2 and http/1.1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsFiles;
use crate::file_watch::{self, stamp, Stamp};

/// Why certificates could not be loaded or made; names the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

impl From<String> for TlsError {
    fn from(message: String) -> Self {
        TlsError(message)
    }
}

/// Certificates by name, built from the files.
#[derive(Default, Debug)]
struct Store {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the domain after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Store {
    fn load(files: &TlsFiles) -> Result<Store, String> {
        let mut store = Store::default();
        if let Some((cert, key)) = &files.default {
            let (certified, _) = load_pair(cert, key)?;
            store.default = Some(certified);
        }
        if let Some(dir) = &files.dir {
            let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for cert in paths {
                let ext = cert.extension().and_then(|e| e.to_str()).unwrap_or_default();
                if !matches!(ext, "crt" | "pem")
                    || cert.file_stem().is_some_and(|s| s.to_string_lossy().ends_with(".key"))
                {
                    continue;
                }
                let key = cert.with_extension("key");
                if !key.exists() {
                    return Err(format!("{}: no matching key file {}", cert.display(), key.display()));
                }
                let (certified, names) = load_pair(&cert, &key)?;
                if names.is_empty() {
                    return Err(format!("{}: the certificate names no DNS host", cert.display()));
                }
                for name in names {
                    match name.strip_prefix("*.") {
                        Some(domain) => store.wildcard.insert(domain.to_string(), certified.clone()),
                        None => store.exact.insert(name, certified.clone()),
                    };
                }
            }
        }
        Ok(store)
    }

    /// Exact name, then a wildcard for the name minus its first label, then
    /// the default.
    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(c) = self.exact.get(&name) {
                return Some(c.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(c) = self.wildcard.get(parent) {
                    return Some(c.clone());
                }
            }
        }
        self.default.clone()
    }
}

/// Reads a certificate chain and its key; returns them with the DNS names
/// the leaf certificate is valid for (lower case).
fn load_pair(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, Vec<String>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: cannot read certificates: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", cert.display()))?;
    let leaf = chain.first().ok_or_else(|| format!("{}: no certificate in the file", cert.display()))?;
    let names = dns_names(leaf).map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: cannot read the private key: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    Ok((Arc::new(CertifiedKey::new(chain, signing)), names))
}

fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(der).map_err(|e| format!("bad certificate: {e}"))?;
    Ok(cert.valid_dns_names().map(str::to_ascii_lowercase).collect())
}

/// The SNI resolver rustls asks on every handshake, and the files it
/// reloads from.
#[derive(Debug)]
struct Resolver {
    store: ArcSwap<Store>,
    files: TlsFiles,
}

impl Resolver {
    fn reload(&self) -> Result<(), String> {
        let store = Store::load(&self.files)?;
        self.store.store(Arc::new(store));
        Ok(())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().pick(hello.server_name())
    }
}

/// A TLS acceptor whose certificates can be reloaded.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<Resolver>,
}

impl Tls {
    /// Loads every certificate; any problem is an error naming the file.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let store = Store::load(&files)?;
        if store.default.is_none() && store.exact.is_empty() && store.wildcard.is_empty() {
            let why =
                "ENABLE_TLS is set but no certificate was configured (TLS_CERT_FILE/TLS_KEY_FILE or TLS_CERT_DIR)";
            return Err(TlsError(why.into()));
        }
        let resolver = Arc::new(Resolver { store: ArcSwap::from_pointee(store), files });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), resolver })
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads the files; on error the current certificates stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        Ok(self.resolver.reload()?)
    }

    /// Reloads whenever a certificate file changes (checked every
    /// `interval`), until the acceptor is dropped. Open connections keep the
    /// certificate they started with.
    pub fn watch(&self, interval: Duration) {
        file_watch::watch(
            Arc::downgrade(&self.resolver),
            interval,
            |resolver: &Resolver| stamps(&resolver.files),
            |resolver: &Resolver| match resolver.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => tracing::warn!("TLS certificates not reloaded, keeping the current ones: {e}"),
            },
        );
    }
}

/// The stamp of every certificate file.
fn stamps(files: &TlsFiles) -> Vec<(PathBuf, Option<Stamp>)> {
    let mut paths = Vec::new();
    if let Some((c, k)) = &files.default {
        paths.push(c.clone());
        paths.push(k.clone());
    }
    if let Some(dir) = &files.dir {
        if let Ok(entries) = std::fs::read_dir(dir) {
            paths.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let stamp = stamp(&p);
            (p, stamp)
        })
        .collect()
}

/// Writes a self-signed development certificate for `*.{domain}`,
/// `{domain}` and `localhost` to `{dir}/{domain}.crt` and `.key` (the key
/// readable by its owner only). Returns both paths.
#[cfg(feature = "dev-cert")]
pub fn write_dev_certificate(domain: &str, dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let names = vec![format!("*.{domain}"), domain.to_string(), "localhost".to_string()];
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(names).map_err(|e| format!("cannot make a certificate: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cert_path = dir.join(format!("{domain}.crt"));
    let key_path = dir.join(format!("{domain}.key"));
    std::fs::write(&cert_path, cert.pem()).map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut key_file = options.open(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    std::io::Write::write_all(&mut key_file, key_pair.serialize_pem().as_bytes())
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    Ok((cert_path, key_path))
}
