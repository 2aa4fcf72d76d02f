//! One task pair per client socket.
//!
//! The *reader* reads client frames, decides what to do with each request (answer,
//! forward, forward rewritten) and writes forwarded requests to the connection's own
//! upstream socket. The *pump* writes responses back to the client in request order:
//! it walks a bounded queue of pending entries, each either a ready answer or a
//! promise of the next upstream response. Kafka answers requests on a connection in
//! order, so a FIFO is the whole correlation machinery; the correlation id is still
//! checked on every response, and a mismatch closes the connection.
//!
//! The queue bound is the per-connection in-flight limit: when it is full the reader
//! stops reading, which pushes back on the client through TCP.
//!
//! Each client connection has its own upstream connection (to the one broker its
//! virtual broker stands for), so a slow or failing client never delays another and
//! per-connection ordering, which idempotent producers rely on, is preserved.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::codec::{self, FrameError, RequestFrame};
use crate::handlers::routing::{self, RouteError, Session};
use crate::handlers::sasl::SaslState;
use crate::handlers::{self, api_versions, Action, Forwarded, VirtualMap};
use crate::metrics;
use crate::proxy::Proxy;
use crate::upstream::stream::{ReadHalf, WriteHalf};
use crate::upstream::{ClusterView, Stream, UpstreamError};

/// Which upstream a client connection stands in front of.
#[derive(Debug, Clone)]
pub enum Target {
    /// The bootstrap address: any live broker of the default cluster.
    Bootstrap,
    /// A virtual broker: exactly one upstream broker.
    Broker { virtual_id: i32 },
}

/// Why a client connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("client sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("client used {api:?} v{version}, which is not advertised")]
    Unsupported { api: ApiKey, version: i16 },
    #[error("client sent {0:?} before authenticating")]
    Unauthenticated(ApiKey),
    #[error("client request could not be decoded: {0}")]
    Decode(#[from] codec::DecodeError),
    #[error("response could not be rewritten: {0}")]
    Rewrite(codec::DecodeError),
    #[error("client i/o: {0}")]
    ClientIo(std::io::Error),
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("upstream {addr} closed the connection with {pending} responses outstanding")]
    UpstreamClosed { addr: String, pending: usize },
    #[error("upstream {addr} answered correlation id {got}, expected {expected}")]
    CorrelationMismatch {
        addr: String,
        got: i32,
        expected: i32,
    },
}

impl ConnectionError {
    /// Whose fault it was, for logs.
    pub fn side(&self) -> &'static str {
        match self {
            ConnectionError::Frame(_)
            | ConnectionError::Unsupported { .. }
            | ConnectionError::Unauthenticated(_)
            | ConnectionError::Decode(_)
            | ConnectionError::ClientIo(_) => "downstream",
            ConnectionError::Rewrite(_) => "proxy",
            ConnectionError::Upstream(_)
            | ConnectionError::UpstreamClosed { .. }
            | ConnectionError::CorrelationMismatch { .. } => "upstream",
        }
    }
}

/// One response the pump owes the client, in request order.
enum Pending {
    Local {
        frame: Bytes,
        api: &'static str,
        started: Instant,
    },
    Upstream {
        correlation_id: i32,
        client_api: ApiKey,
        client_version: i16,
        forwarded: Forwarded,
        started: Instant,
    },
}

/// Serves one client connection until it closes, the upstream fails, or shutdown.
pub async fn serve<S>(
    proxy: Arc<Proxy>,
    client: S,
    peer: SocketAddr,
    listener: String,
    target: Target,
    shutdown: CancellationToken,
    principal: Option<String>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    metrics::connection_opened(&listener);
    let result = run(proxy, client, peer, &target, shutdown, principal).await;
    metrics::connection_closed(&listener);
    match result {
        Ok(()) => tracing::debug!(%peer, listener, "connection closed"),
        Err(e) => {
            tracing::warn!(%peer, listener, side = e.side(), reason = %e, "connection closed")
        }
    }
}

