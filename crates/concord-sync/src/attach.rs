//! The engine's bookkeeping for the server's limit on models open on one connection
//! (`max_open_models`), and for the progress of background sync. The decisions that use
//! it — which model attaches next, which waits — are in the engine; `docs/sync.md`
//! describes the whole design ("Models open at the server").

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use concord_protocol::ModelId;

use crate::time::{Backoff, Time};

/// What a model in memory holds of the connection's open-model budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Nothing: offline, waiting for a slot, or being created (a creation needs none).
    None,
    /// One of the application's models, kept open at the server.
    Live,
    /// Background sync: a model loaded to sync, or one of the application's models on a
    /// turn (opened only until its changes are acknowledged).
    Sync,
}

/// How many models the engine may keep attached at the server (resynced or opened, not
/// yet closed), and who waits for a slot.
#[derive(Debug)]
pub(crate) struct Budget {
    /// The limit the engine was told (configuration, or the server's session).
    told: Option<usize>,
    /// The limit learned from `overloaded` refusals: the number of models attached when
    /// the refused request was sent.
    learned: Option<usize>,
    /// The most slots background sync uses ([`EngineConfig::sync_concurrency`]).
    ///
    /// [`EngineConfig::sync_concurrency`]: crate::EngineConfig::sync_concurrency
    concurrency: usize,
    /// Slots the application's models hold (and opens at the server on their way).
    pub(crate) live: usize,
    /// Slots background sync holds: stored models being loaded, loaded background models,
    /// and models on a turn.
    pub(crate) sync: usize,
    /// Models attached at the server now, as far as the engine can tell: a resync or open
    /// was sent, and neither refused nor closed.
    pub(crate) attached: usize,
    /// The application's models waiting for a live slot, in order.
    pub(crate) parked: VecDeque<ModelId>,
    /// Models in memory waiting for a sync slot to push their changes (parked application
    /// models with unacknowledged changes).
    pub(crate) turns: VecDeque<ModelId>,
    /// After an `overloaded` refusal, nothing new attaches until `retry.at`.
    pub(crate) retry: Backoff,
    next_order: u64,
}

impl Budget {
    pub(crate) fn new(
        told: Option<usize>,
        concurrency: usize,
        initial_backoff: Duration,
        max_backoff: Duration,
    ) -> Budget {
        Budget {
            told,
            learned: None,
            concurrency: concurrency.max(1),
            live: 0,
            sync: 0,
            attached: 0,
            parked: VecDeque::new(),
            turns: VecDeque::new(),
            retry: Backoff::new(initial_backoff, max_backoff),
            next_order: 0,
        }
    }

    /// The server's limit as far as known.
    pub(crate) fn limit(&self) -> Option<usize> {
        match (self.told, self.learned) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn tell(&mut self, limit: Option<usize>) {
        self.told = limit.map(|l| l.max(1));
    }

    /// The slots background sync may count on while it has work: `sync_concurrency`, but
    /// never more than half the limit (and at least one).
    pub(crate) fn reserve(&self) -> usize {
        match self.limit() {
            Some(limit) => self.concurrency.min((limit / 2).max(1)),
            None => self.concurrency,
        }
    }

    /// How many slots the application's models may hold: all of them, less the sync
    /// reserve while background sync has work.
    pub(crate) fn live_cap(&self, background_work: bool) -> usize {
        match self.limit() {
            None => usize::MAX,
            Some(limit) if background_work => limit.saturating_sub(self.reserve()),
            Some(limit) => limit,
        }
    }

    fn room(&self) -> bool {
        self.limit().is_none_or(|limit| self.live + self.sync < limit)
    }

    pub(crate) fn may_go_live(&self, background_work: bool) -> bool {
        self.retry.at.is_none() && self.live < self.live_cap(background_work) && self.room()
    }

    pub(crate) fn may_sync(&self) -> bool {
        self.retry.at.is_none() && self.sync < self.concurrency && self.room()
    }

    /// A number that orders attachments: the newest live model is parked first.
    pub(crate) fn order(&mut self) -> u64 {
        self.next_order += 1;
        self.next_order
    }

    /// The server refused to attach one more model while `attached_before` were attached:
    /// that is its limit, and the engine retries after a backoff that doubles with every
    /// refusal in a row.
    pub(crate) fn refused(&mut self, now: Time, attached_before: Option<usize>) {
        if let Some(attached) = attached_before {
            let limit = attached.max(1);
            self.learned = Some(self.learned.map_or(limit, |l| l.min(limit)));
        }
        self.retry.failed(now);
    }

    /// An attachment succeeded: the next refusal waits the initial backoff again.
    pub(crate) fn succeeded(&mut self) {
        self.retry.succeeded();
    }

    /// The connection is gone: nothing is attached or held; who waits is decided again on
    /// the next connection.
    pub(crate) fn reset(&mut self) {
        self.live = 0;
        self.sync = 0;
        self.attached = 0;
        self.parked.clear();
        self.turns.clear();
        self.retry.at = None;
    }
}

/// Background sync's progress on the current connection. The models waiting in the
/// engine's queue (`sync_waiting`) count in `total` without being listed here, so that the
/// ids of thousands of models waiting to sync are held once.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The models counted in `total` that left the waiting queue (being loaded or synced),
    /// neither done nor failed yet.
    taken: BTreeSet<ModelId>,
    pub(crate) done: usize,
    pub(crate) failed: usize,
    pub(crate) total: usize,
}

