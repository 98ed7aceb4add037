//! A connection's outgoing queue. It is bounded twice: in messages queued, and in bytes the
//! server holds for the connection — every encoded message from the moment a model task
//! resolves it for the connection (often before its writes are durable) until the writer
//! has written it to the socket. A client that stops reading reaches a bound, and the next
//! message for it closes the connection instead of growing the server's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::body::Bytes;
use concord_protocol::{
    EncodeError, ErrorCode, ErrorReply, Limits, ServerMessage, ServerResponse, encode_message,
};
use concord_sync::host::{ConnId, HistoryRead, Notice, QueryRead};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::types::{Ending, ModelKey};

/// What the server keeps per queued message beside its encoded bytes (the queue entry, the
/// job's delivery, the outbox handle), so that many tiny messages count too.
const ENTRY_BYTES: usize = 128;

/// What a connection's writer sends next.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// One encoded frame (shared: a broadcast is encoded once, and each connection it goes
    /// to counts its bytes).
    Frame { bytes: Bytes, held: Held },
    /// `ResyncPage`s of the model's operations in `(after, through]`, read from the store
    /// by the writer itself, so that a long replay never sits in memory.
    Replay { key: ModelKey, after: u64, through: u64, held: Held },
    /// The answer to a history request, read from the store by the writer itself (one page
    /// at most, bounded by the host).
    History { key: ModelKey, read: Box<HistoryRead>, held: Held },
    /// The answer to a query in a domain, read from the store by the writer itself.
    Query { domain: Arc<str>, read: Box<QueryRead>, held: Held },
    /// Flush what came before, then close the connection.
    Close(Ending),
}

/// Bytes of one connection's budget held by a queued message; given back when dropped —
/// once the writer has written the message, or with the queue of a closed connection.
#[derive(Debug)]
pub(crate) struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.queued.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What one connection may make the server hold, and what it holds now.
#[derive(Debug)]
struct Budget {
    queued: AtomicUsize,
    max: usize,
}

/// The sending side of one connection's queue. Cheap to clone: every message a model
/// broadcasts holds one until it is delivered.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    pub(crate) conn: ConnId,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    sender: mpsc::Sender<Outbound>,
    budget: Arc<Budget>,
    /// Cancelled to close the connection at once (it went past a bound, or the store
    /// failed), whatever is still queued.
    overflow: CancellationToken,
    /// Model hosts' notices for the connection's session (at most one closing per
    /// attachment, and one reference read per reference change the session sent at an old
    /// version: bounded by what the session itself asked for, and read before its frames).
    notices: mpsc::UnboundedSender<Notice>,
    /// Set when writes this connection waited on were lost (the store failed them): the
    /// session is told why, then closed, and its client resends what was not acknowledged.
    lost: Arc<Lost>,
    /// Set before either token is cancelled: checked for every message, where a token's
    /// check would take its lock.
    closing: AtomicBool,
}

/// Why a connection's writes were lost, once they were.
#[derive(Debug, Default)]
pub(crate) struct Lost {
    pub(crate) token: CancellationToken,
    reason: std::sync::OnceLock<String>,
}

impl Lost {
    pub(crate) fn reason(&self) -> &str {
        self.reason.get().map_or("a store write failed", String::as_str)
    }
}

impl Outbox {
    /// A queue of at most `max_messages` messages and `max_bytes` bytes.
    pub(crate) fn new(
        conn: ConnId,
        max_messages: usize,
        max_bytes: usize,
    ) -> (Outbox, mpsc::Receiver<Outbound>, mpsc::UnboundedReceiver<Notice>) {
        let (sender, receiver) = mpsc::channel(max_messages.max(1));
        let (notices, notices_receiver) = mpsc::unbounded_channel();
        let budget = Arc::new(Budget { queued: AtomicUsize::new(0), max: max_bytes });
        let (overflow, lost) = (CancellationToken::new(), Arc::default());
        let closing = AtomicBool::new(false);
        let shared = Arc::new(Shared { sender, budget, overflow, notices, lost, closing });
        let outbox = Outbox { conn, shared };
        (outbox, receiver, notices_receiver)
    }

    /// Passes a model host's notice to the connection's session.
    pub(crate) fn notice(&self, notice: Notice) {
        let _ = self.shared.notices.send(notice);
    }

    pub(crate) fn overflow(&self) -> CancellationToken {
        self.shared.overflow.clone()
    }

