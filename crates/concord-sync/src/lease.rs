//! A node's leases on the models it sequences, when several server nodes share one store:
//! which models it may write, under which fencing epoch, until when by its own clock, and
//! when to renew them (all in one request). Sans-IO: the driver carries out the requests
//! against the store and passes the time in.
//!
//! The store is the authority: it grants a lease with a new epoch when the model's lease
//! is free or expired by the store's clock (`granted_at + ttl`), renews those whose epoch
//! still matches, and refuses any append whose epoch is not the model's current one. So a
//! node that lost its lease (paused, partitioned, slow) can never append, whatever it
//! believes. [`Leases`] only keeps the node's belief conservative, so that it stops serving
//! a model before the store may give it to another node: a lease is taken as valid until
//! the time the request that granted or renewed it was *sent*, plus the lease time, less a
//! safety margin. That holds as long as the node's clock does not run slower than the
//! store's by more than the margin over one lease time.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Time;

/// How long leases last and how often they are renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long the store keeps a lease after granting or renewing it: a dead node's models
    /// are free for another node after this long.
    pub ttl: Duration,
    /// How often the node renews all of its leases, in one request.
    pub renew_every: Duration,
    /// How much sooner than the store the node gives a lease up (clock rate differences,
    /// a reply that took long).
    pub margin: Duration,
}

impl Default for LeaseConfig {
    /// A dead node's models are taken over within 4 s; leases are renewed every second.
    fn default() -> LeaseConfig {
        LeaseConfig {
            ttl: Duration::from_secs(4),
            renew_every: Duration::from_secs(1),
            margin: Duration::from_secs(1),
        }
    }
}

impl LeaseConfig {
    /// Checks that a lease can be renewed before the node gives it up.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        if self.margin >= self.ttl {
            return Err(LeaseConfigError::MarginNotBelowTtl);
        }
        if self.renew_every.is_zero() || self.renew_every >= self.ttl - self.margin {
            return Err(LeaseConfigError::RenewalTooRare);
        }
        Ok(())
    }

    /// How long a lease is held by the node's clock after the request that got it was sent.
    fn valid_for(&self) -> Duration {
        self.ttl.saturating_sub(self.margin)
    }
}

/// A lease configuration that cannot keep leases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    #[error("the lease margin must be shorter than the lease time")]
    MarginNotBelowTtl,
    #[error("leases must be renewed more often than the lease time less the margin")]
    RenewalTooRare,
}

/// One lease as the node holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    epoch: u64,
    valid_until: Time,
}

/// The leases of one node, keyed by model (`K`).
#[derive(Debug, Clone)]
pub struct Leases<K> {
    config: LeaseConfig,
    held: BTreeMap<K, Held>,
    /// The renewal awaiting its answer: when it was sent, and the epochs it asked for.
    renewing: Option<(Time, BTreeMap<K, u64>)>,
    next_renewal: Time,
}

