//! The client side of one model: the local view, the confirmed server version, at most one
//! submission in flight, and the pending local operations.
//!
//! A [`ModelReplica`] is a pure state machine. Every change of state is described by the
//! [`StoreChange`]s it returns, which the engine commits to the offline store as one atomic
//! batch; replaying a model's stored [`Persisted`] state rebuilds the same local view
//! ([`ModelReplica::restore`]).
//!
//! Orientation: the server's operations are "server" in [`concord_ot::transform`], local
//! ones are "client", on both sides of the wire, so that the client's in-flight operation,
//! transformed against the remote operations as they arrive, equals what the server
//! committed for it (the ack carries no operation).
//!
//! Many local changes made offline are kept composed ([`concord_ot::compose`]) into runs of
//! consecutive seqs, each at most [`MAX_RUN_BYTES`]: a remote operation is transformed past
//! each run once, and only the runs it rewrote are stored again
//! ([`StoreChange::UpdatePending`]), so a reconnection costs time in the number of remote
//! operations times the runs, not times the local operations. A run is stored as one record
//! naming its first and last seq, so every seq stays stored until acknowledged; a restore
//! ([`Restoring`]) reads the stored records page by page and composes them again as it
//! goes, so a long offline session is never held one change at a time.

use std::collections::BTreeSet;

use concord_ot::{Applied, ApplyError, Document, Operation, compose, transform};
use concord_protocol::{CommittedOperation, ModelSnapshot, Timestamp};

pub use concord_storage::PendingOperation;

/// The submission a replica has on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingSubmission {
    /// The lowest local seq it contains: the one after the last the server decided.
    pub first_seq: u64,
    /// The highest local seq it contains; the server's idempotence key with the replica id.
    pub seq: u64,
    pub base_version: u64,
    pub operation: Operation,
}

/// One model's durable state: everything needed to rebuild the replica after a crash.
#[derive(Debug, Clone, PartialEq)]
pub struct Persisted {
    /// The server state at `snapshot.version`.
    pub snapshot: ModelSnapshot,
    /// Server operations after the snapshot, in version order.
    pub server_operations: Vec<CommittedOperation>,
    /// Local operations not yet acknowledged, in order, expressed against the last server
    /// version; those with `seq <= in_flight_seq` form the submission in flight.
    pub pending: Vec<PendingOperation>,
    pub in_flight_seq: Option<u64>,
    /// The next local seq to hand out.
    pub next_seq: u64,
}

/// A change to a model's stored state; the changes one call returns form one atomic batch.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreChange {
    /// A server operation the replica has now applied to its confirmed state.
    AppendServerOperation(CommittedOperation),
    /// A local operation, stored before it may be sent.
    AppendPending(PendingOperation),
    /// The whole pending list, after remote operations transformed it.
    ReplacePending(Vec<PendingOperation>),
    /// Some stored pending operations rewritten in place (transformed, or composed into the
    /// run before them); the others stay as stored.
    UpdatePending(Vec<PendingOperation>),
    /// The in-flight submission was acknowledged: drop pending operations through `seq`.
    RemovePendingThrough(u64),
    /// The boundary of the submission on the wire; durable before it is sent.
    SetInFlight(Option<u64>),
    /// A new snapshot replacing the server operations up to its version.
    PutSnapshot(ModelSnapshot),
    /// The model was created here, at version 0 of `snapshot`; `nonce` makes the creation
    /// idempotent at the server.
    Created { snapshot: ModelSnapshot, nonce: concord_protocol::CreationNonce },
    /// The server confirmed the creation.
    CreationConfirmed { collection: concord_protocol::CollectionId },
    /// Deleted here: a tombstone until the server confirms.
    MarkDeleted { collection: concord_protocol::CollectionId },
    /// The server refused the deletion: the model is back, with its creation still
    /// unconfirmed if it was when deleted.
    Undelete {
        collection: concord_protocol::CollectionId,
        creation: Option<concord_protocol::CreationNonce>,
    },
    /// The server confirmed the deletion: everything of the model goes.
    Forget,
    /// A subscribed model downloaded for the first time.
    Downloaded { snapshot: ModelSnapshot },
    /// The model joins the offline subscription set.
    Subscribe,
    /// The model leaves the offline subscription set.
    Unsubscribe,
    /// Local changes minted element ids up to here: the next id counter, persisted with
    /// them so that no id is minted twice.
    AdvanceElementCounter(u64),
}

