//! Proves the netns cluster harness (docs/testing.md) and the `l2` driver in it:
//! reachability, kill / pause / partition / heal, cleanup, and a VIP moved
//! between nodes by the `l2` driver with the client's ARP cache repointed by
//! gratuitous ARP. Needs root; skips with a printed reason otherwise.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dynia_testkit::eventually;
use dynia_testkit::netns::{self, NetnsCluster};
use dynia_vrrp::driver::{ClaimOutcome, Holder, L2Config, ReleaseOutcome, L2};

const BIN: &str = env!("CARGO_BIN_EXE_dynia");
const PORT: u16 = 8080;

/// Starts `dynia upstream --listen LISTEN --id n<i>` as node i's process and
/// waits until the client gets an answer from node i's own address.
fn start_upstream(c: &mut NetnsCluster, i: usize, listen: &str) {
    let id = format!("n{i}");
    c.spawn_node(i, &[BIN, "upstream", "--listen", listen, "--id", &id]);
    let ip = c.node_ip(i);
    let ok = eventually(
        Duration::from_secs(10),
        || matches!(c.client_get(ip, PORT, "/"), Ok(a) if a.status == 200 && a.body.contains(&id)),
    )
    .is_ok();
    assert!(
        ok,
        "node {i} never answered on {ip}:{PORT}: {:?}",
        c.client_get(ip, PORT, "/")
    );
}

fn answers(c: &NetnsCluster, i: usize) -> bool {
    let id = format!("n{i}");
    matches!(c.client_get(c.node_ip(i), PORT, "/"), Ok(a) if a.status == 200 && a.body.contains(&id))
}

#[test]
fn skip_reason_names_root() {
    let why = netns::skip_reason_for(1000).expect("non-root must skip");
    assert!(why.contains("root") && why.contains("1000"), "{why}");
    if !netns::root_or_skip("skip_reason_names_root (root part)") {
        return;
    }
    assert_eq!(netns::skip_reason(), None);
}

#[test]
fn three_nodes_reach_partition_heal_pause_kill_cleanup() {
    if !netns::root_or_skip("three_nodes_reach_partition_heal_pause_kill_cleanup") {
        return;
    }
    let t0 = Instant::now();
    let mut c = NetnsCluster::new(3);
    let prefix = c.prefix().to_owned();
    eprintln!(
        "cluster {prefix}: 10.99.{}.0/24 built in {:?}",
        c.subnet(),
        t0.elapsed()
    );
    assert_eq!(
        netns::netns_list()
            .iter()
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .count(),
        5,
        "3 nodes + client + switch"
    );
    // Nothing of the cluster lives in the root namespace.
    let root_links = netns::ip(&["-o", "link", "show"]);
    assert!(!root_links.contains(&prefix), "{root_links}");

    for i in 0..3 {
        let listen = format!("{}:{PORT}", c.node_ip(i));
        start_upstream(&mut c, i, &listen);
    }
    eprintln!("3 upstreams answering after {:?}", t0.elapsed());

    // Partition node 1: it stops answering, the others still do.
    c.partition(1);
    assert!(!answers(&c, 1), "partitioned node 1 still answers");
    assert!(answers(&c, 0) && answers(&c, 2));
    // Nor can node 1 reach anyone.
    let out = c.exec_timeout(
        c.ns_name(1),
        &["ping", "-c", "1", "-W", "1", &c.node_ip(0).to_string()],
        Duration::from_secs(3),
    );
    if out.status.code() != Some(127)
        && !String::from_utf8_lossy(&out.stderr).contains("No such file")
    {
        assert!(!out.status.success(), "partitioned node 1 reached node 0");
    }
    c.heal(1);
    assert!(
        eventually(Duration::from_secs(5), || answers(&c, 1)).is_ok(),
        "node 1 not back after heal"
    );
    eprintln!("partition/heal done after {:?}", t0.elapsed());

    // Pause node 2: silent (the kernel still accepts the TCP connection,
    // nobody answers), then back on resume.
    c.pause(2);
    assert!(!answers(&c, 2), "paused node 2 answered");
    assert!(c.is_running(2), "paused is still alive");
    c.resume(2);
    assert!(
        eventually(Duration::from_secs(5), || answers(&c, 2)).is_ok(),
        "node 2 not back after resume"
    );

    // Kill node 0: the process is gone and nothing answers there.
    c.kill(0);
    assert!(!c.is_running(0));
    assert!(!answers(&c, 0), "killed node 0 answered");
    assert!(answers(&c, 1) && answers(&c, 2));

    // A stray process the test owns is killed by the cluster's drop too.
    let ns2 = c.ns_name(2).to_owned();
    let mut stray = c.spawn(&ns2, &["sleep", "30"]);

    drop(c);
    let left = netns::leftovers(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        eventually(Duration::from_secs(5), || matches!(
            stray.try_wait(),
            Ok(Some(_))
        ))
        .is_ok(),
        "stray process survived the cluster"
    );
    eprintln!("whole test {:?}", t0.elapsed());
}

