//! The droplet metadata service: one server per droplet on its own port,
//! answering `/metadata/v1/…` as on a droplet (id, private IP, whether it
//! holds a Reserved IP, optionally `set_metadata_lag` behind the API); its
//! calls land in the simulator's log.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::api::text_response;
use super::{spawn_server, Call, CallTarget, DoSim, SimShared, SIM_REGION};

/// A running metadata server for one droplet (see [`DoSim::metadata_for`]).
/// Dropping it stops the server.
pub struct MetadataServer {
    addr: SocketAddr,
    droplet_id: u64,
    server: JoinHandle<()>,
}

impl MetadataServer {
    /// Base URL to use as `metadata_url`, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The droplet this server speaks for.
    pub fn droplet_id(&self) -> u64 {
        self.droplet_id
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl DoSim {
    /// Start a metadata server for `droplet_id` on its own port on the API's
    /// IP (the droplet must have been added). Its calls land in this log.
    pub async fn metadata_for(&self, droplet_id: u64) -> io::Result<MetadataServer> {
        if !self.shared.world().droplets.contains_key(&droplet_id) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no droplet {droplet_id} in the simulator"),
            ));
        }
        let listener = TcpListener::bind(SocketAddr::new(self.addr.ip(), 0)).await?;
        let addr = listener.local_addr()?;
        let s = self.shared.clone();
        let server = spawn_server(listener, Arc::new(AtomicU64::new(0)), move |req| {
            let s = s.clone();
            async move { metadata(&s, droplet_id, req) }
        });
        Ok(MetadataServer {
            addr,
            droplet_id,
            server,
        })
    }
}

fn metadata(s: &SimShared, droplet_id: u64, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut w = s.world();
    let path = req.uri().path().to_owned();
    let private = w.droplets.get(&droplet_id).copied();
    let (lag, now) = (w.metadata_lag, tokio::time::Instant::now());
    let held_ip = w
        .ips
        .iter()
        .find(|(_, r)| r.metadata_holder(lag, now) == Some(droplet_id))
        .map(|(ip, _)| ip.to_string());
    let holds = held_ip.is_some();
    let resp = if req.method() != Method::GET {
        text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        )
    } else {
        match path.as_str() {
            "/metadata/v1/id" => text_response(StatusCode::OK, droplet_id.to_string()),
            "/metadata/v1/hostname" => text_response(StatusCode::OK, format!("droplet-{droplet_id}")),
            "/metadata/v1/region" => text_response(StatusCode::OK, SIM_REGION.into()),
            "/metadata/v1/interfaces/private/0/ipv4/address" => match private {
                Some(ip) => text_response(StatusCode::OK, ip.to_string()),
                None => text_response(StatusCode::NOT_FOUND, "not found\n".into()),
            },
            "/metadata/v1/reserved_ip/ipv4/active" => text_response(StatusCode::OK, holds.to_string()),
            "/metadata/v1/reserved_ip/ipv4/ip_address" => match held_ip {
                Some(ip) => text_response(StatusCode::OK, ip),
                None => text_response(StatusCode::NOT_FOUND, "not found\n".into()),
            },
            "/metadata/v1/" | "/metadata/v1" => text_response(
                StatusCode::OK,
                "id\nhostname\nuser-data\nvendor-data\npublic-keys\nregion\ninterfaces/\ndns/\nfloating_ip/\nreserved_ip/\ntags/\nfeatures/\n".into(),
            ),
            _ => text_response(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    };
    let status = resp.status().as_u16();
    let at = w.clock.now_wall();
    w.log(Call {
        service: CallTarget::Metadata { droplet_id },
        method: req.method().to_string(),
        path,
        action_type: None,
        droplet_id: None,
        status,
        at,
        instant: Instant::now(),
    });
    resp
}
