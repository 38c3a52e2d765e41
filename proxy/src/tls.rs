//! TLS termination: certificates from PEM files, chosen by SNI, served by
//! rustls with the *ring* provider (the one the DigitalOcean client already
//! uses, so the binary carries one crypto provider).
//!
//! - A TLS listener has one or more certificates ([`CertificateFiles`]: a PEM
//!   chain and a PEM key, PKCS#8, PKCS#1 or SEC1, RSA or ECDSA). The chain
//!   file holds the server's (leaf) certificate first, then any intermediates
//!   (certbot's `fullchain.pem`; a Cloudflare Origin CA certificate is a
//!   leaf alone, signed by the Origin CA root itself). Blocks other than the
//!   ones looked for are skipped and CRLF line ends are read, so `key` may
//!   name the same file as `cert` (HAProxy's combined `crt` PEM). A chain
//!   whose first certificate is not the one the key belongs to is refused
//!   with a message saying the leaf must come first.
//! - The name a client asks for (SNI) picks the certificate: an exact DNS
//!   name of a certificate first, then a wildcard (`*.example.com` covers one
//!   label); a client without SNI, or asking for a name no certificate has,
//!   gets the first certificate. A name claimed by two certificates goes to
//!   the first.
//! - TLS 1.2 and 1.3 only; ALPN `h2` then `http/1.1`, in the server's order
//!   (rustls picks the first of ours the client offers); session resumption by
//!   tickets (keys rotated by rustls) and a bounded session-ID / stateful
//!   cache, both shared by every listener and kept across reloads, so a
//!   session made before a reload resumes after it.
//! - Every load (start and reload) reads the files again. A file that is
//!   missing, unreadable, not PEM, a key that does not fit its certificate, or
//!   a certificate past its notAfter is refused with an error naming the file;
//!   the caller then changes nothing. A certificate within
//!   [`EXPIRY_WARNING`] of its notAfter, or whose notBefore is still in the
//!   future, is logged as a warning at every load and every
//!   [`EXPIRY_CHECK_EVERY`]. A not-yet-valid certificate is served all the
//!   same, as HAProxy does: it is usually a clock a few minutes off here or
//!   at the issuer, it heals by itself, and refusing it would keep the daemon
//!   from starting; clients that check dates reject it until its notBefore.
//! - `redirect_https` (plain listeners) sends to https only the hosts some
//!   TLS listener has a certificate for, to the port of the first TLS
//!   listener (in configuration order) whose certificates cover the host
//!   (`Tls::https_port_for`).
//! - The handshake is bounded by `header_read_timeout` (what a client gets to
//!   send its first request head), and a connection in its handshake counts
//!   against `max_connections` like any other; there is no separate key.
//!   HAProxy does the same by default (`timeout client-hs` falls back to
//!   `timeout client`). A shorter fixed bound would first hurt real clients
//!   on a busy node, where handshakes queue for CPU; the operator who wants
//!   silent connections gone sooner lowers `header_read_timeout`, which
//!   bounds both. A handshake stuck on one connection holds only its own
//!   task: others are served meanwhile (tested with 60 held at once).
//! - Metrics: `dynia_tls_certificate_expiry_seconds{name}` — seconds from the
//!   scrape to the certificate's notAfter, computed at scrape time; `name` is
//!   `<listener>:<certificate file>` (the file is what an operator replaces).
//!   `dynia_tls_handshakes_total{result}` with `success`, `failure`, `timeout`.
//!
//! notBefore, notAfter, subject and DNS names are read with `x509-parser`:
//! rustls-webpki parses them too but does not expose validity or names.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, Opts, Registry};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{CertificateFiles, ProxyConfig};

/// A certificate this close to its notAfter is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
/// How often certificates in service are checked again for the warning.
pub const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);
/// Entries of the TLS 1.2 session-id / TLS 1.3 stateful session cache.
pub const SESSION_CACHE_SIZE: usize = 4096;
/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

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
    key: Arc<CertifiedKey>,
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