/// A panic inside a test still cleans up (Drop runs on unwind).
#[test]
fn cleanup_on_panic() {
    if !netns::root_or_skip("cleanup_on_panic") {
        return;
    }
    let mut seen = (String::new(), std::path::PathBuf::new());
    let seen_ref = &mut seen;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let c = NetnsCluster::new(1);
        *seen_ref = (c.prefix().to_owned(), c.log_dir().to_owned());
        panic!("deliberate panic inside a netns test (expected; checks cleanup on unwind)");
    }));
    assert!(r.is_err());
    let (prefix, logs) = seen;
    assert!(!prefix.is_empty());
    let left = netns::leftovers(&prefix);
    assert!(left.is_empty(), "left behind after panic: {left:?}");
    // The failed cluster keeps its logs for debugging; this failure was on purpose.
    let _ = std::fs::remove_dir_all(logs);
}

/// Namespaces named like a dead run's are removed when a cluster is built.
#[test]
fn stale_objects_of_dead_runs_are_removed() {
    if !netns::root_or_skip("stale_objects_of_dead_runs_are_removed") {
        return;
    }
    // A pid that is not running: pid_max is at most 2^22.
    let dead = 4_194_304 + 17;
    let stale = format!("{}{dead}-0-sw", netns::NAME_PREFIX);
    netns::ip(&["netns", "add", &stale]);
    let c = NetnsCluster::new(1);
    let all = netns::netns_list();
    assert!(!all.contains(&stale), "stale {stale} still there: {all:?}");
    // Our own live cluster's namespaces are untouched by a second cluster.
    let c2 = NetnsCluster::new(1);
    assert!(netns::netns_list()
        .iter()
        .any(|n| n.starts_with(&format!("{}-", c.prefix()))));
    drop(c2);
    drop(c);
}

