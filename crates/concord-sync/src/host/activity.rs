//! Activities across one domain, sans-IO: who is in which activity, with what state, and
//! who may join, set state and manage, by activity type. The caller tells it sessions that
//! end and passes it their activity requests; it gives back messages for connections.
//! Nothing of it is stored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use concord_protocol::{
    ActivityChange, ActivityId, ActivityRequest, ErrorCode, ErrorReply, Participant, PresenceState,
    RequestId, ServerMessage, ServerPush, ServerResponse, UserId,
};
use serde::{Deserialize, Serialize};

use super::presence::{is_json, state_bytes};
use super::{Broadcast, ConnId, SessionRef, reply};

/// What a user may do in activities of one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ActivityPermissions {
    pub join: bool,
    pub set_state: bool,
    /// Remove other sessions from an activity.
    pub manage: bool,
}

impl ActivityPermissions {
    /// Join and set one's own state.
    pub const PARTICIPATE: ActivityPermissions =
        ActivityPermissions { join: true, set_state: true, manage: false };
    pub const ALL: ActivityPermissions =
        ActivityPermissions { join: true, set_state: true, manage: true };
}

/// Who may do what in activities of one type: per-user grants replace `world`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityPolicy {
    pub world: ActivityPermissions,
    pub users: BTreeMap<UserId, ActivityPermissions>,
}

impl Default for ActivityPolicy {
    /// Every authenticated session (anonymous ones included) may join and set its state;
    /// `manage` only by grant.
    fn default() -> ActivityPolicy {
        ActivityPolicy { world: ActivityPermissions::PARTICIPATE, users: BTreeMap::new() }
    }
}

impl ActivityPolicy {
    pub fn permissions(&self, user: &UserId) -> ActivityPermissions {
        self.users.get(user).copied().unwrap_or(self.world)
    }
}

/// Activity types' policies and what one session may make the server hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityConfig {
    /// Policies by activity type; a type not listed gets `default`.
    pub types: BTreeMap<String, ActivityPolicy>,
    pub default: ActivityPolicy,
    /// Activities one session is in at once.
    pub max_joined: usize,
    /// Bytes of keys and values of one participant's state.
    pub max_state_bytes: usize,
    /// Bytes of an activity's type and id together.
    pub max_name_bytes: usize,
}

impl Default for ActivityConfig {
    fn default() -> ActivityConfig {
        ActivityConfig {
            types: BTreeMap::new(),
            default: ActivityPolicy::default(),
            max_joined: 64,
            max_state_bytes: 4 * 1024,
            max_name_bytes: 256,
        }
    }
}

impl ActivityConfig {
    fn permissions(&self, activity: &ActivityId, user: &UserId) -> ActivityPermissions {
        self.types.get(&activity.kind).unwrap_or(&self.default).permissions(user)
    }
}

/// The activities of one domain.
#[derive(Debug, Default)]
pub struct ActivityHost {
    config: ActivityConfig,
    /// Activities with someone in them: their participants by connection.
    activities: BTreeMap<ActivityId, BTreeMap<ConnId, Participant>>,
    /// What each session is in.
    joined: BTreeMap<ConnId, BTreeSet<ActivityId>>,
    outputs: VecDeque<Broadcast>,
}

impl ActivityHost {
    pub fn new(config: ActivityConfig) -> ActivityHost {
        ActivityHost { config, ..ActivityHost::default() }
    }

    /// A session ended: it leaves every activity it was in.
    pub fn disconnected(&mut self, conn: ConnId) {
        for activity in self.joined.remove(&conn).unwrap_or_default() {
            self.leave(conn, &activity, false);
        }
    }

    /// One activity request of a session; exactly one reply goes back to it.
    pub fn handle(&mut self, from: &SessionRef, request: RequestId, activity: ActivityRequest) {
        let result = self.request(from, activity);
        let message = match result {
            Ok(response) => ServerMessage::Response { to: request, response },
            Err(error) => ServerMessage::Error { to: Some(request), error },
        };
        self.outputs.push_back(Broadcast { to: vec![from.conn], message });
    }

    /// Everyone in `activity` now.
    pub fn participants(&self, activity: &ActivityId) -> Vec<Participant> {
        self.activities.get(activity).map_or_else(Vec::new, |p| p.values().cloned().collect())
    }

    /// How many activities have someone in them.
    pub fn len(&self) -> usize {
        self.activities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.activities.is_empty()
    }

