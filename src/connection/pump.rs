//! The pump: answers back to the client in request order, each either ready or
//! the next upstream response, rewritten on its way.

use super::*;

#[allow(clippy::too_many_arguments)]
pub(super) async fn pump<W>(
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
pub(super) struct UpstreamReader {
    pub(super) read: Option<ReadHalf>,
    /// The read half arrives here when the reader opens the connection.
    pub(super) opening: Option<oneshot::Receiver<ReadHalf>>,
    pub(super) buf: ReadBuffer,
}

impl UpstreamReader {
    /// The next response frame from the upstream.
    pub(super) async fn frame(
        &mut self,
        link: &Link,
        pending: usize,
    ) -> Result<Bytes, ConnectionError> {
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
