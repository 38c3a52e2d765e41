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

    /// Replace every occurrence of this secret in `text` by `<redacted>`.
    /// Used on any text a server sends back before it is kept in an error.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            // Too short to search for without mangling ordinary words; a
            // token this short is refused at construction of the driver anyway.
            return text.to_owned();
        }
        text.replace(&*self.0, "<redacted>")
    }
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
    }
}
