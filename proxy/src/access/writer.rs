//! The writer thread: records go into a bounded lock-free queue that the
//! thread drains every [`FLUSH_EVERY`], encoding and writing them in one
//! batch. Sending never blocks and never wakes the thread (no syscall on the
//! request path): when the queue is full the record is dropped and counted.
//! The thread drains what is left and ends when the last [`AccessLog`]
//! handle is gone.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_queue::ArrayQueue;
use prometheus::IntCounter;

use super::encode::{Encoder, Format};
use super::record::{ConnFacts, Record};

/// Records waiting for the writer, at most.
pub const QUEUE: usize = 8192;
/// How often the writer drains the queue (the most a line waits).
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// A running access log: cheap to clone, hands records to its thread.
#[derive(Clone)]
pub struct AccessLog {
    queue: Arc<ArrayQueue<Box<Record>>>,
    /// Records the writer is done with, for [`AccessLog::begin`] to reuse.
    free: Arc<ArrayQueue<Box<Record>>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread writing `format` lines to `out`; records that
    /// find the queue full are counted in `dropped`.
    pub fn start(
        format: Format,
        out: Box<dyn Write + Send>,
        dropped: IntCounter,
    ) -> std::io::Result<AccessLog> {
        let queue = Arc::new(ArrayQueue::new(QUEUE));
        let free = Arc::new(ArrayQueue::new(QUEUE));
        let (q, f) = (queue.clone(), free.clone());
        std::thread::Builder::new()
            .name("dynia-access-log".into())
            .spawn(move || run(format, out, q, f))?;
        Ok(AccessLog {
            queue,
            free,
            dropped,
        })
    }

    /// A record for a request whose head just arrived: a reused one when
    /// the writer has handed one back, else a new one.
    pub fn begin<B>(
        &self,
        client: SocketAddr,
        conn: &ConnFacts,
        req: &http::Request<B>,
        connections: usize,
    ) -> Box<Record> {
        let mut r = self.free.pop().unwrap_or_else(Record::empty);
        r.fill(client, conn, req, connections);
        r
    }

    /// Hands `r` to the writer, or drops and counts it when the queue is full.
    pub fn send(&self, r: Box<Record>) {
        if self.queue.push(r).is_err() {
            self.dropped.inc();
        }
    }
}

fn run(
    format: Format,
    mut out: Box<dyn Write + Send>,
    q: Arc<ArrayQueue<Box<Record>>>,
    free: Arc<ArrayQueue<Box<Record>>>,
) {
    let mut buf = String::with_capacity(256 * 1024);
    let mut encoder = Encoder::new(format);
    loop {
        // Only this thread holds the queue: every handle is gone (requests
        // still finishing hold one), so this is the last drain.
        let last = Arc::strong_count(&q) == 1;
        // Bounded: at most the queue's capacity per pass.
        let (wall, mono) = (SystemTime::now(), Instant::now());
        for _ in 0..QUEUE {
            match q.pop() {
                Some(mut r) => {
                    let ago = mono.saturating_duration_since(r.start);
                    r.time = wall.checked_sub(ago).unwrap_or(wall);
                    encoder.line(&r, &mut buf);
                    let _ = free.push(r); // full: this one is freed instead
                }
                None => break,
            }
        }
        if !buf.is_empty() {
            // Nowhere to write (closed stdout, full disk): the lines are
            // lost; the daemon keeps serving.
            let _ = out.write_all(buf.as_bytes()).and_then(|()| out.flush());
            buf.clear();
        }
        if last {
            return;
        }
        std::thread::sleep(FLUSH_EVERY);
    }
}

/// Sends `r`, stamped with its total time, to the log now set, if any.
pub(crate) fn finish(shared: &crate::Shared, mut r: Box<Record>) {
    r.total = r.start.elapsed();
    if let Some(log) = &*shared.access.load() {
        log.send(r);
    }
}