/// The certificates of one listener, chosen by SNI.
#[derive(Debug)]
pub(crate) struct CertResolver {
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertResolver {
    fn new(certs: &[LoadedCertificate]) -> CertResolver {
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
fn lookup<T: Copy>(
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
struct Names {
    exact: HashMap<String, u16>,
    wildcard: HashMap<String, u16>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.get(self.index(hello.server_name())).cloned()
    }
}

/// The TLS side of one listener, swapped as a whole on reload.
pub(crate) struct ListenerTls {
    pub(crate) acceptor: TlsAcceptor,
    certs: Vec<CertificateInfo>,
}

/// TLS state of the proxy: the acceptor of every TLS listener (by name),
/// resumption state shared across reloads, and the metrics.
pub(crate) struct Tls {
    listeners: ArcSwap<HashMap<String, Arc<ListenerTls>>>,
    names: ArcSwap<Names>,
    session_cache: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    expiry: Arc<ArcSwap<Vec<(String, i64)>>>,
    handshakes_ok: IntCounter,
    handshakes_failed: IntCounter,
    handshakes_timed_out: IntCounter,
}

/// TLS listeners of a configuration, loaded and ready to store.
pub(crate) struct Prepared {
    listeners: HashMap<String, Arc<ListenerTls>>,
    names: Names,
    /// `(<listener>:<file>, notAfter)` for the expiry metric.
    expiry: Vec<(String, i64)>,
}

impl Tls {
    pub(crate) fn new(registry: &Registry) -> Result<Tls, crate::ProxyError> {
        let handshakes = IntCounterVec::new(
            Opts::new(
                "dynia_tls_handshakes_total",
                "TLS handshakes on client connections, by result.",
            ),
            &["result"],
        )?;
        let expiry = Arc::new(ArcSwap::from_pointee(Vec::new()));
        registry.register(Box::new(handshakes.clone()))?;
        registry.register(Box::new(ExpiryCollector::new(expiry.clone())?))?;
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::from)?;
        Ok(Tls {
            listeners: ArcSwap::from_pointee(HashMap::new()),
            names: ArcSwap::from_pointee(Names::default()),
            session_cache: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            ticketer,
            expiry,
            handshakes_ok: handshakes.with_label_values(&["success"]),
            handshakes_failed: handshakes.with_label_values(&["failure"]),
            handshakes_timed_out: handshakes.with_label_values(&["timeout"]),
        })
    }

    /// Loads every TLS listener's certificates; changes nothing.
    pub(crate) fn prepare(&self, config: &ProxyConfig) -> Result<Prepared, crate::ProxyError> {
        let now = unix_now();
        let mut out = HashMap::new();
        let mut names = Names::default();
        let mut expiry = Vec::new();
        for l in config
            .listeners
            .iter()
            .filter(|l| !l.certificates.is_empty())
        {
            let err = |source| crate::ProxyError::Tls {
                listener: l.name.clone(),
                source,
            };
            let certs = l
                .certificates
                .iter()
                .map(|f| load_certificate(f, now))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            let server = self.server_config(&certs).map_err(err)?;
            for c in &certs {
                for n in &c.info.names {
                    match n.strip_prefix("*.") {
                        Some(parent) => names.wildcard.entry(parent.to_owned()),
                        None => names.exact.entry(n.clone()),
                    }
                    .or_insert(l.bind.port());
                }
                let label = format!("{}:{}", l.name, c.info.cert.display());
                if !expiry.iter().any(|(e, _)| *e == label) {
                    expiry.push((label, c.info.not_after));
                }
            }
            out.insert(
                l.name.clone(),
                Arc::new(ListenerTls {
                    acceptor: TlsAcceptor::from(Arc::new(server)),
                    certs: certs.into_iter().map(|c| c.info).collect(),
                }),
            );
        }
        Ok(Prepared {
            listeners: out,
            names,
            expiry,
        })
    }

    fn server_config(&self, certs: &[LoadedCertificate]) -> Result<ServerConfig, TlsError> {
        let mut c = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CertResolver::new(certs)));
        c.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        c.session_storage = self.session_cache.clone();
        c.ticketer = self.ticketer.clone();
        Ok(c)
    }