/// A server message that does not fit the replica's state: a protocol violation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    #[error("expected the operation for version {expected}, got version {got}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("an ack for seq {got} arrived, but {in_flight:?} is in flight")]
    UnexpectedAck { in_flight: Option<u64>, got: u64 },
    #[error("a server operation does not apply to the local view: {0}")]
    Diverged(ApplyError),
    #[error("stored pending operation {got} does not follow {after:?}")]
    PendingOrder { after: Option<u64>, got: u64 },
}

/// What applying a remote operation did to the local view.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteApplied {
    /// The operation as applied to the local view (transformed past local changes).
    pub operation: Operation,
    pub applied: Vec<Applied>,
    /// Local changes (by seq) that this remote operation neutralised entirely: they will
    /// reach the server as no-ops, and the application should hear so.
    pub neutralised: Vec<u64>,
}

/// One model on the client.
#[derive(Debug, Clone)]
pub struct ModelReplica {
    /// The last server state this replica knows (its version is the confirmed version).
    confirmed: ModelSnapshot,
    /// `confirmed` plus the in-flight and pending operations.
    local: Document,
    in_flight: Option<InFlightBatch>,
    /// Local operations not yet sent, expressed against `confirmed` + in flight.
    pending: Vec<Run>,
    /// The first seqs of runs changed in memory since they were last stored: written by the
    /// next [`ModelReplica::take_pending_rewrite`].
    rewritten: BTreeSet<u64>,
    next_seq: u64,
    /// The highest local seq the store reported durable; nothing above it is sent.
    durable_seq: u64,
    /// The highest local seq the server acknowledged; repeated acks up to it are ignored.
    acked_seq: u64,
    /// Server operations stored since the snapshot, for compaction.
    operations_since_snapshot: usize,
}

/// Runs of this many encoded bytes at most are composed further; it bounds what one run
/// costs to store again and to send.
pub(crate) const MAX_RUN_BYTES: usize = 16 * 1024;

/// Pending runs are composed only beyond this many, so that a model edited online (a few
/// changes pending at a time) keeps one run per change: each neutralised change is reported
/// on its own.
const COMPOSE_ABOVE_RUNS: usize = 32;

/// Local operations of the consecutive seqs `first..=seq`, composed into one.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    first: u64,
    seq: u64,
    operation: Operation,
    /// Its encoded size when made or composed (transformation changes it a little).
    bytes: usize,
}

impl Run {
    /// A stored record: one change, or a run stored whole.
    fn single(pending: PendingOperation) -> Run {
        let bytes = encoded_bytes(&pending.operation);
        Run { first: pending.seq, seq: pending.through, operation: pending.operation, bytes }
    }

    /// How it is stored: one record naming its first and last seq.
    fn stored(&self) -> PendingOperation {
        PendingOperation::run(self.first, self.seq, self.operation.clone())
    }
}

/// Appends `run` to `runs`, composed into the last one if both fit in [`MAX_RUN_BYTES`];
/// returns the first seq of the run it was composed into.
fn push_composed(runs: &mut Vec<Run>, run: Run) -> Option<u64> {
    if let Some(last) = runs.last_mut()
        && last.bytes.saturating_add(run.bytes) <= MAX_RUN_BYTES
    {
        let before = std::mem::replace(&mut last.operation, Operation::Compound(Vec::new()));
        last.operation = compose(before, run.operation);
        last.seq = run.seq;
        // Folded splices take less than their parts did.
        last.bytes = encoded_bytes(&last.operation);
        return Some(last.first);
    }
    runs.push(run);
    None
}

/// A replica being rebuilt from the store: the head (snapshot, server operations) first,
/// then the pending records in seq order, a page at a time ([`Restoring::push`]), then
/// [`Restoring::finish`]. Past [`COMPOSE_ABOVE_RUNS`] runs, the pending records are
/// composed as they arrive, so a model with many offline changes is held as a few runs,
/// never as one record per change. The store is not told: each run in memory covers whole
/// stored records, which [`StoreChange::UpdatePending`] rewrites as one.
#[derive(Debug)]
pub struct Restoring {
    replica: ModelReplica,
    in_flight_seq: Option<u64>,
    /// The runs of the submission in flight, kept as stored (it is sent as it was).
    parts: Vec<Run>,
    /// The last seq pushed.
    last: Option<u64>,
}

