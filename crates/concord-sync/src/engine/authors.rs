//! The users behind other sessions, as collaborator lists and events told them: kept after
//! a session closes the model (or its connection ends), so that what it did — operations
//! replayed later, references — still names its user. Bounded: the oldest sessions are
//! forgotten first.

use std::collections::{BTreeMap, VecDeque};

use concord_protocol::{SessionId, UserId};

/// How many sessions' users the engine remembers.
pub(super) const MAX_REMEMBERED_AUTHORS: usize = 4_096;

#[derive(Debug, Default)]
pub(super) struct Authors {
    users: BTreeMap<SessionId, UserId>,
    /// Sessions in the order they were first told, for forgetting the oldest.
    order: VecDeque<SessionId>,
}

impl Authors {
    pub(super) fn remember(&mut self, session: &SessionId, user: &UserId) {
        if self.users.insert(session.clone(), user.clone()).is_none() {
            self.order.push_back(session.clone());
            while self.order.len() > MAX_REMEMBERED_AUTHORS {
                if let Some(oldest) = self.order.pop_front() {
                    self.users.remove(&oldest);
                }
            }
        }
    }

    pub(super) fn user(&self, session: &SessionId) -> Option<&UserId> {
        self.users.get(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_sessions_are_forgotten_past_the_bound() {
        let mut authors = Authors::default();
        for n in 0..MAX_REMEMBERED_AUTHORS + 2 {
            authors.remember(&SessionId(format!("s{n}")), &UserId(format!("u{n}")));
        }
        assert_eq!(authors.user(&SessionId("s0".into())), None);
        assert_eq!(authors.user(&SessionId("s1".into())), None);
        assert_eq!(authors.user(&SessionId("s2".into())), Some(&UserId("u2".into())));
        let last = MAX_REMEMBERED_AUTHORS + 1;
        assert_eq!(authors.user(&SessionId(format!("s{last}"))), Some(&UserId(format!("u{last}"))));
        assert_eq!(authors.users.len(), MAX_REMEMBERED_AUTHORS);
    }
}
