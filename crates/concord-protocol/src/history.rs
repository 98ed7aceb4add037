//! The messages of reading a model's history: what a client asks (`HistoryOpen`,
//! `HistoryFetch`) and the pages the server answers with. Kept apart from the live
//! protocol: history is read-only and touches no open model.

use serde::{Deserialize, Serialize};

use crate::ids::{CollectionId, ModelId, Timestamp, UserId};
use crate::payload::{CommittedOperation, ModelSnapshot};

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryStart {
    /// At this version.
    Version(u64),
    /// At the last version committed at or before this time (the oldest kept version if
    /// the time is before every commit).
    Time(Timestamp),
}

/// What a model's history spans: the answer to `HistoryOpen`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryInfo {
    pub model: ModelId,
    pub collection: CollectionId,
    pub created_at: Timestamp,
    /// The oldest version the server can rebuild: 0 for a model whose creation it kept,
    /// later for one stored before the server kept histories.
    pub min_version: u64,
    /// The model's version when the request was answered.
    pub max_version: u64,
    /// When `max_version` was committed.
    pub modified_at: Timestamp,
    /// The server keeps a checkpoint at least every this many operations, so reaching any
    /// version from a checkpoint applies at most this many.
    pub checkpoint_every: u64,
}

/// A committed operation in a history, with the user of the session that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryOperation {
    pub operation: CommittedOperation,
    /// `None` for operations stored before the server recorded their users.
    pub user: Option<UserId>,
}

/// One page of a history: the answer to `HistoryFetch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub model: ModelId,
    /// The version the request's start resolved to.
    pub start_version: u64,
    /// When the request asked for one: the model at the latest checkpoint at or before
    /// `start_version`; the operations then follow it.
    pub checkpoint: Option<ModelSnapshot>,
    /// Consecutive operations following the checkpoint's version (or `start_version`); empty
    /// at the end of the history, never otherwise.
    pub operations: Vec<HistoryOperation>,
    /// The model's version when the page was read.
    pub max_version: u64,
}
