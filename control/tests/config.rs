//! Tests of `dynia_control::config` through its public API: the example files,
//! every validation rule with its `line:column`, unknown-key suggestions,
//! secrets on a real file system, the document hash and the round trip.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use dynia_control::config::{
    cluster_doc_path, load_cluster_doc, load_node_file, parse_cluster_doc, parse_node_file,
    read_secret, validate_pair, write_secret, ConfigErrors, ConfigProblem, DriverKind, Duration,
    MemberState, NodeFile, PrivateIp, Transport,
};

const NODE_EXAMPLE: &str = include_str!("data/dynia.example.toml");
const CLUSTER_EXAMPLE: &str = include_str!("data/cluster.example.toml");

const NODE_MIN: &str = r#"[node]
id = "misty-owl"
private_ip = "10.10.0.11"

[election]
key_file = "/etc/dynia/cluster.key"
"#;

const CLUSTER_MIN: &str = r#"generation = 1
cluster = "myapp"

[[member]]
id = "misty-owl"
private_ip = "10.10.0.11"
priority = 150

[[service]]
name = "web"
hosts = ["app.example.com"]
port = 8080
"#;

/// (line, column, message) of every error.
fn triples(e: &ConfigErrors) -> Vec<(usize, usize, String)> {
    e.errors()
        .iter()
        .map(|e| match e.location() {
            Some(l) => (l.line, l.column, e.message()),
            None => (0, 0, e.to_string()),
        })
        .collect()
}

