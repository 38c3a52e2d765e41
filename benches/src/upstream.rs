//! The benchmark's application server: as cheap as an HTTP/1.1 server can be,
//! so that it is never the bottleneck. One thread (tokio current_thread) serves
//! every address given; both proxies use the same process in a run.
//!
//! Every request (any method, any path, `/dynia-health` included) gets
//! `200 OK` with body `<id>\n`. Keep-alive unless the request says otherwise
//! (HTTP/1.0 without `Connection: keep-alive`, or `Connection: close`).
//! Pipelined requests are answered in one write. Request bodies with a
//! `Content-Length` are skipped; chunked bodies are not supported (the
//! connection is closed after the answer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head (and skipped body) before the connection is closed.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1 << 20;

/// Serves `(addr, id)` pairs until killed.
pub fn serve(pairs: Vec<(SocketAddr, String)>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut listeners = Vec::new();
        for (addr, id) in pairs {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("upstream {id}: bind {addr}"))?;
            eprintln!("upstream {id} listening on {addr}");
            listeners.push((l, Arc::<str>::from(id)));
        }
        let mut tasks = Vec::new();
        for (l, id) in listeners {
            tasks.push(tokio::spawn(accept_loop(l, id)));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

async fn accept_loop(l: TcpListener, id: Arc<str>) {
    let ok: Arc<[u8]> = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{id}\n",
        id.len() + 1
    )
    .into_bytes()
    .into();
    let ok_close: Arc<[u8]> = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{id}\n",
        id.len() + 1
    )
    .into_bytes()
    .into();
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                tokio::spawn(connection(s, ok.clone(), ok_close.clone()));
            }
            // Out of descriptors and the like: back off, do not spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn connection(mut s: TcpStream, ok: Arc<[u8]>, ok_close: Arc<[u8]>) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut start = 0;
        let mut close = false;
        while let Some(end) = find_head_end(&buf[start..]) {
            let head = &buf[start..start + end];
            let (keep, body) = inspect(head);
            if body > MAX_BODY {
                return;
            }
            let need = start + end + 4 + body;
            if buf.len() < need {
                break; // rest of the body still to come
            }
            out.extend_from_slice(if keep { &ok } else { &ok_close });
            start = need;
            if !keep {
                close = true;
                break;
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close || buf.len() > MAX_HEAD + MAX_BODY {
            let _ = s.shutdown().await;
            return;
        }
    }
}

/// Offset of the `\r\n\r\n` that ends the first request head in `b`.
fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n")
}

/// (keep the connection alive?, body length) of a request head.
fn inspect(head: &[u8]) -> (bool, usize) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut keep = !request_line.ends_with("HTTP/1.0");
    let mut body = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body = value.parse().unwrap_or(usize::MAX);
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                keep = false;
            } else if value.contains("keep-alive") {
                keep = true;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            keep = false; // chunked bodies are not parsed: answer, then close
        }
    }
    (keep, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_rules() {
        assert_eq!(inspect(b"GET / HTTP/1.1\r\nHost: a"), (true, 0));
        assert_eq!(inspect(b"GET /dynia-health HTTP/1.0"), (false, 0));
        assert_eq!(
            inspect(b"GET / HTTP/1.0\r\nConnection: keep-alive"),
            (true, 0)
        );
        assert_eq!(inspect(b"GET / HTTP/1.1\r\nconnection: Close"), (false, 0));
        assert_eq!(
            inspect(b"POST / HTTP/1.1\r\nContent-Length: 12"),
            (true, 12)
        );
    }
}
