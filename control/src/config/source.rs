//! From a TOML text to located errors.
//!
//! This module owns the mapping between key paths (`service[0].health.interval`)
//! and places in the text (`file:line:column`), using the spans that
//! `toml_edit` keeps when it parses. The typed structs never carry spans; the
//! validators name a key path and this module finds it. It also turns serde's
//! messages ("unknown field", "missing field", ...) into an operator's words,
//! with a did-you-mean suggestion for misspelled keys and values.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml_edit::{ImDocument, Item, Table, Value};

use super::error::{ConfigProblem, Location};

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(k: &str) -> Self {
        Seg::Key(k.to_owned())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// A key path such as `service[0].health.interval`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub(crate) Vec<Seg>);

/// Builds a [`KeyPath`] from keys (`&str`) and indices (`usize`).
macro_rules! kp {
    ($($seg:expr),* $(,)?) => {
        $crate::config::source::KeyPath(vec![$($crate::config::source::Seg::from($seg)),*])
    };
}
pub(crate) use kp;

impl KeyPath {
    /// Where a key of this table lives, as an operator reads it:
    /// "in [service.health]", "in [[member]]", or "at the top level".
    fn table_phrase(&self) -> String {
        let keys: Vec<&str> = self
            .0
            .iter()
            .filter_map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                Seg::Index(_) => None,
            })
            .collect();
        if keys.is_empty() {
            "at the top level".to_owned()
        } else if matches!(self.0.last(), Some(Seg::Index(_))) {
            format!("in [[{}]]", keys.join("."))
        } else {
            format!("in [{}]", keys.join("."))
        }
    }

    fn last_key(&self) -> Option<&str> {
        self.0.iter().rev().find_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A rule a document breaks, found by a validator, not yet located.
#[derive(Clone, Debug)]
pub(crate) struct Problem {
    pub(crate) path: KeyPath,
    pub(crate) message: String,
}

/// Collects problems during validation.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    pub(crate) fn push(&mut self, path: KeyPath, message: impl Into<String>) {
        self.0.push(Problem {
            path,
            message: message.into(),
        });
    }

    /// The problems as errors without a file: `service[1].port: message`.
    pub(crate) fn unlocated(self) -> Vec<ConfigProblem> {
        self.0
            .into_iter()
            .map(|p| ConfigProblem::InDocument {
                key: p.path.to_string(),
                message: p.message,
            })
            .collect()
    }
}

/// One key of the document with the spans of its key and its value.
#[derive(Debug)]
struct Entry {
    path: KeyPath,
    key_span: Option<Range<usize>>,
    item_span: Option<Range<usize>>,
}

