//! Request paths: the dot-segment check that keeps a path appended to a
//! runner's prefix inside its sandbox (SPEC 6).

/// Whether a path has a `.` or `..` segment, counting `%2e` as a dot,
/// `\`, `%2f` and `%5c` as separators, and ignoring `;params`. One pass,
/// no allocation: it runs on every request to a runner.
pub fn has_dot_segment(path: &str) -> bool {
    let b = path.as_bytes();
    let (mut i, mut dots, mut other, mut params) = (0, 0, false, false);
    loop {
        let (c, len) = if i < b.len() { decode_at(b, i) } else { (b'/', 1) };
        match c {
            b'/' | b'\\' => {
                if !other && (dots == 1 || dots == 2) {
                    return true;
                }
                if i >= b.len() {
                    return false;
                }
                (dots, other, params) = (0, false, false);
            }
            _ if params => {}
            b';' => params = true,
            b'.' => dots += 1,
            _ => other = true,
        }
        i += len;
    }
}

/// The byte at `i`, percent-decoded, and how many input bytes it used.
fn decode_at(b: &[u8], i: usize) -> (u8, usize) {
    if b[i] == b'%' && i + 2 < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
            return ((h * 16 + l) as u8, 3);
        }
    }
    (b[i], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segment_table() {
        let yes = ["/..", "/.", "/a/../b", "/%2e%2e/", "/%2E./", "/a/.;p/b", "\\..\\"];
        let no = ["/", "/a.b", "/...", "/.well-known/x", "/a..b", "/%2e%2e%2e", "/a/.x", "/file.", "/%2", "/%"];
        for p in yes {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in no {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    proptest::proptest! {
        /// A path built from segments without dots is never refused, and
        /// adding a `..` segment anywhere always is.
        #[test]
        fn dot_segments_found_wherever_they_are(
            segs in proptest::collection::vec("[a-z0-9_~-]{1,8}", 0..6),
            at in 0usize..6,
            dots in proptest::sample::select(vec!["..", ".", "%2e%2e", ".%2E", "%2e"]),
        ) {
            let clean = format!("/{}", segs.join("/"));
            proptest::prop_assert!(!has_dot_segment(&clean));
            let mut with = segs.clone();
            with.insert(at.min(segs.len()), dots.to_string());
            let dirty = format!("/{}", with.join("/"));
            proptest::prop_assert!(has_dot_segment(&dirty), "{}", dirty);
        }
    }
}
