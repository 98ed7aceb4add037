//! The server side: one [`Sequencer`] per model orders submissions, transforms each against
//! what was committed since its base version, and applies it.
//!
//! It is pure: the server persists each [`CommitRecord`] (and each [`RefusalRecord`])
//! durably *before* it answers the author and broadcasts the operation to the model's other
//! sessions, and it moves a submission that reaches further back than the in-memory window
//! ([`SequencerError::HistoryUnavailable`]) through older history read from its store, a page
//! at a time ([`Sequencer::rebase`]).
//!
//! **Seqs.** Per replica the sequencer knows the last seq it *decided* — committed, or
//! refused for good — and what it decided. A new submission must cover the seqs right
//! after it (`first_seq == last + 1`, or 1 for a replica new to the model); a gap or an
//! older seq is refused and changes nothing; a resubmission of the last decided seq is
//! answered with the original decision.
//!
//! **Size.** With a size limit ([`Sequencer::with_max_model_bytes`]) the sequencer keeps an
//! upper bound of the model's encoded size — its size when last measured plus the encoded
//! size of every operation committed since — and measures exactly only when that bound
//! passes the limit. A submission after which the exact size would exceed the limit is
//! refused and undone.

use std::collections::BTreeMap;

use concord_ot::{ApplyError, Document, Operation, ReplicaId, transform};
use concord_protocol::{
    CollectionId, Commit, CommittedOperation, ErrorCode, InFlight, ModelId, ModelSnapshot,
    SessionId, Timestamp, encoded_len,
};
use serde::{Deserialize, Serialize};

/// A submission as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub author: SessionId,
    pub replica: ReplicaId,
    /// The first local seq of the replica the batch covers.
    pub first_seq: u64,
    /// The last one: the submission's idempotence key with `replica`.
    pub seq: u64,
    pub base_version: u64,
    pub operation: Operation,
}

/// What the server decided about a replica's submission (kept for its last one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Committed(Commit),
    /// Refused for good, with this code.
    Refused(ErrorCode),
}

/// What the server must persist for a newly committed operation, in one durable write: the
/// operation and the replica's new last seq.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub model: ModelId,
    pub operation: CommittedOperation,
    pub replica: ReplicaId,
    pub seq: u64,
}

/// What the server must persist for a submission refused for good, before the refusal is
/// sent: the replica's new last seq and the code it was refused with, so that the refusal
/// is repeated to a resubmission and the replica's next submission follows it without a
/// gap — after a restart too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusalRecord {
    pub model: ModelId,
    pub replica: ReplicaId,
    pub seq: u64,
    pub code: ErrorCode,
}

/// The result of a submission.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// Newly committed: persist the record, then ack the author with `(seq, version)` and
    /// broadcast the operation to the others.
    Committed(CommitRecord),
    /// Refused for good (the model is unchanged): persist the record, then reject the
    /// submission with `record.code`; `reason` says why.
    Refused { record: RefusalRecord, reason: SequencerError },
    /// `(replica, seq)` was decided before (its answer was lost): answer as then, change
    /// nothing.
    Duplicate(Decision),
}

/// Where a submission's seqs stand ([`Sequencer::check_seq`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// The next seqs of the replica: to be decided now.
    New,
    /// The replica's last decided seq again: answer as then.
    Duplicate(Decision),
}

/// Why the sequencer cannot serve a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SequencerError {
    #[error("base version {base} is ahead of the model's version {current}")]
    BaseVersionAhead { base: u64, current: u64 },
    #[error("seq {got} of replica {replica:?} is below its last decided seq {last}")]
    StaleSeq { replica: ReplicaId, last: u64, got: u64 },
    /// The submission does not start right after the replica's last decided seq.
    #[error("replica {replica:?}'s submission starts at seq {got}; the next seq is {expected}")]
    SeqGap { replica: ReplicaId, expected: u64, got: u64 },
    #[error("a submission of seqs {first} to {last} covers nothing")]
    InvalidSeqRange { first: u64, last: u64 },
    /// The operations after `from` are no longer in memory: read them from the store (a page
    /// of `(from, oldest]` at a time), move the submission through each with
    /// [`Sequencer::rebase`] and submit it again.
    #[error("operations after version {from} are not in memory (oldest kept: {oldest})")]
    HistoryUnavailable { from: u64, oldest: u64 },
    #[error("the operation does not apply: {0}")]
    Invalid(#[from] ApplyError),
    /// The model's encoded size would pass the server's limit.
    #[error("the model would take {size} bytes, more than the limit of {max}")]
    ModelTooLarge { size: u64, max: u64 },
    /// A replayed operation is not the model's next version.
    #[error("replayed version {found}, expected {expected}")]
    OutOfOrder { expected: u64, found: u64 },
}

