//! Presence across one domain, sans-IO: which users have a session connected, the state
//! each user publishes, and which sessions follow whom. The caller tells it sessions that
//! start and end and passes it their presence requests; it gives back messages for
//! connections. Nothing of it is stored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use concord_protocol::{
    ErrorCode, ErrorReply, PresenceRequest, PresenceState, RequestId, ServerMessage, ServerPush,
    ServerResponse, UserId, UserPresence,
};

use super::{ConnId, SessionRef, reply};

/// What one user's state, and one session's follows, may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLimits {
    /// Bytes of keys and values in one user's state (shared by all of their sessions).
    pub max_state_bytes: usize,
    /// Users one session follows at once.
    pub max_followed: usize,
    /// Bytes of one followed user id.
    pub max_user_id_bytes: usize,
}

impl Default for PresenceLimits {
    fn default() -> PresenceLimits {
        PresenceLimits { max_state_bytes: 16 * 1024, max_followed: 1_000, max_user_id_bytes: 256 }
    }
}

/// A message for some connections (from presence or activities).
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    pub to: Vec<ConnId>,
    pub message: ServerMessage,
}

#[derive(Debug, Default)]
struct UserEntry {
    sessions: BTreeSet<ConnId>,
    state: PresenceState,
}

#[derive(Debug)]
struct SessionEntry {
    user: UserId,
    follows: BTreeSet<UserId>,
}

/// The presence of one domain's users.
#[derive(Debug, Default)]
pub struct PresenceHost {
    limits: PresenceLimits,
    /// Users with at least one session connected.
    users: BTreeMap<UserId, UserEntry>,
    sessions: BTreeMap<ConnId, SessionEntry>,
    followers: BTreeMap<UserId, BTreeSet<ConnId>>,
    outputs: VecDeque<Broadcast>,
}

impl PresenceHost {
    pub fn new(limits: PresenceLimits) -> PresenceHost {
        PresenceHost { limits, ..PresenceHost::default() }
    }

    /// A session started: its user is available from now on.
    pub fn connected(&mut self, session: &SessionRef) {
        if self.sessions.contains_key(&session.conn) {
            return;
        }
        let user = session.user.id.clone();
        self.sessions
            .insert(session.conn, SessionEntry { user: user.clone(), follows: BTreeSet::new() });
        let entry = self.users.entry(user.clone()).or_default();
        entry.sessions.insert(session.conn);
        if entry.sessions.len() == 1 {
            self.tell_followers(&user);
        }
    }

    /// A session ended (closed, lost, or silent past the heartbeat): it follows nobody, and
    /// its user becomes unavailable — their state cleared — when it was their last.
    pub fn disconnected(&mut self, conn: ConnId) {
        let Some(session) = self.sessions.remove(&conn) else { return };
        for followed in &session.follows {
            self.unfollow(conn, followed);
        }
        let Some(entry) = self.users.get_mut(&session.user) else { return };
        entry.sessions.remove(&conn);
        if entry.sessions.is_empty() {
            self.users.remove(&session.user);
            self.tell_followers(&session.user);
        }
    }

    /// One presence request of a session; exactly one reply goes back to it.
    pub fn handle(&mut self, from: &SessionRef, request: RequestId, presence: PresenceRequest) {
        self.connected(from);
        let result = match presence {
            PresenceRequest::SetState { state } => self.set_state(&from.user.id, state),
            PresenceRequest::RemoveState { keys } => {
                self.remove_state(&from.user.id, keys);
                Ok(ServerResponse::Done)
            }
            PresenceRequest::Subscribe { users } => self.subscribe(from.conn, users),
            PresenceRequest::Unsubscribe { users } => {
                for user in &users {
                    if self.sessions.get_mut(&from.conn).is_some_and(|s| s.follows.remove(user)) {
                        self.unfollow(from.conn, user);
                    }
                }
                Ok(ServerResponse::Done)
            }
        };
        let message = match result {
            Ok(response) => ServerMessage::Response { to: request, response },
            Err(error) => ServerMessage::Error { to: Some(request), error },
        };
        self.outputs.push_back(Broadcast { to: vec![from.conn], message });
    }

    /// A user's presence now.
    pub fn presence(&self, user: &UserId) -> UserPresence {
        match self.users.get(user) {
            Some(entry) => {
                UserPresence { user: user.clone(), available: true, state: entry.state.clone() }
            }
            None => UserPresence { user: user.clone(), available: false, state: BTreeMap::new() },
        }
    }

    /// How many sessions follow `user` (for tests and metrics).
    pub fn followers(&self, user: &UserId) -> usize {
        self.followers.get(user).map_or(0, BTreeSet::len)
    }

    pub fn poll_output(&mut self) -> Option<Broadcast> {
        self.outputs.pop_front()
    }