/// 1-based line and column of the `nth` occurrence of `needle` in `text`.
fn at(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let mut from = 0;
    let mut found = None;
    for _ in 0..=nth {
        let i = text[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in text"));
        found = Some(from + i);
        from += i + needle.len();
    }
    let offset = found.unwrap_or(0);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

fn cluster_errors(text: &str) -> Vec<(usize, usize, String)> {
    match parse_cluster_doc(text, "cluster.toml") {
        Ok(d) => panic!("expected errors, parsed {d:?}\n{text}"),
        Err(e) => {
            // Every error prints as file:line:column: message.
            for err in e.errors() {
                assert!(err.to_string().starts_with("cluster.toml:"), "{err}");
                assert_eq!(err.kind(), "config");
            }
            triples(&e)
        }
    }
}

fn node_errors(text: &str) -> Vec<(usize, usize, String)> {
    match parse_node_file(text, "dynia.toml") {
        Ok(n) => panic!("expected errors, parsed {n:?}\n{text}"),
        Err(e) => {
            for err in e.errors() {
                assert!(err.to_string().starts_with("dynia.toml:"), "{err}");
            }
            triples(&e)
        }
    }
}

/// Asserts exactly one error, at `needle`'s place, whose message contains `says`.
fn one_error(errors: Vec<(usize, usize, String)>, text: &str, needle: &str, says: &str) {
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let (line, col, msg) = &errors[0];
    assert_eq!((*line, *col), at(text, needle, 0), "{msg}");
    assert!(msg.contains(says), "{msg:?} does not say {says:?}");
}

fn cluster_with(from: &str, to: &str) -> String {
    assert!(CLUSTER_MIN.contains(from), "{from}");
    CLUSTER_MIN.replacen(from, to, 1)
}

fn node_with(from: &str, to: &str) -> String {
    assert!(NODE_MIN.contains(from), "{from}");
    NODE_MIN.replacen(from, to, 1)
}

// ---------------------------------------------------------------- examples

#[test]
fn node_example_parses() {
    let n = parse_node_file(NODE_EXAMPLE, "dynia.example.toml").expect("example parses");
    assert_eq!(n.node.id, "misty-owl");
    assert_eq!(
        n.node.private_ip,
        PrivateIp::Addr("10.10.0.11".parse::<IpAddr>().unwrap())
    );
    assert_eq!(n.node.state_dir, PathBuf::from("/var/lib/dynia"));
    assert_eq!(n.node.worker_threads, 0);
    assert_eq!(n.admin.listen.to_string(), "127.0.0.1:9180");
    assert_eq!(n.listeners.len(), 2);
    assert_eq!(n.listeners[1].name, "https");
    assert_eq!(n.listeners[1].certificates.len(), 1);
    assert_eq!(
        n.listeners[1].certificates[0].key,
        PathBuf::from("/etc/dynia/tls/origin.key")
    );
    assert!(!n.listeners[0].redirect_https);
    assert_eq!(n.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(n.limits.max_header_bytes, 65536);
    assert_eq!(n.election.port, 5405);
    assert_eq!(n.reserved_ip.driver, DriverKind::DigitalOcean);
    assert_eq!(n.reserved_ip.api_url, "https://api.digitalocean.com");
    assert_eq!(n.reserved_ip.metadata_url, "http://169.254.169.254");
    assert_eq!(n.reserved_ip.prefix_len(), Some(32));
    assert_eq!(n.hooks.on_master, None);
    assert_eq!(
        cluster_doc_path(&n),
        PathBuf::from("/var/lib/dynia/cluster.toml")
    );
    assert_eq!(n.origin.path(), Some(Path::new("dynia.example.toml")));
}

#[test]
fn cluster_example_parses() {
    let d = parse_cluster_doc(CLUSTER_EXAMPLE, "cluster.example.toml").expect("example parses");
    assert_eq!(d.generation, 7);
    assert_eq!(d.cluster, "myapp");
    assert_eq!(d.election.transport, Transport::Dynia);
    assert_eq!(d.election.vrid, 51);
    assert_eq!(d.election.advert_interval, Duration::from_millis(200));
    assert!(d.election.preempt);
    assert_eq!(d.members.len(), 2);
    assert_eq!(d.members[1].id, "brave-panda");
    assert_eq!(d.members[1].state, MemberState::Active);
    assert_eq!(d.members[0].droplet_id, Some(3164444));
    assert_eq!(
        d.services[0].hosts,
        ["app.example.com", "*.app.example.com"]
    );
    assert_eq!(d.services[0].health.expect_status, [200]);
    assert_eq!(
        d.services[0].health.interval.as_std(),
        std::time::Duration::from_secs(5)
    );
}

#[test]
fn examples_agree_with_each_other() {
    let n = parse_node_file(NODE_EXAMPLE, "dynia.toml").unwrap();
    let d = parse_cluster_doc(CLUSTER_EXAMPLE, "cluster.toml").unwrap();
    validate_pair(&n, &d).expect("the examples are one node of one cluster");
}

#[test]
fn defaults_fill_omitted_sections() {
    let n = parse_node_file(NODE_MIN, "dynia.toml").unwrap();
    let full = parse_node_file(
        &format!(
            "{NODE_MIN}port = 5405\n[admin]\nlisten = \"127.0.0.1:9180\"\n[limits]\nheader_read_timeout = \"10s\"\n\
             idle_timeout = \"1m\"\nconnect_timeout = \"2s\"\nresponse_timeout = \"30s\"\nmax_header_bytes = 65536\n\
             max_connections = 10000\nshutdown_grace = \"30s\"\n[reserved_ip]\ndriver = \"none\"\n[hooks]\n"
        ),
        "dynia.toml",
    )
    .unwrap();
    assert_eq!(n, full);
    assert_eq!(n.reserved_ip.driver, DriverKind::None);
    assert!(n.listeners.is_empty());

    let d = parse_cluster_doc(CLUSTER_MIN, "cluster.toml").unwrap();
    let spelled = cluster_with(
        "port = 8080\n",
        "port = 8080\nretries = 2\n[service.health]\npath = \"/dynia-health\"\nexpect_status = [200]\n\
         interval = \"5s\"\ntimeout = \"2s\"\nfall = 3\nrise = 2\n",
    );
    let spelled = spelled.replacen(
        "[[member]]",
        "[election]\ntransport = \"dynia\"\nvrid = 51\nadvert_interval = \"100ms\"\npreempt = true\n\
         preempt_delay = \"0s\"\n\n[[member]]",
        1,
    );
    let spelled = parse_cluster_doc(&spelled, "cluster.toml").unwrap();
    assert_eq!(d, spelled);
    assert_eq!(d.hash(), spelled.hash());
}

// ---------------------------------------------------------------- syntax, types, keys

#[test]
fn syntax_error_is_located() {
    let text = "generation = 1\n[service\nname = \"x\"\n";
    let errors = cluster_errors(text);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, 2, "{errors:?}");
    assert!(!errors[0].2.contains('\n'));
}

#[test]
fn type_error_names_the_key() {
    let text = cluster_with("priority = 150", "priority = \"high\"");
    one_error(
        cluster_errors(&text),
        &text,
        "\"high\"",
        "`priority`: invalid type",
    );
    let text = cluster_with("port = 8080", "port = 70000");
    one_error(cluster_errors(&text), &text, "70000", "from 0 to 65535");
}

#[test]
fn missing_keys_are_located_at_their_table() {
    let text = cluster_with("port = 8080\n", "");
    one_error(
        cluster_errors(&text),
        &text,
        "[[service]]",
        "missing key `port` in [[service]]",
    );
    let text = cluster_with("generation = 1\n", "");
    one_error(
        cluster_errors(&text),
        &text,
        "cluster",
        "missing key `generation` at the top level",
    );
    let text = "[admin]\n";
    one_error(node_errors(text), text, "[admin]", "missing table [node]");
    let text = node_with("id = \"misty-owl\"\n", "");
    one_error(
        node_errors(&text),
        &text,
        "[node]",
        "missing key `id` in [node]",
    );
}

#[test]
fn unknown_keys_suggest_the_nearest() {
    let text = cluster_with(
        "port = 8080\n",
        "port = 8080\n[service.health]\nintervall = \"5s\"\n",
    );
    one_error(
        cluster_errors(&text),
        &text,
        "intervall",
        "unknown key `intervall` in [service.health]; did you mean `interval`?",
    );
    let text = cluster_with("priority = 150", "priority = 150\nprio = 1");
    one_error(
        cluster_errors(&text),
        &text,
        "prio =",
        "unknown key `prio` in [[member]]; did you mean `priority`?",
    );
    let text = format!("genration = 2\n{CLUSTER_MIN}");
    one_error(
        cluster_errors(&text),
        &text,
        "genration",
        "unknown key `genration` at the top level; did you mean `generation`?",
    );
    let text = node_with("[election]\n", "[election]\nprot = 1\n");
    one_error(node_errors(&text), &text, "prot", "did you mean `port`?");
    // Nothing close: list the valid keys.
    let text = node_with("[election]\n", "[election]\nzzzzzz = 1\n");
    one_error(
        node_errors(&text),
        &text,
        "zzzzzz",
        "expected one of `key_file`, `port`",
    );
    // Inline tables too.
    let text = format!("{CLUSTER_MIN}[service.health]\nx = {{ a = 1 }}\n");
    one_error(
        cluster_errors(&text),
        &text,
        "x = ",
        "unknown key `x` in [service.health]",
    );
}

#[test]
fn unknown_values_suggest_the_nearest() {
    let text = format!("{NODE_MIN}[reserved_ip]\ndriver = \"digital-ocean\"\n");
    one_error(
        node_errors(&text),
        &text,
        "\"digital-ocean\"",
        "unknown value \"digital-ocean\" for `driver`; did you mean \"digitalocean\"?",
    );
    let text = cluster_with("priority = 150", "priority = 150\nstate = \"drained\"");
    one_error(
        cluster_errors(&text),
        &text,
        "\"drained\"",
        "did you mean \"drain\"?",
    );
    let text = cluster_with("[[member]]", "[election]\ntransport = \"vrrp\"\n[[member]]");
    one_error(
        cluster_errors(&text),
        &text,
        "\"vrrp\"",
        "did you mean \"vrrp3\"?",
    );
}

#[test]
fn durations_must_have_a_unit() {
    let text = format!("{CLUSTER_MIN}[service.health]\ninterval = 5\n");
    one_error(
        cluster_errors(&text),
        &text,
        "5\n",
        "\"200ms\", \"5s\", \"1m\", \"1h\"",
    );
    let text = format!("{CLUSTER_MIN}[service.health]\ninterval = \"5 days\"\n");
    one_error(
        cluster_errors(&text),
        &text,
        "\"5 days\"",
        "the unit is unknown",
    );
    let text = format!("{CLUSTER_MIN}[service.health]\ninterval = \"5sec\"\n");
    one_error(cluster_errors(&text), &text, "\"5sec\"", "\"1m\", \"1h\"");
}

#[test]
fn private_ip_is_an_address_or_auto() {
    let text = node_with("\"10.10.0.11\"", "\"auto\"");
    let n = parse_node_file(&text, "dynia.toml").unwrap();
    assert_eq!(n.node.private_ip, PrivateIp::Auto);
    let text = node_with("\"10.10.0.11\"", "\"10.10.0.300\"");
    one_error(node_errors(&text), &text, "\"10.10.0.300\"", "or \"auto\"");
    let text = cluster_with("\"10.10.0.11\"", "\"10.10.0\"");
    one_error(
        cluster_errors(&text),
        &text,
        "\"10.10.0\"",
        "`private_ip`: invalid IP address",
    );
}

// ---------------------------------------------------------------- cluster rules

#[test]
fn cluster_rules_each_at_their_place() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, &str)] = &[
        // (replace, with, error at, message says)
        ("id = \"misty-owl\"", "id = \"MistyOwl\"", "\"MistyOwl\"", "member id \"MistyOwl\" is invalid: it has uppercase letters"),
        ("id = \"misty-owl\"", "id = \"lb_1\"", "\"lb_1\"", "a member id is a DNS label"),
        ("id = \"misty-owl\"", "id = \"-lb1\"", "\"-lb1\"", "starts or ends with '-'"),
        ("priority = 150", "priority = 0", "0\n\n[[service]]", "between 1 and 254"),
        ("priority = 150", "priority = 255", "255", "between 1 and 254"),
        ("cluster = \"myapp\"", "cluster = \"\"", "\"\"", "cluster name"),
        ("port = 8080", "port = 0", "0\n", "between 1 and 65535"),
        ("port = 8080", "port = 8080\nretries = 11", "11", "retries must be at most 10"),
        ("[\"app.example.com\"]", "[\"app.example.com\", \"App.Example.com\"]", "\"App", "use lowercase"),
        ("[\"app.example.com\"]", "[\"a.*.com\"]", "\"a.*.com\"", "'*' may only"),
        ("[\"app.example.com\"]", "[\"app.example.com:80\"]", "\"app.example.com:80\"", "no port"),
        ("[\"app.example.com\"]", "[\"app.example.com\", \"app.example.com\"]", "\"app.example.com\"]", "already served by this service"),
        ("[\"app.example.com\"]", "[]", "[]", "hosts is empty"),
        ("name = \"web\"", "name = \"Web Site\"", "\"Web Site\"", "service name"),
        ("[[member]]", "[election]\nvrid = 0\n[[member]]", "0\n[[member]]", "vrid must be between 1 and 255"),
        ("[[member]]", "[election]\nadvert_interval = \"5ms\"\n[[member]]", "\"5ms\"", "between 10ms and 40s"),
        ("[[member]]", "[election]\nadvert_interval = \"41s\"\n[[member]]", "\"41s\"", "between 10ms and 40s"),
        ("[[member]]", "[election]\ntransport = \"vrrp3\"\nadvert_interval = \"205ms\"\n[[member]]", "\"205ms\"", "multiple of 10ms"),
        ("[[member]]", "[election]\npreempt_delay = \"2h\"\n[[member]]", "\"2h\"", "between 0s and 1h"),
    ];
    for (from, to, needle, says) in cases {
        let text = cluster_with(from, to);
        let errors = cluster_errors(&text);
        // The needle's last occurrence in the replaced text is the offending one.
        let n = text.matches(needle).count() - 1;
        assert_eq!(errors.len(), 1, "{to}: {errors:#?}");
        assert_eq!(
            (errors[0].0, errors[0].1),
            at(&text, needle, n),
            "{to}: {}",
            errors[0].2
        );
        assert!(
            errors[0].2.contains(says),
            "{to}: {:?} lacks {says:?}",
            errors[0].2
        );
    }
}