    /// Makes `prepared` the TLS of new connections; warns about certificates
    /// close to expiry or not valid yet.
    pub(crate) fn store(&self, prepared: Prepared) {
        warn_validity(&prepared.listeners, unix_now());
        self.expiry.store(Arc::new(prepared.expiry));
        self.names.store(Arc::new(prepared.names));
        self.listeners.store(Arc::new(prepared.listeners));
    }

    /// The port of the first TLS listener with a certificate for `host` (a
    /// `Host` value, port allowed), `None` when no certificate covers it:
    /// `redirect_https` sends only those hosts to https, to that port.
    pub(crate) fn https_port_for(&self, host: &str) -> Option<u16> {
        let names = self.names.load();
        lookup(
            &names.exact,
            &names.wildcard,
            crate::route::strip_port(host),
        )
    }

    /// The TLS of listener `name`, or `None` for a plain listener.
    pub(crate) fn listener(&self, name: &str) -> Option<Arc<ListenerTls>> {
        self.listeners.load().get(name).cloned()
    }

    /// Logs a warning for every certificate in service close to expiry or
    /// not valid yet.
    pub(crate) fn check_expiry(&self) {
        warn_validity(&self.listeners.load(), unix_now());
    }

    /// Runs the handshake within `timeout`; `None` (and a debug line) when it
    /// fails or times out.
    pub(crate) async fn handshake<S>(
        &self,
        listener: &ListenerTls,
        stream: S,
        timeout: Duration,
        peer: std::net::SocketAddr,
    ) -> Option<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let accept = listener.acceptor.accept(stream);
        tokio::pin!(accept);
        tokio::select! {
            r = &mut accept => match r {
                Ok(s) => {
                    self.handshakes_ok.inc();
                    Some(s)
                }
                Err(e) => {
                    self.handshakes_failed.inc();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
            },
            _ = tokio::time::sleep(timeout) => {
                // Counted before the connection is closed (when `accept` drops).
                self.handshakes_timed_out.inc();
                tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                None
            }
        }
    }
}

fn warn_validity(listeners: &HashMap<String, Arc<ListenerTls>>, now: i64) {
    for (name, l) in listeners {
        for c in &l.certs {
            match c.warning(now) {
                None => {}
                Some(ValidityWarning::ExpiresSoon { left }) => tracing::warn!(
                    listener = %name,
                    cert = %c.cert.display(),
                    subject = %c.subject,
                    not_after = %c.not_after_text,
                    days_left = left / 86_400,
                    "certificate expires soon; renew it and reload"
                ),
                Some(ValidityWarning::NotYetValid { starts_in }) => tracing::warn!(
                    listener = %name,
                    cert = %c.cert.display(),
                    subject = %c.subject,
                    not_before = %c.not_before_text,
                    seconds_to_go = starts_in,
                    "certificate not valid yet (notBefore in the future); served anyway, \
                     but clients reject it until then; check this machine's clock"
                ),
            }
        }
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `dynia_tls_certificate_expiry_seconds`, computed when scraped so the
/// value counts down without anyone updating it.
struct ExpiryCollector {
    desc: Desc,
    certs: Arc<ArcSwap<Vec<(String, i64)>>>,
}

const EXPIRY_NAME: &str = "dynia_tls_certificate_expiry_seconds";
const EXPIRY_HELP: &str =
    "Seconds until the certificate's notAfter; name is <listener>:<certificate file>.";

impl ExpiryCollector {
    fn new(certs: Arc<ArcSwap<Vec<(String, i64)>>>) -> Result<Self, prometheus::Error> {
        let desc = Desc::new(
            EXPIRY_NAME.into(),
            EXPIRY_HELP.into(),
            vec!["name".into()],
            HashMap::new(),
        )?;
        Ok(ExpiryCollector { desc, certs })
    }
}

impl Collector for ExpiryCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let certs = self.certs.load();
        if certs.is_empty() {
            return Vec::new();
        }
        let Ok(g) = GaugeVec::new(Opts::new(EXPIRY_NAME, EXPIRY_HELP), &["name"]) else {
            return Vec::new();
        };
        let now = unix_now();
        for (name, not_after) in certs.iter() {
            g.with_label_values(&[name.as_str()])
                .set((not_after - now) as f64);
        }
        g.collect()
    }
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("certs", &self.certs)
            .finish()
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