    pub fn poll_output(&mut self) -> Option<Broadcast> {
        self.outputs.pop_front()
    }

    fn request(
        &mut self,
        from: &SessionRef,
        request: ActivityRequest,
    ) -> Result<ServerResponse, ErrorReply> {
        match request {
            ActivityRequest::Join { activity, state } => self.join(from, activity, state),
            ActivityRequest::Leave { activity } => {
                if self.joined.get_mut(&from.conn).is_some_and(|j| j.remove(&activity)) {
                    self.leave(from.conn, &activity, false);
                }
                Ok(ServerResponse::Done)
            }
            ActivityRequest::SetState { activity, state } => {
                self.allowed(from, &activity, |p| p.set_state, "setting state needs `set_state`")?;
                check_state(&state)?;
                self.change_state(from.conn, &activity, |current| current.extend(state))
            }
            ActivityRequest::RemoveState { activity, keys } => {
                // Refused whether or not the keys are there, as a set is.
                let refusal = "removing state needs `set_state`";
                self.allowed(from, &activity, |p| p.set_state, refusal)?;
                self.change_state(from.conn, &activity, |current| match keys {
                    None => current.clear(),
                    Some(keys) => keys.iter().for_each(|k| drop(current.remove(k))),
                })
            }
            ActivityRequest::Remove { activity, session } => {
                self.allowed(from, &activity, |p| p.manage, "removing a session needs `manage`")?;
                let found = self.activities.get(&activity).and_then(|participants| {
                    participants.iter().find(|(_, p)| p.session == session).map(|(c, _)| *c)
                });
                let Some(conn) = found else {
                    return Err(reply(
                        ErrorCode::INVALID_ARGUMENT,
                        "no such session in the activity",
                    ));
                };
                if let Some(joined) = self.joined.get_mut(&conn) {
                    joined.remove(&activity);
                }
                self.leave(conn, &activity, true);
                Ok(ServerResponse::Done)
            }
        }
    }

    fn allowed(
        &self,
        from: &SessionRef,
        activity: &ActivityId,
        may: impl Fn(ActivityPermissions) -> bool,
        refusal: &str,
    ) -> Result<(), ErrorReply> {
        if may(self.config.permissions(activity, &from.user.id)) {
            Ok(())
        } else {
            Err(reply(ErrorCode::PERMISSION_DENIED, refusal))
        }
    }

    fn join(
        &mut self,
        from: &SessionRef,
        activity: ActivityId,
        state: PresenceState,
    ) -> Result<ServerResponse, ErrorReply> {
        let config = &self.config;
        if activity.kind.len() + activity.id.len() > config.max_name_bytes {
            let message = format!(
                "an activity's type and id may take at most {} bytes",
                config.max_name_bytes
            );
            return Err(reply(ErrorCode::INVALID_ARGUMENT, message));
        }
        self.allowed(from, &activity, |p| p.join, "joining needs `join`")?;
        // A join that sets state is a state change too: without `set_state` it is refused
        // whole, so the session is not joined (or keeps its state) rather than joined
        // with a state it may not set.
        let current = self.activities.get(&activity).and_then(|p| p.get(&from.conn));
        if !state.is_empty() || current.is_some_and(|p| !p.state.is_empty()) {
            let refusal = "joining with state needs `set_state`";
            self.allowed(from, &activity, |p| p.set_state, refusal)?;
        }
        check_state(&state)?;
        self.check_size(&state)?;
        let joined = self.joined.get(&from.conn);
        let already = joined.is_some_and(|j| j.contains(&activity));
        if !already && joined.map_or(0, BTreeSet::len) >= self.config.max_joined {
            let message =
                format!("a session may be in at most {} activities", self.config.max_joined);
            return Err(reply(ErrorCode::OVERLOADED, message));
        }
        self.joined.entry(from.conn).or_default().insert(activity.clone());
        let participant =
            Participant { session: from.session.clone(), user: from.user.id.clone(), state };
        let participants = self.activities.entry(activity.clone()).or_default();
        participants.insert(from.conn, participant.clone());
        let everyone = participants.values().cloned().collect();
        self.tell(&activity, Some(from.conn), ActivityChange::Joined(participant));
        Ok(ServerResponse::ActivityJoined { activity, participants: everyone })
    }

