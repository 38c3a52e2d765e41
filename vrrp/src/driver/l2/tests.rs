//! The `l2` driver in network namespaces (root only): claim, GARPs on the
//! wire, release, a late claim after a release (internals), the async API,
//! missing capabilities. The pure checks are in `vrrp/tests/l2_driver.rs`.

use std::net::IpAddr;

use pnet_datalink::MacAddr;
use pnet_packet::arp::{ArpOperations, ArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket};
use pnet_packet::Packet;

use super::*;
use crate::driver::ErrorKind;

/// `true` when root and `ip` are there; otherwise prints why `test`
/// skips, or fails with `DYNIA_REQUIRE_ROOT_TESTS=1` (CI, as root).
fn root_and_ip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        "needs root (network namespaces, CAP_NET_ADMIN, CAP_NET_RAW)"
    } else if std::process::Command::new("ip").arg("-V").output().is_err() {
        "`ip` (iproute2) is not installed"
    } else {
        return true;
    };
    assert!(
        std::env::var_os("DYNIA_REQUIRE_ROOT_TESTS").is_none_or(|v| v != "1"),
        "{test} must run here (DYNIA_REQUIRE_ROOT_TESTS=1) but cannot: {why}"
    );
    eprintln!("skip {test}: {why}");
    false
}

/// Root only: two namespaces joined by a veth pair; claim adds the address
/// and a GARP is captured on the peer side; release removes it.
#[test]
fn claim_and_release_in_netns() {
    if !root_and_ip("claim_and_release_in_netns") {
        return;
    }
    let pair = root::VethPair::new();
    let vip = Ipv4Addr::new(10, 98, 1, 100);
    let mut cfg = L2Config::new("l2a", IpAddr::V4(vip), 24);
    cfg.garp_count = 2;
    cfg.garp_interval = Duration::from_millis(50);
    let drv = L2::new(cfg).unwrap();

    // Listen on the peer first, then claim on the other side.
    let listener = root::in_netns(&pair.b, || {
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == "l2b")
            .expect("l2b in peer namespace");
        let cfg = pnet_datalink::Config {
            read_timeout: Some(Duration::from_millis(100)),
            ..Default::default()
        };
        match pnet_datalink::channel(&iface, cfg) {
            Ok(pnet_datalink::Channel::Ethernet(_tx, rx)) => rx,
            _ => panic!("no channel on l2b"),
        }
    });
    let started = Instant::now();
    let drv2 = drv.clone();
    let (outcome, mac, present) = root::in_netns(&pair.a, move || {
        let outcome = drv2.claim_blocking().unwrap();
        let mut nl = Netlink::open().unwrap();
        let link = nl.link("l2a").unwrap().unwrap();
        (outcome, link.mac, drv2.holder_blocking().unwrap())
    });
    assert_eq!(outcome, ClaimOutcome::Assigned { action_id: 0 });
    assert_eq!(present, Holder::Me);
    // Claiming again is fine.
    let drv3 = drv.clone();
    let again = root::in_netns(&pair.a, move || drv3.claim_blocking().unwrap());
    assert_eq!(again, ClaimOutcome::AlreadyHeld);

    // Capture: at least one request and one reply for the VIP from `mac`.
    let mut rx = listener;
    let (mut req, mut rep) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(3);
    for _ in 0..10_000 {
        if (req && rep) || Instant::now() > deadline {
            break;
        }
        let Ok(frame) = rx.next() else { continue };
        let Some(eth) = EthernetPacket::new(frame) else {
            continue;
        };
        if eth.get_ethertype() != EtherTypes::Arp {
            continue;
        }
        let Some(arp) = ArpPacket::new(eth.payload()) else {
            continue;
        };
        if eth.get_destination() == MacAddr::broadcast()
            && arp.get_sender_proto_addr() == vip
            && arp.get_target_proto_addr() == vip
            && arp.get_sender_hw_addr() == MacAddr::from(mac)
        {
            match arp.get_operation() {
                ArpOperations::Request => req = true,
                ArpOperations::Reply => rep = true,
                _ => {}
            }
        }
    }
    assert!(
        req && rep,
        "GARP request {req} / reply {rep} captured on the peer"
    );
    eprintln!("claim → GARPs captured in {:?}", started.elapsed());

    let drv4 = drv.clone();
    let (rel, after, rel2) = root::in_netns(&pair.a, move || {
        let r = drv4.release_blocking().unwrap();
        let h = drv4.holder_blocking().unwrap();
        let r2 = drv4.release_blocking().unwrap();
        (r, h, r2)
    });
    assert_eq!(rel, ReleaseOutcome::Released);
    assert_eq!(after, Holder::Nobody);
    assert_eq!(rel2, ReleaseOutcome::Released, "releasing twice is fine");
    let out = pair.ip(&["-n", &pair.a, "-4", "addr", "show", "dev", "l2a"]);
    assert!(!out.contains("10.98.1.100"), "address gone: {out}");

    // A claim that started before a release (its caller gave up) does
    // not add the address afterwards.
    let drv5 = drv.clone();
    let late = root::in_netns(&pair.a, move || {
        let started_under = drv5.epoch();
        drv5.release_blocking().unwrap();
        drv5.start_claim(started_under).map(|(o, _, _)| o)
    });
    let e = late.unwrap_err().to_string();
    assert!(e.contains("release began"), "{e}");
    let out = pair.ip(&["-n", &pair.a, "-4", "addr", "show", "dev", "l2a"]);
    assert!(
        !out.contains("10.98.1.100"),
        "late claim added nothing: {out}"
    );
}

