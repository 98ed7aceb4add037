//! Reading a model's history: what a `HistoryOpen` or `HistoryFetch` answers, decided here
//! over whatever store holds the checkpoints and operations ([`HistorySource`]).
//!
//! The model host only checks that the session may read the model and fixes the version the
//! history ends at (everything up to it is durable by the time the answer is read, since a
//! delivery leaves after the writes queued before it); the caller then reads the answer
//! from durable state with [`history_reply`], so that pages never sit in a model's memory.

use concord_protocol::{
    CollectionId, ErrorCode, HistoryInfo, HistoryOperation, HistoryPage, HistoryStart, ModelId,
    ModelSnapshot, RequestId, ServerMessage, ServerResponse, Timestamp, encoded_len,
};

use super::{ReadFailure, reply};

/// The most operations one history page carries, whatever the client asks.
pub const MAX_HISTORY_PAGE_OPERATIONS: u32 = 1_024;
/// About the most bytes of operations one history page carries, whatever the client asks
/// (a single operation larger than this still goes out alone).
pub const MAX_HISTORY_PAGE_BYTES: u32 = 4 * 1024 * 1024;

/// What a history request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    Open,
    Fetch { start: HistoryStart, checkpoint: bool, max_operations: u32, max_bytes: u32 },
}

/// A history request the model host accepted, to be answered from durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRead {
    pub request: RequestId,
    pub model: ModelId,
    pub collection: CollectionId,
    pub created_at: Timestamp,
    /// The model's version when the request was handled: the history ends there.
    pub through: u64,
    /// When `through` was committed.
    pub modified_at: Timestamp,
    /// At least every this many operations a checkpoint is kept.
    pub checkpoint_every: u64,
    pub query: HistoryQuery,
}

