//! The history cursor against the server's history answers (`host::history_reply`) over a
//! history kept in memory: every version is reproduced exactly whichever way it is reached,
//! each step tells its operation, and the cursor never holds more than a page it has not
//! applied.

use std::collections::BTreeMap;

use concord_ot::Value;
use concord_ot::{DiscreteOperation, Document, IdGenerator, Operation, OperationKind, ReplicaId};
use concord_protocol::{
    CollectionId, CommittedOperation, ErrorCode, HistoryOperation, HistoryStart, ModelId,
    ModelSnapshot, RequestId, ServerMessage, ServerResponse, SessionId, Timestamp, UserId,
};
use concord_sync::history::{HistoryCursor, HistoryError};
use concord_sync::host::{HistoryQuery, HistoryRead, HistorySource, ReadFailure, history_reply};

/// A model's whole history: every state, the operations, checkpoints every `every`.
struct History {
    states: Vec<serde_json::Value>,
    operations: Vec<HistoryOperation>,
    checkpoints: BTreeMap<u64, ModelSnapshot>,
}

/// A small deterministic generator (xorshift), so that failures replay.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// `count` operations of two authors on `{"text", "items", "n"}`: splices, array inserts and
/// removals, property sets and removals, number deltas.
fn history(count: u64, every: u64, first_checkpoint: u64) -> History {
    let mut ids = IdGenerator::new(ReplicaId(1), 0);
    let root = serde_json::json!({"text": "", "items": [], "n": 0, "props": {}});
    let mut document = Document::new(Value::from_json(&root, &mut ids).unwrap()).unwrap();
    let path =
        |document: &Document, key: &str| document.object_entries(document.root_id()).unwrap()[key];
    let (text, items, n, props) = (
        path(&document, "text"),
        path(&document, "items"),
        path(&document, "n"),
        path(&document, "props"),
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let snapshot = |document: &Document, version: u64| ModelSnapshot {
        collection: CollectionId::new("notes").unwrap(),
        version,
        created_at: Timestamp(1_000),
        modified_at: Timestamp(1_000 + version as i64 * 7),
        data: document.clone(),
    };
    let mut out = History {
        states: vec![document.to_json()],
        operations: Vec::new(),
        checkpoints: BTreeMap::new(),
    };
    if first_checkpoint == 0 {
        out.checkpoints.insert(0, snapshot(&document, 0));
    }
    for version in 1..=count {
        let text_len = document.text_len(text).unwrap() as u64;
        let items_len = document.array_len(items).unwrap() as u64;
        let kind = match rng.below(7) {
            0 | 1 if text_len > 0 => {
                let index = rng.below(text_len) as usize;
                let delete_count = rng.below(3).min(text_len - index as u64) as usize;
                OperationKind::StringSplice {
                    index,
                    delete_count,
                    insert: "xé".repeat(rng.below(3) as usize),
                }
            }
            0 | 1 => OperationKind::StringSplice { index: 0, delete_count: 0, insert: "ab".into() },
            2 => {
                let value = Value::from_json(&serde_json::json!({"v": version}), &mut ids).unwrap();
                OperationKind::ArrayInsert { index: rng.below(items_len + 1) as usize, value }
            }
            3 if items_len > 0 => {
                OperationKind::ArrayRemove { index: rng.below(items_len) as usize }
            }
            3..=5 => {
                let key = format!("k{}", rng.below(5));
                let exists = document.object_entries(props).unwrap().contains_key(&key);
                let value = Value::from_json(&serde_json::json!([version]), &mut ids).unwrap();
                match (exists, rng.below(2)) {
                    (false, _) => OperationKind::ObjectAddProperty { key, value },
                    (true, 0) => OperationKind::ObjectSetProperty { key, value },
                    (true, _) => OperationKind::ObjectRemoveProperty { key },
                }
            }
            _ => OperationKind::NumberDelta { delta: 0.1 },
        };
        let target = match &kind {
            OperationKind::StringSplice { .. } => text,
            OperationKind::ArrayInsert { .. } | OperationKind::ArrayRemove { .. } => items,
            OperationKind::NumberDelta { .. } => n,
            _ => props,
        };
        let operation = Operation::Compound(vec![DiscreteOperation::new(target, kind)]);
        document.apply(&operation).unwrap();
        out.states.push(document.to_json());
        let author = version % 2;
        out.operations.push(HistoryOperation {
            operation: CommittedOperation {
                version,
                author: SessionId(format!("session-{author}")),
                timestamp: Timestamp(1_000 + version as i64 * 7),
                operation,
            },
            user: Some(UserId(format!("user-{author}"))),
        });
        if version >= first_checkpoint && (version - first_checkpoint).is_multiple_of(every) {
            out.checkpoints.insert(version, snapshot(&document, version));
        }
    }
    out
}

impl HistorySource for History {
    fn oldest_checkpoint(&mut self) -> Result<Option<u64>, ReadFailure> {
        Ok(self.checkpoints.keys().next().copied())
    }
    fn checkpoint_at_or_before(
        &mut self,
        version: u64,
    ) -> Result<Option<ModelSnapshot>, ReadFailure> {
        Ok(self.checkpoints.range(..=version).next_back().map(|(_, s)| s.clone()))
    }
    fn operations(
        &mut self,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<HistoryOperation>, ReadFailure> {
        let end = through.min(self.operations.len() as u64) as usize;
        Ok(self.operations[(after as usize).min(end)..end].iter().take(limit).cloned().collect())
    }
    fn commit_time(&mut self, version: u64) -> Result<Option<Timestamp>, ReadFailure> {
        Ok(self.operations.get(version as usize - 1).map(|o| o.operation.timestamp))
    }
}

const PAGE: u32 = 16;

/// A client of `history` over the pure answers; counts the operations applied per move.
struct Client {
    history: History,
    every: u64,
    cursor: HistoryCursor,
    fetches: usize,
}

impl Client {
    fn open(mut history: History, every: u64) -> Client {
        let through = history.operations.len() as u64;
        let message = history_reply(&read(every, through, HistoryQuery::Open), &mut history);
        let ServerMessage::Response { response: ServerResponse::HistoryOpened(info), .. } = message
        else {
            panic!("not opened: {message:?}")
        };
        let cursor = HistoryCursor::new(info, PAGE as usize);
        Client { history, every, cursor, fetches: 0 }
    }

    fn read(&self, through: u64, query: HistoryQuery) -> HistoryRead {
        read(self.every, through, query)
    }

    fn play_to(&mut self, target: u64) -> Result<(), HistoryError> {
        while let Some(fetch) = self.cursor.seek(target)? {
            self.fetches += 1;
            let query = HistoryQuery::Fetch {
                start: fetch.start,
                checkpoint: fetch.checkpoint,
                max_operations: PAGE,
                max_bytes: u32::MAX,
            };
            let through = self.history.operations.len() as u64;
            let message = history_reply(&self.read(through, query), &mut self.history);
            let ServerMessage::Response { response: ServerResponse::HistoryPage(page), .. } =
                message
            else {
                panic!("no page: {message:?}")
            };
            self.cursor.take_page(page)?;
            assert!(self.cursor.unapplied() <= PAGE as usize);
        }
        Ok(())
    }

    fn check(&self) {
        let v = self.cursor.version();
        assert_eq!(
            self.cursor.document().unwrap().to_json(),
            self.history.states[v as usize],
            "at {v}"
        );
        match self.cursor.operation() {
            Some(op) => assert_eq!(*op, self.history.operations[v as usize - 1]),
            None => assert_eq!(v, self.cursor.min_version()),
        }
        if v > 0 {
            assert_eq!(self.cursor.modified_at(), Timestamp(1_000 + v as i64 * 7));
        }
    }
}

fn read(every: u64, through: u64, query: HistoryQuery) -> HistoryRead {
    HistoryRead {
        request: RequestId(1),
        model: ModelId::new("m").unwrap(),
        collection: CollectionId::new("notes").unwrap(),
        created_at: Timestamp(1_000),
        through,
        modified_at: Timestamp(1_000 + through as i64 * 7),
        checkpoint_every: every,
        query,
    }
}

#[test]
fn every_version_is_reproduced_forwards_and_backwards() {
    let mut client = Client::open(history(300, 25, 0), 25);
    client.play_to(0).unwrap();
    client.check();
    for v in 1..=300 {
        client.play_to(v).unwrap();
        client.check();
    }
    let fetches = client.fetches;
    for v in (0..300).rev() {
        client.play_to(v).unwrap();
        client.check();
    }
    // Backwards runs on inverses, with a rebuild from a checkpoint only every interval or so.
    assert!(
        client.fetches - fetches <= 300 / 25 * 3,
        "{} fetches backwards",
        client.fetches - fetches
    );
}

#[test]
fn random_jumps_land_on_the_exact_state() {
    let mut client = Client::open(history(500, 40, 0), 40);
    let mut rng = Rng(42);
    for _ in 0..200 {
        let target = rng.below(501);
        client.play_to(target).unwrap();
        client.check();
        // A short step either way from there.
        let step = rng.below(30);
        let back = client.cursor.version().saturating_sub(step);
        client.play_to(back).unwrap();
        client.check();
    }
}

#[test]
fn a_history_kept_from_a_later_version_starts_there() {
    let mut client = Client::open(history(120, 30, 37), 30);
    assert_eq!(client.cursor.min_version(), 37);
    client.play_to(37).unwrap();
    client.check();
    client.play_to(120).unwrap();
    client.check();
    let err = client.play_to(36).unwrap_err();
    assert_eq!(err, HistoryError::OutOfRange { version: 36, min: 37, max: 120 });
}

#[test]
fn a_page_that_does_not_continue_is_refused() {
    let mut client = Client::open(history(50, 10, 0), 10);
    client.play_to(5).unwrap();
    // The first page (from checkpoint 0) ends at 16: on to 20 needs the next one.
    let fetch = client.cursor.seek(20).unwrap().expect("needs a page");
    assert_eq!(fetch.start, HistoryStart::Version(16));
    assert!(!fetch.checkpoint);
    // Versions 18 and 19: 17 is missing.
    let page_ops = client.history.operations[17..19].to_vec();
    let page = concord_protocol::HistoryPage {
        model: ModelId::new("m").unwrap(),
        start_version: 16,
        checkpoint: None,
        operations: page_ops,
        max_version: 50,
    };
    assert!(matches!(client.cursor.take_page(page), Err(HistoryError::BadPage(_))));
}

#[test]
fn a_time_resolves_to_the_version_committed_by_then() {
    let mut source = history(100, 10, 0);
    let client = Client::open(history(1, 10, 0), 10);
    let query = HistoryQuery::Fetch {
        start: HistoryStart::Time(Timestamp(1_000 + 42 * 7 + 3)),
        checkpoint: false,
        max_operations: 0,
        max_bytes: 0,
    };
    let ServerMessage::Response { response: ServerResponse::HistoryPage(page), .. } =
        history_reply(&client.read(100, query), &mut source)
    else {
        panic!("no page")
    };
    assert_eq!(page.start_version, 42);
    assert!(page.operations.is_empty());
}

/// A store that answers `reads` reads of `history`, then fails every one as `failure` says
/// (PostgreSQL dropping the connection in the middle of an answer, say).
struct FailsAfter {
    history: History,
    reads: usize,
    failure: ReadFailure,
}

impl FailsAfter {
    fn read(&mut self) -> Result<&mut History, ReadFailure> {
        if self.reads == 0 {
            return Err(self.failure.clone());
        }
        self.reads -= 1;
        Ok(&mut self.history)
    }
}

impl HistorySource for FailsAfter {
    fn oldest_checkpoint(&mut self) -> Result<Option<u64>, ReadFailure> {
        self.read()?.oldest_checkpoint()
    }
    fn checkpoint_at_or_before(
        &mut self,
        version: u64,
    ) -> Result<Option<ModelSnapshot>, ReadFailure> {
        self.read()?.checkpoint_at_or_before(version)
    }
    fn operations(
        &mut self,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<HistoryOperation>, ReadFailure> {
        self.read()?.operations(after, through, limit)
    }
    fn commit_time(&mut self, version: u64) -> Result<Option<Timestamp>, ReadFailure> {
        self.read()?.commit_time(version)
    }
}

#[test]
fn a_store_failing_midway_is_answered_unavailable_or_internal_as_it_says() {
    let by_version = HistoryQuery::Fetch {
        start: HistoryStart::Version(25),
        checkpoint: true,
        max_operations: PAGE,
        max_bytes: u32::MAX,
    };
    let by_time = HistoryQuery::Fetch {
        start: HistoryStart::Time(Timestamp(1_000 + 42 * 7)),
        checkpoint: false,
        max_operations: PAGE,
        max_bytes: u32::MAX,
    };
    // Failing at each read: by version, the oldest checkpoint, the checkpoint, the
    // operations; by time, the oldest checkpoint and the binary search's first commit times.
    for (query, reads) in [(by_version, 3), (by_time, 5)] {
        for (unavailable, code) in [(true, ErrorCode::UNAVAILABLE), (false, ErrorCode::INTERNAL)] {
            for answered in 0..reads {
                let failure = ReadFailure { unavailable, message: "connection reset".into() };
                let mut source =
                    FailsAfter { history: history(50, 10, 0), reads: answered, failure };
                match history_reply(&read(10, 50, query), &mut source) {
                    ServerMessage::Error { to: Some(RequestId(1)), error } => {
                        assert_eq!(error.code, code, "{query:?} failing after {answered} reads");
                        assert!(error.message.contains("connection reset"), "{error:?}");
                    }
                    other => panic!("{query:?} failing after {answered} reads: {other:?}"),
                }
            }
            // Given every read it needs, the same request is answered.
            let failure = ReadFailure { unavailable, message: "connection reset".into() };
            let mut source = FailsAfter { history: history(50, 10, 0), reads: 64, failure };
            let answer = history_reply(&read(10, 50, query), &mut source);
            assert!(
                matches!(
                    answer,
                    ServerMessage::Response { response: ServerResponse::HistoryPage(_), .. }
                ),
                "{answer:?}"
            );
        }
    }
}
