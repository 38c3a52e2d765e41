//! `dynia sync` and `dynia rollback`: one document on members that may
//! differ, each compare-and-set on the generation and hash read from it
//! when the command started, so nothing newer is overwritten unseen
//! (`docs/control.md`, "sync and rollback").

use std::collections::BTreeMap;

use super::plan::{self, Read};
use super::push::{push, statuses};
use super::{Ctx, Event, OpsError, Progress};
use crate::client::ClientError;
use crate::config::{self, ClusterDoc, Member};
use crate::wire::Status;

/// What `sync` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Synced {
    /// Every member has this node's document already.
    Already { generation: u64, hash: String },
    /// A document went to every member (see the report).
    Pushed,
}

fn read_of(s: Result<Status, ClientError>) -> Read {
    s.map(|s| (s.generation, s.config_hash))
        .map_err(|e| e.to_string())
}

/// Sends `content` at generation `max(all) + 1` to every member of
/// `content` and of `cur`, each compare-and-set on what `read` has for it
/// (members not in it are read now).
async fn converge(
    ctx: &Ctx,
    cur: &ClusterDoc,
    content: &ClusterDoc,
    what: &str,
    read: Vec<(Member, Result<Status, ClientError>)>,
    p: Progress<'_>,
) -> Result<(), OpsError> {
    let mut seen: BTreeMap<String, Read> =
        read.into_iter().map(|(m, s)| (m.id, read_of(s))).collect();
    let missing: Vec<Member> = content
        .members
        .iter()
        .chain(cur.members.iter())
        .filter(|m| !seen.contains_key(&m.id))
        .cloned()
        .collect();
    for (m, s) in statuses(ctx, &missing).await {
        seen.insert(m.id, read_of(s));
    }
    let doc = plan::at(content, plan::converge_generation(cur, content, &seen));
    let report = push(ctx, &plan::converge_targets(cur, &doc, &seen), &doc).await;
    p(Event::Pushed {
        what,
        report: &report,
    });
    Ok(())
}

/// `dynia sync`: every member takes the newest document (highest
/// generation; this node's on a tie), as one generation above all.
pub async fn sync(ctx: &Ctx, p: Progress<'_>) -> Result<Synced, OpsError> {
    let cur = ctx.current().await?;
    let all = statuses(ctx, &cur.members).await;
    let mine = cur.hash();
    if all.iter().all(|(_, s)| {
        s.as_ref()
            .is_ok_and(|s| s.generation == cur.generation && s.config_hash == mine)
    }) {
        return Ok(Synced::Already {
            generation: cur.generation,
            hash: mine,
        });
    }
    let mut source = cur.clone();
    for (m, s) in &all {
        let Ok(s) = s else { continue };
        if s.generation <= source.generation {
            continue;
        }
        let fetched = match ctx.client(m).get_cluster().await {
            Ok(t) => config::parse_cluster_doc(&t, format!("{}:/v1/cluster", m.id))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        source = fetched.map_err(|error| OpsError::SourceUnreadable {
            id: m.id.clone(),
            error,
        })?;
    }
    p(Event::SyncTaking {
        generation: source.generation,
        hash: &source.hash(),
    });
    converge(ctx, &cur, &source, "sync", all, p).await?;
    Ok(Synced::Pushed)
}

/// `dynia rollback [--to GEN]`: the content of an earlier generation (by
/// default the newest kept one below the current generation) becomes the
/// next generation on every member.
pub async fn rollback(ctx: &Ctx, to: Option<u64>, p: Progress<'_>) -> Result<(), OpsError> {
    let cur = ctx.current().await?;
    let snaps = ctx.local.snapshots().await.map_err(OpsError::Local)?;
    let kept: Vec<u64> = snaps.iter().map(|s| s.generation).collect();
    let want = match to {
        Some(g) => g,
        None => kept
            .iter()
            .copied()
            .filter(|g| *g < cur.generation)
            .max()
            .ok_or(OpsError::NoEarlier)?,
    };
    let text = ctx
        .local
        .snapshot(want)
        .await
        .map_err(|error| OpsError::NoSnapshot { error, kept })?;
    let content =
        config::parse_cluster_doc(&text, format!("snapshot {want}")).map_err(OpsError::Parse)?;
    p(Event::RollbackTaking { generation: want });
    let all = statuses(ctx, &cur.members).await;
    let what = format!("rollback to {want}");
    converge(ctx, &cur, &content, &what, all, p).await
}
