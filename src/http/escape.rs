//! Escaping for the places the proxy writes text: HTML, URL path segments,
//! and percent-decoding of query and form values (the `percent-encoding`
//! crate; invalid escapes stay as they are).

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986 unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Appends `s` with HTML special characters escaped.
pub fn push_html(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Percent-decodes `s` once; invalid escapes stay, invalid UTF-8 is replaced.
pub fn percent_decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Decodes a form value: `+` is a space, `%XX` a byte.
pub fn form_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        let mut s = String::new();
        push_html(&mut s, r#""><script>alert('x')</script>&"#);
        assert_eq!(s, "&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;");
    }

    #[test]
    fn segment_encodes_everything_but_unreserved() {
        assert_eq!(segment("abc-123_x.y~"), "abc-123_x.y~");
        assert_eq!(segment("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
        assert_eq!(segment("é "), "%C3%A9%20");
    }

    #[test]
    fn percent_decoding_tolerates_garbage() {
        assert_eq!(percent_decode("%41%4a%"), "AJ%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(form_decode("a+b%2Bc"), "a b+c");
    }
}
