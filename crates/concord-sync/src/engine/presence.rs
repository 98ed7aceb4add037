//! The client side of presence: the state this client publishes for its user (kept while
//! offline and published again on every connection), the users it follows (followed again
//! on every connection) and what it last heard of each. Nothing of it is stored.

use std::collections::{BTreeMap, BTreeSet};

use concord_protocol::{
    ClientRequest, PresenceRequest, PresenceState, ServerResponse, UserId, UserPresence,
};

use super::{CallError, CallId, ClientEngine, Request};
use crate::events::Event;

#[derive(Debug, Default)]
pub(super) struct Presence {
    /// What this client set of its user's state.
    own: PresenceState,
    follows: BTreeSet<UserId>,
    known: BTreeMap<UserId, UserPresence>,
}

impl ClientEngine {
    /// Sets keys of this user's presence state (values are JSON text). Connected, it is
    /// sent now and the server's answer comes as a call's (`Some`); offline it is kept and
    /// published on the next connection (`None`).
    pub fn set_presence_state(&mut self, state: PresenceState) -> Option<CallId> {
        self.presence.own.extend(state.clone());
        self.presence_call(PresenceRequest::SetState { state })
    }

    /// Removes keys of this user's presence state (`None`: all of it), now or, offline, from
    /// what the next connection publishes.
    pub fn remove_presence_state(&mut self, keys: Option<Vec<String>>) -> Option<CallId> {
        match &keys {
            None => self.presence.own.clear(),
            Some(keys) => {
                for key in keys {
                    self.presence.own.remove(key);
                }
            }
        }
        self.presence_call(PresenceRequest::RemoveState { keys })
    }

    /// What this client publishes of its user's presence state.
    pub fn own_presence_state(&self) -> &PresenceState {
        &self.presence.own
    }

    /// Follows users: their current presence is the call's answer
    /// (`ServerResponse::Presence`), then each change is an [`Event::Presence`]; they are
    /// followed again after every reconnection. Needs the connection.
    pub fn follow_presence(&mut self, users: Vec<UserId>) -> Result<CallId, CallError> {
        let call = self
            .call(ClientRequest::Presence(PresenceRequest::Subscribe { users: users.clone() }))?;
        self.presence.follows.extend(users);
        Ok(call)
    }

    /// Stops following users (at once here; at the server when connected).
    pub fn unfollow_presence(&mut self, users: Vec<UserId>) {
        for user in &users {
            self.presence.follows.remove(user);
            self.presence.known.remove(user);
        }
        if self.is_connected() {
            let request = ClientRequest::Presence(PresenceRequest::Unsubscribe { users });
            self.send(request, Request::Other);
        }
    }

    /// The last presence heard of a followed user.
    pub fn presence_of(&self, user: &UserId) -> Option<&UserPresence> {
        self.presence.known.get(user)
    }

    fn presence_call(&mut self, request: PresenceRequest) -> Option<CallId> {
        self.call(ClientRequest::Presence(request)).ok()
    }

    /// A new connection: publish this client's state and follow again.
    pub(super) fn presence_connected(&mut self) {
        if !self.presence.own.is_empty() {
            let state = self.presence.own.clone();
            let request = ClientRequest::Presence(PresenceRequest::SetState { state });
            self.send(request, Request::Other);
        }
        if !self.presence.follows.is_empty() {
            let users = self.presence.follows.iter().cloned().collect();
            let request = ClientRequest::Presence(PresenceRequest::Subscribe { users });
            self.send(request, Request::PresenceResync);
        }
    }

    /// The answer to following again after a reconnection: what changed meanwhile is told.
    pub(super) fn presence_resynced(&mut self, answer: Result<ServerResponse, CallError>) {
        if let Ok(ServerResponse::Presence(presences)) = answer {
            for presence in presences {
                self.presence_heard(presence);
            }
        }
    }

    /// The current presence of users, as a call's answer gave it (the caller has it).
    pub(super) fn presence_answered(&mut self, answer: &Result<ServerResponse, CallError>) {
        if let Ok(ServerResponse::Presence(presences)) = answer {
            for presence in presences {
                if self.presence.follows.contains(&presence.user) {
                    self.presence.known.insert(presence.user.clone(), presence.clone());
                }
            }
        }
    }

    /// A followed user's presence, pushed or after a reconnection: told when it changed.
    pub(super) fn presence_heard(&mut self, presence: UserPresence) {
        if !self.presence.follows.contains(&presence.user) {
            return; // unfollowed meanwhile
        }
        if self.presence.known.get(&presence.user) == Some(&presence) {
            return;
        }
        self.presence.known.insert(presence.user.clone(), presence.clone());
        self.events.push_back(Event::Presence(presence));
    }
}
