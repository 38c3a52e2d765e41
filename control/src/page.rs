//! `/status`: the node's status as an HTML page a person can read.
//!
//! Same facts as `/status.json`, one table for members and one per service;
//! it refreshes itself every two seconds. Everything shown is escaped.

use std::fmt::Write;

use crate::status::Status;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders the page.
pub fn render(s: &Status) -> String {
    let mut h = String::with_capacity(4096);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>dynia {node} — {cluster}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
         td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:left}}.up{{color:#070}}.down{{color:#b00}}\
         .unknown{{color:#777}}</style></head><body>\
         <h1>dynia: <span id=\"node\">{node}</span> in cluster <span id=\"cluster\">{cluster}</span></h1>\
         <p>role <b id=\"role\">{role}</b>, priority {prio}, generation <span id=\"generation\">{gen}</span>, \
         config hash <code>{hash}</code>, Reserved IP {rip}</p>",
        node = escape(&s.node),
        cluster = escape(&s.cluster),
        role = escape(&s.role),
        prio = s.priority,
        gen = s.generation,
        hash = escape(s.config_hash.get(..12).unwrap_or(&s.config_hash)),
        rip = match &s.reserved_ip.address {
            Some(a) => format!("{} ({})", escape(a), if s.reserved_ip.held { "held here" } else { "not held here" }),
            None => "not configured".into(),
        },
    );
    match crate::ops::drift_line(s, None) {
        Some(line) => {
            let _ = write!(h, "<p id=\"drift\" class=\"down\"><b>{}</b></p>", escape(&line));
        }
        None => h.push_str("<p id=\"drift\" class=\"up\">in sync: every member heard has this generation and hash</p>"),
    }
    let holder = s
        .members
        .iter()
        .find(|m| m.role == "master")
        .map_or("-", |m| m.id.as_str());
    let _ = write!(
        h,
        "<p>Reserved IP holder: <b id=\"holder\">{}</b></p>",
        escape(holder)
    );
    h.push_str("<h2>Members</h2><table id=\"members\"><tr><th>id</th><th>role</th><th>priority</th><th>private IP</th><th>state</th><th>generation</th><th>last seen</th><th>services up</th></tr>");
    for m in &s.members {
        let (up, total) = s.services.iter().fold((0, 0), |(u, t), svc| {
            let x = svc.members.iter().find(|x| x.id == m.id);
            (
                u + usize::from(x.is_some_and(|x| x.health == "up")),
                t + usize::from(x.is_some()),
            )
        });
        let drift = if s.drift.contains(&m.id) { " *" } else { "" };
        let _ = write!(
            h,
            "<tr class=\"member\" data-id=\"{}\"><td>{}{drift}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{up}/{total}</td></tr>",
            escape(&m.id),
            escape(&m.id),
            escape(&m.role),
            m.priority,
            escape(&m.private_ip),
            escape(&m.state),
            m.generation.map_or("?".into(), |g| g.to_string()),
            m.last_seen_ms.map_or("never".into(), |ms| format!("{ms} ms ago")),
        );
    }
    h.push_str("</table>");
    for svc in &s.services {
        let up = svc.members.iter().filter(|m| m.health == "up").count();
        let _ = write!(
            h,
            "<h2>Service {} <small>({} up of {}, port {}, hosts {})</small></h2>\
             <table class=\"service\"><tr><th>member</th><th>address</th><th>health</th><th>state</th><th>in flight</th></tr>",
            escape(&svc.name),
            up,
            svc.members.len(),
            svc.port,
            escape(&svc.hosts.join(", ")),
        );
        for m in &svc.members {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
                escape(&m.id),
                escape(&m.address),
                escape(&m.health),
                escape(&m.health),
                escape(&m.state),
                m.inflight
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
