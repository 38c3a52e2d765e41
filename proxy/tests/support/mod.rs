//! Test support: a small real HTTP client and bounded waiting for events.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer as a user sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
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

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Answer, String> {
        self.send(http::Method::GET, host, path, Bytes::new()).await
    }

    pub async fn send(
        &mut self,
        method: http::Method,
        host: &str,
        path: &str,
        body: Bytes,
    ) -> Result<Answer, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// A GET on a new connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Answer, String> {
    let mut c = Client::connect(addr).await.map_err(|e| e.to_string())?;
    c.get(host, path).await
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