#[test]
fn health_rules_each_at_their_place() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        ("path = \"health\"", "\"health\"", "must start with '/'"),
        ("expect_status = [200, 99]", "99", "use 100 to 599"),
        ("expect_status = [600]", "600", "use 100 to 599"),
        ("expect_status = []", "[]", "expect_status is empty"),
        ("interval = \"50ms\"", "\"50ms\"", "between 100ms and 1h"),
        ("interval = \"2h\"", "\"2h\"", "between 100ms and 1h"),
        ("timeout = \"5ms\"", "\"5ms\"", "between 10ms and 1m"),
        ("interval = \"1s\"", "\"1s\"", "checks would pile up"),
        ("fall = 0", "0", "fall must be between 1 and 100"),
        ("rise = 101", "101", "rise must be between 1 and 100"),
        ("fastinter = \"6s\"", "\"6s\"", "longer than interval"),
        ("fastinter = \"1ms\"", "\"1ms\"", "between 10ms and 1h"),
    ];
    for (line, needle, says) in cases {
        let text = format!("{CLUSTER_MIN}[service.health]\n{line}\n");
        let errors = cluster_errors(&text);
        let n = text.matches(needle).count() - 1;
        assert_eq!(errors.len(), 1, "{line}: {errors:#?}");
        // "interval = 1s" breaks the default timeout: located at the table.
        let want = if line.starts_with("interval = \"1s\"") {
            at(&text, "[service.health]", 0)
        } else {
            at(&text, needle, n)
        };
        assert_eq!((errors[0].0, errors[0].1), want, "{line}: {}", errors[0].2);
        assert!(
            errors[0].2.contains(says),
            "{line}: {:?} lacks {says:?}",
            errors[0].2
        );
    }
}

