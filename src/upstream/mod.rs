//! Connections to the brokers of each upstream cluster, and what the proxy knows about
//! each cluster: its brokers (from Metadata) and the API versions it supports (from
//! ApiVersions), refreshed in the background with backoff while a cluster is down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec;
pub mod stream;
use crate::config::ClusterConfig;
use crate::metrics;
pub use stream::Stream;

/// Why talking to an upstream broker failed. All of these are the upstream's side:
/// clients see a closed connection or a retriable error, never a hang.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connect to {addr}: timed out after {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("i/o with {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} answered with an unreadable response: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("no broker of cluster `{0}` is reachable")]
    NoBroker(String),
    #[error("TLS with {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("SASL login to {addr}: {reason}")]
    Auth { addr: String, reason: String },
}

impl UpstreamError {
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::Io { .. } => "io",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::NoBroker(_) => "no_broker",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Auth { .. } => "auth",
        }
    }
}

/// Opens a TCP connection to a broker, bounded by `timeout`.
pub async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            // Kafka frames are small and latency-sensitive; never wait for Nagle.
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(source)) => Err(UpstreamError::Connect {
            addr: addr.to_string(),
            source,
        }),
        Err(_) => Err(UpstreamError::ConnectTimeout {
            addr: addr.to_string(),
            after: timeout,
        }),
    }
}

/// Sends one request on `stream` and reads its response. Used for the proxy's own
/// requests (discovery), never on a client's connection.
pub async fn round_trip<S, Req, Resp>(
    stream: &mut S,
    addr: &str,
    api: ApiKey,
    version: i16,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    Req: Encodable,
    Resp: Decodable,
{
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("switchyard")));
    let frame = codec::encode_request(api, &header, body).map_err(|e| UpstreamError::Protocol {
        addr: addr.into(),
        reason: e.to_string(),
    })?;
    let io = |source| UpstreamError::Io {
        addr: addr.to_string(),
        source,
    };
    let exchange =
        async {
            let mut out = BytesMut::new();
            codec::put_frame(&mut out, &frame);
            stream.write_all(&out).await.map_err(io)?;
            let len = stream.read_i32().await.map_err(io)?;
            if !(4..=64 * 1024 * 1024).contains(&len) {
                return Err(UpstreamError::Protocol {
                    addr: addr.into(),
                    reason: format!("response length {len}"),
                });
            }
            let mut buf = vec![0u8; len as usize];
            stream.read_exact(&mut buf).await.map_err(io)?;
            let (_, resp) = codec::decode_response::<Resp>(api, version, Bytes::from(buf))
                .map_err(|e| UpstreamError::Protocol {
                    addr: addr.into(),
                    reason: e.to_string(),
                })?;
            Ok(resp)
        };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(UpstreamError::Io {
                addr: addr.into(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"),
            })
        })
}

/// An upstream broker as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerAddr {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Supported version range per API key, as one cluster's brokers advertise it (the
/// intersection over the brokers the proxy has asked).
pub type ApiRanges = BTreeMap<i16, (i16, i16)>;

