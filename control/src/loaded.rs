//! The configuration pair as loaded: the node file, the cluster document it
//! points at and the secrets it names, every problem reported with its
//! location (`dynia check`, start, reload). Formats: `docs/control.md`, "Files".

use std::path::Path;

use crate::config::{self, ClusterDoc, ConfigErrors, NodeFile, SecretBytes};

/// Both files as last loaded successfully, plus the secrets they name.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub node: NodeFile,
    pub cluster: ClusterDoc,
    pub hash: String,
    pub admin_token: Option<SecretBytes>,
    pub cluster_key: Option<SecretBytes>,
}

/// Reads and validates the node file, the cluster document it points at and
/// the secrets it names. Every problem found is reported, with its location.
pub fn load(node_path: &Path) -> Result<Loaded, ConfigErrors> {
    let node = config::load_node_file(node_path)?;
    let cluster = config::load_cluster_doc(config::cluster_doc_path(&node))?;
    config::validate_pair(&node, &cluster)?;
    let admin_token = match &node.admin.token_file {
        Some(p) => Some(config::read_secret(p).map_err(ConfigErrors::from)?),
        None => None,
    };
    let cluster_key = match &node.election.key_file {
        Some(p) => Some(config::read_secret(p).map_err(ConfigErrors::from)?),
        None => None,
    };
    check_certificates(node_path, &node)?;
    let hash = cluster.hash();
    Ok(Loaded {
        node,
        cluster,
        hash,
        admin_token,
        cluster_key,
    })
}

/// Reads every listener certificate and key (chain, key fit, expiry) so
/// `dynia check` and a reload report them like any other configuration error.
fn check_certificates(node_path: &Path, node: &NodeFile) -> Result<(), ConfigErrors> {
    let errors: Vec<config::ConfigProblem> = node
        .listeners
        .iter()
        .flat_map(|l| l.certificates.iter().map(move |c| (l, c)))
        .filter_map(|(l, c)| {
            let files = dynia_proxy::config::CertificateFiles {
                cert: c.cert.clone(),
                key: c.key.clone(),
            };
            dynia_proxy::tls::check_certificate(&files).err().map(|e| {
                config::ConfigProblem::InDocument {
                    key: format!("{}: listener `{}`", node_path.display(), l.name),
                    message: e.to_string(),
                }
            })
        })
        .collect();
    match ConfigErrors::from_vec(errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
