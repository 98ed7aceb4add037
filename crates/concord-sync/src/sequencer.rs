//! The server side: one [`Sequencer`] per model orders submissions, transforms each against
//! what was committed since its base version, and applies it.
//!
//! It is pure: the server persists each [`CommitRecord`] durably *before* it acks the author
//! and broadcasts the operation to the model's other sessions, and it feeds the sequencer older
//! history from its store when a submission or a resync reaches further back than the
//! in-memory window ([`SequencerError::HistoryUnavailable`]).

use std::collections::BTreeMap;

use concord_ot::{ApplyError, Document, Operation, ReplicaId, transform};
use concord_protocol::{
    CollectionId, Commit, CommittedOperation, InFlight, ModelId, ModelSnapshot, SessionId,
    Timestamp,
};

/// A submission as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub author: SessionId,
    pub replica: ReplicaId,
    pub seq: u64,
    pub base_version: u64,
    pub operation: Operation,
}

/// What the server must persist for a newly committed operation, in one durable write: the
/// operation and the replica's new last seq.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitRecord {
    pub model: ModelId,
    pub operation: CommittedOperation,
    pub replica: ReplicaId,
    pub seq: u64,
}

/// The result of a submission.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// Newly committed: persist the record, then ack the author with `(seq, version)` and
    /// broadcast the operation to the others.
    Committed(CommitRecord),
    /// `(replica, seq)` was committed before (its ack was lost): answer with the original
    /// ack and apply nothing.
    Duplicate(Commit),
}

/// Why the sequencer cannot serve a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SequencerError {
    #[error("base version {base} is ahead of the model's version {current}")]
    BaseVersionAhead { base: u64, current: u64 },
    #[error("seq {got} of replica {replica:?} is below its last committed seq {last}")]
    StaleSeq { replica: ReplicaId, last: u64, got: u64 },
    /// The operations after `from` are no longer in memory: load `(from, oldest]` from the
    /// store and retry with [`Sequencer::provide_history`].
    #[error("operations after version {from} are not in memory (oldest kept: {oldest})")]
    HistoryUnavailable { from: u64, oldest: u64 },
    /// The store could not provide the history a submission needed.
    #[error("the history the submission needs could not be read: {0}")]
    HistoryUnreadable(String),
    #[error("the operation does not apply: {0}")]
    Invalid(#[from] ApplyError),
    /// A replayed operation is not the model's next version.
    #[error("replayed version {found}, expected {expected}")]
    OutOfOrder { expected: u64, found: u64 },
}

/// One model's ordering authority.
#[derive(Debug, Clone)]
pub struct Sequencer {
    model: ModelId,
    collection: CollectionId,
    created_at: Timestamp,
    modified_at: Timestamp,
    document: Document,
    version: u64,
    /// The last committed operations, versions `version - len + 1 ..= version`. Between
    /// `history_limit` and twice that many are kept, so trimming is amortised.
    history: Vec<CommittedOperation>,
    history_limit: usize,
    last_commits: BTreeMap<ReplicaId, (u64, Commit)>,
}

impl Sequencer {
    /// A sequencer for a model whose state at `snapshot.version` is `snapshot.data`;
    /// `last_commits` is the persisted last `(seq, commit)` per replica. It keeps at most
    /// `history_limit` recent operations in memory.
    pub fn new(
        model: ModelId,
        snapshot: ModelSnapshot,
        last_commits: BTreeMap<ReplicaId, (u64, Commit)>,
        history_limit: usize,
    ) -> Sequencer {
        Sequencer {
            model,
            collection: snapshot.collection,
            created_at: snapshot.created_at,
            modified_at: snapshot.modified_at,
            document: snapshot.data,
            version: snapshot.version,
            history: Vec::new(),
            history_limit: history_limit.max(1),
            last_commits,
        }
    }

