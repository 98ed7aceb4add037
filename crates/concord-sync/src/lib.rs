//! `concord-sync` is Concord's sans-IO sync logic: the client engine ([`ClientEngine`]) over
//! the client side of each model ([`ModelReplica`]), the server's per-model [`Sequencer`]
//! and hosts ([`host`]), and shared references on both sides ([`reference`]).
//!
//! It does no I/O, reads no clock and draws no randomness: callers pass in what arrived
//! (server messages, local changes, storage completions, the time as a [`Time`]) and carry
//! out what comes back (messages to send, store changes to commit, connections to open or
//! close, events for the application, the next deadline). The engine owns the client side
//! of the protocol and all of its timing — reconnect backoff, heartbeats, request timeouts
//! — so a driver only moves bytes, store batches and the time. [`events`] is the one
//! vocabulary of what applications hear. The client's in-flight operation, transformed
//! against remote operations as they arrive, equals the operation the server committed for
//! it, so acks carry no operation. [`history`] moves a read-only copy of a model through its
//! past versions.
//!
//! [`lease`] keeps a server node's leases on the models it sequences when several nodes
//! share one store (fencing epochs, bulk renewal, giving a lease up before the store may
//! grant it to another node).
//!
//! [`host`] holds every decision of the server, including each domain's presence and
//! activities (ephemeral, never stored); the engine's side of them republishes, follows and
//! joins again on every connection.

mod attach;
mod engine;
pub mod events;
pub mod history;
pub mod host;
pub mod lease;
pub mod reference;
mod replica;
mod sequencer;
mod shared;
pub mod store;
mod time;

pub use engine::{
    Action, BatchId, CallError, CallId, ClientEngine, DisconnectReason, EngineConfig, EngineError,
    HistoryAnswer, HistoryTicket, StorageBatch,
};
pub use events::{
    ConnectionState, DomainEvent, Event, ModelEvent, OpenFailure, RemoteReferenceChange,
};
pub use reference::ReferenceError;
pub use replica::{
    ModelReplica, OutgoingSubmission, PendingOperation, Persisted, RemoteApplied, ReplicaError,
    Restoring, StoreChange,
};
pub use sequencer::{
    CatchUp, CommitRecord, Decision, HISTORY_PARTS, RefusalRecord, SeqCheck, Sequencer,
    SequencerError, Submission, SubmitOutcome, model_bytes,
};
pub use time::Time;
