//! The proxy inside the test process, and a raw-protocol client for it.
//!
//! [`InProcess`] runs `switchyard::server::run` on a runtime of its own thread, with
//! a config written here, so a test drives a client connection through the real
//! listener, connection and handler code against scripted upstreams
//! (`tests/scripted`) and sees, in one process, the bytes every side sent. It stops
//! when dropped. [`Client`] speaks the Kafka protocol with kafka-protocol's message
//! types, one request at a time.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio_util::sync::CancellationToken;

use crate::harness;

pub struct InProcess {
    pub bootstrap: String,
    pub admin: String,
    pub port_base: u16,
    pub config_path: PathBuf,
    header: String,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Starts a proxy whose `[clusters]` and `[routes]` are `clusters_toml`, with a
    /// listener per virtual broker id in `broker_ids`, and waits until every one of
    /// them accepts.
    pub fn start(name: &str, clusters_toml: &str, broker_ids: &[i32]) -> InProcess {
        let dir = harness::scratch(name);
        let (port_base, bind_port) = harness::proxy_ports(broker_ids);
        let admin_port = harness::free_port();
        let header = format!(
            "[proxy]\ncluster_id = \"switchyard-test\"\nstate_dir = \"{}\"\nmetadata_refresh_ms = 2000\n\n\
             [listener]\nbind = \"127.0.0.1:{bind_port}\"\nadvertised_host = \"127.0.0.1\"\nbroker_port_base = {port_base}\n\n\
             [admin]\nbind = \"127.0.0.1:{admin_port}\"\n\n",
            dir.join("state").display()
        );
        let config_path = dir.join("switchyard.toml");
        std::fs::write(&config_path, format!("{header}{clusters_toml}\n")).unwrap();
        let config = switchyard::config::Config::load_with_env(&config_path, Vec::new())
            .unwrap_or_else(|e| panic!("config: {e}"));
        let stop = CancellationToken::new();
        let (token, path) = (stop.clone(), config_path.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            if let Err(e) = rt.block_on(switchyard::server::run(config, Some(path), token)) {
                panic!("proxy stopped: {e:#}");
            }
        });
        let ports = std::iter::once(bind_port)
            .chain(std::iter::once(admin_port))
            .chain(broker_ids.iter().map(|id| port_base + *id as u16));
        for port in ports {
            harness::wait_port(port, Duration::from_secs(30), "in-process proxy");
        }
        InProcess {
            bootstrap: format!("127.0.0.1:{bind_port}"),
            admin: format!("127.0.0.1:{admin_port}"),
            port_base,
            config_path,
            header,
            stop,
            thread: Some(thread),
        }
    }

    /// Rewrites the config with new `[clusters]`/`[routes]` sections and reloads it
    /// through the admin API; returns the HTTP status and body.
    pub fn reload(&self, clusters_toml: &str) -> (u16, String) {
        let tmp = self.config_path.with_extension("toml.tmp");
        std::fs::write(&tmp, format!("{}{clusters_toml}\n", self.header)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
        let mut s = TcpStream::connect(&self.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST /reload HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.admin
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    /// The address of virtual broker `id`.
    pub fn broker(&self, id: i32) -> String {
        format!("127.0.0.1:{}", self.port_base + id as u16)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A Kafka client that sends one request and reads its answer.
pub struct Client {
    stream: TcpStream,
    correlation: i32,
    pub client_id: &'static str,
    hang_up_after_send: bool,
}

impl Client {
    pub fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            stream,
            correlation: 0,
            client_id: "raw-client",
            hang_up_after_send: false,
        }
    }

    /// Sends `req` as `api` at `version` and decodes the answer; `None` when the
    /// proxy closed the connection instead of answering.
    pub fn try_call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Option<Resp> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str(self.client_id)));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .unwrap();
        req.encode(&mut body, version).unwrap();
        let mut out = Vec::with_capacity(body.len() + 4);
        out.put_i32(body.len() as i32);
        out.extend_from_slice(&body);
        self.stream.write_all(&out).ok()?;
        if self.hang_up_after_send {
            self.stream.shutdown(std::net::Shutdown::Write).ok()?;
        }
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut buf).ok()?;
        let mut buf = Bytes::from(buf);
        let h = ResponseHeader::decode(&mut buf, api.response_header_version(version)).unwrap();
        assert_eq!(h.correlation_id, self.correlation, "answer out of order");
        let resp = Resp::decode(&mut buf, version).unwrap();
        assert_eq!(buf.remaining(), 0, "{api:?} v{version}: bytes left over");
        Some(resp)
    }

    /// Sends `req`, ends the client's side of the connection (half-close), then
    /// reads the answer.
    pub fn send_then_hang_up<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Option<Resp> {
        self.hang_up_after_send = true;
        self.try_call(api, version, req)
    }

    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Resp {
        self.try_call(api, version, req)
            .unwrap_or_else(|| panic!("{api:?} v{version}: the proxy closed the connection"))
    }
}