impl SequencerError {
    /// The code a submission refused for this reason is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            SequencerError::BaseVersionAhead { .. } | SequencerError::HistoryUnavailable { .. } => {
                ErrorCode::VERSION_OUT_OF_RANGE
            }
            SequencerError::StaleSeq { .. }
            | SequencerError::SeqGap { .. }
            | SequencerError::InvalidSeqRange { .. } => ErrorCode::SEQ_OUT_OF_ORDER,
            SequencerError::OutOfOrder { .. } => ErrorCode::INTERNAL,
            SequencerError::Invalid(_) => ErrorCode::INVALID_OPERATION,
            SequencerError::ModelTooLarge { .. } => ErrorCode::MODEL_TOO_LARGE,
        }
    }
}

/// The encoded size of a model's data, as a snapshot carries it.
pub fn model_bytes(document: &Document) -> u64 {
    // Unencodable cannot happen for a document; counted as unbounded if it did.
    encoded_len(document).map_or(u64::MAX, |n| n as u64)
}

fn operation_bytes(operation: &Operation) -> u64 {
    encoded_len(operation).map_or(u64::MAX, |n| n as u64)
}

/// The size limit and the bound kept against it.
#[derive(Debug, Clone, Copy)]
struct SizeLimit {
    max: u64,
    /// At least the model's encoded size: exact when last measured, plus the encoded size
    /// of each operation since (an operation never grows a model by more than its own
    /// encoding).
    bound: u64,
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
    /// The last committed operations, versions `version - len + 1 ..= version`: at most
    /// `history_limit` operations and [`HISTORY_PARTS`] edits after a trim, and at most
    /// twice that before one, so trimming is amortised.
    history: Vec<CommittedOperation>,
    history_limit: usize,
    /// The discrete edits in `history`.
    history_parts: usize,
    last_decisions: BTreeMap<ReplicaId, (u64, Decision)>,
    size: Option<SizeLimit>,
}

