//! Metrics of the node as a whole: `dynia_node_info{cluster,node,version}`
//! (always 1, to join other series on by `instance`, e.g. to aggregate the
//! election's per cluster) and the `process_*` family (CPU, RSS, open and
//! maximum file descriptors). See `docs/observability.md`.

use prometheus::{IntGaugeVec, Opts, Registry};

/// Registers the node's info series and the process collector.
pub fn register(registry: &Registry, cluster: &str, node: &str) -> prometheus::Result<()> {
    let info = IntGaugeVec::new(
        Opts::new(
            "dynia_node_info",
            "This node's cluster, member id and dynia version; always 1.",
        ),
        &["cluster", "node", "version"],
    )?;
    info.with_label_values(&[cluster, node, env!("CARGO_PKG_VERSION")])
        .set(1);
    registry.register(Box::new(info))?;
    let process = prometheus::process_collector::ProcessCollector::for_self();
    registry.register(Box::new(process))?;
    Ok(())
}
