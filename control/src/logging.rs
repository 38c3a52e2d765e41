//! Log setup: one key=value or JSON line per event to stderr, syslog priority
//! prefixes under systemd, `RUST_LOG` filtering, the access log's writer, and
//! the election transitions kept for the status views ([`transitions`]).
//! What an operator sees and why: docs/observability.md, "The daemon's log".

use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{AccessFormat, Log, LogFormat};

/// Lines are JSON objects instead of text.
static JSON: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber; harmless if called twice.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(Stderr { journal })
        .with_target(false)
        .with_ansi(false)
        .event_format(Switch(format::format().with_target(false)))
        .with_filter(filter);
    let _ = tracing_subscriber::registry()
        .with(lines)
        .with(Transitions)
        .try_init();
}

/// Election transitions kept for the status views, at most.
pub const TRANSITIONS_KEPT: usize = 8;

pub use crate::wire::Transition;

static TRANSITIONS: std::sync::Mutex<std::collections::VecDeque<Transition>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// The last [`TRANSITIONS_KEPT`] transitions, oldest first.
pub fn transitions() -> Vec<Transition> {
    let q = TRANSITIONS.lock().unwrap_or_else(|p| p.into_inner());
    q.iter().cloned().collect()
}

/// Keeps the election's "election state changed" events.
struct Transitions;

impl<S: Subscriber> Layer<S> for Transitions {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        // The election runs in `dynia_vrrp` (its runtime logs the change).
        if !event.metadata().target().starts_with("dynia_vrrp") {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        if f.message != "election state changed" {
            return;
        }
        let now = dynia_proxy::access::encode::rfc3339(std::time::SystemTime::now());
        let mut q = TRANSITIONS.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == TRANSITIONS_KEPT {
            q.pop_front();
        }
        q.push_back(Transition {
            at: now,
            role: f.role,
            reason: f.reason,
        });
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    role: String,
    reason: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "role" => self.role = value.into(),
            "reason" => self.reason = value.into(),
            "message" => self.message = value.into(),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// Applies `[log] format` (the daemon calls it once it has read the node file).
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Starts the access log `log` asks for on `proxy` (or switches it off),
/// writing to `[log] access_file` or else to stdout.
pub fn set_access_log(proxy: &dynia_proxy::Proxy, log: &Log) -> std::io::Result<()> {
    use dynia_proxy::access::{AccessLog, Format};
    let format = match log.access {
        AccessFormat::Off => {
            proxy.set_access_log(None);
            return Ok(());
        }
        AccessFormat::Logfmt => Format::Logfmt,
        AccessFormat::Json => Format::Json,
        AccessFormat::Haproxy => Format::Haproxy,
    };
    let out: Box<dyn Write + Send> = match &log.access_file {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let dropped = proxy.metrics().access_log_dropped.clone();
    proxy.set_access_log(Some(AccessLog::start(format, out, dropped)?));
    Ok(())
}

/// The syslog priority of a level (sd-daemon(3) prefixes).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// stderr, with the `<N>` priority prefix when it is the journal.
struct Stderr {
    journal: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(None)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line(self.journal.then(|| priority(meta.level())))
    }
}

/// One event's line: the prefix goes before its first byte.
struct Line(Option<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        match self.0.take() {
            Some(p) => {
                let mut line = format!("<{p}>").into_bytes();
                line.extend_from_slice(buf);
                err.write_all(&line)?;
            }
            None => err.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The text format of `tracing_subscriber`, or JSON when switched.
struct Switch<T>(T);

impl<S, N, T> FormatEvent<S, N> for Switch<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if !JSON.load(Ordering::Relaxed) {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        let now = dynia_proxy::access::encode::rfc3339(std::time::SystemTime::now());
        let _ = write!(
            line,
            "{{\"time\":{},\"level\":\"{}\"",
            json_str(&now),
            event.metadata().level()
        );
        let mut fields = JsonFields(&mut line);
        event.record(&mut fields);
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// Appends `,"name":value` for every field of an event.
struct JsonFields<'a>(&'a mut String);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, ",{}:{}", json_str(field.name()), json_str(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        let _ = write!(self.0, ",{}:{value}", json_str(field.name()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        let _ = write!(self.0, ",{}:{value}", json_str(field.name()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        let _ = write!(self.0, ",{}:{value}", json_str(field.name()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