    pub fn model(&self) -> &ModelId {
        &self.model
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn document(&self) -> &Document {
        &self.document
    }

    /// The oldest version from which [`Sequencer::operations_since`] can answer from memory.
    pub fn oldest_known_base(&self) -> u64 {
        self.version - self.history.len() as u64
    }

    pub fn snapshot(&self) -> ModelSnapshot {
        ModelSnapshot {
            collection: self.collection.clone(),
            version: self.version,
            created_at: self.created_at,
            modified_at: self.modified_at,
            data: self.document.clone(),
        }
    }

    /// Orders a submission: idempotent by `(replica, seq)`, transformed against every
    /// operation committed after its base version, applied, and committed at the next
    /// version. On error nothing changed.
    pub fn submit(
        &mut self,
        submission: Submission,
        now: Timestamp,
    ) -> Result<SubmitOutcome, SequencerError> {
        if let Some((last, commit)) = self.last_commits.get(&submission.replica) {
            if submission.seq == *last {
                return Ok(SubmitOutcome::Duplicate(*commit));
            }
            if submission.seq < *last {
                return Err(SequencerError::StaleSeq {
                    replica: submission.replica,
                    last: *last,
                    got: submission.seq,
                });
            }
        }
        let concurrent = self.operations_since(submission.base_version)?;
        let operation = concurrent.iter().fold(submission.operation, |op, committed| {
            transform(committed.operation.clone(), op).1
        });
        self.document.apply(&operation)?;
        let committed = CommittedOperation {
            version: self.version + 1,
            author: submission.author,
            timestamp: now,
            operation,
        };
        self.record(committed.clone(), submission.replica, submission.seq);
        Ok(SubmitOutcome::Committed(CommitRecord {
            model: self.model.clone(),
            operation: committed,
            replica: submission.replica,
            seq: submission.seq,
        }))
    }

    /// Re-applies an operation this model committed before (the server rebuilding it from
    /// its store: snapshot, then the operations after it). It must be the next version; the
    /// per-replica seqs come with [`Sequencer::new`], so they are not touched.
    pub fn replay(&mut self, committed: CommittedOperation) -> Result<(), SequencerError> {
        let expected = self.version + 1;
        if committed.version != expected {
            return Err(SequencerError::OutOfOrder { expected, found: committed.version });
        }
        self.document.apply(&committed.operation)?;
        self.version = committed.version;
        self.modified_at = committed.timestamp;
        self.history.push(committed);
        if self.history.len() >= 2 * self.history_limit {
            self.trim_history();
        }
        Ok(())
    }

    fn record(&mut self, committed: CommittedOperation, replica: ReplicaId, seq: u64) {
        self.version = committed.version;
        self.modified_at = committed.timestamp;
        let commit = Commit { version: committed.version, timestamp: committed.timestamp };
        self.last_commits.insert(replica, (seq, commit));
        self.history.push(committed);
        if self.history.len() >= 2 * self.history_limit {
            self.trim_history();
        }
    }

    /// The committed operations after `version`, from memory.
    pub fn operations_since(&self, version: u64) -> Result<&[CommittedOperation], SequencerError> {
        if version > self.version {
            return Err(SequencerError::BaseVersionAhead { base: version, current: self.version });
        }
        let oldest = self.oldest_known_base();
        if version < oldest {
            return Err(SequencerError::HistoryUnavailable { from: version, oldest });
        }
        Ok(&self.history[(version - oldest) as usize..])
    }

    /// Puts operations loaded from the store in front of the in-memory window, so that
    /// submissions and resyncs from further back can be served. `older` must end right
    /// before the window, in order.
    pub fn provide_history(&mut self, older: Vec<CommittedOperation>) {
        let expected_end = self.oldest_known_base();
        let fits = older.last().is_none_or(|op| op.version == expected_end)
            && older.windows(2).all(|w| w[1].version == w[0].version + 1);
        if fits {
            self.history.splice(0..0, older);
        }
    }

    /// Drops history beyond the window again (after a far-back request was served).
    pub fn trim_history(&mut self) {
        let excess = self.history.len().saturating_sub(self.history_limit);
        self.history.drain(..excess);
    }

    /// Whether the submission `in_flight` was committed, for a resync.
    pub fn commit_of(&self, in_flight: InFlight) -> Option<Commit> {
        match self.last_commits.get(&in_flight.replica) {
            Some((seq, commit)) if *seq == in_flight.seq => Some(*commit),
            _ => None,
        }
    }

    /// Catch-up for an offline subscriber that holds `known`: the missed operations when
    /// there are at most `max_operations` of them in memory, else a snapshot.
    pub fn catch_up(&self, known: Option<u64>, max_operations: usize) -> CatchUp {
        match known.map(|v| self.operations_since(v)) {
            Some(Ok(ops)) if ops.len() <= max_operations => CatchUp::Operations(ops.to_vec()),
            _ => CatchUp::Snapshot(self.snapshot()),
        }
    }
}

/// What an offline subscriber receives to catch up.
#[derive(Debug, Clone, PartialEq)]
pub enum CatchUp {
    Operations(Vec<CommittedOperation>),
    Snapshot(ModelSnapshot),
}
