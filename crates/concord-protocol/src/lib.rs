//! `concord-protocol` is Concord's wire protocol: the messages a client and a server
//! exchange ([`ClientMessage`], [`ServerMessage`]), the error codes they use
//! ([`ErrorCode`], [`ErrorReply`]), and the versioned codec that turns a message into one
//! WebSocket binary frame and back ([`encode`], [`decode_with`], [`Limits`]) — or, for a
//! message larger than a frame should be, several fragment frames ([`encode_frames`],
//! [`Reassembler`]).
//!
//! This crate does no I/O: no sockets, no WebSocket, no storage, no clock (timestamps are
//! fields the caller fills in). Only the [`codec`] module knows the byte format (postcard
//! 1.x behind a version byte); the message types derive serde and are otherwise plain data.
//! Decoding never panics, bounds nesting depth and never pre-allocates from a length prefix.
//!
//! Presence ([`PresenceRequest`]) and activities ([`ActivityRequest`]) are ephemeral
//! additions, each in its own module, and so is identity ([`IdentityRequest`]: users' names
//! and emails); history and queries ([`QueryPage`]) read models
//! without opening them.
//!
//! Operations, values and references are concord-ot's types, carried as they are.
//! `docs/protocol.md` lists the messages, their pairing, versioning, limits and error codes.

mod activity;
mod client;
pub mod codec;
mod error;
mod history;
mod identity;
mod ids;
mod payload;
mod presence;
mod query;
mod server;

pub use activity::{ActivityChange, ActivityId, ActivityRequest, Participant};
pub use client::{
    ClientMessage, ClientNotice, ClientRequest, ClientResponse, NewModel, SyncSubmission,
};
pub use codec::{
    CLOSE_UNSUPPORTED_VERSION, DEFAULT_FRAGMENT_BYTES, DecodeError, EncodeError, FrameKind, Limits,
    PROTOCOL_VERSION, Reassembler, WireMessage, decode, decode_with, encode, encode_frames,
    encode_message, encode_with, encoded_len, fragment_frame,
};
pub use error::{ErrorCode, ErrorReply};
pub use history::{HistoryInfo, HistoryOperation, HistoryPage, HistoryStart};
pub use identity::{Identity, IdentityRequest};
pub use ids::{
    CollectionId, CreationNonce, IdError, ModelId, ReconnectToken, RequestId, SessionId, Timestamp,
    UserId,
};
pub use payload::{
    Auth, Author, ClientInfo, Collaborator, Commit, CommittedOperation, HandshakeRejection,
    InFlight, KnownModel, ModelSnapshot, OfflineUpdate, OpenedModel, PermissionGrants, Permissions,
    ReferenceChange, ReferenceKey, ServerLimits, Session, SharedReference, User,
};
pub use presence::{PresenceRequest, PresenceState, UserPresence};
pub use query::{QueryData, QueryPage, QueryRow};
pub use server::{HandshakeResult, ServerMessage, ServerPush, ServerRequest, ServerResponse};
