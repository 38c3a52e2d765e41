//! Secret files: the admin token, the cluster key, the DigitalOcean token.
//!
//! This module owns how a secret is read and written: a file of
//! mode 0600 whose content is the secret, a trailing newline ignored. A file
//! that group or others may access is refused, not silently used, and a
//! [`SecretBytes`] never prints its bytes, so it cannot leak into a log line, a
//! metric, an error or `/status` by accident.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::error::ConfigProblem;

/// Bytes of a secret. `Debug` and `Display` print `<redacted>`; read the bytes
/// with [`SecretBytes::expose_bytes`]. The bytes are overwritten with zeros on drop
/// (best effort: copies made by the caller are theirs to clear).
#[derive(Clone)]
pub struct SecretBytes {
    bytes: Vec<u8>,
}

impl SecretBytes {
    /// A secret from bytes, e.g. one just generated.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes { bytes }
    }

    /// The secret's bytes. Call this only where the secret is used (a MAC
    /// key, an `Authorization` header), never to print it.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

/// Largest secret file read; a token or key is a few hundred bytes at most.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Reads a secret file. Refuses a file whose mode gives group or others any
/// access (`mode & 0o077 != 0`) with an error that says `chmod 600 PATH`, a
/// file that is not a regular file, and an empty one. One trailing newline
/// (`\n` or `\r\n`) is removed.
pub fn read_secret(path: &Path) -> Result<SecretBytes, ConfigProblem> {
    let read_err = |e| ConfigProblem::read(path, e, "check the path, and that dynia may read it");
    let mut file = File::open(path).map_err(read_err)?;
    // The mode of the file we opened, not of whatever the path names later.
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(ConfigProblem::SecretUnusable {
            path: path.to_path_buf(),
            problem: "a secret must be a regular file; point the setting at the file that holds it",
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigProblem::SecretMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    Read::by_ref(&mut file)
        .take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        bytes.fill(0);
        return Err(ConfigProblem::SecretUnusable {
            path: path.to_path_buf(),
            problem: "the secret file is larger than 64 KiB; point the setting at the file that holds only the secret",
        });
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(ConfigProblem::SecretUnusable {
            path: path.to_path_buf(),
            problem: "the secret file is empty; write the secret into it",
        });
    }
    Ok(SecretBytes { bytes })
}

/// Writes a secret file with mode 0600, replacing any file at `path`
/// atomically ([`crate::store::atomic_write_mode`]: a temporary file of mode
/// 0600 beside it, synced, renamed over `path`, the directory synced).
/// Writes `bytes` exactly (no newline added).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), ConfigProblem> {
    crate::store::atomic_write_mode(path, bytes, 0o600).map_err(|error| ConfigProblem::Write {
        path: path.to_path_buf(),
        error,
    })
}
