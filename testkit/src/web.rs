//! HTTP test support: a small real HTTP/1.1 client, and hand-written members
//! for the failures a real server library would not produce (resets, raw
//! answers). Members and clients only on 127.0.0.0/8.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer as a user sees it.
#[derive(Debug)]
pub struct WebAnswer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl WebAnswer {
    pub fn member(&self) -> Option<&str> {
        self.headers
            .get("x-dynia-member")
            .and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 keep-alive connection.
pub struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Client { sender })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<WebAnswer, String> {
        self.send(http::Method::GET, host, path, Bytes::new()).await
    }

    pub async fn send(
        &mut self,
        method: http::Method,
        host: &str,
        path: &str,
        body: Bytes,
    ) -> Result<WebAnswer, String> {
        self.send_with(method, host, path, &[], body).await
    }

    /// A request with extra header lines.
    pub async fn send_with(
        &mut self,
        method: http::Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<WebAnswer, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let (status, headers, body) = read_response(resp).await?;
        Ok(WebAnswer {
            status,
            headers,
            body,
        })
    }
}

/// Status, headers and the whole body (as text) of an answer.
pub async fn read_response(
    resp: http::Response<hyper::body::Incoming>,
) -> Result<(u16, http::HeaderMap, String), String> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// A GET on a new connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<WebAnswer, String> {
    let mut c = Client::connect(addr).await.map_err(|e| e.to_string())?;
    c.get(host, path).await
}

/// One request as a hand-written member reads it.
#[derive(Debug)]
pub struct RawRequest {
    pub method: String,
    pub path: String,
    /// The head's header lines, lowercased.
    pub head: String,
    pub body: Vec<u8>,
}

/// Reads one request (head, then a `Content-Length` body) from `s`; `None`
/// when the peer closed first or sent more than 1 MiB.
pub async fn read_request(s: &mut TcpStream) -> Option<RawRequest> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_ascii_uppercase();
    let path = first.next().unwrap_or("").to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if len > 1 << 20 {
        return None;
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(RawRequest {
        method,
        path,
        head,
        body,
    })
}

/// Writes a small `200` answer with `body`, keeping the connection open.
pub async fn write_ok(s: &mut TcpStream, id: &str, body: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let text = format!(
        "HTTP/1.1 200 OK\r\nx-dynia-member: {id}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(text.as_bytes()).await
}

/// Closes `s` with a TCP reset (SO_LINGER 0), as a crashing member would.
pub fn reset(s: TcpStream) {
    // A zero linger never blocks the thread on drop (the deprecation is
    // about non-zero ones); it turns the close into an RST.
    #[allow(deprecated)]
    let _ = s.set_linger(Some(std::time::Duration::ZERO));
    drop(s);
}

/// A hand-written member on 127.0.0.x: `serve` runs for each connection.
/// Dropping it stops the listener and every connection.
pub struct RawMember {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawMember {
    pub async fn start<F, Fut>(bind: &str, serve: F) -> RawMember
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                conns.spawn(serve(s));
                while conns.try_join_next().is_some() {}
            }
        });
        RawMember {
            addr,
            connections,
            task,
        }
    }
}

impl Drop for RawMember {
    fn drop(&mut self) {
        self.task.abort();
    }
}
