//! Catch-up: a node that learns of a higher generation (a peer's advert, or
//! the `/status.json` of a peer not heard lately, every [`POLL_EVERY`])
//! fetches that document (`GET /v1/cluster`) and applies it through
//! [`crate::apply::apply_document`]; never to a lower or equal generation.
//! A document without this node means it was removed while away: stored,
//! logged once, the daemon stops ([`removed_while_away`] checks this before
//! the election starts). Failures back off 1 s to 30 s. Why:
//! `docs/control.md`, "Catch-up".

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apply::ApplyRequest;
use crate::client::AdminClient;
use crate::config::Member;
use crate::daemon::Daemon;

/// How often the adverts are looked at.
const TICK: Duration = Duration::from_millis(300);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// How often members not heard from lately are asked for their status.
pub const POLL_EVERY: Duration = Duration::from_secs(5);
/// A member whose last advert with a generation is older is asked directly.
const HEARD_WITHIN: Duration = Duration::from_secs(3);

/// What one look found.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Nothing newer, or a newer document applied.
    Done,
    /// This node is not in the newer document: it stops.
    Removed,
}

/// Longest the start-up check waits for the members' answers.
const START_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The log line of a node that learns it was removed.
const REMOVED_MSG: &str = "this node is not a member of the cluster's newer document: it was removed from the cluster while it could not be reached";

/// Before the daemon starts: asks every other member of `loaded`'s document
/// for its `/status.json` (at once, bounded by [`START_CHECK_TIMEOUT`]) and,
/// if one has a newer document that no longer lists this node, stores that
/// document (snapshot + atomic write, so the next start is refused by the
/// validator with the reason) and returns `true`: the caller stops before
/// the election runs. Members that do not answer (a cluster starting
/// together, a lonely node) cost at most the timeout; any failure means
/// `false`, and the running catch-up takes over.
pub async fn removed_while_away(loaded: &crate::loaded::Loaded) -> bool {
    let me = &loaded.node.node.id;
    let mine = loaded.cluster.generation;
    let port = loaded.node.admin.listen.port();
    let peers = others(loaded);
    if peers.is_empty() {
        return false;
    }
    let clients = peers
        .iter()
        .map(|m| AdminClient::new(m.admin_addr(port), None).with_timeout(START_CHECK_TIMEOUT))
        .collect();
    let answers = crate::client::statuses(clients).await;
    let newest = peers
        .iter()
        .zip(answers)
        .filter_map(|(m, a)| {
            a.ok()
                .filter(|s| s.node == m.id)
                .map(|s| (s.generation, *m))
        })
        .filter(|(g, _)| *g > mine)
        .max_by_key(|(g, _)| *g);
    let Some((_, peer)) = newest else {
        return false;
    };
    let addr = peer.admin_addr(port);
    let client =
        AdminClient::new(addr, loaded.admin_token.clone()).with_timeout(START_CHECK_TIMEOUT);
    let Ok(text) = client.get_cluster().await else {
        return false;
    };
    let Ok(doc) = crate::config::parse_cluster_doc(&text, format!("{}:/v1/cluster", peer.id))
    else {
        return false;
    };
    if doc.generation <= mine || doc.cluster != loaded.cluster.cluster || doc.member(me).is_some() {
        return false;
    }
    tracing::error!(
        peer = %peer.id,
        generation = doc.generation,
        node = %me,
        "{REMOVED_MSG}; storing that document and stopping before the election starts (to bring it back, `dynia node add` it on a member, then start it again)"
    );
    let store = crate::store::Store::new(&loaded.node.node.state_dir);
    if let Err(e) = store.write(&text, Some((mine, &loaded.hash))) {
        tracing::error!(error = %e, "could not store the document that removed this node; stopping anyway");
    }
    true
}

/// Every member of the loaded document but this node.
fn others(loaded: &crate::loaded::Loaded) -> Vec<&Member> {
    let me = &loaded.node.node.id;
    loaded
        .cluster
        .members
        .iter()
        .filter(|m| m.id != *me)
        .collect()
}

