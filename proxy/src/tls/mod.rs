//! TLS termination: certificates from PEM files ([`cert`]), chosen by SNI
//! ([`sni`]), served by rustls with the *ring* provider; resumption state
//! shared across reloads; handshake and expiry metrics ([`metrics`]). What is
//! accepted, refused and warned about, and why: `docs/proxy.md`, "TLS
//! termination".

mod cert;
mod metrics;
mod sni;

pub use cert::{check_certificate, CertificateInfo, TlsError, ValidityWarning};
pub(crate) use cert::{load_certificate, LoadedCertificate};
use metrics::ExpiryCollector;
use sni::{lookup, CertResolver, Names};

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use rustls::server::{ProducesTickets, StoresServerSessions};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ProxyConfig;

/// A certificate this close to its notAfter is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
/// How often certificates in service are checked again for the warning.
pub const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);
/// Entries of the TLS 1.2 session-id / TLS 1.3 stateful session cache.
pub const SESSION_CACHE_SIZE: usize = 4096;
/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

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

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("certs", &self.certs)
            .finish()
    }
}
