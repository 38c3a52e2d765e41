//! The cluster document on disk: atomic replacement and snapshots.
//!
//! `state_dir/cluster.toml` is replaced only by [`Store::write`]: the new text
//! goes to a temporary file beside it, which is fsynced, renamed over the
//! document, and the directory is fsynced, so a crash leaves either the old or
//! the new document, never a mix. Before that, the document being replaced is
//! copied to `state_dir/snapshots/cluster-<generation>-<hash12>.toml`; the
//! newest [`KEEP`] snapshots are kept (`dynia rollback` reads them).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Snapshots kept in `state_dir/snapshots/`.
pub const KEEP: usize = 10;

pub use crate::wire::KeptDocument;

/// The cluster document file and its snapshots directory.
pub struct Store {
    doc: PathBuf,
    snapshots: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            doc: state_dir.join("cluster.toml"),
            snapshots: state_dir.join("snapshots"),
        }
    }

    pub fn doc_path(&self) -> &Path {
        &self.doc
    }

    /// Snapshots the current document (if any) as `previous`, then replaces
    /// it with `text` atomically and durably.
    pub fn write(&self, text: &str, previous: Option<(u64, &str)>) -> std::io::Result<()> {
        if let (Some((generation, hash)), Ok(old)) = (previous, fs::read(&self.doc)) {
            fs::create_dir_all(&self.snapshots)?;
            let name = format!(
                "cluster-{generation:020}-{}.toml",
                hash.get(..12).unwrap_or(hash)
            );
            atomic_write(&self.snapshots.join(name), &old)?;
            self.prune()?;
        }
        atomic_write(&self.doc, text.as_bytes())
    }

    /// Kept snapshots, newest first.
    pub fn list(&self) -> Vec<(KeptDocument, PathBuf)> {
        let Ok(dir) = fs::read_dir(&self.snapshots) else {
            return Vec::new();
        };
        let mut out: Vec<(KeptDocument, PathBuf)> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let rest = name.strip_prefix("cluster-")?.strip_suffix(".toml")?;
                let (g, h) = rest.split_once('-')?;
                let at = e
                    .metadata()
                    .ok()?
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_millis() as u64;
                Some((
                    KeptDocument {
                        generation: g.parse().ok()?,
                        config_hash: h.to_owned(),
                        replaced_at_ms: at,
                    },
                    e.path(),
                ))
            })
            .collect();
        out.sort_by(|a, b| {
            (b.0.generation, b.0.replaced_at_ms).cmp(&(a.0.generation, a.0.replaced_at_ms))
        });
        out
    }

    /// The text of the newest snapshot of `generation`.
    pub fn read_snapshot(&self, generation: u64) -> Option<String> {
        self.list()
            .into_iter()
            .find(|(s, _)| s.generation == generation)
            .and_then(|(_, p)| fs::read_to_string(p).ok())
    }

    fn prune(&self) -> std::io::Result<()> {
        for (_, path) in self.list().into_iter().skip(KEEP) {
            fs::remove_file(path)?;
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically (mode 0644): see [`atomic_write_mode`].
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomic_write_mode(path, bytes, 0o644)
}

/// Writes `bytes` to `path` atomically with exactly file mode `mode`: a new
/// temporary file beside it (created with that mode, so a secret is never
/// readable by others), fsync, rename over `path`, fsync the directory so
/// the rename survives a crash. On error the temporary file is removed and
/// `path` is untouched. The one helper for every file dynia writes.
pub fn atomic_write_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        // A leftover from a crashed run of this same process id.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may narrow the mode: make it exact.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_keeps_ten_snapshots() {
        let dir = std::env::temp_dir().join(format!("dynia-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let store = Store::new(&dir);
        store.write("generation = 1\n", None).unwrap();
        for g in 2..15u64 {
            let prev = format!("h{:011}", g - 1);
            store
                .write(&format!("generation = {g}\n"), Some((g - 1, &prev)))
                .unwrap();
        }
        assert_eq!(
            fs::read_to_string(store.doc_path()).unwrap(),
            "generation = 14\n"
        );
        let list = store.list();
        assert_eq!(list.len(), KEEP);
        assert_eq!(list[0].0.generation, 13);
        assert_eq!(list[KEEP - 1].0.generation, 4);
        assert_eq!(store.read_snapshot(13).unwrap(), "generation = 13\n");
        assert!(store.read_snapshot(2).is_none());
        let leftovers = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .count();
        assert_eq!(leftovers, 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
