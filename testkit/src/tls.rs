//! TLS test support: a throwaway CA made with rcgen (a root, and
//! intermediates under it), certificate and key files in the formats issuers
//! hand out, HTTPS clients (HTTP/1.1 and HTTP/2) that report the certificate
//! and ALPN they got, and bounded runs of the real `curl` and `openssl`
//! binaries. Every address is on 127.0.0.0/8.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_RSA_SHA256,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::web::read_response;

/// Bound on every external command.
pub const CMD_LIMIT: Duration = Duration::from_secs(20);

/// A private key in one of the PEM forms issuers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `BEGIN PRIVATE KEY`, P-256 (Cloudflare Origin CA ECDSA, rcgen's default).
    EcdsaPkcs8,
    /// `BEGIN EC PRIVATE KEY` (openssl ecparam, some ACME clients).
    EcdsaSec1,
    /// `BEGIN PRIVATE KEY`, RSA 2048 (Let's Encrypt via certbot, Cloudflare RSA).
    RsaPkcs8,
    /// `BEGIN RSA PRIVATE KEY` (older certbot, openssl genrsa).
    RsaPkcs1,
}

/// How long a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub enum Validity {
    /// From yesterday for a year.
    Year,
    /// Ends this long from now.
    EndsIn(Duration),
    /// Ended a day ago.
    Expired,
    /// Starts in a day (notBefore in the future), for a year.
    NotYetValid,
}

