//! A read-only cursor over a model's history ([`HistoryCursor`]), sans-IO: it holds the
//! model at one version and moves it to another with what the server's history pages give
//! it — a checkpoint and the operations after it — applying operations forwards and their
//! exact inverses backwards.
//!
//! Moving asks for pages with [`HistoryCursor::seek`]: it goes as far as what it holds
//! allows, then names the page it needs ([`HistoryFetch`]); hand that page to
//! [`HistoryCursor::take_page`] and seek again. Costs:
//! - forwards, each operation is applied once; a target more than a checkpoint interval
//!   ahead is reached from the latest checkpoint before it instead, so reaching any version
//!   applies at most one interval of operations;
//! - backwards, each step applies the inverse recorded when the operation was applied (the
//!   last `max_behind` of them are kept); past them, the model is rebuilt from a checkpoint.
//!
//! It never holds more than one page of operations it has not applied.

use std::collections::VecDeque;

use concord_ot::{DiscreteOperation, Document, Operation};
use concord_protocol::{HistoryInfo, HistoryOperation, HistoryPage, HistoryStart, Timestamp};

/// Why the history cannot be moved or read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    #[error("version {version} is outside the history ({min}..={max})")]
    OutOfRange { version: u64, min: u64, max: u64 },
    /// The server sent a page that does not continue what was asked for.
    #[error("the server sent a history page that does not fit: {0}")]
    BadPage(String),
    /// An operation of the history does not apply to the model it follows.
    #[error("operation {version} of the history does not apply: {message}")]
    DoesNotApply { version: u64, message: String },
}

/// The page a cursor needs next: send it as a `HistoryFetch` (with the page size you
/// choose) and hand the answer to [`HistoryCursor::take_page`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryFetch {
    pub start: HistoryStart,
    pub checkpoint: bool,
}

/// An applied operation and its exact inverse (to apply in order).
#[derive(Debug, Clone)]
struct Step {
    operation: HistoryOperation,
    inverse: Vec<DiscreteOperation>,
}

/// The model at one version of its history, and what it needs to move.
#[derive(Debug, Clone)]
pub struct HistoryCursor {
    info: HistoryInfo,
    /// `None` until the first checkpoint arrives.
    document: Option<Document>,
    version: u64,
    /// When the current version was made (the checkpoint's time before any step).
    modified_at: Timestamp,
    /// The last operations applied, newest last: versions `(version - len, version]`.
    behind: VecDeque<Step>,
    max_behind: usize,
    /// When the version just before `behind` was made.
    base_modified_at: Timestamp,
    /// Operations fetched and not applied yet: versions `version + 1 ..`, at most `page`.
    ahead: VecDeque<HistoryOperation>,
    page: usize,
    /// What the last `seek` asked for, to check the page against.
    asked: Option<HistoryFetch>,
}

impl HistoryCursor {
    /// A cursor over the history `info` describes, at no version yet (seek first), that
    /// holds at most `page` operations it has not applied (ask for pages of at most that
    /// many). It keeps the inverses of the last two checkpoint intervals of operations it
    /// applied (at least `page`).
    pub fn new(info: HistoryInfo, page: usize) -> HistoryCursor {
        let interval = usize::try_from(info.checkpoint_every).unwrap_or(usize::MAX);
        let version = info.min_version;
        let modified_at = info.created_at;
        HistoryCursor {
            info,
            document: None,
            version,
            modified_at,
            behind: VecDeque::new(),
            max_behind: interval.saturating_mul(2).max(page).max(1),
            base_modified_at: modified_at,
            ahead: VecDeque::new(),
            page: page.max(1),
            asked: None,
        }
    }

    pub fn info(&self) -> &HistoryInfo {
        &self.info
    }

