//! The three encodings of a [`Record`]: `logfmt`, `json` and `haproxy`
//! (HAProxy's `option httplog` layout, field for field, so that existing
//! parsers read it). Each appends one line, newline included, to a buffer.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::record::Record;

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Logfmt,
    Json,
    Haproxy,
}

/// Appends `r` as one line in `format`.
pub fn encode(format: Format, r: &Record, out: &mut String) {
    match format {
        Format::Logfmt => logfmt(r, out),
        Format::Json => json(r, out),
        Format::Haproxy => haproxy(r, out),
    }
    out.push('\n');
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(-1.0, |d| (d.as_micros() as f64) / 1000.0)
}

fn tried(r: &Record) -> String {
    let names: Vec<&str> = r.tried.iter().map(|m| &**m).collect();
    names.join(",")
}

fn fields(r: &Record) -> Vec<(&'static str, Value)> {
    let tls = r.conn.tls.as_ref();
    let s = |v: &str| Value::Str(v.to_owned());
    vec![
        ("time", Value::Str(rfc3339(r.time))),
        ("client", Value::Str(r.client.to_string())),
        ("listener", s(&r.conn.listener)),
        ("tls", s(tls.map_or("-", |t| t.version))),
        ("sni", s(tls.and_then(|t| t.sni.as_deref()).unwrap_or("-"))),
        ("host", s(&r.host)),
        ("method", s(r.method.as_str())),
        ("path", s(&r.path)),
        ("proto", Value::Str(format!("{:?}", r.version))),
        ("status", Value::Num(f64::from(r.status))),
        ("bytes_in", Value::Num(r.bytes_in as f64)),
        ("bytes_out", Value::Num(r.bytes_out as f64)),
        ("service", s(r.service.as_deref().unwrap_or("-"))),
        ("member", s(r.member().unwrap_or("-"))),
        ("tried", s(&tried(r))),
        ("retries", Value::Num(f64::from(r.retries))),
        ("connect_ms", Value::Num(ms(r.connect))),
        ("first_byte_ms", Value::Num(ms(r.first_byte))),
        ("total_ms", Value::Num(ms(Some(r.total)))),
        ("request_id", s(&r.request_id)),
        ("term", s(r.term.as_str())),
        ("tunnel", Value::Bool(r.tunnel)),
    ]
}

enum Value {
    Str(String),
    Num(f64),
    Bool(bool),
}

fn logfmt(r: &Record, out: &mut String) {
    for (i, (k, v)) in fields(r).into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{k}=");
        match v {
            Value::Str(s) if s.is_empty() || s.contains([' ', '"', '=', '\\']) => quote(&s, out),
            Value::Str(s) => out.push_str(&escape_ctl(&s)),
            Value::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Bool(b) => {
                let _ = write!(out, "{b}");
            }
        }
    }
}

fn json(r: &Record, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in fields(r).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{k}\":");
        match v {
            Value::Str(s) => quote(&s, out),
            Value::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Bool(b) => {
                let _ = write!(out, "{b}");
            }
        }
    }
    out.push('}');
}

/// A JSON string literal (also valid logfmt quoting).
fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Control characters as `\uXXXX` (a header cannot break a line).
fn escape_ctl(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) < 0x20 || c == '\u{7f}' {
            let _ = write!(o, "\\u{:04x}", c as u32);
        } else {
            o.push(c);
        }
    }
    o
}

/// HAProxy's httplog:
/// `%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq %{+Q}r`
/// (no captures, so no `{…}` blocks).
fn haproxy(r: &Record, out: &mut String) {
    let int_ms = |d: Option<Duration>| d.map_or(-1, |d| d.as_millis() as i64);
    let frontend = match r.conn.tls {
        Some(_) => format!("{}~", r.conn.listener),
        None => r.conn.listener.to_string(),
    };
    let backend = r.service.as_deref().unwrap_or("<NOSRV>");
    let server = r.member().unwrap_or("<NOSRV>");
    let tc = int_ms(r.connect);
    let tr = match (r.connect, r.first_byte) {
        (Some(c), Some(f)) => f.saturating_sub(c).as_millis() as i64,
        _ => -1,
    };
    let redispatched = r.tried.len() > 1;
    let retries = if redispatched {
        format!("+{}", r.retries)
    } else {
        r.retries.to_string()
    };
    let _ = write!(
        out,
        "{} [{}] {} {}/{} 0/0/{}/{}/{} {} {} - - {}-- {}/{}/0/0/{} 0/0 ",
        r.client,
        haproxy_date(r.time),
        escape_ctl(&frontend),
        escape_ctl(backend),
        escape_ctl(server),
        tc,
        tr,
        r.total.as_millis(),
        r.status,
        r.bytes_out,
        r.term.as_str(),
        r.connections,
        r.connections,
        retries,
    );
    let line = format!("{} {} {:?}", r.method, r.path, r.version);
    quote(&line, out);
}

/// `2026-12-04T03:47:59.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `04/Dec/2026:03:47:59.123` (HAProxy's `%tr`, UTC).
pub fn haproxy_date(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, ms) = civil(t);
    let m = MONTHS[(mo as usize).clamp(1, 12) - 1];
    format!("{d:02}/{m}/{y:04}:{h:02}:{mi:02}:{s:02}.{ms:03}")
}

/// UTC calendar fields (H. Hinnant's days-to-civil).
fn civil(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let ms = since.subsec_millis();
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60, ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_356_079_123);
        assert_eq!(rfc3339(t), "2026-12-04T03:47:59.123Z");
        assert_eq!(haproxy_date(t), "04/Dec/2026:03:47:59.123");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }
}