    fn set_state(
        &mut self,
        user: &UserId,
        state: PresenceState,
    ) -> Result<ServerResponse, ErrorReply> {
        if let Some((key, _)) = state.iter().find(|(_, value)| !is_json(value)) {
            let message = format!("the value of presence key {key:?} is not JSON text");
            return Err(reply(ErrorCode::INVALID_ARGUMENT, message));
        }
        let Some(entry) = self.users.get_mut(user) else { return Ok(ServerResponse::Done) };
        let mut next = entry.state.clone();
        next.extend(state);
        if state_bytes(&next) > self.limits.max_state_bytes {
            let limit = self.limits.max_state_bytes;
            let message = format!("a user's presence state may take at most {limit} bytes");
            return Err(reply(ErrorCode::OVERLOADED, message));
        }
        if next != entry.state {
            entry.state = next;
            self.tell_followers(user);
        }
        Ok(ServerResponse::Done)
    }

    fn remove_state(&mut self, user: &UserId, keys: Option<Vec<String>>) {
        let Some(entry) = self.users.get_mut(user) else { return };
        let before = entry.state.len();
        match keys {
            None => entry.state.clear(),
            Some(keys) => {
                for key in &keys {
                    entry.state.remove(key);
                }
            }
        }
        if entry.state.len() != before {
            self.tell_followers(user);
        }
    }

    fn subscribe(
        &mut self,
        conn: ConnId,
        users: Vec<UserId>,
    ) -> Result<ServerResponse, ErrorReply> {
        let limits = self.limits;
        if let Some(long) = users.iter().find(|u| u.0.len() > limits.max_user_id_bytes) {
            let start: String = long.0.chars().take(16).collect();
            let message =
                format!("user id {start:?}… is longer than {} bytes", limits.max_user_id_bytes);
            return Err(reply(ErrorCode::INVALID_ARGUMENT, message));
        }
        let Some(session) = self.sessions.get_mut(&conn) else {
            return Err(reply(ErrorCode::NOT_AUTHENTICATED, "the session has ended"));
        };
        let new: BTreeSet<&UserId> =
            users.iter().filter(|u| !session.follows.contains(u)).collect();
        if session.follows.len() + new.len() > limits.max_followed {
            let message =
                format!("a session may follow at most {} users at once", limits.max_followed);
            return Err(reply(ErrorCode::OVERLOADED, message));
        }
        for user in new {
            session.follows.insert(user.clone());
            self.followers.entry(user.clone()).or_default().insert(conn);
        }
        let mut seen = BTreeSet::new();
        let presences = users
            .iter()
            .filter(|user| seen.insert(*user))
            .map(|user| self.presence(user))
            .collect();
        Ok(ServerResponse::Presence(presences))
    }

    fn unfollow(&mut self, conn: ConnId, user: &UserId) {
        if let Some(followers) = self.followers.get_mut(user) {
            followers.remove(&conn);
            if followers.is_empty() {
                self.followers.remove(user);
            }
        }
    }

    fn tell_followers(&mut self, user: &UserId) {
        let Some(followers) = self.followers.get(user) else { return };
        let to: Vec<ConnId> = followers.iter().copied().collect();
        let message = ServerMessage::Push(ServerPush::Presence(self.presence(user)));
        self.outputs.push_back(Broadcast { to, message });
    }
}

/// Bytes of a state's keys and values.
pub(super) fn state_bytes(state: &PresenceState) -> usize {
    state.iter().map(|(k, v)| k.len() + v.len()).sum()
}

pub(super) fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

#[cfg(test)]
mod tests {
    use concord_protocol::{SessionId, User};

    use super::*;

    fn session(conn: ConnId, user: &str) -> SessionRef {
        SessionRef {
            conn,
            session: SessionId(format!("s{conn}")),
            user: User { id: UserId(user.into()), display_name: None, anonymous: false },
        }
    }

    fn user(id: &str) -> UserId {
        UserId(id.into())
    }

