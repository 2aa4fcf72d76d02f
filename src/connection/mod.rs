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
//! stops reading, which pushes back on the client through TCP. Before it waits for a
//! slot it flushes what it has buffered for the upstream, since the answers that
//! free slots can only come for requests the upstream has received (a client may
//! pipeline any number of requests before reading an answer).
//!
//! Each client connection has its own upstream connection (to the one broker its
//! virtual broker stands for), so a slow or failing client never delays another and
//! per-connection ordering, which idempotent producers rely on, is preserved. That
//! upstream connection is opened with the first request that must be forwarded, so a
//! client that only connects, or has not logged in, costs one descriptor and no
//! broker connection.
//!
//! Every resource a client can make the proxy hold is bounded: read buffers grow
//! with the bytes that have arrived (never with a declared frame length) and draw on
//! a process-wide [`BufferBudget`] beyond a small allowance; frames before a SASL
//! login are limited to `max_unauthenticated_frame_bytes`; a SASL client must log in
//! within `login_timeout`; a connection with nothing in flight and no complete
//! request for `idle_timeout` is closed; an upstream answer must come within
//! `request_timeout` plus the wait the request asked for; a response the client does
//! not read within `request_timeout` closes the connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::codec::{self, FrameError, RequestFrame};
use crate::handlers::sasl::SaslState;
use crate::handlers::{self, api_versions, Action, Forwarded, VirtualMap};
use crate::handlers::{RouteError, Session};
use crate::metrics;
use crate::proxy::Proxy;
use crate::upstream::stream::{ReadHalf, WriteHalf};
use crate::upstream::{ClusterView, UpstreamError};

mod buffer;
mod pump;
mod reader;

pub use buffer::BufferBudget;
use buffer::*;
use pump::*;
use reader::*;

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
    #[error("client did not log in within {0:?}")]
    LoginTimeout(Duration),
    #[error("connection idle for {0:?}")]
    Idle(Duration),
    #[error("client request could not be decoded: {0}")]
    Decode(#[from] codec::DecodeError),
    #[error("response could not be rewritten: {0}")]
    Rewrite(codec::DecodeError),
    #[error("client i/o: {0}")]
    ClientIo(std::io::Error),
    #[error("client did not read its response within {0:?}")]
    ClientStalled(Duration),
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("upstream {addr} closed the connection with {pending} responses outstanding")]
    UpstreamClosed { addr: String, pending: usize },
    #[error("upstream {addr} did not answer {api:?} within {after:?}")]
    UpstreamTimeout {
        addr: String,
        api: ApiKey,
        after: Duration,
    },
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
            | ConnectionError::LoginTimeout(_)
            | ConnectionError::Idle(_)
            | ConnectionError::Decode(_)
            | ConnectionError::ClientIo(_)
            | ConnectionError::ClientStalled(_) => "downstream",
            ConnectionError::Rewrite(_) => "proxy",
            ConnectionError::Upstream(_)
            | ConnectionError::UpstreamClosed { .. }
            | ConnectionError::UpstreamTimeout { .. }
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
        /// When the upstream's answer is overdue.
        deadline: Instant,
    },
}

/// What the reader and the pump both know about the connection's traffic, for the
/// idle timeout.
struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last complete request or response.
    last_ms: AtomicU64,
    /// Requests read whose answers have not been written yet.
    outstanding: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Decrements the connection gauge however the connection's task ends, a panic
/// included.
struct Gauge<'a>(&'a str);

