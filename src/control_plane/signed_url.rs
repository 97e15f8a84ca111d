//! Signed preview URLs in the embedded registry: `sign-url` mints a token
//! bound to a sandbox and port until an expiry, `revoke-url` expires it.
//! Edits are locked, validated, and replace the file atomically, so the
//! running proxy only ever reads a whole, valid registry.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rand::Rng;
use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

use super::registry::Snapshot;
use crate::config::Config;

/// Longest lifetime `sign-url` accepts (Daytona's range is 1..=86400 s).
pub const MAX_EXPIRES_IN: u64 = 86_400;
/// Expired entries stay this long (revocations stay visible), then go.
const PRUNE_AFTER: u64 = 3600;
const TOKEN_LEN: usize = 24;

/// A new token: 24 lower-case letters and digits (about 124 bits).
pub fn mint_token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..TOKEN_LEN).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// Why a signed URL could not be minted or revoked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SignUrlError(pub String);

impl From<String> for SignUrlError {
    fn from(message: String) -> Self {
        SignUrlError(message)
    }
}

/// Mints a token for `sandbox` on `port`, stores it, and returns the URL.
pub fn sign(config: &Config, sandbox: &str, port: u16, expires_in: u64, now: u64) -> Result<String, SignUrlError> {
    if !(1..=MAX_EXPIRES_IN).contains(&expires_in) {
        return Err(format!("--expires-in must be 1-{MAX_EXPIRES_IN} seconds").into());
    }
    if port == 0 {
        return Err(SignUrlError("--port must be 1-65535".into()));
    }
    let token = mint_token();
    let sandbox = sandbox.to_ascii_lowercase();
    edit(&config.registry_file, now, |doc| {
        let mut entry = Table::new();
        entry.insert("token", value(token.as_str()));
        entry.insert("sandbox", value(sandbox.as_str()));
        entry.insert("port", value(i64::from(port)));
        entry.insert("expires_at", value(to_i64(now + expires_in)));
        signed_urls(doc)?.push(entry);
        Ok(())
    })?;
    let scheme = if config.https { "https" } else { "http" };
    Ok(format!("{scheme}://{port}-{token}.{}/", config.domain))
}

/// Expires `token` now and marks it revoked, which also ends the cookies
/// it minted. Unknown tokens are an error.
pub fn revoke(config: &Config, token: &str, now: u64) -> Result<(), SignUrlError> {
    Ok(edit(&config.registry_file, now, |doc| {
        let entry = signed_urls(doc)?
            .iter_mut()
            .find(|t| t.get("token").and_then(Item::as_str) == Some(token))
            .ok_or_else(|| "no signed URL has this token".to_string())?;
        entry.insert("expires_at", value(to_i64(now)));
        entry.insert("revoked", value(true));
        Ok(())
    })?)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn signed_urls(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, String> {
    doc.entry("signed_urls")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| "signed_urls must be an array of tables ([[signed_urls]])".to_string())
}

/// Locked read-modify-write of the registry: the change is applied, old
/// expired entries pruned, the result validated as a registry, then written
/// to a temporary file and renamed over the original.
fn edit(path: &Path, now: u64, change: impl FnOnce(&mut DocumentMut) -> Result<(), String>) -> Result<(), String> {
    let shown = path.display();
    let lock_path = sibling(path, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("{}: cannot lock: {e}", lock_path.display()))?;

    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("{shown}: {e}"))?;
    change(&mut doc)?;
    if let Some(urls) = doc.get_mut("signed_urls").and_then(Item::as_array_of_tables_mut) {
        urls.retain(|t| t.get("expires_at").and_then(Item::as_integer).is_none_or(|e| e as u64 + PRUNE_AFTER > now));
    }
    let new_text = doc.to_string();
    Snapshot::parse(&new_text).map_err(|e| format!("{shown}: the edit would not be a valid registry: {e}"))?;

    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(new_text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{shown}: cannot write: {e}"));
    }
    Ok(())
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn setup() -> (Config, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, "# my comment\n[[sandboxes]]\nid = \"demo\"\nupstream = \"127.0.0.1\"\n").unwrap();
        let mut config = Config::defaults();
        config.registry_file = path;
        config.domain = "preview.example.com".into();
        (config, dir)
    }

    #[test]
    fn tokens_are_lowercase_alphanumeric_and_random() {
        let a = mint_token();
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(a, mint_token());
    }

    #[test]
    fn sign_stores_and_revoke_expires() {
        let (config, _dir) = setup();
        let url = sign(&config, "demo", 3000, 60, NOW).unwrap();
        let token =
            url.strip_prefix("http://3000-").unwrap().strip_suffix(".preview.example.com/").unwrap().to_string();
        let text = std::fs::read_to_string(&config.registry_file).unwrap();
        assert!(text.starts_with("# my comment"), "comments survive: {text}");
        let snap = Snapshot::parse(&text).unwrap();
        assert_eq!(snap.resolve_signed(&token, 3000, NOW + 59), Some("demo"));
        assert_eq!(snap.resolve_signed(&token, 3000, NOW + 60), None);

        revoke(&config, &token, NOW + 1).unwrap();
        let snap = Snapshot::parse(&std::fs::read_to_string(&config.registry_file).unwrap()).unwrap();
        assert_eq!(snap.resolve_signed(&token, 3000, NOW + 1), None);
        assert!(snap.is_revoked(&token), "the cookies it minted end too");
        assert!(revoke(&config, "nosuchtoken", NOW).is_err());
    }

    #[test]
    fn unknown_sandboxes_and_bad_lifetimes_are_refused() {
        let (config, _dir) = setup();
        let before = std::fs::read_to_string(&config.registry_file).unwrap();
        assert!(sign(&config, "nosuch", 3000, 60, NOW).unwrap_err().0.contains("nosuch"));
        assert!(sign(&config, "demo", 3000, 0, NOW).is_err());
        assert!(sign(&config, "demo", 3000, MAX_EXPIRES_IN + 1, NOW).is_err());
        assert_eq!(std::fs::read_to_string(&config.registry_file).unwrap(), before, "file untouched");
    }

    #[test]
    fn expired_entries_are_pruned() {
        let (config, _dir) = setup();
        let old = sign(&config, "demo", 3000, 60, NOW).unwrap();
        sign(&config, "demo", 3000, 60, NOW + 60 + PRUNE_AFTER).unwrap();
        let text = std::fs::read_to_string(&config.registry_file).unwrap();
        let old_token = &old["http://3000-".len().."http://3000-".len() + TOKEN_LEN];
        assert!(!text.contains(old_token), "{text}");
        assert_eq!(text.matches("[[signed_urls]]").count(), 1);
    }

    #[test]
    fn concurrent_signers_lose_nothing() {
        let (config, _dir) = setup();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..5 {
                        sign(&config, "demo", 3000, 600, NOW).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&config.registry_file).unwrap();
        assert_eq!(text.matches("[[signed_urls]]").count(), 40);
    }
}
