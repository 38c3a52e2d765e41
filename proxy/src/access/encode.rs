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

/// A field's value, borrowed from the record where it can be.
enum Value<'a> {
    Str(&'a str),
    Show(&'a dyn std::fmt::Display),
    Num(f64),
    Bool(bool),
}

/// Calls `f` with every field, in the documented order.
fn fields(r: &Record, time: &str, f: &mut impl FnMut(&str, Value<'_>)) {
    f("time", Value::Str(time));
    f("client", Value::Show(&r.client));
    f("listener", Value::Str(&r.listener));
    f("tls", Value::Str(r.tls.unwrap_or("-")));
    f(
        "sni",
        Value::Str(if r.sni.is_empty() { "-" } else { &r.sni }),
    );
    f("host", Value::Str(r.host()));
    f("method", Value::Str(r.method.as_str()));
    f("path", Value::Str(r.path()));
    f("proto", Value::Str(proto(r.version)));
    f("status", Value::Num(f64::from(r.status)));
    f("bytes_in", Value::Num(r.bytes_in as f64));
    f("bytes_out", Value::Num(r.bytes_out as f64));
    f("service", Value::Str(r.service().unwrap_or("-")));
    f("member", Value::Str(r.member().unwrap_or("-")));
    f("tried", Value::Str(&r.tried));
    f("retries", Value::Num(f64::from(r.retries)));
    f("connect_ms", Value::Num(ms(r.connect)));
    f("first_byte_ms", Value::Num(ms(r.first_byte)));
    f("total_ms", Value::Num(ms(Some(r.total))));
    f("request_id", Value::Str(r.request_id()));
    f("term", Value::Str(r.term.as_str()));
    f("tunnel", Value::Bool(r.tunnel));
}

fn proto(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Writes a value; strings through `text` (quoting or escaping).
fn value(v: Value<'_>, out: &mut String, text: fn(&str, &mut String)) {
    match v {
        Value::Str(s) => text(s, out),
        Value::Show(d) => text(&d.to_string(), out),
        Value::Num(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
    }
}

fn logfmt(r: &Record, out: &mut String) {
    let time = rfc3339(r.time);
    let mut first = true;
    fields(r, &time, &mut |k, v| {
        if !first {
            out.push(' ');
        }
        first = false;
        out.push_str(k);
        out.push('=');
        value(v, out, logfmt_str);
    });
}

/// A logfmt value: bare, or quoted when it is empty or has a space, quote,
/// `=` or backslash.
fn logfmt_str(s: &str, out: &mut String) {
    if s.is_empty() || s.contains([' ', '"', '=', '\\']) {
        quote(s, out)
    } else {
        escape_ctl_into(s, out)
    }
}

fn json(r: &Record, out: &mut String) {
    let time = rfc3339(r.time);
    out.push('{');
    let mut first = true;
    fields(r, &time, &mut |k, v| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
        value(v, out, quote);
    });
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

/// Appends `s` with control characters as `\uXXXX` (a header cannot
/// break a line).
fn escape_ctl_into(s: &str, o: &mut String) {
    if !s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        o.push_str(s);
        return;
    }
    for c in s.chars() {
        if (c as u32) < 0x20 || c == '\u{7f}' {
            let _ = write!(o, "\\u{:04x}", c as u32);
        } else {
            o.push(c);
        }
    }
}

/// HAProxy's httplog:
/// `%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq %{+Q}r`
/// (no captures, so no `{…}` blocks).
fn haproxy(r: &Record, out: &mut String) {
    let int_ms = |d: Option<Duration>| d.map_or(-1, |d| d.as_millis() as i64);
    let tr = match (r.connect, r.first_byte) {
        (Some(c), Some(f)) => f.saturating_sub(c).as_millis() as i64,
        _ => -1,
    };
    let _ = write!(out, "{} [", r.client);
    haproxy_date_into(r.time, out);
    out.push_str("] ");
    escape_ctl_into(&r.listener, out);
    if r.tls.is_some() {
        out.push('~');
    }
    out.push(' ');
    escape_ctl_into(r.service().unwrap_or("<NOSRV>"), out);
    out.push('/');
    escape_ctl_into(r.member().unwrap_or("<NOSRV>"), out);
    let redispatched = if r.tried_count > 1 { "+" } else { "" };
    let _ = write!(
        out,
        " 0/0/{}/{tr}/{} {} {} - - {}-- {}/{}/0/0/{redispatched}{} 0/0 \"{} ",
        int_ms(r.connect),
        r.total.as_millis(),
        r.status,
        r.bytes_out,
        r.term.as_str(),
        r.connections,
        r.connections,
        r.retries,
        r.method,
    );
    let end = out.len();
    quote(r.path(), out);
    // The path goes inside the request line's quotes: drop its own.
    out.remove(end);
    out.pop();
    let _ = write!(out, " {}\"", proto(r.version));
}

/// `2026-12-04T03:47:59.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `04/Dec/2026:03:47:59.123` (HAProxy's `%tr`, UTC).
pub fn haproxy_date(t: SystemTime) -> String {
    let mut s = String::with_capacity(24);
    haproxy_date_into(t, &mut s);
    s
}

fn haproxy_date_into(t: SystemTime, out: &mut String) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, ms) = civil(t);
    let m = MONTHS[(mo as usize).clamp(1, 12) - 1];
    let _ = write!(out, "{d:02}/{m}/{y:04}:{h:02}:{mi:02}:{s:02}.{ms:03}");
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