impl Sequencer {
    /// A sequencer for a model whose state at `snapshot.version` is `snapshot.data`;
    /// `last_decisions` is the persisted last decided `(seq, decision)` per replica. It
    /// keeps at most `history_limit` recent operations in memory, and has no size limit.
    pub fn new(
        model: ModelId,
        snapshot: ModelSnapshot,
        last_decisions: BTreeMap<ReplicaId, (u64, Decision)>,
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
            history_parts: 0,
            last_decisions,
            size: None,
        }
    }

    /// Refuses submissions after which the model's encoded data would take more than `max`
    /// bytes (measured now). A model already larger (the limit was lowered) still takes
    /// what makes it smaller.
    pub fn with_max_model_bytes(mut self, max: u64) -> Sequencer {
        self.size = Some(SizeLimit { max, bound: model_bytes(&self.document) });
        self
    }

    /// The bound kept of the model's encoded size (`None` without a size limit): never below
    /// the exact size.
    pub fn size_bound(&self) -> Option<u64> {
        self.size.map(|s| s.bound)
    }

    /// Measures the model's size exactly again (when a snapshot is taken anyway), so that
    /// the bound does not drift far above it.
    pub fn remeasure(&mut self) {
        if let Some(size) = &mut self.size {
            size.bound = model_bytes(&self.document);
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

    /// When the current version was committed (created, for version 0).
    pub fn modified_at(&self) -> Timestamp {
        self.modified_at
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

    /// Where a submission of `replica`'s seqs `first_seq..=seq` stands: new, a duplicate of
    /// the last decided one, or refused (a gap or an old seq: nothing is recorded).
    pub fn check_seq(
        &self,
        replica: ReplicaId,
        first_seq: u64,
        seq: u64,
    ) -> Result<SeqCheck, SequencerError> {
        let last = self.last_decisions.get(&replica);
        if let Some((last, decision)) = last {
            if seq == *last {
                return Ok(SeqCheck::Duplicate(*decision));
            }
            if seq < *last {
                return Err(SequencerError::StaleSeq { replica, last: *last, got: seq });
            }
        }
        if first_seq > seq || first_seq == 0 {
            return Err(SequencerError::InvalidSeqRange { first: first_seq, last: seq });
        }
        let expected = last.map_or(1, |(last, _)| last + 1);
        if first_seq != expected {
            return Err(SequencerError::SeqGap { replica, expected, got: first_seq });
        }
        Ok(SeqCheck::New)
    }

    /// Records that `replica`'s submission up to `seq` was refused for good with `code`
    /// (after [`Sequencer::check_seq`] found it new): the record to persist before the
    /// refusal is sent.
    pub fn refuse(&mut self, replica: ReplicaId, seq: u64, code: ErrorCode) -> RefusalRecord {
        self.last_decisions.insert(replica, (seq, Decision::Refused(code)));
        RefusalRecord { model: self.model.clone(), replica, seq, code }
    }

    /// Orders a submission: its seqs checked ([`Sequencer::check_seq`]), transformed
    /// against every operation committed after its base version, applied, and committed at
    /// the next version — or refused for good ([`SubmitOutcome::Refused`]), or answered as
    /// before. On error nothing changed and nothing is to be recorded.
    pub fn submit(
        &mut self,
        submission: Submission,
        now: Timestamp,
    ) -> Result<SubmitOutcome, SequencerError> {
        let Submission { author, replica, first_seq, seq, base_version, operation } = submission;
        if let SeqCheck::Duplicate(decision) = self.check_seq(replica, first_seq, seq)? {
            return Ok(SubmitOutcome::Duplicate(decision));
        }
        let concurrent = match self.operations_since(base_version) {
            Ok(concurrent) => concurrent,
            Err(e @ SequencerError::BaseVersionAhead { .. }) => {
                return Ok(self.refused(replica, seq, e));
            }
            Err(e) => return Err(e),
        };
        let operation = moved_through(operation, concurrent);
        if let Err(e) = self.apply_within_limit(&operation) {
            return Ok(self.refused(replica, seq, e));
        }
        // Commit times never go backwards within a model (even if the clock does), so that
        // a history can be searched by time.
        let timestamp = now.max(self.modified_at);
        let committed =
            CommittedOperation { version: self.version + 1, author, timestamp, operation };
        self.record(committed.clone(), replica, seq);
        Ok(SubmitOutcome::Committed(CommitRecord {
            model: self.model.clone(),
            operation: committed,
            replica,
            seq,
        }))
    }

    fn refused(&mut self, replica: ReplicaId, seq: u64, reason: SequencerError) -> SubmitOutcome {
        let record = self.refuse(replica, seq, reason.code());
        SubmitOutcome::Refused { record, reason }
    }

    /// Applies `operation`, unless the model would then be over its size limit (then it is
    /// undone). The bound grows by the operation's size; only when it passes the limit is
    /// the model measured.
    fn apply_within_limit(&mut self, operation: &Operation) -> Result<(), SequencerError> {
        let applied = self.document.apply(operation)?;
        let Some(size) = self.size else { return Ok(()) };
        let bound = size.bound.saturating_add(operation_bytes(operation));
        if bound <= size.max {
            self.size = Some(SizeLimit { bound, ..size });
            return Ok(());
        }
        let exact = model_bytes(&self.document);
        if exact <= size.max {
            self.size = Some(SizeLimit { bound: exact, ..size });
            return Ok(());
        }
        // Undo, last part first: concord-ot's inverses are exact.
        let parts = operation.discrete();
        let inverse: Vec<_> = parts
            .iter()
            .zip(&applied)
            .rev()
            .filter_map(|(part, outcome)| outcome.inverse(part))
            .collect();
        self.document
            .apply_without_old(&Operation::Compound(inverse))
            .expect("the inverse of an applied operation applies");
        // A model already over the limit (the limit was lowered) may still shrink.
        let before = model_bytes(&self.document);
        if exact < before {
            self.document.apply(operation)?;
            self.size = Some(SizeLimit { bound: exact, ..size });
            return Ok(());
        }
        self.size = Some(SizeLimit { bound: before, ..size });
        Err(SequencerError::ModelTooLarge { size: exact, max: size.max })
    }

    /// Re-applies an operation this model committed before (the server rebuilding it from
    /// its store: snapshot, then the operations after it). It must be the next version; the
    /// per-replica seqs come with [`Sequencer::new`], so they are not touched.
    pub fn replay(&mut self, committed: CommittedOperation) -> Result<(), SequencerError> {
        let expected = self.version + 1;
        if committed.version != expected {
            return Err(SequencerError::OutOfOrder { expected, found: committed.version });
        }
        self.document.apply_without_old(&committed.operation)?;
        if let Some(size) = &mut self.size {
            size.bound = size.bound.saturating_add(operation_bytes(&committed.operation));
        }
        self.version = committed.version;
        self.modified_at = committed.timestamp;
        self.remember(committed);
        Ok(())
    }

    fn record(&mut self, committed: CommittedOperation, replica: ReplicaId, seq: u64) {
        self.version = committed.version;
        self.modified_at = committed.timestamp;
        let commit = Commit { version: committed.version, timestamp: committed.timestamp };
        self.last_decisions.insert(replica, (seq, Decision::Committed(commit)));
        self.remember(committed);
    }

    /// Keeps a committed operation in the in-memory window, trimming it once it holds twice
    /// what it keeps.
    fn remember(&mut self, committed: CommittedOperation) {
        self.history_parts += committed.operation.discrete().len();
        self.history.push(committed);
        if self.history.len() >= 2 * self.history_limit || self.history_parts >= 2 * HISTORY_PARTS {
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

    /// Drops history beyond the window: the oldest operations, until at most `history_limit` operations and [`HISTORY_PARTS`]
    /// edits are left.
    pub fn trim_history(&mut self) {
        let mut excess = self.history.len().saturating_sub(self.history_limit);
        let mut parts = self.history_parts;
        for op in &self.history[..excess] {
            parts -= op.operation.discrete().len();
        }
        while parts > HISTORY_PARTS && excess < self.history.len() {
            parts -= self.history[excess].operation.discrete().len();
            excess += 1;
        }
        self.history.drain(..excess);
        self.history_parts = parts;
    }

    /// Moves a submission based before the in-memory window forward through `older`, the
    /// committed operations right after its base version as read from the store (a page of
    /// them: a far-back submission is moved a page at a time, so that no more than a page is
    /// held). The result is based at the last of them; seqs are not checked here.
    pub fn rebase(
        &self,
        submission: Submission,
        older: &[CommittedOperation],
    ) -> Result<Submission, SequencerError> {
        let base = submission.base_version;
        let follows = older.first().is_some_and(|op| op.version == base + 1)
            && older.windows(2).all(|w| w[1].version == w[0].version + 1)
            && older.last().is_some_and(|op| op.version <= self.version);
        if !follows {
            return Err(SequencerError::HistoryUnavailable {
                from: base,
                oldest: self.oldest_known_base(),
            });
        }
        let operation = moved_through(submission.operation, older);
        let base_version = older.last().map_or(base, |op| op.version);
        Ok(Submission { operation, base_version, ..submission })
    }

    /// Whether the submission `in_flight` was committed, for a resync (a refused one was
    /// not).
    pub fn commit_of(&self, in_flight: InFlight) -> Option<Commit> {
        match self.last_decisions.get(&in_flight.replica) {
            Some((seq, Decision::Committed(commit))) if *seq == in_flight.seq => Some(*commit),
            _ => None,
        }
    }

    /// Catch-up for an offline subscriber that holds `known`: the missed operations when
    /// they are in memory and make one page (at most `max_operations` of them and
    /// [`PAGE_PARTS`] edits), else a snapshot.
    pub fn catch_up(&self, known: Option<u64>, max_operations: usize) -> CatchUp {
        match known.map(|v| self.operations_since(v)) {
            Some(Ok(ops))
                if page_len(ops.iter().map(|op| &op.operation), max_operations) == ops.len() =>
            {
                CatchUp::Operations(ops.to_vec())
            }
            _ => CatchUp::Snapshot(self.snapshot()),
        }
    }
}

/// `operation` moved past `committed`, the operations committed since its base version, in
/// order; each committed one is the server's side of [`transform`] (it was ordered first).
fn moved_through(operation: Operation, committed: &[CommittedOperation]) -> Operation {
    committed.iter().fold(operation, |op, committed| transform(committed.operation.clone(), op).1)
}

/// The most discrete edits a model's in-memory history keeps beside its
/// `history_limit` operations (twice that before a trim): a few pages. Without it a history of
/// large compound operations (a reconnecting client's composed runs, a client's batches)
/// held many times what its operation count suggests; older operations are read from the
/// store a page at a time.
pub const HISTORY_PARTS: usize = 4 * PAGE_PARTS;

/// The most discrete edits one page of operations holds (beyond its first operation): a
/// page of `HostConfig::page` compound operations could otherwise hold that many times a
/// client's batch, and a client holds one page's changes and events at once.
pub(crate) const PAGE_PARTS: usize = 4096;

/// How many of `operations` (in order) make one page: at most `max` of them and
/// [`PAGE_PARTS`] discrete edits, and at least one operation if there is one.
pub(crate) fn page_len<'a>(
    operations: impl IntoIterator<Item = &'a Operation>,
    max: usize,
) -> usize {
    let (mut count, mut parts) = (0, 0);
    for operation in operations.into_iter().take(max) {
        parts += operation.discrete().len();
        if count > 0 && parts > PAGE_PARTS {
            break;
        }
        count += 1;
    }
    count
}

/// What an offline subscriber receives to catch up.
#[derive(Debug, Clone, PartialEq)]
pub enum CatchUp {
    Operations(Vec<CommittedOperation>),
    Snapshot(ModelSnapshot),
}