async fn connect_upstream(
    proxy: &Proxy,
    target: &Target,
) -> Result<(Arc<ClusterView>, Stream, String), UpstreamError> {
    let timeout = proxy.config().proxy.connect_timeout;
    match target {
        Target::Bootstrap => {
            let routes = proxy.routes();
            let cluster = proxy
                .cluster(&routes.default_cluster)
                .cloned()
                .ok_or_else(|| UpstreamError::NoBroker(routes.default_cluster.clone()))?;
            let mut last = UpstreamError::NoBroker(cluster.name().to_string());
            for addr in cluster.candidate_addrs() {
                match cluster.open(&addr, timeout).await {
                    Ok(s) => return Ok((cluster, s, addr)),
                    Err(e) => {
                        metrics::upstream_error(cluster.name(), e.kind());
                        last = e;
                    }
                }
            }
            Err(last)
        }
        Target::Broker { virtual_id } => {
            let (cluster, upstream_id) = proxy
                .resolve_virtual(*virtual_id)
                .ok_or_else(|| UpstreamError::NoBroker(format!("virtual broker {virtual_id}")))?;
            let broker = cluster.broker(upstream_id).ok_or_else(|| {
                UpstreamError::NoBroker(format!("{} broker {upstream_id}", cluster.name()))
            })?;
            let addr = broker.addr();
            match cluster.open(&addr, timeout).await {
                Ok(s) => Ok((cluster, s, addr)),
                Err(e) => {
                    metrics::upstream_error(cluster.name(), e.kind());
                    Err(e)
                }
            }
        }
    }
}

/// What both halves of a connection know about the upstream they talk to.
struct Link {
    view: Arc<ClusterView>,
    cluster: String,
    addr: String,
    map: VirtualMap,
    max_frame: usize,
}

impl Link {
    /// A failed write to the upstream: counted, and named with its address.
    fn write_error(&self, source: std::io::Error) -> ConnectionError {
        metrics::upstream_error(&self.cluster, "io");
        ConnectionError::Upstream(UpstreamError::Io {
            addr: self.addr.clone(),
            source,
        })
    }
}