#[test]
fn members_must_be_unique_and_present() {
    let text = format!(
        "{CLUSTER_MIN}\n[[member]]\nid = \"misty-owl\"\nprivate_ip = \"10.10.0.11\"\npriority = 100\n"
    );
    let errors = cluster_errors(&text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!((errors[0].0, errors[0].1), at(&text, "\"misty-owl\"", 1));
    assert!(errors[0].2.contains("used twice"));
    assert_eq!((errors[1].0, errors[1].1), at(&text, "\"10.10.0.11\"", 1));
    assert!(errors[1]
        .2
        .contains("already the address of member \"misty-owl\""));

    let text = "generation = 1\ncluster = \"x\"\n";
    one_error(cluster_errors(text), text, "generation", "no [[member]]");
}

#[test]
fn services_and_hosts_are_unique_across_services() {
    let text = format!("{CLUSTER_MIN}\n[[service]]\nname = \"web\"\nhosts = [\"*\", \"app.example.com\"]\nport = 9090\n");
    let errors = cluster_errors(&text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!((errors[0].0, errors[0].1), at(&text, "\"web\"", 1));
    assert!(errors[0].2.contains("used twice"));
    assert_eq!(
        (errors[1].0, errors[1].1),
        at(&text, "\"app.example.com\"", 1)
    );
    assert!(errors[1].2.contains("already served by service \"web\""));
}

#[test]
fn all_problems_are_reported_at_once_in_file_order() {
    let text = r#"generation = 1
cluster = "myapp"
[election]
vrid = 0
[[member]]
id = "Bad"
private_ip = "10.0.0.1"
priority = 0
[[service]]
name = "web"
hosts = ["*"]
port = 0
retries = 99
[service.health]
expect_status = [1]
fall = 0
"#;
    let errors = cluster_errors(text);
    let places: Vec<(usize, usize)> = errors.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        places,
        [
            (4, 8),
            (6, 6),
            (8, 12),
            (12, 8),
            (13, 11),
            (15, 18),
            (16, 8)
        ],
        "{errors:#?}"
    );
    let shown = parse_cluster_doc(text, "c.toml").unwrap_err().to_string();
    assert_eq!(shown.lines().count(), 7);
    assert!(
        shown.starts_with("c.toml:4:8: vrid must be between 1 and 255"),
        "{shown}"
    );
}

#[test]
fn inline_array_of_tables_is_located_too() {
    let text = "generation = 1\ncluster = \"c\"\nmember = [{ id = \"a-b\", private_ip = \"10.0.0.1\", priority = 300 }]\n";
    one_error(cluster_errors(text), text, "300", "from 0 to 255");
    let text = "generation = 1\ncluster = \"c\"\nmember = [{ id = \"a-b\", private_ip = \"10.0.0.1\", priority = 0 }]\n";
    one_error(cluster_errors(text), text, "0 }", "between 1 and 254");
}

// ---------------------------------------------------------------- node rules

#[test]
fn node_rules_each_at_their_place() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str)] = &[
        // (appended to NODE_MIN or replacing in it, error at, message says)
        ("[admin]\nlisten = \"localhost:9180\"\n", "\"localhost:9180\"", "invalid socket address"),
        ("[admin]\nlisten = \"127.0.0.1\"\n", "\"127.0.0.1\"", "invalid socket address"),
        ("[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:80\"\n[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:81\"\n", "\"a\"\nbind = \"0.0.0.0:81\"", "already used by listener 1"),
        ("[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:80\"\n[[listener]]\nname = \"b\"\nbind = \"0.0.0.0:80\"\n", "\"0.0.0.0:80\"", "overlaps listener \"a\" at 0.0.0.0:80"),
        ("[[listener]]\nname = \"a\"\nbind = \"10.0.0.1:80\"\n[[listener]]\nname = \"b\"\nbind = \"0.0.0.0:80\"\n", "\"0.0.0.0:80\"", "overlaps listener \"a\""),
        ("[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:9180\"\n", "\"0.0.0.0:9180\"", "overlaps the admin listener at 127.0.0.1:9180"),
        ("[[listener]]\nname = \"a\"\nbind = \":80\"\n", "\":80\"", "invalid socket address"),
        ("[[listener]]\nname = \"\"\nbind = \"0.0.0.0:80\"\n", "\"\"", "listener name"),
        ("[limits]\nmax_header_bytes = 4096\n", "4096", "between 8192 and 1048576"),
        ("[limits]\nmax_header_bytes = 2000000\n", "2000000", "between 8192 and 1048576"),
        ("[limits]\nmax_connections = 0\n", "0\n", "at least 1"),
        ("[limits]\nheader_read_timeout = \"1h\"\n", "\"1h\"", "between 100ms and 10m"),
        ("[limits]\nconnect_timeout = \"0s\"\n", "\"0s\"", "between 10ms and 1m"),
        ("[limits]\nidle_timeout = 60\n", "60", "\"5s\""),
        ("[reserved_ip]\ndriver = \"digitalocean\"\naddress = \"203.0.113.10\"\n", "[reserved_ip]", "needs `token_file`"),
        ("[reserved_ip]\ndriver = \"digitalocean\"\ntoken_file = \"/t\"\n", "[reserved_ip]", "needs `address`"),
        ("[reserved_ip]\ndriver = \"l2\"\naddress = \"10.0.0.100\"\n", "[reserved_ip]", "needs `interface`"),
        ("[reserved_ip]\ndriver = \"l2\"\ninterface = \"eth1\"\n", "[reserved_ip]", "needs `address`"),
        ("[reserved_ip]\naddress = \"203.0.113\"\n", "\"203.0.113\"", "invalid IP address"),
        ("[reserved_ip]\ndriver = \"l2\"\ninterface = \"eth1\"\naddress = \"10.0.0.100\"\nprefix = 33\n", "33", "between 1 and 32"),
        ("[reserved_ip]\napi_url = \"api.digitalocean.com\"\n", "\"api.digitalocean.com\"", "http:// or https://"),
        ("[reserved_ip]\ndriver = \"digitalocean\"\naddress = \"203.0.113.10\"\ntoken_file = \"/t\"\napi_url = \"http://api.example.com\"\n", "\"http://api.example.com\"", "in clear"),
        ("[reserved_ip]\ndriver = \"digitalocean\"\naddress = \"2001:db8::1\"\ntoken_file = \"/t\"\n", "\"2001:db8::1\"", "reserved IPv6"),
        ("[hooks]\non_master = \"hooks/on-master\"\n", "\"hooks/on-master\"", "absolute path"),
        ("[election]\nport = 0\n", "0\n", "between 1 and 65535"),
        ("[election]\nrt_priority = 100\n", "100", "real-time priorities are 1 to 99 (0 = normal scheduling)"),
        ("[election]\nrt_priority = -1\n", "-1", "rt_priority"),
    ];
    for (extra, needle, says) in cases {
        let text = if extra.starts_with("[election]") {
            NODE_MIN.replacen("[election]\n", extra, 1)
        } else {
            format!("{NODE_MIN}{extra}")
        };
        let errors = node_errors(&text);
        assert_eq!(errors.len(), 1, "{extra}: {errors:#?}");
        let n = text.matches(needle).count() - 1;
        assert_eq!(
            (errors[0].0, errors[0].1),
            at(&text, needle, n),
            "{extra}: {}",
            errors[0].2
        );
        assert!(
            errors[0].2.contains(says),
            "{extra}: {:?} lacks {says:?}",
            errors[0].2
        );
    }
}