impl Restoring {
    /// Starts from `head`: its snapshot and server operations are applied, its `pending`
    /// (usually empty) is pushed.
    pub fn new(head: Persisted) -> Result<Restoring, ReplicaError> {
        let Persisted { snapshot, server_operations, pending, in_flight_seq, next_seq } = head;
        let mut confirmed = snapshot;
        let operations_since_snapshot = server_operations.len();
        for op in server_operations {
            let expected = confirmed.version + 1;
            if op.version != expected {
                return Err(ReplicaError::OutOfOrder { expected, got: op.version });
            }
            confirmed.data.apply_without_old(&op.operation).map_err(ReplicaError::Diverged)?;
            confirmed.version = op.version;
            confirmed.modified_at = op.timestamp;
        }
        let local = confirmed.data.clone();
        let replica = ModelReplica {
            confirmed,
            local,
            in_flight: None,
            pending: Vec::new(),
            rewritten: BTreeSet::new(),
            next_seq,
            durable_seq: next_seq.saturating_sub(1),
            acked_seq: 0,
            operations_since_snapshot,
        };
        let mut restoring = Restoring { replica, in_flight_seq, parts: Vec::new(), last: None };
        restoring.push(pending)?;
        Ok(restoring)
    }

    /// The next pending records, in seq order after those pushed before.
    pub fn push(&mut self, page: Vec<PendingOperation>) -> Result<(), ReplicaError> {
        let in_flight_through = self.in_flight_seq;
        let side = |seq: u64| in_flight_through.is_some_and(|through| seq <= through);
        for p in page {
            if self.last.is_some_and(|last| p.seq <= last) || p.through < p.seq {
                return Err(ReplicaError::PendingOrder { after: self.last, got: p.seq });
            }
            self.last = Some(p.through);
            self.replica.local.apply_without_old(&p.operation).map_err(ReplicaError::Diverged)?;
            let runs = if side(p.seq) { &mut self.parts } else { &mut self.replica.pending };
            // An empty compound right after a run belongs to it (format 2 stored a run so,
            // one record per seq).
            if let Some(last) = runs.last_mut()
                && is_empty_compound(&p.operation)
                && last.seq + 1 == p.seq
                && side(last.seq) == side(p.through)
            {
                last.seq = p.through;
                continue;
            }
            let run = Run::single(p);
            if side(run.seq) || runs.len() <= COMPOSE_ABOVE_RUNS {
                runs.push(run);
            } else {
                push_composed(runs, run);
            }
        }
        Ok(())
    }

    /// The last seq pushed so far.
    pub fn last_seq(&self) -> Option<u64> {
        self.last
    }

    /// The replica, with everything pushed as its unacknowledged changes.
    pub fn finish(self) -> ModelReplica {
        let Restoring { mut replica, in_flight_seq, parts, .. } = self;
        let first_unacknowledged = parts.first().or(replica.pending.first()).map(|r| r.first);
        replica.in_flight = in_flight_seq.filter(|_| !parts.is_empty()).map(|seq| InFlightBatch {
            seq,
            parts,
            committed_at: None,
            stored: true,
            sent: false,
        });
        replica.acked_seq = first_unacknowledged.unwrap_or(replica.next_seq).saturating_sub(1);
        replica
    }
}

fn encoded_bytes(operation: &Operation) -> usize {
    concord_protocol::encoded_len(operation).unwrap_or(MAX_RUN_BYTES)
}

fn is_empty_compound(operation: &Operation) -> bool {
    matches!(operation, Operation::Compound(parts) if parts.is_empty())
}

#[derive(Debug, Clone, PartialEq)]
struct InFlightBatch {
    seq: u64,
    /// The local operations it holds, kept separate so they can be re-stored one by one.
    parts: Vec<Run>,
    /// Set once the resync told us the server committed it at that version.
    committed_at: Option<u64>,
    /// Whether its boundary ([`StoreChange::SetInFlight`]) is durable: only then may it be
    /// sent, or a crash could forget that it was.
    stored: bool,
    /// Whether it was sent on the current connection.
    sent: bool,
}

impl ModelReplica {
    /// A replica of a model downloaded (or created) at `snapshot`, with no local changes.
    pub fn new(snapshot: ModelSnapshot) -> ModelReplica {
        let local = snapshot.data.clone();
        ModelReplica {
            confirmed: snapshot,
            local,
            in_flight: None,
            pending: Vec::new(),
            rewritten: BTreeSet::new(),
            next_seq: 1,
            durable_seq: 0,
            acked_seq: 0,
            operations_since_snapshot: 0,
        }
    }

