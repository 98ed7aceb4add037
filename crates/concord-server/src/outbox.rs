//! A connection's outgoing queue. It is bounded: a client that stops reading fills it, and
//! the next message for it closes the connection instead of growing the server's memory.

use axum::body::Bytes;
use concord_protocol::{
    EncodeError, ErrorCode, ErrorReply, Limits, ServerMessage, ServerResponse, encode_message,
};
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

/// Encodes a message whole (up to the protocol's message limit; the connection's writer
/// sends it in fragments when it is large). A message that cannot be encoded — a snapshot
/// past the message limit, or nested deeper than the protocol allows — is logged and,
/// since every request gets exactly one reply, replaced by a typed error for the request it
/// answered; a push that answers nothing is dropped.
pub(crate) fn frame(message: &ServerMessage) -> Option<Bytes> {
    let limits = Limits::DEFAULT;
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
        let frame = frame(&message).expect("an answer");
        match decode_with::<ServerMessage>(&Limits::DEFAULT, &frame).unwrap() {
            ServerMessage::Error { to: Some(RequestId(7)), error } => {
                assert_eq!(error.code, ErrorCode::MODEL_TOO_LARGE, "{error}")
            }
            other => panic!("{other:?}"),
        }
    }
}