/// Runs until the daemon stops.
pub async fn run(d: Arc<Daemon>) {
    let mut backoff = BACKOFF_MIN;
    let mut last_poll: Option<Instant> = None;
    loop {
        tokio::time::sleep(TICK).await;
        if d.stopping() {
            return;
        }
        let poll = last_poll.is_none_or(|t| t.elapsed() >= POLL_EVERY);
        if poll {
            last_poll = Some(Instant::now());
        }
        match once(&d, poll).await {
            Ok(Outcome::Removed) => return,
            Ok(Outcome::Done) => backoff = BACKOFF_MIN,
            Err(why) => {
                tracing::warn!(error = %why, retry_in = ?backoff, "catch-up failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One look at the adverts (and, with `poll`, at the status of members not
/// heard from lately).
async fn once(d: &Daemon, poll: bool) -> Result<Outcome, String> {
    let Some(election) = d.election() else {
        return Ok(Outcome::Done);
    };
    let loaded = d.loaded();
    let mine = loaded.cluster.generation;
    let port = loaded.node.admin.listen.port();
    let peers = others(&loaded);
    let mut newer: Vec<(u64, Member)> = Vec::new();
    let mut unheard: Vec<Member> = Vec::new();
    for m in peers {
        let seen = election.view().seen(m.private_ip);
        match seen.as_ref().and_then(|s| s.generation.map(|g| (g, s.at))) {
            Some((g, _)) if g > mine => newer.push((g, m.clone())),
            Some((_, at)) if at.elapsed() < HEARD_WITHIN => {}
            _ => unheard.push(m.clone()),
        }
    }
    if poll && !unheard.is_empty() {
        let clients = unheard
            .iter()
            .map(|m| AdminClient::new(m.admin_addr(port), None).with_timeout(FETCH_TIMEOUT))
            .collect();
        for (m, s) in unheard
            .into_iter()
            .zip(crate::client::statuses(clients).await)
        {
            if let Ok(s) = s {
                if s.node == m.id && s.generation > mine {
                    newer.push((s.generation, m));
                }
            }
        }
    }
    let Some((advertised, peer)) = newer.into_iter().max_by_key(|(g, _)| *g) else {
        return Ok(Outcome::Done);
    };
    let addr = peer.admin_addr(port);
    tracing::info!(peer = %peer.id, %addr, mine, advertised, "catching up: fetching the newer cluster document");
    let client = AdminClient::new(addr, loaded.admin_token.clone()).with_timeout(FETCH_TIMEOUT);
    let text = client
        .get_cluster()
        .await
        .map_err(|e| format!("fetching from {} at {addr}: {e}", peer.id))?;
    let doc = crate::config::parse_cluster_doc(&text, format!("{}:/v1/cluster", peer.id))
        .map_err(|e| format!("document from {}: {e}", peer.id))?;
    if doc.generation <= mine {
        return Ok(Outcome::Done);
    }
    if doc.cluster != loaded.cluster.cluster {
        return Err(format!(
            "{} at {addr} answers with a document of cluster {:?}, this node is in {:?}; not applied",
            peer.id, doc.cluster, loaded.cluster.cluster
        ));
    }
    let me = &loaded.node.node.id;
    if doc.member(me).is_none() {
        tracing::error!(
            peer = %peer.id,
            generation = doc.generation,
            node = %me,
            "{REMOVED_MSG}; storing that document, resigning and stopping (to bring it back, `dynia node add` it on a member, then start it again)"
        );
        let applied = crate::apply::apply_document(
            d,
            ApplyRequest {
                base_generation: mine,
                base_hash: None,
                document: text,
                leave: true,
            },
        )
        .await;
        if let Err(e) = applied {
            tracing::error!(error = %e, "could not store the document that removed this node; stopping anyway");
            d.request_stop();
        }
        return Ok(Outcome::Removed);
    }
    crate::apply::apply_document(
        d,
        ApplyRequest {
            base_generation: mine,
            base_hash: None,
            document: text,
            leave: false,
        },
    )
    .await
    .map_err(|e| {
        format!(
            "applying generation {} from {}: {e}",
            doc.generation, peer.id
        )
    })?;
    Ok(Outcome::Done)
}
