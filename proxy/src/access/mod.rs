//! The access log: one line per request or WebSocket tunnel, off by default.
//!
//! A [`record::Record`] is started when a request arrives (only while a log is
//! set), filled by small hooks in the request path (`forward`, `server`) and
//! handed, when its response body ends or the client goes away, to a
//! [`writer::AccessLog`]: a bounded channel to a writer thread that encodes
//! ([`encode`]) and writes it. A full channel drops the line and counts it
//! (`dynia_access_log_dropped_total`); the data path never waits on I/O.
//! Fields, formats and termination states: `docs/observability.md`.

pub(crate) mod counted;
pub mod encode;
pub mod record;
pub mod writer;

pub use encode::Format;
pub use record::{Record, Term};
pub use writer::AccessLog;
