//! Which certificate answers a client: exact DNS name, then a one-label
//! wildcard, then the listener's first certificate; and which names some TLS
//! listener covers (where `redirect_https` sends a host).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::LoadedCertificate;

/// The certificates of one listener, chosen by SNI.
#[derive(Debug)]
pub(crate) struct CertResolver {
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertResolver {
    pub(super) fn new(certs: &[LoadedCertificate]) -> CertResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for name in &c.info.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        CertResolver {
            certs: certs.iter().map(|c| c.key.clone()).collect(),
            exact,
            wildcard,
        }
    }

    /// Index of the certificate for `sni`: exact, then wildcard, then the first.
    fn index(&self, sni: Option<&str>) -> usize {
        sni.and_then(|name| lookup(&self.exact, &self.wildcard, name))
            .unwrap_or(0)
    }
}

/// The value for DNS name `name` (any case, trailing dot allowed): an exact
/// entry, else a wildcard entry for its parent (`*.` covers one label).
pub(super) fn lookup<T: Copy>(
    exact: &HashMap<String, T>,
    wildcard: &HashMap<String, T>,
    name: &str,
) -> Option<T> {
    let name = name.trim_end_matches('.');
    let lower;
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        lower = name.to_ascii_lowercase();
        lower.as_str()
    } else {
        name
    };
    if let Some(&v) = exact.get(name) {
        return Some(v);
    }
    let (_, parent) = name.split_once('.')?;
    wildcard.get(parent).copied()
}

/// Every DNS name some TLS listener has a certificate for, with the port of
/// the first such listener in configuration order (where `redirect_https`
/// sends that name).
#[derive(Default)]
pub(super) struct Names {
    pub(super) exact: HashMap<String, u16>,
    pub(super) wildcard: HashMap<String, u16>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.get(self.index(hello.server_name())).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(names: &[&[&str]]) -> CertResolver {
        let mut r = CertResolver {
            certs: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (i, ns) in names.iter().enumerate() {
            for n in *ns {
                match n.strip_prefix("*.") {
                    Some(p) => r.wildcard.entry(p.to_string()).or_insert(i),
                    None => r.exact.entry(n.to_string()).or_insert(i),
                };
            }
        }
        r
    }

    #[test]
    fn sni_exact_before_wildcard_then_first() {
        let r = resolver(&[
            &["default.example.org"],
            &["*.example.com"],
            &["app.example.com"],
            &["*.example.com", "other.example.net"],
        ]);
        assert_eq!(r.index(Some("app.example.com")), 2);
        assert_eq!(r.index(Some("APP.Example.com.")), 2);
        assert_eq!(r.index(Some("x.example.com")), 1);
        // A wildcard covers one label only.
        assert_eq!(r.index(Some("a.b.example.com")), 0);
        assert_eq!(r.index(Some("example.com")), 0);
        assert_eq!(r.index(Some("other.example.net")), 3);
        assert_eq!(r.index(Some("unknown.test")), 0);
        assert_eq!(r.index(None), 0);
    }
}
