//! `concord-client` is what applications embed to work on Concord models: a [`Domain`]
//! (one server, one user, one offline store) connects, reconnects with backoff, and keeps
//! every local change in the store until the server acknowledges it; [`ModelService`]
//! opens, creates, removes and subscribes models — online or offline — and manages their
//! permissions (online); [`RealTimeModel`] and its element handles read and change a model,
//! with events and watermarks, and share references (cursors, selections) with the other
//! sessions that have it open; [`HistoricalModel`] plays a model's past versions, read-only,
//! from the server; [`PresenceService`] and [`ActivityService`] show who is around
//! (ephemeral, never stored); [`IdentityService`] looks users' names and emails up (the
//! store keeps what it saw).
//!
//! It is a thin async shell around `concord-sync`'s sans-IO engine: the engine decides what
//! to store, send and report, and when (reconnecting, heartbeats, timeouts); this crate runs
//! it on a task (tokio natively, the page's event loop in a browser) with a WebSocket, a
//! `concord-storage` adapter (memory by default; `RedbAdapter` with the `redb` feature) and
//! a clock, and passes on the engine's own events ([`ModelEvent`], [`DomainEvent`]). It is
//! not the server, and it does not render anything.
//!
//! ```no_run
//! # async fn example() -> Result<(), concord_client::ClientError> {
//! use concord_client::{CollectionId, Domain, RedbAdapter};
//!
//! let domain = Domain::builder("ws://127.0.0.1:7700/acme/notes")
//!     .storage(RedbAdapter::new("./offline"))
//!     .build();
//! domain.initialize_offline("alice").await?; // works without a network
//! let notes = CollectionId::new("notes").unwrap();
//! let id = domain.models().create(&notes, serde_json::json!({ "title": "", "done": false })).await?;
//! let note = domain.models().open(&id).await?;
//! let title = note.root().get("title").await?.unwrap().as_string()?;
//! let change = title.insert(0, "Buy milk").await?;
//! note.stored(change).await?;            // durable here
//! domain.connect_with_jwt("<token>").await?;
//! note.acknowledged(change).await?;      // and at the server
//! # Ok(()) }
//! ```

mod activity;
mod collaboration;
mod domain;
mod driver;
mod error;
mod events;
mod history;
mod identity;
mod model;
mod permissions;
mod presence;
mod query;
mod rt;
mod socket;

pub use activity::{Activity, ActivityService};
pub use collaboration::{LocalReference, ReferenceKind};
pub use concord_ot::{
    Document, ElementId, IndexRange, Kind, OperationKind, PathSegment, ReferenceValue, ReplicaId,
};
pub use concord_protocol::{
    ActivityChange, ActivityId, Collaborator, CollectionId, ErrorCode, ErrorReply,
    HandshakeRejection, HistoryOperation, Identity, ModelId, Participant, PermissionGrants,
    Permissions, ReferenceKey, Session, SessionId, SharedReference, Timestamp, UserId,
    UserPresence,
};
#[cfg(feature = "redb")]
pub use concord_storage::RedbAdapter;
pub use concord_storage::{MemoryAdapter, StorageAdapter};
pub use concord_sync::history::HistoryError;
/// The events are the engine's, passed on as they are: one vocabulary for every client.
pub use concord_sync::{
    ConnectionState, DomainEvent, EngineConfig, EngineError, ModelEvent, OpenFailure,
    PendingOperation, ReferenceError, RemoteReferenceChange,
};
pub use domain::{Domain, DomainBuilder, DomainOptions, ModelService, StoredModel};
pub use error::ClientError;
pub use events::Events;
pub use history::{HistoricalElement, HistoricalModel};
pub use identity::{DEFAULT_SEARCH_LIMIT, IdentityService};
pub use model::{
    BatchBuilder, Change, Edit, Element, ElementChange, ElementEvents, ModelInfo, RealTimeArray,
    RealTimeBoolean, RealTimeDate, RealTimeModel, RealTimeNull, RealTimeNumber, RealTimeObject,
    RealTimeString, Watermarks,
};
pub use presence::{PresenceService, state_value};
pub use query::{QueryData, QueryMode, QueryOrigin, QueryResult, QueryRow};