/// A TOML text with its file name and the spans of all its keys.
pub(crate) struct Source<'a> {
    text: &'a str,
    file: &'a Path,
    entries: Vec<Entry>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(text: &'a str, file: &'a Path) -> Self {
        let mut entries = Vec::new();
        if let Ok(doc) = ImDocument::parse(text) {
            index_table(doc.as_table(), &KeyPath::default(), &mut entries);
        }
        Source {
            text,
            file,
            entries,
        }
    }

    /// Deserializes the text, or one located error saying why not.
    pub(crate) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigProblem> {
        toml::from_str(self.text).map_err(|e| self.translate(&e))
    }

    /// The place of a byte offset.
    pub(crate) fn location_of(&self, offset: usize) -> Location {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }

    /// The place of a key path's value; when the path does not exist (a
    /// missing key), the place of its nearest ancestor that does; the start of
    /// the file when none does.
    pub(crate) fn locate(&self, path: &KeyPath) -> Location {
        let mut prefix = path.0.as_slice();
        loop {
            if let Some(entry) = self.entries.iter().find(|e| e.path.0 == prefix) {
                if let Some(span) = entry.item_span.as_ref().or(entry.key_span.as_ref()) {
                    return self.location_of(span.start);
                }
            }
            match prefix.split_last() {
                Some((_, rest)) => prefix = rest,
                None => return self.location_of(0),
            }
        }
    }

    /// Located errors for problems found by a validator.
    pub(crate) fn located(&self, problems: Problems) -> Vec<ConfigProblem> {
        problems
            .0
            .into_iter()
            .map(|p| ConfigProblem::At {
                location: self.locate(&p.path),
                message: p.message,
            })
            .collect()
    }

    /// A serde/toml error in an operator's words, at its place.
    fn translate(&self, e: &toml::de::Error) -> ConfigProblem {
        let span = e.span();
        let start = span.as_ref().map_or(0, |s| s.start);
        let message = e.message().trim().replace('\n', "; ");
        let message = self.reword(&message, span.as_ref());
        ConfigProblem::At {
            location: self.location_of(start),
            message,
        }
    }

    fn reword(&self, message: &str, span: Option<&Range<usize>>) -> String {
        let by_key =
            span.and_then(|s| self.entries.iter().find(|e| e.key_span.as_ref() == Some(s)));
        let by_item = span.and_then(|s| {
            self.entries
                .iter()
                .find(|e| e.item_span.as_ref() == Some(s))
        });

        if let Some(rest) = message.strip_prefix("unknown field ") {
            let (name, valid) = split_name_and_expected(rest);
            let table = by_key.map_or_else(
                || "in this table".to_owned(),
                |e| parent(&e.path).table_phrase(),
            );
            return format!(
                "unknown key `{name}` {table}; {}",
                suggest(&name, &valid, "`")
            );
        }
        if let Some(rest) = message.strip_prefix("unknown variant ") {
            let (name, valid) = split_name_and_expected(rest);
            let key = by_item
                .and_then(|e| e.path.last_key())
                .map_or_else(String::new, |k| format!(" for `{k}`"));
            return format!(
                "unknown value \"{name}\"{key}; {}",
                suggest(&name, &valid, "\"")
            );
        }
        if let Some(rest) = message.strip_prefix("missing field ") {
            let name = rest.trim_matches('`');
            // The span of a missing key is the table that lacks it; of an
            // array of tables, the element (the longest path) is meant.
            let table = match span {
                Some(s) if s.start == 0 && s.end == 0 => "at the top level".to_owned(),
                Some(s) => self
                    .entries
                    .iter()
                    .filter(|e| e.item_span.as_ref().is_some_and(|i| i.start == s.start))
                    .max_by_key(|e| e.path.0.len())
                    .map_or_else(
                        // The root table's span starts at the first byte.
                        || {
                            if s.start == 0 {
                                "at the top level"
                            } else {
                                "in this table"
                            }
                            .to_owned()
                        },
                        |e| e.path.table_phrase(),
                    ),
                None => "in this table".to_owned(),
            };
            return if TABLES.contains(&name) {
                format!("missing table [{name}]; add it (see the example configuration)")
            } else {
                format!("missing key `{name}` {table}; add it")
            };
        }
        let message = reword_integer_types(message);
        match by_item.and_then(|e| e.path.last_key()) {
            Some(key) => format!("`{key}`: {message}"),
            None => message,
        }
    }
}

/// Sections that are tables; a missing one is reported as a table.
const TABLES: &[&str] = &[
    "node",
    "admin",
    "limits",
    "election",
    "reserved_ip",
    "hooks",
    "health",
];

fn parent(path: &KeyPath) -> KeyPath {
    let mut segs = path.0.clone();
    segs.pop();
    KeyPath(segs)
}

fn index_table(table: &Table, path: &KeyPath, out: &mut Vec<Entry>) {
    for (key, item) in table.iter() {
        let mut child = path.clone();
        child.0.push(Seg::from(key));
        let key_span = table.key(key).and_then(|k| k.span());
        out.push(Entry {
            path: child.clone(),
            key_span,
            item_span: item.span(),
        });
        index_item(item, &child, out);
    }
}

fn index_item(item: &Item, path: &KeyPath, out: &mut Vec<Entry>) {
    match item {
        Item::Table(t) => index_table(t, path, out),
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let mut child = path.clone();
                child.0.push(Seg::Index(i));
                out.push(Entry {
                    path: child.clone(),
                    key_span: None,
                    item_span: t.span(),
                });
                index_table(t, &child, out);
            }
        }
        Item::Value(v) => index_value(v, path, out),
        Item::None => {}
    }
}

