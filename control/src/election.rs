//! The election's glue on the control side: `dynia_vrrp` runs the election
//! end to end (see `docs/election.md`); control builds its settings from
//! the files (`crate::wiring::election_settings`), tracks the proxy, holds
//! the handle for status and ops, and keeps the advert boot epoch here.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The file in `state_dir` that keeps the last run's advert boot epoch.
const EPOCH_FILE: &str = "election.epoch";

/// The boot epoch of this run's adverts: the wall clock in milliseconds, but
/// always above the epoch of the previous run, which `state_dir` keeps.
/// Peers drop adverts whose (epoch, sequence) does not grow (replay
/// protection), so a restart after the clock stepped back (no RTC, NTP
/// correction) must still pick a higher epoch, or its adverts are dropped
/// for good and it becomes a second master. If the file cannot be written
/// (a warning), the wall clock alone decides next time.
pub fn boot_epoch(state_dir: &Path) -> u64 {
    let file = state_dir.join(EPOCH_FILE);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
        .max(1);
    let last = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let epoch = match last {
        Some(l) if l >= wall => {
            tracing::warn!(
                last = l,
                wall,
                "the wall clock is behind the previous run's advert epoch; using the previous one + 1"
            );
            l.saturating_add(1)
        }
        _ => wall,
    };
    if let Err(e) = crate::store::atomic_write(&file, format!("{epoch}\n").as_bytes()) {
        tracing::warn!(file = %file.display(), error = %e, "cannot record the advert epoch; a restart after the clock steps back could be taken for a replay");
    }
    epoch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_grows_across_runs_even_when_the_clock_is_behind() {
        let dir = std::env::temp_dir().join(format!("dynia-epoch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(EPOCH_FILE);
        let _ = std::fs::remove_file(&f);
        let a = boot_epoch(&dir);
        let b = boot_epoch(&dir);
        assert!(b > a, "{b} > {a}");
        // A previous run far in the future (the clock has since stepped back).
        let future = a + 86_400_000;
        std::fs::write(&f, format!("{future}\n")).unwrap();
        assert_eq!(boot_epoch(&dir), future + 1);
        assert_eq!(
            std::fs::read_to_string(&f).unwrap().trim(),
            (future + 1).to_string()
        );
        // Garbage in the file: the wall clock, and the file is repaired.
        std::fs::write(&f, "not a number").unwrap();
        let c = boot_epoch(&dir);
        assert!(c >= a);
        assert_eq!(std::fs::read_to_string(&f).unwrap().trim(), c.to_string());
        // A state directory that cannot be written: the wall clock.
        assert!(boot_epoch(&dir.join("missing")) >= a);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