    fn state(pairs: &[(&str, &str)]) -> PresenceState {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    fn drain(host: &mut PresenceHost) -> Vec<Broadcast> {
        std::iter::from_fn(|| host.poll_output()).collect()
    }

    /// The presence pushes in `outputs` that reach `conn`.
    fn pushes_to(outputs: &[Broadcast], conn: ConnId) -> Vec<UserPresence> {
        outputs
            .iter()
            .filter(|o| o.to.contains(&conn))
            .filter_map(|o| match &o.message {
                ServerMessage::Push(ServerPush::Presence(p)) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    fn answer(outputs: &[Broadcast], to: RequestId) -> ServerMessage {
        outputs
            .iter()
            .find_map(|o| match &o.message {
                m @ ServerMessage::Response { to: t, .. } if *t == to => Some(m.clone()),
                m @ ServerMessage::Error { to: Some(t), .. } if *t == to => Some(m.clone()),
                _ => None,
            })
            .expect("every request gets its reply")
    }

    #[test]
    fn followers_get_the_current_state_then_every_change_until_the_last_session_ends() {
        let mut host = PresenceHost::new(PresenceLimits::default());
        let (alice1, alice2, bob) = (session(1, "alice"), session(2, "alice"), session(3, "bob"));
        host.connected(&bob);
        host.connected(&alice1);
        let set = PresenceRequest::SetState { state: state(&[("status", "\"busy\"")]) };
        host.handle(&alice1, RequestId(1), set);
        drain(&mut host);

        host.handle(&bob, RequestId(1), PresenceRequest::Subscribe { users: vec![user("alice")] });
        let outputs = drain(&mut host);
        let ServerMessage::Response { response: ServerResponse::Presence(now), .. } =
            answer(&outputs, RequestId(1))
        else {
            panic!("no presence answer")
        };
        assert_eq!(
            now,
            vec![UserPresence {
                user: user("alice"),
                available: true,
                state: state(&[("status", "\"busy\"")]),
            }]
        );

        // A second session of hers changes nothing; her state is per user.
        host.connected(&alice2);
        assert!(pushes_to(&drain(&mut host), 3).is_empty());
        host.handle(&alice2, RequestId(1), PresenceRequest::RemoveState { keys: None });
        let pushes = pushes_to(&drain(&mut host), 3);
        assert_eq!(pushes.len(), 1);
        assert!(pushes[0].available && pushes[0].state.is_empty());

        host.handle(
            &alice1,
            RequestId(2),
            PresenceRequest::SetState { state: state(&[("x", "1")]) },
        );
        host.disconnected(1);
        let pushes = pushes_to(&drain(&mut host), 3);
        assert_eq!(pushes.len(), 1, "only the state change: her other session is connected");
        host.disconnected(2);
        let pushes = pushes_to(&drain(&mut host), 3);
        assert_eq!(
            pushes,
            vec![UserPresence {
                user: user("alice"),
                available: false,
                state: PresenceState::new(),
            }]
        );

        // Back, with nothing of her old state.
        host.connected(&session(4, "alice"));
        let pushes = pushes_to(&drain(&mut host), 3);
        assert_eq!(pushes.len(), 1);
        assert!(pushes[0].available && pushes[0].state.is_empty());
    }

    #[test]
    fn a_session_that_ends_follows_nobody_and_unfollowing_stops_pushes() {
        let mut host = PresenceHost::new(PresenceLimits::default());
        let (alice, bob) = (session(1, "alice"), session(2, "bob"));
        host.connected(&alice);
        host.connected(&bob);
        host.handle(&bob, RequestId(1), PresenceRequest::Subscribe { users: vec![user("alice")] });
        assert_eq!(host.followers(&user("alice")), 1);
        host.handle(
            &bob,
            RequestId(2),
            PresenceRequest::Unsubscribe { users: vec![user("alice")] },
        );
        assert_eq!(host.followers(&user("alice")), 0);
        drain(&mut host);
        host.handle(
            &alice,
            RequestId(1),
            PresenceRequest::SetState { state: state(&[("a", "1")]) },
        );
        assert!(pushes_to(&drain(&mut host), 2).is_empty());

        host.handle(&bob, RequestId(3), PresenceRequest::Subscribe { users: vec![user("alice")] });
        host.disconnected(2);
        assert_eq!(host.followers(&user("alice")), 0);
        assert!(host.sessions.is_empty() || !host.sessions.contains_key(&2));
    }

    #[test]
    fn state_and_follows_are_bounded_and_values_must_be_json() {
        let limits = PresenceLimits { max_state_bytes: 32, max_followed: 2, max_user_id_bytes: 20 };
        let mut host = PresenceHost::new(limits);
        let alice = session(1, "alice");
        host.connected(&alice);
        let code = |host: &mut PresenceHost, to: u64| match answer(&drain(host), RequestId(to)) {
            ServerMessage::Error { error, .. } => Some(error.code),
            _ => None,
        };
        host.handle(
            &alice,
            RequestId(1),
            PresenceRequest::SetState { state: state(&[("k", "not json")]) },
        );
        assert_eq!(code(&mut host, 1), Some(ErrorCode::INVALID_ARGUMENT));
        let big = format!("\"{}\"", "x".repeat(40));
        host.handle(
            &alice,
            RequestId(2),
            PresenceRequest::SetState { state: state(&[("k", &big)]) },
        );
        assert_eq!(code(&mut host, 2), Some(ErrorCode::OVERLOADED));
        assert!(host.presence(&user("alice")).state.is_empty(), "a refused change changes nothing");

        let users = vec![user("a"), user("b"), user("c")];
        host.handle(&alice, RequestId(3), PresenceRequest::Subscribe { users });
        assert_eq!(code(&mut host, 3), Some(ErrorCode::OVERLOADED));
        let long = vec![user(&"u".repeat(21))];
        host.handle(&alice, RequestId(4), PresenceRequest::Subscribe { users: long });
        assert_eq!(code(&mut host, 4), Some(ErrorCode::INVALID_ARGUMENT));
        host.handle(
            &alice,
            RequestId(5),
            PresenceRequest::Subscribe { users: vec![user("a"), user("a"), user("b")] },
        );
        assert_eq!(code(&mut host, 5), None);
        assert_eq!(host.followers(&user("a")), 1);
    }
}
