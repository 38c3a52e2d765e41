//! `dynia demo`, the README's first command, works on this machine as written.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_shows_round_robin_and_a_failover_then_stops_cleanly() {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dynia"))
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: the demo must finish on its own.
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("dynia demo did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Round robin over all three members before the failover.
    let before = stdout
        .lines()
        .find(|l| l.contains("200 amber-fox |"))
        .unwrap_or_default();
    for m in ["amber-fox", "brisk-owl", "calm-deer"] {
        assert_eq!(before.matches(m).count(), 2, "{stdout}");
    }
    assert!(
        stdout.contains("became master and the Reserved IP points at it"),
        "{stdout}"
    );
    assert!(
        stdout.contains("assign calls to the API so far: 2"),
        "{stdout}"
    );
    assert!(stdout.contains("demo done"), "{stdout}");
    // Nothing left behind: no dynia run processes of this demo remain.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines()
            .any(|l| l.contains("dynia-demo-") && l.contains(" run ")),
        "{ps}"
    );
}
