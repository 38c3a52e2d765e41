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
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 12 rules found"));
}

/// Every alert rule has a case that fires it and one where it must stay
/// silent (`deploy/prometheus/dynia.rules.test.yml`), and every rule is covered.
#[test]
fn promtool_unit_tests_of_the_alert_rules_pass_and_cover_every_rule() {
    let dir = root().join("deploy/prometheus");
    let out = Command::new("promtool")
        .args(["test", "rules", "dynia.rules.test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool not installed: apt-get install prometheus (CI installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = std::fs::read_to_string(dir.join("dynia.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("dynia.rules.test.yml")).unwrap();
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(names.len(), 12);
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for name in names {
        let exp: Vec<&str> = lines
            .windows(2)
            .filter(|w| w[0] == format!("alertname: {name}"))
            .map(|w| w[1])
            .collect();
        let silent = exp.iter().filter(|l| **l == "exp_alerts: []").count();
        let fired = exp.iter().filter(|l| **l == "exp_alerts:").count();
        assert!(
            silent >= 1 && fired >= 1,
            "{name}: needs a case that fires it and one that must not"
        );
    }
}

#[test]
fn systemd_unit_is_notify_reloads_by_dynia_reload_and_runs_as_dynia() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/dynia.service")).unwrap();
    assert!(
        !unit.contains("/usr/local/bin"),
        "the unit names /usr/bin/dynia"
    );
    for line in [
        "Type=notify",
        "User=dynia",
        "ExecReload=/usr/bin/dynia reload -c /etc/dynia/dynia.toml",
        "ExecStart=/usr/bin/dynia run -c /etc/dynia/dynia.toml",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/dynia",
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

#[test]
fn promtool_accepts_the_scrape_examples() {
    let dir = root().join("deploy/prometheus");
    for file in ["prometheus.static.yml", "prometheus.digitalocean.yml"] {
        let out = Command::new("promtool")
            .args(["check", "config", "--syntax-only", file])
            .current_dir(&dir)
            .output()
            .expect("promtool not installed: apt-get install prometheus (CI installs it)");
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
