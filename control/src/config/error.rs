//! The errors of the configuration layer.
//!
//! Every error here is of the *config* kind (`docs/control.md`, "Files"): something in a file the
//! operator owns is wrong, and the message says where (`file:line:column` when
//! the problem has a place in a file) and what to do. [`ConfigErrors`] carries
//! all the problems found in one pass, so an operator fixes a file once, not
//! once per error.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A place in a configuration file: 1-based line and column (in characters).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file, as the caller named it.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One configuration problem. Its `Display` is the whole message an operator sees.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// A problem at a place in a file: syntax, a wrong type, a missing or
    /// unknown key, or a rule the values break.
    #[error("{location}: {message}")]
    At {
        /// Where the problem is.
        location: Location,
        /// What is wrong and, where it helps, what to do.
        message: String,
    },
    /// A rule broken by a document built in memory (no file yet), at a key
    /// path such as `service[1].port`.
    #[error("{key}: {message}")]
    InDocument {
        /// The key path, e.g. `service[1].health.interval`.
        key: String,
        /// What is wrong and, where it helps, what to do.
        message: String,
    },
    /// A configuration or secret file could not be read.
    #[error("{}: cannot read: {error}; {hint}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        error: io::Error,
        /// What to do next.
        hint: &'static str,
    },
    /// A secret file could not be written.
    #[error("{}: cannot write secret: {error}; check that the directory exists and is writable", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        error: io::Error,
    },
    /// A secret file is readable or writable by group or others.
    #[error(
        "{}: secret file has mode {mode:04o}, which lets group or others read it; \
         refusing to use it; run `chmod 600 {}`",
        path.display(), path.display()
    )]
    SecretMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file that is not a regular file, or is empty.
    #[error("{}: {problem}", path.display())]
    SecretUnusable {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: &'static str,
    },
}

impl ConfigProblem {
    /// The error kind (`ErrorBody::error`); always `"config"` for this module.
    pub fn kind(&self) -> &'static str {
        "config"
    }

    /// Where in a file the problem is, when it has a place.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigProblem::At { location, .. } => Some(location),
            _ => None,
        }
    }

    /// The message without the location prefix, when the error has a place;
    /// otherwise the whole message.
    pub fn message(&self) -> String {
        match self {
            ConfigProblem::At { message, .. } | ConfigProblem::InDocument { message, .. } => {
                message.clone()
            }
            other => other.to_string(),
        }
    }

    pub(crate) fn read(path: &Path, error: io::Error, hint: &'static str) -> Self {
        let hint = if error.kind() == io::ErrorKind::InvalidData {
            "the file must be UTF-8 text"
        } else {
            hint
        };
        ConfigProblem::Read {
            path: path.to_path_buf(),
            error,
            hint,
        }
    }
}

/// All the problems found in one file (or one pair of files); never empty.
///
/// `Display` prints one problem per line, in file order.
#[derive(Debug)]
pub struct ConfigErrors {
    errors: Vec<ConfigProblem>,
}

impl ConfigErrors {
    /// `None` when there are no errors.
    pub(crate) fn from_vec(mut errors: Vec<ConfigProblem>) -> Option<Self> {
        if errors.is_empty() {
            return None;
        }
        errors.sort_by(|a, b| a.location().cmp(&b.location()));
        Some(ConfigErrors { errors })
    }

    pub(crate) fn one(error: ConfigProblem) -> Self {
        ConfigErrors {
            errors: vec![error],
        }
    }

    /// The problems, in file order.
    pub fn errors(&self) -> &[ConfigProblem] {
        &self.errors
    }

    /// The problems, in file order.
    pub fn into_vec(self) -> Vec<ConfigProblem> {
        self.errors
    }

    /// The error kind (`ErrorBody::error`); always `"config"`.
    pub fn kind(&self) -> &'static str {
        "config"
    }
}

impl From<ConfigProblem> for ConfigErrors {
    fn from(error: ConfigProblem) -> Self {
        ConfigErrors::one(error)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
