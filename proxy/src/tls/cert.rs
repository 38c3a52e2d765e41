//! Reading one certificate and its key from PEM files: the chain order, the
//! key that fits, notBefore/notAfter and DNS names (via `x509-parser`, since
//! rustls-webpki does not expose them). Every error names the file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::{provider, unix_now, EXPIRY_WARNING};
use crate::config::CertificateFiles;

/// Why a certificate could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}; check the path and that dynia may read the file", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error("{}: not a usable X.509 certificate: {what}", path.display())]
    Certificate { path: PathBuf, what: String },
    #[error("{}: not a usable private key: {what}; use an RSA or ECDSA (P-256/P-384) key in PEM", path.display())]
    Key { path: PathBuf, what: String },
    #[error(
        "{}: this private key does not belong to certificate {}; install the key issued with that certificate",
        key.display(), cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "{}: {what}; the server's own (leaf) certificate must come first, then its intermediates (as in certbot's fullchain.pem)",
        path.display()
    )]
    ChainOrder { path: PathBuf, what: String },
    #[error("{}: certificate expired on {not_after} (notAfter); renew it, then reload", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What was read from one certificate file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The subject, as `CN=...` etc.
    pub subject: String,
    /// DNS names the certificate is valid for (subjectAltName, lowercase; the
    /// common name only when there is no DNS subjectAltName).
    pub names: Vec<String>,
    /// notBefore, seconds since the Unix epoch.
    pub not_before: i64,
    /// notBefore for people (RFC 2822).
    pub not_before_text: String,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// notAfter for people (RFC 2822).
    pub not_after_text: String,
}

impl CertificateInfo {
    /// Seconds from `now` (Unix seconds) until notAfter; negative once expired.
    pub fn expires_in(&self, now: i64) -> i64 {
        self.not_after - now
    }

    /// What to warn about at `now` (Unix seconds), if anything.
    pub fn warning(&self, now: i64) -> Option<ValidityWarning> {
        if self.not_before > now {
            return Some(ValidityWarning::NotYetValid {
                starts_in: self.not_before - now,
            });
        }
        let left = self.expires_in(now);
        (left < EXPIRY_WARNING.as_secs() as i64).then_some(ValidityWarning::ExpiresSoon { left })
    }
}

/// A certificate in service that an operator should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidityWarning {
    /// notBefore is `starts_in` seconds away: clients that check dates
    /// reject the certificate until then.
    NotYetValid { starts_in: i64 },
    /// notAfter is `left` seconds away, less than [`EXPIRY_WARNING`].
    ExpiresSoon { left: i64 },
}

/// A certificate ready to serve.
pub(crate) struct LoadedCertificate {
    pub(crate) info: CertificateInfo,
    pub(super) key: Arc<CertifiedKey>,
}

/// Reads and checks one certificate and its key; refuses an expired one.
pub fn check_certificate(files: &CertificateFiles) -> Result<CertificateInfo, TlsError> {
    load_certificate(files, unix_now()).map(|c| c.info)
}

pub(crate) fn load_certificate(
    files: &CertificateFiles,
    now: i64,
) -> Result<LoadedCertificate, TlsError> {
    let cert_pem = read(&files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(&files.cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: files.cert.clone(),
            what: "no `-----BEGIN CERTIFICATE-----` block found; write the certificate chain in PEM, leaf first".into(),
        });
    }
    let info = inspect(&chain[0], files)?;
    if info.not_after <= now {
        return Err(TlsError::Expired {
            path: files.cert.clone(),
            not_after: info.not_after_text.clone(),
        });
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Pem {
            path: files.key.clone(),
            what:
                "no private key block (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`) found"
                    .into(),
        },
        e => pem_error(&files.key, e),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: files.key.clone(),
            what: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    if certified.keys_match().is_err() {
        return Err(mismatch(&certified, files));
    }
    Ok(LoadedCertificate {
        info,
        key: Arc::new(certified),
    })
}

/// Why the key does not fit the chain's first certificate: the chain is in
/// the wrong order (the key fits a later certificate, or the first one is a
/// CA), or the key is simply another one.
fn mismatch(certified: &CertifiedKey, files: &CertificateFiles) -> TlsError {
    let spki = |der: &CertificateDer<'_>| {
        x509_parser::parse_x509_certificate(der)
            .ok()
            .map(|(_, c)| c.public_key().raw.to_vec())
    };
    let key = certified.key.public_key();
    let fits = |der: &CertificateDer<'_>| {
        key.as_ref()
            .is_some_and(|k| spki(der).is_some_and(|s| s == k.as_ref()))
    };
    let order = |what: String| TlsError::ChainOrder {
        path: files.cert.clone(),
        what,
    };
    if let Some(i) = certified.cert.iter().skip(1).position(fits) {
        return order(format!(
            "the private key in {} belongs to certificate {} of this file, not to the first",
            files.key.display(),
            i + 2
        ));
    }
    let first_is_ca = x509_parser::parse_x509_certificate(&certified.cert[0])
        .ok()
        .and_then(|(_, c)| c.basic_constraints().ok().flatten().map(|b| b.value.ca))
        .unwrap_or(false);
    if first_is_ca {
        return order("the first certificate is a CA certificate".into());
    }
    TlsError::KeyMismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        what: format!("malformed PEM: {e}"),
    }
}

fn inspect(
    leaf: &CertificateDer<'_>,
    files: &CertificateFiles,
) -> Result<CertificateInfo, TlsError> {
    use x509_parser::extensions::GeneralName;
    let bad = |what: String| TlsError::Certificate {
        path: files.cert.clone(),
        what,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                push_name(&mut names, d);
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                push_name(&mut names, cn);
            }
        }
    }
    let (not_before, not_after) = (cert.validity().not_before, cert.validity().not_after);
    let text = |t: x509_parser::time::ASN1Time| {
        t.to_rfc2822().unwrap_or_else(|_| t.timestamp().to_string())
    };
    Ok(CertificateInfo {
        cert: files.cert.clone(),
        key: files.key.clone(),
        subject: cert.subject().to_string(),
        names,
        not_before: not_before.timestamp(),
        not_before_text: text(not_before),
        not_after: not_after.timestamp(),
        not_after_text: text(not_after),
    })
}

fn push_name(names: &mut Vec<String>, name: &str) {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if !n.is_empty() && !names.contains(&n) {
        names.push(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_only_close_to_expiry_or_before_not_before() {
        const DAY: i64 = 86_400;
        let now = 1_800_000_000;
        let info = |from: i64, to: i64| CertificateInfo {
            cert: "c.pem".into(),
            key: "c.key".into(),
            subject: "CN=x".into(),
            names: vec!["x".into()],
            not_before: now + from,
            not_before_text: String::new(),
            not_after: now + to,
            not_after_text: String::new(),
        };
        assert_eq!(info(-DAY, 365 * DAY).warning(now), None);
        assert_eq!(info(-DAY, 14 * DAY).warning(now), None);
        assert_eq!(
            info(-DAY, 14 * DAY - 1).warning(now),
            Some(ValidityWarning::ExpiresSoon { left: 14 * DAY - 1 })
        );
        assert_eq!(
            info(-DAY, 13 * DAY).warning(now),
            Some(ValidityWarning::ExpiresSoon { left: 13 * DAY })
        );
        assert_eq!(
            info(3600, 365 * DAY).warning(now),
            Some(ValidityWarning::NotYetValid { starts_in: 3600 })
        );
        assert_eq!(info(0, 365 * DAY).warning(now), None);
    }
}
