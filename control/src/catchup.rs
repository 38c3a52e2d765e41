//! Catch-up: a node that hears a peer advertise a higher cluster-document
//! generation fetches that document from the peer's admin API
//! (`GET /v1/cluster`, with the shared admin token) and applies it through
//! [`crate::daemon::Daemon::apply_document`] (validated, atomic, snapshot).
//!
//! Never moves to a lower or equal generation: documents of the same
//! generation but another hash (a stopped rolling deploy) are drift for
//! `dynia status` and `dynia sync`, not for catch-up. Failures back off
//! (1 s doubling to 30 s); every fetch has a timeout.

use std::sync::Arc;
use std::time::Duration;

use crate::apply::ApplyRequest;
use crate::client::AdminClient;
use crate::daemon::Daemon;

/// How often the adverts are looked at.
const TICK: Duration = Duration::from_millis(300);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs until the daemon stops.
pub async fn run(d: Arc<Daemon>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        tokio::time::sleep(TICK).await;
        if d.stopping() {
            return;
        }
        match once(&d).await {
            Ok(_) => backoff = BACKOFF_MIN,
            Err(why) => {
                tracing::warn!(error = %why, retry_in = ?backoff, "catch-up failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One look at the adverts; `Ok(true)` when a newer document was applied.
async fn once(d: &Daemon) -> Result<bool, String> {
    let Some(election) = d.election() else {
        return Ok(false);
    };
    let loaded = d.loaded();
    let mine = loaded.cluster.generation;
    let best = loaded
        .cluster
        .members
        .iter()
        .filter(|m| m.id != loaded.node.node.id)
        .filter_map(|m| {
            election
                .shared()
                .seen(m.private_ip)
                .and_then(|s| s.generation)
                .map(|g| (g, m.clone()))
        })
        .filter(|(g, _)| *g > mine)
        .max_by_key(|(g, _)| *g);
    let Some((advertised, peer)) = best else {
        return Ok(false);
    };
    let addr = peer.admin_addr(loaded.node.admin.listen.port());
    tracing::info!(peer = %peer.id, %addr, mine, advertised, "catching up: fetching the newer cluster document");
    let client = AdminClient::new(addr, loaded.admin_token.clone()).with_timeout(FETCH_TIMEOUT);
    let text = client
        .get_cluster()
        .await
        .map_err(|e| format!("fetching from {} at {addr}: {e}", peer.id))?;
    let doc = crate::config::parse_cluster_doc(&text, format!("{}:/v1/cluster", peer.id))
        .map_err(|e| format!("document from {}: {e}", peer.id))?;
    if doc.generation <= mine {
        return Ok(false);
    }
    d.apply_document(ApplyRequest {
        base_generation: mine,
        base_hash: None,
        document: text,
        leave: false,
    })
    .await
    .map_err(|e| {
        format!(
            "applying generation {} from {}: {e}",
            doc.generation, peer.id
        )
    })?;
    Ok(true)
}