impl<K: Ord + Clone> Leases<K> {
    pub fn new(config: LeaseConfig) -> Leases<K> {
        Leases { config, held: BTreeMap::new(), renewing: None, next_renewal: Time::ZERO }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// The store granted `key` with `epoch`, answering a request sent at `sent_at`.
    pub fn granted(&mut self, key: K, epoch: u64, sent_at: Time) {
        let valid_until = sent_at + self.config.valid_for();
        self.held.insert(key, Held { epoch, valid_until });
    }

    /// The epoch under which the node may write `key` at `now`, if it holds its lease.
    pub fn epoch(&self, key: &K, now: Time) -> Option<u64> {
        self.held.get(key).filter(|held| now < held.valid_until).map(|held| held.epoch)
    }

    /// The leases to renew now, in one request, if a renewal is due; the driver sends it
    /// and answers with [`renewed`](Self::renewed) or [`renewal_failed`](Self::renewal_failed).
    pub fn poll_renewal(&mut self, now: Time) -> Option<Vec<(K, u64)>> {
        if let Some((sent_at, _)) = &self.renewing {
            // An answer that never came: the leases it asked for have run out by now.
            if now < *sent_at + self.config.ttl {
                return None;
            }
            self.renewing = None;
        }
        if self.held.is_empty() || now < self.next_renewal {
            return None;
        }
        let asked: BTreeMap<K, u64> =
            self.held.iter().map(|(key, held)| (key.clone(), held.epoch)).collect();
        let request = asked.iter().map(|(key, epoch)| (key.clone(), *epoch)).collect();
        self.renewing = Some((now, asked));
        self.next_renewal = now + self.config.renew_every;
        Some(request)
    }

    /// The store renewed `kept` (the leases of the last renewal it still had, with their
    /// epochs); returns the leases the node lost: asked for, still held, and not kept.
    pub fn renewed(&mut self, kept: &[(K, u64)]) -> Vec<(K, u64)> {
        let Some((sent_at, asked)) = self.renewing.take() else { return Vec::new() };
        let valid_until = sent_at + self.config.valid_for();
        let kept: BTreeMap<&K, u64> = kept.iter().map(|(key, epoch)| (key, *epoch)).collect();
        let mut lost = Vec::new();
        for (key, epoch) in asked {
            let Some(held) = self.held.get_mut(&key) else { continue };
            if held.epoch != epoch {
                continue; // Granted again since: the new grant stands on its own.
            }
            if kept.get(&key) == Some(&epoch) {
                held.valid_until = held.valid_until.max(valid_until);
            } else {
                self.held.remove(&key);
                lost.push((key, epoch));
            }
        }
        lost
    }

    /// The renewal could not be made (the store is unreachable): leases run out as they
    /// are, and the next renewal is tried when due.
    pub fn renewal_failed(&mut self) {
        self.renewing = None;
    }

    /// Removes and returns the leases that ran out by `now`: the node stops serving them.
    pub fn expire(&mut self, now: Time) -> Vec<(K, u64)> {
        let expired: Vec<(K, u64)> = (self.held.iter())
            .filter(|(_, held)| now >= held.valid_until)
            .map(|(key, held)| (key.clone(), held.epoch))
            .collect();
        for (key, _) in &expired {
            self.held.remove(key);
        }
        expired
    }

    /// Gives `key` up (an append under `epoch` was fenced, or the model is handed over);
    /// returns the epoch it was held under, for a release request to the store.
    pub fn drop_lease(&mut self, key: &K, epoch: Option<u64>) -> Option<u64> {
        match self.held.get(key) {
            Some(held) if epoch.is_none_or(|e| e == held.epoch) => {
                self.held.remove(key).map(|held| held.epoch)
            }
            _ => None,
        }
    }

    /// Every lease held, with its epoch (to release them all at shutdown).
    pub fn held(&self) -> Vec<(K, u64)> {
        self.held.iter().map(|(key, held)| (key.clone(), held.epoch)).collect()
    }

    /// When the node must next call [`poll_renewal`](Self::poll_renewal) or
    /// [`expire`](Self::expire).
    pub fn poll_timeout(&self) -> Option<Time> {
        let expiry = self.held.values().map(|held| held.valid_until).min()?;
        let renewal = match &self.renewing {
            Some((sent_at, _)) => *sent_at + self.config.ttl,
            None => self.next_renewal,
        };
        Some(expiry.min(renewal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Time {
        Time::from_millis(millis)
    }

    #[test]
    fn a_lease_is_held_until_its_request_was_sent_plus_ttl_less_margin() {
        let mut leases = Leases::new(LeaseConfig::default());
        leases.granted("a", 7, ms(1_000));
        assert_eq!(leases.epoch(&"a", ms(3_999)), Some(7));
        assert_eq!(leases.epoch(&"a", ms(4_000)), None);
        assert_eq!(leases.expire(ms(4_000)), vec![("a", 7)]);
        assert_eq!(leases.epoch(&"a", ms(1_000)), None);
    }

    #[test]
    fn renewal_is_one_request_and_extends_from_when_it_was_sent() {
        let mut leases = Leases::new(LeaseConfig::default());
        leases.granted("a", 1, ms(0));
        leases.granted("b", 2, ms(0));
        let request = leases.poll_renewal(ms(10)).unwrap();
        assert_eq!(request, vec![("a", 1), ("b", 2)]);
        // One at a time.
        assert_eq!(leases.poll_renewal(ms(2_000)), None);
        leases.granted("c", 3, ms(500));
        let lost = leases.renewed(&[("a", 1)]);
        assert_eq!(lost, vec![("b", 2)]);
        assert_eq!(leases.epoch(&"a", ms(3_009)), Some(1));
        assert_eq!(leases.epoch(&"a", ms(3_010)), None);
        assert_eq!(leases.epoch(&"b", ms(100)), None);
        // Granted after the renewal was sent: untouched.
        assert_eq!(leases.epoch(&"c", ms(3_499)), Some(3));
    }

    #[test]
    fn a_renewal_never_answered_is_sent_again_and_leases_run_out_meanwhile() {
        let mut leases = Leases::new(LeaseConfig::default());
        leases.granted("a", 1, ms(0));
        assert!(leases.poll_renewal(ms(0)).is_some());
        assert_eq!(leases.poll_timeout(), Some(ms(3_000)));
        assert_eq!(leases.expire(ms(3_000)), vec![("a", 1)]);
        assert_eq!(leases.poll_renewal(ms(4_000)), None, "nothing left to renew");
        leases.granted("a", 2, ms(5_000));
        assert_eq!(leases.poll_renewal(ms(5_000)), Some(vec![("a", 2)]));
        // A store that no longer has the lease keeps nothing.
        assert_eq!(leases.renewed(&[]), vec![("a", 2)]);
    }

    #[test]
    fn a_fenced_epoch_drops_only_that_grant() {
        let mut leases = Leases::new(LeaseConfig::default());
        leases.granted("a", 4, ms(0));
        assert_eq!(leases.drop_lease(&"a", Some(3)), None);
        assert_eq!(leases.drop_lease(&"a", Some(4)), Some(4));
        assert_eq!(leases.held(), vec![]);
    }

    #[test]
    fn configurations_that_cannot_renew_in_time_are_refused() {
        assert_eq!(LeaseConfig::default().validate(), Ok(()));
        let margin = LeaseConfig { margin: Duration::from_secs(4), ..LeaseConfig::default() };
        assert_eq!(margin.validate(), Err(LeaseConfigError::MarginNotBelowTtl));
        let rare = LeaseConfig { renew_every: Duration::from_secs(3), ..LeaseConfig::default() };
        assert_eq!(rare.validate(), Err(LeaseConfigError::RenewalTooRare));
    }
}