fn index_value(value: &Value, path: &KeyPath, out: &mut Vec<Entry>) {
    match value {
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let mut child = path.clone();
                child.0.push(Seg::Index(i));
                out.push(Entry {
                    path: child.clone(),
                    key_span: None,
                    item_span: v.span(),
                });
                index_value(v, &child, out);
            }
        }
        Value::InlineTable(t) => {
            for (key, v) in t.iter() {
                let mut child = path.clone();
                child.0.push(Seg::from(key));
                out.push(Entry {
                    path: child.clone(),
                    key_span: t.key(key).and_then(|k| k.span()),
                    item_span: v.span(),
                });
                index_value(v, &child, out);
            }
        }
        _ => {}
    }
}

/// Splits serde's "`name`, expected one of `a`, `b`" into the name and the
/// valid names.
fn split_name_and_expected(rest: &str) -> (String, Vec<String>) {
    let mut ticks = rest.split('`').skip(1).step_by(2).map(str::to_owned);
    let name = ticks.next().unwrap_or_default();
    (name, ticks.collect())
}

/// "did you mean `x`?" when a valid name is close, else the list of valid names.
fn suggest(name: &str, valid: &[String], quote: &str) -> String {
    let best = valid
        .iter()
        .map(|v| (strsim::jaro_winkler(name, v), v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, v)) => format!("did you mean {quote}{v}{quote}?"),
        None if valid.is_empty() => "remove it".to_owned(),
        None => {
            let list: Vec<String> = valid.iter().map(|v| format!("{quote}{v}{quote}")).collect();
            format!("expected one of {}", list.join(", "))
        }
    }
}

/// serde says "expected u16"; an operator wants the range.
fn reword_integer_types(message: &str) -> String {
    message
        .replace("expected u8", "expected a whole number from 0 to 255")
        .replace("expected u16", "expected a whole number from 0 to 65535")
        .replace(
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        )
        .replace("expected u64", "expected a non-negative whole number")
        .replace("expected usize", "expected a non-negative whole number")
        .replace(
            "invalid IP address syntax",
            "invalid IP address; write one such as \"10.10.0.11\" or \"fd00::11\"",
        )
        .replace(
            "invalid socket address syntax",
            "invalid socket address; write IP:PORT such as \"0.0.0.0:443\" or \"[::]:443\"",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns_in_characters() {
        let text = "a = 1\n# é comment\nb = \"é\"\n";
        let src = Source::new(text, Path::new("f.toml"));
        let loc = src.locate(&kp!["b"]);
        assert_eq!((loc.line, loc.column), (3, 5));
        let loc = src.location_of(text.len() + 10);
        assert_eq!(loc.line, 4);
        // Inside a multi-byte character: clamps to its start.
        let loc = src.location_of(text.find('é').unwrap_or(0) + 1);
        assert_eq!((loc.line, loc.column), (2, 3));
    }

    #[test]
    fn locates_array_elements_inline_tables_and_missing_keys() {
        let text = "[[s]]\nx = [1, 2]\n[[s]]\nt = { y = 3 }\n";
        let src = Source::new(text, Path::new("f.toml"));
        let at = |p: KeyPath| {
            let l = src.locate(&p);
            (l.line, l.column)
        };
        assert_eq!(at(kp!["s", 0, "x", 1]), (2, 9));
        assert_eq!(at(kp!["s", 1, "t", "y"]), (4, 11));
        assert_eq!(at(kp!["s", 1, "missing"]), (3, 1));
        assert_eq!(at(kp!["nothing"]), (1, 1));
    }

    #[test]
    fn key_paths_display() {
        assert_eq!(
            kp!["service", 1, "health", "interval"].to_string(),
            "service[1].health.interval"
        );
        assert_eq!(
            kp!["service", 1, "health"].table_phrase(),
            "in [service.health]"
        );
        assert_eq!(kp!["member", 0].table_phrase(), "in [[member]]");
        assert_eq!(KeyPath::default().table_phrase(), "at the top level");
    }

    #[test]
    fn suggestions() {
        let valid = vec!["interval".to_owned(), "timeout".to_owned()];
        assert_eq!(
            suggest("intervall", &valid, "`"),
            "did you mean `interval`?"
        );
        assert_eq!(
            suggest("zzz", &valid, "`"),
            "expected one of `interval`, `timeout`"
        );
        assert_eq!(suggest("zzz", &[], "`"), "remove it");
    }
}