#[test]
fn plain_http_api_only_on_loopback_or_when_allowed() {
    let base = "[reserved_ip]\ndriver = \"digitalocean\"\naddress = \"203.0.113.10\"\ntoken_file = \"/t\"\n";
    for extra in [
        "api_url = \"http://127.0.0.1:8080\"\n",
        "api_url = \"http://localhost:8080/v2\"\n",
        "api_url = \"http://[::1]:8080\"\n",
        "api_url = \"http://api.example.com\"\nallow_plain_http = true\n",
        "api_url = \"https://api.example.com\"\n",
    ] {
        let text = format!("{NODE_MIN}{base}{extra}");
        let parsed = parse_node_file(&text, "dynia.toml");
        assert!(parsed.is_ok(), "{extra}: {:?}", parsed.err());
    }
}

#[test]
fn node_id_must_be_a_dns_label() {
    let text = node_with("\"misty-owl\"", "\"lb.1\"");
    one_error(
        node_errors(&text),
        &text,
        "\"lb.1\"",
        "member id \"lb.1\" is invalid: only a-z, 0-9 and '-' are allowed",
    );
}

#[test]
fn one_word_and_digit_ids_are_accepted() {
    for id in ["lb1", "lb2", "web-01", "node"] {
        let text = node_with("\"misty-owl\"", &format!("\"{id}\""));
        let n = parse_node_file(&text, "dynia.toml").unwrap();
        assert_eq!(n.node.id, id);
    }
}

