//! The `l2` driver's reconcile on a real L2 network: a VIP that disappears
//! from the master's interface behind dynia's back (an interface reset, a
//! network manager, an operator's `ip addr flush`) is put back, with
//! gratuitous ARP, at the next check, and the client reaches it again.
//! keepalived leaves it gone until the next state change. Needs root
//! (namespaces, addresses, raw sockets); elsewhere it skips.

use std::time::Duration;

use dynia_testkit::daemon::{bin, write_secret, TempDir};
use dynia_testkit::eventually;
use dynia_testkit::netns::{root_or_skip, NetnsCluster};

const PROXY_PORT: u16 = 8000;
const APP_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9180;
const ID: &str = "lone-heron";

#[test]
fn a_vip_removed_behind_the_masters_back_is_put_back() {
    if !root_or_skip("a_vip_removed_behind_the_masters_back_is_put_back") {
        return;
    }
    let mut c = NetnsCluster::new(1);
    let vip = c.addr(100);
    let ip = c.node_ip(0);
    let dir = TempDir::new("l2rec");
    let d = dir.0.display().to_string();
    write_secret(&dir.0.join("admin.token"), dynia_testkit::daemon::TOKEN);
    write_secret(
        &dir.0.join("cluster.key"),
        "0123456789abcdef0123456789abcdef",
    );
    std::fs::write(
        dir.0.join("cluster.toml"),
        format!(
            "generation = 1\ncluster = \"l2rec\"\n\n\
             [[member]]\nid = \"{ID}\"\nprivate_ip = \"{ip}\"\npriority = 150\n\n\
             [[service]]\nname = \"web\"\nhosts = [\"*\"]\nport = {APP_PORT}\n\
             [service.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n"
        ),
    )
    .unwrap();
    let node_file = dir.0.join("dynia.toml");
    std::fs::write(
        &node_file,
        format!(
            "[node]\nid = \"{ID}\"\nprivate_ip = \"{ip}\"\nstate_dir = \"{d}\"\nworker_threads = 1\n\n\
             [admin]\nlisten = \"{ip}:{ADMIN_PORT}\"\ntoken_file = \"{d}/admin.token\"\n\n\
             [[listener]]\nname = \"http\"\nbind = \"0.0.0.0:{PROXY_PORT}\"\n\n\
             [election]\nkey_file = \"{d}/cluster.key\"\n\n\
             [reserved_ip]\ndriver = \"l2\"\naddress = \"{vip}\"\ninterface = \"eth0\"\nprefix = 24\n"
        ),
    )
    .unwrap();
    let ns = c.ns_name(0).to_string();
    let listen = format!("{ip}:{APP_PORT}");
    // Killed with everything in the namespace when `c` drops; reaped here.
    let mut app = c.spawn(&ns, &[bin(), "upstream", "--listen", &listen, "--id", ID]);
    let nf = node_file.display().to_string();
    c.spawn_node(0, &[bin(), "run", "-c", &nf]);

    let has_vip = |c: &NetnsCluster| {
        let out = c.exec(&ns, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("{vip}/"))
    };
    let answers = |c: &NetnsCluster| {
        c.client_get(vip, PROXY_PORT, "/")
            .is_ok_and(|a| a.status == 200 && a.body.contains(ID))
    };
    let limit = Duration::from_secs(20);
    assert!(
        eventually(limit, || has_vip(&c) && answers(&c)).is_ok(),
        "the node never took the VIP; logs in {}",
        c.log_dir().display()
    );

    // Behind dynia's back: the address goes, the client loses it.
    c.exec(
        &ns,
        &["ip", "addr", "del", &format!("{vip}/24"), "dev", "eth0"],
    );
    assert!(!has_vip(&c), "ip addr del did not remove the VIP");
    assert!(
        eventually(Duration::from_secs(5), || !answers(&c)).is_ok(),
        "the VIP still answered without its address"
    );
    // The next reconcile (every 5 s) puts it back.
    assert!(
        eventually(limit, || has_vip(&c) && answers(&c)).is_ok(),
        "the master never put the VIP back; logs in {}",
        c.log_dir().display()
    );
    let log = std::fs::read_dir(c.log_dir())
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect::<String>();
    assert!(
        log.contains("reconcile: the reserved ip does not point here; claiming it again"),
        "{log}"
    );
    let _ = app.kill();
    let _ = app.wait();
}
