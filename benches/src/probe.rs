//! A blocking one-shot HTTP/1.1 GET with timeouts, for readiness checks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use dynia_testkit::eventually_every;

use crate::procs::interrupted;

/// GET `path` from `addr` with `Host: host`; returns (status, body).
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    assert!(addr.ip().is_loopback(), "traffic only to 127.0.0.0/8");
    let t = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: dynia-benches\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    // Bounded: at most 1 MiB, and the read timeout above.
    s.take(1 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response from {addr}: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `check` every 100 ms until it succeeds, at most `limit`; `alive` is
/// called first each time so a dead process fails fast, as does Ctrl-C.
/// The polling is the testkit's `eventually`; this adds the failing fast and
/// the last error in the message.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut alive: impl FnMut() -> Result<()>,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let mut last_err = String::from("not ready");
    let mut fatal = None;
    let took = eventually_every(limit, Duration::from_millis(100), || {
        if let Err(e) = alive().and_then(|()| interrupted_err()) {
            fatal = Some(e);
            return true;
        }
        match check() {
            Ok(ready) => ready,
            Err(e) => {
                last_err = format!("{e:#}");
                false
            }
        }
    });
    match (fatal, took) {
        (Some(e), _) => Err(e),
        (None, Ok(took)) => Ok(took),
        (None, Err(_)) => bail!("{what} not ready after {limit:?} (last: {last_err})"),
    }
}

fn interrupted_err() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// A TCP port that is free on every address of `ips` right now.
pub fn free_port(ips: &[std::net::IpAddr], avoid: &[u16]) -> Result<u16> {
    for _ in 0..50 {
        let l = TcpListener::bind(SocketAddr::new(ips[0], 0))?;
        let port = l.local_addr()?.port();
        if avoid.contains(&port) {
            continue;
        }
        let rest_free = ips[1..]
            .iter()
            .all(|ip| TcpListener::bind(SocketAddr::new(*ip, port)).is_ok());
        if rest_free {
            return Ok(port);
        }
    }
    bail!("no port free on all of {ips:?} after 50 tries")
}