    /// Whether the connection is closing: nothing more needs to be prepared for it.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire) || self.shared.sender.is_closed()
    }

    /// Closes the connection because writes it waited on were lost, telling the session
    /// `reason` (the first one given) before it goes.
    pub(crate) fn lose(&self, reason: &str) {
        let _ = self.shared.lost.reason.set(reason.to_owned());
        self.shared.closing.store(true, Ordering::Release);
        self.shared.lost.token.cancel();
    }

    pub(crate) fn lost(&self) -> Arc<Lost> {
        self.shared.lost.clone()
    }

    /// Takes `bytes` (plus the per-message overhead) from the connection's budget; `None`
    /// if that would go past it, which closes the connection.
    fn hold(&self, bytes: usize) -> Option<Held> {
        let cost = bytes.saturating_add(ENTRY_BYTES);
        let budget = &self.shared.budget;
        let max = budget.max;
        let taken = budget.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(cost).filter(|total| *total <= max)
        });
        match taken {
            Ok(_) => Some(Held { budget: budget.clone(), bytes: cost }),
            Err(held) => {
                self.close_slow(format_args!("{held} bytes queued, {cost} more would pass {max}"));
                None
            }
        }
    }

    /// `frame` as this connection's to send, its bytes held; `None` if the connection is
    /// past its bound (it is then closed).
    pub(crate) fn frame(&self, frame: &Bytes) -> Option<Outbound> {
        let held = self.hold(frame.len())?;
        Some(Outbound::Frame { bytes: frame.clone(), held })
    }

    /// A replay for this connection; `None` if the connection is past its bound.
    pub(crate) fn replay(&self, key: ModelKey, after: u64, through: u64) -> Option<Outbound> {
        let held = self.hold(0)?;
        Some(Outbound::Replay { key, after, through, held })
    }

    /// A history answer for this connection; `None` if the connection is past its bound.
    pub(crate) fn history(&self, key: ModelKey, read: HistoryRead) -> Option<Outbound> {
        let held = self.hold(0)?;
        Some(Outbound::History { key, read: Box::new(read), held })
    }

    /// A query answer for this connection; `None` if the connection is past its bound.
    pub(crate) fn query(&self, domain: Arc<str>, read: QueryRead) -> Option<Outbound> {
        let held = self.hold(0)?;
        Some(Outbound::Query { domain, read: Box::new(read), held })
    }

    /// Queues `outbound`; a full queue closes the connection.
    pub(crate) fn send(&self, outbound: Outbound) {
        match self.shared.sender.try_send(outbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let queued = self.shared.sender.max_capacity();
                self.close_slow(format_args!("{queued} messages queued"));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// The largest message this connection is sent ([`max_message_bytes`]).
    pub(crate) fn max_message_bytes(&self) -> usize {
        max_message_bytes(self.shared.budget.max)
    }

    /// Encodes `message` and queues it, within the connection's bounds.
    pub(crate) fn message(&self, message: &ServerMessage) {
        let bytes = frame(message, self.max_message_bytes());
        if let Some(outbound) = bytes.and_then(|bytes| self.frame(&bytes)) {
            self.send(outbound);
        }
    }

    pub(crate) fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.overflow.cancel();
    }

    fn close_slow(&self, why: std::fmt::Arguments<'_>) {
        if !self.shared.overflow.is_cancelled() {
            tracing::warn!(conn = self.conn, "closing a connection that does not read ({why})");
            self.close();
        }
    }
}

/// The largest message the server sends a connection that may hold `max_queued_bytes`: one
/// message must fit in that budget on its own (or it would close the connection as a
/// client that does not read), and within the protocol's message limit.
pub(crate) fn max_message_bytes(max_queued_bytes: usize) -> usize {
    let limit = Limits::DEFAULT.max_message_bytes;
    max_queued_bytes.saturating_sub(ENTRY_BYTES).min(limit)
}