impl<'a> Gauge<'a> {
    fn open(listener: &'a str) -> Gauge<'a> {
        metrics::connection_opened(listener);
        Gauge(listener)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        metrics::connection_closed(self.0);
    }
}

/// Serves one client connection until it closes, the upstream fails, or shutdown.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S>(
    proxy: Arc<Proxy>,
    client: S,
    peer: SocketAddr,
    listener: String,
    target: Target,
    shutdown: CancellationToken,
    principal: Option<String>,
    budget: BufferBudget,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _gauge = Gauge::open(&listener);
    let result = run(proxy, client, peer, &target, shutdown, principal, budget).await;
    match result {
        Ok(()) => tracing::debug!(%peer, listener, "connection closed"),
        Err(e @ ConnectionError::Idle(_)) => {
            tracing::debug!(%peer, listener, reason = %e, "connection closed")
        }
        // The client hung up, possibly with answers still owed: its choice, not a
        // fault of the proxy or the broker.
        Err(ConnectionError::ClientIo(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            tracing::debug!(%peer, listener, reason = %e, "connection closed by the client")
        }
        Err(e) => {
            tracing::warn!(%peer, listener, side = e.side(), reason = %e, "connection closed")
        }
    }
}

/// The cluster a connection's target belongs to; no I/O.
fn target_cluster(proxy: &Proxy, target: &Target) -> Result<Arc<ClusterView>, UpstreamError> {
    match target {
        Target::Bootstrap => {
            let routes = proxy.routes();
            proxy
                .cluster(&routes.default_cluster)
                .cloned()
                .ok_or_else(|| UpstreamError::NoBroker(routes.default_cluster.clone()))
        }
        Target::Broker { virtual_id } => proxy
            .resolve_virtual(*virtual_id)
            .map(|(c, _)| c)
            .ok_or_else(|| UpstreamError::NoBroker(format!("virtual broker {virtual_id}"))),
    }
}

async fn connect_upstream(
    proxy: &Proxy,
    cluster: &ClusterView,
    target: &Target,
) -> Result<(crate::upstream::Stream, String), UpstreamError> {
    let timeout = proxy.config().proxy.connect_timeout;
    let addrs = match target {
        Target::Bootstrap => cluster.candidate_addrs(),
        Target::Broker { virtual_id } => {
            let upstream_id = virtual_id - cluster.config.node_id_offset;
            let broker = cluster.broker(upstream_id).ok_or_else(|| {
                UpstreamError::NoBroker(format!("{} broker {upstream_id}", cluster.name()))
            })?;
            vec![broker.addr()]
        }
    };
    let mut last = UpstreamError::NoBroker(cluster.name().to_string());
    for addr in addrs {
        match cluster.open(&addr, timeout).await {
            Ok(s) => return Ok((s, addr)),
            Err(e) => {
                metrics::upstream_error(cluster.name(), e.kind());
                last = e;
            }
        }
    }
    Err(last)
}

/// What both halves of a connection know about the upstream they talk to.
struct Link {
    view: Arc<ClusterView>,
    cluster: String,
    /// Set when the upstream connection opens (with the first forwarded request).
    addr: OnceLock<String>,
    map: VirtualMap,
    max_frame: usize,
    request_timeout: Duration,
}

impl Link {
    fn addr(&self) -> String {
        self.addr
            .get()
            .cloned()
            .unwrap_or_else(|| format!("{} (not connected)", self.cluster))
    }

    /// A failed write to the upstream: counted, and named with its address.
    fn write_error(&self, source: std::io::Error) -> ConnectionError {
        metrics::upstream_error(&self.cluster, "io");
        ConnectionError::Upstream(UpstreamError::Io {
            addr: self.addr(),
            source,
        })
    }
}

/// The reader's side of the upstream connection: not open until a request must be
/// forwarded.
struct UpstreamWriter {
    writer: Option<BufWriter<WriteHalf>>,
    /// Hands the read half to the pump when the connection opens.
    to_pump: Option<oneshot::Sender<ReadHalf>>,
}

impl UpstreamWriter {
    /// The upstream connection, opened now if this is the first forwarded request.
    /// An unreachable broker closes the client connection, exactly as the broker
    /// itself would have refused it: clients treat that as retriable, refresh
    /// metadata and go to the new leader.
    async fn open(
        &mut self,
        proxy: &Proxy,
        link: &Link,
        target: &Target,
    ) -> Result<&mut BufWriter<WriteHalf>, ConnectionError> {
        if self.writer.is_none() {
            let (stream, addr) = connect_upstream(proxy, &link.view, target).await?;
            tracing::debug!(upstream = %addr, cluster = %link.cluster, "connected");
            let _ = link.addr.set(addr);
            let (up_r, up_w) = stream.into_split();
            if let Some(to_pump) = self.to_pump.take() {
                let _ = to_pump.send(up_r);
            }
            self.writer = Some(BufWriter::with_capacity(UPSTREAM_WRITE_BUF, up_w));
        }
        Ok(self.writer.as_mut().expect("opened above"))
    }