/// What the proxy knows about one upstream cluster.
pub struct ClusterView {
    pub config: ClusterConfig,
    brokers: ArcSwap<BTreeMap<i32, BrokerAddr>>,
    api_ranges: ArcSwap<Option<ApiRanges>>,
    controller: AtomicI32,
    reachable: AtomicBool,
    last_error: ArcSwap<Option<String>>,
    upstream_cluster_id: ArcSwap<Option<String>>,
    /// Idle connections for the proxy's own requests (merged Metadata, producer ids,
    /// coordinators, switch marks). Each is used by one request at a time.
    idle: std::sync::Mutex<Vec<(String, Stream)>>,
    /// TLS to this cluster's brokers, when configured.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl ClusterView {
    /// Fails when the cluster's TLS files cannot be read.
    pub fn new(config: ClusterConfig) -> Result<ClusterView, String> {
        let tls = match &config.tls {
            Some(t) => Some(
                crate::tls::client_config(t)
                    .map_err(|e| format!("cluster `{}`: {e}", config.name))?,
            ),
            None => None,
        };
        Ok(ClusterView {
            tls,
            config,
            brokers: ArcSwap::from_pointee(BTreeMap::new()),
            api_ranges: ArcSwap::from_pointee(None),
            controller: AtomicI32::new(-1),
            reachable: AtomicBool::new(false),
            last_error: ArcSwap::from_pointee(None),
            upstream_cluster_id: ArcSwap::from_pointee(None),
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Opens a connection to one of this cluster's brokers: TCP, then TLS when the
    /// cluster is configured with it, then the SASL login when it has credentials.
    pub async fn open(&self, addr: &str, timeout: Duration) -> Result<Stream, UpstreamError> {
        let tcp = connect(addr, timeout).await?;
        let mut stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Stream::tls(tcp, config, host, timeout)
                    .await
                    .map_err(|e| UpstreamError::Tls {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    })?
            }
        };
        if let Some(sasl) = &self.config.sasl {
            login(&mut stream, addr, sasl, timeout).await?;
        }
        Ok(stream)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn brokers(&self) -> Arc<BTreeMap<i32, BrokerAddr>> {
        self.brokers.load_full()
    }

    pub fn broker(&self, id: i32) -> Option<BrokerAddr> {
        self.brokers.load().get(&id).cloned()
    }

    pub fn api_ranges(&self) -> Option<ApiRanges> {
        (**self.api_ranges.load()).clone()
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub fn controller(&self) -> i32 {
        self.controller.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        (**self.last_error.load()).clone()
    }

    pub fn upstream_cluster_id(&self) -> Option<String> {
        (**self.upstream_cluster_id.load()).clone()
    }

    /// Addresses to try, known brokers first (they reflect the live cluster), then the
    /// configured bootstrap list.
    pub fn candidate_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self.brokers.load().values().map(|b| b.addr()).collect();
        for b in &self.config.bootstrap {
            if !addrs.contains(b) {
                addrs.push(b.clone());
            }
        }
        addrs
    }

    /// Sends one request of the proxy's own to any live broker of this cluster and
    /// returns the decoded response. Connections are pooled; a connection that fails
    /// is dropped and the next candidate broker is tried.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &self,
        api: ApiKey,
        version: i16,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, UpstreamError> {
        self.call_to(None, api, version, body, timeout).await
    }

    /// Like [`call`](Self::call), to one broker (`Some(id)`) or any (`None`).
    pub async fn call_to<Req: Encodable, Resp: Decodable>(
        &self,
        broker: Option<i32>,
        api: ApiKey,
        version: i16,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, UpstreamError> {
        let only = match broker {
            Some(id) => Some(
                self.broker(id)
                    .ok_or_else(|| UpstreamError::NoBroker(format!("{} broker {id}", self.name())))?
                    .addr(),
            ),
            None => None,
        };
        let pooled = {
            let mut idle = self.idle.lock().expect("pool lock");
            match &only {
                Some(a) => idle
                    .iter()
                    .position(|(addr, _)| addr == a)
                    .map(|i| idle.swap_remove(i)),
                None => idle.pop(),
            }
        };
        if let Some((addr, mut stream)) = pooled {
            if let Ok(resp) = round_trip(&mut stream, &addr, api, version, body, timeout).await {
                self.give_back(addr, stream);
                return Ok(resp);
            }
        }
        let mut last = UpstreamError::NoBroker(self.name().to_string());
        let candidates = match only {
            Some(a) => vec![a],
            None => self.candidate_addrs(),
        };
        for addr in candidates {
            let attempt = async {
                let mut stream = self.open(&addr, timeout).await?;
                let resp = round_trip(&mut stream, &addr, api, version, body, timeout).await?;
                Ok::<_, UpstreamError>((stream, resp))
            };
            match attempt.await {
                Ok((stream, resp)) => {
                    self.give_back(addr, stream);
                    return Ok(resp);
                }
                Err(e) => {
                    metrics::upstream_error(self.name(), e.kind());
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn give_back(&self, addr: String, stream: Stream) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < 8 {
            idle.push((addr, stream));
        }
    }

    /// The highest version of `api` this cluster supports, capped at `cap`.
    pub fn version_for(&self, api: ApiKey, cap: i16) -> Option<i16> {
        let ranges = self.api_ranges.load();
        let (min, max) = *(**ranges).as_ref()?.get(&(api as i16))?;
        let v = max.min(cap);
        (v >= min).then_some(v)
    }

    /// Asks the cluster for its brokers and API versions. Tries every candidate
    /// address until one answers.
    pub async fn refresh(&self, timeout: Duration) -> Result<(), UpstreamError> {
        let mut last = UpstreamError::NoBroker(self.name().to_string());
        for addr in self.candidate_addrs() {
            match self.refresh_from(&addr, timeout).await {
                Ok(()) => {
                    self.reachable.store(true, Ordering::Relaxed);
                    self.last_error.store(Arc::new(None));
                    return Ok(());
                }
                Err(e) => {
                    metrics::upstream_error(self.name(), e.kind());
                    last = e;
                }
            }
        }
        self.reachable.store(false, Ordering::Relaxed);
        self.last_error.store(Arc::new(Some(last.to_string())));
        Err(last)
    }

    async fn refresh_from(&self, addr: &str, timeout: Duration) -> Result<(), UpstreamError> {
        let mut stream = self.open(addr, timeout).await?;
        // v0 is understood by every broker; newer versions add nothing the proxy
        // needs for discovery.
        let versions: ApiVersionsResponse = round_trip(
            &mut stream,
            addr,
            ApiKey::ApiVersions,
            0,
            &ApiVersionsRequest::default(),
            timeout,
        )
        .await?;
        if versions.error_code != 0 {
            return Err(UpstreamError::Protocol {
                addr: addr.into(),
                reason: format!("ApiVersions error {}", versions.error_code),
            });
        }
        let ranges: ApiRanges = versions
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        let metadata_version = ranges
            .get(&(ApiKey::Metadata as i16))
            .map(|r| r.1.min(9))
            .unwrap_or(1);
        let metadata: MetadataResponse = round_trip(
            &mut stream,
            addr,
            ApiKey::Metadata,
            metadata_version,
            &MetadataRequest::default().with_topics(Some(vec![])),
            timeout,
        )
        .await?;
        let brokers: BTreeMap<i32, BrokerAddr> = metadata
            .brokers
            .iter()
            .map(|b| {
                (
                    b.node_id.0,
                    BrokerAddr {
                        id: b.node_id.0,
                        host: b.host.to_string(),
                        port: b.port,
                        rack: b.rack.as_ref().map(|r| r.to_string()),
                    },
                )
            })
            .collect();
        if brokers.is_empty() {
            return Err(UpstreamError::Protocol {
                addr: addr.into(),
                reason: "metadata lists no brokers".into(),
            });
        }
        // Merge: keep brokers that are temporarily absent (down) so their virtual
        // listeners stay; a broker's address is replaced when it changes.
        let mut merged = (**self.brokers.load()).clone();
        merged.extend(brokers);
        self.brokers.store(Arc::new(merged));
        self.controller
            .store(metadata.controller_id.0, Ordering::Relaxed);
        self.upstream_cluster_id.store(Arc::new(
            metadata.cluster_id.as_ref().map(|c| c.to_string()),
        ));
        // Brokers of one cluster can run different versions during a rolling
        // upgrade: keep the intersection of everything seen.
        let merged_ranges = match &**self.api_ranges.load() {
            Some(old) => intersect_ranges(old, &ranges),
            None => ranges,
        };
        self.api_ranges.store(Arc::new(Some(merged_ranges)));
        Ok(())
    }
}

/// Logs in to a broker with the cluster's SASL settings (SaslHandshake v1, then
/// SaslAuthenticate v1). The password is read now, so a rotated secret is used by
/// the next connection.
async fn login(
    stream: &mut Stream,
    addr: &str,
    sasl: &crate::config::UpstreamSasl,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    use kafka_protocol::messages::{
        SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
        SaslHandshakeResponse,
    };
    let fail = |reason: String| UpstreamError::Auth {
        addr: addr.to_string(),
        reason,
    };
    let password = match (&sasl.password_env, &sasl.password_file) {
        (Some(var), _) => std::env::var(var)
            .map_err(|_| fail(format!("environment variable {var} is not set")))?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| fail(format!("{}: {e}", path.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, None) => return Err(fail("no password source".into())),
    };
    let hs: SaslHandshakeResponse = round_trip(
        stream,
        addr,
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_string(sasl.mechanism.clone())),
        timeout,
    )
    .await?;
    if hs.error_code != 0 {
        return Err(fail(format!(
            "broker does not offer {} (error {}; offers {:?})",
            sasl.mechanism, hs.error_code, hs.mechanisms
        )));
    }
    async fn authenticate(
        stream: &mut Stream,
        addr: &str,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<SaslAuthenticateResponse, UpstreamError> {
        let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes));
        round_trip(stream, addr, ApiKey::SaslAuthenticate, 1, &req, timeout).await
    }
    let check = |r: &SaslAuthenticateResponse| {
        if r.error_code != 0 {
            Err(fail(format!(
                "error {}: {}",
                r.error_code,
                r.error_message.as_deref().unwrap_or("")
            )))
        } else {
            Ok(())
        }
    };
    if sasl.mechanism == crate::sasl::PLAIN {
        let msg = format!("\0{}\0{password}", sasl.username).into_bytes();
        let r = authenticate(stream, addr, msg, timeout).await?;
        return check(&r);
    }
    let (mut scram, first) =
        crate::sasl::ScramClient::new(&sasl.mechanism, &sasl.username, &password)
            .ok_or_else(|| fail(format!("unsupported mechanism {}", sasl.mechanism)))?;
    let r = authenticate(stream, addr, first, timeout).await?;
    check(&r)?;
    // The key derivation is seconds of CPU at high iteration counts: off the
    // runtime threads, which serve every client.
    let server_first = r.auth_bytes.clone();
    let (scram, fin) = tokio::task::spawn_blocking(move || {
        let fin = scram.respond(&server_first);
        (scram, fin)
    })
    .await
    .map_err(|e| fail(format!("key derivation task: {e}")))?;
    let fin = fin.map_err(fail)?;
    let r = authenticate(stream, addr, fin, timeout).await?;
    check(&r)?;
    scram.verify(&r.auth_bytes).map_err(fail)
}

/// Per-API intersection of two range maps; APIs missing from either side are dropped.
pub fn intersect_ranges(a: &ApiRanges, b: &ApiRanges) -> ApiRanges {
    a.iter()
        .filter_map(|(k, (amin, amax))| {
            let (bmin, bmax) = b.get(k)?;
            let (min, max) = ((*amin).max(*bmin), (*amax).min(*bmax));
            (min <= max).then_some((*k, (min, max)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_intersection_drops_disjoint_and_missing() {
        let a: ApiRanges = [(0, (0, 8)), (1, (0, 11)), (3, (0, 9)), (68, (0, 1))].into();
        let b: ApiRanges = [(0, (3, 9)), (1, (12, 13)), (3, (0, 12))].into();
        let c = intersect_ranges(&a, &b);
        assert_eq!(c, [(0, (3, 8)), (3, (0, 9))].into());
    }
}