/// A certificate chain and key as PEM text, and the leaf's DER.
#[derive(Clone)]
pub struct Leaf {
    /// The leaf, then its issuer's chain (see [`Ca::issue`]).
    pub chain_pem: String,
    /// The leaf alone.
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME.key` in `dir`, each by write + rename.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write_atomic(&cert, &self.chain_pem);
        write_atomic(&key, &self.key_pem);
        (cert, key)
    }
}

pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A test certificate authority: a root, or an intermediate under one.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// This CA's own certificate.
    pub pem: String,
    pub der: CertificateDer<'static>,
    /// The root it chains to (itself for a root): what clients trust.
    pub root_pem: String,
    pub root_der: CertificateDer<'static>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            root_pem: cert.pem(),
            root_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA `CN=name` signed by this one (as Let's Encrypt's
    /// R10/E5 are by ISRG Root X1).
    pub fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            root_pem: self.root_pem.clone(),
            root_der: self.root_der.clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS subjectAltNames) with subject `CN=cn`; its
    /// `chain_pem` is the leaf then this CA's certificate (for an
    /// intermediate that is certbot's `fullchain.pem`).
    pub fn issue(&self, cn: &str, names: &[&str], kind: KeyKind, validity: Validity) -> Leaf {
        let mut params = leaf_params(names, validity);
        params.distinguished_name.push(DnType::CommonName, cn);
        self.sign(params, kind)
    }

    /// Signs `params` (see [`leaf_params`]) with a new key of `kind`.
    pub fn sign(&self, params: CertificateParams, kind: KeyKind) -> Leaf {
        let (key, key_pem) = match kind {
            KeyKind::EcdsaPkcs8 | KeyKind::EcdsaSec1 => {
                let k = KeyPair::generate().unwrap();
                let pem = k.serialize_pem();
                (k, pem)
            }
            KeyKind::RsaPkcs8 | KeyKind::RsaPkcs1 => {
                let pem = openssl_stdout(&[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ]);
                let k = KeyPair::from_pem_and_sign_algo(&pem, &PKCS_RSA_SHA256).unwrap();
                (k, pem)
            }
        };
        let key_pem = match kind {
            KeyKind::EcdsaSec1 | KeyKind::RsaPkcs1 => traditional(&key_pem),
            _ => key_pem,
        };
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            cert_pem: cert.pem(),
            key_pem,
            der: cert.der().to_vec(),
        }
    }

    /// A client configuration trusting this CA's root only, ring provider.
    pub fn client(&self, resumption: bool, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root_der.clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        if !resumption {
            c.resumption = rustls::client::Resumption::disabled();
        }
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// Leaf parameters for DNS `names` over `validity`; no subject yet.
pub fn leaf_params(names: &[&str], validity: Validity) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    let now = unix_now() as i64;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let (from, to) = match validity {
        Validity::Year => (now - 86_400, now + 365 * 86_400),
        Validity::EndsIn(d) => (now - 86_400, now + d.as_secs() as i64),
        Validity::Expired => (now - 30 * 86_400, now - 86_400),
        Validity::NotYetValid => (now + 86_400, now + 365 * 86_400),
    };
    params.not_before = epoch + Duration::from_secs(from as u64);
    params.not_after = epoch + Duration::from_secs(to as u64);
    params
}

/// Converts a PKCS#8 PEM key to the traditional form (PKCS#1 / SEC1).
fn traditional(pkcs8: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["pkey", "-traditional"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl is needed: apt-get install -y openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pkcs8.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn openssl_stdout(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("openssl is needed: apt-get install -y openssl");
    assert!(out.status.success(), "openssl {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// An answer over HTTPS, with what TLS negotiated.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    /// The leaf certificate the server presented.
    pub cert: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
    /// The handshake resumed an earlier session.
    pub resumed: bool,
}

/// One HTTPS connection (HTTP/1.1 keep-alive).
pub struct HttpsConn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    pub cert: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
    pub resumed: bool,
}

/// A TLS connection to `addr` with SNI `sni`, handshake done.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// One HTTP/2 connection over TLS (the ALPN must have said `h2`).
pub struct H2Conn {
    sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    pub alpn: Option<Vec<u8>>,
}

impl H2Conn {
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> Result<H2Conn, String> {
        let tls = tls_connect(addr, config, sni).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let (sender, driver) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(driver);
        Ok(H2Conn { sender, alpn })
    }

    /// A GET on this connection; the reply's `cert`/`resumed` are not filled.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::get(format!("https://{host}{path}"))
            .body(Empty::new())
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        if resp.version() != http::Version::HTTP_2 {
            return Err(format!("answered over {:?}", resp.version()));
        }
        let (status, headers, body) = read_response(resp).await?;
        Ok(Reply {
            status,
            headers,
            body,
            cert: Vec::new(),
            alpn: self.alpn.clone(),
            resumed: false,
        })
    }
}

impl HttpsConn {
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> Result<HttpsConn, String> {
        let tls = tls_connect(addr, config, sni).await?;
        let (_, conn) = tls.get_ref();
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let alpn = conn.alpn_protocol().map(|p| p.to_vec());
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(driver);
        Ok(HttpsConn {
            sender,
            cert,
            alpn,
            resumed,
        })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::get(path)
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let (status, headers, body) = read_response(resp).await?;
        Ok(Reply {
            status,
            headers,
            body,
            cert: self.cert.clone(),
            alpn: self.alpn.clone(),
            resumed: self.resumed,
        })
    }
}

/// A GET on a new HTTPS connection.
pub async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    host: &str,
    path: &str,
) -> Result<Reply, String> {
    let mut c = HttpsConn::connect(addr, config, host).await?;
    c.get(host, path).await
}

/// Output of an external command run to completion within [`CMD_LIMIT`].
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run(program: &str, args: &[String], stdin: &[u8]) -> Ran {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is needed (apt-get install -y {program}): {e}"));
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin).await;
    drop(input);
    let out = tokio::time::timeout(CMD_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {CMD_LIMIT:?}"))
        .unwrap();
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `curl` to `https://host:port/path` resolved to `addr`, trusting `ca_file`.
/// Prints the body, then a last line with `%{http_version}`.
pub async fn curl(addr: SocketAddr, host: &str, path: &str, ca_file: &Path, extra: &[&str]) -> Ran {
    let port = addr.port();
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        ca_file.display().to_string(),
        "--resolve".into(),
        format!("{host}:{port}:{}", addr.ip()),
        "-w".into(),
        "\n%{http_version}".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("https://{host}:{port}{path}"));
    run("curl", &args, b"").await
}

/// `openssl s_client` to `addr`; `sni: None` sends no SNI.
pub async fn s_client(addr: SocketAddr, sni: Option<&str>, extra: &[&str]) -> Ran {
    let mut args: Vec<String> = vec!["s_client".into(), "-connect".into(), addr.to_string()];
    match sni {
        Some(n) => {
            args.push("-servername".into());
            args.push(n.into());
        }
        None => args.push("-noservername".into()),
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    run("openssl", &args, b"").await
}

/// The `CN` of the `subject=` line of s_client's output, if any.
pub fn subject_cn(s_client_out: &str) -> Option<String> {
    s_client_out.lines().find_map(|l| {
        let rest = l.strip_prefix("subject=")?;
        let compact: String = rest.chars().filter(|c| *c != ' ').collect();
        compact
            .split([',', '/'])
            .find_map(|p| p.strip_prefix("CN=").map(str::to_owned))
    })
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TlsDir(pub PathBuf);

impl TlsDir {
    pub fn new(tag: &str) -> TlsDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "dynia-tls-{tag}-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            unix_now()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TlsDir(p)
    }
}

impl Drop for TlsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
