//! What ships in `deploy/` is accepted by the tools that consume it.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn promtool_accepts_alert_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(root().join("deploy/prometheus/dynia.rules.yml"))
        .output()
        .expect("promtool not installed: apt-get install prometheus (CI installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 6 rules found"));
}

#[test]
fn systemd_unit_is_notify_with_reload_by_sighup() {
    let unit = std::fs::read_to_string(root().join("deploy/dynia.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/dynia run -c /etc/dynia/dynia.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing `{line}`");
    }
}