/// Encodes a message whole, up to `max_message_bytes` (see [`max_message_bytes`]; the
/// connection's writer sends it in fragments when it is large). A message that cannot be
/// encoded — a snapshot past that size, or nested deeper than the protocol allows — is
/// logged and, since every request gets exactly one reply, replaced by a typed error for
/// the request it answered; a push that answers nothing is dropped.
pub(crate) fn frame(message: &ServerMessage, max_message_bytes: usize) -> Option<Bytes> {
    let limits = Limits { max_message_bytes, ..Limits::DEFAULT };
    let error = match encode_message(&limits, message) {
        Ok(bytes) => return Some(Bytes::from(bytes)),
        Err(error) => error,
    };
    let ServerMessage::Response { to, response } = message else {
        tracing::error!(%error, "a message that answers no request could not be encoded");
        return None;
    };
    // The kind of response only: the message itself may be hundreds of megabytes.
    let kind = match response {
        ServerResponse::Handshake(_) => "Handshake",
        ServerResponse::ModelOpened(_) => "ModelOpened",
        ServerResponse::ModelCreated { .. } => "ModelCreated",
        ServerResponse::ResyncStarted { .. } => "ResyncStarted",
        ServerResponse::ResyncCompleted { .. } => "ResyncCompleted",
        ServerResponse::Permissions { .. } => "Permissions",
        ServerResponse::Pong => "Pong",
        ServerResponse::Done => "Done",
        ServerResponse::Presence(_) => "Presence",
        ServerResponse::ActivityJoined { .. } => "ActivityJoined",
        ServerResponse::HistoryOpened(_) => "HistoryOpened",
        ServerResponse::HistoryPage(_) => "HistoryPage",
        ServerResponse::QueryResult(_) => "QueryResult",
        ServerResponse::Identities(_) => "Identities",
    };
    tracing::error!(%error, request = to.0, kind, "a reply could not be encoded; an error is sent instead");
    let code = match error {
        EncodeError::TooLarge { .. } | EncodeError::TooDeep { .. } => ErrorCode::MODEL_TOO_LARGE,
        _ => ErrorCode::INTERNAL,
    };
    let error = ErrorReply::new(code, format!("the reply could not be sent: {error}"));
    encode_message(&limits, &ServerMessage::Error { to: Some(*to), error }).ok().map(Bytes::from)
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

#[cfg(test)]
mod tests {
    use concord_protocol::{
        CollectionId, ModelId, ModelSnapshot, OpenedModel, Permissions, RequestId, Timestamp,
        decode_with,
    };

    use super::*;

    #[test]
    fn held_bytes_are_bounded_and_given_back_when_dropped() {
        let (outbox, mut queue, _notices) = Outbox::new(1, 100, 3 * (100 + ENTRY_BYTES));
        let frame = Bytes::from(vec![0; 100]);
        let first = outbox.frame(&frame).unwrap();
        let second = outbox.frame(&frame).unwrap();
        outbox.send(outbox.frame(&frame).unwrap());
        assert!(!outbox.is_closed());
        drop(first);
        // Room again for one, held until the writer is done with it.
        let third = outbox.frame(&frame).unwrap();
        assert!(outbox.frame(&frame).is_none(), "past the bound");
        assert!(outbox.is_closed(), "going past the bound closes the connection");
        drop((second, third, queue.try_recv()));
        assert_eq!(outbox.shared.budget.queued.load(Ordering::Acquire), 0);
    }

    /// A reply that cannot be encoded (here: a model nested deeper than the protocol allows)
    /// becomes a typed error for the same request, never nothing.
    #[test]
    fn a_reply_that_cannot_be_encoded_becomes_an_error_for_its_request() {
        let mut json = serde_json::json!({});
        for _ in 0..60 {
            json = serde_json::json!({ "a": json });
        }
        let mut ids = concord_ot::IdGenerator::new(concord_ot::ReplicaId(1), 0);
        let value = concord_ot::Value::from_json(&json, &mut ids).unwrap();
        let snapshot = ModelSnapshot {
            collection: CollectionId::new("notes").unwrap(),
            version: 0,
            created_at: Timestamp(0),
            modified_at: Timestamp(0),
            data: concord_ot::Document::new(value).unwrap(),
        };
        let opened = OpenedModel {
            model: ModelId::new("deep").unwrap(),
            snapshot,
            permissions: Permissions::ALL,
            collaborators: Vec::new(),
            references: Vec::new(),
        };
        let response = ServerResponse::ModelOpened(opened);
        let message = ServerMessage::Response { to: RequestId(7), response };
        let frame = frame(&message, 1 << 20).expect("an answer");
        match decode_with::<ServerMessage>(&Limits::DEFAULT, &frame).unwrap() {
            ServerMessage::Error { to: Some(RequestId(7)), error } => {
                assert_eq!(error.code, ErrorCode::MODEL_TOO_LARGE, "{error}")
            }
            other => panic!("{other:?}"),
        }
    }
}
