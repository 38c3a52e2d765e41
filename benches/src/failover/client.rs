//! The client side of the failover rig: one-shot HTTP requests and the
//! back-to-back request loop that says when a rig answers steadily (the
//! node-loss trials use the paced client, `dynia_testkit::paced`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynia_testkit::netns::in_netns;

/// Connect timeout of one request of the loop (the brief: ~100-300 ms).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Read/write timeout of one request of the loop.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed request (a refused connect returns at once).
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(5);
/// Pause after a success (keeps the loop from eating a core).
pub const PAUSE_AFTER_SUCCESS: Duration = Duration::from_millis(2);
/// Bounds of one loop.
const MAX_REQUESTS: u32 = 300_000;
const MAX_RUN: Duration = Duration::from_secs(120);

/// `GET path` over a fresh connection (`Connection: close`); `(status, body)`.
/// `http10` asks for HTTP/1.0 so that the body is never chunked.
pub fn get(
    addr: SocketAddr,
    path: &str,
    connect: Duration,
    io: Duration,
    http10: bool,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, connect).ok()?;
    s.set_read_timeout(Some(io)).ok()?;
    s.set_write_timeout(Some(io)).ok()?;
    let version = if http10 { "1.0" } else { "1.1" };
    s.write_all(
        format!("GET {path} HTTP/{version}\r\nHost: failbench\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::with_capacity(1024);
    // A timeout mid-body still leaves what arrived; the status line decides.
    let _ = s.take(4 << 20).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// One request of the loop, as the client saw it.
#[derive(Clone, Debug)]
pub struct Sample {
    pub ok: bool,
    /// The body of a 200 (the answering member's id), trimmed.
    pub id: String,
}

/// `GET /` on the VIP back to back from the client namespace, one
/// connection per request. Bounded in count and time; stops on drop.
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(ns: &str, addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::with_capacity(4096)));
        let (st, sa, ns) = (stop.clone(), samples.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            in_netns(&ns, move || {
                let begun = Instant::now();
                for _ in 0..MAX_REQUESTS {
                    if st.load(Ordering::Relaxed) || begun.elapsed() > MAX_RUN {
                        return;
                    }
                    let answer = get(addr, "/", CONNECT_TIMEOUT, IO_TIMEOUT, false);
                    let (ok, id) = match answer {
                        Some((200, body)) => (true, body.trim().to_string()),
                        _ => (false, String::new()),
                    };
                    sa.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Sample { ok, id });
                    std::thread::sleep(if ok {
                        PAUSE_AFTER_SUCCESS
                    } else {
                        PAUSE_AFTER_FAILURE
                    });
                }
            })
        });
        Load {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&[Sample]) -> T) -> T {
        f(&self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The last `n` requests all succeeded (answered by `id` if given).
    pub fn stable(&self, n: usize, id: Option<&str>) -> bool {
        self.with(|s| {
            s.len() >= n
                && s[s.len() - n..]
                    .iter()
                    .all(|x| x.ok && id.is_none_or(|id| x.id == id))
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