// ---------------------------------------------------------------- node + cluster

#[test]
fn pair_node_must_be_a_member() {
    let text = node_with("\"misty-owl\"", "\"lazy-cat\"");
    let n = parse_node_file(&text, "dynia.toml").unwrap();
    let d = parse_cluster_doc(CLUSTER_MIN, "cluster.toml").unwrap();
    let e = validate_pair(&n, &d).unwrap_err();
    let errors = triples(&e);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!((errors[0].0, errors[0].1), at(&text, "\"lazy-cat\"", 0));
    assert!(errors[0].2.contains("not a member of cluster \"myapp\""));
    assert!(errors[0].2.contains("misty-owl"));
    assert!(e.to_string().starts_with("dynia.toml:2:6: "), "{e}");
}

#[test]
fn pair_private_ip_and_key_file() {
    let text = node_with("\"10.10.0.11\"", "\"10.10.0.99\"")
        .replace("[election]\nkey_file = \"/etc/dynia/cluster.key\"\n", "");
    let n = parse_node_file(&text, "dynia.toml").unwrap();
    let d = parse_cluster_doc(CLUSTER_MIN, "cluster.toml").unwrap();
    let errors = triples(&validate_pair(&n, &d).unwrap_err());
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!((errors[0].0, errors[0].1), (1, 1));
    assert!(errors[0].2.contains("needs the cluster key"));
    assert_eq!((errors[1].0, errors[1].1), at(&text, "\"10.10.0.99\"", 0));
    assert!(errors[1].2.contains("differs from 10.10.0.11"));

    // vrrp3 needs no key; "auto" is not compared.
    let text = text.replace("\"10.10.0.99\"", "\"auto\"");
    let n = parse_node_file(&text, "dynia.toml").unwrap();
    let d = parse_cluster_doc(
        &cluster_with(
            "[[member]]",
            "[election]\ntransport = \"vrrp3\"\n[[member]]",
        ),
        "cluster.toml",
    )
    .unwrap();
    validate_pair(&n, &d).unwrap();
}

