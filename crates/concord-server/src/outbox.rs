//! A connection's outgoing queue. It is bounded: a client that stops reading fills it, and
//! the next message for it closes the connection instead of growing the server's memory.

use axum::body::Bytes;
use concord_protocol::{ServerMessage, encode};
use concord_sync::host::{ConnId, Notice};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::types::{Ending, ModelKey};

/// What a connection's writer sends next.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// One encoded frame (shared: a broadcast is encoded once).
    Frame(Bytes),
    /// `ResyncPage`s of the model's operations in `(after, through]`, read from the store
    /// by the writer itself, so that a long replay never sits in memory.
    Replay { key: ModelKey, after: u64, through: u64 },
    /// Flush what came before, then close the connection.
    Close(Ending),
}

/// The sending side of one connection's queue.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    pub(crate) conn: ConnId,
    sender: mpsc::Sender<Outbound>,
    /// Cancelled to close the connection at once (its queue overflowed, or the store
    /// failed), whatever is still queued.
    overflow: CancellationToken,
    /// Model hosts' notices for the connection's session (at most one per attachment, so
    /// bounded by what the session itself asked for).
    notices: mpsc::UnboundedSender<Notice>,
}

impl Outbox {
    pub(crate) fn new(
        conn: ConnId,
        capacity: usize,
    ) -> (Outbox, mpsc::Receiver<Outbound>, mpsc::UnboundedReceiver<Notice>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let (notices, notices_receiver) = mpsc::unbounded_channel();
        let outbox = Outbox { conn, sender, overflow: CancellationToken::new(), notices };
        (outbox, receiver, notices_receiver)
    }

    /// Passes a model host's notice to the connection's session.
    pub(crate) fn notice(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }

    pub(crate) fn overflow(&self) -> CancellationToken {
        self.overflow.clone()
    }

    /// Queues `outbound`; a full queue closes the connection.
    pub(crate) fn send(&self, outbound: Outbound) {
        match self.sender.try_send(outbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflow.is_cancelled() {
                    tracing::warn!(conn = self.conn, "closing a connection that does not read");
                    self.overflow.cancel();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    pub(crate) fn message(&self, message: &ServerMessage) {
        if let Some(frame) = frame(message) {
            self.send(Outbound::Frame(frame));
        }
    }

    pub(crate) fn close(&self) {
        self.overflow.cancel();
    }
}

/// Encodes a message; a message too large for the protocol's limits (a snapshot beyond
/// 16 MiB) cannot be sent, which is logged.
pub(crate) fn frame(message: &ServerMessage) -> Option<Bytes> {
    match encode(message) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(error) => {
            tracing::error!(%error, "a message could not be encoded");
            None
        }
    }
}

/// A message to hand to a connection once the writes before it are durable.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) outbox: Outbox,
    pub(crate) outbound: Outbound,
}

impl Delivery {
    pub(crate) fn deliver(self) {
        self.outbox.send(self.outbound);
    }
}
