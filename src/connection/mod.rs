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

/// Bytes a connection's read buffer may hold without drawing on the budget: room
/// for the requests and responses of an ordinary client, so the budget only ever
/// sees large frames.
const FREE_BYTES: usize = 64 * 1024;
/// The most a read buffer grows by in one step. A frame's declared length is never
/// reserved up front: a client that announces 100 MiB and sends one byte a second
/// holds one step, not 100 MiB.
const READ_STEP: usize = 64 * 1024;
/// A read buffer larger than this is given back once it is empty, so an idle
/// connection holds no large allocation.
const KEEP_BYTES: usize = 16 * 1024;
/// Write buffers: small responses and requests are coalesced; large ones bypass.
const CLIENT_WRITE_BUF: usize = 16 * 1024;
const UPSTREAM_WRITE_BUF: usize = 32 * 1024;

/// Memory that all connections together may hold for frames being received, beyond
/// [`FREE_BYTES`] each. A connection that needs more waits (and so stops reading:
/// backpressure) until others give some back; its own timeouts still apply.
#[derive(Clone)]
pub struct BufferBudget {
    kib: Arc<Semaphore>,
}

impl BufferBudget {
    pub fn new(bytes: usize) -> BufferBudget {
        BufferBudget {
            kib: Arc::new(Semaphore::new(
                (bytes / 1024).clamp(1, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// KiB of the budget not held by any connection.
    pub fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }
}

/// A read buffer that grows with the bytes that arrive and draws on the budget for
/// whatever it holds beyond [`FREE_BYTES`].
struct ReadBuffer {
    buf: BytesMut,
    budget: BufferBudget,
    held: Option<OwnedSemaphorePermit>,
}

impl ReadBuffer {
    fn new(budget: BufferBudget) -> ReadBuffer {
        ReadBuffer {
            buf: BytesMut::new(),
            budget,
            held: None,
        }
    }

    fn held_kib(&self) -> usize {
        self.held.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Makes room to read more of a frame that is still `need` bytes short, waiting
    /// for budget if the buffer must grow past its allowance.
    async fn make_room(&mut self, need: usize) {
        // Grow by what has arrived so far (doubling), never by what was announced.
        let step = need.clamp(1, self.buf.len().clamp(4096, READ_STEP));
        if self.buf.capacity() - self.buf.len() >= step.min(4096) {
            return;
        }
        let want = self.buf.len() + step;
        if want > FREE_BYTES {
            let kib = (want - FREE_BYTES).div_ceil(1024);
            let more = kib.saturating_sub(self.held_kib());
            if more > 0 {
                let more = u32::try_from(more).unwrap_or(u32::MAX);
                if let Ok(p) = self.budget.kib.clone().acquire_many_owned(more).await {
                    match &mut self.held {
                        Some(h) => h.merge(p),
                        None => self.held = Some(p),
                    }
                }
            }
        }
        self.buf.reserve(step);
    }

    /// After frames were taken off the front: an empty buffer gives its memory and
    /// its budget back.
    fn settle(&mut self) {
        if self.buf.is_empty() {
            self.held = None;
            if self.buf.capacity() > KEEP_BYTES {
                self.buf = BytesMut::new();
            }
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

/// The reading half of one client connection.
struct Reader<'a> {
    proxy: &'a Proxy,
    target: &'a Target,
    link: &'a Link,
    tx: mpsc::Sender<Pending>,
    upstream: UpstreamWriter,
    buf: ReadBuffer,
    activity: &'a Activity,
    metrics: metrics::ConnectionMetrics,
}

impl Reader<'_> {
    async fn run<R>(
        &mut self,
        session: &mut Session,
        mut client_r: R,
        shutdown: &CancellationToken,
        conn_done: &CancellationToken,
    ) -> Result<(), ConnectionError>
    where
        R: AsyncRead + Unpin,
    {
        let config = self.proxy.config();
        let limits = &config.proxy;
        let sasl_required = self.proxy.sasl().is_some();
        let login_deadline = Instant::now() + limits.login_timeout;
        loop {
            let logged_in = !sasl_required || matches!(session.sasl, SaslState::Authenticated);
            let max_frame = if logged_in {
                self.link.max_frame
            } else {
                limits.max_unauthenticated_frame_bytes
            };
            // Handle every complete frame already buffered before reading more.
            while let Some(raw) = codec::take_frame(&mut self.buf.buf, max_frame)
                .inspect_err(|e| metrics::rejected_frame(reject_reason(e)))?
            {
                if !self.request(session, raw).await? {
                    return Ok(());
                }
            }
            self.buf.settle();
            // Nothing complete is buffered: push what was forwarded, then read.
            self.upstream.flush(self.link).await?;
            let need = match codec::check_frame(&self.buf.buf, max_frame) {
                Ok(codec::Framing::Incomplete(n)) => n,
                _ => READ_STEP,
            };
            let logged_in = !sasl_required || matches!(session.sasl, SaslState::Authenticated);
            let deadline = if logged_in {
                self.activity.last() + limits.idle_timeout
            } else {
                login_deadline
            };
            let buf = &mut self.buf;
            let read = async {
                buf.make_room(need).await;
                client_r.read_buf(&mut buf.buf).await
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = conn_done.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if !logged_in {
                        metrics::rejected_frame("login_timeout");
                        return Err(ConnectionError::LoginTimeout(limits.login_timeout));
                    }
                    if self.activity.outstanding.load(Ordering::Relaxed) > 0 {
                        // Waiting on answers is not idle.
                        self.activity.touch();
                    } else if Instant::now() >= self.activity.last() + limits.idle_timeout {
                        return Err(ConnectionError::Idle(limits.idle_timeout));
                    }
                }
                n = read => {
                    match n {
                        Ok(0) => {
                            if !self.buf.buf.is_empty() {
                                metrics::rejected_frame("truncated");
                                return Err(ConnectionError::Frame(FrameError::Truncated(
                                    self.buf.buf.len(),
                                )));
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

    /// Handles one complete request frame. `Ok(false)`: the connection is done (the
    /// pump is gone, or the answer just queued is the last one).
    async fn request(
        &mut self,
        session: &mut Session,
        raw: Bytes,
    ) -> Result<bool, ConnectionError> {
        let started = Instant::now();
        self.activity.touch();
        self.metrics.bytes(raw.len() + 4);
        let frame =
            codec::parse_request(raw).inspect_err(|e| metrics::rejected_frame(reject_reason(e)))?;
        let permit = match self.tx.try_reserve() {
            Ok(p) => p,
            Err(TrySendError::Full(())) => {
                // The answers that would free a slot can only come for requests the
                // upstream has received: send what is buffered before waiting.
                self.upstream.flush(self.link).await?;
                match self.tx.reserve().await {
                    Ok(p) => p,
                    Err(_) => return Ok(false), // pump gone; its error is reported there
                }
            }
            Err(TrySendError::Closed(())) => return Ok(false),
        };
        let api = handlers::api_name(frame.api);
        match decide(self.proxy, session, &frame, self.link).await? {
            Action::Discard => self
                .metrics
                .request(api, "ok", started.elapsed().as_secs_f64()),
            Action::Respond(out) => {
                self.activity.outstanding.fetch_add(1, Ordering::Relaxed);
                permit.send(Pending::Local {
                    frame: out,
                    api,
                    started,
                });
                if let SaslState::Failed(reason) = &session.sasl {
                    // The refusal is the last answer: let the pump send it, then close.
                    metrics::rejected_frame("sasl_authentication");
                    tracing::warn!(peer = %session.peer_ip, reason = %reason, "SASL authentication failed; connection closed");
                    return Ok(false);
                }
            }
            Action::Forward {
                frame: out,
                response,
            } => {
                let link = self.link;
                let w = self.upstream.open(self.proxy, link, self.target).await?;
                w.write_all(&codec::length_prefix(out.len()))
                    .await
                    .map_err(|e| link.write_error(e))?;
                w.write_all(&out).await.map_err(|e| link.write_error(e))?;
                match response {
                    Some(forwarded) => {
                        self.activity.outstanding.fetch_add(1, Ordering::Relaxed);
                        permit.send(Pending::Upstream {
                            correlation_id: frame.correlation_id(),
                            client_api: frame.api,
                            client_version: frame.version(),
                            forwarded,
                            started,
                            deadline: started + link.request_timeout + codec::request_wait(&frame),
                        })
                    }
                    // No response will come (Produce acks=0): done once written.
                    None => self
                        .metrics
                        .request(api, "ok", started.elapsed().as_secs_f64()),
                }
            }
        }
        Ok(true)
    }
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

/// Version gate and login, then the handler for the API. ApiVersions is
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
    // One load of the routing table for the whole request (DESIGN.md decision 3).
    let mut ctx = handlers::Ctx {
        shared: proxy,
        routes: proxy.routes(),
        cluster: &link.view,
        map,
        session,
    };
    drop(table);
    match handlers::dispatch(&mut ctx, frame).await {
        Ok(action) => Ok(action),
        Err(RouteError::Decode(e)) => Err(ConnectionError::Decode(e)),
        Err(RouteError::Upstream(e)) => Err(ConnectionError::Upstream(e)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn pump<W>(
    mut rx: mpsc::Receiver<Pending>,
    up_rx: oneshot::Receiver<ReadHalf>,
    client_w: W,
    link: Arc<Link>,
    conn_done: CancellationToken,
    budget: BufferBudget,
    activity: Arc<Activity>,
) -> Result<(), ConnectionError>
where
    W: AsyncWrite + Unpin,
{
    let _guard = conn_done.clone().drop_guard();
    // Nothing is allocated until the first answer is owed.
    let Some(mut pending) = rx.recv().await else {
        return Ok(());
    };
    let mut metrics = metrics::ConnectionMetrics::new(&link.cluster, "out");
    let mut client_w = BufWriter::with_capacity(CLIENT_WRITE_BUF, client_w);
    let mut up = UpstreamReader {
        read: None,
        opening: Some(up_rx),
        buf: ReadBuffer::new(budget),
    };
    loop {
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
                deadline,
            } => {
                let frame = tokio::time::timeout_at(deadline.into(), up.frame(&link, rx.len() + 1))
                    .await
                    .map_err(|_| {
                        metrics::upstream_error(&link.cluster, "timeout");
                        ConnectionError::UpstreamTimeout {
                            addr: link.addr(),
                            api: client_api,
                            after: deadline - started,
                        }
                    })?
                    .inspect_err(|_| metrics::upstream_error(&link.cluster, "io"))?;
                let got = codec::response_correlation_id(&frame).unwrap_or(i32::MIN);
                if got != correlation_id {
                    metrics::upstream_error(&link.cluster, "correlation");
                    return Err(ConnectionError::CorrelationMismatch {
                        addr: link.addr(),
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
        let more = !rx.is_empty();
        let write = async {
            client_w.write_all(&codec::length_prefix(out.len())).await?;
            client_w.write_all(&out).await?;
            if !more {
                client_w.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        // A client that stops reading its answers would otherwise hold the
        // connection, and the upstream answers queued behind, forever.
        match tokio::time::timeout(link.request_timeout, write).await {
            Ok(r) => r.map_err(ConnectionError::ClientIo)?,
            Err(_) => return Err(ConnectionError::ClientStalled(link.request_timeout)),
        }
        drop(out);
        up.buf.settle();
        activity.outstanding.fetch_sub(1, Ordering::Relaxed);
        activity.touch();
        metrics.request(api, "ok", started.elapsed().as_secs_f64());
        match rx.recv().await {
            Some(p) => pending = p,
            None => break,
        }
    }
    client_w.flush().await.map_err(ConnectionError::ClientIo)?;
    let _ = client_w.shutdown().await;
    Ok(())
}

/// The pump's side of the upstream connection.
struct UpstreamReader {
    read: Option<ReadHalf>,
    /// The read half arrives here when the reader opens the connection.
    opening: Option<oneshot::Receiver<ReadHalf>>,
    buf: ReadBuffer,
}

impl UpstreamReader {
    /// The next response frame from the upstream.
    async fn frame(&mut self, link: &Link, pending: usize) -> Result<Bytes, ConnectionError> {
        if self.read.is_none() {
            // An answer is owed, so the reader opened the connection before queueing
            // it; a dropped sender means the reader is gone.
            let opening = self.opening.take();
            let read = match opening {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            self.read = Some(read.ok_or_else(|| ConnectionError::UpstreamClosed {
                addr: link.addr(),
                pending,
            })?);
        }
        let up_r = self.read.as_mut().expect("set above");
        let max_frame = link.max_frame;
        loop {
            match codec::take_frame(&mut self.buf.buf, max_frame) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => {
                    return Err(ConnectionError::Upstream(UpstreamError::Protocol {
                        addr: link.addr(),
                        reason: e.to_string(),
                    }))
                }
            }
            let need = match codec::check_frame(&self.buf.buf, max_frame) {
                Ok(codec::Framing::Incomplete(n)) => n,
                _ => READ_STEP,
            };
            self.buf.make_room(need).await;
            match up_r.read_buf(&mut self.buf.buf).await {
                Ok(0) => {
                    return Err(ConnectionError::UpstreamClosed {
                        addr: link.addr(),
                        pending,
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(ConnectionError::Upstream(UpstreamError::Io {
                        addr: link.addr(),
                        source: e,
                    }))
                }
            }
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
