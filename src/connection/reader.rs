//! The reader: client frames in, a decision per request (answer, forward,
//! forward rewritten), forwarded requests out to the connection's upstream.

use super::*;

/// The reading half of one client connection.
pub(super) struct Reader<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) target: &'a Target,
    pub(super) link: &'a Link,
    pub(super) tx: mpsc::Sender<Pending>,
    pub(super) upstream: UpstreamWriter,
    pub(super) buf: ReadBuffer,
    pub(super) activity: &'a Activity,
    pub(super) metrics: metrics::ConnectionMetrics,
}

impl Reader<'_> {
    pub(super) async fn run<R>(
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
    pub(super) async fn request(
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

pub(super) fn reject_reason(e: &FrameError) -> &'static str {
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
pub(super) async fn decide(
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
