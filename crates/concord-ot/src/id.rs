//! Element identity: every node of a model carries an [`ElementId`] that no other node of
//! that model will ever carry.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies one writer of element ids: a client store, or the server.
///
/// A replica id is chosen once per client store and kept in it, so ids minted offline never
/// collide with ids minted by another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId(pub u64);

/// The identity of one node in a model: `(replica, counter)`.
///
/// The counter is persisted by its replica and never reused, so an id is unique without a
/// server round trip. Operations address elements by id, never by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ElementId {
    pub replica: ReplicaId,
    pub counter: u64,
}

impl ElementId {
    pub const fn new(replica: u64, counter: u64) -> ElementId {
        ElementId { replica: ReplicaId(replica), counter }
    }
}

impl fmt::Display for ElementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}:{}", self.replica.0, self.counter)
    }
}

/// Mints fresh element ids for one replica.
///
/// The caller persists [`IdGenerator::next_counter`] so that ids are never reused after a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdGenerator {
    replica: ReplicaId,
    next: u64,
}

impl IdGenerator {
    pub fn new(replica: ReplicaId, next_counter: u64) -> IdGenerator {
        IdGenerator { replica, next: next_counter }
    }

    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The counter the next minted id will carry; persist it to never reuse an id.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends and never fails
    pub fn next(&mut self) -> ElementId {
        let id = ElementId { replica: self.replica, counter: self.next };
        self.next += 1;
        id
    }
}