async fn run<S>(
    proxy: Arc<Proxy>,
    client: S,
    peer: SocketAddr,
    target: &Target,
    shutdown: CancellationToken,
    principal: Option<String>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // An unreachable broker closes the client connection at once, exactly as the
    // broker itself would have refused it: clients treat that as retriable, refresh
    // metadata and go to the new leader.
    let (cluster, upstream, addr) = connect_upstream(&proxy, target).await?;
    let config = proxy.config();
    tracing::debug!(%peer, upstream = %addr, cluster = cluster.name(), "connected");
    let link = Arc::new(Link {
        view: cluster.clone(),
        cluster: cluster.name().to_string(),
        addr,
        map: proxy.virtual_map(&cluster),
        max_frame: config.proxy.max_frame_bytes,
    });

    let (client_r, client_w) = tokio::io::split(client);
    let (up_r, up_w) = upstream.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(config.proxy.max_in_flight);
    // Cancelled by the pump when it fails, so the reader stops too.
    let conn_done = CancellationToken::new();

    let pump = tokio::spawn(pump(rx, up_r, client_w, link.clone(), conn_done.clone()));
    let mut session = Session::new(peer.ip(), principal);
    let read_result = read_loop(
        &proxy,
        &mut session,
        client_r,
        up_w,
        tx,
        &link,
        &shutdown,
        &conn_done,
    )
    .await;
    match read_result {
        Ok(()) => {
            // Client done or shutdown: let the pump answer everything in flight.
            match pump.await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
        Err(e) => {
            pump.abort();
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<R>(
    proxy: &Proxy,
    session: &mut Session,
    mut client_r: R,
    up_w: WriteHalf,
    tx: mpsc::Sender<Pending>,
    link: &Link,
    shutdown: &CancellationToken,
    conn_done: &CancellationToken,
) -> Result<(), ConnectionError>
where
    R: AsyncRead + Unpin,
{
    let mut metrics = metrics::ConnectionMetrics::new(&link.cluster, "in");
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut up_w = BufWriter::with_capacity(64 * 1024, up_w);
    loop {
        // Handle every complete frame already buffered before reading more.
        while let Some(raw) = codec::take_frame(&mut buf, link.max_frame)
            .inspect_err(|e| metrics::rejected_frame(reject_reason(e)))?
        {
            let started = Instant::now();
            metrics.bytes(raw.len() + 4);
            let frame = codec::parse_request(raw)
                .inspect_err(|e| metrics::rejected_frame(reject_reason(e)))?;
            let Ok(permit) = tx.reserve().await else {
                return Ok(()); // pump gone; its error is reported there
            };
            match decide(proxy, session, &frame, link).await? {
                Action::Discard => metrics.request(
                    handlers::api_name(frame.api),
                    "ok",
                    started.elapsed().as_secs_f64(),
                ),
                Action::Respond(out) => {
                    permit.send(Pending::Local {
                        frame: out,
                        api: handlers::api_name(frame.api),
                        started,
                    });
                    if let SaslState::Failed(reason) = &session.sasl {
                        // The refusal is the last answer: let the pump send it,
                        // then close.
                        metrics::rejected_frame("sasl_authentication");
                        tracing::warn!(peer = %session.peer_ip, reason = %reason, "SASL authentication failed; connection closed");
                        return Ok(());
                    }
                }
                Action::Forward {
                    frame: out,
                    response,
                } => {
                    up_w.write_all(&codec::length_prefix(out.len()))
                        .await
                        .map_err(|e| link.write_error(e))?;
                    up_w.write_all(&out)
                        .await
                        .map_err(|e| link.write_error(e))?;
                    match response {
                        Some(forwarded) => permit.send(Pending::Upstream {
                            correlation_id: frame.correlation_id(),
                            client_api: frame.api,
                            client_version: frame.version(),
                            forwarded,
                            started,
                        }),
                        // No response will come (Produce acks=0): done once written.
                        None => metrics.request(
                            handlers::api_name(frame.api),
                            "ok",
                            started.elapsed().as_secs_f64(),
                        ),
                    }
                }
            }
        }
        // Nothing complete is buffered: push what was forwarded, then read.
        up_w.flush().await.map_err(|e| link.write_error(e))?;
        reserve_for_frame(&mut buf, link.max_frame);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = conn_done.cancelled() => return Ok(()),
            n = client_r.read_buf(&mut buf) => {
                match n {
                    Ok(0) => {
                        if !buf.is_empty() {
                            metrics::rejected_frame("truncated");
                            return Err(ConnectionError::Frame(FrameError::Truncated(buf.len())));
                        }
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) => return Err(ConnectionError::ClientIo(e)),
                }
            }
        }
    }
}

/// Makes room for the rest of the frame being read in one step (its length is known
/// and already checked against the limit), so a large Fetch response is read with
/// few syscalls and no repeated buffer growth.
fn reserve_for_frame(buf: &mut BytesMut, max_frame: usize) {
    let need = match codec::check_frame(buf, max_frame) {
        Ok(codec::Framing::Incomplete(n)) => n,
        _ => 0,
    };
    buf.reserve(need.max(16 * 1024));
}

fn reject_reason(e: &FrameError) -> &'static str {
    match e {
        FrameError::NegativeLength(_) => "negative_length",
        FrameError::Oversize { .. } => "oversize",
        FrameError::TooShort(_) => "too_short",
        FrameError::Truncated(_) => "truncated",
        FrameError::UnknownApiKey(_) => "unknown_api_key",
        FrameError::BadHeader { .. } => "bad_header",
    }
}

/// Version gate, then routing across clusters, then the handler. ApiVersions is
/// always answered, even at versions the proxy does not know, because that is how
/// clients discover what to use.
async fn decide(
    proxy: &Proxy,
    session: &mut Session,
    frame: &RequestFrame,
    link: &Link,
) -> Result<Action, ConnectionError> {
    let map = &link.map;
    let table = proxy.api_table();
    let sasl = proxy.sasl();
    if frame.api == ApiKey::ApiVersions {
        if sasl.is_some() {
            let mut with_sasl = (**table).clone();
            for (api, min, max) in handlers::sasl::ADVERTISED {
                with_sasl.insert(*api as i16, (*min, *max));
            }
            return Ok(Action::Respond(api_versions::respond(frame, &with_sasl)?));
        }
        return Ok(Action::Respond(api_versions::respond(frame, &table)?));
    }
    if let Some(server) = &sasl {
        match (&session.sasl, frame.api) {
            (_, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate) => {
                return Ok(Action::Respond(
                    handlers::sasl::handle(server, session, frame).await?,
                ));
            }
            (SaslState::Authenticated, _) => {}
            _ => {
                metrics::rejected_frame("unauthenticated");
                return Err(ConnectionError::Unauthenticated(frame.api));
            }
        }
    }
    if !api_versions::allowed(&table, frame.api, frame.version()) {
        metrics::rejected_frame("unsupported_version");
        return Err(ConnectionError::Unsupported {
            api: frame.api,
            version: frame.version(),
        });
    }
    if proxy.multi_cluster() {
        // One load of the routing table for the whole request (DESIGN.md decision 3).
        let mut ctx = routing::Ctx {
            proxy,
            routes: proxy.routes(),
            cluster: &link.view,
            map,
            session,
        };
        drop(table);
        match routing::route(&mut ctx, frame).await {
            Ok(Some(action)) => return Ok(action),
            Ok(None) => {}
            Err(RouteError::Decode(e)) => return Err(ConnectionError::Decode(e)),
            Err(RouteError::Upstream(e)) => return Err(ConnectionError::Upstream(e)),
        }
    }
    Ok(handlers::handle(frame, map)?)
}

async fn pump<W>(
    mut rx: mpsc::Receiver<Pending>,
    mut up_r: ReadHalf,
    client_w: W,
    link: Arc<Link>,
    conn_done: CancellationToken,
) -> Result<(), ConnectionError>
where
    W: AsyncWrite + Unpin,
{
    let _guard = conn_done.clone().drop_guard();
    let mut metrics = metrics::ConnectionMetrics::new(&link.cluster, "out");
    let mut client_w = BufWriter::with_capacity(64 * 1024, client_w);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(pending) = rx.recv().await {
        let (out, api, started) = match pending {
            Pending::Local {
                frame,
                api,
                started,
            } => (frame, api, started),
            Pending::Upstream {
                correlation_id,
                client_api,
                client_version,
                forwarded,
                started,
            } => {
                let frame = read_upstream_frame(&mut up_r, &mut buf, &link, rx.len() + 1)
                    .await
                    .inspect_err(|_| metrics::upstream_error(&link.cluster, "io"))?;
                let got = codec::response_correlation_id(&frame).unwrap_or(i32::MIN);
                if got != correlation_id {
                    metrics::upstream_error(&link.cluster, "correlation");
                    return Err(ConnectionError::CorrelationMismatch {
                        addr: link.addr.clone(),
                        got,
                        expected: correlation_id,
                    });
                }
                let out = handlers::rewrite_response(
                    &forwarded,
                    client_api,
                    client_version,
                    frame,
                    &link.map,
                )
                .map_err(|e| {
                    // The upstream sent something the proxy cannot read; the
                    // client cannot be given a half-rewritten answer.
                    metrics::upstream_error(&link.cluster, "decode");
                    ConnectionError::Rewrite(e)
                })?;
                (out, handlers::api_name(client_api), started)
            }
        };
        metrics.bytes(out.len() + 4);
        let write = async {
            client_w.write_all(&codec::length_prefix(out.len())).await?;
            client_w.write_all(&out).await?;
            if rx.is_empty() {
                client_w.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        write.await.map_err(ConnectionError::ClientIo)?;
        metrics.request(api, "ok", started.elapsed().as_secs_f64());
    }
    client_w.flush().await.map_err(ConnectionError::ClientIo)?;
    let _ = client_w.shutdown().await;
    Ok(())
}

async fn read_upstream_frame(
    up_r: &mut ReadHalf,
    buf: &mut BytesMut,
    link: &Link,
    pending: usize,
) -> Result<Bytes, ConnectionError> {
    let (addr, max_frame) = (link.addr.as_str(), link.max_frame);
    loop {
        match codec::take_frame(buf, max_frame) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => {
                return Err(ConnectionError::Upstream(UpstreamError::Protocol {
                    addr: addr.into(),
                    reason: e.to_string(),
                }))
            }
        }
        reserve_for_frame(buf, max_frame);
        match up_r.read_buf(buf).await {
            Ok(0) => {
                return Err(ConnectionError::UpstreamClosed {
                    addr: addr.into(),
                    pending,
                })
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ConnectionError::Upstream(UpstreamError::Io {
                    addr: addr.into(),
                    source: e,
                }))
            }
        }
    }
}