    /// The version the cursor is at.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn min_version(&self) -> u64 {
        self.info.min_version
    }

    /// The newest version known (it grows as pages report a longer history).
    pub fn max_version(&self) -> u64 {
        self.info.max_version
    }

    /// The model at [`version`](Self::version); `None` before the first seek completes.
    pub fn document(&self) -> Option<&Document> {
        self.document.as_ref()
    }

    /// When the current version was committed (the model's creation at version 0).
    pub fn modified_at(&self) -> Timestamp {
        self.modified_at
    }

    /// The operation that made the current version, with its author and time; `None` at
    /// the oldest version.
    pub fn operation(&self) -> Option<&HistoryOperation> {
        self.behind.back().map(|step| &step.operation)
    }

    /// How many fetched operations are not applied yet (at most one page).
    pub fn unapplied(&self) -> usize {
        self.ahead.len()
    }

    /// Moves toward `target` with what the cursor holds; returns the page it needs to go
    /// on, or `None` once it is at `target`.
    pub fn seek(&mut self, target: u64) -> Result<Option<HistoryFetch>, HistoryError> {
        let (min, max) = (self.info.min_version, self.info.max_version);
        if !(min..=max).contains(&target) {
            return Err(HistoryError::OutOfRange { version: target, min, max });
        }
        self.asked = None;
        if self.document.is_none() {
            return Ok(Some(self.ask(self.rebuild_from(target))));
        }
        if target < self.version {
            // Within the recorded inverses, the operation that made `target` included (so
            // that it can be told), unless `target` is the oldest version.
            let oldest_reachable = self.version - self.behind.len() as u64;
            let reachable =
                target > oldest_reachable || target == min && target == oldest_reachable;
            if !reachable {
                return Ok(Some(self.ask(self.rebuild_from(target))));
            }
            while self.version > target {
                self.step_back()?;
            }
            return Ok(None);
        }
        while self.version < target {
            if self.ahead.is_empty() {
                let fetch = if target - self.version > self.info.checkpoint_every {
                    self.rebuild_from(target)
                } else {
                    HistoryFetch { start: HistoryStart::Version(self.version), checkpoint: false }
                };
                return Ok(Some(self.ask(fetch)));
            }
            self.step_forward()?;
        }
        Ok(None)
    }

    /// A fetch that rebuilds the model from the checkpoint before `target` (so that the
    /// operation making `target` is applied, and known).
    fn rebuild_from(&self, target: u64) -> HistoryFetch {
        let start = target.saturating_sub(1).max(self.info.min_version);
        HistoryFetch { start: HistoryStart::Version(start), checkpoint: true }
    }

    fn ask(&mut self, fetch: HistoryFetch) -> HistoryFetch {
        self.asked = Some(fetch);
        fetch
    }

    /// Takes the answer to the fetch the last [`seek`](Self::seek) asked for.
    pub fn take_page(&mut self, page: HistoryPage) -> Result<(), HistoryError> {
        let bad = |message: String| Err(HistoryError::BadPage(message));
        let Some(asked) = self.asked.take() else {
            return bad("no page was asked for".into());
        };
        let first = match (asked.checkpoint, &page.checkpoint) {
            (true, Some(checkpoint)) => {
                let HistoryStart::Version(start) = asked.start else {
                    return bad("a checkpoint for a start by time".into());
                };
                if checkpoint.version > start || checkpoint.version < self.info.min_version {
                    return bad(format!(
                        "checkpoint {} for a start at {start}",
                        checkpoint.version
                    ));
                }
                checkpoint.version + 1
            }
            (false, None) => self.version + 1,
            _ => return bad("a checkpoint where none was asked for, or none where one was".into()),
        };
        let versions = page.operations.iter().map(|o| o.operation.version);
        if versions.ne(first..first + page.operations.len() as u64) {
            return bad(format!("its operations do not start at version {first} without a gap"));
        }
        self.info.max_version = self.info.max_version.max(page.max_version);
        if page.operations.is_empty() && self.version < self.info.max_version {
            return bad(format!("no operations after version {}", self.version));
        }
        if page.operations.len() > self.page {
            return bad(format!("{} operations, more than a page", page.operations.len()));
        }
        if let Some(checkpoint) = page.checkpoint {
            self.document = Some(checkpoint.data);
            self.version = checkpoint.version;
            self.modified_at = checkpoint.modified_at;
            self.base_modified_at = checkpoint.modified_at;
            self.behind.clear();
        }
        self.ahead = page.operations.into();
        Ok(())
    }

    fn step_forward(&mut self) -> Result<(), HistoryError> {
        let Some(operation) = self.ahead.pop_front() else { return Ok(()) };
        let document = self.document.as_mut().expect("a cursor with operations has a model");
        let version = operation.operation.version;
        let applied = document
            .apply(&operation.operation.operation)
            .map_err(|e| HistoryError::DoesNotApply { version, message: e.to_string() })?;
        let discrete: &[DiscreteOperation] = match &operation.operation.operation {
            Operation::Discrete(op) => std::slice::from_ref(op),
            Operation::Compound(ops) => ops,
        };
        let inverse =
            discrete.iter().zip(&applied).rev().filter_map(|(op, a)| a.inverse(op)).collect();
        self.version = version;
        self.modified_at = operation.operation.timestamp;
        self.behind.push_back(Step { operation, inverse });
        if self.behind.len() > self.max_behind
            && let Some(dropped) = self.behind.pop_front()
        {
            self.base_modified_at = dropped.operation.operation.timestamp;
        }
        Ok(())
    }

    fn step_back(&mut self) -> Result<(), HistoryError> {
        let Some(step) = self.behind.pop_back() else { return Ok(()) };
        let document = self.document.as_mut().expect("a cursor with steps has a model");
        let version = step.operation.operation.version;
        for inverse in &step.inverse {
            document
                .apply_discrete(inverse)
                .map_err(|e| HistoryError::DoesNotApply { version, message: e.to_string() })?;
        }
        self.version = version - 1;
        self.modified_at = match self.behind.back() {
            Some(previous) => previous.operation.operation.timestamp,
            None => self.base_modified_at,
        };
        // The undone operation comes next again; the farthest goes past a page.
        if self.ahead.len() >= self.page {
            self.ahead.pop_back();
        }
        self.ahead.push_front(step.operation);
        Ok(())
    }
}
