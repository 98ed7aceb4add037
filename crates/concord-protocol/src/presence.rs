//! Presence: whether a user is online in the domain (any of their sessions connected), and
//! the key/value state they publish; other sessions follow users and hear every change.
//! Ephemeral: nothing of it is stored, by the server or by clients.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// A user's published state: keys to values, each value JSON text (the server checks that
/// it parses and relays it as it is).
pub type PresenceState = BTreeMap<String, String>;

/// What a session asks about presence, as [`ClientRequest::Presence`].
///
/// [`ClientRequest::Presence`]: crate::ClientRequest::Presence
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceRequest {
    /// Sets these keys of the user's state (the state is the user's, shared by all of their
    /// sessions). → `Done`; followers get `Presence`.
    SetState { state: PresenceState },
    /// Removes these keys of the user's state; `None` clears it. → `Done`.
    RemoveState { keys: Option<Vec<String>> },
    /// Follows these users (in addition to those followed already). → `Presence` with their
    /// current presence; later changes come as `Presence` pushes.
    Subscribe { users: Vec<UserId> },
    /// Stops following these users. → `Done`.
    Unsubscribe { users: Vec<UserId> },
}

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPresence {
    pub user: UserId,
    /// At least one of the user's sessions is connected to the domain.
    pub available: bool,
    /// What the user published; empty once they are unavailable.
    pub state: PresenceState,
}
