//! Preview hosts: `<port>-<key>.<base>` parsed into a typed value (SPEC 1).

use std::fmt;

/// Ports that always need credentials, even on a public sandbox:
/// web terminal, toolbox, session daemon (SDK sessions), recording dashboard.
pub const RESERVED_PORTS: [u16; 4] = [22222, 2280, 2281, 33333];

/// A TCP port of an app inside a sandbox, 1..=65535, in canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port(u16);

impl Port {
    /// The toolbox API's port inside a sandbox.
    pub const TOOLBOX: Port = Port(2280);

    /// Parses the decimal form used in host labels: no sign, no leading zero,
    /// at most five digits. `02280` is not a port, so it cannot slip past the
    /// reserved-port check.
    pub fn parse(s: &str) -> Option<Port> {
        let bytes = s.as_bytes();
        if bytes.is_empty() || bytes.len() > 5 || bytes[0] == b'0' {
            return None;
        }
        if !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u32 = s.parse().ok()?;
        u16::try_from(n).ok().map(Port)
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// Whether this port always needs credentials (compared as a number).
    pub fn is_reserved(self) -> bool {
        RESERVED_PORTS.contains(&self.0)
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A parsed preview host. The key is a sandbox id or a signed-preview token;
/// which one is up to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewHost {
    /// The whole host, lower-cased, without `:port` or trailing dot.
    host: String,
    port: Port,
    /// Byte range of the key inside `host`.
    key_start: usize,
    key_end: usize,
}

impl PreviewHost {
    pub fn port(&self) -> Port {
        self.port
    }

    /// The sandbox id or signed token (everything after the first `-` of the
    /// first label; it may itself contain `-`).
    pub fn key(&self) -> &str {
        &self.host[self.key_start..self.key_end]
    }

    /// The domain after the first label.
    pub fn base(&self) -> &str {
        &self.host[self.key_end + 1..]
    }

    /// The normalised host (lower case, no port, no trailing dot).
    pub fn as_str(&self) -> &str {
        &self.host
    }
}

/// Parses a `Host` header or `:authority` value. Returns `None` when it is not
/// a preview host. `allowed_bases`, when not empty, lists the only base
/// domains accepted (lower case).
pub fn parse(raw: &str, allowed_bases: &[String]) -> Option<PreviewHost> {
    let name = strip_port(raw);
    let name = name.strip_suffix('.').unwrap_or(name);
    // Byte searches: `split_once` with a char pattern costs more here,
    // on every request.
    let dot = name.bytes().position(|b| b == b'.')?;
    let (first, base) = (&name[..dot], &name[dot + 1..]);
    if base.is_empty() || !is_hostname(base) {
        return None;
    }
    let dash = first.bytes().position(|b| b == b'-')?;
    let (port, key) = (&first[..dash], &first[dash + 1..]);
    let port = Port::parse(port)?;
    if key.is_empty() || key.len() > 63 || !key.bytes().all(is_key_byte) {
        return None;
    }
    if !allowed_bases.is_empty() && !allowed_bases.iter().any(|b| b.eq_ignore_ascii_case(base)) {
        return None;
    }
    let key_start = port_len(port) + 1;
    Some(PreviewHost { host: name.to_ascii_lowercase(), port, key_start, key_end: key_start + key.len() })
}

/// Removes a `:port` suffix. An IPv6 literal (`[::1]:4000`) is returned with
/// its brackets, which never parses as a preview host.
pub fn strip_port(raw: &str) -> &str {
    if raw.starts_with('[') {
        return raw;
    }
    // From the end: digits, then the colon (no search through the name).
    let digits = raw.bytes().rev().take_while(u8::is_ascii_digit).count();
    match raw.len().checked_sub(digits + 1) {
        Some(colon) if raw.as_bytes()[colon] == b':' => &raw[..colon],
        _ => raw,
    }
}

fn port_len(port: Port) -> usize {
    match port.get() {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

/// Bytes of a key or a host label: ASCII letters and digits, `-`, `_`.
static KEY_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        i += 1;
    }
    table
};

fn is_key_byte(b: u8) -> bool {
    KEY_BYTES[usize::from(b)]
}

/// Labels of 1 to 63 key bytes, separated by dots. Label lengths are
/// counted only in a name long enough to hold a longer one: the loop that
/// counted them with every byte cost twice as much, on every request.
fn is_hostname(s: &str) -> bool {
    let mut after_dot = true;
    for &b in s.as_bytes() {
        if b == b'.' {
            if after_dot {
                return false;
            }
            after_dot = true;
        } else if is_key_byte(b) {
            after_dot = false;
        } else {
            return false;
        }
    }
    !after_dot && (s.len() <= 63 || s.split('.').all(|label| label.len() <= 63))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UUID: &str = "3a828150-1573-42e3-bf9f-9793a2c2c0c2";

    /// Expected (port, key, base).
    type Parts<'a> = (u16, &'a str, &'a str);

    #[test]
    fn table() {
        let uuid_host = format!("3000-{UUID}.preview.example.com");
        let upper = format!("3000-{}.PREVIEW.Example.COM:443", UUID.to_uppercase());
        let dotted = format!("8080-{UUID}.proxy.localhost.");
        // (input, expected (port, key, base))
        let cases: &[(&str, Option<Parts>)] = &[
            (&uuid_host, Some((3000, UUID, "preview.example.com"))),
            (&upper, Some((3000, UUID, "preview.example.com"))),
            (&dotted, Some((8080, UUID, "proxy.localhost"))),
            ("8000-demo.preview.localhost:4000", Some((8000, "demo", "preview.localhost"))),
            ("1-x.y", Some((1, "x", "y"))),
            ("65535-x.y", Some((65535, "x", "y"))),
            ("2280-abc123token.proxy.io", Some((2280, "abc123token", "proxy.io"))),
            ("3000-a-b-c.d.e", Some((3000, "a-b-c", "d.e"))),
            ("02280-sbx.proxy.io", None),
            ("0-x.proxy.io", None),
            ("00-x.proxy.io", None),
            ("65536-x.proxy.io", None),
            ("123456-x.proxy.io", None),
            ("+80-x.proxy.io", None),
            ("-80-x.proxy.io", None),
            ("abc-x.proxy.io", None),
            ("3000-.proxy.io", None),
            ("3000.proxy.io", None),
            ("3000-x", None),
            ("3000-x.", None),
            ("3000-x.:4000", None),
            ("proxy:4000", None),
            ("localhost", None),
            ("daytona-proxy:4000", None),
            ("my-proxy.example.com", None),
            ("proxy.localhost:4000", None),
            ("3000-x..y", None),
            ("3000-x/y.z", None),
            ("3000-x%2f.z", None),
            ("[::1]:4000", None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = parse(input, &[]).map(|h| (h.port().get(), h.key().to_string(), h.base().to_string()));
            let want = want.map(|(p, k, b)| (p, k.to_string(), b.to_string()));
            assert_eq!(got, want, "host {input:?}");
        }
    }

    #[test]
    fn allowed_bases_restrict_the_base() {
        let allowed = vec!["preview.example.com".to_string()];
        assert!(parse("3000-x.preview.example.com", &allowed).is_some());
        assert!(parse("3000-x.PREVIEW.example.com", &allowed).is_some());
        assert!(parse("3000-x.evil.com", &allowed).is_none());
        assert!(parse("3000-x.sub.preview.example.com", &allowed).is_none());
    }

    #[test]
    fn reserved_ports_compare_as_numbers() {
        for p in ["22222", "2280", "2281", "33333"] {
            assert!(Port::parse(p).unwrap().is_reserved(), "{p}");
        }
        for p in ["2282", "3000", "6080"] {
            assert!(!Port::parse(p).unwrap().is_reserved(), "{p}");
        }
        assert_eq!(Port::parse("022222"), None);
    }

    #[test]
    fn strip_port_cases() {
        assert_eq!(strip_port("a.b:4000"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("a.b:"), "a.b");
        assert_eq!(strip_port("a.b:x"), "a.b:x");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse(&s, &[]);
        }

        #[test]
        fn never_panics_on_host_like_input(s in "[0-9a-zA-Z.:\\-_\\[\\]]{0,80}") {
            if let Some(h) = parse(&s, &[]) {
                // Whatever parses round-trips to its parts.
                prop_assert_eq!(
                    format!("{}-{}.{}", h.port(), h.key(), h.base()),
                    h.as_str().to_string()
                );
                prop_assert!(h.port().get() >= 1);
            }
        }

        #[test]
        fn strip_port_takes_only_a_numeric_suffix(s in "[0-9a-z.:\\[\\]]{0,20}") {
            let expected = match s.rsplit_once(':') {
                _ if s.starts_with('[') => s.as_str(),
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => s.as_str(),
            };
            prop_assert_eq!(strip_port(&s), expected);
        }

        #[test]
        fn key_bytes_are_letters_digits_dash_underscore(b in any::<u8>()) {
            prop_assert_eq!(is_key_byte(b), b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        }

        #[test]
        fn hostname_check_is_labels_of_key_bytes(s in "[a-z0-9._\\-]{0,70}|[a-z.]{60,140}") {
            let labels = s.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(is_key_byte));
            prop_assert_eq!(is_hostname(&s), labels, "{}", s);
        }

        #[test]
        fn hostname_labels_are_at_most_63_bytes(labels in prop::collection::vec("[a-z0-9_-]{0,70}", 1..4)) {
            let s = labels.join(".");
            let valid = labels.iter().all(|l| !l.is_empty() && l.len() <= 63);
            prop_assert_eq!(is_hostname(&s), valid, "{}", s);
        }

        #[test]
        fn valid_hosts_parse(port in 1u16.., key in "[a-z0-9][a-z0-9-]{0,40}", base in "[a-z]{1,10}\\.[a-z]{2,5}") {
            let host = format!("{port}-{key}.{base}");
            let h = parse(&host, &[]).unwrap();
            prop_assert_eq!(h.port().get(), port);
            prop_assert_eq!(h.key(), key.as_str());
            prop_assert_eq!(h.base(), base.as_str());
        }
    }
}