    fn change_state(
        &mut self,
        conn: ConnId,
        activity: &ActivityId,
        change: impl FnOnce(&mut PresenceState),
    ) -> Result<ServerResponse, ErrorReply> {
        let Some(participant) = self.activities.get(activity).and_then(|p| p.get(&conn)) else {
            return Err(reply(ErrorCode::INVALID_ARGUMENT, "the session is not in the activity"));
        };
        let mut state = participant.state.clone();
        change(&mut state);
        self.check_size(&state)?;
        let participant = self
            .activities
            .get_mut(activity)
            .and_then(|p| p.get_mut(&conn))
            .expect("checked above");
        if participant.state != state {
            participant.state = state.clone();
            let (session, user) = (participant.session.clone(), participant.user.clone());
            let change = ActivityChange::StateChanged { session, user, state };
            self.tell(activity, Some(conn), change);
        }
        Ok(ServerResponse::Done)
    }

    fn check_size(&self, state: &PresenceState) -> Result<(), ErrorReply> {
        if state_bytes(state) > self.config.max_state_bytes {
            let limit = self.config.max_state_bytes;
            let message = format!("a participant's state may take at most {limit} bytes");
            return Err(reply(ErrorCode::OVERLOADED, message));
        }
        Ok(())
    }

    /// Takes `conn` out of `activity` (already out of its `joined`), telling the rest —
    /// and, when `removed` by someone else, the session itself.
    fn leave(&mut self, conn: ConnId, activity: &ActivityId, removed: bool) {
        let Some(participants) = self.activities.get_mut(activity) else { return };
        let Some(participant) = participants.remove(&conn) else { return };
        if participants.is_empty() {
            self.activities.remove(activity);
        }
        let change = ActivityChange::Left { session: participant.session, user: participant.user };
        if removed {
            let message = ServerMessage::Push(ServerPush::Activity {
                activity: activity.clone(),
                change: change.clone(),
            });
            self.outputs.push_back(Broadcast { to: vec![conn], message });
        }
        self.tell(activity, None, change);
    }

    /// Tells everyone in `activity` (but `except`) of `change`.
    fn tell(&mut self, activity: &ActivityId, except: Option<ConnId>, change: ActivityChange) {
        let Some(participants) = self.activities.get(activity) else { return };
        let to: Vec<ConnId> = participants.keys().copied().filter(|c| Some(*c) != except).collect();
        if to.is_empty() {
            return;
        }
        let message =
            ServerMessage::Push(ServerPush::Activity { activity: activity.clone(), change });
        self.outputs.push_back(Broadcast { to, message });
    }
}

