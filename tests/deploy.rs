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
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 10 rules found"));
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

#[test]
fn example_files_parse_and_pair() {
    let node_path = root().join("deploy/examples/dynia.toml");
    let cluster_path = root().join("deploy/examples/cluster.toml");
    let node = dynia_control::config::parse_node_file(
        &std::fs::read_to_string(&node_path).unwrap(),
        &node_path,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cluster = dynia_control::config::parse_cluster_doc(
        &std::fs::read_to_string(&cluster_path).unwrap(),
        &cluster_path,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    dynia_control::config::validate_pair(&node, &cluster).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cluster.election.advert_interval.as_millis(), 100);
}
