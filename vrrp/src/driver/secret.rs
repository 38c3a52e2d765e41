//! [`Secret`]: a credential that cannot leak by accident.
//!
//! It has no `Display`, its `Debug` prints `<redacted>`, and the only way to
//! the bytes is the explicitly named [`Secret::expose`], which this crate
//! uses in exactly one place (building the `Authorization` header, itself
//! marked sensitive so hyper's `Debug` hides it too).

use std::fmt;

/// A secret string (API token). Debug prints `<redacted>`; there is no Display.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wrap a secret. Surrounding whitespace (a token file's trailing newline) is trimmed.
    pub fn new(value: impl Into<String>) -> Self {
        let v: String = value.into();
        Secret(v.trim().into())
    }

    /// The secret itself. Name every use: it must never reach a log line,
    /// an error, a metric or `/status`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is empty (a blank token file).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replace every occurrence of this secret in `text` by `<redacted>`,
    /// also where `text` carries it JSON-escaped (`\u0064…`, `\/`): escapes
    /// are decoded first. Used on any text a server sends back before it is
    /// kept in an error or logged.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            // Too short to search for without mangling ordinary words; a
            // token this short is refused at construction of the driver anyway.
            return text.to_owned();
        }
        let decoded;
        let text = if text.contains('\\') {
            decoded = unescape(text);
            &decoded
        } else {
            text
        };
        text.replace(&*self.0, "<redacted>")
    }
}

/// Decodes the JSON string escapes `\uXXXX`, `\/` and `\\`; anything
/// else is kept as written.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (ch, used) = match tail.as_bytes().get(1) {
            Some(b'u') => match tail
                .get(2..6)
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .and_then(char::from_u32)
            {
                Some(c) => (c, 6),
                None => ('\\', 1),
            },
            Some(b'/') => ('/', 2),
            Some(b'\\') => ('\\', 2),
            _ => ('\\', 1),
        };
        out.push(ch);
        rest = &tail[used..];
    }
    out.push_str(rest);
    out
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_trim_works() {
        let s = Secret::new("dop_v1_abcdef\n");
        assert_eq!(s.expose(), "dop_v1_abcdef");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(
            s.scrub("bad token dop_v1_abcdef here"),
            "bad token <redacted> here"
        );
        let escaped: String = "Bearer dop_v1_abcdef"
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        let out = s.scrub(&format!("echo: {escaped} \\x"));
        assert_eq!(out, "echo: Bearer <redacted> \\x");
        assert_eq!(s.scrub("dop_v1\\/abcdef"), "dop_v1/abcdef");
        assert_eq!(s.scrub("dop\\u005fv1_abcdef"), "<redacted>");
    }
}