#[test]
fn pair_listener_must_not_take_a_service_port() {
    let text = format!("{NODE_MIN}[[listener]]\nname = \"http\"\nbind = \"0.0.0.0:8080\"\n");
    let n = parse_node_file(&text, "dynia.toml").unwrap();
    let d = parse_cluster_doc(CLUSTER_MIN, "cluster.toml").unwrap();
    let errors = triples(&validate_pair(&n, &d).unwrap_err());
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!((errors[0].0, errors[0].1), at(&text, "\"0.0.0.0:8080\"", 0));
    assert!(
        errors[0].2.contains("loop back into dynia"),
        "{}",
        errors[0].2
    );
    // Another address on the same port is fine.
    let text = text.replace("0.0.0.0:8080", "203.0.113.10:8080");
    let n = parse_node_file(&text, "dynia.toml").unwrap();
    validate_pair(&n, &d).unwrap();
}

#[test]
fn pair_in_memory_names_key_paths() {
    let mut n = parse_node_file(NODE_MIN, "dynia.toml").unwrap();
    n.origin = Default::default();
    n.node.id = "lazy-cat".to_owned();
    let d = parse_cluster_doc(CLUSTER_MIN, "cluster.toml").unwrap();
    let e = validate_pair(&n, &d).unwrap_err();
    assert!(
        e.to_string().starts_with("node.id: node id \"lazy-cat\""),
        "{e}"
    );
}

// ---------------------------------------------------------------- loading