impl Progress {
    /// A new connection syncs the `waiting` models of the queue.
    pub(crate) fn start(&mut self, waiting: usize) {
        self.taken.clear();
        self.done = 0;
        self.failed = 0;
        self.total = waiting;
    }

    /// One more model joined the waiting queue (not counted yet: see
    /// [`Progress::put_back`]).
    pub(crate) fn add_waiting(&mut self) {
        self.total += 1;
    }

    /// A counted model left the waiting queue.
    pub(crate) fn take(&mut self, model: ModelId) {
        self.taken.insert(model);
    }

    /// `model` goes back into the waiting queue; true if it was counted and out of it (it
    /// stays counted once: taken again later, it is done or failed once).
    pub(crate) fn put_back(&mut self, model: &ModelId) -> bool {
        self.taken.remove(model)
    }

    /// Whether `model` is counted and on its way (neither waiting, done nor failed).
    pub(crate) fn counts(&self, model: &ModelId) -> bool {
        self.taken.contains(model)
    }

    /// A model counted as failed is tried again: it is on its way once more, `taken` again
    /// (`None`: back in the waiting queue, taken from there).
    pub(crate) fn retry(&mut self, taken: Option<ModelId>) {
        self.failed = self.failed.saturating_sub(1);
        if let Some(model) = taken {
            self.taken.insert(model);
        }
    }

    /// Every change of `model` is acknowledged; false if it was not counted.
    pub(crate) fn done(&mut self, model: &ModelId) -> bool {
        let counted = self.taken.remove(model);
        self.done += usize::from(counted);
        counted
    }

    /// `model`'s sync stopped with a reported reason; false if it was not counted.
    pub(crate) fn failed(&mut self, model: &ModelId) -> bool {
        let counted = self.taken.remove(model);
        self.failed += usize::from(counted);
        counted
    }

    /// `model` no longer needs syncing (it was deleted here); `waiting` when it was taken
    /// out of the waiting queue for it. False if it was not counted.
    pub(crate) fn dropped(&mut self, model: &ModelId, waiting: bool) -> bool {
        let counted = self.taken.remove(model) || waiting;
        self.total -= usize::from(counted);
        counted
    }

    pub(crate) fn clear(&mut self) {
        self.taken.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(told: Option<usize>, concurrency: usize) -> Budget {
        Budget::new(told, concurrency, Duration::from_millis(100), Duration::from_millis(400))
    }

    #[test]
    fn the_reserve_is_the_concurrency_but_at_most_half_the_limit() {
        assert_eq!(budget(None, 8).reserve(), 8);
        assert_eq!(budget(Some(1_000), 8).reserve(), 8);
        assert_eq!(budget(Some(6), 8).reserve(), 3);
        assert_eq!(budget(Some(1), 8).reserve(), 1);
        let b = budget(Some(10), 4);
        assert_eq!(b.live_cap(true), 6);
        assert_eq!(b.live_cap(false), 10);
        assert_eq!(budget(None, 4).live_cap(true), usize::MAX);
    }

    #[test]
    fn a_refusal_teaches_the_limit_and_backs_off() {
        let mut b = budget(None, 4);
        b.refused(Time::from_millis(0), Some(7));
        assert_eq!(b.limit(), Some(7));
        assert_eq!(b.retry.at, Some(Time::from_millis(100)));
        b.retry.at = None;
        b.refused(Time::from_millis(1_000), Some(9));
        assert_eq!(b.limit(), Some(7), "the lowest count refused is the limit");
        assert_eq!(b.retry.at, Some(Time::from_millis(1_200)));
        b.retry.at = None;
        b.refused(Time::from_millis(2_000), None);
        b.retry.at = None;
        b.refused(Time::from_millis(3_000), None);
        assert_eq!(b.retry.at, Some(Time::from_millis(3_400)), "capped");
        b.succeeded();
        b.retry.at = None;
        b.refused(Time::from_millis(4_000), None);
        assert_eq!(b.retry.at, Some(Time::from_millis(4_100)));
        b.tell(Some(5));
        assert_eq!(b.limit(), Some(5));
    }

    #[test]
    fn progress_counts_each_model_once() {
        let id = |s: &str| ModelId::new(s).expect("valid");
        let mut p = Progress::default();
        // Three waiting; a and b taken out of the queue, c deleted while still in it.
        p.start(3);
        p.take(id("a"));
        p.take(id("b"));
        // a goes back into the queue (its model was closed with changes), still counted
        // once: taken again, it is done once.
        assert!(p.put_back(&id("a")) && !p.put_back(&id("c")));
        p.take(id("a"));
        assert!(p.done(&id("a")) && !p.done(&id("a")));
        assert!(p.failed(&id("b")) && !p.done(&id("b")));
        assert!(p.dropped(&id("c"), true));
        assert!(!p.dropped(&id("c"), false), "counted once");
        assert_eq!((p.done, p.failed, p.total), (1, 1, 2));
        p.add_waiting();
        p.take(id("d"));
        p.take(id("d"));
        assert!(p.dropped(&id("d"), true), "taken and waiting again: dropped once");
        assert_eq!(p.total, 2);
    }
}
