//! A member the election loses (`Proxy::set_member_lost`): a request waiting
//! on a keep-alive connection to it (a dead node never answers) goes to
//! another member at once; no new request goes to it; heard again, it waits
//! for a passing health check. Members on 127.0.0.x.

mod support;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::HOST;

use dynia_proxy::{HealthConfig, Limits, Proxy};
use dynia_testkit::eventually_async;
use dynia_testkit::upstream::DemoUpstream;
use dynia_testkit::web::{get, read_request};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

/// A member that reads requests and never answers (as a node that died with
/// the connection open looks). Counts the requests it read.
async fn mute(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                while read_request(&mut c).await.is_some() {
                    s.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_request_waiting_on_a_lost_member_goes_to_another_at_once() {
    let good = DemoUpstream::start("127.0.0.50:0".parse().unwrap(), "good")
        .await
        .unwrap();
    let (mute_addr, mute_seen) = mute("127.0.0.51").await;
    let registry = prometheus::Registry::new();
    let members = [("good", good.addr), ("mute", mute_addr)];
    let proxy = Proxy::start(
        support::active(&members, HealthConfig::default(), Limits::default()),
        &registry,
    )
    .await
    .unwrap();
    let addr = proxy.listeners()[0].local;

    // Round robin: of two GETs at once, one waits on the mute member.
    let started = Instant::now();
    let waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { (get(addr, HOST, "/").await, Instant::now()) }))
        .collect();
    eventually_async(WAIT, || async { mute_seen.load(Ordering::SeqCst) >= 1 })
        .await
        .expect("a request reached the mute member");
    let lost_at = Instant::now();
    proxy.set_member_lost("mute", true);
    for w in waiting {
        let (answer, at) = tokio::time::timeout(WAIT, w)
            .await
            .expect("the waiting request ended")
            .unwrap();
        let answer = answer.expect("answered");
        assert_eq!((answer.status, answer.member()), (200, Some("good")));
        let after_loss = at.saturating_duration_since(lost_at);
        assert!(
            after_loss < Duration::from_millis(500),
            "{after_loss:?} after the loss"
        );
    }
    println!(
        "waited request answered by the other member; whole run {:?}",
        started.elapsed()
    );
    let text = dynia_proxy::metrics::render(&registry);
    assert!(
        text.contains("dynia_upstream_retries_total{reason=\"lost\",service=\"web\"} 1"),
        "{text}"
    );

    // Lost: no request goes to it; heard again, its checks (never answered)
    // keep it out.
    for lost in [true, false] {
        proxy.set_member_lost("mute", lost);
        let before = mute_seen.load(Ordering::SeqCst);
        for _ in 0..10 {
            let a = get(addr, HOST, "/").await.expect("answered");
            assert_eq!(a.member(), Some("good"));
        }
        assert_eq!(mute_seen.load(Ordering::SeqCst), before, "lost={lost}");
    }
}
