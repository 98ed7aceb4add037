//! Presence from the client: this user's availability is automatic (online while any of
//! their sessions is connected); the application publishes a key/value state for its user
//! and follows other users. Nothing of it is stored: state set offline is kept in memory
//! and published on the next connection.

use std::collections::BTreeMap;

use concord_protocol::{ServerResponse, UserId, UserPresence};

use crate::domain::Domain;
use crate::driver::{Command, PresenceOp};
use crate::error::ClientError;
use crate::events::Events;
use crate::permissions::unexpected;

/// The presence side of a [`Domain`].
#[derive(Debug, Clone)]
pub struct PresenceService {
    pub(crate) domain: Domain,
}

impl PresenceService {
    /// Sets one key of this user's presence state (shared by all of the user's sessions).
    /// Connected, it returns once the server took it (an oversized state is refused with
    /// `overloaded`); offline, at once, and it is published on the next connection.
    pub async fn set_state(&self, key: &str, value: serde_json::Value) -> Result<(), ClientError> {
        self.set_states(BTreeMap::from([(key.to_owned(), value)])).await
    }

    /// Sets several keys at once.
    pub async fn set_states(
        &self,
        state: BTreeMap<String, serde_json::Value>,
    ) -> Result<(), ClientError> {
        let state = state.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        self.done(PresenceOp::Set(state)).await
    }

    /// Removes keys of this user's presence state (offline: from what is published later).
    pub async fn remove_state(&self, keys: &[&str]) -> Result<(), ClientError> {
        let keys = keys.iter().map(|k| (*k).to_owned()).collect();
        self.done(PresenceOp::Remove(Some(keys))).await
    }

    /// Removes every key of this user's presence state.
    pub async fn clear_state(&self) -> Result<(), ClientError> {
        self.done(PresenceOp::Remove(None)).await
    }

    /// Follows users: returns their presence now; each later change arrives on
    /// [`PresenceService::events`] (also the changes missed while disconnected, once
    /// reconnected — the domain follows them again by itself). Needs the connection:
    /// offline it fails at once with [`ClientError::Offline`].
    pub async fn follow(&self, users: &[UserId]) -> Result<Vec<UserPresence>, ClientError> {
        match self.request(PresenceOp::Follow(users.to_vec())).await? {
            ServerResponse::Presence(presences) => Ok(presences),
            other => Err(unexpected(&other)),
        }
    }

    /// Stops following users.
    pub async fn unfollow(&self, users: &[UserId]) -> Result<(), ClientError> {
        self.done(PresenceOp::Unfollow(users.to_vec())).await
    }

    /// Presence changes of followed users from now on. State values are JSON text
    /// ([`state_value`] parses one).
    pub fn events(&self) -> Events<UserPresence> {
        self.domain.presence_events()
    }

    async fn done(&self, op: PresenceOp) -> Result<(), ClientError> {
        match self.request(op).await? {
            ServerResponse::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn request(&self, op: PresenceOp) -> Result<ServerResponse, ClientError> {
        self.domain.call(|reply| Command::Presence { op, reply }).await
    }
}

/// The value of `key` in a user's presence state, parsed (`None` when absent or not JSON).
pub fn state_value(presence: &UserPresence, key: &str) -> Option<serde_json::Value> {
    serde_json::from_str(presence.state.get(key)?).ok()
}
