//! Read buffers that grow with the bytes that arrived, and the process-wide budget
//! they draw on beyond a small allowance.

use super::*;

/// Bytes a connection's read buffer may hold without drawing on the budget: room
/// for the requests and responses of an ordinary client, so the budget only ever
/// sees large frames.
pub(super) const FREE_BYTES: usize = 64 * 1024;
/// The most a read buffer grows by in one step. A frame's declared length is never
/// reserved up front: a client that announces 100 MiB and sends one byte a second
/// holds one step, not 100 MiB.
pub(super) const READ_STEP: usize = 64 * 1024;
/// A read buffer larger than this is given back once it is empty, so an idle
/// connection holds no large allocation.
pub(super) const KEEP_BYTES: usize = 16 * 1024;
/// Write buffers: small responses and requests are coalesced; large ones bypass.
pub(super) const CLIENT_WRITE_BUF: usize = 16 * 1024;
pub(super) const UPSTREAM_WRITE_BUF: usize = 32 * 1024;

/// Memory that all connections together may hold for frames being received, beyond
/// [`FREE_BYTES`] each. A connection that needs more waits (and so stops reading:
/// backpressure) until others give some back; its own timeouts still apply.
#[derive(Clone)]
pub struct BufferBudget {
    pub(super) kib: Arc<Semaphore>,
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
pub(super) struct ReadBuffer {
    pub(super) buf: BytesMut,
    pub(super) budget: BufferBudget,
    pub(super) held: Option<OwnedSemaphorePermit>,
}

impl ReadBuffer {
    pub(super) fn new(budget: BufferBudget) -> ReadBuffer {
        ReadBuffer {
            buf: BytesMut::new(),
            budget,
            held: None,
        }
    }

    pub(super) fn held_kib(&self) -> usize {
        self.held.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Makes room to read more of a frame that is still `need` bytes short, waiting
    /// for budget if the buffer must grow past its allowance.
    pub(super) async fn make_room(&mut self, need: usize) {
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
    pub(super) fn settle(&mut self) {
        if self.buf.is_empty() {
            self.held = None;
            if self.buf.capacity() > KEEP_BYTES {
                self.buf = BytesMut::new();
            }
        }
    }
}
