//! The client side of activities: the activities this client joined, with its own state in
//! each (kept while offline; each is joined again, with that state, on every connection),
//! and the participants it last heard of. Nothing of it is stored.

use std::collections::BTreeMap;

use concord_protocol::{
    ActivityChange, ActivityId, ActivityRequest, ClientRequest, ErrorCode, Participant,
    PresenceState, ServerResponse, SessionId,
};

use super::{CallError, CallId, ClientEngine, Request};
use crate::events::Event;

#[derive(Debug, Default)]
pub(super) struct Activities {
    joined: BTreeMap<ActivityId, Joined>,
    /// This connection's session, to recognise a removal of this client.
    session: Option<SessionId>,
}

#[derive(Debug, Default)]
struct Joined {
    own: PresenceState,
    participants: BTreeMap<SessionId, Participant>,
}

impl ClientEngine {
    /// Joins an activity with a first state; the answer (`ServerResponse::ActivityJoined`,
    /// everyone in it) comes as the call's, then each change as an [`Event::Activity`].
    /// Needs the connection; once joined, it is joined again after every reconnection.
    pub fn join_activity(
        &mut self,
        activity: ActivityId,
        state: PresenceState,
    ) -> Result<CallId, CallError> {
        let request = ClientRequest::Activity(ActivityRequest::Join {
            activity: activity.clone(),
            state: state.clone(),
        });
        let call = self.call_for(request, |call| Request::JoinActivity(call, activity.clone()))?;
        let joined = self.activities.joined.entry(activity).or_default();
        joined.own = state;
        Ok(call)
    }

    /// Leaves an activity (at once here; at the server when connected).
    pub fn leave_activity(&mut self, activity: ActivityId) -> Option<CallId> {
        self.activities.joined.remove(&activity);
        self.call(ClientRequest::Activity(ActivityRequest::Leave { activity })).ok()
    }

    /// Sets keys of this session's state in a joined activity: sent now when connected
    /// (`Some`), else kept for the next join.
    pub fn set_activity_state(
        &mut self,
        activity: ActivityId,
        state: PresenceState,
    ) -> Option<CallId> {
        if let Some(joined) = self.activities.joined.get_mut(&activity) {
            joined.own.extend(state.clone());
        }
        self.call(ClientRequest::Activity(ActivityRequest::SetState { activity, state })).ok()
    }

    /// Removes keys (`None`: all) of this session's state in an activity.
    pub fn remove_activity_state(
        &mut self,
        activity: ActivityId,
        keys: Option<Vec<String>>,
    ) -> Option<CallId> {
        if let Some(joined) = self.activities.joined.get_mut(&activity) {
            match &keys {
                None => joined.own.clear(),
                Some(keys) => keys.iter().for_each(|k| drop(joined.own.remove(k))),
            }
        }
        self.call(ClientRequest::Activity(ActivityRequest::RemoveState { activity, keys })).ok()
    }

    /// The participants last heard of in a joined activity.
    pub fn participants(&self, activity: &ActivityId) -> Option<Vec<Participant>> {
        let joined = self.activities.joined.get(activity)?;
        Some(joined.participants.values().cloned().collect())
    }

    /// A new connection: join again, with this client's state.
    pub(super) fn activities_connected(&mut self, session: SessionId) {
        self.activities.session = Some(session);
        let rejoin: Vec<(ActivityId, PresenceState)> =
            self.activities.joined.iter().map(|(a, j)| (a.clone(), j.own.clone())).collect();
        for (activity, state) in rejoin {
            let request = ClientRequest::Activity(ActivityRequest::Join {
                activity: activity.clone(),
                state,
            });
            self.send(request, Request::RejoinActivity(activity));
        }
    }

    /// The answer to a join: the application's (`call`, passed on) or a rejoin's (`None`),
    /// which tells what changed while this client was away.
    pub(super) fn activity_joined(
        &mut self,
        call: Option<CallId>,
        activity: ActivityId,
        answer: Result<ServerResponse, CallError>,
    ) {
        match &answer {
            Ok(ServerResponse::ActivityJoined { participants, .. }) => {
                let now: BTreeMap<SessionId, Participant> =
                    participants.iter().map(|p| (p.session.clone(), p.clone())).collect();
                if let Some(joined) = self.activities.joined.get_mut(&activity) {
                    let before = std::mem::replace(&mut joined.participants, now.clone());
                    if call.is_none() {
                        self.tell_differences(&activity, &before, &now);
                    }
                }
            }
            Ok(_) => {}
            Err(CallError::Refused(error))
                if call.is_none()
                    && error.code == ErrorCode::PERMISSION_DENIED
                    && self.activities.joined.get(&activity).is_some_and(|j| !j.own.is_empty()) =>
            {
                // The server refuses a join that sets state without `set_state`: state the
                // server refused before (kept here for the rejoin) must not cost the
                // activity, so join again without it.
                if let Some(joined) = self.activities.joined.get_mut(&activity) {
                    joined.own.clear();
                }
                let request = ClientRequest::Activity(ActivityRequest::Join {
                    activity: activity.clone(),
                    state: PresenceState::new(),
                });
                self.send(request, Request::RejoinActivity(activity));
            }
            Err(_) => {
                // Refused (or, for the application's join, the connection went): not
                // joined. A rejoin's answer is lost only with the connection, which rejoins.
                if let Some(joined) = self.activities.joined.remove(&activity) {
                    for (session, participant) in joined.participants {
                        let change = ActivityChange::Left { session, user: participant.user };
                        let activity = activity.clone();
                        self.events.push_back(Event::Activity { activity, change });
                    }
                }
            }
        }
        if let Some(call) = call {
            self.answers.push_back((call, answer));
        }
    }

    /// A change pushed by the server in a joined activity.
    pub(super) fn activity_changed(&mut self, activity: ActivityId, change: ActivityChange) {
        let Some(joined) = self.activities.joined.get_mut(&activity) else { return };
        match &change {
            ActivityChange::Joined(participant) => {
                joined.participants.insert(participant.session.clone(), participant.clone());
            }
            ActivityChange::Left { session, .. } => {
                joined.participants.remove(session);
                if Some(session) == self.activities.session.as_ref() {
                    // Removed by a manager: not joined any more.
                    self.activities.joined.remove(&activity);
                }
            }
            ActivityChange::StateChanged { session, state, .. } => {
                if let Some(participant) = joined.participants.get_mut(session) {
                    participant.state = state.clone();
                }
            }
        }
        self.events.push_back(Event::Activity { activity, change });
    }

    fn tell_differences(
        &mut self,
        activity: &ActivityId,
        before: &BTreeMap<SessionId, Participant>,
        now: &BTreeMap<SessionId, Participant>,
    ) {
        let mut changes = Vec::new();
        for (session, gone) in before.iter().filter(|(s, _)| !now.contains_key(*s)) {
            changes
                .push(ActivityChange::Left { session: session.clone(), user: gone.user.clone() });
        }
        for (session, participant) in now {
            match before.get(session) {
                None => changes.push(ActivityChange::Joined(participant.clone())),
                Some(old) if old.state != participant.state => {
                    changes.push(ActivityChange::StateChanged {
                        session: session.clone(),
                        user: participant.user.clone(),
                        state: participant.state.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        for change in changes {
            self.events.push_back(Event::Activity { activity: activity.clone(), change });
        }
    }
}
