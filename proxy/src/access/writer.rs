//! The writer thread: records arrive on a bounded channel, are encoded and
//! written in batches (flushed whenever the channel is empty). Sending never
//! blocks: when the channel is full the record is dropped and counted. The
//! thread ends when the last [`AccessLog`] handle is dropped.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use prometheus::IntCounter;

use super::encode::{encode, Format};
use super::record::Record;

/// Records waiting for the writer, at most.
pub const QUEUE: usize = 8192;

/// A running access log: cheap to clone, sends records to its thread.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Box<Record>>,
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
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("dynia-access-log".into())
            .spawn(move || run(format, out, rx))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Hands `r` to the writer, or drops and counts it when the queue is full.
    pub fn send(&self, r: Box<Record>) {
        match self.tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

fn run(format: Format, mut out: Box<dyn Write + Send>, rx: Receiver<Box<Record>>) {
    let mut buf = String::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        encode(format, &first, &mut buf);
        // Take what queued meanwhile, bounded, then write once.
        for _ in 0..1024 {
            match rx.try_recv() {
                Ok(r) => encode(format, &r, &mut buf),
                Err(_) => break,
            }
        }
        if out.write_all(buf.as_bytes()).is_err() || out.flush().is_err() {
            // Nowhere to write (closed stdout, full disk): lines are lost;
            // the daemon keeps serving.
        }
        buf.clear();
    }
}

/// Sends `r`, stamped with its total time, to the log now set, if any.
pub(crate) fn finish(shared: &crate::Shared, mut r: Box<Record>) {
    r.total = r.start.elapsed();
    if let Some(log) = &*shared.access.load() {
        log.send(r);
    }
}
