//! Structures that messages of both directions carry.

use std::collections::BTreeMap;

use concord_ot::{Document, ElementId, Operation, ReferenceValue, ReplicaId};
use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::ids::{CollectionId, ModelId, ReconnectToken, SessionId, Timestamp, UserId};

/// The client program, for logs and compatibility decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// For example `concord-client` or `concord-web`.
    pub name: String,
    pub version: String,
}

/// How a client authenticates in its handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Auth {
    /// A signed JWT; its subject is the user id.
    Jwt(String),
    /// Anonymous access, when the server allows it.
    Anonymous { display_name: Option<String> },
    /// The token a previous handshake returned.
    Reconnect(ReconnectToken),
}

/// A user as the server knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub display_name: Option<String>,
    pub anonymous: bool,
}

/// A successful handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// New for every handshake, reconnections included.
    pub session: SessionId,
    pub user: User,
    /// Present it in a later handshake ([`Auth::Reconnect`]) to authenticate again.
    pub reconnect_token: ReconnectToken,
    /// The server program's version, for logs.
    pub server_version: String,
    /// What this connection may do; a client that stays within them is never refused for
    /// exceeding them.
    pub limits: ServerLimits,
}

/// The limits a server enforces on one connection, told in the handshake. Byte counts are
/// of encoded frames and messages (`docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLimits {
    /// The largest frame the server accepts from the client.
    pub max_frame_bytes: u64,
    /// The largest message the server sends (fragmented when larger than a frame): a
    /// client's reassembler must accept at least this much.
    pub max_message_bytes: u64,
    /// Models open (or resynced) at once on the connection; past it, `overloaded`.
    pub max_open_models: u64,
    /// Models in the connection's offline subscription set; past it, `overloaded`.
    pub max_subscriptions: u64,
    /// References shared at once across the connection's models.
    pub max_shared_references: u64,
    /// Bytes one shared reference's key and value may take.
    pub max_reference_bytes: u64,
    /// The largest a model may grow (its encoded data); a submission or creation past it is
    /// refused with `model_too_large`.
    pub max_model_bytes: u64,
}

/// A failed handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRejection {
    pub code: ErrorCode,
    pub message: String,
    /// False when retrying with the same credentials cannot succeed (bad signature,
    /// unsupported version); true for transient refusals (server starting or overloaded).
    pub retry_allowed: bool,
}

/// What one session may do with one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
    pub remove: bool,
    pub manage: bool,
}

impl Permissions {
    pub const ALL: Permissions =
        Permissions { read: true, write: true, remove: true, manage: true };
    pub const NONE: Permissions =
        Permissions { read: false, write: false, remove: false, manage: false };
}

/// The permission grants stored on a model (read and written by sessions with `manage`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PermissionGrants {
    /// When false, `world` is ignored and the collection's world permissions apply.
    pub override_collection: bool,
    /// What every user may do.
    pub world: Permissions,
    /// Per-user grants; they replace `world` for that user.
    pub users: BTreeMap<UserId, Permissions>,
}

/// A model's whole state at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSnapshot {
    pub collection: CollectionId,
    /// The number of operations committed to the model so far.
    pub version: u64,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    /// Decoding checks it as a document: root an object, ids unique, numbers finite.
    pub data: Document,
}

/// The reply to opening a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenedModel {
    pub model: ModelId,
    pub snapshot: ModelSnapshot,
    pub permissions: Permissions,
    /// Other sessions that have the model open.
    pub collaborators: Vec<Collaborator>,
    /// References currently shared by other sessions.
    pub references: Vec<SharedReference>,
}

/// An operation as the server committed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedOperation {
    /// The model's version once this operation is applied: it applies to `version - 1`.
    pub version: u64,
    /// The session that submitted it.
    pub author: SessionId,
    pub timestamp: Timestamp,
    pub operation: Operation,
}

/// When and at which version the server committed a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub version: u64,
    pub timestamp: Timestamp,
}

/// The submission a client had in flight when its connection dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub replica: ReplicaId,
    pub seq: u64,
}

/// Another session that has a model open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collaborator {
    pub session: SessionId,
    pub user: UserId,
    /// When the session opened the model, by the server's clock.
    pub since: Timestamp,
}

/// The user of a session that authored operations: sent with the operations of a resync
/// page, so that a client names the user of sessions it never heard of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub session: SessionId,
    pub user: UserId,
}

/// Names one shared reference of one session: its key, on an element or (without one) on
/// the model itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReferenceKey {
    pub element: Option<ElementId>,
    pub key: String,
}

/// A change to a session's shared reference (cursor, selection, highlighted property or
/// element). Clients send them; the server relays them to the model's other sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReferenceChange {
    /// Starts sharing, optionally with a first value (at the model's current version, as the
    /// server sees it: clients send `Share` without one, then `Set`).
    Share { reference: ReferenceKey, value: Option<ReferenceValue> },
    /// Sets the value, as of model version `version`. The server moves it forward to its
    /// current version (refusing an invalid one with `invalid_reference`) and relays it at
    /// that version, which is the version each receiver holds at that point of its stream.
    Set { reference: ReferenceKey, value: ReferenceValue, version: u64 },
    /// Keeps sharing, without a value.
    Clear { reference: ReferenceKey },
    /// Stops sharing.
    Unshare { reference: ReferenceKey },
}

impl ReferenceChange {
    /// The reference it changes.
    pub fn reference(&self) -> &ReferenceKey {
        match self {
            ReferenceChange::Share { reference, .. }
            | ReferenceChange::Set { reference, .. }
            | ReferenceChange::Clear { reference }
            | ReferenceChange::Unshare { reference } => reference,
        }
    }
}

/// A reference another session shares, as listed when a model opens (or its resync
/// completes): its value at the model's version as of that answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedReference {
    pub session: SessionId,
    pub reference: ReferenceKey,
    pub value: Option<ReferenceValue>,
}

/// A model in a client's offline subscription set, with the version its store holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownModel {
    pub model: ModelId,
    /// `None` when the store has no copy yet.
    pub version: Option<u64>,
}

/// Brings one subscribed model of the client's store up to date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OfflineUpdate {
    /// The operations after the version the client knows, in order (a catch-up page or a
    /// live push). `more` says that further catch-up pages follow.
    Operations { operations: Vec<CommittedOperation>, more: bool },
    /// The whole model, when the client has no copy or a snapshot is smaller than the
    /// missed operations.
    Snapshot { snapshot: ModelSnapshot, permissions: Permissions },
    /// The model was deleted; the client drops it from its subscription set.
    Deleted,
    /// The user may no longer read the model; the client drops it from its subscription set.
    PermissionRevoked,
}