    async fn flush(&mut self, link: &Link) -> Result<(), ConnectionError> {
        match &mut self.writer {
            Some(w) => w.flush().await.map_err(|e| link.write_error(e)),
            None => Ok(()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run<S>(
    proxy: Arc<Proxy>,
    client: S,
    peer: SocketAddr,
    target: &Target,
    shutdown: CancellationToken,
    principal: Option<String>,
    budget: BufferBudget,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cluster = target_cluster(&proxy, target)?;
    let config = proxy.config();
    let link = Arc::new(Link {
        view: cluster.clone(),
        cluster: cluster.name().to_string(),
        addr: OnceLock::new(),
        map: proxy.virtual_map(&cluster),
        max_frame: config.proxy.max_frame_bytes,
        request_timeout: config.proxy.request_timeout,
    });

    let (client_r, client_w) = tokio::io::split(client);
    let (tx, rx) = mpsc::channel::<Pending>(config.proxy.max_in_flight);
    let (up_tx, up_rx) = oneshot::channel::<ReadHalf>();
    // Cancelled by the pump when it fails, so the reader stops too.
    let conn_done = CancellationToken::new();
    let activity = Arc::new(Activity::new());

    let pump = tokio::spawn(pump(
        rx,
        up_rx,
        client_w,
        link.clone(),
        conn_done.clone(),
        budget.clone(),
        activity.clone(),
    ));
    let mut session = Session::new(peer.ip(), principal);
    let mut reader = Reader {
        proxy: &proxy,
        target,
        link: &link,
        tx,
        upstream: UpstreamWriter {
            writer: None,
            to_pump: Some(up_tx),
        },
        buf: ReadBuffer::new(budget),
        activity: &activity,
        metrics: metrics::ConnectionMetrics::new(&link.cluster, "in"),
    };
    let read_result = reader
        .run(&mut session, client_r, &shutdown, &conn_done)
        .await;
    // The upstream's write half stays open until the pump is done: closing it
    // would end the broker's side too (Kafka brokers close a connection whose
    // client half-closes), dropping the answers still owed. A client that sends a
    // request and hangs up at once (librdkafka retiring its bootstrap connection)
    // would otherwise look like a broker failure.
    let upstream_w = reader.upstream.writer.take();
    drop(reader);
    match read_result {
        Ok(()) => {
            // Client done or shutdown: let the pump answer everything in flight.
            let answered = match pump.await {
                Ok(r) => r,
                Err(_) => Ok(()),
            };
            drop(upstream_w);
            answered
        }
        Err(e) => {
            pump.abort();
            Err(e)
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_declared_length_is_never_reserved() {
        let mut b = ReadBuffer::new(BufferBudget::new(1 << 30));
        // A client announced 100 MiB and sent nothing else yet.
        b.make_room(100 << 20).await;
        assert!(b.buf.capacity() <= 8 * 1024, "{}", b.buf.capacity());
        // It grows by what has arrived, at most one step at a time.
        b.buf.extend_from_slice(&[0; 40 * 1024]);
        b.make_room(100 << 20).await;
        assert!(b.buf.capacity() <= 40 * 1024 + READ_STEP * 2);
    }

    #[tokio::test]
    async fn buffers_beyond_their_allowance_wait_for_the_budget_and_give_it_back() {
        let budget = BufferBudget::new(512 * 1024);
        let mut a = ReadBuffer::new(budget.clone());
        a.buf.extend_from_slice(&[0; 30 * 1024]);
        a.make_room(1 << 20).await;
        assert_eq!(budget.available_kib(), 512, "within the allowance");
        a.buf.extend_from_slice(&vec![0; 200 * 1024]);
        a.make_room(1 << 20).await;
        let drawn = 512 - budget.available_kib();
        assert!(drawn >= 200, "drew {drawn} KiB");

        let mut b = ReadBuffer::new(budget.clone());
        b.buf.extend_from_slice(&vec![0; 400 * 1024]);
        let waiting = tokio::time::timeout(Duration::from_millis(50), b.make_room(1 << 20)).await;
        assert!(waiting.is_err(), "the budget is spent: b must wait");
        // a's frame is taken; its memory and budget come back, and b proceeds.
        a.buf.clear();
        a.settle();
        assert_eq!(budget.available_kib(), 512);
        b.make_room(1 << 20).await;
        assert!(b.held_kib() >= 336);
    }
}