    /// Rebuilds a replica from its stored state: snapshot, then server operations, then
    /// pending operations. Everything stored is durable, so it may all be sent.
    pub fn restore(persisted: Persisted) -> Result<ModelReplica, ReplicaError> {
        let mut head = persisted;
        let pending = std::mem::take(&mut head.pending);
        let mut restoring = Restoring::new(head)?;
        restoring.push(pending)?;
        Ok(restoring.finish())
    }

    pub fn local(&self) -> &Document {
        &self.local
    }

    pub fn confirmed(&self) -> &ModelSnapshot {
        &self.confirmed
    }

    pub fn confirmed_version(&self) -> u64 {
        self.confirmed.version
    }

    /// Takes the server's creation time of a model created here (its own clock's until the
    /// server confirmed it); at version 0 that is also when it was last modified. Returns
    /// the snapshot to store when that changed it.
    pub fn created_at_server(&mut self, created_at: Timestamp) -> Option<ModelSnapshot> {
        if self.confirmed.created_at == created_at {
            return None;
        }
        self.confirmed.created_at = created_at;
        if self.confirmed.version == 0 {
            self.confirmed.modified_at = created_at;
        }
        Some(self.confirmed.clone())
    }

    /// The seq of the submission in flight, for a resync.
    pub fn in_flight_seq(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|b| b.seq)
    }

    /// The highest local seq handed out so far (0 before the first change).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether local changes await acknowledgement.
    pub fn has_unacknowledged(&self) -> bool {
        self.in_flight.is_some() || !self.pending.is_empty()
    }

    /// Applies a local change to the local view. Returns its seq and the store change to
    /// commit; the change is sent only once [`ModelReplica::mark_durable`] covers its seq.
    pub fn local_change(
        &mut self,
        operation: Operation,
    ) -> Result<(u64, Vec<Applied>, StoreChange), ApplyError> {
        let applied = self.local.apply(&operation)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let pending = PendingOperation::new(seq, operation);
        self.pending.push(Run::single(pending.clone()));
        Ok((seq, applied, StoreChange::AppendPending(pending)))
    }

    /// The store reported every change up to local seq `seq` durable.
    pub fn mark_durable(&mut self, seq: u64) {
        self.durable_seq = self.durable_seq.max(seq);
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// When nothing is in flight, takes up to `max_parts` durable pending runs (at least one,
    /// then as long as they add up to at most `max_bytes`) as the next submission. The
    /// returned store change (the in-flight boundary) must be durable before the submission
    /// is sent: report it with [`ModelReplica::mark_in_flight_stored`], then send
    /// [`ModelReplica::submission`].
    pub fn take_submission(
        &mut self,
        max_parts: usize,
        max_bytes: usize,
    ) -> Option<(OutgoingSubmission, StoreChange)> {
        if self.in_flight.is_some() {
            return None;
        }
        let mut bytes = 0usize;
        let ready = self
            .pending
            .iter()
            .take(max_parts.max(1))
            .take_while(|r| r.seq <= self.durable_seq)
            .enumerate()
            .take_while(|(i, r)| {
                bytes = bytes.saturating_add(r.bytes);
                *i == 0 || bytes <= max_bytes
            })
            .count();
        if ready == 0 {
            return None;
        }
        let parts: Vec<Run> = self.pending.drain(..ready).collect();
        let seq = parts.last().expect("ready > 0").seq;
        self.in_flight =
            Some(InFlightBatch { seq, parts, committed_at: None, stored: false, sent: false });
        Some((self.submission_content(), StoreChange::SetInFlight(Some(seq))))
    }

    /// The store reported the in-flight boundary `seq` durable: the submission may go out.
    pub fn mark_in_flight_stored(&mut self, seq: u64) {
        if let Some(batch) = &mut self.in_flight
            && batch.seq == seq
        {
            batch.stored = true;
        }
    }

    /// Whether the in-flight submission was sent on the current connection.
    pub fn in_flight_sent(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|b| b.sent)
    }

    pub fn mark_in_flight_sent(&mut self) {
        if let Some(batch) = &mut self.in_flight {
            batch.sent = true;
        }
    }

    /// A new connection: the in-flight submission must be sent again (after the resync).
    pub fn mark_in_flight_unsent(&mut self) {
        if let Some(batch) = &mut self.in_flight {
            batch.sent = false;
        }
    }

    /// The submission in flight, to send (again), once its boundary is durable.
    pub fn submission(&self) -> Option<OutgoingSubmission> {
        self.in_flight.as_ref().filter(|b| b.stored)?;
        Some(self.submission_content())
    }

    fn submission_content(&self) -> OutgoingSubmission {
        let batch = self.in_flight.as_ref().expect("called with a submission in flight");
        let mut parts = Vec::new();
        for p in &batch.parts {
            parts.extend_from_slice(p.operation.discrete());
        }
        OutgoingSubmission {
            first_seq: batch.parts.first().map_or(batch.seq, |p| p.first),
            seq: batch.seq,
            base_version: self.confirmed.version,
            operation: Operation::Compound(parts),
        }
    }

    /// The resync reported that the in-flight submission was committed at `version`: the
    /// replay will contain it, and it is treated as the ack when reached.
    pub fn in_flight_committed_at(&mut self, version: u64) {
        if let Some(batch) = &mut self.in_flight {
            batch.committed_at = Some(version);
        }
    }

    /// Applies an operation the server committed after the confirmed version: transformed
    /// past the in-flight and pending operations, applied to the local view. A replayed
    /// operation that is the in-flight submission itself is taken as its ack.
    pub fn remote(
        &mut self,
        committed: CommittedOperation,
    ) -> Result<(Option<RemoteApplied>, Vec<StoreChange>), ReplicaError> {
        let (applied, mut changes) = self.remote_deferred(committed)?;
        changes.extend(self.take_pending_rewrite());
        Ok((applied, changes))
    }

    /// [`ModelReplica::remote`] without storing the pending runs it rewrote: several remote
    /// operations (a resync page) store them once, with
    /// [`ModelReplica::take_pending_rewrite`] at the end of the same store batch. The changes
    /// returned must not be committed without it: until then the store's pending operations
    /// are expressed against an older version.
    pub fn remote_deferred(
        &mut self,
        committed: CommittedOperation,
    ) -> Result<(Option<RemoteApplied>, Vec<StoreChange>), ReplicaError> {
        let expected = self.confirmed.version + 1;
        if committed.version != expected {
            return Err(ReplicaError::OutOfOrder { expected, got: committed.version });
        }
        if let Some(batch) = &self.in_flight
            && batch.committed_at == Some(committed.version)
        {
            let seq = batch.seq;
            return Ok((None, self.ack(seq, committed.version, committed.timestamp)?));
        }
        self.compose_pending();
        // Transform the remote operation past each local run, rewriting them in place.
        let mut remote = committed.operation.clone();
        let mut neutralised = Vec::new();
        let in_flight = self.in_flight.iter_mut().flat_map(|b| b.parts.iter_mut());
        for run in in_flight.chain(self.pending.iter_mut()) {
            let local = std::mem::replace(&mut run.operation, Operation::Compound(Vec::new()));
            let was_noop = local.is_noop();
            let (r, local) = transform(remote, local);
            remote = r;
            if local.is_noop() && !was_noop {
                neutralised.extend(run.first..=run.seq);
            }
            run.operation = local;
            self.rewritten.insert(run.first);
        }
        self.confirmed
            .data
            .apply_without_old(&committed.operation)
            .map_err(ReplicaError::Diverged)?;
        self.confirmed.version = committed.version;
        self.confirmed.modified_at = committed.timestamp;
        let applied = self.local.apply(&remote).map_err(ReplicaError::Diverged)?;
        self.operations_since_snapshot += 1;
        let changes = vec![StoreChange::AppendServerOperation(committed)];
        Ok((Some(RemoteApplied { operation: remote, applied, neutralised }), changes))
    }

    /// Composes the pending runs, once there are many, into runs of at most
    /// [`MAX_RUN_BYTES`]; the store learns of it with the next pending rewrite.
    fn compose_pending(&mut self) {
        if self.pending.len() <= COMPOSE_ABOVE_RUNS {
            return;
        }
        let mut composed: Vec<Run> = Vec::with_capacity(self.pending.len());
        for run in std::mem::take(&mut self.pending) {
            if let Some(first) = push_composed(&mut composed, run) {
                // One record for both now.
                self.rewritten.insert(first);
            }
        }
        self.pending = composed;
    }

    /// The pending runs changed since they were last stored, as the store change that
    /// rewrites them (none if nothing changed).
    pub fn take_pending_rewrite(&mut self) -> Option<StoreChange> {
        if self.rewritten.is_empty() {
            return None;
        }
        let rewritten = std::mem::take(&mut self.rewritten);
        let in_flight = self.in_flight.iter().flat_map(|b| b.parts.iter());
        let mut operations = Vec::new();
        for run in in_flight.chain(self.pending.iter()) {
            // Seqs named but no longer pending were acknowledged (their records are gone).
            // A run in memory is a union of stored records, rewritten whole.
            if rewritten.range(run.first..=run.seq).next().is_some() {
                operations.push(run.stored());
            }
        }
        (!operations.is_empty()).then_some(StoreChange::UpdatePending(operations))
    }

    /// The server committed the in-flight submission `seq` at `version`. A repeated ack
    /// (the server answers a resubmission of a committed batch with the original ack) is
    /// ignored.
    pub fn ack(
        &mut self,
        seq: u64,
        version: u64,
        timestamp: Timestamp,
    ) -> Result<Vec<StoreChange>, ReplicaError> {
        if seq <= self.acked_seq && version <= self.confirmed.version {
            return Ok(Vec::new());
        }
        let in_flight = self.in_flight.as_ref().map(|b| b.seq);
        if in_flight != Some(seq) {
            return Err(ReplicaError::UnexpectedAck { in_flight, got: seq });
        }
        let expected = self.confirmed.version + 1;
        if version != expected {
            return Err(ReplicaError::OutOfOrder { expected, got: version });
        }
        let submission = self.submission_content();
        self.in_flight = None;
        self.acked_seq = seq;
        self.confirmed
            .data
            .apply_without_old(&submission.operation)
            .map_err(ReplicaError::Diverged)?;
        self.confirmed.version = version;
        self.confirmed.modified_at = timestamp;
        self.operations_since_snapshot += 1;
        let committed = CommittedOperation {
            version,
            author: concord_protocol::SessionId(String::new()),
            timestamp,
            operation: submission.operation,
        };
        Ok(vec![
            StoreChange::AppendServerOperation(committed),
            StoreChange::RemovePendingThrough(seq),
            StoreChange::SetInFlight(None),
        ])
    }

    /// The server refused the in-flight submission for good: its operations are undone
    /// from the local view (the pending ones after it are transformed past the undo), and
    /// returned so the application can be told.
    pub fn reject_in_flight(&mut self) -> Option<(Vec<PendingOperation>, Vec<StoreChange>)> {
        let batch = self.in_flight.take()?;
        // Rebuild the local view without the rejected operations: confirmed + pending.
        // Pending operations were made on top of the rejected ones; those that no longer
        // apply are dropped with it (reported too). A dropped one stays pending as a no-op,
        // so that its seq still reaches the server: the server takes a replica's seqs only
        // without gaps, and a restored replica starts after its first unacknowledged seq.
        let mut local = self.confirmed.data.clone();
        let mut kept = Vec::new();
        let as_pending = |r: Run| PendingOperation::run(r.first, r.seq, r.operation);
        let mut dropped: Vec<PendingOperation> = batch.parts.into_iter().map(as_pending).collect();
        for run in std::mem::take(&mut self.pending) {
            if local.apply_without_old(&run.operation).is_ok() {
                kept.push(run);
            } else {
                let noop = run.operation.discrete().iter().map(|d| d.clone().into_noop()).collect();
                kept.push(Run { operation: Operation::Compound(noop), ..run.clone() });
                dropped.push(as_pending(run));
            }
        }
        self.local = local;
        self.pending = kept;
        // The whole list is stored again below.
        self.rewritten.clear();
        let changes = vec![
            StoreChange::ReplacePending(self.all_unacknowledged()),
            StoreChange::SetInFlight(None),
        ];
        Some((dropped, changes))
    }

    /// When `every` server operations were stored since the last snapshot, a snapshot of
    /// the confirmed state to store in their place.
    pub fn compact(&mut self, every: usize) -> Option<StoreChange> {
        if self.operations_since_snapshot < every.max(1) {
            return None;
        }
        self.operations_since_snapshot = 0;
        Some(StoreChange::PutSnapshot(self.confirmed.clone()))
    }

    /// In-flight then pending operations, in order, as stored.
    /// The local operations not yet acknowledged, in the order the local view applied
    /// them: the in-flight ones, then the pending ones.
    pub fn unacknowledged(&self) -> impl Iterator<Item = &Operation> {
        let in_flight = self.in_flight.iter().flat_map(|b| b.parts.iter());
        in_flight.chain(self.pending.iter()).map(|p| &p.operation)
    }

    fn all_unacknowledged(&self) -> Vec<PendingOperation> {
        let in_flight = self.in_flight.iter().flat_map(|b| b.parts.iter());
        in_flight.chain(self.pending.iter()).map(Run::stored).collect()
    }
}