fn check_state(state: &PresenceState) -> Result<(), ErrorReply> {
    match state.iter().find(|(_, value)| !is_json(value)) {
        Some((key, _)) => {
            let message = format!("the value of state key {key:?} is not JSON text");
            Err(reply(ErrorCode::INVALID_ARGUMENT, message))
        }
        None => Ok(()),
    }
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

    fn page(n: u32) -> ActivityId {
        ActivityId { kind: "viewing".into(), id: format!("page {n}") }
    }

    fn state(pairs: &[(&str, &str)]) -> PresenceState {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    /// Every output: the reply to `from`'s request, and the pushes by connection.
    fn drain(host: &mut ActivityHost) -> Vec<(ConnId, ServerMessage)> {
        std::iter::from_fn(|| host.poll_output())
            .flat_map(|o| o.to.into_iter().map(move |c| (c, o.message.clone())))
            .collect()
    }

    fn changes(outputs: &[(ConnId, ServerMessage)], conn: ConnId) -> Vec<ActivityChange> {
        outputs
            .iter()
            .filter(|(c, _)| *c == conn)
            .filter_map(|(_, m)| match m {
                ServerMessage::Push(ServerPush::Activity { change, .. }) => Some(change.clone()),
                _ => None,
            })
            .collect()
    }

    fn error_code(outputs: &[(ConnId, ServerMessage)]) -> Option<ErrorCode> {
        outputs.iter().find_map(|(_, m)| match m {
            ServerMessage::Error { error, .. } => Some(error.code),
            _ => None,
        })
    }

    #[test]
    fn participants_hear_joins_state_changes_and_leaves_but_not_their_own() {
        let mut host = ActivityHost::new(ActivityConfig::default());
        let (alice, bob) = (session(1, "alice"), session(2, "bob"));
        let join =
            |s: &PresenceState| ActivityRequest::Join { activity: page(12), state: s.clone() };
        host.handle(&alice, RequestId(1), join(&state(&[("cursor", "3")])));
        drain(&mut host);
        host.handle(&bob, RequestId(1), join(&PresenceState::new()));
        let outputs = drain(&mut host);
        let Some((_, ServerMessage::Response { response, .. })) =
            outputs.iter().find(|(c, _)| *c == 2)
        else {
            panic!("bob got no answer")
        };
        let ServerResponse::ActivityJoined { participants, .. } = response else { panic!() };
        assert_eq!(participants.len(), 2, "the list has everyone, the joiner included");
        assert!(
            matches!(&changes(&outputs, 1)[..], [ActivityChange::Joined(p)] if p.user.0 == "bob")
        );
        assert!(changes(&outputs, 2).is_empty());

        let set =
            ActivityRequest::SetState { activity: page(12), state: state(&[("cursor", "9")]) };
        host.handle(&bob, RequestId(2), set);
        let outputs = drain(&mut host);
        assert_eq!(
            changes(&outputs, 1),
            vec![ActivityChange::StateChanged {
                session: SessionId("s2".into()),
                user: UserId("bob".into()),
                state: state(&[("cursor", "9")]),
            }]
        );
        assert!(changes(&outputs, 2).is_empty());

        // Another activity is another audience.
        host.handle(
            &alice,
            RequestId(3),
            ActivityRequest::Join { activity: page(13), state: PresenceState::new() },
        );
        assert!(changes(&drain(&mut host), 2).is_empty());

        host.disconnected(2);
        let outputs = drain(&mut host);
        assert_eq!(
            changes(&outputs, 1),
            vec![ActivityChange::Left {
                session: SessionId("s2".into()),
                user: UserId("bob".into())
            }]
        );
        assert_eq!(host.participants(&page(12)).len(), 1);
        host.handle(&alice, RequestId(4), ActivityRequest::Leave { activity: page(12) });
        host.disconnected(1);
        assert!(host.is_empty(), "an activity nobody is in is gone");
    }

    #[test]
    fn permissions_by_type_are_checked_and_manage_removes_a_session() {
        let mut config = ActivityConfig::default();
        let mut editing =
            ActivityPolicy { world: ActivityPermissions::default(), users: BTreeMap::new() };
        editing.users.insert(UserId("alice".into()), ActivityPermissions::ALL);
        editing.users.insert(
            UserId("bob".into()),
            ActivityPermissions { join: true, set_state: false, manage: false },
        );
        config.types.insert("editing".into(), editing);
        let mut host = ActivityHost::new(config);
        let form = ActivityId { kind: "editing".into(), id: "form".into() };
        let (alice, bob, carol) = (session(1, "alice"), session(2, "bob"), session(3, "carol"));
        let join = |a: &ActivityId| ActivityRequest::Join {
            activity: a.clone(),
            state: PresenceState::new(),
        };

        host.handle(&carol, RequestId(1), join(&form));
        assert_eq!(error_code(&drain(&mut host)), Some(ErrorCode::PERMISSION_DENIED));
        host.handle(&carol, RequestId(2), join(&page(1)));
        assert_eq!(error_code(&drain(&mut host)), None, "other types keep the default");
        host.handle(&alice, RequestId(1), join(&form));
        host.handle(&bob, RequestId(1), join(&form));
        drain(&mut host);
        let set = ActivityRequest::SetState { activity: form.clone(), state: state(&[("k", "1")]) };
        host.handle(&bob, RequestId(2), set);
        assert_eq!(error_code(&drain(&mut host)), Some(ErrorCode::PERMISSION_DENIED));
        let remove =
            ActivityRequest::Remove { activity: form.clone(), session: SessionId("s1".into()) };
        host.handle(&bob, RequestId(3), remove);
        assert_eq!(error_code(&drain(&mut host)), Some(ErrorCode::PERMISSION_DENIED));

        let remove =
            ActivityRequest::Remove { activity: form.clone(), session: SessionId("s2".into()) };
        host.handle(&alice, RequestId(2), remove);
        let outputs = drain(&mut host);
        let left = vec![ActivityChange::Left {
            session: SessionId("s2".into()),
            user: UserId("bob".into()),
        }];
        assert_eq!(changes(&outputs, 2), left, "the removed session hears it");
        assert_eq!(changes(&outputs, 1), left);
        assert_eq!(host.participants(&form).len(), 1);
    }

    #[test]
    fn without_set_state_no_path_changes_state() {
        let join_only = ActivityPermissions { join: true, set_state: false, manage: false };
        let mut editing = ActivityPolicy { world: join_only, users: BTreeMap::new() };
        editing.users.insert(UserId("alice".into()), ActivityPermissions::PARTICIPATE);
        let mut config = ActivityConfig::default();
        config.types.insert("editing".into(), editing);
        let mut host = ActivityHost::new(config);
        let form = ActivityId { kind: "editing".into(), id: "form".into() };
        let (alice, bob, carol) = (session(1, "alice"), session(2, "bob"), session(3, "carol"));
        let join = |s: PresenceState| ActivityRequest::Join { activity: form.clone(), state: s };
        let remove = |keys: Option<Vec<String>>| ActivityRequest::RemoveState {
            activity: form.clone(),
            keys,
        };

        host.handle(&alice, RequestId(1), join(state(&[("k", "1")])));
        host.handle(&bob, RequestId(1), join(PresenceState::new()));
        assert_eq!(error_code(&drain(&mut host)), None, "joining without state needs only join");
        let before = host.participants(&form);

        let refused = [
            (&bob, remove(Some(vec!["k".into()]))),
            (&bob, remove(None)),
            (&bob, join(state(&[("k", "2")]))),
            (&carol, join(state(&[("k", "3")]))),
        ];
        for (n, (from, request)) in refused.into_iter().enumerate() {
            host.handle(from, RequestId(10 + n as u64), request.clone());
            let outputs = drain(&mut host);
            assert_eq!(error_code(&outputs), Some(ErrorCode::PERMISSION_DENIED), "{request:?}");
            assert!(
                outputs.iter().all(|(c, _)| *c == from.conn),
                "nobody else hears of {request:?}: {outputs:?}"
            );
            assert_eq!(host.participants(&form), before, "{request:?} changed nothing");
        }

        // With set_state, removing is a change the others hear.
        host.handle(&alice, RequestId(2), remove(None));
        let outputs = drain(&mut host);
        assert_eq!(error_code(&outputs), None);
        assert!(matches!(
            &changes(&outputs, 2)[..],
            [ActivityChange::StateChanged { state, .. }] if state.is_empty()
        ));
    }

    #[test]
    fn what_a_session_holds_in_activities_is_bounded() {
        let config = ActivityConfig {
            max_joined: 2,
            max_state_bytes: 16,
            max_name_bytes: 20,
            ..ActivityConfig::default()
        };
        let mut host = ActivityHost::new(config);
        let alice = session(1, "alice");
        let join =
            |a: ActivityId, s: PresenceState| ActivityRequest::Join { activity: a, state: s };
        host.handle(&alice, RequestId(1), join(page(1), state(&[("k", "\"a long value here\"")])));
        assert_eq!(error_code(&drain(&mut host)), Some(ErrorCode::OVERLOADED));
        host.handle(&alice, RequestId(2), join(page(1), state(&[("k", "nope")])));
        assert_eq!(error_code(&drain(&mut host)), Some(ErrorCode::INVALID_ARGUMENT));
        let long = ActivityId { kind: "viewing".into(), id: "x".repeat(20) };
        host.handle(&alice, RequestId(3), join(long, PresenceState::new()));
        assert_eq!(error_code(&drain(&mut host)), Some(ErrorCode::INVALID_ARGUMENT));
        host.handle(&alice, RequestId(4), join(page(1), PresenceState::new()));
        host.handle(&alice, RequestId(5), join(page(2), PresenceState::new()));
        host.handle(&alice, RequestId(6), join(page(1), state(&[("k", "1")])));
        assert_eq!(error_code(&drain(&mut host)), None, "joining again replaces the state");
        host.handle(&alice, RequestId(7), join(page(3), PresenceState::new()));
        assert_eq!(error_code(&drain(&mut host)), Some(ErrorCode::OVERLOADED));
        let grow = ActivityRequest::SetState {
            activity: page(1),
            state: state(&[("more", "\"0123456789\"")]),
        };
        host.handle(&alice, RequestId(8), grow);
        assert_eq!(error_code(&drain(&mut host)), Some(ErrorCode::OVERLOADED));
        assert_eq!(host.participants(&page(1))[0].state, state(&[("k", "1")]));
        assert_eq!(host.len(), 2);
    }
}
