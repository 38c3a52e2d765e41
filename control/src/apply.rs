//! Applying a new cluster document on one node (`PUT /v1/cluster`, catch-up):
//! parse and validate alone, compare-and-set on `base_generation` (and
//! `base_hash`, which also allows a same-generation replace), pair with this
//! node's file (or leave, with `leave`), write atomically with a snapshot,
//! hot-swap, and write the previous document back if the reload refuses.
//! The same document again is a success that changes nothing. The rules in
//! order: `docs/control.md`, "The admin API".

use crate::config::{self, ConfigErrors};
use crate::daemon::Daemon;
use crate::store::Store;

pub use crate::wire::{Applied, ApplyRequest};

/// Why a document was not applied; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the document is invalid:\n{0}")]
    Invalid(ConfigErrors),
    #[error("conflict: this node is at generation {generation} (config hash {}), the change was based on generation {base}; nothing changed; read the current document and try again", &config_hash[..12.min(config_hash.len())])]
    Conflict {
        base: u64,
        generation: u64,
        config_hash: String,
    },
    #[error("{0}")]
    Generation(String),
    #[error("cannot write the cluster document: {0}")]
    Write(std::io::Error),
}

/// Applies a cluster document sent by a `dynia` command or fetched by
/// catch-up, one change at a time on this node: the rules above, then
/// hot-swap through [`Daemon::reload`].
pub async fn apply_document(d: &Daemon, req: ApplyRequest) -> Result<Applied, ApplyError> {
    let _one_change_at_a_time = d.apply_lock().lock().await;
    apply(d, req).await
}

async fn apply(d: &Daemon, req: ApplyRequest) -> Result<Applied, ApplyError> {
    let loaded = d.loaded();
    let doc = config::parse_cluster_doc(&req.document, "document").map_err(ApplyError::Invalid)?;
    let hash = doc.hash();
    let (cur_gen, cur_hash) = (loaded.cluster.generation, loaded.hash.clone());
    if doc.generation == cur_gen && hash == cur_hash {
        return Ok(Applied {
            generation: cur_gen,
            config_hash: cur_hash,
            changed: false,
            leaving: false,
        });
    }
    let conflict = || ApplyError::Conflict {
        base: req.base_generation,
        generation: cur_gen,
        config_hash: cur_hash.clone(),
    };
    if req.base_generation != cur_gen {
        return Err(conflict());
    }
    if let Some(h) = &req.base_hash {
        if *h != cur_hash {
            return Err(conflict());
        }
        if doc.generation < cur_gen {
            return Err(ApplyError::Generation(format!(
                "the document's generation {} is lower than this node's {cur_gen}; a replace keeps or raises the generation",
                doc.generation
            )));
        }
    } else if doc.generation <= cur_gen {
        return Err(ApplyError::Generation(format!(
            "the document's generation {} must be higher than the base generation {cur_gen}",
            doc.generation
        )));
    }
    let leaving = req.leave && doc.member(&loaded.node.node.id).is_none();
    if !leaving {
        config::validate_pair(&loaded.node, &doc).map_err(ApplyError::Invalid)?;
    }
    let store = Store::new(&loaded.node.node.state_dir);
    let text = doc.to_toml();
    store
        .write(&text, Some((cur_gen, &cur_hash)))
        .map_err(ApplyError::Write)?;
    if leaving {
        tracing::warn!(
            generation = doc.generation,
            "this node was removed from the cluster; resigning and stopping"
        );
        d.request_stop();
        return Ok(Applied {
            generation: doc.generation,
            config_hash: hash,
            changed: true,
            leaving: true,
        });
    }
    match d.reload().await {
        Ok(r) => {
            tracing::info!(
                from = cur_gen,
                to = r.generation,
                config_hash = %r.config_hash,
                "cluster document applied"
            );
            Ok(Applied {
                generation: r.generation,
                config_hash: r.config_hash,
                changed: true,
                leaving: false,
            })
        }
        Err(errors) => {
            // The reload kept the previous configuration; put its file back too.
            let _ = store.write(&loaded.cluster.to_toml(), None);
            Err(ApplyError::Invalid(errors))
        }
    }
}
