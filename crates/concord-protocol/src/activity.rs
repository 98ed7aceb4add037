//! Activities: named places of a type ("viewing" page 12, "editing" a form) that sessions
//! join and leave, each participant with its own key/value state. An activity exists while
//! someone is in it. Ephemeral: nothing of it is stored, by the server or by clients.

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, UserId};
use crate::presence::PresenceState;

/// Names an activity: its type (which decides its permissions) and its id within the type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ActivityId {
    pub kind: String,
    pub id: String,
}

/// What a session asks of activities, as [`ClientRequest::Activity`].
///
/// [`ClientRequest::Activity`]: crate::ClientRequest::Activity
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivityRequest {
    /// Joins (creating the activity if nobody is in it) with a first state; needs `join`,
    /// and `set_state` as well when it sets state (a non-empty one, or one replacing the
    /// state of a session already in it). → `ActivityJoined`; the others get `Joined`.
    /// Joining again replaces the state. Refused, nothing changes: the session is not
    /// joined (or keeps its state, if it was).
    Join { activity: ActivityId, state: PresenceState },
    /// → `Done`; the others get `Left`.
    Leave { activity: ActivityId },
    /// Sets keys of this session's state in the activity; needs `set_state`. → `Done`; the
    /// others get `StateChanged`.
    SetState { activity: ActivityId, state: PresenceState },
    /// Removes keys of this session's state (`None`: all of it); needs `set_state`.
    /// → `Done`; the others get `StateChanged`.
    RemoveState { activity: ActivityId, keys: Option<Vec<String>> },
    /// Removes another session from the activity; needs `manage`. → `Done`; everyone in
    /// it, the removed session included, gets `Left`.
    Remove { activity: ActivityId, session: SessionId },
}

/// One session in an activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub session: SessionId,
    pub user: UserId,
    /// Keys to values, each value JSON text.
    pub state: PresenceState,
}

/// What happened in an activity, pushed to its participants as `ServerPush::Activity`.
/// Each change names the participant's user as well as its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivityChange {
    Joined(Participant),
    /// The session left, was removed, or its connection ended.
    Left {
        session: SessionId,
        user: UserId,
    },
    /// The participant's whole state after the change.
    StateChanged {
        session: SessionId,
        user: UserId,
        state: PresenceState,
    },
}