/// The durable history of one model, as a store holds it. A failed read says whether the
/// store could not be reached (the request is answered `unavailable`) or failed itself.
pub trait HistorySource {
    /// The version of the oldest checkpoint: the oldest version that can be rebuilt.
    fn oldest_checkpoint(&mut self) -> Result<Option<u64>, ReadFailure>;
    /// The latest checkpoint at or before `version`.
    fn checkpoint_at_or_before(
        &mut self,
        version: u64,
    ) -> Result<Option<ModelSnapshot>, ReadFailure>;
    /// The committed operations in `(after, through]`, in order, at most `limit`, each with
    /// its user when known.
    fn operations(
        &mut self,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<HistoryOperation>, ReadFailure>;
    /// When operation `version` (at least 1) was committed.
    fn commit_time(&mut self, version: u64) -> Result<Option<Timestamp>, ReadFailure>;
}

/// The answer to `read`, from `source`: a `HistoryOpened` or a `HistoryPage`, or a typed
/// error (`invalid_argument` for a start outside the history, `unavailable` for a store that
/// cannot be reached, `internal` for a store that fails or lacks what it should hold).
pub fn history_reply(read: &HistoryRead, source: &mut dyn HistorySource) -> ServerMessage {
    let to = read.request;
    match answer(read, source) {
        Ok(response) => ServerMessage::Response { to, response },
        Err(error) => ServerMessage::Error { to: Some(to), error },
    }
}

fn answer(
    read: &HistoryRead,
    source: &mut dyn HistorySource,
) -> Result<ServerResponse, concord_protocol::ErrorReply> {
    let failed = |e: ReadFailure| reply(e.code(), format!("the history could not be read: {e}"));
    let min_version = source
        .oldest_checkpoint()
        .map_err(failed)?
        // A model stored before histories were kept, never checkpointed since: only its
        // current version can be shown.
        .unwrap_or(read.through)
        .min(read.through);
    match read.query {
        HistoryQuery::Open => Ok(ServerResponse::HistoryOpened(HistoryInfo {
            model: read.model.clone(),
            collection: read.collection.clone(),
            created_at: read.created_at,
            min_version,
            max_version: read.through,
            modified_at: read.modified_at,
            checkpoint_every: read.checkpoint_every,
        })),
        HistoryQuery::Fetch { start, checkpoint, max_operations, max_bytes } => {
            let start_version = match start {
                HistoryStart::Version(version)
                    if (min_version..=read.through).contains(&version) =>
                {
                    version
                }
                HistoryStart::Version(version) => {
                    return Err(reply(
                        ErrorCode::INVALID_ARGUMENT,
                        format!(
                            "version {version} is outside the history of {} ({min_version}..={})",
                            read.model, read.through
                        ),
                    ));
                }
                HistoryStart::Time(time) => {
                    version_at_time(source, min_version, read.through, time).map_err(failed)?
                }
            };
            let checkpoint = if checkpoint {
                let found = source.checkpoint_at_or_before(start_version).map_err(failed)?;
                match found {
                    Some(snapshot) if snapshot.version <= start_version => Some(snapshot),
                    _ => {
                        return Err(failed(ReadFailure::internal(format!(
                            "no checkpoint at or before version {start_version}"
                        ))));
                    }
                }
            } else {
                None
            };
            let after = checkpoint.as_ref().map_or(start_version, |c| c.version);
            let limit = max_operations.min(MAX_HISTORY_PAGE_OPERATIONS) as usize;
            let budget = max_bytes.min(MAX_HISTORY_PAGE_BYTES) as usize;
            let mut operations = source.operations(after, read.through, limit).map_err(failed)?;
            keep_within(&mut operations, budget);
            let expected = (after + 1..).take(operations.len());
            if operations.iter().map(|o| o.operation.version).ne(expected)
                || (operations.is_empty() && limit > 0 && after < read.through)
            {
                let missing = format!("operations after version {after} are missing");
                return Err(failed(ReadFailure::internal(missing)));
            }
            Ok(ServerResponse::HistoryPage(HistoryPage {
                model: read.model.clone(),
                start_version,
                checkpoint,
                operations,
                max_version: read.through,
            }))
        }
    }
}

/// Drops the operations past `budget` encoded bytes, keeping at least one.
fn keep_within(operations: &mut Vec<HistoryOperation>, budget: usize) {
    let mut used = 0usize;
    let mut keep = 0;
    for operation in operations.iter() {
        used = used.saturating_add(encoded_len(operation).unwrap_or(usize::MAX));
        if keep > 0 && used > budget {
            break;
        }
        keep += 1;
    }
    operations.truncate(keep);
}

/// The last version in `min..=through` committed at or before `time` (`min` if none is):
/// a binary search, since commit times never go backwards within a model.
fn version_at_time(
    source: &mut dyn HistorySource,
    min: u64,
    through: u64,
    time: Timestamp,
) -> Result<u64, ReadFailure> {
    // Invariant: `low` qualifies (or is `min`); everything above `high` does not.
    let (mut low, mut high) = (min, through);
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        let at = source
            .commit_time(middle)?
            .ok_or_else(|| ReadFailure::internal(format!("operation {middle} is missing")))?;
        if at <= time {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    Ok(low)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use concord_ot::{Document, Operation};
    use concord_protocol::{CommittedOperation, SessionId};

    use super::*;

    /// A history of `count` no-op operations committed at times 10, 20, 30, … with
    /// checkpoints every `every` versions from `first`.
    struct Memory {
        checkpoints: BTreeMap<u64, ModelSnapshot>,
        operations: Vec<HistoryOperation>,
    }

    fn memory(count: u64, first: u64, every: u64) -> Memory {
        let snapshot = |version| ModelSnapshot {
            collection: CollectionId::new("c").unwrap(),
            version,
            created_at: Timestamp(0),
            modified_at: Timestamp(version as i64 * 10),
            data: Document::empty(concord_ot::ElementId::new(0, 0)),
        };
        let checkpoints =
            (first..=count).step_by(every as usize).map(|v| (v, snapshot(v))).collect();
        let operations = (1..=count)
            .map(|version| HistoryOperation {
                operation: CommittedOperation {
                    version,
                    author: SessionId("s".into()),
                    timestamp: Timestamp(version as i64 * 10),
                    operation: Operation::Compound(Vec::new()),
                },
                user: None,
            })
            .collect();
        Memory { checkpoints, operations }
    }

    impl HistorySource for Memory {
        fn oldest_checkpoint(&mut self) -> Result<Option<u64>, ReadFailure> {
            Ok(self.checkpoints.keys().next().copied())
        }
        fn checkpoint_at_or_before(
            &mut self,
            v: u64,
        ) -> Result<Option<ModelSnapshot>, ReadFailure> {
            Ok(self.checkpoints.range(..=v).next_back().map(|(_, s)| s.clone()))
        }
        fn operations(
            &mut self,
            after: u64,
            through: u64,
            limit: usize,
        ) -> Result<Vec<HistoryOperation>, ReadFailure> {
            Ok(self
                .operations
                .iter()
                .filter(|o| (after + 1..=through).contains(&o.operation.version))
                .take(limit)
                .cloned()
                .collect())
        }
        fn commit_time(&mut self, version: u64) -> Result<Option<Timestamp>, ReadFailure> {
            Ok(self.operations.get(version as usize - 1).map(|o| o.operation.timestamp))
        }
    }

    fn read(through: u64, query: HistoryQuery) -> HistoryRead {
        HistoryRead {
            request: RequestId(7),
            model: ModelId::new("m").unwrap(),
            collection: CollectionId::new("c").unwrap(),
            created_at: Timestamp(0),
            through,
            modified_at: Timestamp(through as i64 * 10),
            checkpoint_every: 10,
            query,
        }
    }

    fn fetch(start: HistoryStart, checkpoint: bool, max_operations: u32) -> HistoryQuery {
        HistoryQuery::Fetch { start, checkpoint, max_operations, max_bytes: u32::MAX }
    }

    fn page(message: ServerMessage) -> HistoryPage {
        match message {
            ServerMessage::Response { response: ServerResponse::HistoryPage(page), .. } => page,
            other => panic!("not a page: {other:?}"),
        }
    }

    #[test]
    fn open_spans_the_oldest_checkpoint_to_the_current_version() {
        let mut source = memory(95, 20, 10);
        let ServerMessage::Response { response: ServerResponse::HistoryOpened(info), .. } =
            history_reply(&read(95, HistoryQuery::Open), &mut source)
        else {
            panic!("not opened")
        };
        assert_eq!((info.min_version, info.max_version), (20, 95));
    }

    #[test]
    fn a_checkpoint_fetch_starts_at_the_latest_checkpoint_at_or_before_the_start() {
        let mut source = memory(95, 0, 10);
        let got =
            page(history_reply(&read(95, fetch(HistoryStart::Version(37), true, 5)), &mut source));
        assert_eq!(got.checkpoint.map(|c| c.version), Some(30));
        let versions: Vec<u64> = got.operations.iter().map(|o| o.operation.version).collect();
        assert_eq!(versions, vec![31, 32, 33, 34, 35]);
        // Without a checkpoint: the operations after the start, up to the end.
        let got = page(history_reply(
            &read(95, fetch(HistoryStart::Version(93), false, 50)),
            &mut source,
        ));
        let versions: Vec<u64> = got.operations.iter().map(|o| o.operation.version).collect();
        assert_eq!(versions, vec![94, 95]);
    }

    #[test]
    fn pages_are_bounded_in_bytes_but_never_empty_before_the_end() {
        let mut source = memory(50, 0, 10);
        let query = HistoryQuery::Fetch {
            start: HistoryStart::Version(0),
            checkpoint: false,
            max_operations: 100,
            max_bytes: 1,
        };
        assert_eq!(page(history_reply(&read(50, query), &mut source)).operations.len(), 1);
        let one = encoded_len(&source.operations[0]).unwrap() as u32;
        let query = HistoryQuery::Fetch {
            start: HistoryStart::Version(0),
            checkpoint: false,
            max_operations: 100,
            max_bytes: one * 3,
        };
        assert_eq!(page(history_reply(&read(50, query), &mut source)).operations.len(), 3);
        let end =
            page(history_reply(&read(50, fetch(HistoryStart::Version(50), false, 9)), &mut source));
        assert!(end.operations.is_empty());
    }

    #[test]
    fn a_time_resolves_to_the_last_version_committed_by_then() {
        let mut source = memory(95, 0, 10);
        for (time, version) in
            [(-5, 0), (9, 0), (10, 1), (15, 1), (950, 95), (10_000, 95), (420, 42)]
        {
            let got = page(history_reply(
                &read(95, fetch(HistoryStart::Time(Timestamp(time)), false, 0)),
                &mut source,
            ));
            assert_eq!(got.start_version, version, "at time {time}");
        }
    }

    #[test]
    fn a_start_outside_the_history_is_refused() {
        let mut source = memory(95, 20, 10);
        for start in [10, 96] {
            let message =
                history_reply(&read(95, fetch(HistoryStart::Version(start), true, 5)), &mut source);
            let ServerMessage::Error { error, .. } = message else { panic!("accepted {start}") };
            assert_eq!(error.code, ErrorCode::INVALID_ARGUMENT);
        }
    }
}