/// The async API runs the same code on the blocking pool: in a runtime
/// whose threads all start inside the namespace, it claims and releases.
#[test]
fn async_api_in_netns() {
    if !root_and_ip("async_api_in_netns") {
        return;
    }
    let pair = root::VethPair::new();
    // Slow rounds: claim must not wait for them, and release must stop
    // them at once (the runtime's drop waits for its blocking threads).
    let mut cfg = L2Config::new("l2a", "10.98.2.100".parse().unwrap(), 24);
    cfg.garp_interval = Duration::from_secs(3);
    let drv = L2::new(cfg).unwrap();
    let whole = Instant::now();
    let (c, h, r, h2) = root::in_netns(&pair.a, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let t = Instant::now();
            let c = drv.claim().await.unwrap();
            let took = t.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "claim returned after {took:?}"
            );
            let h = drv.holder().await.unwrap();
            let r = drv.release().await.unwrap();
            let h2 = drv.holder().await.unwrap();
            (c, h, r, h2)
        })
    });
    let took = whole.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "pending GARPs outlived the release: {took:?}"
    );
    assert_eq!(c, ClaimOutcome::Assigned { action_id: 0 });
    assert_eq!(h, Holder::Me);
    assert_eq!(r, ReleaseOutcome::Released);
    assert_eq!(h2, Holder::Nobody);
}

/// Root only: on a thread without CAP_NET_ADMIN and CAP_NET_RAW (caps are
/// per thread), a claim fails with a config error that says what to do,
/// and leaves no address behind.
#[test]
fn missing_capabilities_are_named() {
    if !root_and_ip("missing_capabilities_are_named") {
        return;
    }
    let pair = root::VethPair::new();
    let drv = L2::new(L2Config::new("l2a", "10.98.3.100".parse().unwrap(), 24)).unwrap();
    let (claim, release) = root::in_netns(&pair.a, move || {
        root::drop_net_caps();
        (drv.claim_blocking(), drv.release_blocking())
    });
    for e in [claim.unwrap_err(), release.unwrap_err()] {
        let s = e.to_string();
        assert_eq!(e.kind(), ErrorKind::Config, "{s}");
        assert!(
            s.contains("CAP_NET_ADMIN") && s.contains("CAP_NET_RAW") && s.contains("l2a"),
            "{s}"
        );
    }
    let out = pair.ip(&["-n", &pair.a, "-4", "addr", "show", "dev", "l2a"]);
    assert!(!out.contains("10.98.3.100"), "no half-claim: {out}");
}

/// Root-only helpers: a veth pair between two fresh namespaces.
mod root {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    static N: AtomicU32 = AtomicU32::new(0);

    pub struct VethPair {
        pub a: String,
        pub b: String,
    }

    impl VethPair {
        pub fn new() -> VethPair {
            remove_stale();
            let n = N.fetch_add(1, Ordering::SeqCst);
            let tag = format!("dyl2-{}-{n}", std::process::id());
            let p = VethPair {
                a: format!("{tag}-a"),
                b: format!("{tag}-b"),
            };
            p.ip(&["netns", "add", &p.a]);
            p.ip(&["netns", "add", &p.b]);
            p.ip(&[
                "-n", &p.a, "link", "add", "l2a", "type", "veth", "peer", "name", "l2b", "netns",
                &p.b,
            ]);
            p.ip(&["-n", &p.a, "link", "set", "l2a", "up"]);
            p.ip(&["-n", &p.b, "link", "set", "l2b", "up"]);
            p.ip(&["-n", &p.a, "addr", "add", "10.98.0.1/16", "dev", "l2a"]);
            p.ip(&["-n", &p.b, "addr", "add", "10.98.0.2/16", "dev", "l2b"]);
            p
        }

        pub fn ip(&self, args: &[&str]) -> String {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    /// Deletes `dyl2-<pid>-…` namespaces left by dead test processes.
    fn remove_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(pid) = name
                .strip_prefix("dyl2-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }

    impl Drop for VethPair {
        fn drop(&mut self) {
            for ns in [&self.a, &self.b] {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }

    /// Drops CAP_NET_ADMIN and CAP_NET_RAW from the calling thread's
    /// effective set (capabilities are per thread on Linux).
    pub fn drop_net_caps() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        let mut h = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut d = [Data::default(); 2];
        // SAFETY: capget/capset with a v3 header and two data words.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
            d[0].effective &= !((1 << 12) | (1 << 13)); // CAP_NET_ADMIN, CAP_NET_RAW
            assert_eq!(libc::syscall(libc::SYS_capset, &h, d.as_ptr()), 0);
        }
    }

    /// Run `f` on a fresh thread that has entered network namespace `ns`.
    pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let fd = File::open(&path).expect("open netns");
            // SAFETY: a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }
}