#[test]
fn load_reads_files_and_says_what_to_do() {
    let dir = TempDir::new("load");
    let node = dir.path().join("dynia.toml");
    std::fs::write(
        &node,
        NODE_EXAMPLE.replace("/var/lib/dynia", &dir.path().display().to_string()),
    )
    .unwrap();
    let n = load_node_file(&node).unwrap();
    let doc_path = cluster_doc_path(&n);
    assert_eq!(doc_path, dir.path().join("cluster.toml"));

    let e = load_cluster_doc(&doc_path).unwrap_err().to_string();
    assert!(e.contains("cluster.toml: cannot read:"), "{e}");
    assert!(e.contains("dynia init"), "{e}");

    std::fs::write(&doc_path, CLUSTER_EXAMPLE).unwrap();
    let d = load_cluster_doc(&doc_path).unwrap();
    validate_pair(&n, &d).unwrap();

    std::fs::write(
        &doc_path,
        CLUSTER_EXAMPLE.replace("priority = 140", "priority = 0"),
    )
    .unwrap();
    let e = load_cluster_doc(&doc_path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:21:12: priority", doc_path.display())),
        "{e}"
    );

    let e = load_node_file(dir.path().join("nope.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("-c/--config"), "{e}");

    std::fs::write(&doc_path, [0xff, 0xfe, b'\n']).unwrap();
    let e = load_cluster_doc(&doc_path).unwrap_err().to_string();
    assert!(e.contains("UTF-8"), "{e}");
}

// ---------------------------------------------------------------- secrets

#[test]
fn secret_refuses_group_or_other_access() {
    let dir = TempDir::new("secret");
    let path = dir.path().join("do.token");
    std::fs::write(&path, "tok-123\n").unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o610, 0o601] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = read_secret(&path).unwrap_err();
        assert!(
            matches!(e, ConfigProblem::SecretMode { .. }),
            "{mode:o}: {e}"
        );
        let shown = e.to_string();
        assert!(
            shown.contains(&format!("chmod 600 {}", path.display())),
            "{shown}"
        );
        assert!(shown.contains(&format!("{mode:04o}")), "{shown}");
        assert!(!shown.contains("tok-123"));
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = read_secret(&path).unwrap();
    assert_eq!(s.expose_bytes(), b"tok-123");
    assert_eq!(format!("{s:?}"), "<redacted>");
    assert_eq!(format!("{s}"), "<redacted>");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(read_secret(&path).unwrap().expose_bytes(), b"tok-123");
}

#[test]
fn secret_trims_one_newline_and_refuses_empty_or_odd_files() {
    let dir = TempDir::new("secret-trim");
    let path = dir.path().join("k");
    write_secret(&path, b"abc\r\n").unwrap();
    assert_eq!(read_secret(&path).unwrap().expose_bytes(), b"abc");
    write_secret(&path, b"abc\n\n").unwrap();
    assert_eq!(read_secret(&path).unwrap().expose_bytes(), b"abc\n");
    write_secret(&path, b"\n").unwrap();
    assert!(read_secret(&path)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let e = read_secret(dir.path()).unwrap_err().to_string();
    assert!(e.contains("regular file"), "{e}");
    let e = read_secret(&dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn write_secret_creates_0600_and_replaces() {
    let dir = TempDir::new("secret-write");
    let path = dir.path().join("admin.token");
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_secret(&path, b"new-token").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(read_secret(&path).unwrap().expose_bytes(), b"new-token");
    // Nothing left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let e = write_secret(&dir.path().join("no/such/dir/x"), b"x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot write secret"), "{e}");
}

// ---------------------------------------------------------------- hash and round trip

#[test]
fn hash_ignores_formatting_and_follows_content() {
    let a = parse_cluster_doc(CLUSTER_EXAMPLE, "a").unwrap();
    let reformatted: String = CLUSTER_EXAMPLE
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| format!("{}\n\n", l.replace(" = ", "=")))
        .collect();
    assert_ne!(reformatted, CLUSTER_EXAMPLE);
    let b = parse_cluster_doc(&reformatted, "b").unwrap();
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.hash().len(), 64);
    assert!(a
        .hash()
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));

    let mut c = a.clone();
    c.generation += 1;
    assert_ne!(a.hash(), c.hash());
    let mut c = a.clone();
    c.members[1].state = MemberState::Drain;
    assert_ne!(a.hash(), c.hash());
    let mut c = a.clone();
    c.services[0].health.interval = Duration::from_secs(6);
    assert_ne!(a.hash(), c.hash());
}

#[test]
fn round_trip_serialize_then_parse_is_equal() {
    let a = parse_cluster_doc(CLUSTER_EXAMPLE, "a").unwrap();
    let text = a.to_toml();
    let b = parse_cluster_doc(&text, "b").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(a, b);
    assert_eq!(a.hash(), b.hash());
    assert_eq!(text, b.to_toml());
    a.validate().unwrap();

    // A document built in memory with every optional part set.
    let mut c = a.clone();
    c.election.transport = Transport::Vrrp3;
    c.members[0].droplet_id = None;
    c.members[1].state = MemberState::Maint;
    c.services[0].health.expect_status = vec![200, 204, 301];
    c.services[0].health.interval = Duration::from_millis(2500);
    let c2 = parse_cluster_doc(&c.to_toml(), "c").unwrap();
    assert_eq!(c, c2);
}

#[test]
fn validate_in_memory_names_key_paths() {
    let mut d = parse_cluster_doc(CLUSTER_EXAMPLE, "a").unwrap();
    d.services[0].port = 0;
    d.members[1].priority = 255;
    let e = d.validate().unwrap_err();
    let shown: Vec<String> = e.errors().iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 2);
    assert!(shown[0].starts_with("member[1].priority: "), "{shown:?}");
    assert!(shown[1].starts_with("service[0].port: "), "{shown:?}");
}

#[test]
fn node_file_round_trips_too() {
    let a = parse_node_file(NODE_EXAMPLE, "a").unwrap();
    let text = toml::to_string(&a).unwrap();
    let b: NodeFile = parse_node_file(&text, "b").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(a, b);
}

// ---------------------------------------------------------------- no panics

#[test]
fn hostile_inputs_give_errors_not_panics() {
    let inputs = [
        "",
        "\u{0}",
        "é = \"é\"",
        "[[member]]\n[[member]]\n",
        "generation = -1\ncluster = \"x\"",
        "generation = 1.5\ncluster = \"x\"",
        "generation = 1\ncluster = \"x\"\nmember = 3",
        "generation = 1\ncluster = \"x\"\n[member]\nid = \"a-b\"",
        "generation = 1\ncluster = \"x\"\n[[service]]\nname=\"a\"\nhosts=\"*\"\nport=1",
        "generation = 18446744073709551616\ncluster = \"x\"",
        "a = \"\\u00e9\"\n[[b]]\n[b.c]\nd = [[1], [\"x\"]]",
        "generation = 1\ncluster = \"x\"\n[election]\nadvert_interval = \"99999999999999999999h\"",
    ];
    for text in inputs {
        let _ = parse_cluster_doc(text, "c.toml").map(|d| d.hash());
        let _ = parse_node_file(text, "n.toml");
    }
    // Every truncation of the examples.
    for text in [CLUSTER_EXAMPLE, NODE_EXAMPLE] {
        for (i, _) in text.char_indices() {
            let _ = parse_cluster_doc(&text[..i], "c.toml");
            let _ = parse_node_file(&text[..i], "n.toml");
        }
    }
}

// ---------------------------------------------------------------- helpers

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("dynia-config-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