/// The `l2` driver moves a VIP between two nodes; gratuitous ARP repoints the
/// client's neighbour entry before it sends anything to the VIP again.
#[test]
fn l2_vip_moves_between_nodes() {
    if !netns::root_or_skip("l2_vip_moves_between_nodes") {
        return;
    }
    let mut c = NetnsCluster::new(2);
    let vip = c.addr(100);
    for i in 0..2 {
        start_upstream(&mut c, i, &format!("0.0.0.0:{PORT}"));
    }
    let driver =
        |_: usize| L2::new(L2Config::new(netns::NODE_IF, IpAddr::V4(vip), 24)).expect("l2 config");
    let (mac0, mac1) = (c.mac(0), c.mac(1));

    // Node 0 claims (the async API, as the daemon calls it, on a runtime
    // whose threads all live in node 0's namespace).
    let d0 = driver(0);
    let d0c = d0.clone();
    let (outcome, holder) = netns::in_netns(c.ns_name(0), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { (d0c.claim().await, d0c.holder().await) })
    });
    assert_eq!(
        outcome.expect("node 0 claims"),
        ClaimOutcome::Assigned { action_id: 0 }
    );
    assert_eq!(holder.unwrap(), Holder::Me);
    let a = c.client_get(vip, PORT, "/").expect("VIP answers");
    assert!(a.body.contains("n0"), "VIP answered {a:?}, wanted n0");
    let (m, state) = c
        .neigh(c.client_ns(), vip)
        .expect("client has an entry for the VIP");
    assert_eq!(
        m, mac0,
        "client's entry for the VIP ({state}) points at node 0"
    );

    // Node 1 claims while node 0 still holds it (the overlap of a failover);
    // the client's entry must move to node 1 without the client sending
    // anything to the VIP. The claim runs on its own thread so the client
    // side is watched while it happens.
    let d1 = driver(1);
    let d1c = d1.clone();
    let ns1 = c.ns_name(1).to_owned();
    let t = Instant::now();
    let claimer = std::thread::spawn(move || netns::in_netns(&ns1, move || d1c.claim_blocking()));
    let repointed = eventually(
        Duration::from_secs(1),
        || matches!(c.neigh(c.client_ns(), vip), Some((m, _)) if m == mac1),
    )
    .is_ok();
    let repoint = t.elapsed();
    let out1 = claimer.join().expect("claim thread");
    assert_eq!(
        out1.expect("node 1 claims"),
        ClaimOutcome::Assigned { action_id: 0 }
    );
    assert!(
        repointed,
        "client's entry for {vip} not repointed to node 1 ({mac1}) by GARP: {:?}",
        c.neigh(c.client_ns(), vip)
    );
    eprintln!("node 1 claim started → client's ARP entry on node 1 after {repoint:?}");

    // Node 0 releases; the client reaches node 1 through the VIP.
    let d0r = d0.clone();
    let rel = netns::in_netns(c.ns_name(0), move || {
        (d0r.release_blocking(), d0r.holder_blocking())
    });
    assert_eq!(rel.0.expect("node 0 releases"), ReleaseOutcome::Released);
    assert_eq!(rel.1.unwrap(), Holder::Nobody);
    let a = c
        .client_get(vip, PORT, "/")
        .expect("VIP answers after the move");
    assert!(a.body.contains("n1"), "VIP answered {a:?}, wanted n1");
    eprintln!("claim on node 1 → VIP answered by n1: {:?}", t.elapsed());
    let addrs0 = netns::ip(&["-n", c.ns_name(0), "-4", "-o", "addr", "show"]);
    assert!(!addrs0.contains(&vip.to_string()), "{addrs0}");

    // Failover without a release: node 1 is cut off while holding the VIP;
    // node 0 claims again and the client follows well within the
    // failover budget (0.6 s from losing the master, election included).
    c.partition(1);
    let d0c = d0.clone();
    let ns0 = c.ns_name(0).to_owned();
    let t = Instant::now();
    let claimer = std::thread::spawn(move || {
        netns::in_netns(&ns0, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let t = Instant::now();
                let r = d0c.claim().await;
                (r, t.elapsed())
            })
        })
    });
    let repointed = eventually(
        Duration::from_secs(1),
        || matches!(c.neigh(c.client_ns(), vip), Some((m, _)) if m == mac0),
    )
    .is_ok();
    let repoint = t.elapsed();
    let answer = c.client_get(vip, PORT, "/");
    let answered = t.elapsed();
    let (again, claim_took) = claimer.join().expect("claim thread");
    assert_eq!(
        again.expect("node 0 re-claims"),
        ClaimOutcome::Assigned { action_id: 0 }
    );
    assert!(
        repointed,
        "client's entry not back on node 0: {:?}",
        c.neigh(c.client_ns(), vip)
    );
    assert!(
        matches!(&answer, Ok(a) if a.body.contains("n0")),
        "VIP answered {answer:?}, wanted n0"
    );
    eprintln!(
        "failover to node 0: claim() returned in {claim_took:?}, client's ARP entry moved after {repoint:?}, VIP answered by n0 after {answered:?}"
    );
    assert!(
        claim_took < Duration::from_millis(300),
        "claim() must return after the first GARP, took {claim_took:?}"
    );
    assert!(
        answered < Duration::from_millis(600),
        "failover took {answered:?}"
    );
}
