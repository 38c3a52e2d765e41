//! `/status`: the cluster as an HTML page a person can read.
//!
//! The same view as `dynia status` ([`ClusterStatus`]: every member's own
//! `/status.json`, unreachable members and drift marked, the Reserved IP
//! holder from the members' `reserved_ip.held`), one table for members and
//! one per service; it refreshes itself every two seconds. Everything shown
//! is escaped.

use std::fmt::Write;

use crate::status::ClusterStatus;

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
pub fn render(v: &ClusterStatus) -> String {
    let s = &v.status;
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
    for line in v.split_brain_lines() {
        let _ = write!(h, "<p class=\"down\"><b>{}</b></p>", escape(&line));
    }
    for line in v.lost_lines() {
        let _ = write!(h, "<p class=\"lost down\"><b>{}</b></p>", escape(&line));
    }
    match v.drift_line(None) {
        Some(line) => {
            let _ = write!(h, "<p id=\"drift\" class=\"down\"><b>{}</b></p>", escape(&line));
        }
        None => h.push_str("<p id=\"drift\" class=\"up\">no drift: every member that answered has this generation and hash</p>"),
    }
    let _ = write!(
        h,
        "<p>Reserved IP holder: <b id=\"holder\">{}</b></p>",
        escape(&v.holder_text())
    );
    h.push_str("<h2>Members</h2><table id=\"members\"><tr><th>id</th><th>role</th><th>liveness</th><th>priority</th><th>private IP</th><th>state</th><th>generation</th><th>last seen</th><th>services up</th><th>note</th></tr>");
    for m in &s.members {
        let (up, total) = v.services_up(&m.id);
        let drift = if s.drift.contains(&m.id) { " *" } else { "" };
        let note = match v.unreachable(&m.id) {
            Some(e) => format!(
                "<span class=\"down\">lost — unreachable: {}</span>",
                escape(e)
            ),
            None if !drift.is_empty() => "<span class=\"down\">drift</span>".into(),
            None => String::new(),
        };
        let _ = write!(
            h,
            "<tr class=\"member\" data-id=\"{}\"><td>{}{drift}</td><td>{}</td><td class=\"liveness\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{up}/{total}</td><td>{note}</td></tr>",
            escape(&m.id),
            escape(&m.id),
            escape(&m.role),
            escape(&m.liveness),
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
             <table class=\"service\"><tr><th>member</th><th>address</th><th>health</th><th>state</th><th>in flight</th>\
             <th>last minute</th></tr>",
            escape(&svc.name),
            up,
            svc.members.len(),
            svc.port,
            escape(&svc.hosts.join(", ")),
        );
        for m in &svc.members {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&m.id),
                escape(&m.address),
                escape(&m.health),
                escape(&m.health_text()),
                escape(&m.state),
                m.inflight,
                escape(&m.rates_text()),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Election</h2><table id=\"transitions\"><tr><th>when</th><th>became</th><th>why</th></tr>");
    for t in s.transitions.iter().rev() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&t.at),
            escape(&t.role),
            escape(&t.reason)
        );
    }
    h.push_str("</table></body></html>");
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
