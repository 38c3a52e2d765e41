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

/// Encodes records as lines of one format; keeps the date text of the
/// current second, so a line costs no calendar arithmetic and no `core::fmt`.
pub struct Encoder {
    format: Format,
    dates: DateCache,
}

impl Encoder {
    pub fn new(format: Format) -> Encoder {
        Encoder {
            format,
            dates: DateCache::default(),
        }
    }

    /// Appends `r` as one line, newline included.
    pub fn line(&mut self, r: &Record, out: &mut String) {
        match self.format {
            Format::Logfmt => logfmt(r, self.dates.rfc3339(r.time), out),
            Format::Json => json(r, self.dates.rfc3339(r.time), out),
            Format::Haproxy => haproxy(r, self.dates.haproxy(r.time), out),
        }
        out.push('\n');
    }
}

/// Appends `r` as one line in `format` (one-off; the writer keeps an [`Encoder`]).
pub fn encode(format: Format, r: &Record, out: &mut String) {
    Encoder::new(format).line(r, out);
}

/// A field's value, borrowed from the record where it can be.
enum Value<'a> {
    Str(&'a str),
    Addr(&'a std::net::SocketAddr),
    Int(u64),
    /// Milliseconds with up to three decimals; `-1` for none.
    Ms(Option<Duration>),
    Bool(bool),
}

/// Calls `f` with every field, in the documented order.
fn fields(r: &Record, time: &str, f: &mut impl FnMut(&str, Value<'_>)) {
    f("time", Value::Str(time));
    f("client", Value::Addr(&r.client));
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
    f("status", Value::Int(u64::from(r.status)));
    f("bytes_in", Value::Int(r.bytes_in));
    f("bytes_out", Value::Int(r.bytes_out));
    f("service", Value::Str(r.service().unwrap_or("-")));
    f("member", Value::Str(r.member().unwrap_or("-")));
    f("tried", Value::Str(&r.tried));
    f("retries", Value::Int(u64::from(r.retries)));
    f("connect_ms", Value::Ms(r.connect));
    f("first_byte_ms", Value::Ms(r.first_byte));
    f("total_ms", Value::Ms(Some(r.total)));
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
fn value(v: Value<'_>, out: &mut String, text: fn(&str, &mut String), quoted: bool) {
    match v {
        Value::Str(s) => text(s, out),
        Value::Addr(a) => {
            // `1.2.3.4:5` or `[::1]:5`: nothing in it needs escaping.
            if quoted {
                out.push('"');
            }
            push_addr(a, out);
            if quoted {
                out.push('"');
            }
        }
        Value::Int(n) => push_u64(n, out),
        Value::Ms(d) => push_ms(d, out),
        Value::Bool(b) => out.push_str(if b { "true" } else { "false" }),
    }
}

fn push_u64(n: u64, out: &mut String) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `12.345`, `1.5`, `7` (the shortest form, as `f64`'s `Display` would
/// print these milliseconds), or `-1`.
fn push_ms(d: Option<Duration>, out: &mut String) {
    let Some(d) = d else {
        return out.push_str("-1");
    };
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(us / 1000, out);
    let frac = us % 1000;
    if frac != 0 {
        let digits = [
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let keep = 3 - digits.iter().rev().take_while(|&&d| d == b'0').count();
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[..keep]).unwrap_or(""));
    }
}

fn push_addr(a: &std::net::SocketAddr, out: &mut String) {
    match a {
        std::net::SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(u64::from(*o), out);
            }
            out.push(':');
            push_u64(u64::from(v4.port()), out);
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn logfmt(r: &Record, time: &str, out: &mut String) {
    let mut first = true;
    fields(r, time, &mut |k, v| {
        if !first {
            out.push(' ');
        }
        first = false;
        out.push_str(k);
        out.push('=');
        value(v, out, logfmt_str, false);
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

fn json(r: &Record, time: &str, out: &mut String) {
    out.push('{');
    let mut first = true;
    fields(r, time, &mut |k, v| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
        value(v, out, quote, true);
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
fn haproxy(r: &Record, date: &str, out: &mut String) {
    push_addr(&r.client, out);
    out.push_str(" [");
    out.push_str(date);
    out.push_str("] ");
    escape_ctl_into(&r.listener, out);
    if r.tls.is_some() {
        out.push('~');
    }
    out.push(' ');
    escape_ctl_into(r.service().unwrap_or("<NOSRV>"), out);
    out.push('/');
    escape_ctl_into(r.member().unwrap_or("<NOSRV>"), out);
    haproxy_numbers(r, out);
    let end = out.len();
    quote(r.path(), out);
    // The path goes inside the request line's quotes: drop its own.
    out.remove(end);
    out.pop();
    out.push(' ');
    out.push_str(proto(r.version));
    out.push('"');
}

/// ` %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq "METHOD `.
fn haproxy_numbers(r: &Record, out: &mut String) {
    let int_ms = |d: Option<Duration>, out: &mut String| match d {
        Some(d) => push_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX), out),
        None => out.push_str("-1"),
    };
    let tr = match (r.connect, r.first_byte) {
        (Some(c), Some(f)) => Some(f.saturating_sub(c)),
        _ => None,
    };
    out.push_str(" 0/0/");
    int_ms(r.connect, out);
    out.push('/');
    int_ms(tr, out);
    out.push('/');
    int_ms(Some(r.total), out);
    out.push(' ');
    push_u64(u64::from(r.status), out);
    out.push(' ');
    push_u64(r.bytes_out, out);
    out.push_str(" - - ");
    out.push_str(r.term.as_str());
    out.push_str("-- ");
    let conns = u64::try_from(r.connections).unwrap_or(u64::MAX);
    push_u64(conns, out);
    out.push('/');
    push_u64(conns, out);
    out.push_str("/0/0/");
    if r.tried_count > 1 {
        out.push('+');
    }
    push_u64(u64::from(r.retries), out);
    out.push_str(" 0/0 \"");
    out.push_str(r.method.as_str());
    out.push(' ');
}

/// The date texts of one second, made once per second.
#[derive(Default)]
struct DateCache {
    secs: Option<u64>,
    /// `2026-12-04T03:47:59.` and `04/Dec/2026:03:47:59.`
    rfc: String,
    hap: String,
    /// The last result: the prefix plus milliseconds (and `Z`).
    out: String,
}

impl DateCache {
    fn refresh(&mut self, t: SystemTime) -> u32 {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.secs != Some(since.as_secs()) {
            self.secs = Some(since.as_secs());
            let whole = UNIX_EPOCH + Duration::from_secs(since.as_secs());
            self.rfc = rfc3339(whole);
            self.rfc.truncate(self.rfc.len() - 4); // keep `…:59.`
            self.hap = haproxy_date(whole);
            self.hap.truncate(self.hap.len() - 3);
        }
        since.subsec_millis()
    }

    fn with_millis(&mut self, prefix_rfc: bool, ms: u32, z: bool) -> &str {
        self.out.clear();
        self.out
            .push_str(if prefix_rfc { &self.rfc } else { &self.hap });
        let d = [
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
        ];
        self.out.push_str(std::str::from_utf8(&d).unwrap_or("000"));
        if z {
            self.out.push('Z');
        }
        &self.out
    }

    fn rfc3339(&mut self, t: SystemTime) -> &str {
        let ms = self.refresh(t);
        self.with_millis(true, ms, true)
    }

    fn haproxy(&mut self, t: SystemTime) -> &str {
        let ms = self.refresh(t);
        self.with_millis(false, ms, false)
    }
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

    #[test]
    fn the_date_cache_agrees_with_the_calendar() {
        let mut c = DateCache::default();
        for ms in [
            1_796_356_079_123u64,
            1_796_356_079_999,
            1_796_356_080_000,
            951_782_400_007,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(c.rfc3339(t), rfc3339(t));
            assert_eq!(c.haproxy(t), haproxy_date(t));
        }
    }

    #[test]
    fn milliseconds_print_as_f64_would() {
        for us in [
            0u64, 1, 10, 100, 123, 1_000, 1_500, 1_230, 12_345, 999_999, 7_000_001,
        ] {
            let mut s = String::new();
            push_ms(Some(Duration::from_micros(us)), &mut s);
            assert_eq!(s, format!("{}", us as f64 / 1000.0), "{us} µs");
        }
        let mut s = String::new();
        push_ms(None, &mut s);
        assert_eq!(s, "-1");
    }

    #[test]
    fn addresses_print_as_display_would() {
        for a in [
            "10.0.0.1:443",
            "127.0.0.1:0",
            "255.255.255.255:65535",
            "[::1]:8080",
        ] {
            let a: std::net::SocketAddr = a.parse().unwrap();
            let mut s = String::new();
            push_addr(&a, &mut s);
            assert_eq!(s, a.to_string());
        }
    }
}
