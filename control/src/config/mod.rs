//! dynia's two configuration files and its secret files (`docs/control.md`).
//!
//! This module owns reading, checking and writing configuration: the node
//! file ([`NodeFile`], `/etc/dynia/dynia.toml`, this node only), the cluster
//! document ([`ClusterDoc`], `state_dir/cluster.toml`, identical on every
//! member) and secrets ([`SecretBytes`], mode 0600 files). Everything an operator
//! wrote wrong comes back as [`ConfigErrors`]: every problem at once, each as
//! `file:line:column: what is wrong; what to do`.
//!
//! ```no_run
//! # use std::path::Path;
//! # fn main() -> Result<(), dynia_control::config::ConfigErrors> {
//! use dynia_control::config::{cluster_doc_path, load_cluster_doc, load_node_file, validate_pair};
//! let node = load_node_file(Path::new("/etc/dynia/dynia.toml"))?;
//! let cluster = load_cluster_doc(&cluster_doc_path(&node))?;
//! validate_pair(&node, &cluster)?;
//! println!("generation {} hash {}", cluster.generation, cluster.hash());
//! # Ok(()) }
//! ```

mod cluster;
mod duration;
mod error;
mod node;
mod secret;
mod source;
mod validate;

use std::path::{Path, PathBuf};

pub use cluster::{
    ClusterDoc, ClusterElection, HealthChecks, Member, MemberState, Service, Transport,
};
pub use duration::{Duration, DurationError};
pub use error::{ConfigErrors, ConfigProblem, Location};
pub use node::{
    AccessFormat, Admin, Certificate, DriverKind, Hooks, Listener, Log, LogFormat, Node,
    NodeElection, NodeFile, NodeLimits, Origin, PrivateIp, ReservedIp,
};
pub use secret::{read_secret, write_secret, SecretBytes};

use source::Source;

/// Parses and validates a node file. `path` is used only in error locations.
pub fn parse_node_file(text: &str, path: impl AsRef<Path>) -> Result<NodeFile, ConfigErrors> {
    let path = path.as_ref();
    let src = Source::new(text, path);
    let mut node: NodeFile = src.deserialize()?;
    errors_or(src.located(validate::node_file(&node)))?;
    node.origin = Origin::new(path, text);
    Ok(node)
}

/// Parses and validates a cluster document. `path` is used only in error
/// locations (a document fetched from a peer may be named after the peer).
pub fn parse_cluster_doc(text: &str, path: impl AsRef<Path>) -> Result<ClusterDoc, ConfigErrors> {
    let src = Source::new(text, path.as_ref());
    let doc: ClusterDoc = src.deserialize()?;
    errors_or(src.located(validate::cluster_doc(&doc)))?;
    Ok(doc)
}

/// Reads, parses and validates the node file at `path`.
pub fn load_node_file(path: impl AsRef<Path>) -> Result<NodeFile, ConfigErrors> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigProblem::read(
            path,
            e,
            "pass the node file with -c/--config PATH (see dynia.example.toml)",
        )
    })?;
    parse_node_file(&text, path)
}

/// Reads, parses and validates the cluster document at `path`.
pub fn load_cluster_doc(path: impl AsRef<Path>) -> Result<ClusterDoc, ConfigErrors> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigProblem::read(
            path,
            e,
            "run `dynia init` to write a first cluster document, or check [node] state_dir",
        )
    })?;
    parse_cluster_doc(&text, path)
}

/// The rules that join this node's file to the cluster document: `node.id`
/// is a member; an IP `node.private_ip` equals that member's; the `dynia`
/// transport has `election.key_file`; no listener takes this node's own
/// upstream address of a service (requests would loop). Errors point into the
/// node file when it was parsed from text (see [`NodeFile::origin`]).
pub fn validate_pair(node: &NodeFile, cluster: &ClusterDoc) -> Result<(), ConfigErrors> {
    let problems = validate::pair(node, cluster);
    let errors = match (node.origin.path(), node.origin.text()) {
        (Some(path), Some(text)) => Source::new(text, path).located(problems),
        _ => problems.unlocated(),
    };
    errors_or(errors)
}

impl ClusterDoc {
    /// Checks the rules of a document built in memory (e.g. by a command,
    /// before sending it). Errors name key paths such as `service[1].port`.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        errors_or(validate::cluster_doc(self).unlocated())
    }
}

/// Where the cluster document lives: `state_dir/cluster.toml`.
pub fn cluster_doc_path(node: &NodeFile) -> PathBuf {
    node.node.state_dir.join("cluster.toml")
}

fn errors_or(errors: Vec<ConfigProblem>) -> Result<(), ConfigErrors> {
    match ConfigErrors::from_vec(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod admin_key_tests {
    use super::*;

    const DOC: &str = "generation = 1\ncluster = \"c\"\n\n[[member]]\nid = \"misty-owl\"\nprivate_ip = \"10.0.0.1\"\npriority = 100\nadmin = \"ADDR\"\n";

    #[test]
    fn member_admin_is_optional_validated_and_located() {
        let d = parse_cluster_doc(&DOC.replace("admin = \"ADDR\"\n", ""), "c.toml").unwrap();
        assert_eq!(
            d.members[0].admin_addr(9180),
            "10.0.0.1:9180".parse().unwrap()
        );
        let d = parse_cluster_doc(&DOC.replace("ADDR", "10.0.0.1:9999"), "c.toml").unwrap();
        assert_eq!(
            d.members[0].admin_addr(9180),
            "10.0.0.1:9999".parse().unwrap()
        );
        assert_eq!(parse_cluster_doc(&d.to_toml(), "c.toml").unwrap(), d);
        let e = parse_cluster_doc(&DOC.replace("ADDR", "0.0.0.0:9180"), "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml:8:"), "{e}");
        assert!(e.contains("admin 0.0.0.0:9180"), "{e}");
    }

    #[test]
    fn at_most_32_members_the_33rd_located() {
        let words = ["misty", "brave", "calm", "bold", "keen", "warm"];
        let animals = ["owl", "fox", "elk", "yak", "emu", "cat"];
        let mut text = String::from("generation = 1\ncluster = \"c\"\n");
        for i in 0..33 {
            text.push_str(&format!(
                "\n[[member]]\nid = \"{}-{}\"\nprivate_ip = \"10.0.0.{}\"\npriority = 100\n",
                words[i / 6],
                animals[i % 6],
                i + 1
            ));
        }
        let e = parse_cluster_doc(&text, "c.toml").unwrap_err().to_string();
        // The 33rd [[member]] starts at line 3 + 32 * 5 + 1; its id is the next line.
        assert!(e.starts_with("c.toml:165:"), "{e}");
        assert!(e.contains("33 members; at most 32"), "{e}");
        let cut = text.rfind("\n[[member]]").unwrap();
        assert!(parse_cluster_doc(&text[..cut], "c.toml").is_ok());
    }
}
